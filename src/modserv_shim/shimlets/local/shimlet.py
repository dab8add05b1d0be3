"""The ``local`` shimlet: model servers as child processes of this machine.

Contracts (see :class:`~modserv_shim.plugins.Shimlet`) and how they are kept:

* ``create`` uses the service id as the resource id and is idempotent: a second
  call for a live resource returns the same id and starts nothing.  A FAILED
  resource is the exception: ``create`` then starts it afresh (a retry of the
  deploy step), since a failed resource has no process left to duplicate.
  Processes are started before ``create`` returns (the model load begins at
  once), then watched by one supervising task per replica; ``create`` fails fast (PermanentStepError) only when the
  program cannot possibly start (command or Python module missing).
* ``status`` never blocks: it is computed from the supervisors' cached state
  (no HTTP, no ``/proc``), and is NOT_FOUND for an unknown id.
* ``delete`` is idempotent: SIGTERM to each replica's process group, SIGKILL
  after ``stop_grace_period``, then the resource's directory (state file and
  logs) is removed.  It returns when no process of the resource is left.
* ``scale`` starts or stops replicas, highest index first, so replica 0 (the
  endpoint) is never the one stopped.
* ``capacity`` is this machine: the CPUs the shim may run on and its RAM (a cgroup's memory
  limit when it runs under one), for the capacity metrics.
* ``render`` (for dryRun) shows the command line, environment and log location
  without starting anything.
* ``logs`` returns the last ``tail`` lines *of each replica*, prefixed
  ``[replica i]``, replica by replica (the files carry no timestamps to merge by).
* ``watch`` may have any number of concurrent consumers; each one gets every
  status change from the moment ``watch()`` was called, in order.  Queues are
  unbounded (status changes are rare); a consumer that stops iterating is
  dropped.  The streams end when the shimlet is closed.  (A :class:`~modserv_shim.kit.shimlet.WatchHub`;
  a status is published only when it changed.)
* ``start`` re-adopts what an earlier run left: every state file is read, a
  replica whose pid is still the process we started (same start time) is
  monitored again without being restarted (no model reload), a replica whose
  process is gone is started again (after killing any workers it left behind).  ``close`` stops the monitoring only: the
  model servers keep running and are re-adopted by the next ``start``.  They
  run in their own session, so even a SIGKILL of the shim leaves them alone.

The public methods call ``start`` themselves if the server forgot to, and refuse
once the shimlet is closed (:class:`~modserv_shim.kit.shimlet.ShimletBase`).
One endpoint per resource: replica 0's port.  Further replicas listen on ports
of their own; spreading requests over them is not the local shimlet's job.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from modserv_shim.errors import BackendUnavailable, NotFound, PermanentStepError, StateConflict, ValidationFailed
from modserv_shim.kit.shimlet import Event, ShimletBase, WatchHub
from modserv_shim.modelinfo.accelerators import read_host_memory
from modserv_shim.plugins import Capacity, DeployContext, HostCapacity, PluginContext, ResourcePhase, ResourceStatus
from modserv_shim.shimlets.local import logfiles, ports, procfs
from modserv_shim.shimlets.local.options import LocalOptions
from modserv_shim.shimlets.local.render import check_command, render
from modserv_shim.shimlets.local.replica import Replica, ReplicaEnv, ReplicaPhase
from modserv_shim.shimlets.local.state import ReplicaRecord, ResourceRecord, StateStore, valid_resource_id
from modserv_shim.shimlets.local.status import summarize

log = logging.getLogger(__name__)

RESTART_POLL = 0.1  # seconds between looks at a restarted replica


@dataclass
class _Resource:
    """A service's record (persisted) and its live replicas, by index."""

    record: ResourceRecord
    env: ReplicaEnv
    replicas: dict[int, Replica] = field(default_factory=dict)

    def add(self, record: ReplicaRecord) -> Replica:
        replica = self.replicas[record.index] = Replica(record, self.env)
        return replica

    def ordered(self) -> list[Replica]:
        return [self.replicas[i] for i in sorted(self.replicas)]


