"""The real server in a child process, killable with SIGKILL, and the model servers it leaves behind.

Used by the crash-chaos tests (tests/test_chaos.py): ``ShimProcess`` runs
``python -m modserv_shim.cli`` on a fixed port and data dir, so a restart after
``kill9()`` finds the same database, state files and port.  ``owned_processes``
finds every process the local shimlet of a data dir started, by the
``MODSERV_SHIM_OWNER`` variable each one carries (see
``src/modserv_shim/shimlets/local/procfs.py``), with no help from the shim's own
bookkeeping.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

OWNER_ENV = b"MODSERV_SHIM_OWNER="


def stop_process(proc: subprocess.Popen[Any] | None) -> None:
    """SIGTERM a child process if it still runs; SIGKILL it after 15 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class ShimProcess:
    """``python -m modserv_shim.cli --port=.. --data-dir=.. [args]`` in a child process."""

    def __init__(self, data_dir: Path, log: Path, port: int, args: list[str] | None = None) -> None:
        self.data_dir, self.log, self.port = data_dir, log, port
        self.args = list(args or [])
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start_seconds: list[float] = []  # spawn -> /healthz answers, per start
        self._lock = threading.Lock()

    def start(self, timeout: float = 60.0) -> None:
        """Spawn the server and wait until ``/healthz`` answers (the server resumed its services by then)."""
        t0 = time.monotonic()
        proc = self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    self.start_seconds.append(time.monotonic() - t0)
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError(f"server did not start within {timeout} s:\n{self.tail()}")

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the server process and return at once (``start`` also waits for it to answer)."""
        with self._lock, self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts + 1} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modserv_shim.cli", f"--port={self.port}", f"--data-dir={self.data_dir}",
                 "--log-format=json", *self.args], stdout=out, stderr=out)
            self.starts += 1
            return self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> bool:
        """SIGKILL the server; False if it was not running."""
        with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                return False
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            return True

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 15 s); the model servers keep running, as after any stop."""
        with self._lock:
            stop_process(self.proc)

    def request(self, method: str, path: str, timeout: float = 60.0, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=timeout, **kw)

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@dataclass(frozen=True)
class OwnedProcess:
    pid: int
    pgrp: int
    owner: str
    cmdline: str


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    return rest[0], int(rest[2])


def owned_processes(owner_prefix: str) -> list[OwnedProcess]:
    """Running (non-zombie) processes whose ``MODSERV_SHIM_OWNER`` starts with ``owner_prefix``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        owner = next((item[len(OWNER_ENV):].decode("utf-8", "replace") for item in environ.split(b"\0")
                      if item.startswith(OWNER_ENV)), None)
        if owner is None or not owner.startswith(owner_prefix):
            continue
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X", "x"):
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            cmdline = "?"
        found.append(OwnedProcess(pid, stat[1], owner, cmdline.strip()))
    return found


def kill_owned(owner_prefix: str) -> list[OwnedProcess]:
    """SIGKILL every process (group) ``owned_processes`` finds; what was found."""
    found = owned_processes(owner_prefix)
    for p in found:
        for kill, target in ((os.killpg, p.pgrp), (os.kill, p.pid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(target, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while owned_processes(owner_prefix) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found
