'''Templates of a generated pipeline project: a declared pipeline (or one extending a built-in), tests, docs.'''

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from modserv_shim.scaffold import OptionSpec, OutputSpec, _common, options_table, outputs_table

if TYPE_CHECKING:
    from modserv_shim.scaffold import Names

# ------------------------------------------------------------------ a pipeline of its own

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("runtime", 'Literal["llama.cpp", "vllm", "sglang"]', Literal["llama.cpp", "vllm", "sglang"],
               "llama.cpp", "the inference server this pipeline starts; its allowlist checks env and runtimeArgs"),
    OptionSpec("image", "str | None", str | None, None,
               "container image of the runtime; unset: the runtime's default image"),
    OptionSpec("ready_timeout", "float", float, 600.0,
               "seconds to wait for ready replicas; a request's healthCheckTimeout wins",
               (("gt", 0),)),
    OptionSpec("poll_interval", "float", float, 0.5,
               "seconds between two looks at the workload's status during the health check", (("gt", 0),)),
)

OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec("model_path", "the model file the workload serves", str),
    OutputSpec("launch", "how to start a replica: LaunchSpec.to_dict() (runtime, command, image, probes)", dict),
    OutputSpec("endpoint", "the OpenAI endpoint of the ready service", (str, type(None))),
)


OUTPUTS_PY = '''\
"""The outputs of the $name pipeline: what its steps write and later steps read.

Each is a typed key (:class:`modserv_shim.kit.Output`): ``KEY.set(ctx, value)`` stores the value's
JSON form with the service, ``KEY.get(ctx)`` returns it typed.  Steps declare the outputs they
``reads=`` and ``writes=``: a step that reads an output no earlier step writes is refused when
the class is created.  ``docs/$name.md`` shows :func:`markdown`.
"""

from __future__ import annotations

from typing import Any

from modserv_shim.kit import Output, outputs_table
from modserv_shim.plugins import LaunchSpec

MODEL_PATH: Output[str] = Output("model_path", "the model file the workload serves", stored=str)
LAUNCH: Output[LaunchSpec] = Output(
    "launch", "how to start a replica: LaunchSpec.to_dict() (runtime, command, image, probes)",
    stored=dict, encode=LaunchSpec.to_dict, decode=LaunchSpec.from_dict)
ENDPOINT: Output[str | None] = Output(
    "endpoint", "the OpenAI endpoint of the ready service", stored=(str, type(None)))

ALL: tuple[Output[Any], ...] = (MODEL_PATH, LAUNCH, ENDPOINT)


def markdown() -> str:
    """The outputs as a Markdown table."""
    return outputs_table(ALL)
'''

