"""Accelerator catalog, host memory, the memory estimate and the fit check."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modserv_shim.errors import PermanentStepError
from modserv_shim.modelinfo import (
    DEFAULT_CATALOG,
    HostMemory,
    ModelDoesNotFit,
    ModelFacts,
    UnknownAccelerator,
    check_fit,
    default_context_length,
    estimate_memory,
    inspect_model,
    kv_cache_bytes,
    lookup_accelerator,
    read_host_memory,
)
from modserv_shim.modelinfo.facts import GIB
from modserv_shim.modelinfo.memory import (
    ACTIVATION_FRACTION,
    CPU_FIXED_OVERHEAD,
    GPU_FIXED_OVERHEAD,
    KV_CONTEXT_CAP,
)
from modserv_shim.spec import ResourceRequirements
from tests.helpers.hf_fixtures import write_llama3_70b_like
from tests.helpers.tiny_gguf import write_tiny_llama_gguf

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = Path(os.environ.get("MODSERV_TEST_SMOLLM2", REPO / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
PLENTY = HostMemory(total_bytes=64 * GIB, available_bytes=32 * GIB)


def gpus(name: str, count: int = 1) -> ResourceRequirements:
    return ResourceRequirements(acceleratorType=name, acceleratorCount=count)


@pytest.fixture(scope="module")
def llama70b(tmp_path_factory: pytest.TempPathFactory) -> ModelFacts:
    return inspect_model(write_llama3_70b_like(tmp_path_factory.mktemp("hf") / "llama-3-70b"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ModelFacts:
    return inspect_model(write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf"))


# ---------------------------------------------------------------- catalog


@pytest.mark.parametrize("spelling", ["NVIDIA H20", "nvidia-h20", "H20", "NVIDIA-H20", "  nvidia   H20 ", "h20"])
def test_accelerator_names_normalise(spelling: str) -> None:
    acc = lookup_accelerator(spelling)
    assert acc.name == "NVIDIA H20"
    assert acc.memory_gib == 96


@pytest.mark.parametrize(
    ("label", "name", "gib"),
    [
        ("NVIDIA-H100-80GB-HBM3", "NVIDIA H100", 80),
        ("NVIDIA-H100-PCIe", "NVIDIA H100", 80),
        ("NVIDIA-H200", "NVIDIA H200", 141),
        ("NVIDIA-A100-SXM4-80GB", "NVIDIA A100-80GB", 80),
        ("NVIDIA-A100-PCIE-40GB", "NVIDIA A100-40GB", 40),
        ("A100", "NVIDIA A100-40GB", 40),
        ("NVIDIA L40S", "NVIDIA L40S", 48),
        ("NVIDIA-L4", "NVIDIA L4", 24),
        ("NVIDIA A10", "NVIDIA A10", 24),
        ("Tesla-T4", "NVIDIA T4", 16),
        ("NVIDIA-GeForce-RTX-4090", "NVIDIA GeForce RTX 4090", 24),
        ("RTX 4090", "NVIDIA GeForce RTX 4090", 24),
    ],
)
def test_gpu_feature_discovery_labels(label: str, name: str, gib: float) -> None:
    acc = lookup_accelerator(label)
    assert (acc.name, acc.memory_gib) == (name, gib)


def test_unknown_accelerator_lists_known_names() -> None:
    with pytest.raises(UnknownAccelerator) as err:
        lookup_accelerator("NVIDIA B300")
    msg = str(err.value)
    assert msg.startswith("unknown acceleratorType 'NVIDIA B300': cannot tell how much memory it has. Known types:")
    for name in ("NVIDIA H20", "NVIDIA L4", "NVIDIA A100-80GB"):
        assert name in msg
    assert isinstance(err.value, PermanentStepError)


def test_catalog_can_be_extended() -> None:
    catalog = DEFAULT_CATALOG.with_extra({"NVIDIA B300": 288, "NVIDIA L4": 23})
    assert catalog.lookup("nvidia-b300").memory_gib == 288
    assert catalog.lookup("L4").memory_gib == 23
    assert DEFAULT_CATALOG.lookup("L4").memory_gib == 24


def test_unknown_accelerator_in_fit_check(tiny: ModelFacts) -> None:
    with pytest.raises(UnknownAccelerator):
        check_fit(tiny, gpus("Imaginary 9000"))


# ------------------------------------------------------------ host memory


def test_host_memory_from_proc_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n")
    host = read_host_memory(meminfo, cgroup_dir=tmp_path / "no-cgroup")
    assert host == HostMemory(total_bytes=16000000 * 1024, available_bytes=8000000 * 1024)


def test_host_memory_respects_a_cgroup_limit(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n")
    (tmp_path / "memory.max").write_text(f"{4 * GIB}\n")
    (tmp_path / "memory.current").write_text(f"{1 * GIB}\n")
    host = read_host_memory(meminfo, cgroup_dir=tmp_path)
    assert host == HostMemory(total_bytes=4 * GIB, available_bytes=3 * GIB)
    (tmp_path / "memory.max").write_text("max\n")
    assert read_host_memory(meminfo, cgroup_dir=tmp_path).available_bytes == 8000000 * 1024


def test_this_machine_has_memory() -> None:
    host = read_host_memory()
    assert 0 < host.available_bytes <= host.total_bytes


# --------------------------------------------------------------- estimate


def test_estimate_formula(llama70b: ModelFacts) -> None:
    est = estimate_memory(llama70b, 8192, accelerator_count=2)
    assert est.kv_cache_bytes == 2 * 80 * 8 * 128 * 8192 * 2  # 2.5 GiB
    assert est.kv_cache_bytes == kv_cache_bytes(llama70b, 8192)
    assert est.weights_bytes == llama70b.weights_bytes
    assert est.overhead_bytes == int(llama70b.weights_bytes * ACTIVATION_FRACTION) + 2 * GPU_FIXED_OVERHEAD
    assert est.per_replica_bytes == est.weights_bytes + est.kv_cache_bytes + est.overhead_bytes
    assert est.per_device_bytes * 2 >= est.per_replica_bytes
    assert json.loads(json.dumps(est.to_dict()))["per_replica_bytes"] == est.per_replica_bytes


def test_cpu_estimate_has_one_fixed_overhead(tiny: ModelFacts) -> None:
    est = estimate_memory(tiny, 256, replicas=3)
    assert est.devices == 1 and not est.on_gpu
    assert est.overhead_bytes == CPU_FIXED_OVERHEAD + int(tiny.weights_bytes * ACTIVATION_FRACTION)
    assert est.total_bytes == 3 * est.per_replica_bytes


def test_default_context_length(llama70b: ModelFacts, tiny: ModelFacts) -> None:
    long = dataclasses.replace(llama70b, context_length=131072)
    assert default_context_length(long) == KV_CONTEXT_CAP
    assert default_context_length(tiny) == min(tiny.context_length, KV_CONTEXT_CAP)
    assert default_context_length(long, 32768) == 32768
    assert estimate_memory(long).context_length == KV_CONTEXT_CAP


# -------------------------------------------------------------- fit: GPUs


def _suggested_count(message: str) -> int:
    m = re.search(r"use acceleratorCount=(\d+) or more", message)
    assert m, message
    return int(m.group(1))


def test_70b_on_one_l4_is_rejected_with_numbers_and_suggestions(llama70b: ModelFacts) -> None:
    result = check_fit(llama70b, gpus("NVIDIA L4"))
    assert not result.fits
    msg = result.message
    assert re.match(
        r"the model needs 1\d\d\.\d GiB \(weights 131\.4 GiB \+ KV cache 2\.5 GiB for 8192 tokens \+ overhead"
        r" \d+\.\d GiB\) but 1 x NVIDIA L4 offers 21\.6 GiB usable: ",
        msg,
    ), msg
    assert "a larger GPU (" in msg
    assert "a 4-bit quantization" in msg
    # the suggested count really fits and splits the 64 heads evenly (tensor parallelism needs
    # that); the next smaller count that splits them does not fit
    n = _suggested_count(msg)
    assert 64 % n == 0
    assert check_fit(llama70b, gpus("NVIDIA L4", n)).fits
    smaller = max(k for k in range(1, n) if 64 % k == 0)
    assert not check_fit(llama70b, gpus("NVIDIA L4", smaller)).fits
    with pytest.raises(ModelDoesNotFit) as err:
        result.raise_if_not_fits()
    assert str(err.value) == msg
    assert isinstance(err.value, PermanentStepError)


def test_larger_gpu_suggestion_is_true(llama70b: ModelFacts) -> None:
    result = check_fit(llama70b, gpus("NVIDIA L4"))
    m = re.search(r"a larger GPU \((?:(\d+) x )?([^)]+)\)", result.message)
    assert m, result.message
    count = int(m.group(1) or 1)
    assert check_fit(llama70b, gpus(m.group(2), count)).fits


def test_70b_on_two_h200_fits(llama70b: ModelFacts) -> None:
    result = check_fit(llama70b, gpus("NVIDIA H200", 2))
    assert result.fits
    assert result.suggestions == ()
    assert result.message.endswith("and 2 x NVIDIA H200 offers 253.8 GiB usable: it fits")
    assert result.estimate.per_replica_bytes <= result.usable_bytes


def test_70b_on_one_h200_is_rejected(llama70b: ModelFacts) -> None:
    result = check_fit(llama70b, gpus("NVIDIA H200", 1))
    assert not result.fits
    assert "use acceleratorCount=2 or more" in result.message
    assert "larger GPU" not in result.message  # nothing in the catalog is bigger


def test_long_context_suggests_a_shorter_one(llama70b: ModelFacts) -> None:
    result = check_fit(llama70b, gpus("NVIDIA H200", 2), context_length=400_000)
    assert not result.fits
    m = re.search(r"contextLength=(\d+) or less", result.message)
    assert m, result.message
    assert check_fit(llama70b, gpus("NVIDIA H200", 2), context_length=int(m.group(1))).fits
    assert any("longer than the model's maximum of 8192" in w for w in result.warnings)


def test_tensor_parallel_warning(llama70b: ModelFacts) -> None:
    result = check_fit(llama70b, gpus("NVIDIA H100", 3))
    assert any("does not divide the model's 64 attention heads" in w for w in result.warnings)


def test_fit_result_is_json(llama70b: ModelFacts) -> None:
    data = json.loads(json.dumps(check_fit(llama70b, gpus("NVIDIA L4")).to_dict()))
    assert data["fits"] is False
    assert data["accelerator"] == "NVIDIA L4"
    assert data["suggestions"]


# --------------------------------------------------------------- fit: CPU


def test_tiny_model_fits_on_cpu(tiny: ModelFacts) -> None:
    result = check_fit(tiny, ResourceRequirements(), host_memory=PLENTY)
    assert result.fits
    assert result.accelerator is None
    assert result.message.endswith("and this host has 32.0 GiB available: it fits")


@pytest.mark.skipif(not SMOLLM2.is_file(), reason=f"{SMOLLM2} not extracted")
def test_smollm2_fits_on_cpu() -> None:
    facts = inspect_model(SMOLLM2)
    assert check_fit(facts, ResourceRequirements(), host_memory=PLENTY).fits
    assert check_fit(facts, ResourceRequirements(memory="2Gi")).fits
    assert check_fit(facts, ResourceRequirements()).fits  # this machine, real /proc/meminfo


def test_cpu_memory_limit_too_small(llama70b: ModelFacts) -> None:
    result = check_fit(llama70b, ResourceRequirements(memory="16Gi"))
    assert not result.fits
    assert "but the memory limit of 16Gi offers 16.0 GiB: raise resourceRequirements.memory to 1" in result.message
    assert "a 4-bit quantization" in result.message


def test_cpu_replicas_share_the_host(tiny: ModelFacts) -> None:
    one = estimate_memory(tiny).per_replica_bytes
    host = HostMemory(total_bytes=4 * one, available_bytes=int(2.5 * one))
    assert check_fit(tiny, ResourceRequirements(), host_memory=host, replicas=2).fits
    result = check_fit(tiny, ResourceRequirements(), host_memory=host, replicas=3)
    assert not result.fits
    assert "for 3 replicas" in result.message
    assert "more on this host" in result.message


# ---------------------------------------------------------- properties

facts_strategy = st.builds(
    ModelFacts,
    format=st.just("hf"),
    path=st.just("/m"),
    architecture=st.just("llama"),
    name=st.just("m"),
    parameter_count=st.integers(10**6, 2 * 10**11),
    weights_bytes=st.integers(10**6, 4 * 10**11),
    context_length=st.integers(512, 131072),
    layers=st.integers(1, 128),
    hidden_size=st.just(4096),
    heads=st.sampled_from([8, 16, 32, 64]),
    kv_heads=st.sampled_from([1, 2, 4, 8]),
    head_dim=st.sampled_from([64, 128]),
    dtype=st.just("bfloat16"),
)


@settings(max_examples=60, deadline=None)
@given(facts=facts_strategy, ctx=st.integers(128, 200_000), extra=st.integers(1, 100_000), n=st.integers(1, 15))
def test_estimate_is_monotonic(facts: ModelFacts, ctx: int, extra: int, n: int) -> None:
    base = estimate_memory(facts, ctx, accelerator_count=n)
    assert estimate_memory(facts, ctx + extra, accelerator_count=n).per_replica_bytes > base.per_replica_bytes
    heavier = dataclasses.replace(facts, weights_bytes=facts.weights_bytes + extra)
    assert estimate_memory(heavier, ctx, accelerator_count=n).per_replica_bytes > base.per_replica_bytes
    assert estimate_memory(facts, ctx, accelerator_count=n + 1).per_device_bytes <= base.per_device_bytes


@settings(max_examples=40, deadline=None)
@given(facts=facts_strategy, gpu=st.sampled_from(["NVIDIA L4", "NVIDIA A100-40GB", "NVIDIA H100", "NVIDIA H20"]))
def test_count_suggestions_are_true(facts: ModelFacts, gpu: str) -> None:
    result = check_fit(facts, gpus(gpu))
    if result.fits:
        return
    m = re.search(r"use acceleratorCount=(\d+) or more", result.message)
    if m:
        assert check_fit(facts, gpus(gpu, int(m.group(1)))).fits
