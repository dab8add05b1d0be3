"""The ``quant`` pipeline on a Hugging Face folder: llama.cpp's real converter, then its real quantizer.

A tiny Llama is built here (random weights, hidden 256, FFN 512, a SentencePiece tokenizer trained
on text the helper writes: :mod:`tests.helpers.tiny_hf_llama`), deployed through the REST API on the
local shimlet as Q8_0 and as Q4_K_M: ``convert_hf_to_gguf.py`` (fetched by
``scripts/get-llama-convert.py``) makes the F16 GGUF, llama.cpp quantizes it, llama.cpp's server
loads it and answers.  A second deploy finds both files in the cache.  Then the step on its own: a
cancelled conversion, a missing converter, a Python without torch, a full disk, a dry run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modserv_shim.errors import PermanentStepError, StepError
from modserv_shim.modelinfo import inspect_model
from modserv_shim.pipelines.quant import QuantPipeline
from modserv_shim.pipelines.quant.convert import (
    SCRIPT_NAME,
    ConverterMissing,
    default_convert_dir,
    folder_digest,
    source_files,
)
from modserv_shim.plugins import PluginContext
from modserv_shim.spec import DeploySpec
from modserv_shim.testing.fake_shimlet import ProbedFakeShimlet
from modserv_shim.testing.pipeline_contract import ContractContext, ServiceState
from tests.conftest import Live
from tests.helpers.local_shim import alive, replica_pids
from tests.helpers.quant import leftovers, messages, quant_body, quant_settings, small_tmpfs

CONVERTER = default_convert_dir() / SCRIPT_NAME

pytestmark = pytest.mark.skipif(
    not CONVERTER.is_file() and not os.environ.get("CI"),
    reason="run `make setup` (scripts/get-llama-convert.py) and pip install '.[convert]'")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.tiny_hf_llama import write_tiny_hf_llama

    return write_tiny_hf_llama(tmp_path_factory.mktemp("hf") / "tiny-llama")


def pipeline(tmp_path: Path, **options: Any) -> QuantPipeline:
    return QuantPipeline(PluginContext("quant", tmp_path, {"cache_dir": str(tmp_path / "qcache"), **options}))


class LocalFakeShimlet(ProbedFakeShimlet):
    """The fake shimlet, running its workloads on this machine: the quant pipeline quantizes into its own cache."""

    launch_target = "local"


def shimlet_of(tmp_path: Path) -> LocalFakeShimlet:
    return LocalFakeShimlet(PluginContext("fake", tmp_path))


async def run_steps(p: QuantPipeline, spec: DeploySpec, tmp_path: Path, upto: str) -> ServiceState:
    """The pipeline's steps up to ``upto``, on the local fake shimlet; the state after it."""
    state = ServiceState("svc-1")
    for s in p.steps():
        ctx = ContractContext(state, spec, shimlet_of(tmp_path), tmp_path)
        await p.run_step(s, ctx)
        state.outputs.update(ctx.new_outputs)
        if s.name == upto:
            return state
    raise AssertionError(upto)


def spec_of(model: Path, kind: str = "Q8_0") -> DeploySpec:
    return DeploySpec.model_validate(quant_body("tiny-hf", model, {"type": kind}))


