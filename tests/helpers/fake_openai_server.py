"""TEST DOUBLE: a tiny OpenAI-shaped HTTP server that stands in for an inference runtime.

It serves no model.  Shimlet tests launch it as the "runtime" so that
starting, probing, crashing and stopping real processes over real HTTP takes
milliseconds instead of the seconds a real model server needs.  Standard
library only, runnable as a script::

    python fake_openai_server.py --host 127.0.0.1 --port 8123 --model-name tiny
        [--ready-delay 2]        # /health and /v1/models answer 503 for 2 s
        [--crash-after 1.5]      # exit with --crash-code 1.5 s after becoming ready
        [--fail-immediately "CUDA out of memory"]   # print this on stderr and exit 1
        [--ignore-sigterm]       # only SIGKILL stops it (tests the grace period)
        [--spawn-worker]         # start a child process, as vLLM's workers (tests group kill)

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``
(answers ``fake reply to: <the last user message>``); the handler is
:mod:`modserv_shim.testing.openai_stub`'s, the options above are this file's own.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer

from modserv_shim.testing.openai_stub import make_handler

PATH = os.path.abspath(__file__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-name", default="fake-model")
    p.add_argument("--ready-delay", type=float, default=0.0, help="seconds of 503 before ready")
    p.add_argument("--crash-after", type=float, default=None, help="exit this many seconds after ready")
    p.add_argument("--crash-code", type=int, default=3)
    p.add_argument("--fail-immediately", metavar="MESSAGE", default=None, help="print MESSAGE on stderr, exit 1")
    p.add_argument("--ignore-sigterm", action="store_true", help="ignore SIGTERM")
    p.add_argument("--spawn-worker", action="store_true", help="start a sleeping child process")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"fake-openai-server: loading model {args.model_name}", flush=True)
    if args.fail_immediately is not None:
        print(args.fail_immediately, file=sys.stderr, flush=True)
        sys.exit(1)
    if args.spawn_worker:
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"fake-openai-server: worker pid {worker.pid}", flush=True)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("fake-openai-server: ignoring SIGTERM", flush=True)
    ready_at = time.monotonic() + args.ready_delay
    handler = make_handler(args.model_name, ready_at, log_name="fake-openai-server", reply_prefix="fake reply to: ")
    server = ThreadingHTTPServer((args.host, args.port), handler)
    if args.crash_after is not None:

        def crash() -> None:
            print(f"fake-openai-server: crashing with code {args.crash_code} as asked", flush=True)
            os._exit(args.crash_code)

        timer = threading.Timer(args.ready_delay + args.crash_after, crash)
        timer.daemon = True
        timer.start()
    print(f"fake-openai-server: listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
