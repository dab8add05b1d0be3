"""Runtimes: the command lines they render and the rule that picks one."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from modserv_shim.allowlist import RequestPolicy
from modserv_shim.errors import PermanentStepError
from modserv_shim.plugins import LaunchSpec
from modserv_shim.runtimes import (
    LaunchParams,
    LlamaCppRuntime,
    SglangRuntime,
    VllmRuntime,
    get_runtime,
    select_runtime,
)
from modserv_shim.runtimes.llamacpp import PYTHON_SERVER_ARGS, PYTHON_SERVER_REFUSED

FULL = LaunchParams(
    served_model_name="llama-3-8b",
    model_path="/models/llama-3-8b",
    accelerator_count=2,
    context_length=8192,
    dtype="bfloat16",
    gpu_memory_utilization=0.9,
    extra_args=("--enforce-eager", "--max-num-seqs", "64"),
    env={"OMP_NUM_THREADS": "8", "MY_VAR": "1"},
    policy=RequestPolicy(env_names=frozenset({"MY_VAR"})),
)
SGLANG = replace(FULL, extra_args=("--disable-radix-cache", "--max-running-requests", "64"))
GGUF = LaunchParams("tiny", "/models/tiny.gguf", context_length=2048, extra_args=("--threads", "2"))
GGUF_PYTHON = replace(GGUF, extra_args=("--n_threads", "2"))


@pytest.fixture
def no_llama_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))



# ---------------------------------------------------------------- vLLM


def test_vllm_renders_its_openai_server_command() -> None:
    spec = VllmRuntime().render(FULL, target="container")
    assert spec.image == "vllm/vllm-openai:v0.8.5"
    assert spec.container_command == ("python3", "-m", "vllm.entrypoints.openai.api_server")
    assert spec.local_command == (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
    assert list(spec.args) == [
        "--model", "/models/llama-3-8b",
        "--served-model-name", "llama-3-8b",
        "--tensor-parallel-size", "2",
        "--max-model-len", "8192",
        "--dtype", "bfloat16",
        "--gpu-memory-utilization", "0.9",
        "--host", "{host}",
        "--port", "{port}",
        "--enforce-eager", "--max-num-seqs", "64",  # the user's (allowlisted) args come last
    ]  # fmt: skip
    assert (spec.ready_path, spec.health_path) == ("/v1/models", "/health")
    assert spec.env["OMP_NUM_THREADS"] == "8" and spec.env["MY_VAR"] == "1"  # allowed: known, and by the admin
    assert spec.env["VLLM_NO_USAGE_STATS"] == "1" and spec.env["HF_HUB_OFFLINE"] == "1"
    assert spec.runtime == "vllm" and spec.served_model_name == "llama-3-8b"


def test_unset_parameters_add_no_flags_and_placeholders_are_filled() -> None:
    spec = VllmRuntime().render(LaunchParams("m", "/models/m"), target="local")
    assert spec.argv("0.0.0.0", 8000)[3:] == [
        "--model", "/models/m", "--served-model-name", "m", "--host", "0.0.0.0", "--port", "8000",
    ]  # fmt: skip


def test_a_rendered_spec_survives_the_state_file_round_trip() -> None:
    spec = VllmRuntime().render(FULL, target="container")
    assert LaunchSpec.from_dict(spec.to_dict()) == spec


# --------------------------------------------------------------- SGLang


def test_sglang_renders_launch_server() -> None:
    spec = SglangRuntime().render(SGLANG, target="container")
    assert spec.image == "lmsysorg/sglang:v0.4.6.post1-cu124"
    assert spec.container_command == ("python3", "-m", "sglang.launch_server")
    assert list(spec.args[:14]) == [
        "--model-path", "/models/llama-3-8b",
        "--served-model-name", "llama-3-8b",
        "--tp", "2",
        "--context-length", "8192",
        "--dtype", "bfloat16",
        "--mem-fraction-static", "0.9",
        "--host", "{host}",
    ]  # fmt: skip
    assert spec.args[-3:] == ("--disable-radix-cache", "--max-running-requests", "64")


# ------------------------------------------------------------ llama.cpp


def test_llama_cpp_in_a_container_is_llama_server() -> None:
    spec = LlamaCppRuntime().render(GGUF, target="container")
    assert spec.image == "ghcr.io/ggml-org/llama.cpp:server"
    assert spec.container_command == ("/app/llama-server",)
    assert list(spec.args) == [
        "--model", "/models/tiny.gguf", "--alias", "tiny", "--ctx-size", "2048",
        "--host", "{host}", "--port", "{port}", "--threads", "2",
    ]  # fmt: skip
    assert (spec.ready_path, spec.health_path) == ("/health", "/health")


def test_llama_cpp_offloads_every_layer_when_given_gpus(no_llama_server: None) -> None:
    with_gpu = LaunchParams("tiny", "/models/tiny.gguf", accelerator_count=1)
    assert "--n-gpu-layers" in LlamaCppRuntime().render(with_gpu, target="container").args
    local = LlamaCppRuntime().render(with_gpu, target="local").args
    assert local[local.index("--n_gpu_layers") + 1] == "-1"


def test_llama_cpp_locally_falls_back_to_llama_cpp_python(no_llama_server: None) -> None:
    spec = LlamaCppRuntime().render(GGUF_PYTHON, target="local")
    assert spec.local_command == (sys.executable, "-m", "llama_cpp.server")
    assert list(spec.args) == [
        "--model", "/models/tiny.gguf", "--model_alias", "tiny", "--n_ctx", "2048",
        "--host", "{host}", "--port", "{port}", "--n_threads", "2",
    ]  # fmt: skip
    # llama-cpp-python has no /health, and these flags must never reach the llama-server image.
    assert (spec.ready_path, spec.health_path) == ("/v1/models", "/v1/models")
    assert (spec.image, spec.container_command) == ("", ())


def test_llama_cpp_locally_prefers_llama_server_on_path(llama_server_on_path: Path) -> None:
    spec = LlamaCppRuntime().render(GGUF, target="local")
    assert spec.local_command == (str(llama_server_on_path),)
    assert "--alias" in spec.args and spec.ready_path == "/health"
    assert spec.image == "ghcr.io/ggml-org/llama.cpp:server"


def test_llama_cpp_python_accepts_every_flag_we_render(no_llama_server: None) -> None:
    params = LaunchParams("t", "/m.gguf", accelerator_count=1, context_length=64)
    spec = LlamaCppRuntime().render(params, target="local")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    usage = subprocess.run(
        [*spec.local_command, "--help"], capture_output=True, text=True, timeout=120, env=env, check=True
    ).stdout
    flags = [a for a in spec.args if a.startswith("--")]
    assert flags and all(f"{flag} " in usage for flag in flags), [f for f in flags if f"{f} " not in usage]
    # the allowlist and the refusals name flags this server really has (a renamed flag would make a rule dead)
    listed = [*PYTHON_SERVER_ARGS, *PYTHON_SERVER_REFUSED]
    assert all(f"{flag} " in usage for flag in listed), [f for f in listed if f"{f} " not in usage]


# ------------------------------------------------------------- selection


def test_auto_picks_llama_cpp_for_gguf_and_vllm_for_hf() -> None:
    gguf = select_runtime("auto", "gguf", gpu_available=False, vllm_installed=False)
    assert isinstance(gguf, LlamaCppRuntime)
    assert isinstance(select_runtime("auto", "hf", gpu_available=True, vllm_installed=False), VllmRuntime)
    assert isinstance(select_runtime("auto", "hf", gpu_available=False, vllm_installed=True), VllmRuntime)
    assert isinstance(select_runtime("sglang", "hf", gpu_available=True, vllm_installed=False), SglangRuntime)


def test_hf_on_cpu_without_vllm_says_what_to_do() -> None:
    for requested in ("auto", "vllm"):
        with pytest.raises(PermanentStepError) as err:
            select_runtime(requested, "hf", gpu_available=False, vllm_installed=False)
        message = str(err.value)
        assert "no GPU" in message and "vLLM is not installed" in message
        assert "convert_hf_to_gguf.py" in message and "deploy the .gguf" in message
        assert "k8s shimlet with a GPU" in message and "acceleratorType" in message
    with pytest.raises(PermanentStepError, match="SGLang serves on an NVIDIA GPU"):
        select_runtime("sglang", "hf", gpu_available=False, vllm_installed=True)


def test_a_gguf_given_to_a_gpu_runtime_is_refused_with_the_fix() -> None:
    for requested in ("vllm", "sglang"):
        with pytest.raises(PermanentStepError, match=r'is a GGUF file.*runtime "llama.cpp"'):
            select_runtime(requested, "gguf", gpu_available=True, vllm_installed=True, model_path="/m/x.gguf")
    with pytest.raises(PermanentStepError, match=r"llama\.cpp serves GGUF files only\. Convert it"):
        select_runtime("llama.cpp", "hf", gpu_available=True, vllm_installed=True)


def test_unknown_runtime_and_image_override() -> None:
    known = r"choose one of: auto, llama\.cpp, vllm, sglang"
    with pytest.raises(PermanentStepError, match=rf"unknown runtime 'tgi'; {known}"):
        select_runtime("tgi", "hf", gpu_available=True, vllm_installed=False)
    pinned = select_runtime("auto", "hf", gpu_available=True, vllm_installed=False, images={"vllm": "my/vllm:1"})
    assert pinned.render(FULL, target="container").image == "my/vllm:1"
    assert get_runtime("sglang").image == "lmsysorg/sglang:v0.4.6.post1-cu124"


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        LaunchParams("m", "/m", accelerator_count=-1)
    with pytest.raises(ValueError):
        LaunchParams("m", "/m", gpu_memory_utilization=1.5)
    with pytest.raises(ValueError):
        VllmRuntime().render(FULL, target="docker")  # type: ignore[arg-type]