async def complete(endpoint: str, model: str) -> str:
    async with httpx.AsyncClient(timeout=60) as c:
        r = await c.post(f"{endpoint}/v1/completions", json={"model": model, "prompt": "The capital of France is",
                                                              "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


def converters() -> list[int]:
    """Converter child processes of this test process."""
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me and SCRIPT_NAME.encode() in cmd:
            out.append(int(d.name))
    return out


# --------------------------------------------------------------------- end to end (REST)


async def test_a_hf_folder_is_converted_quantized_served_and_cached(start_server, tiny_hf: Path,  # type: ignore[no-untyped-def]
                                                                    tmp_path: Path) -> None:
    cache = tmp_path / "qcache"
    live: Live = await start_server(quant_settings(tmp_path, cache))

    async def deploy(name: str, kind: str) -> tuple[str, dict[str, Any]]:
        sid = (await live.call("POST", "/api/v1/modserv/deploy", expect=202,
                               json=quant_body(name, tiny_hf, {"type": kind})))["data"]["serviceId"]
        svc = await live.wait_state(sid, "running", "failed", timeout=240)
        assert svc["state"] == "running", svc["reason"]
        return sid, svc

    sid, svc = await deploy("tiny-q8", "Q8_0")
    text = await messages(live, sid)
    assert any(m.startswith(f"converting {tiny_hf} to F16 with llama.cpp's convert_hf_to_gguf.py") for m in text)
    assert "convert_hf_to_gguf: Model architecture: LlamaForCausalLM" in text, text
    assert any(m.startswith("converted 21 tensors to F16 in") for m in text), text
    [f16] = sorted(cache.glob("hf-*.F16.gguf"))
    f16_facts = inspect_model(f16)
    assert f16_facts.dtype == "F16" and f16_facts.architecture == "llama"
    from tests.helpers.tiny_hf_llama import parameter_count

    assert f16_facts.parameter_count == parameter_count(tiny_hf)
    assert any(m.startswith("quantized 21/21 tensors to Q8_0") for m in text), text
    [q8] = sorted(cache.glob("*.Q8_0.gguf"))
    assert inspect_model(q8).dtype == "Q8_0" and leftovers(cache) == []
    assert any(m.startswith("runtime llama.cpp (local):") and str(q8) in m for m in text), text
    rec = await live.server.manager.get(sid)
    assert rec.outputs["model_file"] == str(q8) and rec.outputs["quantization"]["type"] == "Q8_0"
    assert await complete(svc["endpoint"], "tiny-q8") is not None  # random weights: any text
    pids = await replica_pids(live, sid)
    await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)

    # Q4_K_M: the conversion is a cache hit, the quantization is new (every row is a multiple of 256)
    sid, svc = await deploy("tiny-q4", "q4_k_m")
    text = await messages(live, sid)
    assert any(m.startswith(f"cache hit: {f16} (F16") and "nothing to convert" in m for m in text), text
    assert not any(m.startswith(("converting", "converted", "hashing")) for m in text), text
    [q4] = sorted(cache.glob("*.Q4_K_M.gguf"))
    assert inspect_model(q4).dtype == "Q4_K_M"
    assert not any("fallback" in m for m in text), text
    assert await complete(svc["endpoint"], "tiny-q4") is not None
    pids += await replica_pids(live, sid)
    await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)

    # the same folder and type again: both files from the cache, no work
    mtimes = {p: p.stat().st_mtime_ns for p in (f16, q8)}
    sid, svc = await deploy("tiny-q8-again", "Q8_0")
    text = await messages(live, sid)
    assert any(m.startswith(f"cache hit: {f16}") for m in text), text
    assert any(m.startswith(f"cache hit: {q8} (Q8_0") for m in text), text
    assert not any(m.startswith(("converting", "converted", "quantizing", "quantized", "hashing")) for m in text)
    assert {p: p.stat().st_mtime_ns for p in (f16, q8)} == mtimes
    pids += await replica_pids(live, sid)
    await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)
    assert not any(alive(p) for p in pids)


# ----------------------------------------------------------------- the step on its own


