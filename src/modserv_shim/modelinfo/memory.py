"""Will the model fit?  A deliberately simple, documented memory estimate.

The estimate for one replica is::

    weights      = bytes of the weights as stored (GGUF tensor data / safetensors sizes)
    kv_cache     = 2 (K and V) * layers * kv_heads * head_dim * context * bytes_per_kv_element
    activations  = ACTIVATION_FRACTION * weights
    fixed        = per device: GPU_FIXED_OVERHEAD (CUDA context, NCCL, CUDA graphs),
                   or once per CPU replica: CPU_FIXED_OVERHEAD (interpreter, server, buffers)
    overhead     = activations + fixed * devices
    needed       = weights + kv_cache + overhead

On GPUs, tensor parallelism splits weights, KV cache and activations evenly, so
one device needs ``(weights + kv_cache + activations) / devices + fixed`` and it
fits when that is at most ``device memory * gpu_memory_utilization`` (0.9, as
vLLM).  On CPU the replica fits when ``needed`` is at most the request's memory
limit, or, without a limit, the host's available memory (shared by all local
replicas).

The context the KV cache is sized for is the request's ``contextLength``, or
the model's maximum capped at :data:`KV_CONTEXT_CAP` tokens
(:func:`default_context_length`).  The config-rendering step should serve with
the same number (``--max-model-len`` / ``--n_ctx``), so the check and the
server agree.  docs/memory-estimate.md has worked examples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from modserv_shim.errors import PermanentStepError
from modserv_shim.modelinfo.accelerators import (
    DEFAULT_CATALOG,
    Accelerator,
    AcceleratorCatalog,
    HostMemory,
    read_host_memory,
)
from modserv_shim.modelinfo.facts import GIB, ModelFacts, gib
from modserv_shim.spec import ResourceRequirements

GPU_FIXED_OVERHEAD = GIB  # per device
CPU_FIXED_OVERHEAD = GIB // 2  # per CPU replica
ACTIVATION_FRACTION = 0.05
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
KV_CONTEXT_CAP = 8192
MAX_ACCELERATORS = 16  # what ResourceRequirements.acceleratorCount allows
FOUR_BIT_BITS_PER_WEIGHT = 4.85  # Q4_K_M / AWQ-int4 average, scales included
MIN_SUGGESTED_CONTEXT = 512


def default_context_length(facts: ModelFacts, requested: int | None = None) -> int:
    """Tokens the KV cache is sized for: ``requested``, else ``min(model max, 8192)``.

    Why a cap: many models advertise 128K tokens, and sizing for that by
    default would reject deployments that are fine for ordinary chat use.
    Ask for more with ``contextLength``.
    """
    if requested:
        return requested
    return max(1, min(facts.context_length, KV_CONTEXT_CAP))


def kv_cache_bytes(facts: ModelFacts, context_length: int) -> int:
    """Bytes of K and V for ``context_length`` tokens over all layers."""
    per_token = 2 * facts.layers * facts.kv_heads * facts.head_dim * facts.bytes_per_kv_element
    return per_token * context_length


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one replica needs, split the way the message explains it."""

    context_length: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    fixed_bytes_per_device: int
    devices: int  # accelerators per replica; 1 on CPU
    replicas: int
    on_gpu: bool

    @property
    def overhead_bytes(self) -> int:
        return self.activation_bytes + self.fixed_bytes_per_device * self.devices

    @property
    def per_replica_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    @property
    def per_device_bytes(self) -> int:
        split = self.weights_bytes + self.kv_cache_bytes + self.activation_bytes
        return math.ceil(split / self.devices) + self.fixed_bytes_per_device

    @property
    def total_bytes(self) -> int:
        return self.per_replica_bytes * self.replicas

    def breakdown(self) -> str:
        """``141.2 GiB (weights 131.4 GiB + KV cache 2.5 GiB for 8192 tokens + overhead 7.6 GiB)``"""
        return (
            f"{gib(self.per_replica_bytes)} (weights {gib(self.weights_bytes)} + KV cache"
            f" {gib(self.kv_cache_bytes)} for {self.context_length} tokens + overhead {gib(self.overhead_bytes)})"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            overhead_bytes=self.overhead_bytes,
            per_replica_bytes=self.per_replica_bytes,
            per_device_bytes=self.per_device_bytes,
            total_bytes=self.total_bytes,
        )
        return d


def estimate_memory(
    facts: ModelFacts,
    context_length: int | None = None,
    *,
    accelerator_count: int = 0,
    replicas: int = 1,
) -> MemoryEstimate:
    """Memory for ``replicas`` replicas, each on ``accelerator_count`` GPUs (0 = CPU)."""
    if accelerator_count < 0 or replicas < 1:
        raise ValueError("accelerator_count must be >= 0 and replicas >= 1")
    ctx = default_context_length(facts, context_length)
    on_gpu = accelerator_count > 0
    return MemoryEstimate(
        context_length=ctx,
        weights_bytes=facts.weights_bytes,
        kv_cache_bytes=kv_cache_bytes(facts, ctx),
        activation_bytes=int(facts.weights_bytes * ACTIVATION_FRACTION),
        fixed_bytes_per_device=GPU_FIXED_OVERHEAD if on_gpu else CPU_FIXED_OVERHEAD,
        devices=max(accelerator_count, 1),
        replicas=replicas,
        on_gpu=on_gpu,
    )


