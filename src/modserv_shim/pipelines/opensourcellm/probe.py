"""Probing an OpenAI-compatible endpoint: is the served model listed, does it answer?"""

from __future__ import annotations

from typing import Any

import httpx

from modserv_shim.errors import StepError
from modserv_shim.plugins import EndpointProber, Shimlet


class Prober:
    """Requests to the service, through the shimlet when it provides a way, else over HTTP.

    The HTTP client is the pipeline's, shared by all health checks: building an
    ``httpx`` client loads the CA bundle, which costs more than the probe itself.
    """

    def __init__(self, shimlet: Shimlet, resource_id: str, endpoint: str | None, http: httpx.AsyncClient, *,
                 api_key: str | None = None) -> None:
        self.shimlet, self.resource_id, self.endpoint, self.http = shimlet, resource_id, endpoint, http
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def request(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        if isinstance(self.shimlet, EndpointProber) and not self.headers:
            return await self.shimlet.request(self.resource_id, method, path, json)
        if not self.endpoint:
            raise StepError("the shimlet reports no endpoint for the service")
        url = self.endpoint.rstrip("/") + path
        try:
            r = await self.http.request(method, url, json=json, headers=self.headers)
        except httpx.HTTPError as exc:
            raise StepError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        try:
            body = r.json()
        except ValueError:
            body = None
        return r.status_code, body


def served_models(body: Any) -> list[str]:
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        return [str(m.get("id")) for m in body["data"] if isinstance(m, dict)]
    return []


def completion_text(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("choices"), list) and body["choices"]:
        choice = body["choices"][0]
        if isinstance(choice, dict):
            text = choice.get("text")
            if text is None and isinstance(choice.get("message"), dict):
                text = choice["message"].get("content")
            return str(text) if text is not None else ""
    return None
