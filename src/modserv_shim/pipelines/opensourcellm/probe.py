"""Probing an OpenAI-compatible endpoint: is the served model listed, does it answer?"""

from __future__ import annotations

from typing import Any

import httpx

from modserv_shim.errors import StepError
from modserv_shim.plugins import EndpointProber, Shimlet


async def request(
    shimlet: Shimlet, resource_id: str, endpoint: str | None, method: str, path: str, json: Any = None
) -> tuple[int, Any]:
    """One request to the service, through the shimlet when it provides a way, else directly."""
    if isinstance(shimlet, EndpointProber):
        return await shimlet.request(resource_id, method, path, json)
    if not endpoint:
        raise StepError("the shimlet reports no endpoint for the service")
    async with httpx.AsyncClient(base_url=endpoint, timeout=httpx.Timeout(60.0, connect=5.0)) as client:
        try:
            r = await client.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise StepError(f"{method} {endpoint}{path} failed: {type(exc).__name__}: {exc}") from exc
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
