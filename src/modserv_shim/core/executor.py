"""The pipeline executor: runs steps in order, each with its timeout and retry policy.

Why it looks like this:

* Progress is stored after every attempt (the step run, its log lines, and on
  success the step index and outputs), so a restarted server resumes at the
  step that was in flight; steps are idempotent, so running it again is safe.
* A quick step costs one transaction: its attempt row is inserted
  RECORD_DELAY after the step starts, or together with its end if it ends
  sooner (as its log lines are).  A long step shows as running while it runs.
* The error type decides what happens: :class:`PermanentStepError`, a type the
  step lists in ``permanent``, or a client error stop at once; anything else,
  and a timeout, is retried after ``retry.delay(n)`` seconds.
* Time comes from a :class:`Clock`, so tests drive retries without sleeping.
* The executor never changes a lifecycle state itself; it asks the caller
  (``enter_phase``) so that state changes stay in one function.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from modserv_shim.core.clock import Clock
from modserv_shim.core.metrics import Metrics
from modserv_shim.core.records import RunStatus, ServiceRecord, StepLog, StepRun
from modserv_shim.errors import ClientError, PermanentStepError, PluginLoadError, StepError, StepTimeout
from modserv_shim.plugins import PHASE_ORDER, Phase, Pipeline, RetryPolicy, Shimlet, StepSpec
from modserv_shim.private import mask_private, private_values
from modserv_shim.spec import DeploySpec, redact

log = structlog.get_logger("modserv_shim.executor")
T = TypeVar("T")


class Recorder(Protocol):
    """Where the executor writes progress: the store, or memory for a dry run."""

    async def add_step_run(self, run: StepRun) -> int: ...
    async def finish_step_run(
        self, run: StepRun, logs: Sequence[StepLog] = (), progress: Mapping[str, Any] | None = None,
        *, durable: bool = True,
    ) -> None:
        """Store the finished attempt (inserted if ``run.id`` is None), its last log lines and (on
        success) the service's progress at once; ``durable=False``: soon (see the store's write-behind)."""
    async def add_step_logs(self, logs: Sequence[StepLog]) -> None: ...
    async def update_service(self, service_id: str, **fields: Any) -> None: ...


class MemoryRecorder:
    """Keeps a dry run's progress in memory; nothing is stored."""

    def __init__(self) -> None:
        self.runs: list[StepRun] = []
        self.logs: list[StepLog] = []

    async def add_step_run(self, run: StepRun) -> int:
        run.id = len(self.runs) + 1
        self.runs.append(run)
        return run.id

    async def finish_step_run(
        self, run: StepRun, logs: Sequence[StepLog] = (), progress: Mapping[str, Any] | None = None,
        *, durable: bool = True,
    ) -> None:
        if run.id is None:
            await self.add_step_run(run)
        self.logs.extend(logs)

    async def add_step_logs(self, logs: Sequence[StepLog]) -> None:
        self.logs.extend(logs)

    async def update_service(self, service_id: str, **fields: Any) -> None:
        return None