class ModelDoesNotFit(PermanentStepError):
    """The fit check failed; the message says by how much and what to change."""


@dataclass(frozen=True)
class FitResult:
    """The verdict, the numbers behind it and, when it does not fit, what to change."""

    fits: bool
    message: str
    estimate: MemoryEstimate
    usable_bytes: int  # per replica
    offered_by: str  # "1 x NVIDIA L4", "this host", "the memory limit 16Gi"
    accelerator: str | None = None
    accelerator_count: int = 0
    suggestions: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # not about memory, but worth telling before the deploy

    def to_dict(self) -> dict[str, Any]:
        return {
            "fits": self.fits,
            "message": self.message,
            "estimate": self.estimate.to_dict(),
            "usable_bytes": self.usable_bytes,
            "offered_by": self.offered_by,
            "accelerator": self.accelerator,
            "accelerator_count": self.accelerator_count,
            "suggestions": list(self.suggestions),
            "warnings": list(self.warnings),
        }

    def raise_if_not_fits(self) -> None:
        if not self.fits:
            raise ModelDoesNotFit(self.message, details=self.to_dict())


def check_fit(
    facts: ModelFacts,
    requirements: ResourceRequirements,
    context_length: int | None = None,
    host_memory: HostMemory | None = None,
    *,
    replicas: int = 1,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    catalog: AcceleratorCatalog = DEFAULT_CATALOG,
) -> FitResult:
    """Does one replica of the model fit the requested hardware?

    ``replicas`` counts replicas that share the same memory: on CPU without a
    memory limit they all share this host, so pass the replica count; with a
    limit, or on GPUs, every replica gets its own and ``replicas`` is ignored.
    ``host_memory`` defaults to reading ``/proc/meminfo`` (only for CPU).
    Raises :class:`~modserv_shim.modelinfo.accelerators.UnknownAccelerator`.
    """
    if requirements.acceleratorType is not None:
        acc = catalog.lookup(requirements.acceleratorType)
        count = max(requirements.acceleratorCount, 1)
        result = _gpu_fit(facts, acc, count, context_length, gpu_memory_utilization, catalog)
    else:
        result = _cpu_fit(facts, requirements, context_length, host_memory, replicas)
    return replace(result, warnings=_warnings(facts, requirements, context_length))


def _warnings(facts: ModelFacts, requirements: ResourceRequirements, context_length: int | None) -> tuple[str, ...]:
    out: list[str] = []
    if context_length and context_length > facts.context_length:
        out.append(
            f"contextLength {context_length} is longer than the model's maximum of {facts.context_length}"
            " tokens; vLLM refuses it and llama.cpp's output degrades past the trained length"
        )
    count = requirements.acceleratorCount
    if requirements.acceleratorType is not None and count > 1 and not _splits(facts, count):
        out.append(
            f"acceleratorCount={count} does not divide the model's {facts.heads} attention heads,"
            " which tensor parallelism needs"
        )
    return tuple(out)


# ------------------------------------------------------------------- GPUs


def _usable_per_device(acc: Accelerator, utilization: float) -> int:
    return int(acc.memory_bytes * utilization)


def _gpu_fits(est: MemoryEstimate, acc: Accelerator, utilization: float) -> bool:
    return est.per_device_bytes <= _usable_per_device(acc, utilization)


def _splits(facts: ModelFacts, n: int) -> bool:
    """Tensor parallelism needs the attention heads to divide evenly."""
    return facts.heads == 0 or facts.heads % n == 0


def _fewest_devices(
    facts: ModelFacts, ctx: int | None, acc: Accelerator, utilization: float, start: int = 1
) -> int | None:
    for n in range(start, MAX_ACCELERATORS + 1):
        if _splits(facts, n) and _gpu_fits(estimate_memory(facts, ctx, accelerator_count=n), acc, utilization):
            return n
    return None


