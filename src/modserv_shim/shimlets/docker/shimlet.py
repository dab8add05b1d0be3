"""The ``docker`` shimlet: each replica of a service is one container on a Docker Engine.

Contracts (see :class:`~modserv_shim.plugins.Shimlet`) and how they are kept:

* ``create`` makes the replicas' containers (named ``modserv-<service id>-<i>``, see
  :mod:`.render`) unless they exist, after bringing the image per ``pull``
  (:mod:`.deploy`).  Idempotent per service id: an existing container is the replica.
  ``create`` on a FAILED service is a retry: its replicas start over.  An Engine refusal
  that waiting cannot fix (no image with ``pull: never``, no GPU driver) is a
  :class:`~modserv_shim.errors.PermanentStepError` naming the image or device and the
  Engine's words, and the service is FAILED with the same reason.  So is an
  ``acceleratorType`` the host's GPU label does not name (:mod:`.placement`).
* ``status`` answers from the cache that one label-filtered event stream keeps
  (:mod:`.watcher`) and the keeper's memory (:mod:`.keeper`); see :mod:`.status`.
* ``delete`` (idempotent; the resource id is the service id) stops every container
  labelled with the service id (SIGTERM, SIGKILL after ``stop_grace_period``) and
  removes it.  It asks the Engine by label, not the cache, so a container made by a
  ``create`` whose result was never recorded goes too.
* ``scale`` adds the missing replica containers or removes the highest indexes first;
  new ones are rendered from replica 0's ``deploy`` label, so scaling works after a
  restart of the shim too.
* ``logs`` reads each replica's last lines (``[replica i] line``); ``render`` returns
  the create bodies (dry runs); ``watch`` streams every status change (a WatchHub).
* ``start`` connects, lists and watches before it returns: containers of an earlier run
  are *adopted* by their labels, never created twice; ``close`` stops watching and
  leaves every container running.
* A dying container is restarted with back-off by the shim's rule unless a Docker
  restart policy is configured (:mod:`.keeper`); so is a ready one that stops answering
  its health checks.  Replicas the rule gave up on stay FAILED after a restart of the
  shim (:mod:`.state`, under ``<data_dir>/docker/``).
* ``capacity`` is the Docker host as ``GET /info`` describes it (CPUs, memory, labelled GPUs).

``inspect_model`` validates the model where the containers will see it: read by the
shim when the Engine is on this machine, else in a short validation container
(:mod:`.inspect`, ``model_validation``).  ``shared_model_volume`` tells a pipeline where the
shim may put a file the containers will see (a bound host folder of a local Engine).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from modserv_shim.errors import BackendUnavailable, NotFound, PermanentStepError, StateConflict, ValidationFailed
from modserv_shim.kit.shimlet import Event, ShimletBase, WatchHub
from modserv_shim.plugins import (
    Capacity,
    DeployContext,
    HostCapacity,
    PluginContext,
    ResourcePhase,
    ResourceStatus,
    SharedModelVolume,
)
from modserv_shim.shimlets.docker import placement, render
from modserv_shim.shimlets.docker.deploy import Deployer
from modserv_shim.shimlets.docker.engine import Engine
from modserv_shim.shimlets.docker.inspect import ModelCheck, shared_volume
from modserv_shim.shimlets.docker.keeper import Keeper, running
from modserv_shim.shimlets.docker.options import DockerOptions
from modserv_shim.shimlets.docker.state import GivenUp
from modserv_shim.shimlets.docker.status import Track, summarize
from modserv_shim.shimlets.docker.watcher import Containers, Watcher, replica_of
from modserv_shim.spec import DeploySpec

log = logging.getLogger(__name__)

OURS = f"{render.MANAGED_BY}={render.MANAGER}"


class DockerShimlet(ShimletBase):
    """Runs each replica as a Docker container.  See the module docstring."""

    name = "docker"
    launch_target = "container"

    def __init__(self, ctx: PluginContext) -> None:
        super().__init__()
        self.options = DockerOptions.parse(ctx.options)
        self._hub = WatchHub()
        self._containers = Containers()
        self._tracks: dict[str, Track] = {}
        self._statuses: dict[str, ResourceStatus] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._engine: Engine | None = None
        self._watcher: Watcher | None = None
        self._keeper: Keeper | None = None
        self._deployer: Deployer | None = None
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._state_dir = Path(ctx.data_dir) / "docker"  # what outlives a restart of the shim (.state)
        self._model_check: ModelCheck | None = None

    @property
    def programs(self) -> Mapping[str, str]:
        """Runtime name -> the program the configured image runs for it (``images.<runtime>.program``)."""
        return self.options.programs

    def shared_model_volume(self, spec: DeploySpec) -> SharedModelVolume:
        """The bound host folder (``model_volume.source``) as the shim and the containers see it, when the
        Engine is on this machine; ValidationFailed saying what to configure otherwise."""
        return shared_volume(self.options)

    # ------------------------------------------------------------ lifecycle

    async def _open(self) -> None:
        engine = Engine(self.options)
        try:
            await engine.version()
            self._http = httpx.AsyncClient(trust_env=False)
            self._keeper = Keeper(engine, self.options, self._http, self._refresh, self._reinspect,
                                  GivenUp(self._state_dir))
            self._deployer = Deployer(engine, self.options, self._ports_in_use)
            self._watcher = Watcher(engine, OURS, self._containers, self._changed, self.options.reconnect_backoff_max)
            self._engine = engine
            self._task = asyncio.create_task(self._watcher.run(), name="docker-events")
            async with asyncio.timeout(self.options.api_timeout):
                await self._watcher.synced.wait()
            self._keeper.given_up.keep_only(self._container_names())
        except BaseException:
            await self._stop_watching()
            await engine.close()
            raise
        log.info("docker shimlet: watching %s; %d service(s) adopted", engine.url, len(self._tracks))

    async def _shut(self) -> None:
        try:
            await self._stop_watching()
            if self._engine is not None:
                await self._engine.close()
        finally:
            self._hub.close()

    async def _stop_watching(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._keeper is not None:
            self._keeper.close()
        if self._http is not None:
            await self._http.aclose()

    # ------------------------------------------------------------- Shimlet

    async def capacity(self) -> Capacity:
        """The Docker host (``GET /info``): its CPUs (``NCPU``), memory (``MemTotal``) and GPUs when its
        Engine labels name them (:func:`.placement.host_gpus`)."""
        await self._ensure_started()
        assert self._engine is not None
        info = await self._engine.info()
        cpus, memory = info.get("NCPU"), info.get("MemTotal")
        return Capacity((HostCapacity(
            str(info.get("Name") or self._engine.url),
            float(cpus) if isinstance(cpus, int | float) and cpus > 0 else None,
            int(memory) if isinstance(memory, int) and memory > 0 else None,
            placement.host_gpus(info)),))

    async def create(self, ctx: DeployContext) -> str:
        if ctx.replicas < 0:
            raise ValidationFailed("replicas must be >= 0")
        await self._ensure_started()
        image = render.image_of(ctx.launch, self.options)
        render.create_body(ctx, 0, 0, self.options)  # refuses a model outside model_volume before anything
        sid = ctx.service_id
        async with self._lock(sid):
            track = self._tracks.get(sid)
            if track is not None and track.failed_reason:
                self._parts()[1].retry(self._containers.of(sid))
            self._tracks[sid] = Track(desired=ctx.replicas, was_ready=track.was_ready if track else False)
            try:
                await placement.check(self._parts()[0], ctx.spec.resourceRequirements.acceleratorType)
                await self._parts()[2].ensure_image(image, ctx.log)
                await self._fill(ctx, ctx.replicas)
            except PermanentStepError as exc:
                self._tracks[sid].failed_reason = str(exc)
                self._refresh(sid)
                raise
            self._retry_failed(sid)
        return sid

    async def status(self, resource_id: str) -> ResourceStatus:
        await self._ensure_started()
        status = self._statuses.get(resource_id)
        if status is None:
            return ResourceStatus(ResourcePhase.NOT_FOUND, reason=f"no container of {resource_id!r} on the"
                                  f" Docker Engine at {self.options.engine_url}")
        return status

    async def delete(self, resource_id: str) -> None:
        await self._ensure_started()
        engine = self._parts()[0]
        async with self._lock(resource_id):
            ids = set(await engine.list_ids(f"{render.SERVICE_ID}={resource_id}"))
            ids |= {str(d["Id"]) for d in self._containers.of(resource_id)}
            await self._remove(ids)
            self._tracks.pop(resource_id, None)
            self._refresh(resource_id)

    # -------------------------------------------------------- capabilities

    async def scale(self, resource_id: str, replicas: int) -> None:
        if replicas < 0:
            raise ValidationFailed("replicas must be >= 0")
        await self._ensure_started()
        async with self._lock(resource_id):
            docs = self._existing(resource_id)
            track = self._tracks.setdefault(resource_id, Track(desired=len(docs)))
            if track.failed_reason:
                raise StateConflict(f"{resource_id} has failed; delete it and deploy again before scaling")
            track.desired = replicas
            extra = [d for d in reversed(docs) if replica_of(d) >= replicas]  # highest index first
            await self._remove([str(d["Id"]) for d in extra])
            if replicas > 0:
                await self._fill(render.context_of(docs[0], replicas), replicas)
            self._refresh(resource_id)

    async def logs(self, resource_id: str, tail: int = 100) -> list[str]:
        await self._ensure_started()
        engine = self._parts()[0]
        lines: list[str] = []
        for doc in self._existing(resource_id):
            own = await engine.logs(str(doc["Id"]), tail) if tail > 0 else []
            lines += [f"[replica {replica_of(doc)}] {line}" for line in own[-tail:]] if tail > 0 else []
        return lines

    def watch(self) -> AsyncIterator[Event]:
        return self._hub.watch()

    async def inspect_model(self, spec: DeploySpec) -> Mapping[str, Any]:
        """Facts of ``spec.modelFile`` as the containers will see it (:mod:`.inspect`)."""
        await self._ensure_started()
        engine, _, deployer = self._parts()
        if self._model_check is None:
            self._model_check = ModelCheck(engine, self.options, deployer.ensure_image)
        return await self._model_check.inspect(spec)

    def render(self, ctx: DeployContext) -> dict[str, Any]:
        """The create bodies ``create`` would send (no Engine needed)."""
        return render.render(ctx, self.options)

    def resource_ids(self) -> list[str]:
        return sorted(self._statuses)

    # ------------------------------------------------------------ helpers

    def _parts(self) -> tuple[Engine, Keeper, Deployer]:
        if self._engine is None or self._keeper is None or self._deployer is None:
            raise BackendUnavailable("the docker shimlet is not connected to a Docker Engine")
        return self._engine, self._keeper, self._deployer

    def _lock(self, service_id: str) -> asyncio.Lock:
        return self._locks.setdefault(service_id, asyncio.Lock())

    def _existing(self, resource_id: str) -> list[dict[str, Any]]:
        docs = self._containers.of(resource_id)
        if not docs:
            raise NotFound(f"no container of {resource_id!r} on the Docker Engine at {self.options.engine_url}")
        return docs

    async def _fill(self, ctx: DeployContext, replicas: int) -> None:
        """Create the replicas ``0..replicas-1`` that have no container yet."""
        deployer = self._parts()[2]
        have = {replica_of(d) for d in self._containers.of(ctx.service_id)}
        made = await asyncio.gather(*(deployer.create_replica(ctx, i)
                                      for i in range(replicas) if i not in have))
        for container in made:
            await self._reinspect(container)

    def _retry_failed(self, sid: str) -> None:
        """Containers of a retried service that are not running: the keeper starts them over."""
        self._parts()[1].observe(self._containers.of(sid))

    async def _remove(self, ids: Iterable[str]) -> None:
        _, keeper, deployer = self._parts()
        ids = list(ids)
        for container_id in ids:
            doc = next((d for s in self._containers.services() for d in self._containers.of(s)
                        if d["Id"] == container_id), None)
            keeper.stopping(str((doc or {}).get("Name") or "").lstrip("/"))
        await deployer.remove(ids)
        for container_id in ids:
            self._changed(self._containers.put(container_id, None))
        for container_id in ids:
            await self._reinspect(container_id)

    async def _reinspect(self, container_id: str) -> None:
        if self._watcher is not None:
            await self._watcher.refresh(container_id)

    def _ports_in_use(self) -> Iterable[int]:
        for sid in self._containers.services():
            for doc in self._containers.of(sid):
                value = ((doc.get("Config") or {}).get("Labels") or {}).get(render.PORT, "")
                if str(value).isdigit():
                    yield int(value)

    def _container_names(self) -> list[str]:
        return [str(d.get("Name") or "").lstrip("/") for s in self._containers.services()
                for d in self._containers.of(s)]

    def _changed(self, services: Iterable[str]) -> None:
        for sid in services:
            self._refresh(sid)

    def _refresh(self, sid: str) -> None:
        """Recompute one service's status from the cache; tell the keeper and the watchers."""
        docs = self._containers.of(sid)
        track = self._tracks.get(sid)
        if track is None and not docs:  # deleted, or never ours
            if self._statuses.pop(sid, None) is not None:
                self._hub.gone(sid)
            return
        if self._keeper is None:
            return
        if track is None:  # first seen in this run: adopted
            track = self._tracks[sid] = Track(desired=len(docs), was_ready=any(running(d) for d in docs))
            self._keeper.adopt(docs)
        self._keeper.observe(docs)
        memory = {replica_of(d): self._keeper.memory(d) for d in docs}
        status = summarize(docs, memory, track, self.options)
        self._statuses[sid] = status
        self._hub.publish(sid, status)
