"""One route table per resource: ``system`` (health, readiness, metrics), ``services``, ``plugins``.

A :class:`Routes` collects a module's routes the way an ``APIRouter`` would, and adds them to the
app as plain routes (``FastAPI.add_api_route``): the app's route table lists every path and
method, which the 405 answer (its ``Allow`` header) reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI

F = TypeVar("F", bound=Callable[..., Any])


class Routes:
    def __init__(self) -> None:
        self._routes: list[tuple[str, Callable[..., Any], dict[str, Any]]] = []

    def _route(self, method: str, path: str, options: dict[str, Any]) -> Callable[[F], F]:
        def add(endpoint: F) -> F:
            self._routes.append((path, endpoint, {"methods": [method], **options}))
            return endpoint
        return add

    def get(self, path: str, **options: Any) -> Callable[[F], F]:
        return self._route("GET", path, options)

    def post(self, path: str, **options: Any) -> Callable[[F], F]:
        return self._route("POST", path, options)

    def delete(self, path: str, **options: Any) -> Callable[[F], F]:
        return self._route("DELETE", path, options)

    def add_to(self, app: FastAPI) -> None:
        for path, endpoint, options in self._routes:
            app.add_api_route(path, endpoint, **options)
