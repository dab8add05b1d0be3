"""TEST DOUBLE: a tiny OpenAI-compatible HTTP server that serves no model.

It stands in for an inference server in a plugin's tests: it answers in
milliseconds where a real model server needs seconds.  Standard library only.

* in the test process, on a thread::

      with OpenAIStub(model_name="tiny") as stub:
          stub.url              # "http://127.0.0.1:<free port>"

* as a process (what :func:`~modserv_shim.testing.contexts.stub_launch` starts)::

      python -m modserv_shim.testing.openai_stub --host 127.0.0.1 --port 8123 --model-name tiny

Endpoints: ``GET /health``, ``GET /v1/models`` (lists ``model_name``),
``POST /v1/chat/completions`` (echoes the last user message) and ``POST /v1/completions``
(echoes the prompt: what the default pipeline's health check asks).  Until
``ready_delay`` seconds have passed, ``/health`` and ``/v1/models`` answer 503,
as a server that is still loading its model does.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


def make_handler(model_name: str, ready_at: float, *, quiet: bool = False, log_name: str = "openai-stub",
                 reply_prefix: str = "") -> type[BaseHTTPRequestHandler]:
    """The request handler: answers 503 until ``ready_at`` (``time.monotonic()``), then serves ``model_name``.

    Chat completions answer ``reply_prefix`` + the last user message.  Unless ``quiet``, each request
    is one line on stdout, ``<log_name>: GET /v1/models -> 200`` (what a shimlet's ``logs()`` shows).
    """

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            if not quiet:
                status = f" -> {args[1]}" if format.startswith('"%s" %s') and len(args) > 1 else ""
                print(f"{log_name}: {self.command} {self.path}{status}", flush=True)

        def _json(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _ready(self) -> bool:
            if time.monotonic() >= ready_at:
                return True
            self._json(503, {"error": {"message": "loading model"}})
            return False

        def do_GET(self) -> None:
            if self.path == "/health":
                if self._ready():
                    self._json(200, {"status": "ok"})
            elif self.path == "/v1/models":
                if self._ready():
                    card = {"id": model_name, "object": "model", "owned_by": "openai-stub"}
                    self._json(200, {"object": "list", "data": [card]})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path not in ("/v1/chat/completions", "/v1/completions"):
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            if not self._ready():
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/v1/completions":
                    text = str(body.get("prompt", ""))
                else:
                    text = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"),
                                "")
            except (ValueError, TypeError, KeyError, AttributeError):
                self._json(400, {"error": {"message": "the body must be a JSON completion request"}})
                return
            self._json(200, _completion(self.path, model_name, reply_prefix + str(text)))

    return Handler


def _completion(path: str, model_name: str, text: str) -> dict[str, Any]:
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if path == "/v1/completions":
        return {"id": "cmpl-stub", "object": "text_completion", "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}], "usage": usage}
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": model_name,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": usage}


class OpenAIStub:
    """The stub on a background thread of this process; a context manager.

    ``port=0`` picks a free port; ``url`` is known once it is entered (or ``start()``-ed).
    """

    def __init__(self, model_name: str = "tiny", *, host: str = "127.0.0.1", port: int = 0,
                 ready_delay: float = 0.0, quiet: bool = True) -> None:
        self.model_name = model_name
        ready_at = time.monotonic() + ready_delay
        self._server = ThreadingHTTPServer((host, port), make_handler(model_name, ready_at, quiet=quiet))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OpenAIStub:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="openai-stub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modserv_shim.testing.openai_stub",
                                     description="A tiny OpenAI-compatible server that serves no model (tests only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-name", default="tiny")
    parser.add_argument("--ready-delay", type=float, default=0.0, help="seconds of 503 before ready")
    args = parser.parse_args(argv)
    stub = OpenAIStub(args.model_name, host=args.host, port=args.port, ready_delay=args.ready_delay, quiet=False)
    print(f"openai-stub: serving {args.model_name!r} on {stub.url}", flush=True)
    try:
        stub._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stub._server.server_close()


if __name__ == "__main__":
    main()
