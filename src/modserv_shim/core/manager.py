"""The service manager: the user operations (deploy, dry run, delete, scale, retry, logs) and reads.

It owns no state change itself: :meth:`ServiceStates.transition <modserv_shim.core.states.ServiceStates.transition>`
is the one function that changes a lifecycle state.  Its collaborators, built here:

- :class:`~modserv_shim.core.states.ServiceStates`: the live services, their locks, transitions;
- :class:`~modserv_shim.core.waiters.Waiters`: the ``waitFor`` long poll;
- :class:`~modserv_shim.core.pipeline_tasks.PipelineTasks`: one background pipeline per service;
- :class:`~modserv_shim.core.watcher.StatusWatcher`: shimlet watch streams and the poll loop;
- :class:`~modserv_shim.core.terminations.Terminations`: removing workloads in the background;
- :class:`~modserv_shim.core.plugin_service.PluginService`: listing and hot-loading plugins.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from modserv_shim.allowlist import RequestPolicy
from modserv_shim.core import journal
from modserv_shim.core.admission import Admission
from modserv_shim.core.capacity import CapacityMonitor
from modserv_shim.core.clock import Clock, SystemClock
from modserv_shim.core.executor import StepOverride
from modserv_shim.core.keys import ServiceKeys
from modserv_shim.core.lifecycle import PIPELINE_STATES, SERVING_STATES, State
from modserv_shim.core.metrics import Metrics
from modserv_shim.core.metrics_store import rebuild_metrics
from modserv_shim.core.pipeline_tasks import PipelineTasks
from modserv_shim.core.plugin_service import PluginService
from modserv_shim.core.records import Event, JournalEntry, ServiceRecord, StepLog, StepRun, now
from modserv_shim.core.registry import Registry
from modserv_shim.core.states import SYSTEM, ServiceStates
from modserv_shim.core.store import IdempotencyKey, Store
from modserv_shim.core.terminations import Terminations
from modserv_shim.core.waiters import Waiters
from modserv_shim.core.watcher import StatusWatcher
from modserv_shim.errors import (
    BackendUnavailable,
    IdempotencyConflict,
    NotFound,
    NotSupported,
    PluginLoadError,
    PluginNotFound,
    StateConflict,
    ValidationFailed,
)
from modserv_shim.plugins import (
    API_KEY_OUTPUT,
    AccessChecker,
    Caller,
    LogSource,
    Phase,
    Restartable,
    Scalable,
    ScaleChecker,
    Shimlet,
    StepSpec,
    issues_api_keys,
)
from modserv_shim.private import mask_private, private_values
from modserv_shim.spec import DeploySpec, redact

log = structlog.get_logger("modserv_shim.manager")

MAX_SERVICE_ID = 120  # modelName (63) + "-" + a UUID (36), with room; the store's column holds 120


@dataclass(frozen=True)
class ManagerConfig:
    data_dir: Path
    default_shimlet: str
    default_pipeline: str
    step_overrides: Mapping[str, Mapping[str, StepOverride]]  # pipeline -> step -> override
    poll_interval: float = 2.0
    capacity_interval: float = 30.0  # seconds between readings of the shimlets' capacity (metrics)
    delete_wait: float = 30.0
    policy: RequestPolicy = field(default_factory=RequestPolicy)


@dataclass(frozen=True)
class Accepted:
    """An accepted deploy: the stored service; its API key, shown this once (pipelines that
    ``issues_api_keys``); whether an ``Idempotency-Key`` replayed an earlier deploy."""

    record: ServiceRecord
    api_key: str | None = None
    replayed: bool = False


@dataclass(frozen=True)
class DryRunResult:
    service_id: str
    total_steps: list[str]
    steps_run: list[StepRun]
    logs: list[StepLog]
    outputs: dict[str, Any]


class ServiceManager:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        config: ManagerConfig,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.metrics = metrics or Metrics()
        self.clock = clock or SystemClock()
        self.waiters = Waiters()
        self.states = ServiceStates(store, self.metrics, self.waiters)
        self.watcher = StatusWatcher(self.states, registry, config.poll_interval,
                                     in_pipeline=self._in_pipeline)
        self.pipelines = PipelineTasks(self.states, registry, self.watcher, clock=self.clock,
                                       data_dir=config.data_dir, step_overrides=config.step_overrides)
        self.keys = ServiceKeys(config.data_dir)
        self.terminations = Terminations(self.states, registry, self.clock, self.keys)
        self.plugins = PluginService(store, registry, default_shimlet=config.default_shimlet,
                                     default_pipeline=config.default_pipeline, metrics=self.metrics)
        self.metrics.watch_services(self.states.live)  # a scrape reads the live services
        self.capacity = CapacityMonitor(registry, self.metrics, config.capacity_interval)
        self.admission = Admission(registry, config.policy, default_shimlet=config.default_shimlet,
                                   default_pipeline=config.default_pipeline, steps_of=self.steps_of)

    def _in_pipeline(self, service_id: str) -> bool:  # the watcher is built before the pipeline tasks
        return self.pipelines.running(service_id)

    # --------------------------------------------------------------- start/stop

    async def start(self) -> None:
        """Reload hot-loaded plugins and resume every service that is not terminated."""
        self.waiters.bind(asyncio.get_running_loop())
        interrupted = await self.store.interrupt_running_steps()
        if interrupted:
            log.warning("resuming after an unclean stop", interrupted_steps=interrupted)
        await rebuild_metrics(self.store, self.metrics)  # counts survive a restart; before anything counts
        await self.plugins.reload_stored()
        for rec in await self.store.list_services([s for s in State if s is not State.TERMINATED]):
            self.states.add(rec)
            try:
                await self._resume(rec)
            except Exception as exc:  # one service must not keep the server from starting
                log.warning("cannot read the status of a service after restart; the poller keeps trying",
                            service_id=rec.id, state=rec.state.value, error=f"{type(exc).__name__}: {exc}")
        self.watcher.start()
        self.plugins.warm_up()
        self.capacity.start()

    async def _resume(self, rec: ServiceRecord) -> None:
        if rec.state in PIPELINE_STATES:
            log.info("resuming pipeline", service_id=rec.id, step=rec.current_step_name)
            self.pipelines.start(rec, SYSTEM)
        elif rec.state is State.TERMINATING:
            self.terminations.start(rec, SYSTEM)
        elif rec.resource_id is not None and rec.state is State.FAILED and rec.current_step < len(rec.total_steps):
            return  # failed inside its pipeline: waits for a retry
        elif rec.resource_id is not None:
            shimlet = await self.registry.shimlet(rec.shimlet)
            await self.watcher.ensure_watch(rec.shimlet, shimlet)
            await self.watcher.apply_status(rec, await shimlet.status(rec.resource_id))

    def stop_waiting(self) -> None:
        """Answer every pending ``waitFor`` now (the server is stopping).  Safe from a signal handler
        or another thread."""
        self.waiters.stop_waiting()
        self.store.changes.stop()  # the event streams end too

    async def close(self) -> None:
        """Stop our own tasks; workloads keep running (they survive a restart)."""
        tasks = [*self.pipelines.tasks(), *self.watcher.tasks(), *self.terminations.tasks(), *self.plugins.tasks(),
                 *self.capacity.tasks()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ----------------------------------------------------------------- reads

    async def get(self, service_id: str) -> ServiceRecord:
        if len(service_id) > MAX_SERVICE_ID:  # no id is that long: do not carry it to the store
            raise NotFound(f"no service with id {service_id[:MAX_SERVICE_ID]!r}... (ids have at most"
                           f" {MAX_SERVICE_ID} characters)")
        rec = self.states.find(service_id) or await self.store.get_service(service_id)
        if rec is None:
            raise NotFound(f"no service with id {service_id!r}")
        return rec

    async def wait_for_state(self, service_id: str, states: Collection[State], timeout: float) -> ServiceRecord:
        """The service once it is in one of ``states``, failed or terminated, or after ``timeout`` seconds
        as it is then (a long poll: clients learn of a state change the moment it is stored)."""
        rec = await self.get(service_id)
        return await self.waiters.wait_for_state(rec, states, timeout, self.states.is_live)

    async def list_services(self, state: State | None = None, *, limit: int | None = None,
                            offset: int = 0) -> list[ServiceRecord]:
        """For listings: records without their step outputs, read off the event loop."""
        return await self.store.list_services([state] if state else None, limit=limit, offset=offset, light=True)

    async def steps_of(self, pipeline_name: str) -> list[StepSpec]:
        return await self.pipelines.steps_of(pipeline_name)

    async def pipeline(self, service_id: str) -> tuple[ServiceRecord, list[StepSpec] | None, list[StepRun]]:
        """The service, its pipeline's steps (None when the pipeline cannot be loaded now: the record
        still says what ran) and every step attempt."""
        rec = await self.get(service_id)
        try:
            steps: list[StepSpec] | None = await self.steps_of(rec.pipeline)
        except (PluginNotFound, PluginLoadError):
            steps = None
        return rec, steps, await self.store.list_step_runs(rec.id)

    async def pipeline_logs(self, service_id: str, step: str | None, limit: int
                            ) -> tuple[ServiceRecord, list[StepRun], list[StepLog]]:
        """The service, its step attempts and (at most ``limit``) log lines, of one step or all."""
        rec = await self.get(service_id)
        runs = await self.store.list_step_runs(rec.id)
        return rec, runs, await self.store.list_step_logs(rec.id, step, limit)

    async def events(self, service_id: str) -> list[Event]:
        rec = await self.get(service_id)
        return await self.store.list_events(rec.id)

    async def recent_events(self, limit: int) -> list[Event]:
        """The last ``limit`` state changes of all services, oldest first."""
        return await self.store.recent_events(limit)

    async def journal_head(self) -> int:
        """The id of the newest journal row: a stream of all services "from now" starts after it."""
        return await self.store.journal_head()

    def follow_journal(self, after: int, service_id: str | None = None) -> AsyncIterator[list[JournalEntry]]:
        """The journal rows above ``after`` as they are committed (:func:`modserv_shim.core.journal.follow`)."""
        return journal.follow(self.store, after, service_id)

    def private_of(self, service_id: str) -> tuple[str, ...]:
        """What a live service keeps private now (masked in what is shown of it)."""
        rec = self.states.find(service_id)
        return private_values(rec.outputs) if rec is not None else ()

    async def check_ready(self) -> None:
        """Raise :class:`BackendUnavailable` unless the store answers."""
        try:
            await self.store.count_services()
        except Exception as exc:
            raise BackendUnavailable(f"not ready: the store does not answer ({type(exc).__name__})") from exc

    def render_metrics(self) -> bytes:
        """The Prometheus text format."""
        return self.metrics.render()

    async def logs(self, service_id: str, tail: int) -> list[str]:
        """The model server's own output (shimlets that can show logs)."""
        rec = await self.get(service_id)
        shimlet = await self.registry.shimlet(rec.shimlet)
        if not isinstance(shimlet, LogSource):
            raise NotSupported(f"the {rec.shimlet} shimlet cannot show logs")
        if not rec.resource_id:
            return []
        lines = await shimlet.logs(rec.resource_id, tail)
        private = private_values(rec.outputs)
        return [mask_private(line, private) for line in lines] if private else lines

    # ------------------------------------------------------------------ deploy

    async def deploy_once(self, spec: DeploySpec, operator: str, key: str, *, caller: Caller | None = None
                          ) -> Accepted:
        """A deploy with an ``Idempotency-Key``: the same key and body (from the same caller, within a day)
        return the service the first request created (``replayed``, without its API key: that was shown
        once); the same key with another body is an :class:`IdempotencyConflict`.  The key is stored in
        the transaction that stores the service."""
        digest = self.admission.body_digest(key, spec)
        async with self.admission.key_held(operator, key):
            while True:
                found = await self.store.find_idempotency_key(operator, key)
                if found is not None:
                    if found.body_sha256 != digest:
                        raise IdempotencyConflict(
                            f"the Idempotency-Key {key!r} was used for another deploy ({found.service_id})"
                            " with a different body; use a new key for a new deploy")
                    return Accepted(await self.get(found.service_id), replayed=True)
                try:
                    return await self.deploy(spec, operator, idempotency=(key, digest), caller=caller)
                except IdempotencyConflict:
                    continue  # another process took the key between our look and our write: look again

    async def deploy(
        self, spec: DeploySpec, operator: str, *, idempotency: tuple[str, str] | None = None,
        caller: Caller | None = None,
    ) -> Accepted:
        """Store the accepted deploy, then run its pipeline in the background.  ``caller`` (None: a
        trusted internal call) must be allowed by the pipeline's :class:`AccessChecker`."""
        rec, _, pipeline, _ = await self.admission.admit(spec, operator, caller)
        api_key: str | None = None
        if issues_api_keys(pipeline):  # the key file exists before the service does: a crash loses no key
            api_key, rec.outputs[API_KEY_OUTPUT] = await asyncio.to_thread(self.keys.issue, rec.id)
        key = IdempotencyKey(operator, idempotency[0], idempotency[1], rec.id, rec.created_at) if idempotency else None
        try:
            await self.store.insert_service(rec, key)  # accepted == durable: kill -9 after this loses nothing
        except BaseException:
            if api_key is not None:
                await asyncio.to_thread(self.keys.remove, rec.id)
            raise
        self.states.accepted(rec)
        log.info("deploy accepted", service_id=rec.id, operator=operator, shimlet=rec.shimlet,
                 pipeline=rec.pipeline, params=redact(rec.spec), api_key=api_key is not None)
        self.pipelines.start(rec, operator)
        return Accepted(rec, api_key)

    async def dry_run(self, spec: DeploySpec, operator: str, *, caller: Caller | None = None) -> DryRunResult:
        """Run the steps of the ``pipeline_running`` phase and return what they rendered; store nothing."""
        rec, shimlet, pipeline, steps = await self.admission.admit(spec, operator, caller)
        if issues_api_keys(pipeline):  # where the key would be; none is made
            rec.outputs[API_KEY_OUTPUT] = self.keys.issue(rec.id, write=False)[1]
        recorder = await self.pipelines.dry_run(rec, pipeline, steps, shimlet, operator)
        return DryRunResult(rec.id, rec.total_steps, recorder.runs, recorder.logs, rec.outputs)

    # --------------------------------------------------------- user operations

    async def delete(self, service_id: str, operator: str) -> ServiceRecord:
        """Cancel a running pipeline, remove the workload, end in ``terminated``.

        Waits up to ``delete_wait`` seconds; after that the removal goes on in
        the background and the service is returned as ``terminating``.
        """
        rec = await self.get(service_id)
        async with self.states.lock(rec.id):  # one delete at a time; no transition slips in between
            if rec.state is State.TERMINATED:
                return rec
            task = self.terminations.get(rec.id)
            if task is None:
                await self.pipelines.cancel(rec.id)
                await self.states.transition_locked(rec, State.TERMINATING, None, operator)
                task = self.terminations.start(rec, operator)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.delete_wait):
                await asyncio.shield(task)
        return rec

    async def scale(self, service_id: str, replicas: int, operator: str) -> ServiceRecord:
        if not 1 <= replicas <= 64:
            raise ValidationFailed("replicas must be between 1 and 64")
        rec = await self.get(service_id)
        shimlet = await self.registry.shimlet(rec.shimlet)
        if not isinstance(shimlet, Scalable):
            raise NotSupported(f"the {rec.shimlet} shimlet cannot scale services")
        async with self.states.lock(rec.id):  # a delete cannot slip between the check and the scale
            if rec.state not in SERVING_STATES or rec.resource_id is None:
                raise StateConflict(
                    f"only a running or degraded service can be scaled; {rec.id} is {rec.state.value}")
            await self._check_scale(rec, shimlet, replicas)
            # desired count first: a crash after the shimlet call must not forget it
            rec.spec = {**rec.spec, "replicaCount": replicas}
            rec.replicas_desired = replicas
            await self.store.update_service(rec.id, spec=rec.spec, replicas_desired=replicas)
            await shimlet.scale(rec.resource_id, replicas)
            await self.store.add_event(Event(rec.id, now(), rec.state.value, rec.state.value,
                                             f"scaled to {replicas} replicas", operator))
        log.info("service scaled", service_id=rec.id, replicas=replicas, operator=operator)
        return rec

    async def _check_scale(self, rec: ServiceRecord, shimlet: Shimlet, replicas: int) -> None:
        """The fit check a deploy runs, for the new replica count (refused scale-ups change nothing)."""
        try:
            pipeline = await self.registry.pipeline(rec.pipeline)
        except PluginNotFound:
            return  # a hot-loaded pipeline that is gone: nothing can check; the shimlet still can refuse
        if isinstance(pipeline, ScaleChecker):
            spec = DeploySpec.model_validate(rec.spec)
            await asyncio.to_thread(pipeline.check_scale, spec, rec.outputs, replicas, shimlet)  # reads /proc

    async def rotate_key(self, service_id: str, operator: str, *, caller: Caller | None = None) -> Accepted:
        """A new API key for a service that has one; the old one stops working.  A deployed workload
        is restarted replica by replica (its shimlet must be :class:`Restartable`) to take the new key."""
        rec = await self.get(service_id)
        if not isinstance(rec.outputs.get(API_KEY_OUTPUT), dict):
            raise StateConflict(f"{rec.id} has no API key: its pipeline, {rec.pipeline}, serves without one")
        shimlet = await self.registry.shimlet(rec.shimlet)
        async with self.states.lock(rec.id):  # no delete or second rotation in between
            if rec.state in (State.TERMINATING, State.TERMINATED):
                raise StateConflict(f"{rec.id} is {rec.state.value}: its key cannot be rotated")
            if caller is not None:
                try:
                    pipeline = await self.registry.pipeline(rec.pipeline)
                except PluginNotFound:
                    pipeline = None
                if isinstance(pipeline, AccessChecker):
                    pipeline.check_access(DeploySpec.model_validate(rec.spec), caller)
            deployed = rec.resource_id is not None
            if deployed and not isinstance(shimlet, Restartable):
                raise NotSupported(f"the {rec.shimlet} shimlet cannot restart a workload, so a new key would not"
                                   " reach it; delete the service and deploy it again")
            api_key, info = await asyncio.to_thread(self.keys.issue, rec.id)
            rec.outputs[API_KEY_OUTPUT] = info  # in place: a running pipeline's executor holds this mapping
            await self.store.update_service(rec.id, outputs=rec.outputs)
            await self.store.add_event(Event(rec.id, now(), rec.state.value, rec.state.value,
                                             f"API key rotated (now {info['fingerprint']})", operator))
            log.info("API key rotated", service_id=rec.id, operator=operator, fingerprint=info["fingerprint"])
        if deployed and isinstance(shimlet, Restartable) and rec.resource_id is not None:
            await shimlet.restart(rec.resource_id)  # unlocked: the watcher reports the replicas meanwhile
        return Accepted(rec, api_key)

    async def retry(self, service_id: str, operator: str) -> ServiceRecord:
        """Run a failed service's pipeline again from the step that failed."""
        rec = await self.get(service_id)
        steps = await self.steps_of(rec.pipeline)
        async with self.states.lock(rec.id):  # two retries at once start one pipeline
            if rec.state is not State.FAILED:
                raise StateConflict(f"only a failed service can be retried; {rec.id} is {rec.state.value}")
            if self.pipelines.running(rec.id):
                raise StateConflict(f"the pipeline of {rec.id} is already running")
            if [s.name for s in steps] != rec.total_steps:
                raise StateConflict(f"the pipeline {rec.pipeline!r} has changed since {rec.id} was deployed"
                                    f" ({' -> '.join(rec.total_steps)}); deploy it again instead")
            if rec.current_step >= len(steps):  # failed after it was running: deploy and check again
                rec.current_step = next((i for i, s in enumerate(steps) if s.phase is Phase.DEPLOYING), 0)
                await self.store.update_service(rec.id, current_step=rec.current_step)
            log.info("retry requested", service_id=rec.id, step=rec.current_step_name, operator=operator)
            await self.states.transition_locked(rec, State(steps[rec.current_step].phase.value), None, operator)
            self.pipelines.start(rec, operator)
        return rec
