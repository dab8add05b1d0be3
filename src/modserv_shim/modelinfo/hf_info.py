"""Facts about a Hugging Face model folder (config.json + tokenizer + safetensors).

What is checked, and why only this much:

* ``config.json`` must be a JSON object naming the architecture and the sizes
  the memory estimate needs.  Multimodal configs keep the language model's
  sizes under ``text_config``; those are used when the top level has none.
* A tokenizer must be present in one of the forms loaders accept
  (``tokenizer.json``, SentencePiece ``tokenizer.model``, or BPE ``vocab.json``
  with ``merges.txt``); without one vLLM fails only after loading the weights.
* The weights: either one ``model.safetensors`` or an index whose ``weight_map``
  names shards.  Every shard named must exist and be whole: its size must
  cover the data its safetensors header promises (see :mod:`.safetensors_check`),
  and together the shards must hold at least the index's ``total_size``.
  Only ``stat`` and the header are read: shards can be tens of GB and may sit on
  a network filesystem.

Every file is read with a byte cap (:mod:`.limits`): a 1 GiB file saved as
``config.json`` is refused after a ``stat``, a FIFO without waiting on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from modserv_shim.modelinfo.facts import ModelFacts, ModelInvalid, readable
from modserv_shim.modelinfo.limits import CONFIG_MAX_BYTES, INDEX_MAX_BYTES, read_model_json
from modserv_shim.modelinfo.safetensors_check import ShardCheck, check_shard

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_LISTED = 5  # shard names shown in a message before "..."
DEFAULT_CONTEXT = 2048  # what vLLM assumes when a config names no maximum length
# Architecture and hub names end up in messages, logs and stored facts; real ones are under
# 100 characters, so a longer one is not a name.
MAX_NAME_CHARS = 256

DTYPE_BYTES = {
    "float32": 4,
    "float": 4,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int8": 1,
}

# Alternative key names used by older or non-Llama configs (GPT-2, Falcon, T5...).
_ALIASES = {
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads"),
    "max_position_embeddings": (
        "max_position_embeddings",
        "n_positions",
        "max_sequence_length",
        "seq_length",
    ),
}


def inspect_hf_folder(path: str | Path) -> ModelFacts:
    """Validate the Hugging Face model folder at ``path`` and read its facts.

    Raises :class:`~modserv_shim.modelinfo.facts.ModelInvalid` with ``problem``
    ``not_found``, ``unreadable``, ``missing_config``, ``bad_config``,
    ``missing_tokenizer``, ``missing_weights``, ``missing_shards``,
    ``short_shards``, ``corrupt``, ``too_large`` (a metadata file over its cap in
    :mod:`.limits`) or ``not_a_file`` (a FIFO, device... where a file should be).
    """
    folder = Path(path)
    where = str(folder)
    if not folder.is_dir():
        raise ModelInvalid(
            f"model folder not found: {where} (the path must exist on this machine for the local shimlet)",
            problem="not_found",
            path=where,
        )
    with readable(where):
        config = _read_config(folder)
        _check_tokenizer(folder)
        weights_bytes, index_total = _check_weights(folder)
    return _facts(where, config, weights_bytes, index_total)


def _read_config(folder: Path) -> dict[str, Any]:
    where = str(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():  # a FIFO or a directory by that name is refused by the read, in words
        raise ModelInvalid(
            f"config.json is missing in {where}: a Hugging Face model folder needs config.json,"
            " a tokenizer and safetensors weights",
            problem="missing_config",
            path=where,
        )
    config = read_model_json(cfg_path, where, cap=CONFIG_MAX_BYTES, typical="a model's config.json is a few KiB")
    if not isinstance(config, dict):
        raise ModelInvalid(f"config.json in {where} is not a JSON object", problem="bad_config", path=where)
    archs = config.get("architectures")
    if not (isinstance(archs, list) and archs and isinstance(archs[0], str)) and not isinstance(
        config.get("model_type"), str
    ):
        raise ModelInvalid(
            f"config.json in {where} names no architecture (neither 'architectures' nor 'model_type')",
            problem="bad_config",
            path=where,
        )
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else config["model_type"]
    if len(arch) > MAX_NAME_CHARS:  # it goes into messages, logs and the stored facts
        raise ModelInvalid(
            f"config.json in {where} names an architecture of {len(arch)} characters ({arch[:40]!r}...), which"
            " is not an architecture name such as 'LlamaForCausalLM'",
            problem="bad_config",
            path=where,
        )
    return config


def _check_tokenizer(folder: Path) -> None:
    def present(name: str) -> bool:
        f = folder / name
        return f.is_file() and f.stat().st_size > 0

    if present("tokenizer.json") or present("tokenizer.model"):
        return
    if present("vocab.json") and present("merges.txt"):
        return
    raise ModelInvalid(
        f"no tokenizer in {folder}: expected tokenizer.json, tokenizer.model, or vocab.json with"
        " merges.txt (copy the tokenizer files from the model's repository into the folder)",
        problem="missing_tokenizer",
        path=str(folder),
    )


def _check_weights(folder: Path) -> tuple[int, int | None]:
    """Bytes of tensor data in the weight files, and the index's ``total_size`` (if any)."""
    where = str(folder)
    # exists(), not is_file(): a FIFO or device by these names is refused in words when read
    if (folder / INDEX_FILE).exists():
        return _check_index(folder)
    files = [folder / SINGLE_FILE] if (folder / SINGLE_FILE).exists() else []
    # e.g. Mistral's consolidated.safetensors, which loaders also find by globbing
    files = files or sorted(p for p in folder.glob("*.safetensors") if not p.is_dir())
    if not files:
        hint = ""
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            hint = " (found PyTorch .bin/.pt weights: convert them to safetensors)"
        raise ModelInvalid(
            f"no weights in {where}: expected {SINGLE_FILE} or {INDEX_FILE} with its shards{hint}",
            problem="missing_weights",
            path=where,
        )
    checks = [check_shard(f) for f in files]
    _raise_for_bad_shards(where, checks)
    return sum(c.data_bytes for c in checks), None


