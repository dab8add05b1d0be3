"""One replica: a model server process and the task that keeps it running.

Each replica has one supervising asyncio task, a plain loop that is easy to
follow::

    start the process (unless one is running already: started by ``supervise``
                       itself, or re-adopted)
    probe its ready path until the first 200       -> READY
    wait for it to exit (pidfd: noticed at once)
    exited before ever being ready N times in a row -> FAILED, stop here
    otherwise wait 1 s, 2 s, 4 s ... (capped) and go round again

One task per replica costs one sleeping coroutine; in exchange a replica's
whole story reads top to bottom in :meth:`Replica._supervise`, and stopping a
replica is cancelling its task.

The process is started with :class:`subprocess.Popen` in a new session, not
with ``asyncio.create_subprocess_exec``: an asyncio subprocess transport kills
its child when it is closed or collected, and from Python 3.12 on that
happens when the event loop closes, which would take every model down with
the shim.  A new session keeps the server out of the shim's process group,
so a Ctrl-C or a SIGKILL of the shim does not reach it either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from modserv_shim.errors import BackendUnavailable
from modserv_shim.plugins import LaunchSpec
from modserv_shim.shimlets.local import logfiles, ports, procfs
from modserv_shim.shimlets.local.options import LocalOptions
from modserv_shim.shimlets.local.state import ReplicaRecord

log = logging.getLogger(__name__)

HTTP_PROBE_MAX_INTERVAL = 0.5  # a server that listens but is not ready yet (loading) is asked at most this often
SHIM_ENV_PREFIX = "MODSERV_"  # the shim's own settings: API tokens, database URL (with its password)


def inherited_environment() -> dict[str, str]:
    """The shim's environment without the shim's own settings, for a model server to start with.

    The admin's environment (PATH, HOME, locale, proxies, thread counts) is what the runtime
    needs to start; the shim's ``MODSERV_*`` settings (tokens, database credentials) are not
    its business.  What a *request* adds on top has passed the runtime's allowlist.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(SHIM_ENV_PREFIX)}


class ReplicaPhase(StrEnum):
    STARTING = "starting"  # running, has not answered its ready path yet
    ADOPTED = "adopted"  # found running after a restart of the shim, not probed yet: its state is unknown
    READY = "ready"
    RESTARTING = "restarting"  # exited; waiting out the backoff
    FAILED = "failed"  # gave up: will not be restarted
    STOPPED = "stopped"  # stopped on purpose (delete, scale down)


@dataclass(frozen=True)
class ReplicaEnv:
    """What a replica needs from its shimlet and resource."""

    resource_id: str
    launch: LaunchSpec
    options: LocalOptions
    http: httpx.AsyncClient
    log_dir: Path
    pick_port: Callable[[ReplicaRecord], int]
    changed: Callable[[], None]  # persist the state and publish the new status
    owner: str  # procfs.OWNER_ENV of our processes: finds them even if no state file names them


