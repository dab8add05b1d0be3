"""Pipeline tasks: one background task per service runs its pipeline through the executor.

The phase of the step in flight becomes the service's state, the end of the pipeline
makes it ``running`` (or ``failed``), and then the status watcher takes over.  A dry run
goes through the same executor with an in-memory recorder and stores nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from modserv_shim.core.clock import Clock
from modserv_shim.core.executor import Executor, MemoryRecorder, StepFailed, StepOverride, apply_overrides
from modserv_shim.core.lifecycle import State
from modserv_shim.core.records import ServiceRecord
from modserv_shim.core.registry import Registry
from modserv_shim.core.states import ServiceStates
from modserv_shim.core.watcher import StatusWatcher
from modserv_shim.errors import ShimError, StateConflict, ValidationFailed
from modserv_shim.plugins import Phase, Pipeline, ResourceStatus, Shimlet, StepSpec
from modserv_shim.spec import redact

log = structlog.get_logger("modserv_shim.manager")

PIPELINE_CANCEL_WAIT = 10.0  # a delete waits this long for a cancelled step to stop


class PipelineTasks:
    def __init__(
        self, states: ServiceStates, registry: Registry, watcher: StatusWatcher, *, clock: Clock,
        data_dir: Path, step_overrides: Mapping[str, Mapping[str, StepOverride]],
    ) -> None:
        self.states = states
        self.registry = registry
        self.watcher = watcher
        self.clock = clock
        self.data_dir = data_dir
        self.step_overrides = step_overrides
        self.executor = Executor(states.store, clock, states.metrics, data_dir)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ steps

    async def steps_of(self, pipeline_name: str) -> list[StepSpec]:
        """The pipeline's steps with the configured overrides (timeouts, retries)."""
        pipeline = await self.registry.pipeline(pipeline_name)
        return apply_overrides(pipeline.steps(), self.step_overrides.get(pipeline_name, {}))

    def _fixed(self, pipeline_name: str) -> frozenset[str]:
        return frozenset(n for n, o in self.step_overrides.get(pipeline_name, {}).items() if o.timeout)

    # ------------------------------------------------------------------ tasks

    def running(self, service_id: str) -> bool:
        return service_id in self._tasks

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._tasks.values())

    def start(self, rec: ServiceRecord, operator: str) -> None:
        if rec.id in self._tasks:  # one pipeline per service, ever
            raise StateConflict(f"the pipeline of {rec.id} is already running")
        task = asyncio.create_task(self._run(rec, operator), name=f"pipeline-{rec.id}")
        self._tasks[rec.id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(rec.id, None) if self._tasks.get(rec.id) is _t else None)

    async def cancel(self, service_id: str) -> None:
        """Cancel the service's pipeline, if one runs, and wait a while for the step to stop."""
        task = self._tasks.pop(service_id, None)
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=PIPELINE_CANCEL_WAIT)

    async def _run(self, rec: ServiceRecord, operator: str) -> None:
        started = time.monotonic()
        try:
            shimlet = await self.registry.shimlet(rec.shimlet)
            pipeline = await self.registry.pipeline(rec.pipeline)
            steps = await self.steps_of(rec.pipeline)
        except ShimError as exc:
            await self.states.fail(rec, f"cannot run the pipeline: {exc}")
            return

        async def enter_phase(phase: Phase) -> None:
            if rec.state.value != phase.value:  # lost in a crash, the pipeline just resumes a step earlier
                await self.states.transition(rec, State(phase.value), operator=operator, durable=False)

        def keep_going() -> bool:
            return rec.state not in (State.TERMINATING, State.TERMINATED)

        try:
            await self.executor.run(rec, pipeline, steps, shimlet, operator=operator, enter_phase=enter_phase,
                                    fixed_timeouts=self._fixed(rec.pipeline), keep_going=keep_going)
        except StepFailed as exc:
            await self.states.fail(rec, exc.reason, operator=operator)
            self._count_finished(rec, "failed", started)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a plugin or in us: the service must not stay stuck
            log.exception("pipeline crashed", service_id=rec.id)
            await self.states.fail(rec, f"internal error in the pipeline: {type(exc).__name__}: {exc}",
                                   operator=operator)
            return
        await self._finish(rec, shimlet, operator, started)

    async def _finish(self, rec: ServiceRecord, shimlet: Shimlet, operator: str, started: float) -> None:
        """Every step succeeded: ``running``, with endpoint and replicas; then the watcher follows it."""
        status: ResourceStatus | None = None
        replicas: dict[str, Any] = {}
        if rec.resource_id:
            try:  # endpoint and replicas are known when the state says running (same transaction)
                status = await shimlet.status(rec.resource_id)
                replicas = {"replicas_ready": status.ready_replicas, "endpoint": status.endpoint or rec.endpoint}
            except Exception as exc:  # the watcher or the poller will tell
                log.warning("status after the pipeline failed", service_id=rec.id, error=str(exc))
        if not await self.states.transition(rec, State.RUNNING, operator=operator, background=True, also=replicas):
            return  # deleted meanwhile
        self._count_finished(rec, "succeeded", started)
        self._tasks.pop(rec.id, None)
        try:
            await self.watcher.follow(rec, shimlet, status)
        except Exception as exc:
            log.warning("status after the pipeline failed", service_id=rec.id, error=str(exc))

    def _count_finished(self, rec: ServiceRecord, result: str, started: float) -> None:
        """The run's duration (the deploys finished are counted by the transition that ends the run)."""
        self.states.metrics.pipeline_duration.labels(shimlet=rec.shimlet, pipeline=rec.pipeline, result=result
                                                     ).observe(time.monotonic() - started)

    # --------------------------------------------------------------- dry run

    async def dry_run(
        self, rec: ServiceRecord, pipeline: Pipeline, steps: list[StepSpec], shimlet: Shimlet, operator: str
    ) -> MemoryRecorder:
        """Run the steps before the ``deploying`` phase on ``rec``, recorded in memory only; a failed step
        is a :class:`ValidationFailed` with every attempt in its details."""
        recorder = MemoryRecorder()
        executor = Executor(recorder, self.clock, self.states.metrics, self.data_dir)

        async def no_phase(_: Phase) -> None:
            return None

        try:
            await executor.run(rec, pipeline, steps, shimlet, operator=operator, enter_phase=no_phase,
                               fixed_timeouts=self._fixed(rec.pipeline), stop_before=Phase.DEPLOYING)
        except StepFailed as exc:
            details = redact({"step": exc.step, "steps": [vars(r) for r in recorder.runs]})
            raise ValidationFailed(f"dry run failed: {exc.reason}", details=details) from None
        return recorder