PIPELINE_PY = '''\
"""The ``$name`` pipeline: prepare the model, render the runtime's command line, deploy, health-check.

1. ``model-preparation``  yours to write: fetch, convert or check the model; records ``MODEL_PATH``.
2. ``launch-rendering``   the runtime's command line (:mod:`modserv_shim.runtimes`); a dry run stops
                          after it.
3. ``resource-deployment``  ``shimlet.create`` (idempotent for the service id); the resource is
                          recorded at once, so a crash or a delete right after finds it.
4. ``health-check``       waits until the shimlet reports every replica ready.

Every step is idempotent: after a crash of the server the step in flight runs again from the
start, with what the steps before it recorded.  The pipeline starts a runtime, so it checks what a
request may put into it (``check_request``: the runtime's allowlist of environment variables and
flags, plus what the admin allows).
"""

from __future__ import annotations

import asyncio

from modserv_shim.errors import PermanentStepError, StepError
from modserv_shim.kit import DeclaredPipeline, step
from modserv_shim.plugins import (
    DeployContext,
    Phase,
    ResourcePhase,
    RetryPolicy,
    Shimlet,
    StepContext,
    launch_target,
    runtime_program,
)
from modserv_shim.runtimes import LaunchParams, Runtime, Target, get_runtime
from modserv_shim.spec import DeploySpec

from $package.options import ${options_cls}
from $package.outputs import ENDPOINT, LAUNCH, MODEL_PATH


def target_of(shimlet: Shimlet) -> Target:
    """Where the shimlet runs the server: processes of this machine, or containers."""
    return "local" if launch_target(shimlet) == "local" else "container"


class ${cls}(DeclaredPipeline):
    """The $name pipeline; options: :class:`~$package.options.${options_cls}`."""

    name = "$name"
    Options = ${options_cls}
    options: ${options_cls}

    @property
    def runtime(self) -> Runtime:
        return get_runtime(self.options.runtime, image=self.options.image)

    def check_request(self, spec: DeploySpec, shimlet: Shimlet) -> None:
        """A request's ``env`` and ``runtimeArgs`` must pass the runtime's allowlist (HTTP 422 naming the first not)."""
        runtime = self.runtime
        runtime.check_request(spec.env, spec.runtimeArgs, self.policy, target=target_of(shimlet),
                              program=runtime_program(shimlet, runtime.name))

    # ------------------------------------------------------------ 1. yours

    @step("model-preparation", timeout=600, retry=RetryPolicy(attempts=2, backoff=2),
          description="the model file to serve", writes=(MODEL_PATH,))
    async def prepare(self, ctx: StepContext) -> None:
        """Make the model ready to serve and record its path: ``MODEL_PATH.set(ctx, path)``.

        ``ctx.spec`` is the request (``modelName``, ``modelFile``, ``env``, ...), ``ctx.data_dir`` a
        directory of this server for files, ``ctx.log(...)`` writes the step's log.  Idempotent: a
        second run with the same request gives the same path (reuse what the first run made).
        Raise ``PermanentStepError`` when retrying cannot help (no such model).
        """
        raise NotImplementedError("TODO: prepare the model (fetch, convert or check it); MODEL_PATH.set(ctx, path)")

    # ------------------------------------------------------------ 2-4. deploy what the runtime serves

    @step("launch-rendering", timeout=60, description="the runtime's command line",
          reads=(MODEL_PATH,), writes=(LAUNCH,))
    async def render(self, ctx: StepContext) -> None:
        spec = ctx.spec
        params = LaunchParams(
            served_model_name=spec.modelName,
            model_path=MODEL_PATH.get(ctx),
            extra_args=tuple(spec.runtimeArgs),
            env=dict(spec.env),
            startup_timeout=spec.healthCheckTimeout or self.options.ready_timeout,
            policy=self.policy,
        )
        runtime = self.runtime  # rendered for the program the shimlet's image runs, if it says (else the default)
        program = runtime_program(ctx.shimlet, runtime.name)
        launch = runtime.render(params, target=target_of(ctx.shimlet), program=program)
        ctx.set_params(runtime=launch.runtime, model_path=launch.model_path)
        LAUNCH.set(ctx, launch)

    @step("resource-deployment", phase=Phase.DEPLOYING, timeout=300,
          retry=RetryPolicy(attempts=3, backoff=2, max_delay=30), description="shimlet.create", reads=(LAUNCH,))
    async def deploy(self, ctx: StepContext) -> None:
        labels = {"modserv-shim/service-id": ctx.service_id, "modserv-shim/model": ctx.spec.modelName}
        workload = DeployContext(ctx.service_id, ctx.spec, LAUNCH.get(ctx), ctx.spec.replicaCount, labels)
        resource_id = await ctx.shimlet.create(workload)
        await ctx.set_resource(resource_id)  # at once: nothing may be awaited between create and this
        ctx.log(f"workload created on {ctx.shimlet.name}: {resource_id}")

    @step("health-check", phase=Phase.HEALTH_CHECKING, timeout=3600, description="every replica ready",
          reads=(LAUNCH,), writes=(ENDPOINT,))
    async def health_check(self, ctx: StepContext) -> None:
        if ctx.spec.healthCheckTimeout:
            ctx.set_timeout(ctx.spec.healthCheckTimeout, force=True)
        else:
            ctx.set_timeout(LAUNCH.get(ctx).startup_timeout)
        resource_id = ctx.resource_id
        if resource_id is None:
            raise StepError("no workload was recorded for this service")
        while True:
            status = await ctx.shimlet.status(resource_id)
            if status.phase is ResourcePhase.READY:
                ctx.log(f"{status.ready_replicas}/{status.desired_replicas} replicas ready at {status.endpoint}")
                ENDPOINT.set(ctx, status.endpoint)
                return
            if status.phase is ResourcePhase.FAILED:
                raise PermanentStepError(status.reason or "the workload failed before it became ready")
            if status.phase is ResourcePhase.NOT_FOUND:
                raise StepError("the workload disappeared while starting")
            await asyncio.sleep(self.options.poll_interval)
'''