def _check_index(folder: Path) -> tuple[int, int | None]:
    where = str(folder)
    index = read_model_json(
        folder / INDEX_FILE,
        where,
        cap=INDEX_MAX_BYTES,
        typical="a safetensors index is ~100 bytes a tensor, a few MiB even for the largest models",
    )
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelInvalid(
            f"{INDEX_FILE} in {where} has no weight_map naming the shards", problem="bad_config", path=where
        )
    shards = sorted({str(v) for v in weight_map.values()})
    for name in shards:
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts:
            raise ModelInvalid(
                f"{INDEX_FILE} in {where} names a shard outside the folder: {name}",
                problem="bad_config",
                path=where,
            )
    missing = [name for name in shards if not (folder / name).exists()]
    if missing:
        raise ModelInvalid(
            f"{len(missing)} of {len(shards)} shards listed in {INDEX_FILE} are missing: {_listing(missing)}"
            f" (in {where}; copy or re-download them)",
            problem="missing_shards",
            path=where,
            details={"missing": missing, "listed": len(shards)},
        )
    checks = [check_shard(folder / name) for name in shards]
    _raise_for_bad_shards(where, checks)
    on_disk = sum(c.data_bytes for c in checks)
    metadata = index.get("metadata")
    total = metadata.get("total_size") if isinstance(metadata, Mapping) else None
    total_size = int(total) if isinstance(total, int | float) and not isinstance(total, bool) else None
    if total_size is not None and on_disk < total_size:
        raise ModelInvalid(
            f"the shards in {where} hold {on_disk} bytes but {INDEX_FILE} says the weights take"
            f" {total_size}: {total_size - on_disk} bytes are missing, so some shards are incomplete"
            " (re-download them)",
            problem="short_shards",
            path=where,
            details={"on_disk": on_disk, "total_size": total_size},
        )
    return on_disk, total_size


