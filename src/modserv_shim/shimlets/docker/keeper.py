"""Each replica's story between events: is it ready, and what to do when its container dies.

The cache (:mod:`.watcher`) says what the Engine knows: running or not, since when,
how it ended.  What the Engine does not know lives here, in memory, per container name:

* **ready** -- the server answered its ready path with a 200 during *this run* of the
  container (a run is identified by ``State.StartedAt``); a new run is probed again.
  A run that is not ready after the startup timeout is stopped, which counts as an exit.
* **healthy** -- once ready, the same path is asked every ``health_interval`` seconds
  (``health_timeout`` each); ``health_failures`` failed checks in a row and the replica
  is not ready any more (its service DEGRADED, the reason naming the path and what
  happened: no answer within the timeout, an HTTP status, a refused connection).  With
  restart policy ``no`` the shim then stops the container and its restart rule starts
  it again; with a Docker restart policy (which restarts only exited containers) it is
  ready again once it answers.
* **the shim's restart rule** (restart policy ``no``, the default), the same as the local
  shimlet's: a dead container is started again after 1 s, 2 s, 4 s ... (capped at
  ``restart_backoff_max``); ``max_start_failures`` exits in a row before ever being
  ready and the replica gives up (its service is FAILED, the container is kept for its
  logs).  Each exit is counted once (by ``State.FinishedAt``).  A replica that was ready
  for ``stable_after`` seconds before it died starts the back-off over.  The verdict of
  giving up is written down (:mod:`.state`), so the next run of the shim keeps it FAILED
  instead of starting it again.
* with a Docker restart policy the Engine restarts the container; the shim only probes,
  and a replica whose ``RestartCount`` reached ``max_start_failures`` without ever being
  ready is a restart loop.

Everything is driven by :meth:`Keeper.observe`, called with a service's containers after
every change of the cache; it starts at most one task per replica (a probe, or the wait
before a restart) and never blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from modserv_shim.shimlets.docker import reasons
from modserv_shim.shimlets.docker.engine import Engine, EngineError
from modserv_shim.shimlets.docker.options import DockerOptions
from modserv_shim.shimlets.docker.render import PORT, READY_PATH, STARTUP_TIMEOUT, endpoint
from modserv_shim.shimlets.docker.state import GivenUp
from modserv_shim.shimlets.docker.watcher import replica_of, service_of

log = logging.getLogger(__name__)

Obj = dict[str, Any]
NEVER = "0001-01-01T00:00:00Z"
READY_POLL_MAX = 0.5  # seconds: the longest wait between two asks of the ready path of a listening server


def started_at(doc: Obj) -> str:
    return str(reasons.state(doc).get("StartedAt") or "")


def running(doc: Obj) -> bool:
    st = reasons.state(doc)
    return bool(st.get("Running")) and not st.get("Restarting")


def unix_time(stamp: str) -> float | None:
    """Docker's RFC 3339 time with nanoseconds, as seconds since the epoch."""
    if not stamp or stamp.startswith("0001-"):
        return None
    head, _, frac = stamp.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or 0}")
    except ValueError:
        return None


@dataclass
class Memory:
    """What the shim remembers about one replica container (lost on a restart of the shim)."""

    index: int
    ready_run: str | None = None  # StartedAt of the run that answered its ready path
    probing_run: str | None = None
    handled_exit: str | None = None  # FinishedAt of the last exit counted
    early_exits: int = 0  # exits in a row before being ready
    streak: int = 0  # exits in a row: the exponent of the back-off
    restarts: int = 0
    problem: str | None = None
    failure: str | None = None  # it gave up: the service is FAILED
    last_lines: tuple[str, ...] = ()
    adopted: bool = False  # found running at start, not probed yet
    stopping: bool = False
    timed_out: bool = False
    ready_since: float | None = None  # loop time the current run became ready
    unhealthy: str | None = None  # ready, then failed health_failures checks in a row: why
    health_stop: str | None = None  # we stopped it for that: what it did, for the words of its exit
    task: asyncio.Task[None] | None = None

    def is_ready(self, doc: Obj) -> bool:
        return running(doc) and self.ready_run == started_at(doc) and self.unhealthy is None

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.task = None


