"""A real Docker Engine for the tests: CI's, or our own ``dockerd`` started for the session.

Use it from a test module with::

    from tests.helpers.docker_engine import DockerEngine, docker_engine_fixture  # noqa: F401

(the fixture is registered under the name ``docker_engine``; importing it under its own name
keeps ruff from flagging every test parameter as a redefinition.)

    def test_something(docker_engine: DockerEngine) -> None:
        docker_engine.cli("run", "--rm", "--network", "none", IMAGE, "true")

Where the engine comes from, in order:

1. ``MODSERV_TEST_DOCKER_HOST`` (set by ``.ci/run``, which starts and stops its own ``dockerd``):
   that engine is used as is and never stopped here (the tests fail if it does not answer).
2. Otherwise, if ``dockerd`` is installed and we are root: our own ``dockerd``, a child of the
   test process, with its data root, exec root, socket, pid file and config in a fresh
   temporary directory.  It gets no bridge, no iptables/NAT rules and leaves the host's
   ``ip_forward`` alone, so test containers use ``--network host`` or ``--network none``.
   Storage: overlay2 where the kernel has it, else vfs (see ``storage_driver``).
   Its containers are put under their own cgroup parent.  At session end: its containers are
   removed, ``dockerd`` gets SIGTERM (SIGKILL after a grace period), leftover mounts and
   cgroups of ours are removed, and so is the directory.
3. Otherwise the tests that need it are skipped, with the reason - unless
   ``MODSERV_REQUIRE_DOCKER=1`` (CI), when they fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

ENV_HOST = "MODSERV_TEST_DOCKER_HOST"
ENV_REQUIRE = "MODSERV_REQUIRE_DOCKER"
DIR_PREFIX = "modserv-dockerd-"
START_TIMEOUT = 60.0
STOP_GRACE = 15.0

ENV_STORAGE = "MODSERV_TEST_DOCKER_STORAGE"

# Keep in step with .ci/run, which starts CI's engine the same way.
DOCKERD_FLAGS = (
    "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none",
    "--log-level=warn",
)


def storage_driver() -> str:
    """``overlay2`` where the kernel has overlayfs, else ``vfs``; ``MODSERV_TEST_DOCKER_STORAGE`` overrides.

    vfs copies an image's whole filesystem for every container: about 1 s per 100 MB on an idle
    machine, 17 s for the 258 MB inference image under load; overlay2 starts it in 0.4 s.  Its
    mounts live under our directory and go with the containers (and ``stop()`` unmounts any left).
    """
    if os.environ.get(ENV_STORAGE):
        return os.environ[ENV_STORAGE]
    try:
        with open("/proc/filesystems") as f:
            has_overlay = any(line.split()[-1:] == ["overlay"] for line in f)
    except OSError:
        has_overlay = False
    return "overlay2" if has_overlay else "vfs"


class DockerError(RuntimeError):
    """A docker CLI command failed; the message has the command, exit code and stderr."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


