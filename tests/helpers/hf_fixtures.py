"""Fake Hugging Face model folders: complete, broken, and 70B-sized without the disk.

Every shard is a *valid* safetensors file as far as its header goes (8-byte
length, JSON header with dtype/shape/offsets), followed by a data region made
with ``os.truncate``: a sparse hole that reads as zeros and takes no disk
blocks.  So a "Llama-3-70B" folder of 30 shards shows ~141 GB in ``ls -l`` and
``stat`` but costs a few hundred KB, and checks that only look at sizes and
headers behave exactly as with the real download.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4}
_TORCH_TO_ST = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}

SMALL_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": 300,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}

LLAMA3_70B_CONFIG: dict[str, Any] = {
    "_name_or_path": "meta-llama/Meta-Llama-3-70B-Instruct",
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "vocab_size": 128256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def llama_tensors(config: Mapping[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """The tensor names and shapes of a Llama checkpoint with this config."""
    h = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads)
    hd = config.get("head_dim", h // heads)
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (heads * hd, h)),
            (f"{p}.self_attn.k_proj.weight", (kv * hd, h)),
            (f"{p}.self_attn.v_proj.weight", (kv * hd, h)),
            (f"{p}.self_attn.o_proj.weight", (h, heads * hd)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (inter, h)),
            (f"{p}.mlp.up_proj.weight", (inter, h)),
            (f"{p}.mlp.down_proj.weight", (h, inter)),
        ]
    out.append(("model.norm.weight", (h,)))
    if not config.get("tie_word_embeddings"):
        out.append(("lm_head.weight", (vocab, h)))
    return out


def parameter_count(config: Mapping[str, Any]) -> int:
    total = 0
    for _, shape in llama_tensors(config):
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], dtype: str = "BF16") -> int:
    """A safetensors file with a real header and a sparse (all-zero) data region.

    Returns the bytes of tensor data (what an index's ``total_size`` counts).
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        n = DTYPE_BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
    os.truncate(path, 8 + len(raw) + offset)
    return offset


def write_tokenizer(folder: Path, kind: str = "tokenizer.json") -> None:
    """``tokenizer.json`` | ``tokenizer.model`` | ``bpe`` (vocab.json + merges.txt)."""
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    if kind == "tokenizer.json":
        tok = {"version": "1.0", "model": {"type": "BPE", "vocab": {"<s>": 0, "</s>": 1}, "merges": []}}
        (folder / "tokenizer.json").write_text(json.dumps(tok))
    elif kind == "tokenizer.model":
        (folder / "tokenizer.model").write_bytes(b"\x0a\x0bsentencepiece-stub")
    elif kind == "bpe":
        (folder / "vocab.json").write_text(json.dumps({"<s>": 0, "</s>": 1}))
        (folder / "merges.txt").write_text("#version: 0.2\n")
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")


def write_hf_model(
    folder: str | os.PathLike[str],
    config: Mapping[str, Any],
    *,
    shards: int = 1,
    tokenizer: str | None = "tokenizer.json",
) -> Path:
    """A complete model folder; ``shards > 1`` writes an index and that many shards."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dict(config), indent=2))
    if tokenizer is not None:
        write_tokenizer(out, tokenizer)
    dtype = _TORCH_TO_ST[config.get("torch_dtype", "bfloat16")]
    tensors = llama_tensors(config)
    if shards == 1:
        write_safetensors(out / "model.safetensors", tensors, dtype)
        return out
    groups = _split(tensors, shards, DTYPE_BYTES[dtype])
    weight_map: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups, start=1):
        name = shard_name(i, shards)
        total += write_safetensors(out / name, group, dtype)
        weight_map.update({t: name for t, _ in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return out


def shard_name(i: int, n: int) -> str:
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def _split(tensors: list[tuple[str, tuple[int, ...]]], n: int, width: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Contiguous groups of roughly equal bytes, never empty (as HF's sharding does)."""
    if n > len(tensors):
        raise ValueError("more shards than tensors")
    sizes = []
    for _, shape in tensors:
        s = width
        for d in shape:
            s *= d
        sizes.append(s)
    target = sum(sizes) / n
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(n)]
    acc = 0
    for i, (t, s) in enumerate(zip(tensors, sizes, strict=True)):
        left_tensors = len(tensors) - i
        g = min(int(acc // target), n - 1)
        # keep enough tensors for the groups still empty
        g = max(g, n - left_tensors)
        while g > 0 and not groups[g - 1]:
            g -= 1
        groups[g].append(t)
        acc += s
    return groups


def write_small_hf_model(
    folder: str | os.PathLike[str], *, shards: int = 1, tokenizer: str | None = "tokenizer.json"
) -> Path:
    """A ~225 KB Llama-shaped folder that passes validation."""
    return write_hf_model(folder, SMALL_CONFIG, shards=shards, tokenizer=tokenizer)


def write_llama3_70b_like(folder: str | os.PathLike[str]) -> Path:
    """Llama-3-70B's config with 30 sparse bf16 shards, ~141 GB apparent, ~0 on disk."""
    return write_hf_model(folder, LLAMA3_70B_CONFIG, shards=30)


def remove_shards(folder: str | os.PathLike[str], *numbers: int, of: int) -> list[str]:
    """Delete shards by number (1-based), as an interrupted copy leaves them."""
    names = [shard_name(i, of) for i in numbers]
    for name in names:
        (Path(folder) / name).unlink()
    return names


def write_missing_shard_model(
    folder: str | os.PathLike[str], *, missing: tuple[int, ...] = (2,), shards: int = 3
) -> Path:
    """A small sharded folder with some shards gone."""
    out = write_small_hf_model(folder, shards=shards)
    remove_shards(out, *missing, of=shards)
    return out