def _gpu_fit(
    facts: ModelFacts,
    acc: Accelerator,
    count: int,
    ctx: int | None,
    utilization: float,
    catalog: AcceleratorCatalog,
) -> FitResult:
    est = estimate_memory(facts, ctx, accelerator_count=count)
    usable = _usable_per_device(acc, utilization) * count
    offered_by = f"{count} x {acc.name}"
    fits = _gpu_fits(est, acc, utilization)
    suggestions: list[str] = []
    if fits:
        message = f"the model needs {est.breakdown()} and {offered_by} offers {gib(usable)} usable: it fits"
    else:
        more = _fewest_devices(facts, ctx, acc, utilization, start=count + 1)
        if more is not None:
            suggestions.append(f"use acceleratorCount={more} or more")
        bigger = _larger_gpu(facts, ctx, acc, utilization, catalog)
        if bigger is not None:
            n, other = bigger
            suggestions.append(f"a larger GPU ({other.name})" if n == count else f"a larger GPU ({n} x {other.name})")
        four_bit = _four_bit(facts)
        if four_bit is not None:
            if _gpu_fits(estimate_memory(four_bit, ctx, accelerator_count=count), acc, utilization):
                suggestions.append(f"a 4-bit quantization (weights about {gib(four_bit.weights_bytes)})")
            else:
                n4 = _fewest_devices(four_bit, ctx, acc, utilization, start=count + 1)
                if n4 is not None:
                    suggestions.append(f"a 4-bit quantization with acceleratorCount={n4}")
        shorter = _max_context(
            facts, est, _usable_per_device(acc, utilization) * count - est.fixed_bytes_per_device * count
        )
        if shorter is not None:
            suggestions.append(f"contextLength={shorter} or less")
        message = f"the model needs {est.breakdown()} but {offered_by} offers {gib(usable)} usable"
        message += ": " + _or_list(suggestions) if suggestions else ": no GPU in the catalog can hold it"
    return FitResult(
        fits=fits,
        message=message,
        estimate=est,
        usable_bytes=usable,
        offered_by=offered_by,
        accelerator=acc.name,
        accelerator_count=count,
        suggestions=tuple(suggestions),
    )


def _larger_gpu(
    facts: ModelFacts, ctx: int | None, acc: Accelerator, utilization: float, catalog: AcceleratorCatalog
) -> tuple[int, Accelerator] | None:
    """The bigger device needing the fewest cards (then the least memory)."""
    options: list[tuple[int, float, Accelerator]] = []
    for other in catalog:
        if other.memory_gib > acc.memory_gib:
            n = _fewest_devices(facts, ctx, other, utilization)
            if n is not None:
                options.append((n, other.memory_gib, other))
    if not options:
        return None
    n, _, best = min(options, key=lambda o: (o[0], o[1], o[2].name))
    return n, best


# -------------------------------------------------------------------- CPU


def _cpu_fit(
    facts: ModelFacts,
    requirements: ResourceRequirements,
    ctx: int | None,
    host_memory: HostMemory | None,
    replicas: int,
) -> FitResult:
    limit = requirements.memory_bytes
    if limit is not None:
        est = estimate_memory(facts, ctx)
        usable = limit
        offered_by = f"the memory limit of {requirements.memory}"
        needed = est.per_replica_bytes
    else:
        host = host_memory or read_host_memory()
        est = estimate_memory(facts, ctx, replicas=replicas)
        usable = host.available_bytes
        offered_by = "this host" if replicas == 1 else f"this host (for {replicas} replicas)"
        needed = est.total_bytes
    fits = needed <= usable
    suggestions: list[str] = []
    offers = f"offers {gib(usable)}" if limit is not None else f"has {gib(usable)} available"
    if fits:
        message = f"the model needs {est.breakdown()} and {offered_by} {offers}: it fits"
    else:
        if limit is not None:
            suggestions.append(f"raise resourceRequirements.memory to {math.ceil(needed / GIB)}Gi or more")
        else:
            suggestions.append(f"free {gib(needed - usable)} more on this host")
        four_bit = _four_bit(facts)
        if four_bit is not None:
            suggestions.append(f"a 4-bit quantization (weights about {gib(four_bit.weights_bytes)})")
        per_replica_usable = usable if limit is not None else usable // replicas
        shorter = _max_context(facts, est, per_replica_usable - est.fixed_bytes_per_device)
        if shorter is not None:
            suggestions.append(f"contextLength={shorter} or less")
        needs = (
            est.breakdown()
            if replicas == 1 or limit is not None
            else f"{gib(needed)} for {replicas} replicas of {est.breakdown()}"
        )
        message = f"the model needs {needs} but {offered_by} {offers}: " + _or_list(suggestions)
    return FitResult(
        fits=fits,
        message=message,
        estimate=est,
        usable_bytes=usable,
        offered_by=offered_by,
        suggestions=tuple(suggestions),
    )


# ---------------------------------------------------------------- helpers


def _four_bit(facts: ModelFacts) -> ModelFacts | None:
    """The same model at ~4.85 bits per weight, if it is not already that small."""
    if facts.parameter_count <= 0 or facts.bits_per_weight <= 6:
        return None
    weights = int(facts.parameter_count * FOUR_BIT_BITS_PER_WEIGHT / 8)
    return replace(facts, weights_bytes=weights, dtype="Q4_K_M", quantization="Q4_K_M")


def _max_context(facts: ModelFacts, est: MemoryEstimate, room_for_split: int) -> int | None:
    """The longest context (a multiple of 256, >= 512) whose KV cache fits beside the
    weights in ``room_for_split`` bytes, when that is shorter than the one asked for."""
    per_token = kv_cache_bytes(facts, 1)
    if per_token <= 0:
        return None
    room = room_for_split - est.weights_bytes - est.activation_bytes
    tokens = (room // per_token) // 256 * 256
    if MIN_SUGGESTED_CONTEXT <= tokens < est.context_length:
        return int(tokens)
    return None


def _or_list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + ", or " + items[-1]