async def test_a_cancelled_conversion_leaves_no_partial_file_and_the_next_run_completes(
        tiny_hf: Path, tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    spec = spec_of(tiny_hf)
    state = await run_steps(p, spec, tmp_path, "model-validation")
    shimlet = shimlet_of(tmp_path)
    step = next(s for s in p.steps() if s.name == "model-quantization")
    task = asyncio.create_task(p.run_step(step, ContractContext(state, spec, shimlet, tmp_path)))
    pid = None
    for _ in range(3000):  # cancel once the converter runs
        if found := converters():
            [pid] = found
            break
        await asyncio.sleep(0.01)
    assert pid is not None, "the converter was not seen running"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cache = tmp_path / "qcache"
    assert not alive(pid) and converters() == []
    assert leftovers(cache) == [] and not list(cache.glob("*.gguf"))

    # a partial file a crashed shim left behind is removed, and the next attempt completes
    [lock] = cache.glob("hf-*.F16.lock")
    stale = cache / lock.name.replace(".lock", ".gguf.partial")
    stale.write_bytes(b"half a file")
    ctx = ContractContext(state, spec, shimlet, tmp_path)
    await p.run_step(step, ctx)
    lines = [m for _, m in ctx.lines]
    assert f"removing {stale.name}, left by an attempt that did not finish" in lines
    assert ctx.new_outputs["model"]["dtype"] == "Q8_0" and leftovers(cache) == []
    assert (cache / stale.name.removesuffix(".partial")).is_file()
    [(first, _), *_] = ctx.timeouts  # the timeout counts the folder's weights and the F16 file
    assert first > 120


async def test_a_converter_killed_from_outside_fails_the_attempt_without_a_partial_file(
        tiny_hf: Path, tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    spec = spec_of(tiny_hf)
    state = await run_steps(p, spec, tmp_path, "model-validation")
    step = next(s for s in p.steps() if s.name == "model-quantization")
    task = asyncio.create_task(p.run_step(step, ContractContext(state, spec, shimlet_of(tmp_path), tmp_path)))
    for _ in range(3000):
        if found := converters():
            os.kill(found[0], signal.SIGKILL)
            break
        await asyncio.sleep(0.01)
    with pytest.raises(StepError, match="the converter was killed by signal 9 after"):
        await task
    cache = tmp_path / "qcache"
    assert leftovers(cache) == [] and not list(cache.glob("*.gguf")) and converters() == []


async def test_a_model_the_converter_does_not_know_fails_with_its_reason(tiny_hf: Path, tmp_path: Path) -> None:
    folder = tmp_path / "foo"
    shutil.copytree(tiny_hf, folder)
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"LlamaForCausalLM"', '"FooForCausalLM"'))
    with pytest.raises(PermanentStepError) as err:
        await run_steps(pipeline(tmp_path), spec_of(folder), tmp_path, "model-quantization")
    assert str(err.value) == (f"llama.cpp's {SCRIPT_NAME} could not convert {folder}:"
                              " ERROR:hf-to-gguf:Model FooForCausalLM is not supported")
    assert not isinstance(err.value, ConverterMissing) and leftovers(tmp_path / "qcache") == []


def test_the_converter_dies_with_the_shim(tmp_path: Path) -> None:
    """BOOT sets PR_SET_PDEATHSIG: a shim killed with SIGKILL takes the converter with it."""
    script = tmp_path / "sleeper.py"
    script.write_text("import time\ntime.sleep(60)\n")
    shim = ("import os, subprocess, sys\n"
            "from modserv_shim.pipelines.quant.convert import BOOT\n"
            "child = subprocess.Popen([sys.executable, '-c', BOOT, str(os.getpid()), sys.argv[1]])\n"
            "print(child.pid, flush=True)\n"
            "child.wait()\n")
    proc = subprocess.Popen([sys.executable, "-c", shim, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and str(script).encode() not in Path(f"/proc/{child}/cmdline").read_bytes():
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not alive(child), "the converter outlived the shim"
    finally:
        proc.kill()
        proc.wait()


async def test_a_missing_converter_is_a_clear_error(tiny_hf: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / SCRIPT_NAME
    with pytest.raises(ConverterMissing) as err:
        await run_steps(pipeline(tmp_path, convert_script=str(missing)), spec_of(tiny_hf), tmp_path,
                        "model-quantization")
    msg = str(err.value)
    assert f"llama.cpp's {SCRIPT_NAME}, which is not at {missing}" in msg
    assert "python scripts/get-llama-convert.py" in msg and "pip install 'modserv-shim[convert]'" in msg
    assert isinstance(err.value, PermanentStepError)
    assert not (tmp_path / "qcache").exists()  # checked before any work


async def test_a_python_without_torch_is_a_clear_error(tiny_hf: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare-venv"
    await asyncio.to_thread(venv.create, bare, with_pip=False)  # the same Python, none of the venv's packages
    python = str(bare / "bin" / "python")
    with pytest.raises(ConverterMissing) as err:
        await run_steps(pipeline(tmp_path, convert_python=python), spec_of(tiny_hf), tmp_path, "model-quantization")
    msg = str(err.value)
    everything = "numpy, protobuf, pyyaml, safetensors, sentencepiece, torch, tqdm, transformers"
    assert f"converting a Hugging Face folder to GGUF needs {everything}, which {python} does not have" in msg
    assert "pip install 'modserv-shim[convert]'" in msg
    with pytest.raises(ConverterMissing, match="cannot run /no/such/python"):
        await run_steps(pipeline(tmp_path, convert_python="/no/such/python"), spec_of(tiny_hf), tmp_path,
                        "model-quantization")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB file system (tmpfs; needs the right to mount): the F16 file needs about 35 MiB."""
    with small_tmpfs(tmp_path / "small", "2m") as small:
        yield small


async def test_too_little_disk_for_the_converted_model_is_a_clear_error(tiny_hf: Path, tiny_disk: Path,
                                                                        tmp_path: Path) -> None:
    p = pipeline(tmp_path, cache_dir=str(tiny_disk))
    with pytest.raises(PermanentStepError, match=r"not enough disk space for the converted model in .*small: F16"
                                                 r" needs about \d+\.\d MiB, [12]\.\d MiB is free"):
        await run_steps(p, spec_of(tiny_hf), tmp_path, "model-quantization")
    assert not any(name.endswith((".gguf", ".partial")) for name in os.listdir(tiny_disk))


async def test_a_dry_run_says_what_it_would_convert(tiny_hf: Path, tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    spec = spec_of(tiny_hf, "Q4_K_M")
    state = await run_steps(p, spec, tmp_path, "model-validation")
    step = next(s for s in p.steps() if s.name == "model-quantization")
    ctx = ContractContext(state, spec, shimlet_of(tmp_path), tmp_path, dry_run=True)
    await p.run_step(step, ctx)
    [line] = [m for _, m in ctx.lines if m.startswith("dry run:")]
    assert f"would convert {tiny_hf} to F16 as " in line and "then quantize it to Q4_K_M" in line
    assert ctx.new_outputs["model"]["dtype"] == "Q4_K_M" and ctx.new_outputs["quantization"]["type"] == "Q4_K_M"
    assert converters() == [] and not list((tmp_path / "qcache").glob("*.gguf*"))


async def test_the_name_follows_the_folders_content(tiny_hf: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(tiny_hf, folder)
    (folder / ".hidden").write_text("not read by the converter")
    (folder / "old.gguf").write_bytes(b"GGUF")
    cache = tmp_path / "qcache"
    ctx = ContractContext(ServiceState("s"), spec_of(folder), shimlet_of(tmp_path), tmp_path)

    async def digest(version: str = "llama-cpp-python 0.3.36") -> str:
        return await folder_digest(ctx, folder, source_files(folder), cache, version)

    assert [f.name for f in source_files(folder)] == sorted(os.listdir(tiny_hf))
    first = await digest()
    assert any(m.startswith(f"hashing the files of {folder}") for _, m in ctx.lines)
    ctx.lines.clear()
    assert await digest() == first and ctx.lines == []  # remembered: nothing read again
    assert await digest("llama-cpp-python 0.3.37") != first  # another converter: another file
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"rope_theta": 10000.0', '"rope_theta": 20000.0'))
    assert await digest() != first
    assert list((cache / "sources").glob("*.json"))  # the memo lives in the cache


async def test_a_dry_run_on_docker_names_the_file_as_the_container_sees_it(tiny_hf: Path, tmp_path: Path) -> None:
    """On the docker shimlet the converted file goes into the bound folder; the dry run records it as
    ``/models/.modserv-quant/...`` (the container's path), not the shim's host path."""
    from modserv_shim.shimlets.docker import DockerShimlet

    models = tmp_path / "models"
    shutil.copytree(tiny_hf, models / "tiny-llama")
    p = pipeline(tmp_path)
    state = await run_steps(p, spec_of(models / "tiny-llama", "Q4_K_M"), tmp_path, "model-validation")
    docker = DockerShimlet(PluginContext("docker", tmp_path, {  # not started: the step needs no Engine
        "host": "unix:///var/run/docker.sock", "model_volume": {"source": str(models), "target": "/models"}}))
    spec = DeploySpec.model_validate(quant_body("tiny-hf", Path("/models/tiny-llama"), {"type": "Q4_K_M"}))
    step = next(s for s in p.steps() if s.name == "model-quantization")
    ctx = ContractContext(state, spec, docker, tmp_path, dry_run=True)
    await p.run_step(step, ctx)
    served = ctx.new_outputs["model_file"]
    assert served.startswith("/models/.modserv-quant/hf-") and served.endswith(".F16.gguf"), served
    assert ctx.new_outputs["quantization"]["source"] == "/models/tiny-llama"
    assert not list(models.rglob("*.gguf*"))  # a dry run converts nothing
