"""Facts about a GGUF model file (llama.cpp's format).

All hyper-parameters live in the metadata under the architecture's prefix
(``llama.block_count``, ``qwen2.context_length``, ...).  llama.cpp itself
refuses a file without ``<arch>.context_length``, ``<arch>.block_count`` or
``<arch>.embedding_length``, so those are required here too: better to say so
now than after the server has been scheduled.  Attention head counts may be
absent (recurrent models such as Mamba have none; the KV cache is then 0) or be
per-layer arrays (OpenELM); the largest layer is taken, which keeps the memory
estimate on the safe side.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from gguf.constants import GGMLQuantizationType, LlamaFileType

from modserv_shim.modelinfo.facts import ModelFacts, ModelInvalid, model_not_found, readable
from modserv_shim.modelinfo.gguf_layout import GGUFArray, GGUFLayout, TensorInfo, read_layout
from modserv_shim.modelinfo.limits import file_kind

# llama.cpp's default KV cache type is f16.
DEFAULT_KV_BYTES = 2
# general.architecture and general.name end up in messages, logs and stored facts; real ones
# are a word or a short title.  A longer "name" is not one (the file's name is used instead).
MAX_NAME_CHARS = 256


def inspect_gguf(path: str | Path) -> ModelFacts:
    """Validate the GGUF file at ``path`` and read its facts, without loading tensors.

    Raises :class:`~modserv_shim.modelinfo.facts.ModelInvalid` when the file is
    missing, not GGUF, of an unsupported version, truncated, corrupt or lacks
    the metadata llama.cpp needs.
    """
    p = Path(path)
    where = str(p)
    if not p.exists():
        raise model_not_found(where)
    if not p.is_file():
        raise ModelInvalid(
            f"model file {where} is not a regular file but {file_kind(p.stat().st_mode)}; a GGUF model is one"
            " file ending in .gguf",
            problem="not_a_file",
            path=where,
        )
    with readable(where):
        layout = read_layout(p)
    return _facts(layout)


def _facts(layout: GGUFLayout) -> ModelFacts:
    meta = layout.metadata
    where = layout.path
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelInvalid(
            f"model file {where} has no general.architecture in its metadata, so no runtime can load it",
            problem="bad_metadata",
            path=where,
        )
    if len(arch) > MAX_NAME_CHARS or not arch.isprintable():  # it goes into every message below
        shown = arch[:40] + "..." if len(arch) > 40 else arch
        raise ModelInvalid(
            f"model file {where} has general.architecture {shown!r} ({len(arch)} characters), which is not an"
            " architecture name such as 'llama' or 'qwen2', so no runtime can load it",
            problem="bad_metadata",
            path=where,
        )

    def required(key: str) -> int:
        value = _largest(meta.get(f"{arch}.{key}"))
        if value is None or value <= 0:
            raise ModelInvalid(
                f"model file {where} lacks {arch}.{key} in its metadata (llama.cpp cannot load it without"
                " it; re-convert the model with a current llama.cpp)",
                problem="bad_metadata",
                path=where,
                details={"missing_key": f"{arch}.{key}"},
            )
        return value

    context_length = required("context_length")
    layers = required("block_count")
    hidden = required("embedding_length")
    heads = _largest(meta.get(f"{arch}.attention.head_count")) or 0
    kv_heads = _largest(meta.get(f"{arch}.attention.head_count_kv")) or heads
    head_dim = _largest(meta.get(f"{arch}.attention.key_length")) or (hidden // heads if heads else 0)

    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = _largest(meta.get(f"{arch}.vocab_size")) or (tokens.length if isinstance(tokens, GGUFArray) else None)
    name = meta.get("general.name")
    quant = _quantization_name(meta.get("general.file_type"), layout.tensors)

    return ModelFacts(
        format="gguf",
        path=where,
        architecture=arch,
        name=name if isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS else Path(where).stem,
        parameter_count=sum(t.n_elements for t in layout.tensors),
        weights_bytes=layout.data_bytes,
        context_length=context_length,
        layers=layers,
        hidden_size=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=quant,
        quantization=None if quant in ("F32", "F16", "BF16") else quant,
        vocab_size=vocab,
        bytes_per_kv_element=DEFAULT_KV_BYTES,
        tensor_count=len(layout.tensors),
    )


def _largest(value: Any) -> int | None:
    """An integer metadata value, or the largest item of a per-layer array."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, GGUFArray) and value.values:
        ints = [v for v in value.values if isinstance(v, int) and not isinstance(v, bool)]
        return max(ints) if ints else None
    return None


def _quantization_name(file_type: Any, tensors: tuple[TensorInfo, ...]) -> str:
    """``Q4_1``, ``Q4_K_M``, ``F16``...: from ``general.file_type`` when it is known,
    else the tensor type holding most bytes among the matrices (norms are F32 in
    every file and would say nothing)."""
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        try:
            ft = LlamaFileType(file_type)
        except ValueError:
            ft = None
        if ft is not None and ft != LlamaFileType.GUESSED:
            return ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    by_type: Counter[GGMLQuantizationType] = Counter()
    for t in tensors:
        if len(t.shape) >= 2:
            by_type[t.ggml_type] += t.n_bytes
    if not by_type:
        return "F32"
    return by_type.most_common(1)[0][0].name