class StepFailed(Exception):
    """A step used up its attempts or failed permanently; ``reason`` is for a person."""

    def __init__(self, step: str, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason
        self.attempts = attempts


def is_permanent(step: StepSpec, exc: BaseException) -> bool:
    if isinstance(exc, PermanentStepError | ClientError):
        return True
    return bool(step.permanent) and isinstance(exc, step.permanent)


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, StepError | ClientError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _timed_out(step: StepSpec, ctx: _Context, more: str = "") -> StepTimeout:
    limit = ctx.params.get("timeout", step.timeout)
    return StepTimeout(f"step {step.name} did not finish within {limit:g} s{more}")


@dataclass(frozen=True)
class StepOverride:
    timeout: float | None = None
    retry: Mapping[str, Any] | None = None


def step_key(name: str) -> str:
    """How the configuration names a step: ``_`` and ``-`` are the same character.

    Environment variables cannot hold ``-``: ``MODSERV_PIPELINES__OPENSOURCELLM__STEPS__HEALTH_CHECK__TIMEOUT``
    sets the step ``health-check``.
    """
    return name.replace("_", "-")


class UnknownStepOverride(PluginLoadError):
    """The configuration overrides a step the pipeline does not have (a typo, or a step that was renamed)."""


def resolve_overrides(
    steps: Sequence[StepSpec], overrides: Mapping[str, T], pipeline: str = ""
) -> dict[str, T]:
    """``overrides`` keyed by the names of ``steps`` (see :func:`step_key`).

    Raises :class:`UnknownStepOverride` naming every override that matches no step, and the steps.
    """
    by_key = {step_key(s.name): s.name for s in steps}
    unknown = sorted(k for k in overrides if step_key(k) not in by_key)
    if unknown:
        where = f"pipelines.{pipeline}.steps" if pipeline else "pipelines.<name>.steps"
        names = ", ".join(s.name for s in steps) or "(none)"
        which = ", ".join(repr(k) for k in unknown)
        raise UnknownStepOverride(
            f"the configuration ({where}) overrides {which}, which pipeline {pipeline or '(unnamed)'!r}"
            f" does not have; its steps: {names}")
    return {by_key[step_key(k)]: v for k, v in overrides.items()}


def apply_overrides(
    steps: Sequence[StepSpec], overrides: Mapping[str, StepOverride], pipeline: str = ""
) -> list[StepSpec]:
    """``steps`` with the configured timeouts and retry policies; an unknown step name is refused."""
    resolved = resolve_overrides(steps, overrides, pipeline)
    out = []
    for s in steps:
        o = resolved.get(s.name)
        out.append(s.with_overrides(timeout=o.timeout, retry=o.retry) if o else s)
    return out


class _Context:
    """The :class:`modserv_shim.plugins.StepContext` handed to ``run_step``."""

    def __init__(
        self,
        executor: Executor,
        rec: ServiceRecord,
        spec: DeploySpec,
        shimlet: Shimlet,
        step: StepSpec,
        attempt: int,
        operator: str,
        dry_run: bool,
        timeout_fixed: bool,
    ) -> None:
        self._ex = executor
        self._rec = rec
        self._spec = spec
        self._shimlet = shimlet
        self._step = step
        self._attempt = attempt
        self._operator = operator
        self._dry_run = dry_run
        self._timeout_fixed = timeout_fixed
        self._new_outputs: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        self.timeout_cm: asyncio.Timeout | None = None
        self.started_loop_time = asyncio.get_running_loop().time()
        self.pending_logs: list[StepLog] = []
        self._flusher: _Deferred | None = None

    @property
    def service_id(self) -> str:
        return self._rec.id

    @property
    def spec(self) -> DeploySpec:
        return self._spec

    @property
    def operator(self) -> str:
        return self._operator

    @property
    def attempt(self) -> int:
        return self._attempt

    @property
    def dry_run(self) -> bool:
        return self._dry_run

    @property
    def shimlet(self) -> Shimlet:
        return self._shimlet

    @property
    def outputs(self) -> Mapping[str, Any]:
        return {**self._rec.outputs, **self._new_outputs}

    @property
    def resource_id(self) -> str | None:
        return self._rec.resource_id

    @property
    def shimlet_name(self) -> str:
        return self._rec.shimlet

    @property
    def pipeline_name(self) -> str:
        return self._rec.pipeline

    @property
    def data_dir(self) -> Path:
        return self._ex.data_dir

    @property
    def new_outputs(self) -> dict[str, Any]:
        return self._new_outputs

    def private(self) -> tuple[str, ...]:
        """What this service keeps private so far (:mod:`modserv_shim.private`): masked in what is stored."""
        return private_values(self.outputs)

    def log(self, message: str, level: str = "info", **fields: Any) -> None:
        private = self.private()
        message, fields = mask_private(message, private), mask_private(fields, private)
        self.pending_logs.append(
            StepLog(self._rec.id, self._step.name, self._attempt, self._ex.clock.now(), level, message,
                    _jsonable(fields))
        )
        log.log(_LEVELS.get(level, 20), message, service_id=self._rec.id, step=self._step.name,
                attempt=self._attempt, **fields)
        if self._flusher is None or self._flusher.done():  # a failed one's lines are still pending
            # Lines of a long step reach the store within LOG_FLUSH_DELAY; a quick step's go with its end.
            self._flusher = _Deferred(LOG_FLUSH_DELAY, self._flush)

    async def _flush(self) -> None:
        while self.pending_logs:
            batch, self.pending_logs = self.pending_logs, []
            try:
                await self._ex.recorder.add_step_logs(batch)
            except BaseException:  # back in the queue: they go with the step's end
                self.pending_logs[:0] = batch
                raise

    async def drain_logs(self) -> list[StepLog]:
        """Stop background flushing (waiting for a write in progress) and return the lines not stored yet."""
        if self._flusher is not None:
            failure = await self._flusher.settle()
            if failure is not None:
                log.warning("writing a step's log lines failed; they are written with the step's end",
                            service_id=self._rec.id, step=self._step.name, error=str(failure))
        batch, self.pending_logs = self.pending_logs, []
        return batch

    def set_output(self, key: str, value: Any) -> None:
        self._new_outputs[key] = _jsonable(value)

    def set_params(self, **params: Any) -> None:
        self.params.update(_jsonable(params))

    async def set_resource(self, resource_id: str) -> None:
        self._rec.resource_id = resource_id
        await self._ex.recorder.update_service(self._rec.id, resource_id=resource_id)

    def set_timeout(self, seconds: float, *, force: bool = False) -> None:
        if self._timeout_fixed and not force:
            return
        if self.timeout_cm is not None:
            self.timeout_cm.reschedule(self.started_loop_time + seconds)
        self.params["timeout"] = seconds


LOG_FLUSH_DELAY = 0.2
RECORD_DELAY = 0.2  # a step that ends sooner has its attempt row written with its end, in one transaction
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


class _Deferred:
    """Runs ``work()`` after ``delay`` seconds unless :meth:`settle` comes first.

    A timer until it fires, so settling early costs nothing (no task to cancel and await).
    """

    def __init__(self, delay: float, work: Callable[[], Awaitable[object]]) -> None:
        self._work = work
        self._task: asyncio.Future[object] | None = None
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._task = asyncio.ensure_future(self._work())
        # settle() reports a failure; one that nobody settles (a replaced log flusher) must not warn
        self._task.add_done_callback(lambda t: None if t.cancelled() else t.exception())

    def done(self) -> bool:
        return self._task.done() if self._task is not None else self._timer.cancelled()

    async def settle(self) -> BaseException | None:
        """Cancel the work if it has not begun, else wait for it; its exception, if it raised one."""
        self._timer.cancel()
        if self._task is None:
            return None
        await asyncio.wait([self._task])
        return None if self._task.cancelled() else self._task.exception()


class Executor:
    def __init__(self, recorder: Recorder, clock: Clock, metrics: Metrics, data_dir: Path) -> None:
        self.recorder = recorder
        self.clock = clock
        self.metrics = metrics
        self.data_dir = data_dir

    async def run(
        self,
        rec: ServiceRecord,
        pipeline: Pipeline,
        steps: Sequence[StepSpec],
        shimlet: Shimlet,
        *,
        operator: str,
        enter_phase: Callable[[Phase], Awaitable[None]],
        fixed_timeouts: frozenset[str] = frozenset(),
        stop_before: Phase | None = None,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> None:
        """Run ``steps`` from ``rec.current_step`` to the end (or to ``stop_before``).

        Raises :class:`StepFailed` when a step cannot succeed; lets
        ``asyncio.CancelledError`` through after recording the attempt.
        """
        spec = DeploySpec.model_validate(rec.spec)
        fixed = {step_key(n) for n in fixed_timeouts}
        while rec.current_step < len(steps):
            step = steps[rec.current_step]
            if stop_before is not None and PHASE_ORDER.index(step.phase) >= PHASE_ORDER.index(stop_before):
                return
            if not keep_going():  # the service is being deleted: no further step may start
                raise asyncio.CancelledError
            await enter_phase(step.phase)
            await self._run_step(rec, pipeline, step, spec, shimlet, operator, stop_before is not None,
                                 step_key(step.name) in fixed)

    async def _run_step(
        self,
        rec: ServiceRecord,
        pipeline: Pipeline,
        step: StepSpec,
        spec: DeploySpec,
        shimlet: Shimlet,
        operator: str,
        dry_run: bool,
        timeout_fixed: bool,
    ) -> None:
        policy = step.retry
        for attempt in range(1, policy.attempts + 1):
            ctx = _Context(self, rec, spec, shimlet, step, attempt, operator, dry_run, timeout_fixed)
            if attempt > 1 and not dry_run:  # counted as the stored attempts are (rebuilt from them at start)
                self.metrics.step_retries.labels(shimlet=rec.shimlet, pipeline=rec.pipeline, step=step.name).inc()
            ctx.params["timeout"] = step.timeout
            run = StepRun(rec.id, step.name, attempt, RunStatus.RUNNING, self.clock.now(), operator,
                          params={"timeout": step.timeout, "retry": asdict(policy)})
            t0 = self.clock.monotonic()
            error: BaseException | None = None
            # The attempt's row is written while the step runs, or with its end; also when a delete cancels it.
            recorded = _Deferred(RECORD_DELAY, functools.partial(self.recorder.add_step_run, run))
            try:
                log.info("step started", service_id=rec.id, step=step.name, attempt=attempt,
                         operator=operator, timeout=step.timeout)
                async with asyncio.timeout(step.timeout) as cm:
                    ctx.timeout_cm = cm
                    await pipeline.run_step(step, ctx)
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # the step swallowed our cancellation
                    raise asyncio.CancelledError
                if cm.expired():  # the step swallowed its own timeout
                    raise TimeoutError
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is None or not task.cancelling():
                    # not a delete: something inside the step was cancelled; that is a failure of the step
                    error = StepError(f"step {step.name} was cancelled from inside ({exc or 'no message'})")
                    await self._record_failure(pipeline, step, run, ctx, t0, recorded, attempt, policy, error)
                    continue
                await self._finish(pipeline, run, ctx, t0, RunStatus.CANCELLED,
                                   "cancelled: the service was deleted", recorded)
                raise
            except TimeoutError as exc:
                error = exc
                if ctx.timeout_cm is not None and ctx.timeout_cm.expired():
                    error = _timed_out(step, ctx)
            except Exception as exc:
                error = exc
                if ctx.timeout_cm is not None and ctx.timeout_cm.expired():  # the step lost our cancellation
                    error = _timed_out(step, ctx, f"; it then failed: {describe_error(exc)}")
            if error is None:
                rec.outputs.update(ctx.new_outputs)
                rec.current_step += 1
                progress = {"current_step": rec.current_step, "outputs": rec.outputs, "resource_id": rec.resource_id}
                await self._finish(pipeline, run, ctx, t0, RunStatus.SUCCEEDED, None, recorded, progress)
                return
            await self._record_failure(pipeline, step, run, ctx, t0, recorded, attempt, policy, error)

    async def _record_failure(
        self,
        pipeline: Pipeline,
        step: StepSpec,
        run: StepRun,
        ctx: _Context,
        t0: float,
        recorded: _Deferred,
        attempt: int,
        policy: RetryPolicy,
        error: BaseException,
    ) -> None:
        """Write the failed attempt; raise StepFailed when it was the last, else wait the backoff."""
        status = RunStatus.TIMED_OUT if isinstance(error, StepTimeout) else RunStatus.FAILED
        reason = mask_private(describe_error(error), ctx.private())
        await self._finish(pipeline, run, ctx, t0, status, reason, recorded)
        if is_permanent(step, error) or attempt == policy.attempts:
            tried = f" (after {attempt} attempts)" if attempt > 1 else ""
            raise StepFailed(step.name, f"{step.name} failed{tried}: {reason}", attempt) from error
        delay = policy.delay(attempt)
        note = f"attempt {attempt} failed: {reason}; retrying in {delay:g} s"
        note_line = StepLog(run.service_id, step.name, attempt, self.clock.now(), "warning", note)
        await self.recorder.add_step_logs([note_line])
        await self.clock.sleep(delay)

    async def _finish(
        self,
        pipeline: Pipeline,
        run: StepRun,
        ctx: _Context,
        t0: float,
        status: str,
        error: str | None,
        recorded: _Deferred,
        progress: Mapping[str, Any] | None = None,
    ) -> None:
        elapsed = self.clock.monotonic() - t0
        run.status = status
        run.error = error
        run.finished_at = self.clock.now()
        run.duration_ms = round(elapsed * 1000, 3)
        run.params.update(mask_private(ctx.params, ctx.private()))
        await asyncio.shield(self._persist_finish(run, ctx, progress, recorded))
        self.metrics.step_duration.labels(shimlet=ctx.shimlet_name, pipeline=ctx.pipeline_name, step=run.step,
                                          outcome=status).observe(elapsed)
        log.info("step finished", service_id=run.service_id, step=run.step, attempt=run.attempt,
                 outcome=status, duration_ms=run.duration_ms, operator=run.operator, params=redact(run.params),
                 error=error)

    async def _persist_finish(
        self, run: StepRun, ctx: _Context, progress: Mapping[str, Any] | None, recorded: _Deferred
    ) -> None:
        failure = await recorded.settle()
        if failure is not None:  # run.id is still None: the row is inserted below
            log.warning("writing a step's attempt row failed; it is written with the step's end",
                        service_id=run.service_id, step=run.step, error=str(failure))
        logs = await ctx.drain_logs()
        # A step that succeeded may be lost in a crash (it runs again), so it is not waited for.
        await self.recorder.finish_step_run(run, logs, progress, durable=run.status != RunStatus.SUCCEEDED)