class Replica:
    """One replica's process and supervisor.  ``record`` is the persisted part, the rest lives in memory."""

    def __init__(self, record: ReplicaRecord, env: ReplicaEnv) -> None:
        self.record = record
        self.env = env
        self.phase = ReplicaPhase.STARTING
        self.problem: str | None = None  # why it is not ready after something went wrong
        self.failure: str | None = None  # set when it gave up
        self.last_exit_code: int | None = None
        self.last_lines: list[str] = []  # output of the last run that ended
        self.restarts = 0
        self._crash_streak = 0  # exponent of the backoff
        self._early_exits = 0  # consecutive exits before becoming ready
        self._child: subprocess.Popen[bytes] | None = None  # None for a re-adopted process
        self._started = time.monotonic()
        self._ready_at: float | None = None
        self._timed_out = False
        self._task: asyncio.Task[None] | None = None
        self._spawn_lock = asyncio.Lock()
        self._stopping = False
        self._api_key: str | None = None  # the key the process was started with (its probes send it)

    @property
    def index(self) -> int:
        return self.record.index

    @property
    def log_path(self) -> Path:
        return self.env.log_dir / f"replica-{self.index}.log"

    # ------------------------------------------------------------ control

    def supervise(self, *, problem: str | None = None) -> None:
        """Start the process now (unless ``record.pid`` is running) and the task that supervises it.

        Starting it here rather than in the task lets the model load begin before ``create``
        returns, while the caller records the resource.
        """
        self.problem = problem
        self._started = time.monotonic()
        if self.record.pid is None and not self._start_process():
            return
        self._task = asyncio.create_task(self._supervise(), name=f"local:{self.env.resource_id}:{self.index}")

    async def detach(self) -> None:
        """Stop supervising but leave the process running (the shim is shutting down)."""
        async with self._spawn_lock:
            await self._cancel_task()

    async def stop(self) -> None:
        """Stop for good: no restart; SIGTERM to the group, SIGKILL after the grace period."""
        self._stopping = True
        async with self._spawn_lock:  # a start in flight finishes and records its pid first
            await self._cancel_task()
        pid = self.record.pid
        if pid is not None:
            opts = self.env.options
            stopped = await procfs.terminate(
                pid, self.record.start_time, self._child, grace=opts.stop_grace_period, poll_interval=opts.poll_interval
            )
            if not stopped:
                raise BackendUnavailable(
                    f"replica {self.index} (process group {pid}) survived SIGKILL; it is probably stuck in the"
                    " kernel (e.g. on a GPU driver or a network filesystem). Try again later."
                )
        self.forget_process()
        self.phase = ReplicaPhase.STOPPED

    async def _cancel_task(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    # ---------------------------------------------------------- the loop

    async def _supervise(self) -> None:
        try:
            while True:
                if self.record.pid is None:
                    async with self._spawn_lock:
                        if self._stopping or not self._start_process():
                            return
                if self.record.start_time is None:
                    await self._record_identity()
                code = await self._run_until_exit()
                delay = self._after_exit(code)
                if delay is None:
                    return
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must show up as a reason, not vanish in a task
            log.exception("local shimlet: supervising %s replica %d failed", self.env.resource_id, self.index)
            self._give_up(f"replica {self.index}: internal error of the local shimlet: {exc!r}")

    def _start_process(self) -> bool:
        try:
            self._spawn()
        except Exception as exc:  # OSError, or a bad launch spec (a non-string env value): give up, in words
            self._give_up(f"replica {self.index} could not be started: {exc}")
            return False
        return True

    def _spawn(self) -> None:
        record, launch = self.record, self.env.launch
        record.port = self.env.pick_port(record)
        record.argv = launch.argv(self.env.options.host, record.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered Python output, so the log (and a FAILED reason) shows the last words.
        env = {**inherited_environment(), "PYTHONUNBUFFERED": "1", **launch.env, procfs.OWNER_ENV: self.env.owner}
        self._api_key = launch.read_api_key()  # read at every start: a rotated key reaches the new process
        if self._api_key is not None and launch.api_key_env:
            env[launch.api_key_env] = self._api_key
        with self.log_path.open("ab") as log_file:
            log_file.write(logfiles.marker(self.index, record.argv))
            log_file.flush()
            try:
                child = subprocess.Popen(
                    record.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                log_file.write(f"{logfiles.MARKER} could not start: {exc}\n".encode())
                raise
        self._child = child
        record.pid = child.pid
        record.start_time = None  # read by the supervising task, off the event loop (see procfs)
        record.started_at = time.time()
        self.phase = ReplicaPhase.STARTING
        self._started = time.monotonic()
        self._ready_at = None

    async def _record_identity(self) -> None:
        """Read the new process's start time on a worker thread, then save the record."""
        pid = self.record.pid
        assert pid is not None
        started = await asyncio.to_thread(procfs.start_time, pid)
        if self.record.pid == pid:
            self.record.start_time = started
        self.env.changed()

    async def _run_until_exit(self) -> int | None:
        pid = self.record.pid
        assert pid is not None
        exited = asyncio.ensure_future(
            procfs.wait_exit(pid, self.record.start_time, self._child, self.env.options.poll_interval)
        )
        try:
            if self.phase is not ReplicaPhase.READY:
                await self._probe_until_ready(pid, exited)
            return await exited
        finally:
            exited.cancel()

    async def _probe_until_ready(self, pid: int, exited: asyncio.Future[int | None]) -> None:
        """Probe every ``probe_interval`` until the port accepts connections (a connect attempt is
        cheap: ~0.1 ms, against ~1 ms for an HTTP request), then GET the ready path, at growing
        intervals (up to HTTP_PROBE_MAX_INTERVAL) while the server answers "not yet"."""
        opts, launch = self.env.options, self.env.launch
        url = f"http://{ports.url_host(opts.probe_host)}:{self.record.port}{launch.ready_path}"
        deadline = self._started + launch.startup_timeout
        listening = False
        http_interval = opts.probe_interval
        while not exited.done():
            probe = asyncio.ensure_future(self._probe(url) if listening else self._accepts())
            either: set[asyncio.Future[Any]] = {probe, exited}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not probe.done():  # the process exited mid-probe
                probe.cancel()
                return
            interval = opts.probe_interval
            if not listening and probe.result():
                listening = True
                continue  # something listens: ask it at once
            if listening and probe.result():
                self._became_ready()
                return
            if self.phase is ReplicaPhase.ADOPTED:  # now observed: it does not answer (yet)
                self.phase = ReplicaPhase.STARTING
                self.env.changed()
            if listening:
                interval, http_interval = http_interval, min(http_interval * 2, HTTP_PROBE_MAX_INTERVAL)
            left = deadline - time.monotonic()
            if left <= 0:
                self._timed_out = True
                grace, poll = opts.stop_grace_period, opts.poll_interval
                await procfs.terminate(pid, self.record.start_time, self._child, grace=grace, poll_interval=poll)
                return
            await asyncio.wait({exited}, timeout=min(interval, left))

    async def _accepts(self) -> bool:
        """Does something accept TCP connections on the replica's port?"""
        host, port = self.env.options.probe_host, self.record.port
        try:
            async with asyncio.timeout(self.env.options.probe_timeout):
                if not ports.is_ip(host):  # a name (localhost may be ::1 first): let asyncio try every address
                    _, writer = await asyncio.open_connection(host, port)
                    writer.close()
                    return True
                with socket.socket(ports.family(host), socket.SOCK_STREAM) as sock:
                    sock.setblocking(False)
                    await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except (OSError, TimeoutError):
            return False
        return True

    async def _probe(self, url: str) -> bool:
        try:
            if self._api_key is None and self.env.launch.api_key_file:  # adopted after a restart of the shim
                self._api_key = await asyncio.to_thread(self.env.launch.read_api_key)
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else None
            response = await self.env.http.get(url, timeout=self.env.options.probe_timeout, headers=headers)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    # ------------------------------------------------------ transitions

    def _became_ready(self) -> None:
        self.phase = ReplicaPhase.READY
        self._ready_at = time.monotonic()
        self._early_exits = 0
        self.problem = None
        self.env.changed()

    def _after_exit(self, code: int | None) -> float | None:
        """Record an exit; the delay before the restart, or None when giving up."""
        if self._stopping:
            return None
        opts = self.env.options
        was_ready = self.phase is ReplicaPhase.READY
        ready_for = time.monotonic() - self._ready_at if was_ready and self._ready_at is not None else 0.0
        what = f"replica {self.index} {self._describe_exit(code, before_ready=not was_ready)}"
        self.forget_process()
        self.last_exit_code = code
        self.last_lines = logfiles.last_run(self.log_path, opts.reason_log_lines)
        if was_ready:
            self._early_exits = 0
            if ready_for >= opts.stable_after:
                self._crash_streak = 0
        else:
            self._early_exits += 1
            if self._early_exits >= opts.max_start_failures:
                starts = "start" if self._early_exits == 1 else "starts"
                in_a_row = f"{self._early_exits} failed {starts} in a row"
                self._give_up(f"{what} ({in_a_row}); giving up. {self._log_excerpt()}")
                return None
        self._crash_streak += 1
        self.restarts += 1
        delay = opts.restart_delay(self._crash_streak)
        if was_ready:
            self.problem = f"{what}; restarting in {delay:g} s (restart {self.restarts})"
        else:
            attempt = f"attempt {self._early_exits + 1} of {opts.max_start_failures}"
            self.problem = f"{what}; restarting in {delay:g} s ({attempt})"
        self.phase = ReplicaPhase.RESTARTING
        self.env.changed()
        return delay

    def _describe_exit(self, code: int | None, *, before_ready: bool) -> str:
        if self._timed_out:
            self._timed_out = False
            return f"was not ready after {self.env.launch.startup_timeout:g} s and was stopped"
        if code is None:
            how = "exited (exit code unknown: it was started before the shim restarted)"
        elif code < 0 and -code in signal.valid_signals():
            how = f"exited with code {code} (killed by {signal.Signals(-code).name})"
        else:
            how = f"exited with code {code}"
        return f"{how} before becoming ready" if before_ready else how

    def _log_excerpt(self) -> str:
        if not self.last_lines:
            return f"Its log ({self.log_path}) is empty."
        return "Last log lines:\n" + "\n".join(f"  {line}" for line in self.last_lines)

    def _give_up(self, reason: str) -> None:
        self.phase = ReplicaPhase.FAILED
        self.failure = self.problem = reason
        self.env.changed()

    def forget_process(self) -> None:
        """Drop the exited process; kill what is left of its process group (workers)."""
        pid = self.record.pid
        if pid is not None and procfs.group_members(pid):
            procfs.signal_group(pid, signal.SIGKILL)
        self._child = None
        self.record.pid = None
        self.record.start_time = None
