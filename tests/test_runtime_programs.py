"""A shimlet names the program its image runs for a runtime (``programs``), and the runtime renders,
and checks requests, for that program: llama.cpp in a container with llama-cpp-python."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.errors import PermanentStepError, ValidationFailed
from modserv_shim.pipelines.opensourcellm import OpenSourceLLMPipeline
from modserv_shim.pipelines.opensourcellm.outputs import LAUNCH, WORKLOAD
from modserv_shim.plugins import DeployContext, LaunchSpec, PluginContext, runtime_program
from modserv_shim.runtimes import LaunchParams, LlamaCppRuntime, SglangRuntime, VllmRuntime, get_runtime
from modserv_shim.spec import DeploySpec
from modserv_shim.testing.fake_shimlet import FakeShimlet
from modserv_shim.testing.pipeline_contract import ContractContext, ServiceState
from tests.helpers.tiny_gguf import write_tiny_llama_gguf

PY = "llama-cpp-python"
GGUF = LaunchParams("tiny", "/models/tiny.gguf", context_length=2048, extra_args=("--n_threads", "2"))
POLICY_FREE = GGUF.policy



# ------------------------------------------------------------- the runtime


def test_llama_cpp_python_in_a_container() -> None:
    spec = LlamaCppRuntime().render(GGUF, target="container", program=PY)
    assert spec.container_command == ("python3", "-m", "llama_cpp.server")
    assert list(spec.args) == [
        "--model", "/models/tiny.gguf", "--model_alias", "tiny", "--n_ctx", "2048",
        "--host", "{host}", "--port", "{port}", "--n_threads", "2",
    ]  # fmt: skip
    assert (spec.ready_path, spec.health_path) == ("/v1/models", "/v1/models")  # it has no /health
    # llama-server's image would not understand these flags: no image unless one is pinned (the shimlet's own)
    assert spec.image == ""
    pinned = get_runtime("llama.cpp", image="local/llama-cpp-python:test")
    assert pinned.render(GGUF, target="container", program=PY).image == "local/llama-cpp-python:test"
    assert LaunchSpec.from_dict(spec.to_dict()) == spec


def test_llama_cpp_python_in_a_container_offloads_with_its_own_flag() -> None:
    params = LaunchParams("tiny", "/models/tiny.gguf", accelerator_count=1)
    args = LlamaCppRuntime().render(params, target="container", program=PY).args
    assert args[args.index("--n_gpu_layers") + 1] == "-1" and "--n-gpu-layers" not in args


def test_the_container_flags_are_those_llama_cpp_python_knows() -> None:
    params = LaunchParams("t", "/m.gguf", accelerator_count=1, context_length=64)
    spec = LlamaCppRuntime().render(params, target="container", program=PY)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    usage = subprocess.run([sys.executable, *spec.container_command[1:], "--help"], capture_output=True,
                           text=True, timeout=120, env=env, check=True).stdout
    flags = [a for a in spec.args if a.startswith("--")]
    assert flags and all(f"{flag} " in usage for flag in flags), [f for f in flags if f"{f} " not in usage]


def test_the_allowlist_follows_the_program() -> None:
    runtime = LlamaCppRuntime()
    # llama-server's flag, in a container that runs llama-cpp-python: refused, naming the program
    with pytest.raises(ValidationFailed, match=r"--threads is not an argument the shim accepts for"
                       r" llama\.cpp \(llama-cpp-python\)\. Accepted: .*--n_threads"):
        runtime.check_request({}, ["--threads", "2"], POLICY_FREE, target="container", program=PY)
    runtime.check_request({}, ["--n_threads", "2"], POLICY_FREE, target="container", program=PY)
    # and the other way round: llama-server (the container default) refuses llama-cpp-python's flags
    for program in (None, "llama-server"):
        with pytest.raises(ValidationFailed, match=r"--n_threads is not an argument"):
            runtime.check_request({}, ["--n_threads", "2"], POLICY_FREE, target="container", program=program)
        runtime.check_request({}, ["--threads", "2"], POLICY_FREE, target="container", program=program)
    # the refusals too: --model_alias is ours for llama-cpp-python, --alias for llama-server
    with pytest.raises(ValidationFailed, match="--model_alias is not accepted: the shim passes the served name"):
        runtime.render(LaunchParams("t", "/m.gguf", extra_args=("--model_alias", "x")), target="container",
                       program=PY)
    assert runtime.arg_rules(target="container", program=PY) is not runtime.arg_rules(target="container")
    # the environment allowlist is the runtime's: both programs link the same ggml
    runtime.check_request({"GGML_CUDA_NO_PINNED": "1"}, [], POLICY_FREE, target="container", program=PY)


def test_an_unknown_program_is_refused_with_the_known_ones() -> None:
    message = (r"unknown program 'llama-python' for runtime 'llama\.cpp';"
               r" its programs are: llama-server, llama-cpp-python")
    for call in (
        lambda: LlamaCppRuntime().render(GGUF, target="container", program="llama-python"),
        lambda: LlamaCppRuntime().check_request({}, [], POLICY_FREE, target="local", program="llama-python"),
        lambda: LlamaCppRuntime().arg_rules(target="container", program="llama-python"),
    ):
        with pytest.raises(PermanentStepError, match=message):
            call()
    with pytest.raises(PermanentStepError, match=r"for runtime 'vllm'; its programs are: vllm$"):
        VllmRuntime().render(LaunchParams("m", "/m"), target="container", program=PY)


def test_no_program_or_the_default_program_renders_as_before(llama_server_on_path: None) -> None:
    params = LaunchParams("tiny", "/models/tiny", context_length=2048)
    for runtime in (LlamaCppRuntime(), VllmRuntime(), SglangRuntime()):
        for target in ("container", "local"):
            default = runtime.render(params, target=target)
            assert runtime.render(params, target=target, program=None) == default
            assert runtime.render(params, target=target, program=runtime.programs[0]) == default
    assert LlamaCppRuntime().render(params, target="local").local_command[0].endswith("/llama-server")


def test_a_named_program_wins_over_what_is_installed_locally(llama_server_on_path: None) -> None:
    spec = LlamaCppRuntime().render(GGUF, target="local", program=PY)  # llama-server is on PATH
    assert spec.local_command == (sys.executable, "-m", "llama_cpp.server")
    assert (spec.image, spec.container_command, spec.ready_path) == ("", (), "/v1/models")


# ------------------------------------------------------ the plugin API helper


class _Named:
    name = "x"

    def __init__(self, programs: object = None) -> None:
        if programs is not None:
            self.programs = programs


def test_runtime_program_reads_the_shimlets_programs() -> None:
    assert runtime_program(object(), "llama.cpp") is None
    declared = _Named({"llama.cpp": PY})
    assert runtime_program(declared, "llama.cpp") == PY
    assert runtime_program(declared, "vllm") is None
    with pytest.raises(TypeError, match="programs must map runtime names to program names, not list"):
        runtime_program(_Named([PY]), "llama.cpp")
    with pytest.raises(TypeError, match=r"programs\['llama.cpp'\] must be a program name"):
        runtime_program(_Named({"llama.cpp": 1}), "llama.cpp")


# -------------------------------------------------------------- the pipeline


class PythonImageShimlet(FakeShimlet):
    """TEST DOUBLE: a container shimlet whose llama.cpp image holds llama-cpp-python (``programs``).

    Like a real container shimlet it fills in its own image, and refuses at render time, naming its
    option, when it has none.
    """

    name = "pyimage"
    launch_target = "container"

    def __init__(self, ctx: PluginContext) -> None:
        super().__init__(ctx)
        self.images: Mapping[str, str] = ctx.options.get("images", {})
        self.programs: Mapping[str, str] = ctx.options.get("programs", {"llama.cpp": PY})

    def image_for(self, launch: LaunchSpec) -> str:
        image = self.images.get(launch.runtime) or launch.image
        if not image:
            raise PermanentStepError(f"no image for {launch.runtime}: set the pyimage shimlet option"
                                     f" images.{launch.runtime}")
        return image

    def render(self, ctx: DeployContext) -> Mapping[str, Any]:
        launch = ctx.launch
        return {"image": self.image_for(launch), "command": [*launch.container_command, *launch.args]}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[OpenSourceLLMPipeline]:
    p = OpenSourceLLMPipeline(PluginContext("opensourcellm", tmp_path))
    await p.start()
    yield p
    await p.close()


def deploy_spec(model: Path, **fields: Any) -> DeploySpec:
    return DeploySpec.model_validate({"modelName": "tiny", "modelFile": str(model), **fields})


async def render(pipeline: OpenSourceLLMPipeline, shimlet: Any, spec: DeploySpec, tmp_path: Path) -> ContractContext:
    """Run model-validation then config-rendering, as the executor does; the rendering step's context."""
    state = ServiceState("svc-1")
    validation, rendering = pipeline.steps()[:2]
    assert (validation.name, rendering.name) == ("model-validation", "config-rendering")
    for step in (validation, rendering):
        ctx = ContractContext(state, spec, shimlet, tmp_path)
        await pipeline.run_step(step, ctx)
        state.outputs.update(ctx.new_outputs)
    return ctx


