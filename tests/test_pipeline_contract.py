"""The pipeline contract (modserv_shim.testing.pipeline_contract) against the default pipeline,
and proof that it catches the mistakes it is about."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.kit.pipeline import DeclaredPipeline, Output, step
from modserv_shim.pipelines.opensourcellm import OpenSourceLLMPipeline
from modserv_shim.plugins import DeployContext, LaunchSpec, Phase, PluginContext, StepContext
from modserv_shim.spec import DeploySpec
from modserv_shim.testing.fake_shimlet import FakeShimlet
from modserv_shim.testing.pipeline_contract import PipelineContract, ServiceState
from tests.helpers.tiny_gguf import write_tiny_llama_gguf


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


class TestOpenSourceLLMContract(PipelineContract):
    cancel_points = 16
    factory = OpenSourceLLMPipeline

    @pytest.fixture
    def deploy_spec(self, tiny_model: Path) -> DeploySpec:  # a memory limit: the fit check runs too
        return DeploySpec.model_validate({"modelName": "tiny", "modelFile": str(tiny_model),
                                          "resourceRequirements": {"memory": "2Gi"}})


# --- the contract has teeth: each of these pipelines breaks one rule

COUNTER = itertools.count()
STAMP: Output[int] = Output("stamp", "a number", stored=int)


class Drifting(DeclaredPipeline):
    name = "drifting"

    @step("stamp", writes=(STAMP,))
    async def stamp(self, ctx: StepContext) -> None:
        STAMP.set(ctx, next(COUNTER))  # not idempotent


class Undeclared(DeclaredPipeline):
    name = "undeclared"

    @step("note")
    async def note(self, ctx: StepContext) -> None:
        ctx.set_output("note", "not declared")


class WrongType(DeclaredPipeline):
    name = "wrong-type"

    @step("stamp", writes=(STAMP,))
    async def stamp(self, ctx: StepContext) -> None:
        ctx.set_output("stamp", "seven")


class Leaky(DeclaredPipeline):
    name = "leaky"

    @step("first", writes=(STAMP,))
    async def first(self, ctx: StepContext) -> None:
        STAMP.set(ctx, 1)

    @step("deploy", phase=Phase.DEPLOYING)
    async def deploy(self, ctx: StepContext) -> None:
        launch = LaunchSpec("fake", "m", "/m", ("fake",), ())
        rid = await ctx.shimlet.create(DeployContext(ctx.service_id, ctx.spec, launch, 1))
        await asyncio.sleep(0)  # a moment in which a delete finds a workload nobody recorded
        await ctx.set_resource(rid)


class Meddling(DeclaredPipeline):
    name = "meddling"

    @step("first", writes=(STAMP,))
    async def first(self, ctx: StepContext) -> None:
        STAMP.set(ctx, 1)

    @step("second")
    async def second(self, ctx: StepContext) -> None:
        ctx.outputs["stamp"]  # reads are fine
        outputs: Any = ctx.outputs
        outputs.clear()  # the merged view: harmless
        ctx.log("ok")


BOX: Output[dict[str, int]] = Output("box", "a mapping", stored=dict)


class Mutating(DeclaredPipeline):
    name = "mutating"

    @step("first", writes=(BOX,))
    async def first(self, ctx: StepContext) -> None:
        BOX.set(ctx, {"n": 1})

    @step("second")
    async def second(self, ctx: StepContext) -> None:
        ctx.outputs["box"]["n"] = 2  # changes what an earlier step stored


class Swallower(DeclaredPipeline):
    name = "swallower"

    @step("stubborn")
    async def stubborn(self, ctx: StepContext) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return


class Probe(PipelineContract):
    cancel_points = 12

    def resources(self, shimlet: Any) -> set[str] | None:
        return set(shimlet.resources())


async def check(test: str, pipeline_cls: type[DeclaredPipeline], tmp_path: Path) -> None:
    shimlet = FakeShimlet(PluginContext("fake", tmp_path))
    spec = DeploySpec(modelName="m", modelFile="/m.gguf")
    contract = Probe()
    pipeline = pipeline_cls(PluginContext(pipeline_cls.name, tmp_path))
    states: list[ServiceState] = []

    def services() -> ServiceState:
        states.append(ServiceState(f"probe-{len(states)}"))
        return states[-1]

    try:
        await getattr(contract, test)(pipeline, shimlet, spec, services, tmp_path)
    finally:
        for s in states:
            await shimlet.delete(s.service_id)


@pytest.mark.parametrize(("test", "pipeline", "message"), [
    ("test_each_step_run_twice_gives_the_same_outputs", Drifting, "step stamp: a second run changed its outputs"),
    ("test_outputs_match_their_declarations", Undeclared, "step note sets outputs it does not declare"),
    ("test_outputs_match_their_declarations", WrongType, "output 'stamp' must be stored as int, got str"),
    ("test_a_cancelled_step_leaves_nothing_behind", Leaky, "step deploy cancelled at moment 1 left {'fake-probe-0'}"),
    ("test_a_cancelled_step_leaves_nothing_behind", Swallower, "the step swallowed its cancellation"),
    ("test_a_cancelled_step_leaves_nothing_behind", Mutating, "step second changed the outputs it was given"),
])
async def test_the_contract_catches(test: str, pipeline: type[DeclaredPipeline], message: str,
                                    tmp_path: Path) -> None:
    with pytest.raises((AssertionError, TypeError)) as info:
        await check(test, pipeline, tmp_path)
    assert message in str(info.value)


async def test_a_pipeline_that_keeps_the_rules_passes(tmp_path: Path) -> None:
    for test in ("test_each_step_run_twice_gives_the_same_outputs", "test_outputs_match_their_declarations",
                 "test_a_cancelled_step_leaves_nothing_behind"):
        await check(test, Meddling, tmp_path)