TEST_CONTRACT = '''\
"""The $name pipeline keeps modserv-shim's pipeline contract, and the server finds it."""

from collections.abc import Callable

import pytest
from modserv_shim.errors import ValidationFailed
from modserv_shim.plugins import PluginContext, Shimlet
from modserv_shim.spec import DeploySpec
from modserv_shim.testing import FakeShimlet, make_deploy_spec
from modserv_shim.testing.discovery import discover_plugin
from modserv_shim.testing.pipeline_contract import PipelineContract

from $package import ${cls}


class Test${cls}(PipelineContract):
    @pytest.fixture
    def pipeline(self, plugin_context: Callable[..., PluginContext]) -> ${cls}:
        return ${cls}(plugin_context("$name"))

    @pytest.fixture
    def shimlet(self, fake_shimlet: FakeShimlet) -> FakeShimlet:
        return fake_shimlet  # workloads are records in a file; ready after 0.05 s

    @pytest.fixture
    def deploy_spec(self) -> DeploySpec:
        return make_deploy_spec("tiny")  # a request the pipeline deploys successfully

    def resources(self, shimlet: Shimlet) -> set[str] | None:
        assert isinstance(shimlet, FakeShimlet)
        return set(shimlet.resources())


def test_a_request_is_checked_against_the_runtime_allowlist(
    plugin_context: Callable[..., PluginContext], fake_shimlet: FakeShimlet
) -> None:
    pipeline = ${cls}(plugin_context("$name"))
    pipeline.check_request(make_deploy_spec("tiny"), fake_shimlet)
    with pytest.raises(ValidationFailed, match="--host"):
        pipeline.check_request(make_deploy_spec("tiny", runtimeArgs=["--host", "0.0.0.0"]), fake_shimlet)


def test_the_server_finds_the_pipeline_through_its_entry_point() -> None:
    assert discover_plugin("pipeline", "$name") is ${cls}
'''

# ------------------------------------------------------------------ extending opensourcellm

EXT_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("enabled", "bool", bool, True, "run model-preparation; false skips it"),
)

EXT_OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec("preparation", "what model-preparation found or did (for people and later steps)", dict),
)

EXT_OPTIONS_PY = '''\
"""Options of the $name pipeline: ``pipelines.$name.options`` in the server's config file.

Those of the pipeline it extends (``images``, ``gpu_memory_utilization``, ``probe_prompt``), and
its own: one ``Field(..., description=...)`` per key.  ``docs/$name.md`` shows the table
``${options_cls}.markdown_table()`` renders (``tests/test_docs.py`` keeps the two the same).
"""

from __future__ import annotations

from typing import ClassVar

from modserv_shim.pipelines.opensourcellm import OpenSourceLLMOptions
from pydantic import Field


class ${options_cls}(OpenSourceLLMOptions):
    label: ClassVar[str] = "$label"

$option_lines
'''

EXT_OUTPUTS_PY = '''\
"""The outputs the $name pipeline adds to those of opensourcellm (``modserv_shim.pipelines.opensourcellm``).

Each is a typed key (:class:`modserv_shim.kit.Output`): ``KEY.set(ctx, value)`` stores the value's
JSON form with the service, ``KEY.get(ctx)`` returns it typed.  A step that makes another model
file sets opensourcellm's ``MODEL_FILE`` and ``MODEL`` (declared in its ``writes=``): rendering and
deployment then serve that file.  ``docs/$name.md`` shows :func:`markdown`.
"""

from __future__ import annotations

from typing import Any

from modserv_shim.kit import Output, outputs_table

PREPARATION: Output[dict[str, Any]] = Output(
    "preparation", "what model-preparation found or did (for people and later steps)", stored=dict)

ALL: tuple[Output[Any], ...] = (PREPARATION,)


def markdown() -> str:
    """The outputs as a Markdown table."""
    return outputs_table(ALL)
'''

