"""Retry and timeout behaviour of the executor, driven by a clock that does not sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from modserv_shim.core.executor import (
    Executor,
    MemoryRecorder,
    StepFailed,
    StepOverride,
    UnknownStepOverride,
    apply_overrides,
)
from modserv_shim.core.lifecycle import State
from modserv_shim.core.metrics import Metrics
from modserv_shim.core.records import ServiceRecord
from modserv_shim.errors import PermanentStepError, StepError
from modserv_shim.plugins import Phase, PluginContext, RetryPolicy, StepContext, StepSpec
from modserv_shim.spec import DeploySpec
from modserv_shim.testing.fake_shimlet import FakeShimlet


class RecordingClock:
    """TEST DOUBLE: records the waits instead of sleeping; its time stands still unless a test moves it."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.wall = 0.0
        self.mono = 0.0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


class ScriptedPipeline:
    """TEST DOUBLE: each step runs a script of outcomes, one per attempt."""

    name = "scripted"

    def __init__(self, steps: list[StepSpec], script: dict[str, list[object]]) -> None:
        self._steps = steps
        self.script = script
        self.calls: list[tuple[str, int]] = []

    def steps(self) -> Sequence[StepSpec]:
        return self._steps

    async def run_step(self, step: StepSpec, ctx: StepContext) -> None:
        self.calls.append((step.name, ctx.attempt))
        outcome = self.script.get(step.name, ["ok"])[ctx.attempt - 1]
        if outcome == "hang":
            await asyncio.Event().wait()
        if outcome == "lose-cancel-then-fail":  # like wait_for on 3.11 when its future is done at that instant
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise PermanentStepError("the workload failed before becoming ready") from None
        if isinstance(outcome, BaseException):
            raise outcome
        ctx.set_output(step.name, ctx.attempt)


def record() -> ServiceRecord:
    spec = DeploySpec(modelName="m", modelFile="/m.gguf")
    return ServiceRecord("m-1", "m", spec.wire(), "fake", "scripted", State.INITIALIZING, [])


async def run(tmp_path: Path, steps: list[StepSpec], script: dict[str, list[object]],  # type: ignore[no-untyped-def]
              clock: RecordingClock | None = None, fixed_timeouts: frozenset[str] = frozenset()):
    clock, rec_store = clock or RecordingClock(), MemoryRecorder()
    ex = Executor(rec_store, clock, Metrics(), tmp_path)
    pipe = ScriptedPipeline(steps, script)
    rec = record()
    phases: list[Phase] = []

    async def enter(p: Phase) -> None:
        phases.append(p)

    shimlet = FakeShimlet(PluginContext("fake", tmp_path))
    try:
        await ex.run(rec, pipe, steps, shimlet, operator="tester", enter_phase=enter, fixed_timeouts=fixed_timeouts)
        error = None
    except StepFailed as exc:
        error = exc
    return rec, rec_store, clock, pipe, phases, error


POLICY = RetryPolicy(attempts=3, backoff=2.0, multiplier=3.0, max_delay=5.0)


async def test_fails_twice_then_succeeds(tmp_path: Path) -> None:
    steps = [StepSpec("a", retry=POLICY), StepSpec("b", Phase.DEPLOYING)]
    rec, store, clock, pipe, phases, error = await run(
        tmp_path, steps, {"a": [StepError("flaky 1"), StepError("flaky 2"), "ok"]})
    assert error is None
    assert pipe.calls == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]
    assert clock.sleeps == [2.0, 5.0]  # 2 * 3**0, then 2 * 3**1 = 6 capped at max_delay 5
    assert [(r.step, r.attempt, r.status) for r in store.runs] == [
        ("a", 1, "failed"), ("a", 2, "failed"), ("a", 3, "succeeded"), ("b", 1, "succeeded")]
    assert store.runs[0].error == "flaky 1" and store.runs[0].operator == "tester"
    assert all(r.duration_ms is not None and r.finished_at is not None for r in store.runs)
    assert [x.message for x in store.logs if x.level == "warning"] == [
        "attempt 1 failed: flaky 1; retrying in 2 s", "attempt 2 failed: flaky 2; retrying in 5 s"]
    assert rec.current_step == 2 and rec.outputs == {"a": 3, "b": 1}
    assert phases == [Phase.PIPELINE, Phase.DEPLOYING]


async def test_step_times_out_and_is_retried_then_fails(tmp_path: Path) -> None:
    steps = [StepSpec("slow", timeout=0.05, retry=RetryPolicy(attempts=2, backoff=1))]
    rec, store, clock, _pipe, _, error = await run(tmp_path, steps, {"slow": ["hang", "hang"]})
    assert isinstance(error, StepFailed)
    assert error.reason == "slow failed (after 2 attempts): step slow did not finish within 0.05 s"
    assert [r.status for r in store.runs] == ["timed_out", "timed_out"]
    assert clock.sleeps == [1.0]
    assert rec.current_step == 0  # a retry starts at the step that failed


