"""Pipelines as declarations (modserv_shim.kit.pipeline): steps, extension, typed outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from modserv_shim.core.registry import check_pipeline
from modserv_shim.errors import PermanentStepError, ValidationFailed
from modserv_shim.kit.options import PluginOptions
from modserv_shim.kit.pipeline import (
    DeclaredPipeline,
    Output,
    PipelineDeclarationError,
    Step,
    insert,
    remove,
    replace_step,
    step,
)
from modserv_shim.modelinfo import ModelFacts
from modserv_shim.pipelines.opensourcellm import LAUNCH, MODEL, OpenSourceLLMPipeline
from modserv_shim.plugins import LaunchSpec, Phase, Pipeline, PluginContext, RetryPolicy, StepContext, StepSpec

COUNT: Output[int] = Output("count", "how many widgets", stored=int)
NOTE: Output[str] = Output("note", "a note", stored=str)


class Ctx:
    """TEST DOUBLE: the part of a StepContext that outputs use."""

    def __init__(self, outputs: dict[str, Any] | None = None) -> None:
        self.outputs: dict[str, Any] = dict(outputs or {})
        self.ran: list[str] = []

    def set_output(self, key: str, value: Any) -> None:
        self.outputs[key] = value


def as_ctx(ctx: Ctx) -> StepContext:
    return cast(StepContext, ctx)


class WidgetOptions(PluginOptions):
    label: ClassVar[str] = "widgets pipeline"
    greeting: str = "hello"


class Widgets(DeclaredPipeline):
    name = "widgets"
    Options = WidgetOptions
    options: WidgetOptions

    @step("prepare", timeout=30, retry=RetryPolicy(attempts=3), writes=(COUNT,), description="count them")
    async def prepare(self, ctx: StepContext) -> None:
        COUNT.set(ctx, 3)
        cast(Ctx, ctx).ran.append("prepare")

    @step("deploy", phase=Phase.DEPLOYING, reads=(COUNT,), writes=(NOTE,))
    async def deploy(self, ctx: StepContext) -> None:
        NOTE.set(ctx, f"{self.options.greeting}: {COUNT.get(ctx)}")
        cast(Ctx, ctx).ran.append("deploy")

    @step("verify", phase=Phase.HEALTH_CHECKING, reads=(NOTE,))
    async def verify(self, ctx: StepContext) -> None:
        cast(Ctx, ctx).ran.append("verify")


def make(cls: type[DeclaredPipeline], tmp_path: Path, **options: Any) -> Any:
    return cls(PluginContext(cls.name, tmp_path, options))


def names(p: Pipeline | type[DeclaredPipeline]) -> list[str]:
    return [s.name for s in (p.step_specs() if isinstance(p, type) else p.steps())]


async def run_all(p: Pipeline) -> Ctx:
    ctx = Ctx()
    for s in p.steps():
        await p.run_step(s, as_ctx(ctx))
    return ctx


async def test_declared_steps_are_the_pipeline_protocol(tmp_path: Path) -> None:
    p = make(Widgets, tmp_path, greeting="hi")
    assert isinstance(p, Pipeline)
    assert list(p.steps()) == [
        StepSpec("prepare", Phase.PIPELINE, timeout=30, retry=RetryPolicy(attempts=3), description="count them"),
        StepSpec("deploy", Phase.DEPLOYING), StepSpec("verify", Phase.HEALTH_CHECKING)]
    assert [s.name for s in check_pipeline(p, "widgets")] == ["prepare", "deploy", "verify"]
    ctx = await run_all(p)
    assert ctx.ran == ["prepare", "deploy", "verify"] and ctx.outputs == {"count": 3, "note": "hi: 3"}
    with pytest.raises(PermanentStepError, match="the widgets pipeline has no step 'nope'"):
        await p.run_step(StepSpec("nope"), as_ctx(ctx))


def test_options_are_a_model_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match=r"unknown widgets pipeline option\(s\): greting; allowed: greeting"):
        make(Widgets, tmp_path, greting="x")
    with pytest.raises(ValidationFailed, match=r"unknown opensourcellm pipeline option\(s\): gpu_memory_utilisation"):
        make(OpenSourceLLMPipeline, tmp_path, gpu_memory_utilisation=0.8)
    p = make(OpenSourceLLMPipeline, tmp_path, gpu_memory_utilization=0.8, images={"vllm": "v:1"})
    assert (p.gpu_memory_utilization, p.images, p.probe_prompt) == (0.8, {"vllm": "v:1"}, "Hello")


# --- extending without re-listing steps


async def test_insert_replace_and_remove_in_a_subclass(tmp_path: Path) -> None:
    class More(Widgets, remove=("verify",)):
        name = "more"

        @step("count-again", after="prepare", reads=(COUNT,))
        async def count_again(self, ctx: StepContext) -> None:
            cast(Ctx, ctx).ran.append("count-again")

        @step("first", before="prepare")
        async def first(self, ctx: StepContext) -> None:
            cast(Ctx, ctx).ran.append("first")

        @step("deploy", phase=Phase.DEPLOYING, timeout=5, replaces="deploy")
        async def deploy_differently(self, ctx: StepContext) -> None:
            cast(Ctx, ctx).ran.append("deploy-differently")

    assert names(More) == ["first", "prepare", "count-again", "deploy"]
    assert names(Widgets) == ["prepare", "deploy", "verify"]  # the base is unchanged
    assert More.declaration("deploy").timeout == 5
    ctx = await run_all(make(More, tmp_path))
    assert ctx.ran == ["first", "prepare", "count-again", "deploy-differently"]


async def test_overriding_a_method_keeps_the_declaration(tmp_path: Path) -> None:
    class Quiet(Widgets):
        async def deploy(self, ctx: StepContext) -> None:
            cast(Ctx, ctx).ran.append("quiet deploy")

    assert Quiet.step_specs() == Widgets.step_specs()
    ctx = await run_all(make(Quiet, tmp_path))
    assert ctx.ran == ["prepare", "quiet deploy", "verify"]


async def test_table_form(tmp_path: Path) -> None:
    async def audit(pipeline: DeclaredPipeline, ctx: StepContext) -> None:
        cast(Ctx, ctx).ran.append(f"audit by {pipeline.name}")

    Audited = Widgets.extend(
        "audited",
        insert(Step("audit", audit, phase=Phase.DEPLOYING, timeout=9), after="deploy"),
        replace_step("verify", Step("verify-twice", audit, phase=Phase.HEALTH_CHECKING)),
        remove("prepare"),
        insert(Step("prepare-again", audit, writes=(COUNT,)), before="deploy"),
    )
    assert Audited.name == "audited" and issubclass(Audited, Widgets)
    assert names(Audited) == ["prepare-again", "deploy", "audit", "verify-twice"]
    p = make(Audited, tmp_path)
    ctx = Ctx({"count": 1})
    await p.run_step(StepSpec("audit"), as_ctx(ctx))
    assert ctx.ran == ["audit by audited"]


@pytest.mark.parametrize(("change", "message"), [
    (insert(Step("x"), after="prepair"),
     "pipeline 'bad': step 'x' (after=) names no step 'prepair'; its steps: prepare, deploy, verify"),
    (insert(Step("x"), before="nope"), "step 'x' (before=) names no step 'nope'"),
    (replace_step("deplo", Step("x")), "step 'x' (replaces=) names no step 'deplo'"),
    (remove("verfy"), "pipeline 'bad': remove names no step 'verfy'; its steps: prepare, deploy, verify"),
    (insert(Step("deploy")), "pipeline 'bad' declares the step 'deploy' twice"),
    (insert(Step("late"), after="verify"), "step phases must not go backwards"),
    (insert(Step("Bad_Name")), "step name 'Bad_Name' must be lower-case words joined by '-'"),
    (remove("prepare"), "step 'deploy' reads count, which no earlier step writes"),
])
def test_mistakes_are_refused_when_the_class_is_made(change: Any, message: str) -> None:
    with pytest.raises(PipelineDeclarationError) as info:
        Widgets.extend("bad", change)
    assert message in str(info.value)


def test_mistakes_in_a_class_body_and_in_keywords() -> None:
    with pytest.raises(PipelineDeclarationError, match="remove names no step 'helth-check'; its steps: model-val"):
        class NoHealth(OpenSourceLLMPipeline, remove=("helth-check",)):
            pass
    with pytest.raises(PipelineDeclarationError, match="step phases must not go backwards"):
        class Backwards(DeclaredPipeline):
            @step("b", phase=Phase.DEPLOYING)
            async def b(self, ctx: StepContext) -> None: ...

            @step("a")
            async def a(self, ctx: StepContext) -> None: ...
    with pytest.raises(PipelineDeclarationError, match="give before= or after=, not both"):
        step("x", before="a", after="b")(Widgets.prepare)
    with pytest.raises(PipelineDeclarationError, match="declares no steps"):
        DeclaredPipeline(PluginContext("empty", Path(".")))


# --- typed outputs


def test_outputs_store_the_same_json_as_before() -> None:
    facts = ModelFacts("gguf", "/m.gguf", "llama", "tiny", 1000, 2000, 128, 2, 64, 4, 2, 16, "F16")
    ctx = Ctx()
    MODEL.set(as_ctx(ctx), facts)
    assert ctx.outputs == {"model": facts.to_dict()}  # what set_output("model", facts.to_dict()) stored
    assert MODEL.get(as_ctx(ctx)) == facts
    MODEL.check(ctx.outputs["model"])
    launch = LaunchSpec("llama.cpp", "tiny", "/m.gguf", ("python",), ("--port", "{port}"))
    stored = {"launch": {**launch.to_dict(), "args": ["--port", "{port}"], "local_command": ["python"]}}  # as JSON
    assert LAUNCH.read(stored) == launch
    LAUNCH.check(stored["launch"])


def test_missing_outputs_and_defaults() -> None:
    ctx = as_ctx(Ctx())
    assert NOTE.get(ctx, "none yet") == "none yet"
    with pytest.raises(PermanentStepError, match=r"no step has set the output 'count' \(how many widgets\)"):
        COUNT.get(ctx)


@pytest.mark.parametrize(("output", "value", "message"), [
    (COUNT, "3", "output 'count' must be stored as int, got str"),
    (MODEL, {"format": "gguf"}, "output 'model' does not read back: TypeError"),
    (MODEL, [], "output 'model' must be stored as dict, got list"),
])
def test_check_refuses_what_does_not_match_the_declaration(output: Output[Any], value: Any, message: str) -> None:
    with pytest.raises(TypeError) as info:
        output.check(value)
    assert message in str(info.value)


# --- the default pipeline, as declared: what it was when it listed its steps by hand


def test_opensourcellm_steps_are_unchanged() -> None:
    assert OpenSourceLLMPipeline.step_specs() == [
        StepSpec("model-validation", Phase.PIPELINE, timeout=300, retry=RetryPolicy(attempts=2, backoff=2),
                 description="model is complete and fits"),
        StepSpec("config-rendering", Phase.PIPELINE, timeout=60, description="runtime command line and workload"),
        StepSpec("resource-deployment", Phase.DEPLOYING, timeout=300,
                 retry=RetryPolicy(attempts=3, backoff=2, max_delay=30), description="shimlet.create"),
        StepSpec("health-check", Phase.HEALTH_CHECKING, timeout=3600,
                 description="ready replicas, /v1/models, a one-token completion"),
    ]