EXT_PIPELINE_PY = '''\
"""The ``$name`` pipeline: opensourcellm's steps, and ``model-preparation`` after model-validation.

The steps of :class:`~modserv_shim.pipelines.opensourcellm.OpenSourceLLMPipeline` (model-validation,
config-rendering, resource-deployment, health-check) are inherited, not listed: the one declared
here is placed ``after=`` model-validation.  More of the same: ``before=`` / ``after=`` a named step,
``replaces=`` one, or ``class ${cls}(OpenSourceLLMPipeline, remove=("health-check",))``.
The runtime allowlists (``check_request``) and the scale check are inherited too.
"""

from __future__ import annotations

from modserv_shim.kit import step
from modserv_shim.pipelines.opensourcellm import MODEL, MODEL_VALIDATION, OpenSourceLLMPipeline
from modserv_shim.plugins import RetryPolicy, StepContext

from $package.options import ${options_cls}
from $package.outputs import PREPARATION


class ${cls}(OpenSourceLLMPipeline):
    """The $name pipeline; options: :class:`~$package.options.${options_cls}`."""

    name = "$name"
    Options = ${options_cls}
    options: ${options_cls}

    @step("model-preparation", after=MODEL_VALIDATION, timeout=600, retry=RetryPolicy(attempts=2, backoff=2),
          description="what this pipeline adds", reads=(MODEL,), writes=(PREPARATION,))
    async def prepare(self, ctx: StepContext) -> None:
        """What this pipeline adds before the runtime's command line is rendered.

        ``MODEL.get(ctx)`` is what model-validation found (``ModelFacts``: architecture, dtype, sizes);
        ``ctx.spec`` is the request, ``ctx.data_dir`` a directory of this server, ``ctx.log(...)`` the
        step's log.  Record results with ``PREPARATION.set(ctx, {...})``; a step that makes another
        model file also sets ``MODEL_FILE`` and ``MODEL`` (add them to ``writes=``).  Idempotent: a
        second run with the same request gives the same outputs.
        """
        if not self.options.enabled:
            ctx.log("model-preparation is disabled (option enabled: false)")
            return
        raise NotImplementedError("TODO: do this pipeline's work on the model, then PREPARATION.set(ctx, {...})")
'''

EXT_TEST_CONTRACT = '''\
"""The $name pipeline keeps modserv-shim's pipeline contract, and the server finds it."""

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from modserv_shim.plugins import DeployContext, PluginContext, Shimlet
from modserv_shim.spec import DeploySpec
from modserv_shim.testing import FakeShimlet
from modserv_shim.testing.discovery import discover_plugin
from modserv_shim.testing.pipeline_contract import PipelineContract

from $package import ${cls}


class ProbedFakeShimlet(FakeShimlet):
    """TEST DOUBLE: the fake shimlet, answering the health check's requests itself (EndpointProber)."""

    def __init__(self, ctx: PluginContext) -> None:
        super().__init__(ctx)
        self.served: dict[str, str] = {}

    async def create(self, ctx: DeployContext) -> str:
        resource_id = await super().create(ctx)
        self.served[resource_id] = ctx.launch.served_model_name
        return resource_id

    async def request(self, resource_id: str, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        if path == "/v1/models":
            return 200, {"data": [{"id": self.served.get(resource_id)}]}
        return 200, {"choices": [{"text": " hi"}]}


class Test${cls}(PipelineContract):
    @pytest.fixture
    async def pipeline(self, plugin_context: Callable[..., PluginContext]) -> AsyncIterator[${cls}]:
        pipeline = ${cls}(plugin_context("$name"))
        await pipeline.start()
        yield pipeline
        await pipeline.close()

    @pytest.fixture
    def shimlet(self, plugin_context: Callable[..., PluginContext]) -> ProbedFakeShimlet:
        return ProbedFakeShimlet(plugin_context("fake"))

    @pytest.fixture
    def deploy_spec(self) -> DeploySpec:
        """A request the pipeline deploys successfully: model-validation reads its modelFile."""
        raise NotImplementedError("TODO: return DeploySpec(modelName='tiny', modelFile='<a small GGUF file>')")

    def resources(self, shimlet: Shimlet) -> set[str] | None:
        assert isinstance(shimlet, FakeShimlet)
        return set(shimlet.resources())


def test_the_server_finds_the_pipeline_through_its_entry_point() -> None:
    assert discover_plugin("pipeline", "$name") is ${cls}
'''

TEST_DOCS = '''\
"""docs/$name.md shows the tables the code generates; unknown options are refused."""

from pathlib import Path

import pytest
from modserv_shim.errors import ValidationFailed

from $package import outputs
from $package.options import ${options_cls}

DOC = Path(__file__).resolve().parent.parent / "docs" / "$name.md"


def test_the_docs_show_the_options_and_outputs_tables() -> None:
    text = DOC.read_text()
    assert ${options_cls}.markdown_table() in text, f"paste ${options_cls}.markdown_table() into {DOC}"
    assert outputs.markdown() in text, f"paste outputs.markdown() into {DOC}"


def test_unknown_options_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="unknown $label option"):
        ${options_cls}.parse({"no_such_option": 1})
'''