def _raise_for_bad_shards(where: str, checks: list[ShardCheck]) -> None:
    kinds = (
        ("not_a_file", "not_a_file", "not a regular file", "not regular files"),
        ("corrupt", "corrupt", "corrupt", "corrupt"),
        ("short", "short_shards", "cut short", "cut short"),
    )
    for problem, tag, one, many in kinds:
        bad = [c for c in checks if c.problem == problem]
        if not bad:
            continue
        described = [f"{c.name} ({c.reason})" for c in bad]
        if len(checks) == 1:
            message = f"{bad[0].name} in {where} is {one}: it {bad[0].reason} (re-download it)"
        else:
            message = (
                f"{len(bad)} of {len(checks)} shards in {where} are {many}: {_listing(described)} (re-download them)"
            )
        raise ModelInvalid(message, problem=tag, path=where, details={problem: [c.name for c in bad]})


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (", ..." if len(names) > MAX_LISTED else "")


def _pick(config: Mapping[str, Any], key: str) -> int | None:
    for alias in _ALIASES.get(key, (key,)):
        v = config.get(alias)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _facts(where: str, config: dict[str, Any], weights_bytes: int, index_total: int | None) -> ModelFacts:
    text = config.get("text_config")
    sizes: Mapping[str, Any] = text if isinstance(text, dict) and _pick(config, "hidden_size") is None else config

    def required(key: str) -> int:
        v = _pick(sizes, key)
        if v is None:
            raise ModelInvalid(
                f"config.json in {where} has no {key}, which is needed to size the model",
                problem="bad_config",
                path=where,
                details={"missing_key": key},
            )
        return v

    hidden = required("hidden_size")
    layers = required("num_hidden_layers")
    heads = required("num_attention_heads")
    kv_heads = _pick(sizes, "num_key_value_heads") or heads
    head_dim = _pick(sizes, "head_dim") or hidden // heads
    context = _pick(sizes, "max_position_embeddings") or DEFAULT_CONTEXT
    vocab = _pick(sizes, "vocab_size") or _pick(config, "vocab_size")

    dtype_raw = config.get("torch_dtype") or config.get("dtype") or sizes.get("torch_dtype") or "float32"
    dtype = str(dtype_raw).removeprefix("torch.")
    quant_cfg = config.get("quantization_config")
    quantization = None
    if isinstance(quant_cfg, dict):
        quantization = str(quant_cfg.get("quant_method") or "unknown")

    archs = config.get("architectures")
    architecture = archs[0] if isinstance(archs, list) and archs else str(config.get("model_type"))

    dtype_bytes = DTYPE_BYTES.get(dtype)
    stored = index_total if index_total is not None else weights_bytes
    if quantization is None and dtype_bytes:
        params = stored // dtype_bytes
    else:
        params = _formula_params(sizes, hidden, layers, heads, kv_heads, head_dim, vocab) or stored // 2

    return ModelFacts(
        format="hf",
        path=where,
        architecture=architecture,
        name=_display_name(config, where),
        parameter_count=params,
        weights_bytes=weights_bytes,
        context_length=context,
        layers=layers,
        hidden_size=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=dtype,
        quantization=quantization,
        vocab_size=vocab,
        # vLLM keeps the KV cache in the activation dtype, 16-bit even for fp32 checkpoints.
        bytes_per_kv_element=2,
    )


def _display_name(config: Mapping[str, Any], where: str) -> str:
    """The hub id the checkpoint was saved from (``meta-llama/Llama-3-70B``), else the folder name."""
    saved_from = config.get("_name_or_path")
    if isinstance(saved_from, str) and 0 < len(saved_from) <= MAX_NAME_CHARS and not saved_from.startswith(("/", ".")):
        return saved_from
    return Path(where).name


def _formula_params(
    sizes: Mapping[str, Any],
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    vocab: int | None,
) -> int | None:
    """Parameters of a Llama-style decoder: embeddings, attention, gated MLP, norms.

    Used only when the bytes on disk cannot tell (quantized checkpoints).
    """
    inter = _pick(sizes, "intermediate_size")
    if inter is None or vocab is None:
        return None
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * inter
    per_layer = attention + mlp + 2 * hidden
    embeddings = vocab * hidden * (1 if sizes.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + hidden