class Keeper:
    """Probes and restarts replicas per the rule above.  ``changed(service_id)`` re-summarizes a service."""

    def __init__(self, engine: Engine, options: DockerOptions, http: httpx.AsyncClient,
                 changed: Callable[[str], None], refresh: Callable[[str], Any],
                 given_up: GivenUp | None = None) -> None:
        self._engine = engine
        self.given_up = given_up if given_up is not None else GivenUp(None)
        self._options = options
        self._http = http
        self._changed = changed
        self._refresh = refresh  # re-inspect one container now (a coroutine function)
        self._memory: dict[str, Memory] = {}

    def memory(self, doc: Obj) -> Memory:
        name = str(doc.get("Name") or "").lstrip("/")
        if name not in self._memory:
            self._memory[name] = Memory(replica_of(doc))
        return self._memory[name]

    def adopt(self, docs: Iterable[Obj]) -> None:
        """Containers found at start: running ones are UNKNOWN until their first probe; given up ones stay so."""
        for doc in docs:
            mem = self.memory(doc)
            mem.adopted = running(doc)
            verdict = self.given_up.reason_for(doc)
            if verdict is not None and not running(doc):
                mem.failure, mem.adopted = verdict, False
                mem.handled_exit = str(reasons.state(doc).get("FinishedAt") or NEVER)

    def forget(self, name: str) -> None:
        mem = self._memory.pop(name, None)
        if mem is not None:
            mem.cancel()

    def stopping(self, name: str) -> None:
        """We stop this container on purpose (to remove it): no restart, no verdict."""
        mem = self._memory.setdefault(name, Memory(0))
        mem.stopping = True
        mem.cancel()
        self.given_up.drop([name])

    def retry(self, docs: Iterable[Obj]) -> None:
        """A new ``create`` of a failed service: every replica starts over."""
        for doc in docs:
            mem = self.memory(doc)
            mem.cancel()
            mem.failure = mem.problem = mem.handled_exit = None  # its last exit is handled again: a restart
            mem.early_exits = mem.streak = 0
        self.given_up.drop(str(doc.get("Name") or "").lstrip("/") for doc in docs)

    def close(self) -> None:
        for mem in self._memory.values():
            mem.cancel()

    # ------------------------------------------------------------ the rule

    def observe(self, docs: Iterable[Obj]) -> None:
        for doc in docs:
            mem = self.memory(doc)
            busy = mem.task is not None and not mem.task.done()
            if busy and mem.probing_run is not None and mem.probing_run != (started_at(doc) if running(doc) else None):
                mem.cancel()  # probing a run that ended: what follows its exit matters now
                busy = False
            if mem.stopping or mem.failure or busy:
                continue
            st = reasons.state(doc)
            if running(doc) and not mem.is_ready(doc) and mem.probing_run != started_at(doc):
                mem.probing_run = started_at(doc)
                mem.task = asyncio.create_task(self._own(mem, self._probe(doc, mem)))
            elif not running(doc) and st.get("Status") in ("exited", "dead") and not st.get("Restarting"):
                finished = str(st.get("FinishedAt") or NEVER)
                if finished != mem.handled_exit and self._options.restart == "no":
                    # This run's lines come after the previous exit (StartedAt is set a moment after the
                    # process starts, so lines written at once could be older than it).
                    since = unix_time(mem.handled_exit or "")
                    mem.handled_exit, mem.probing_run = finished, None
                    mem.task = asyncio.create_task(self._own(mem, self._after_exit(doc, mem, since)))

    async def _own(self, mem: Memory, work: Coroutine[Any, Any, str | None]) -> None:
        """Run a replica's task; once it is done, look at the container again (it may have changed meanwhile)."""
        container = await work
        if mem.task is asyncio.current_task():
            mem.task = None
        if container is not None:
            await self._refresh(container)

    async def _probe(self, doc: Obj, mem: Memory) -> str | None:
        """Until the run answers its ready path with 200: its port every ``probe_interval`` s (a TCP
        connect, cheap), then, once something listens, the ready path at doubling intervals (at most
        ``READY_POLL_MAX`` s).  A run that takes longer than its startup timeout is stopped."""
        labels = (doc.get("Config") or {}).get("Labels") or {}
        port = labels.get(PORT, "0")
        url = endpoint(self._options, port) + ready_path(doc)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + startup_timeout(doc)
        interval, listening = self._options.probe_interval, False
        while loop.time() < deadline:
            if not listening and not (listening := await self._accepts(int(port))):
                await asyncio.sleep(self._options.probe_interval)
                continue
            try:
                answer = await self._http.get(url, timeout=self._options.probe_timeout)
                if answer.status_code == 200:
                    mem.ready_run, mem.adopted, mem.early_exits, mem.problem = started_at(doc), False, 0, None
                    mem.unhealthy, mem.ready_since = None, loop.time()
                    self._changed(str(service_of(doc)))
                    return await self._watch_health(doc, mem)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(interval)
            interval = min(interval * 2, READY_POLL_MAX)
        mem.timed_out = True
        await self._engine.stop(str(doc["Id"]), self._options.stop_grace_period)
        return str(doc["Id"])

    async def _accepts(self, port: int) -> bool:
        """Whether something accepts connections on the replica's port (a published port's proxy counts)."""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self._options.probe_host, port), self._options.probe_timeout)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    async def _watch_health(self, doc: Obj, mem: Memory) -> str | None:
        """Check a ready run every ``health_interval`` s until it fails ``health_failures`` checks in a row.

        Returns the container (to look at again) once it was stopped for that; runs until cancelled otherwise.
        """
        opts, sid, path = self._options, str(service_of(doc)), ready_path(doc)
        if opts.health_interval <= 0:
            return None
        url = endpoint(opts, ((doc.get("Config") or {}).get("Labels") or {}).get(PORT, "0")) + path
        misses = 0
        while True:
            await asyncio.sleep(opts.health_interval)
            trouble = await health_check(self._http, url, opts.health_timeout)
            if trouble is None:
                misses = 0
                if mem.unhealthy is not None:  # answering again (a Docker restart policy: we did not stop it)
                    mem.unhealthy = mem.problem = None
                    self._changed(sid)
                continue
            misses += 1
            if misses < opts.health_failures or mem.unhealthy is not None:
                continue
            lost = (f"stopped answering its health path {path} ({trouble}; {misses} checks in a row,"
                    f" {opts.health_interval:g} s apart)")
            mem.unhealthy = f"replica {mem.index} {lost}"
            log.warning("docker shimlet: %s", mem.unhealthy)
            if opts.restart != "no":  # Docker restarts exited containers only: wait for it to answer again
                mem.problem = f"{mem.unhealthy}; waiting for it to answer again (restart policy {opts.restart})"
                self._changed(sid)
                continue
            mem.problem, mem.health_stop = f"{mem.unhealthy}; stopping it to restart it", lost
            self._changed(sid)
            await self._engine.stop(str(doc["Id"]), opts.stop_grace_period)
            return str(doc["Id"])

    async def _after_exit(self, doc: Obj, mem: Memory, since: float | None) -> str | None:
        container, sid = str(doc["Id"]), str(service_of(doc))
        was_ready = mem.ready_run == started_at(doc)
        what = f"replica {mem.index} {self._exit_words(doc, mem, was_ready)}"
        if was_ready and mem.ready_since is not None and \
                asyncio.get_running_loop().time() - mem.ready_since >= self._options.stable_after:
            mem.streak = 0  # it was stable: the back-off starts over
        mem.unhealthy = mem.ready_since = None
        try:
            lines = await self._engine.logs(container, self._options.reason_log_lines, since=since)
        except EngineError:
            lines = []
        mem.last_lines, mem.adopted = tuple(lines), False
        if not was_ready:
            mem.early_exits += 1
            if mem.early_exits >= self._options.max_start_failures:
                mem.failure = reasons.with_lines(
                    f"{what} ({mem.early_exits} failed starts in a row); giving up", lines)
                self.given_up.record(doc, sid, mem.index, mem.failure)
                self._changed(sid)
                return None
        mem.streak, mem.restarts = mem.streak + 1, mem.restarts + 1
        delay = self._options.restart_delay(mem.streak)
        mem.problem = f"{what}; restarting in {delay:g} s (restart {mem.restarts})"
        self._changed(sid)
        await asyncio.sleep(delay)
        try:
            await self._engine.start(container)
        except EngineError as exc:
            mem.problem = reasons.refusal(exc.engine_message, image=str((doc.get("Config") or {}).get("Image")),
                                          port=None, what=f"replica {mem.index} cannot be started again").text
            self._changed(sid)
        return container

    def _exit_words(self, doc: Obj, mem: Memory, was_ready: bool) -> str:
        if mem.timed_out:
            mem.timed_out = False
            return f"was not ready after {startup_timeout(doc):g} s and was stopped"
        if mem.health_stop is not None:
            words, mem.health_stop = mem.health_stop, None
            code = reasons.state(doc).get("ExitCode")
            return f"{words}; it was stopped (exit code {code})"
        return reasons.exit_text(doc) + ("" if was_ready else " before becoming ready")


async def health_check(http: httpx.AsyncClient, url: str, timeout: float) -> str | None:
    """One health check: None when ``url`` answers 200, else what happened, in words."""
    try:
        answer = await http.get(url, timeout=timeout)
    except httpx.TimeoutException:
        return f"no answer within {timeout:g} s: timeout"
    except httpx.HTTPError as exc:
        return f"the request failed: {type(exc).__name__}: {exc}"
    if answer.status_code != 200:
        return f"it answered HTTP {answer.status_code}"
    return None


def ready_path(doc: Obj) -> str:
    return str(((doc.get("Config") or {}).get("Labels") or {}).get(READY_PATH) or "/v1/models")


def startup_timeout(doc: Obj) -> float:
    value = ((doc.get("Config") or {}).get("Labels") or {}).get(STARTUP_TIMEOUT)
    try:
        return float(value) if value else 600.0
    except ValueError:
        return 600.0
