"""What model-validation learns about a model, and the one error it raises.

:class:`ModelFacts` is deliberately format-neutral: the fit check, the runtime
renderer and the dashboard read the same few numbers whether the model came
from a GGUF file or a Hugging Face folder.  It is a frozen dataclass that turns
into JSON and back (:meth:`ModelFacts.to_dict` / :meth:`ModelFacts.from_dict`),
because the facts are stored as a step output and, for Kubernetes, may be
produced by a validation Job inside the cluster and carried back as text.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from modserv_shim.errors import PermanentStepError

GIB = 1024**3

ModelFormat = Literal["gguf", "hf"]


class ModelInvalid(PermanentStepError):
    """The model at ``modelFile`` is missing, incomplete or unreadable.

    Retrying cannot help: somebody has to fix the files.  ``problem`` is a short
    machine-readable tag (``not_found``, ``truncated``, ``missing_shards``, ...)
    so callers and tests need not parse the message, which is written for a person.
    """

    def __init__(self, message: str, *, problem: str, path: str, details: Any = None) -> None:
        info: dict[str, Any] = {"problem": problem, "path": path}
        if details:
            info.update(details)
        super().__init__(message, details=info)
        self.problem = problem
        self.path = path


@contextmanager
def readable(where: str) -> Iterator[None]:
    """Turn an I/O error while inspecting ``where`` into a :class:`ModelInvalid`.

    Permission problems and stale network mounts are the usual causes; both
    need a person, and a bare ``OSError`` would surface as an internal error.
    """
    try:
        yield
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ModelInvalid(
            f"cannot read the model at {where}: {reason.lower()} ({e.filename or where})",
            problem="unreadable",
            path=where,
        ) from e


def model_not_found(where: str) -> ModelInvalid:
    return ModelInvalid(
        f"model file not found: {where} (the path must exist on this machine for the local shimlet)",
        problem="not_found",
        path=where,
    )


def gib(n_bytes: float) -> str:
    """``141.2 GiB``: one decimal, the unit people compare GPU sizes in
    (``96.6 MiB`` below 1 GiB, where "0.1 GiB" would hide the number)."""
    if abs(n_bytes) < GIB:
        return f"{n_bytes / 1024**2:.1f} MiB"
    return f"{n_bytes / GIB:.1f} GiB"


def format_count(n: int) -> str:
    """``70.6B`` / ``135M`` parameters, for messages."""
    if n >= 10**9:
        return f"{n / 10**9:.1f}B"
    if n >= 10**6:
        return f"{n / 10**6:.0f}M"
    return f"{n / 10**3:.0f}K"


@dataclass(frozen=True)
class ModelFacts:
    """The numbers that decide where and how a model can run.

    * ``architecture`` is what a runtime dispatches on: GGUF's
      ``general.architecture`` ("llama", "qwen2"), or the first of a Hugging
      Face config's ``architectures`` ("LlamaForCausalLM"), as vLLM reads it.
    * ``parameter_count`` and ``weights_bytes`` describe the weights as stored
      (a Q4_1 GGUF is ~5.7 bits per weight, a bf16 checkpoint 16).
    * ``context_length`` is the model's trained maximum, not what we will serve.
    * ``layers``, ``kv_heads``, ``head_dim`` and ``bytes_per_kv_element`` are what
      the KV-cache size depends on; ``heads`` also bounds tensor parallelism.
    * ``dtype`` is the storage type ("Q4_1", "F16", "bfloat16");
      ``quantization`` names a quantization scheme, or is ``None`` for plain
      floating-point weights.
    """

    format: ModelFormat
    path: str
    architecture: str
    name: str
    parameter_count: int
    weights_bytes: int
    context_length: int
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    quantization: str | None = None
    vocab_size: int | None = None
    bytes_per_kv_element: int = 2
    tensor_count: int | None = None

    @property
    def bits_per_weight(self) -> float:
        """Average stored bits per parameter (16 for bf16, ~4.5-5 for 4-bit)."""
        if self.parameter_count <= 0:
            return 0.0
        return self.weights_bytes * 8 / self.parameter_count

    def summary(self) -> str:
        """One line for logs: ``llama 70.6B bfloat16, 80 layers, context 8192``."""
        return (
            f"{self.architecture} {format_count(self.parameter_count)} {self.dtype},"
            f" {self.layers} layers, context {self.context_length}, weights {gib(self.weights_bytes)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only; ``bits_per_weight`` is included for readers."""
        d = asdict(self)
        d["bits_per_weight"] = round(self.bits_per_weight, 3)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelFacts:
        """The inverse of :meth:`to_dict`; unknown keys (derived values) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