async def test_the_pipeline_checks_requests_against_the_shimlets_program(
    pipeline: OpenSourceLLMPipeline, tiny_model: Path, tmp_path: Path
) -> None:
    python_image = PythonImageShimlet(PluginContext("pyimage", tmp_path))
    default = FakeShimlet(PluginContext("fake", tmp_path))
    for runtime in ("llama.cpp", "auto"):
        python_args = deploy_spec(tiny_model, runtime=runtime, runtimeArgs=["--n_threads", "2"])
        server_args = deploy_spec(tiny_model, runtime=runtime, runtimeArgs=["--threads", "2"])
        pipeline.check_request(python_args, python_image)
        pipeline.check_request(server_args, default)
        with pytest.raises(ValidationFailed, match=r"--threads is not an argument .* llama\.cpp \(llama-cpp-python\)"):
            pipeline.check_request(server_args, python_image)
        with pytest.raises(ValidationFailed, match="--n_threads is not an argument"):
            pipeline.check_request(python_args, default)


async def test_the_pipeline_renders_llama_cpp_python_for_the_shimlet(
    pipeline: OpenSourceLLMPipeline, tiny_model: Path, tmp_path: Path
) -> None:
    shimlet = PythonImageShimlet(PluginContext("pyimage", tmp_path, {"images": {"llama.cpp": "local/lcp:test"}}))
    ctx = await render(pipeline, shimlet, deploy_spec(tiny_model, runtimeArgs=["--n_threads", "2"]), tmp_path)
    launch = LAUNCH.read(ctx.new_outputs)
    assert launch.container_command == ("python3", "-m", "llama_cpp.server")
    assert launch.args[:4] == ("--model", str(tiny_model), "--model_alias", "tiny")
    assert launch.args[-2:] == ("--n_threads", "2") and "--n_ctx" in launch.args
    assert (launch.image, launch.ready_path, launch.health_path) == ("", "/v1/models", "/v1/models")
    assert WORKLOAD.read(ctx.new_outputs)["image"] == "local/lcp:test"  # the shimlet's own image
    assert ctx.params["program"] == PY
    assert any(m.startswith("runtime llama.cpp (llama-cpp-python): image (the shimlet's own), args --model")
               for _, m in ctx.lines)