async def test_timeout_wins_over_an_error_raised_after_the_step_lost_its_cancellation(tmp_path: Path) -> None:
    """The user's limit was exceeded: that is the reason (and a timeout is retried), even if the
    step then failed otherwise."""
    steps = [StepSpec("wait", timeout=0.05, retry=RetryPolicy(attempts=2, backoff=1))]
    _, store, _clock, pipe, _, error = await run(tmp_path, steps, {"wait": ["lose-cancel-then-fail"] * 2})
    assert isinstance(error, StepFailed) and pipe.calls == [("wait", 1), ("wait", 2)]
    assert error.reason == ("wait failed (after 2 attempts): step wait did not finish within 0.05 s;"
                            " it then failed: the workload failed before becoming ready")
    assert [r.status for r in store.runs] == ["timed_out", "timed_out"]


async def test_permanent_error_is_not_retried(tmp_path: Path) -> None:
    steps = [StepSpec("check", retry=POLICY), StepSpec("never")]
    _, store, clock, pipe, _, error = await run(
        tmp_path, steps, {"check": [PermanentStepError("model file not found: /m.gguf")]})
    assert isinstance(error, StepFailed) and error.reason == "check failed: model file not found: /m.gguf"
    assert pipe.calls == [("check", 1)] and clock.sleeps == []
    assert [r.status for r in store.runs] == ["failed"]


async def test_step_declared_permanent_types(tmp_path: Path) -> None:
    steps = [StepSpec("check", retry=POLICY, permanent=(FileNotFoundError,))]
    _, _, _clock, pipe, _, error = await run(tmp_path, steps, {"check": [FileNotFoundError("gone")]})
    assert isinstance(error, StepFailed) and pipe.calls == [("check", 1)]
    assert error.reason == "check failed: FileNotFoundError: gone"


async def test_unexpected_exception_is_retried(tmp_path: Path) -> None:
    steps = [StepSpec("x", retry=RetryPolicy(attempts=2, backoff=0.5))]
    _, _, clock, _pipe, _, error = await run(tmp_path, steps, {"x": [KeyError("k"), "ok"]})
    assert error is None and clock.sleeps == [0.5]


def test_retry_policy_validates() -> None:
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        RetryPolicy(attempts=0)
    assert RetryPolicy(backoff=1, multiplier=2, max_delay=100).delay(4) == 8


class TickingClock(RecordingClock):
    """TEST DOUBLE: every reading of the monotonic clock is 1.5 s after the last; a sleep moves the wall clock."""

    def monotonic(self) -> float:
        self.mono += 1.5
        return self.mono

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        self.wall += seconds


async def test_times_come_from_the_injected_clock(tmp_path: Path) -> None:
    clock = TickingClock()
    clock.wall = 1_700_000_000.0
    steps = [StepSpec("a", retry=RetryPolicy(attempts=2, backoff=7))]
    _, store, _, _, _, error = await run(tmp_path, steps, {"a": [StepError("flaky"), "ok"]}, clock)
    assert error is None
    first, second = store.runs
    assert first.started_at == first.finished_at == 1_700_000_000.0
    assert second.started_at == second.finished_at == 1_700_000_007.0  # after the 7 s backoff
    assert first.duration_ms == second.duration_ms == 1500.0
    assert [x.ts for x in store.logs] == [1_700_000_000.0]  # the retry note, stamped by the clock


def test_an_override_naming_no_step_is_refused_with_the_steps() -> None:
    steps = [StepSpec("model-validation"), StepSpec("health-check", Phase.HEALTH_CHECKING)]
    with pytest.raises(UnknownStepOverride) as info:
        apply_overrides(steps, {"helth-check": StepOverride(timeout=5)}, "opensourcellm")
    assert info.value.message == (
        "the configuration (pipelines.opensourcellm.steps) overrides 'helth-check', which pipeline"
        " 'opensourcellm' does not have; its steps: model-validation, health-check")


def test_underscore_in_an_override_stands_for_a_dash() -> None:
    steps = [StepSpec("model-validation"), StepSpec("health-check", Phase.HEALTH_CHECKING, timeout=60)]
    out = apply_overrides(steps, {"health_check": StepOverride(timeout=5, retry={"attempts": 4})})
    assert (out[1].timeout, out[1].retry.attempts) == (5, 4) and out[0] == steps[0]


async def test_a_fixed_timeout_is_matched_whatever_the_spelling(tmp_path: Path) -> None:
    """A step that sets its own timeout (health-check) must not undo one the configuration fixed."""

    steps = [StepSpec("health-check", timeout=0.05)]

    async def grow(step: StepSpec, ctx: StepContext) -> None:
        ctx.set_timeout(30)
        await asyncio.Event().wait()

    clock, rec_store = RecordingClock(), MemoryRecorder()
    ex = Executor(rec_store, clock, Metrics(), tmp_path)
    pipe = ScriptedPipeline(steps, {})
    pipe.run_step = grow  # type: ignore[method-assign]

    async def enter(p: Phase) -> None:
        return None

    with pytest.raises(StepFailed, match=r"did not finish within 0\.05 s"):
        await ex.run(record(), pipe, steps, FakeShimlet(PluginContext("fake", tmp_path)), operator="t",
                     enter_phase=enter, fixed_timeouts=frozenset({"health_check"}))
