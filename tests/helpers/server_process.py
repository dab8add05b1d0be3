"""The real server CLI in a child process on a data dir of the test's own, for the tests that kill it with
SIGKILL (tests/test_crash_safety.py) or measure its memory (tests/test_body_limit.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from tests.helpers.shim_process import stop_process


class ServerProcess:
    """The real CLI in a child process, on the given data dir."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir, self.log = data_dir, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modserv_shim.cli", f"--port={self.port}", f"--data-dir={self.data_dir}",
                 "--log-format=json"], stdout=out, stderr=out,
                env={**os.environ, "MODSERV_ALLOWED_ENV": '["FAKE_*", "HF_TOKEN"]'})  # the doubles read FAKE_*
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"server did not start:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)

    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(method, f"{self.url}{path}", timeout=30, **kw)
        assert r.status_code < 400, r.text
        return r.json()["data"]

    def wait(self, pred: Any, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(0.05)
        raise AssertionError("condition not met")