async def test_without_an_image_the_render_step_fails_naming_the_option(
    pipeline: OpenSourceLLMPipeline, tiny_model: Path, tmp_path: Path
) -> None:
    shimlet = PythonImageShimlet(PluginContext("pyimage", tmp_path))
    with pytest.raises(PermanentStepError, match=r"set the pyimage shimlet option images\.llama\.cpp"):
        await render(pipeline, shimlet, deploy_spec(tiny_model), tmp_path)


async def test_an_image_pinned_in_the_pipeline_options_is_used(tiny_model: Path, tmp_path: Path) -> None:
    pipeline = OpenSourceLLMPipeline(PluginContext("opensourcellm", tmp_path,
                                                   {"images": {"llama.cpp": "pinned/lcp:1"}}))
    shimlet = PythonImageShimlet(PluginContext("pyimage", tmp_path))
    ctx = await render(pipeline, shimlet, deploy_spec(tiny_model), tmp_path)
    assert LAUNCH.read(ctx.new_outputs).image == WORKLOAD.read(ctx.new_outputs)["image"] == "pinned/lcp:1"


async def test_without_programs_the_pipeline_renders_as_before(
    pipeline: OpenSourceLLMPipeline, tiny_model: Path, tmp_path: Path
) -> None:
    ctx = await render(pipeline, FakeShimlet(PluginContext("fake", tmp_path)), deploy_spec(tiny_model), tmp_path)
    launch = LAUNCH.read(ctx.new_outputs)
    params = LaunchParams("tiny", str(tiny_model), context_length=launch_ctx(launch),
                          startup_timeout=launch.startup_timeout)
    assert launch == LlamaCppRuntime().render(params, target="container")
    assert "program" not in ctx.params
    assert any(m.startswith("runtime llama.cpp: image ghcr.io/ggml-org/llama.cpp:server, args") for _, m in ctx.lines)


def launch_ctx(launch: LaunchSpec) -> int:
    return int(launch.args[launch.args.index("--ctx-size") + 1])


async def test_an_unknown_program_of_the_shimlet_is_refused_naming_it(
    pipeline: OpenSourceLLMPipeline, tiny_model: Path, tmp_path: Path
) -> None:
    shimlet = PythonImageShimlet(PluginContext("pyimage", tmp_path, {"programs": {"llama.cpp": "llamafile"}}))
    message = (r"the pyimage shimlet says its image for runtime 'llama\.cpp' runs 'llamafile', a program the shim"
               r" does not know for llama\.cpp; known: llama-server, llama-cpp-python")
    with pytest.raises(PermanentStepError, match=message):
        pipeline.check_request(deploy_spec(tiny_model), shimlet)
    with pytest.raises(PermanentStepError, match=message):
        await render(pipeline, shimlet, deploy_spec(tiny_model), tmp_path)
