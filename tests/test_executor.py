"""Retry and timeout behaviour of the executor, driven by a clock that does not sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from modserv_shim.core.executor import Executor, MemoryRecorder, StepFailed
from modserv_shim.core.lifecycle import State
from modserv_shim.core.metrics import Metrics
from modserv_shim.core.records import ServiceRecord
from modserv_shim.errors import PermanentStepError, StepError
from modserv_shim.plugins import Phase, PluginContext, RetryPolicy, StepContext, StepSpec
from modserv_shim.spec import DeploySpec
from tests.doubles.fake_shimlet import FakeShimlet


class RecordingClock:
    """TEST DOUBLE: records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def now(self) -> float:
        return 0.0

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


async def run(tmp_path: Path, steps: list[StepSpec], script: dict[str, list[object]]):  # type: ignore[no-untyped-def]
    clock, rec_store = RecordingClock(), MemoryRecorder()
    ex = Executor(rec_store, clock, Metrics(), tmp_path)
    pipe = ScriptedPipeline(steps, script)
    rec = record()
    phases: list[Phase] = []

    async def enter(p: Phase) -> None:
        phases.append(p)

    shimlet = FakeShimlet(PluginContext("fake", tmp_path))
    try:
        await ex.run(rec, pipe, steps, shimlet, operator="tester", enter_phase=enter)
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
