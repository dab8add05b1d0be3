"""The tiny GGUF is a real model: llama.cpp loads it, generates, and serves it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.tiny_gguf import write_tiny_llama_gguf

llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_llama_cpp_loads_and_generates(tiny: Path) -> None:
    llm = llama_cpp.Llama(model_path=str(tiny), n_ctx=256, verbose=False)
    out = llm("hello world", max_tokens=2)
    assert out["usage"]["completion_tokens"] >= 1
    chat = llm.create_chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    assert chat["choices"][0]["message"]["role"] == "assistant"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(url: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


@pytest.mark.slow
def test_llama_cpp_server_serves_the_tiny_model(tiny: Path, tmp_path: Path) -> None:
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(tiny), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        status = 0
        models: dict[str, object] = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                status, models = _request(f"{base}/v1/models")
                break
            except OSError:
                time.sleep(0.1)
        assert status == 200, "server did not answer /v1/models within 60 s"
        assert models["object"] == "list"
        status, chat = _request(
            f"{base}/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        )
        assert status == 200
        assert chat["object"] == "chat.completion"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