@dataclass
class DockerEngine:
    """A running Docker Engine: where it is, and how to talk to it (CLI or plain HTTP)."""

    host: str  # e.g. unix:///tmp/modserv-dockerd-xyz/docker.sock
    env: dict[str, str]  # variables that point the docker CLI (or a client library) at it
    own: bool = False  # started by this session (and stopped at its end)
    root: Path | None = None  # our dockerd's temporary directory
    docker: str = field(default_factory=lambda: shutil.which("docker") or "docker")

    @property
    def socket_path(self) -> str | None:
        u = urlparse(self.host)
        return u.path if u.scheme == "unix" else None

    def full_env(self) -> dict[str, str]:
        """The process environment with the docker CLI pointed at this engine (and nowhere else)."""
        base = {k: v for k, v in os.environ.items()
                if k not in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")}
        return {**base, **self.env}

    def cli(self, *args: str, check: bool = True, input: str | bytes | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``docker ARGS`` against this engine; stdout/stderr come back as text."""
        data = input.encode() if isinstance(input, str) else input
        p = subprocess.run([self.docker, *args], input=data, capture_output=True, env=self.full_env(),
                           timeout=timeout, check=False)
        out = subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(errors="replace"),
                                          p.stderr.decode(errors="replace"))
        if check and p.returncode != 0:
            detail = out.stderr.strip() or out.stdout[-2000:]
            raise DockerError(f"docker {' '.join(args)}: exit {p.returncode}: {detail}")
        return out

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """One Engine API call over plain HTTP (unix:// or tcp:// without TLS): (status, JSON or text)."""
        conn = self._connection(timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, raw.decode(errors="replace")

    def ping(self, timeout: float = 2.0) -> bool:
        try:
            status, body = self.api("GET", "/_ping", timeout=timeout)
        except OSError:
            return False
        return status == 200 and body == "OK"

    def inspect(self, container: str) -> dict[str, Any]:
        status, body = self.api("GET", f"/containers/{container}/json")
        if status != 200:
            raise DockerError(f"inspect {container}: {status} {body}")
        result: dict[str, Any] = body
        return result

    def remove_all_containers(self) -> None:
        ids = self.cli("ps", "-aq", check=False).stdout.split()
        if ids:
            self.cli("rm", "-f", "-v", *ids, check=False, timeout=120)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        u = urlparse(self.host)
        if u.scheme == "unix":
            return _UnixHTTPConnection(u.path, timeout)
        if u.scheme in ("tcp", "http"):
            return http.client.HTTPConnection(u.hostname or "localhost", u.port or 2375, timeout=timeout)
        raise ValueError(f"unsupported Docker host for plain HTTP: {self.host}")


# ---------------------------------------------------------------------------------------------
# Our own dockerd


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    # If the test process dies without its teardown, dockerd gets SIGTERM instead of living on.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class OwnDockerd:
    """A ``dockerd`` child with everything in ``root``; ``stop()`` leaves nothing behind."""

    root: Path
    proc: subprocess.Popen[bytes]
    engine: DockerEngine
    cgroup_parent: str

    @classmethod
    def start(cls, timeout: float = START_TIMEOUT, driver: str | None = None) -> OwnDockerd:
        driver = driver or storage_driver()
        try:
            return cls._start(timeout, driver)
        except RuntimeError:
            if driver == "vfs" or os.environ.get(ENV_STORAGE):
                raise
            return cls._start(timeout, "vfs")  # overlay2 refused here (e.g. on an overlay root)

    @classmethod
    def _start(cls, timeout: float, driver: str) -> OwnDockerd:
        dockerd = shutil.which("dockerd")
        if not dockerd:
            raise RuntimeError("dockerd is not installed")
        _sweep_stale()
        root = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir="/tmp"))  # short: a unix socket path
        (root / "daemon.json").write_text("{}\n")  # ignore the host's /etc/docker/daemon.json
        cgroup_parent = f"/{root.name}"
        sock = root / "docker.sock"
        cmd = [dockerd, *DOCKERD_FLAGS, f"--storage-driver={driver}", f"--config-file={root / 'daemon.json'}",
               f"--data-root={root / 'data'}", f"--exec-root={root / 'exec'}",
               f"--pidfile={root / 'dockerd.pid'}", f"--host=unix://{sock}",
               f"--cgroup-parent={cgroup_parent}"]
        log = (root / "dockerd.log").open("wb")
        # PR_SET_PDEATHSIG fires when the *thread* that started the child exits: only from the main thread.
        pdeathsig = _set_pdeathsig if threading.current_thread() is threading.main_thread() else None
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=pdeathsig)  # noqa: PLW1509
        log.close()
        host = f"unix://{sock}"
        self = cls(root, proc, DockerEngine(host=host, env={"DOCKER_HOST": host}, own=True, root=root),
                   cgroup_parent)
        deadline = time.monotonic() + timeout
        while not (sock.exists() and self.engine.ping()):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"dockerd did not come up (exit {proc.returncode}):\n{tail}")
            time.sleep(0.05)
        return self

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.root / "dockerd.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.engine.remove_all_containers()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        _cleanup_root(self.root, self.cgroup_parent)


def _pids_using(root: Path) -> list[int]:
    """Processes whose command line names ``root`` (dockerd's containerd and shims)."""
    needle = str(root).encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
    return pids


def _cleanup_root(root: Path, cgroup_parent: str) -> None:
    # Anything of ours still running (only after a SIGKILL of dockerd): kill it by PID.
    for pid in _pids_using(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Mounts under our directory (container rootfs, shm, netns), innermost first.
    mounts = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == str(root) or point.startswith(f"{root}/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)
    # The containers' cgroup parent, in each hierarchy (v1) or the unified tree (v2).
    base = Path("/sys/fs/cgroup")
    rel = cgroup_parent.strip("/")
    candidates = [base / rel] + ([p / rel for p in base.iterdir() if p.is_dir()] if base.is_dir() else [])
    for cg in candidates:
        if cg.is_dir():
            for sub in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                cg.rmdir()


def _sweep_stale() -> None:
    """Remove what an earlier, killed test session left: directories whose dockerd is gone."""
    for d in Path("/tmp").glob(f"{DIR_PREFIX}*"):
        try:
            pid = int((d / "dockerd.pid").read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid:
            try:
                os.kill(pid, 0)
                continue  # still running: someone else's session
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        elif time.time() - d.stat().st_mtime < 3600:
            continue  # just being set up, perhaps
        _cleanup_root(d, f"/{d.name}")


# ---------------------------------------------------------------------------------------------
# The fixture


def _unavailable(reason: str) -> None:
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{reason} ({ENV_REQUIRE}=1: a real Docker Engine is required)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", name="docker_engine")
def docker_engine_fixture() -> Iterator[DockerEngine]:
    """The session's Docker Engine (see the module docstring); skips or fails when there is none."""
    host = os.environ.get(ENV_HOST)
    if host:
        engine = DockerEngine(host=host, env={"DOCKER_HOST": host})
        if not engine.ping(timeout=10):  # configured but down: a broken setup, never a skip
            pytest.fail(f"{ENV_HOST}={host} does not answer /_ping", pytrace=False)
        yield engine
        return
    if not shutil.which("dockerd"):
        _unavailable("no Docker Engine: dockerd is not installed (Debian package docker.io)")
    if os.geteuid() != 0:
        _unavailable("no Docker Engine: starting our own dockerd needs root")
    if not shutil.which("docker"):
        _unavailable("no docker CLI on PATH")
    try:
        own = OwnDockerd.start()
    except RuntimeError as e:
        _unavailable(str(e))
        raise  # unreachable: _unavailable raises
    try:
        yield own.engine
    finally:
        own.stop()
