"""Quantization types: which exist (llama.cpp's own list), what they weigh, and ``auto``.

The valid names come from llama-cpp-python's ``LLAMA_FTYPE_*`` constants (the library that
quantizes and serves the model), read when first needed: this module imports no native code
at import time, so the fit check of the default pipeline may use the estimates below.

**Size estimate.**  Each type has an average number of bits per weight for the matrices
(llama.cpp's ``quantize`` tool's published sizes for Llama-3-8B, which include its mixes:
Q4_K_M keeps some tensors at Q6_K) and a *fallback*: a K- or IQ-type needs rows that are a
multiple of 256 values, and llama.cpp quantizes a tensor whose rows are not to a 32-block type
instead (Q4_K -> Q5_0, Q6_K -> Q8_0, ...).  One-dimensional tensors (norms) are kept as they
are.  The disk check adds a margin (:data:`DISK_MARGIN`) and the file's metadata.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from modserv_shim.errors import PermanentStepError
from modserv_shim.modelinfo import FitResult, ModelFacts
from modserv_shim.modelinfo.facts import gib
from modserv_shim.modelinfo.gguf_layout import TensorInfo

AUTO = "auto"
DISK_MARGIN = 1.10
DISK_SLACK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class TypeSize:
    """Average bits per weight of the matrices, the row block the type needs, and the bits per
    weight of the type llama.cpp falls back to when a row is not a multiple of ``block``."""

    bits: float
    block: int = 32
    fallback_bits: float | None = None


UNKNOWN_SIZE = TypeSize(8.5, 1)  # a type this table does not know: Q8_0's size, an upper bound for any quant

SIZES: dict[str, TypeSize] = {
    "F32": TypeSize(32.0, 1),
    "F16": TypeSize(16.0, 1),
    "BF16": TypeSize(16.0, 1),
    "Q8_0": TypeSize(8.5),
    "Q6_K": TypeSize(6.59, 256, 8.5),
    "Q5_1": TypeSize(6.04),
    "Q5_K_M": TypeSize(5.70, 256, 6.25),
    "Q5_K_S": TypeSize(5.57, 256, 6.0),
    "Q5_0": TypeSize(5.57),
    "Q4_1": TypeSize(5.11),
    "Q4_K_M": TypeSize(4.89, 256, 5.9),
    "Q4_K_S": TypeSize(4.67, 256, 5.6),
    "Q4_0": TypeSize(4.64),
    "IQ4_NL": TypeSize(4.5),
    "IQ4_XS": TypeSize(4.25, 256, 4.5),
    "Q3_K_L": TypeSize(4.31, 256, 4.9),
    "Q3_K_M": TypeSize(4.00, 256, 4.7),
    "Q3_K_S": TypeSize(3.65, 256, 4.5),
    "IQ3_M": TypeSize(3.66, 256, 4.5),
    "IQ3_S": TypeSize(3.44, 256, 4.5),
    "IQ3_XS": TypeSize(3.3, 256, 4.5),
    "IQ3_XXS": TypeSize(3.06, 256, 4.5),
    "Q2_K": TypeSize(3.17, 256, 4.5),
    "Q2_K_S": TypeSize(2.96, 256, 4.5),
    "IQ2_M": TypeSize(2.7, 256, 4.5),
    "IQ2_S": TypeSize(2.5, 256, 4.5),
    "IQ2_XS": TypeSize(2.31, 256, 4.5),
    "IQ2_XXS": TypeSize(2.06, 256, 4.5),
    "IQ1_M": TypeSize(1.75, 256, 4.5),
    "IQ1_S": TypeSize(1.56, 256, 4.5),
    "TQ2_0": TypeSize(2.06, 256, 4.64),
    "TQ1_0": TypeSize(1.69, 256, 4.64),
}

NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S"})
"""Types llama.cpp refuses to make without an importance matrix (the quantize tool's rule)."""

AUTO_CANDIDATES: tuple[str, ...] = (
    "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "IQ4_XS", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K")
"""What ``auto`` picks from, largest first: the types people serve, none needing an importance matrix."""


class LlamaCppMissing(PermanentStepError):
    """llama-cpp-python is not installed, so nothing can be quantized."""


@functools.cache
def llama_ftypes() -> dict[str, int]:
    """``{"Q4_K_M": 15, ...}``: every ``LLAMA_FTYPE_*`` of the installed llama-cpp-python,
    without ``GUESSED`` and the types that need an importance matrix."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise LlamaCppMissing("the quant pipeline needs llama-cpp-python: pip install 'modserv-shim[llama]'"
                              f" ({exc})") from exc
    out: dict[str, int] = {}
    for attr in dir(llama_cpp):
        if not attr.startswith("LLAMA_FTYPE_"):
            continue
        name = attr.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
        value = getattr(llama_cpp, attr)
        if name == "GUESSED" or name in NEEDS_IMATRIX or not isinstance(value, int):
            continue
        out[name] = value
    return dict(sorted(out.items(), key=lambda kv: (kv[0] not in SIZES, -size_of(kv[0]).bits, kv[0])))


def valid_types() -> list[str]:
    """The names a request may give, largest first, then ``auto``."""
    return [*llama_ftypes(), AUTO]


def normalize(name: str) -> str:
    """``q4_k_m`` -> ``Q4_K_M``; ``Auto`` -> ``auto``."""
    return AUTO if name.strip().lower() == AUTO else name.strip().upper()


def check_type(name: str) -> str:
    """The type's canonical name; a ``ValueError`` listing the valid ones for anything else."""
    kind = normalize(name)
    if kind == AUTO or kind in llama_ftypes():
        return kind
    if kind in NEEDS_IMATRIX:
        raise ValueError(f"quantization type {kind} needs an importance matrix (imatrix), which the quant pipeline"
                         f" does not take yet; valid types: {', '.join(valid_types())}")
    raise ValueError(f"unknown quantization type {name!r}; valid types: {', '.join(valid_types())}")


def size_of(kind: str) -> TypeSize:
    return SIZES.get(kind, UNKNOWN_SIZE)


def _tensor_bytes(t: TensorInfo, size: TypeSize) -> int:
    if len(t.shape) < 2 or t.shape[1] == 1:  # norms and biases: kept as they are
        return t.n_bytes
    bits = size.bits
    if size.block > 1 and t.shape[0] % size.block:
        bits = size.fallback_bits or bits
    return math.ceil(t.n_elements * bits / 8)


def estimate_weights(facts: ModelFacts, kind: str, tensors: Sequence[TensorInfo] | None = None) -> int:
    """Bytes of weights after quantizing to ``kind``: per tensor when the tensors are known, else
    ``parameter_count * bits / 8``."""
    size = size_of(kind)
    if tensors:
        return sum(_tensor_bytes(t, size) for t in tensors)
    return math.ceil(facts.parameter_count * size.bits / 8)


def estimate_file_bytes(facts: ModelFacts, kind: str, tensors: Sequence[TensorInfo], header_bytes: int) -> int:
    """What the disk must hold for the output: the weights with fallbacks at their most, a margin,
    and the metadata (the tokenizer can be megabytes)."""
    size = size_of(kind)
    worst = TypeSize(max(size.bits, size.fallback_bits or 0), size.block, size.fallback_bits)
    weights = sum(_tensor_bytes(t, worst) for t in tensors) if tensors else estimate_weights(facts, kind)
    return math.ceil(weights * DISK_MARGIN) + header_bytes + DISK_SLACK_BYTES


def quantized_facts(facts: ModelFacts, kind: str, tensors: Sequence[TensorInfo] | None = None) -> ModelFacts:
    """The facts the model would have as ``kind`` (what the fit check needs: its weights)."""
    return replace(facts, weights_bytes=estimate_weights(facts, kind, tensors), dtype=kind,
                   quantization=None if kind in ("F32", "F16", "BF16") else kind)


@dataclass(frozen=True)
class AutoChoice:
    """``kind`` None: the model fits as it is.  ``fit`` is the fit check of what was chosen."""

    kind: str | None
    fit: FitResult
    tried: tuple[tuple[str, FitResult], ...] = ()


def choose_auto(
    facts: ModelFacts,
    fit_check: Callable[[ModelFacts], FitResult],
    tensors: Sequence[TensorInfo] | None = None,
    candidates: Iterable[str] = AUTO_CANDIDATES,
) -> AutoChoice | None:
    """The largest candidate type whose memory estimate fits (``fit_check``), among those that make
    the model smaller; the model as it is when it fits already; None when nothing fits."""
    as_is = fit_check(facts)
    if as_is.fits:
        return AutoChoice(None, as_is)
    tried: list[tuple[str, FitResult]] = []
    for kind in candidates:
        q = quantized_facts(facts, kind, tensors)
        if q.weights_bytes >= facts.weights_bytes:
            continue  # not smaller than what we have
        fit = fit_check(q)
        tried.append((kind, fit))
        if fit.fits:
            return AutoChoice(kind, fit, tuple(tried))
    return None


def quant_hint(facts: ModelFacts, fit_check: Callable[[ModelFacts], FitResult]) -> str | None:
    """For a model that does not fit: ``use pipeline quant with Q4_K_M: 4.9 GiB fits`` (None when no
    type would fit, or the model is not a GGUF file: quant serves a Hugging Face folder converted, with
    llama.cpp instead of vLLM, a change of runtime a fit hint should not slip in)."""
    if facts.format != "gguf":
        return None
    choice = choose_auto(facts, fit_check)
    if choice is None or choice.kind is None:
        return None
    again = f" (allowRequantize: the file is {facts.dtype} already)" if facts.quantization else ""
    return f"use pipeline quant with {choice.kind}{again}: {gib(choice.fit.estimate.per_replica_bytes)} fits"
