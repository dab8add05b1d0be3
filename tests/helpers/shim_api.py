"""The REST API of a server CLI in a child process (:class:`~tests.helpers.shim_process.ShimProcess`), and a
question to the model it serves."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers.shim_process import ShimProcess

API = "/api/v1/modserv"
QUESTION = "What is the capital of France? Answer in one sentence."


def api(shim: ShimProcess, method: str, path: str, expect: int | tuple[int, ...] = 200, **kw: Any) -> Any:
    """One REST call; its ``data``, or a failure quoting the answer and the end of the shim's log."""
    r = shim.request(method, f"{API}{path}", **kw)
    wanted = (expect,) if isinstance(expect, int) else expect
    assert r.status_code in wanted, (f"{method} {API}{path} answered {r.status_code}, expected {expect}: {r.text}\n"
                                     f"--- shim log ---\n{shim.tail()}")
    return r.json()["data"]


def chat(endpoint: str, model: str) -> str:
    """The served model's answer to ``QUESTION``."""
    r = httpx.post(f"{endpoint}/v1/chat/completions", timeout=120, json={
        "model": model, "temperature": 0, "max_tokens": 48,
        "messages": [{"role": "user", "content": QUESTION}]})
    assert r.status_code == 200, f"chat at {endpoint} answered {r.status_code}: {r.text}"
    text: str = r.json()["choices"][0]["message"]["content"]
    return text