class LocalShimlet(ShimletBase):
    """Runs each replica of a service as a process on this machine.  See the module docstring."""

    name = "local"
    launch_target = "local"  # runtimes render local command lines for us, not container images

    def __init__(self, ctx: PluginContext) -> None:
        super().__init__()
        self.options = LocalOptions.parse(ctx.options)
        self.root = Path(ctx.data_dir) / "local"
        self._store = StateStore(self.root)
        self._resources: dict[str, _Resource] = {}
        self._lock = asyncio.Lock()  # create / delete / scale, one at a time
        self._hub = WatchHub()
        # trust_env=False: a proxy from the environment must never sit between us and 127.0.0.1.
        self._http = httpx.AsyncClient(trust_env=False)

    # ------------------------------------------------------------ lifecycle

    async def _open(self) -> None:
        """Re-adopt the resources of earlier runs (``start``; a start tried again adopts nothing twice)."""
        for record in self._store.load_all():
            if record.resource_id not in self._resources:
                self._adopt(record)
        self._stop_unrecorded()

    def _stop_unrecorded(self) -> None:
        """Stop model servers an earlier run started but crashed before recording (see procfs)."""
        known = {r.record.pid for res in self._resources.values() for r in res.replicas.values()}
        for pid in procfs.owned_leaders(str(self.root)):
            if pid not in known:
                log.warning("local shimlet: stopping model server pid %d: started by an earlier run that stopped"
                            " before recording it", pid)
                procfs.signal_group(pid, signal.SIGKILL)

    async def _shut(self) -> None:
        """Stop monitoring (``close``); leave every model server running for the next ``start``."""
        try:
            await asyncio.gather(*(r.detach() for res in self._resources.values() for r in res.replicas.values()))
            await self._http.aclose()
        finally:
            self._hub.close()

    # ------------------------------------------------------------- Shimlet

    async def create(self, ctx: DeployContext) -> str:
        resource_id = ctx.service_id
        if not valid_resource_id(resource_id):
            raise PermanentStepError(f"service id {resource_id!r} cannot name a local resource")
        if ctx.replicas < 0:
            raise ValidationFailed("replicas must be >= 0")
        await self._ensure_started()
        async with self._lock:
            existing = self._resources.get(resource_id)
            if existing is not None and not existing.record.failed_reason:
                return resource_id
            check_command(ctx.launch)
            if existing is not None:
                await self._remove(existing)
            record = ResourceRecord(
                resource_id=resource_id,
                launch=ctx.launch,
                desired_replicas=ctx.replicas,
                replicas=[ReplicaRecord(index=i, port=0) for i in range(ctx.replicas)],
            )
            resource = self._register(record)
            for replica in resource.ordered():
                replica.supervise()  # each start (or failure to start) saves the record and tells the watchers
            if not resource.replicas:
                self._changed(resource_id)
        return resource_id

    async def status(self, resource_id: str) -> ResourceStatus:
        await self._ensure_started()
        resource = self._resources.get(resource_id)
        if resource is None:
            return ResourceStatus(ResourcePhase.NOT_FOUND, reason=f"no local resource named {resource_id!r}")
        return self._summarize(resource)

    async def delete(self, resource_id: str) -> None:
        await self._ensure_started()
        async with self._lock:
            resource = self._resources.get(resource_id)
            if resource is not None:
                await self._remove(resource)
                self._hub.gone(resource_id)
            elif valid_resource_id(resource_id):
                self._store.remove(resource_id)  # leftovers of an unreadable state file

    # -------------------------------------------------------- capabilities

    async def scale(self, resource_id: str, replicas: int) -> None:
        if replicas < 0:
            raise ValidationFailed("replicas must be >= 0")
        await self._ensure_started()
        async with self._lock:
            resource = self._get(resource_id)
            record = resource.record
            if record.failed_reason:
                raise StateConflict(f"{resource_id} has failed; delete it and deploy again before scaling")
            record.desired_replicas = replicas
            for index in range(len(resource.replicas), replicas):
                replica_record = ReplicaRecord(index=index, port=0)
                record.replicas.append(replica_record)
                resource.add(replica_record).supervise()
            for replica in reversed(resource.ordered()[replicas:]):
                await replica.stop()
                del resource.replicas[replica.index]
                record.replicas.remove(replica.record)
            self._changed(resource_id)

    async def restart(self, resource_id: str) -> None:
        """A rolling restart: each replica is stopped and started again, the next one once this one is
        ready (each new process reads the launch spec's files, such as the API key, anew)."""
        await self._ensure_started()
        resource = self._get(resource_id)
        timeout = resource.record.launch.startup_timeout
        for old in resource.ordered():
            async with self._lock:
                if self._resources.get(resource_id) is not resource or resource.replicas.get(old.index) is not old:
                    continue  # deleted, or scaled down, meanwhile
                await old.stop()
                del resource.replicas[old.index]
                fresh = resource.add(old.record)
                fresh.supervise()
            deadline = time.monotonic() + timeout
            while fresh.phase is not ReplicaPhase.READY:
                if fresh.phase is ReplicaPhase.FAILED or time.monotonic() > deadline:
                    raise BackendUnavailable(f"replica {fresh.index} of {resource_id} did not come back after the"
                                             f" restart: {fresh.failure or fresh.problem or 'not ready in time'}")
                await asyncio.sleep(RESTART_POLL)

    async def logs(self, resource_id: str, tail: int = 100) -> list[str]:
        await self._ensure_started()
        resource = self._get(resource_id)
        lines: list[str] = []
        for replica in resource.ordered():
            own = await asyncio.to_thread(logfiles.tail, replica.log_path, tail)
            lines += [f"[replica {replica.index}] {line}" for line in own]
        return lines

    def watch(self) -> AsyncIterator[Event]:
        return self._hub.watch()

    async def capacity(self) -> Capacity:
        """This machine: the CPUs this process may run on, and its memory (``/proc/meminfo``, or the cgroup's
        limit).  The local shimlet knows no accelerators."""
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        memory = (await asyncio.to_thread(read_host_memory)).total_bytes
        return Capacity((HostCapacity(socket.gethostname(), float(cpus), memory or None),))

    def render(self, ctx: DeployContext) -> dict[str, Any]:
        """What ``create`` would start (for ``dryRun``): see :mod:`.render`."""
        return render(ctx, self.options.host, self._store.resource_dir(ctx.service_id))

    def resource_ids(self) -> list[str]:
        """Ids of every resource this shimlet manages (after ``start``)."""
        return sorted(self._resources)

    # ------------------------------------------------------------ helpers

    def _get(self, resource_id: str) -> _Resource:
        resource = self._resources.get(resource_id)
        if resource is None:
            raise NotFound(f"no local resource named {resource_id!r}")
        return resource

    def _register(self, record: ResourceRecord) -> _Resource:
        rid = record.resource_id
        env = ReplicaEnv(
            resource_id=rid,
            launch=record.launch,
            options=self.options,
            http=self._http,
            log_dir=self._store.resource_dir(rid),
            pick_port=self._pick_port,
            changed=functools.partial(self._changed, rid),
            owner=str(self.root),
        )
        resource = self._resources[rid] = _Resource(record, env)
        for replica_record in record.replicas:
            resource.add(replica_record)
        return resource

    def _adopt(self, record: ResourceRecord) -> None:
        for index in range(len(record.replicas), record.desired_replicas):  # a scale-up cut short
            record.replicas.append(ReplicaRecord(index=index, port=0))
        resource = self._register(record)
        for replica in resource.ordered():
            if record.failed_reason:
                replica.phase = ReplicaPhase.FAILED
                continue
            problem = None
            rec = replica.record
            if rec.pid is not None and rec.start_time is None and procfs.owner_of(rec.pid) == str(self.root):
                rec.start_time = procfs.start_time(rec.pid)  # saved before its start time was read
            if rec.pid is not None and not procfs.is_ours(rec.pid, rec.start_time):
                log.info("local shimlet: %s replica %d (pid %s) is gone", record.resource_id, rec.index, rec.pid)
                replica.forget_process()  # and kill the workers it may have left behind
                if record.was_ready:
                    problem = f"replica {rec.index} was not running when the shim started; starting it again"
            elif rec.pid is not None:
                replica.phase = ReplicaPhase.ADOPTED  # alive, but whether it answers is not known yet
            replica.supervise(problem=problem)
        self._changed(record.resource_id)

    async def _remove(self, resource: _Resource) -> None:
        """Stop every replica and forget the resource.  Forgotten first: late callbacks find nothing."""
        rid = resource.record.resource_id
        del self._resources[rid]
        self._hub.forget(rid)  # a resource created again under this id is news whatever its status
        results = await asyncio.gather(*(replica.stop() for replica in resource.ordered()), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:  # something survived: keep tracking it so that delete can be retried
            self._resources[rid] = resource
            raise errors[0]
        self._store.remove(rid)

    def _pick_port(self, record: ReplicaRecord) -> int:
        taken = {
            other.port
            for res in self._resources.values()
            for other in res.record.replicas
            if other is not record and other.port
        }
        return ports.pick_port(self.options.host, record.port or None, taken)

    def _summarize(self, resource: _Resource) -> ResourceStatus:
        return summarize(resource.record, resource.ordered(), self.options.endpoint_host)

    def _changed(self, resource_id: str) -> None:
        """A replica changed: update the record, persist it, tell the watchers."""
        resource = self._resources.get(resource_id)
        if resource is None:
            return
        record = resource.record
        if record.failed_reason is None:
            record.failed_reason = next((r.failure for r in resource.ordered() if r.failure), None)
        status = self._summarize(resource)
        if status.phase is ResourcePhase.READY and record.desired_replicas > 0:
            record.was_ready = True
        try:
            self._store.save(record)
        except OSError as exc:  # keep serving; the next change tries again
            log.error("local shimlet: cannot save the state of %s: %s", resource_id, exc)
        self._hub.publish(resource_id, status)  # only when it changed