INIT = '''\
"""The $name pipeline for modserv-shim.

Files: ``options`` (every option with its type, default and meaning), ``outputs`` (the typed
keys its steps write and read), ``pipeline`` (the declared steps).
"""

from $package.options import ${options_cls}
from $package.pipeline import ${cls}

__all__ = ["${options_cls}", "${cls}"]
'''

DOC = '''\
# The `$name` pipeline

_TODO: say what this pipeline does that the default one does not, and what it needs._

## Configuration

Install the package next to modserv-shim; the server finds the pipeline at start-up (entry point
`$name` in the group `modserv_shim.pipelines`). Its options go in the server's config file:

```yaml
pipelines:
  $name:
    options: {}
    steps:                    # per-step timeout and retry overrides
      model-preparation: {timeout: 1200}
```

Deploy with `"pipeline": "$name"` in the request, or make it the default:
`model-serve-shim --pipeline=$name`.

## Steps

$steps_text
## Options

$options_table
## Outputs

$outputs_table
## Testing

```sh
pip install -e '.[test]'
pytest                 # the pipeline contract (tests/test_contract.py) and the docs check
ruff check src tests && mypy
```
'''

STEPS = '''\
| step | phase | what it does |
|---|---|---|
| `model-preparation` | pipeline_running | _TODO: what it does to the model_ |
| `launch-rendering` | pipeline_running | the runtime's command line; a dry run stops after it |
| `resource-deployment` | deploying | `shimlet.create`, recorded at once |
| `health-check` | health_checking | waits until every replica is ready |

A request's `env` and `runtimeArgs` are checked against the allowlist of the runtime (option
`runtime`) before the deploy is accepted; the admin allows more with `allowed_env` and
`allowed_runtime_args`.
'''

EXT_STEPS = '''\
The steps of `opensourcellm` (model-validation, config-rendering, resource-deployment,
health-check), with one more after model-validation:

| step | phase | what it does |
|---|---|---|
| `model-preparation` | pipeline_running | _TODO: what it does to the model_ |

A request's `env` and `runtimeArgs` are checked as for `opensourcellm`: against the allowlist of
the runtime that will serve the model, plus what the admin allows.
'''

README = '''\
# $project

The `$name` pipeline for modserv-shim: _TODO: one sentence on what it adds._
Documentation: [docs/$name.md](docs/$name.md).

```sh
pip install -e '.[test]'      # modserv-shim[testing] brings pytest and pytest-asyncio
pytest                        # the pipeline contract and the docs check
```

## Layout

| file | role |
|---|---|
| `src/$package/options.py` | the options model (`${options_cls}`): types, defaults, descriptions |
| `src/$package/outputs.py` | the typed outputs its steps write and read |
| `src/$package/pipeline.py` | the pipeline (`${cls}`): its declared steps |
| `tests/test_contract.py` | modserv-shim's pipeline contract, and the entry point |
| `tests/test_docs.py` | the docs page shows the tables the code generates |
| `pyproject.toml` | the entry point `$name` in `modserv_shim.pipelines` |

## What is left to write

`grep -rn 'TODO:' src tests docs`: the body of the `model-preparation` step$ext_todo. Every
step must be idempotent (it runs again after a crash of the server); the contract suite checks it,
and that a cancelled step leaves nothing behind.
'''


def files(names: Names) -> dict[str, str]:
    ext = names.extends is not None
    return {
        "src/$package/__init__.py": INIT,
        "src/$package/options.py": EXT_OPTIONS_PY if ext else _common.OPTIONS_PY,
        "src/$package/outputs.py": EXT_OUTPUTS_PY if ext else OUTPUTS_PY,
        "src/$package/pipeline.py": EXT_PIPELINE_PY if ext else PIPELINE_PY,
        "tests/test_contract.py": EXT_TEST_CONTRACT if ext else TEST_CONTRACT,
        "tests/test_docs.py": TEST_DOCS,
        "docs/$name.md": DOC,
        "README.md": README,
    }


def values(names: Names) -> dict[str, str]:
    ext = names.extends is not None
    options, outputs = (EXT_OPTIONS, EXT_OUTPUTS) if ext else (OPTIONS, OUTPUTS)
    extra: dict[str, Any] = {
        "option_lines": "\n".join(o.source() for o in options),
        "options_table": options_table(options, names.extends),
        "outputs_table": outputs_table(outputs),
        "typing_names": "ClassVar, Literal",
        "steps_text": EXT_STEPS if ext else STEPS,
        "ext_todo": ", and the test's `deploy_spec` (a small GGUF model file the contract deploys)" if ext else "",
    }
    return {k: str(v) for k, v in extra.items()}
