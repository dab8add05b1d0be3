"""The service manager: accepts deploys, drives pipelines, watches services, deletes them.

One function changes a lifecycle state: :meth:`ServiceManager._transition`.  It
checks the transition table, persists the new state with its event in one
transaction, updates the metrics and writes the log line.  Everything else
(the executor, the status watcher, delete, retry, resume after a crash) asks it.

Live services are kept in memory as the same :class:`ServiceRecord` objects the
store was last given, guarded by one lock per service, so the pipeline task,
the status watcher and an API call never act on stale copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from modserv_shim.allowlist import RequestPolicy, check_env, check_model_path, refuse
from modserv_shim.core.clock import Clock, SystemClock
from modserv_shim.core.executor import Executor, MemoryRecorder, StepFailed, StepOverride, apply_overrides
from modserv_shim.core.lifecycle import PIPELINE_STATES, SERVING_STATES, State, can_transition, check_transition
from modserv_shim.core.metrics import Metrics
from modserv_shim.core.records import Event, PluginRecord, ServiceRecord, StepLog, StepRun, now
from modserv_shim.core.registry import Kind, Registry
from modserv_shim.core.store import IdempotencyKey, Store
from modserv_shim.errors import (
    IdempotencyConflict,
    NotFound,
    NotSupported,
    PluginNotFound,
    ShimError,
    StateConflict,
    ValidationFailed,
)
from modserv_shim.plugins import (
    Phase,
    Pipeline,
    RequestChecker,
    ResourcePhase,
    ResourceStatus,
    Scalable,
    ScaleChecker,
    Shimlet,
    StepSpec,
    Watchable,
)
from modserv_shim.spec import DeploySpec, redact

log = structlog.get_logger("modserv_shim.manager")

SYSTEM = "system"
WATCH_SAFETY_POLLS = 10  # watched services are polled too, every 10th round
PIPELINE_CANCEL_WAIT = 10.0  # a delete waits this long for a cancelled step to stop
MAX_SERVICE_ID = 120  # modelName (63) + "-" + a UUID (36), with room; the store's column holds 120
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True)
class ManagerConfig:
    data_dir: Path
    default_shimlet: str
    default_pipeline: str
    step_overrides: Mapping[str, Mapping[str, StepOverride]]  # pipeline -> step -> override
    poll_interval: float = 2.0
    delete_wait: float = 30.0
    policy: RequestPolicy = field(default_factory=RequestPolicy)


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
        self.executor = Executor(store, self.clock, self.metrics, config.data_dir)
        self._live: dict[str, ServiceRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._key_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._pipelines: dict[str, asyncio.Task[None]] = {}
        self._terminations: dict[str, asyncio.Task[None]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._warm_up: asyncio.Task[None] | None = None
        self._closing = False
        self._state_waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._stopping_waits = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # --------------------------------------------------------------- start/stop

    def stop_waiting(self) -> None:
        """Answer every pending ``waitFor`` now (the server is stopping).  Safe from a signal handler
        or another thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        self._stopping_waits = True
        for service_id in list(self._state_waiters):
            self._wake(service_id)

    def _wake(self, service_id: str) -> None:
        """Let the ``waitFor`` calls on a service look at it again."""
        for woken in self._state_waiters.get(service_id, ()):
            if not woken.done():
                woken.set_result(None)

    async def start(self) -> None:
        """Reload hot-loaded plugins and resume every service that is not terminated."""
        self._loop = asyncio.get_running_loop()
        interrupted = await self.store.interrupt_running_steps()
        if interrupted:
            log.warning("resuming after an unclean stop", interrupted_steps=interrupted)
        for p in await self.store.list_plugins():
            try:
                await self.registry.load(p.kind, p.name, file=p.file, module=p.module, attr=p.attr)  # type: ignore[arg-type]
            except ShimError as exc:
                log.error("a plugin loaded earlier cannot be loaded again", kind=p.kind, name=p.name, error=str(exc))
        for rec in await self.store.list_services([s for s in State if s is not State.TERMINATED]):
            self._live[rec.id] = rec
            try:
                await self._resume(rec)
            except Exception as exc:  # one service must not keep the server from starting
                log.warning("cannot read the status of a service after restart; the poller keeps trying",
                            service_id=rec.id, state=rec.state.value, error=f"{type(exc).__name__}: {exc}")
        await self._refresh_state_gauge()
        self._poller = asyncio.create_task(self._poll_loop(), name="status-poller")
        self._warm_up = asyncio.create_task(self._start_defaults(), name="start-default-plugins")

    async def _start_defaults(self) -> None:
        """Start the default shimlet and pipeline now, so that the first deploy does not wait for them
        (imports, HTTP clients, a cluster connection); in the background, so that a cluster that
        is slow to answer does not hold up the server.  A deploy meanwhile waits for the same start."""
        try:
            await self.registry.shimlet(self.config.default_shimlet)
            await self.registry.pipeline(self.config.default_pipeline)
        except ShimError as exc:  # the first deploy tries again and reports it
            log.warning("a default plugin could not start yet", error=str(exc))

    async def _resume(self, rec: ServiceRecord) -> None:
        if rec.state in PIPELINE_STATES:
            log.info("resuming pipeline", service_id=rec.id, step=rec.current_step_name)
            self._start_pipeline(rec, SYSTEM)
        elif rec.state is State.TERMINATING:
            self._terminations[rec.id] = asyncio.create_task(self._terminate(rec, SYSTEM))
        elif rec.resource_id is not None and rec.state is State.FAILED and rec.current_step < len(rec.total_steps):
            return  # failed inside its pipeline: waits for a retry
        elif rec.resource_id is not None:
            shimlet = await self.registry.shimlet(rec.shimlet)
            await self._ensure_watch(rec.shimlet, shimlet)
            await self._apply_status(rec, await shimlet.status(rec.resource_id))

    async def close(self) -> None:
        """Stop our own tasks; workloads keep running (they survive a restart)."""
        self._closing = True
        tasks = [*self._pipelines.values(), *self._watchers.values(), *self._terminations.values()]
        tasks += [t for t in (self._poller, self._warm_up) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ----------------------------------------------------------------- queries

    async def get(self, service_id: str) -> ServiceRecord:
        if len(service_id) > MAX_SERVICE_ID:  # no id is that long: do not carry it to the store
            raise NotFound(f"no service with id {service_id[:MAX_SERVICE_ID]!r}... (ids have at most"
                           f" {MAX_SERVICE_ID} characters)")
        rec = self._live.get(service_id) or await self.store.get_service(service_id)
        if rec is None:
            raise NotFound(f"no service with id {service_id!r}")
        return rec

    async def wait_for_state(self, service_id: str, states: Collection[State], timeout: float) -> ServiceRecord:
        """The service once it is in one of ``states``, failed or terminated, or after ``timeout`` seconds
        as it is then (a long poll: clients learn of a state change the moment it is stored)."""
        rec = await self.get(service_id)
        stop = {*states, State.FAILED, State.TERMINATED}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while rec.state not in stop and rec.id in self._live and not self._stopping_waits:
            woken: asyncio.Future[None] = loop.create_future()
            waiters = self._state_waiters.setdefault(rec.id, set())
            waiters.add(woken)
            try:
                await asyncio.wait([woken], timeout=max(deadline - loop.time(), 0))
            finally:
                waiters.discard(woken)
                if not waiters:
                    self._state_waiters.pop(rec.id, None)
            if not woken.done():
                break
        return rec

    async def list_services(self, state: State | None = None, *, limit: int | None = None,
                            offset: int = 0) -> list[ServiceRecord]:
        """For listings: records without their step outputs, read off the event loop."""
        return await self.store.list_services([state] if state else None, limit=limit, offset=offset, light=True)

    async def steps_of(self, pipeline_name: str) -> list[StepSpec]:
        pipeline = await self.registry.pipeline(pipeline_name)
        return apply_overrides(pipeline.steps(), self.config.step_overrides.get(pipeline_name, {}))

    # ------------------------------------------------------------------ deploy

    async def _plugins_for(self, spec: DeploySpec) -> tuple[str, str, Shimlet, Pipeline]:
        shimlet_name = spec.shimlet or self.config.default_shimlet
        pipeline_name = spec.pipeline or self.config.default_pipeline
        try:
            shimlet = await self.registry.shimlet(shimlet_name)
            pipeline = await self.registry.pipeline(pipeline_name)
        except PluginNotFound as exc:
            raise ValidationFailed(str(exc)) from None
        self._check_request(spec, pipeline_name, shimlet, pipeline)
        return shimlet_name, pipeline_name, shimlet, pipeline

    def _check_request(self, spec: DeploySpec, pipeline_name: str, shimlet: Shimlet, pipeline: Pipeline) -> None:
        """What the request puts into a process must be allowed (docs/SECURITY.md), before anything is stored."""
        policy = self.config.policy
        check_model_path(spec.modelFile, policy.model_roots)
        if isinstance(pipeline, RequestChecker):
            pipeline.check_request(spec, shimlet)
            return
        # A pipeline that does not say which runtimes it starts gets the strict default.
        check_env(spec.env, allowed=frozenset(), policy=policy,
                  who=f"the {pipeline_name} pipeline (it declares no runtime)")
        if spec.runtimeArgs:
            raise refuse("runtimeArgs", f"the {pipeline_name} pipeline does not declare which runtime arguments"
                         " it accepts, so none are")

    async def deploy_once(self, spec: DeploySpec, operator: str, key: str) -> tuple[ServiceRecord, bool]:
        """A deploy with an ``Idempotency-Key``: the same key and body (from the same caller, within a day)
        return the service the first request created, with True; the same key with another body is an
        :class:`IdempotencyConflict`.  The key is stored in the transaction that stores the service."""
        if not IDEMPOTENCY_KEY_RE.match(key):
            raise ValidationFailed("the Idempotency-Key header must be 1 to 255 printable ASCII characters"
                                   " without spaces (a UUID is a good choice)")
        digest = hashlib.sha256(json.dumps(spec.wire(), sort_keys=True).encode()).hexdigest()
        lock = self._key_locks.setdefault((operator, key), asyncio.Lock())
        try:
            async with lock:  # one request per key at a time here; the store's primary key guards other processes
                while True:
                    found = await self.store.find_idempotency_key(operator, key)
                    if found is not None:
                        if found.body_sha256 != digest:
                            raise IdempotencyConflict(
                                f"the Idempotency-Key {key!r} was used for another deploy ({found.service_id})"
                                " with a different body; use a new key for a new deploy")
                        return await self.get(found.service_id), True
                    try:
                        return await self.deploy(spec, operator, idempotency=(key, digest)), False
                    except IdempotencyConflict:
                        continue  # another process took the key between our look and our write: look again
        finally:
            if not lock.locked():
                self._key_locks.pop((operator, key), None)

    async def deploy(
        self, spec: DeploySpec, operator: str, *, idempotency: tuple[str, str] | None = None
    ) -> ServiceRecord:
        """Store the accepted deploy, then run its pipeline in the background."""
        shimlet_name, pipeline_name, _, _ = await self._plugins_for(spec)
        steps = await self.steps_of(pipeline_name)
        rec = ServiceRecord(
            id=f"{spec.modelName}-{uuid.uuid4()}",
            model_name=spec.modelName,
            spec=spec.wire(),
            shimlet=shimlet_name,
            pipeline=pipeline_name,
            state=State.INITIALIZING,
            total_steps=[s.name for s in steps],
            replicas_desired=spec.replicaCount,
            operator=operator,
        )
        key = IdempotencyKey(operator, idempotency[0], idempotency[1], rec.id, rec.created_at) if idempotency else None
        await self.store.insert_service(rec, key)  # accepted == durable: kill -9 after this loses nothing
        self._live[rec.id] = rec
        self.metrics.transitions.labels(from_state="", to_state=rec.state.value).inc()
        self.metrics.services.labels(state=rec.state.value).inc()
        self.metrics.replicas_desired.labels(service=rec.id).set(rec.replicas_desired)
        log.info("deploy accepted", service_id=rec.id, operator=operator, shimlet=shimlet_name,
                 pipeline=pipeline_name, params=redact(rec.spec))
        self._start_pipeline(rec, operator)
        return rec

    async def dry_run(self, spec: DeploySpec, operator: str) -> DryRunResult:
        """Run the steps of the ``pipeline_running`` phase and return what they rendered; store nothing."""
        shimlet_name, pipeline_name, shimlet, pipeline = await self._plugins_for(spec)
        steps = await self.steps_of(pipeline_name)
        rec = ServiceRecord(
            id=f"{spec.modelName}-{uuid.uuid4()}", model_name=spec.modelName, spec=spec.wire(),
            shimlet=shimlet_name, pipeline=pipeline_name, state=State.INITIALIZING,
            total_steps=[s.name for s in steps], operator=operator,
        )
        recorder = MemoryRecorder()
        executor = Executor(recorder, self.clock, self.metrics, self.config.data_dir)

        async def no_phase(_: Phase) -> None:
            return None

        try:
            await executor.run(rec, pipeline, steps, shimlet, operator=operator, enter_phase=no_phase,
                               fixed_timeouts=self._fixed(pipeline_name), stop_before=Phase.DEPLOYING)
        except StepFailed as exc:
            details = redact({"step": exc.step, "steps": [vars(r) for r in recorder.runs]})
            raise ValidationFailed(f"dry run failed: {exc.reason}", details=details) from None
        return DryRunResult(rec.id, rec.total_steps, recorder.runs, recorder.logs, rec.outputs)

    def _fixed(self, pipeline_name: str) -> frozenset[str]:
        return frozenset(n for n, o in self.config.step_overrides.get(pipeline_name, {}).items() if o.timeout)

    def _start_pipeline(self, rec: ServiceRecord, operator: str) -> None:
        if rec.id in self._pipelines:  # one pipeline per service, ever
            raise StateConflict(f"the pipeline of {rec.id} is already running")
        task = asyncio.create_task(self._run_pipeline(rec, operator), name=f"pipeline-{rec.id}")
        self._pipelines[rec.id] = task
        task.add_done_callback(lambda _t: self._pipelines.pop(rec.id, None)
                               if self._pipelines.get(rec.id) is _t else None)

    async def _run_pipeline(self, rec: ServiceRecord, operator: str) -> None:
        started = time.monotonic()
        try:
            shimlet = await self.registry.shimlet(rec.shimlet)
            pipeline = await self.registry.pipeline(rec.pipeline)
            steps = await self.steps_of(rec.pipeline)
        except ShimError as exc:
            await self._fail(rec, f"cannot run the pipeline: {exc}")
            return

        async def enter_phase(phase: Phase) -> None:
            if rec.state.value != phase.value:  # lost in a crash, the pipeline just resumes a step earlier
                await self._transition(rec, State(phase.value), operator=operator, durable=False)

        def keep_going() -> bool:
            return rec.state not in (State.TERMINATING, State.TERMINATED)

        try:
            await self.executor.run(rec, pipeline, steps, shimlet, operator=operator, enter_phase=enter_phase,
                                    fixed_timeouts=self._fixed(rec.pipeline), keep_going=keep_going)
        except StepFailed as exc:
            await self._fail(rec, exc.reason, operator=operator)
            self.metrics.deployments.labels(result="failed").inc()
            self.metrics.pipeline_duration.labels(pipeline=rec.pipeline, result="failed").observe(
                time.monotonic() - started)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a plugin or in us: the service must not stay stuck
            log.exception("pipeline crashed", service_id=rec.id)
            await self._fail(rec, f"internal error in the pipeline: {type(exc).__name__}: {exc}", operator=operator)
            return
        status: ResourceStatus | None = None
        replicas: dict[str, Any] = {}
        if rec.resource_id:
            try:  # endpoint and replicas are known when the state says running (same transaction)
                status = await shimlet.status(rec.resource_id)
                replicas = {"replicas_ready": status.ready_replicas, "endpoint": status.endpoint or rec.endpoint}
            except Exception as exc:  # the watcher or the poller will tell
                log.warning("status after the pipeline failed", service_id=rec.id, error=str(exc))
        if not await self._transition(rec, State.RUNNING, operator=operator, background=True, also=replicas):
            return  # deleted meanwhile
        self.metrics.replicas_ready.labels(service=rec.id).set(rec.replicas_ready)
        self.metrics.deployments.labels(result="succeeded").inc()
        self.metrics.pipeline_duration.labels(pipeline=rec.pipeline, result="succeeded").observe(
            time.monotonic() - started)
        self._pipelines.pop(rec.id, None)
        try:
            await self._ensure_watch(rec.shimlet, shimlet)
            if status is not None:
                await self._apply_status(rec, status)
        except Exception as exc:
            log.warning("status after the pipeline failed", service_id=rec.id, error=str(exc))

    # ------------------------------------------------------------ state change

    def _lock(self, service_id: str) -> asyncio.Lock:
        return self._locks.setdefault(service_id, asyncio.Lock())

    async def _transition(
        self, rec: ServiceRecord, new: State, reason: str | None = None, operator: str = SYSTEM,
        *, background: bool = False, also: Mapping[str, Any] | None = None, durable: bool = True,
    ) -> bool:
        """The one place a lifecycle state changes; True when the service is now in ``new``.

        ``background`` is for observers (pipeline end, status watch) that may lose a race
        with a user's delete: a transition the table forbids is then skipped, not an error.
        ``also``: other fields of the record that change with the state, in the same transaction.
        ``durable=False``: written soon rather than before returning (the store's write-behind).
        """
        async with self._lock(rec.id):
            return await self._transition_locked(rec, new, reason, operator, background=background, also=also,
                                                 durable=durable)

    async def _transition_locked(
        self, rec: ServiceRecord, new: State, reason: str | None, operator: str, *, background: bool = False,
        also: Mapping[str, Any] | None = None, durable: bool = True,
    ) -> bool:
        old = rec.state
        if old is new:
            if reason != rec.reason:  # same state, new words (e.g. degraded for another cause)
                rec.reason = reason
                await self.store.update_service(rec.id, reason=reason)
            return True
        if background and not can_transition(old, new):
            log.debug("transition skipped", service_id=rec.id, from_state=old.value, to_state=new.value)
            return False
        check_transition(old, new)
        rec.state = new
        rec.reason = reason
        rec.updated_at = now()
        for name, value in (also or {}).items():
            setattr(rec, name, value)
        # shielded: a delete that cancels the pipeline must not leave memory and store disagreeing
        await asyncio.shield(self.store.save_transition(
            rec, Event(rec.id, rec.updated_at, old.value, new.value, reason, operator), durable=durable,
            **(also or {})))
        self.metrics.transitions.labels(from_state=old.value, to_state=new.value).inc()
        self.metrics.services.labels(state=old.value).dec()
        self.metrics.services.labels(state=new.value).inc()
        log.info("state changed", service_id=rec.id, from_state=old.value, to_state=new.value,
                 reason=reason, operator=operator)
        self._wake(rec.id)
        if new is State.TERMINATED:
            self._live.pop(rec.id, None)
            for gauge in (self.metrics.replicas_ready, self.metrics.replicas_desired):
                with contextlib.suppress(KeyError):
                    gauge.remove(rec.id)
        return True

    async def _fail(self, rec: ServiceRecord, reason: str, operator: str = SYSTEM) -> None:
        await self._transition(rec, State.FAILED, reason, operator, background=True)

    async def _refresh_state_gauge(self) -> None:
        self.metrics.set_state_counts(await self.store.count_services(), [s.value for s in State])

    # ---------------------------------------------------------- status watching

    async def _ensure_watch(self, shimlet_name: str, shimlet: Shimlet) -> None:
        if isinstance(shimlet, Watchable) and shimlet_name not in self._watchers and not self._closing:
            self._watchers[shimlet_name] = asyncio.create_task(self._watch_loop(shimlet_name, shimlet),
                                                               name=f"watch-{shimlet_name}")

    async def _watch_loop(self, shimlet_name: str, shimlet: Watchable) -> None:
        """One stream per shimlet for all its services; on every (re)connect, read every status once
        so that nothing that changed while the stream was down is missed."""
        delay = 0.5
        while not self._closing:
            try:
                stream = shimlet.watch()
                await self._resync(shimlet_name, shimlet)  # type: ignore[arg-type]
                async for resource_id, status in stream:
                    delay = 0.5
                    for rec in list(self._live.values()):
                        if rec.shimlet == shimlet_name and rec.resource_id == resource_id:
                            await self._apply_status_safely(rec, status)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("status watch failed; reconnecting", shimlet=shimlet_name, error=str(exc), delay=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _resync(self, shimlet_name: str, shimlet: Shimlet) -> None:
        for rec in list(self._live.values()):
            if rec.shimlet == shimlet_name and rec.resource_id:
                try:
                    await self._apply_status_safely(rec, await shimlet.status(rec.resource_id))
                except Exception as exc:
                    log.warning("status read failed", service_id=rec.id, error=str(exc))

    async def _apply_status_safely(self, rec: ServiceRecord, st: ResourceStatus) -> None:
        try:
            await self._apply_status(rec, st)
        except Exception:  # one service's trouble must not end the stream of all the others
            log.exception("applying a status failed", service_id=rec.id)

    async def _poll_loop(self) -> None:
        """Status of services whose shimlet cannot watch; cheap by contract (status never blocks).

        Services of watched shimlets are read too, every WATCH_SAFETY_POLLS rounds, as a safety net.
        """
        rounds = 0
        while True:
            await asyncio.sleep(self.config.poll_interval)
            rounds += 1
            for rec in list(self._live.values()):
                if rec.state not in (*SERVING_STATES, State.FAILED) or not rec.resource_id:
                    continue
                if rec.id in self._pipelines:
                    continue
                if rec.shimlet in self._watchers and rounds % WATCH_SAFETY_POLLS:
                    continue
                try:
                    shimlet = await self.registry.shimlet(rec.shimlet)
                    await self._ensure_watch(rec.shimlet, shimlet)
                    await self._apply_status(rec, await shimlet.status(rec.resource_id))
                except Exception as exc:
                    log.warning("status poll failed", service_id=rec.id, error=str(exc))

    async def _record_replicas(self, rec: ServiceRecord, st: ResourceStatus) -> None:
        endpoint = st.endpoint or rec.endpoint
        if (st.ready_replicas, endpoint) != (rec.replicas_ready, rec.endpoint):
            rec.replicas_ready, rec.endpoint = st.ready_replicas, endpoint
            await self.store.update_service(rec.id, replicas_ready=rec.replicas_ready, endpoint=rec.endpoint)
            self.metrics.replicas_ready.labels(service=rec.id).set(rec.replicas_ready)

    async def _apply_status(self, rec: ServiceRecord, st: ResourceStatus) -> None:
        """Map a shimlet status onto a service that has finished its pipeline."""
        if rec.id in self._pipelines or rec.state not in (*SERVING_STATES, State.FAILED):
            return
        if rec.state is State.FAILED and rec.current_step < len(rec.total_steps):
            return  # failed inside its pipeline: only a retry moves it
        if st.phase is ResourcePhase.UNKNOWN:
            return  # not observed yet (adopted after a restart): report nothing we have not seen
        await self._record_replicas(rec, st)
        if st.phase is ResourcePhase.READY or (st.phase is ResourcePhase.PENDING and st.ready_replicas > 0):
            await self._transition(rec, State.RUNNING, background=True)
        elif st.phase in (ResourcePhase.DEGRADED, ResourcePhase.PENDING):
            await self._transition(rec, State.DEGRADED, st.reason or "no replica is ready", background=True)
        elif st.phase is ResourcePhase.FAILED:
            await self._transition(rec, State.FAILED, st.reason or "the workload failed", background=True)
        elif st.phase is ResourcePhase.NOT_FOUND and rec.state is not State.FAILED:
            await self._transition(rec, State.FAILED,
                                   f"the workload is gone from the {rec.shimlet} environment"
                                   " (deleted outside modserv-shim?)", background=True)

    # --------------------------------------------------------- user operations

    async def delete(self, service_id: str, operator: str) -> ServiceRecord:
        """Cancel a running pipeline, remove the workload, end in ``terminated``.

        Waits up to ``delete_wait`` seconds; after that the removal goes on in
        the background and the service is returned as ``terminating``.
        """
        rec = await self.get(service_id)
        async with self._lock(rec.id):  # one delete at a time; no transition slips in between
            if rec.state is State.TERMINATED:
                return rec
            task = self._terminations.get(rec.id)
            if task is None:
                pipeline = self._pipelines.pop(rec.id, None)
                if pipeline is not None:
                    pipeline.cancel()
                    await asyncio.wait([pipeline], timeout=PIPELINE_CANCEL_WAIT)
                await self._transition_locked(rec, State.TERMINATING, None, operator)
                task = asyncio.create_task(self._terminate(rec, operator), name=f"terminate-{rec.id}")
                self._terminations[rec.id] = task
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.delete_wait):
                await asyncio.shield(task)
        return rec

    async def _terminate(self, rec: ServiceRecord, operator: str) -> None:
        delay = 1.0
        try:
            while True:
                try:
                    shimlet = await self.registry.shimlet(rec.shimlet)
                    # With no recorded resource id a create may still have run: shimlets
                    # accept the service id for it (see the Shimlet contract).
                    await shimlet.delete(rec.resource_id or rec.id)
                    break
                except Exception as exc:
                    reason = f"removing the workload failed, retrying in {delay:g} s: {exc}"
                    await self._transition(rec, State.TERMINATING, reason, operator)
                    await self.clock.sleep(delay)
                    delay = min(delay * 2, 60.0)
            await self._transition(rec, State.TERMINATED, operator=operator)
            rec.replicas_ready = 0
            await self.store.update_service(rec.id, replicas_ready=0)
            with contextlib.suppress(KeyError):
                self.metrics.replicas_ready.remove(rec.id)
        finally:
            self._terminations.pop(rec.id, None)

    async def scale(self, service_id: str, replicas: int, operator: str) -> ServiceRecord:
        if not 1 <= replicas <= 64:
            raise ValidationFailed("replicas must be between 1 and 64")
        rec = await self.get(service_id)
        shimlet = await self.registry.shimlet(rec.shimlet)
        if not isinstance(shimlet, Scalable):
            raise NotSupported(f"the {rec.shimlet} shimlet cannot scale services")
        async with self._lock(rec.id):  # a delete cannot slip between the check and the scale
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
        self.metrics.replicas_desired.labels(service=rec.id).set(replicas)
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

    async def retry(self, service_id: str, operator: str) -> ServiceRecord:
        """Run a failed service's pipeline again from the step that failed."""
        rec = await self.get(service_id)
        steps = await self.steps_of(rec.pipeline)
        async with self._lock(rec.id):  # two retries at once start one pipeline
            if rec.state is not State.FAILED:
                raise StateConflict(f"only a failed service can be retried; {rec.id} is {rec.state.value}")
            if rec.id in self._pipelines:
                raise StateConflict(f"the pipeline of {rec.id} is already running")
            if [s.name for s in steps] != rec.total_steps:
                raise StateConflict(f"the pipeline {rec.pipeline!r} has changed since {rec.id} was deployed"
                                    f" ({' -> '.join(rec.total_steps)}); deploy it again instead")
            if rec.current_step >= len(steps):  # failed after it was running: deploy and check again
                rec.current_step = next((i for i, s in enumerate(steps) if s.phase is Phase.DEPLOYING), 0)
                await self.store.update_service(rec.id, current_step=rec.current_step)
            log.info("retry requested", service_id=rec.id, step=rec.current_step_name, operator=operator)
            await self._transition_locked(rec, State(steps[rec.current_step].phase.value), None, operator)
            self._start_pipeline(rec, operator)
        return rec

    async def logs(self, service_id: str, tail: int) -> list[str]:
        from modserv_shim.plugins import LogSource

        rec = await self.get(service_id)
        shimlet = await self.registry.shimlet(rec.shimlet)
        if not isinstance(shimlet, LogSource):
            raise NotSupported(f"the {rec.shimlet} shimlet cannot show logs")
        if not rec.resource_id:
            return []
        return await shimlet.logs(rec.resource_id, tail)

    async def load_plugin(
        self, kind: Kind, name: str, *, file: str | None, module: str | None, attr: str, operator: str
    ) -> dict[str, Any]:
        entry = await self.registry.load(kind, name, file=file, module=module, attr=attr)
        stored_file = str(self.registry.resolve_plugin_file(file)) if file else None
        await self.store.save_plugin(PluginRecord(kind, name, stored_file, module, attr, operator))
        log.info("plugin hot-loaded", kind=kind, name=name, source=entry.source, operator=operator)
        return self.registry.describe(kind, name)
