"""A tiny Hugging Face Llama made on the spot: random weights, a SentencePiece tokenizer trained here.

Why: the quant pipeline's Hugging Face input runs llama.cpp's real ``convert_hf_to_gguf.py``, which
reads what ``transformers`` writes (``config.json``, ``model.safetensors``) and a real tokenizer.
Nothing is downloaded: the tokenizer is trained by ``sentencepiece`` on text written here (a few
hundred pieces with byte fallback, llama's SentencePiece form, which the converter reads without
any pre-tokenizer hash), the weights are ``LlamaForCausalLM`` with a fixed seed.  Sizes are
multiples of 256 (hidden 256, FFN 512), so every matrix can be a K-quant (Q4_K_M keeps its
layout instead of falling back to 32-blocks).  About 1.6 M parameters: 6 MiB in float32, built
in a second or two.

Needs the extra ``convert`` (torch, transformers, sentencepiece).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HIDDEN = 256
FFN = 512
LAYERS = 2
HEADS = 4
VOCAB = 512  # 256 byte pieces, the ASCII characters, and merges

_WORDS = ("the", "model", "serves", "tokens", "quickly", "while", "control", "plane", "deploys", "quantized",
          "weights", "to", "a", "local", "machine", "and", "checks", "its", "health", "before", "traffic", "arrives",
          "every", "replica", "answers", "completion", "Paris", "is", "capital", "of", "France", "Berlin", "Germany")


def _corpus(path: Path, lines: int = 400) -> None:
    """Sentences from a small word list in a fixed pseudo-random order, and every ASCII character."""
    out = []
    state = 7
    for i in range(lines):
        words = []
        for _ in range(6 + i % 9):
            state = (state * 1103515245 + 12345) % 2**31
            words.append(_WORDS[state % len(_WORDS)])
        out.append(" ".join(words).capitalize() + ".")
    out.append("".join(chr(c) for c in range(33, 127)))
    path.write_text("\n".join(out) + "\n")


def train_tokenizer(folder: Path, vocab_size: int = VOCAB) -> Path:
    """``folder/tokenizer.model``: a SentencePiece BPE model in llama's form (ids 0-2 <unk> <s> </s>, byte fallback)."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / ".corpus.txt"
    _corpus(corpus)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, normalization_rule_name="identity", split_digits=True,
        num_threads=1, minloglevel=2)
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink(missing_ok=True)
    return folder / "tokenizer.model"


def write_tiny_hf_llama(folder: Path, *, dtype: str = "float32", seed: int = 0) -> Path:
    """A complete Hugging Face Llama folder: config.json, generation_config.json, model.safetensors, the
    tokenizer (tokenizer.model, tokenizer_config.json, special_tokens_map.json)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    model_file = train_tokenizer(folder)
    tokenizer = LlamaTokenizer(vocab_file=str(model_file), legacy=False, add_bos_token=True, add_eos_token=False)
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, torch_dtype=dtype)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def parameter_count(folder: Path) -> int:
    """The number of weights in the folder's safetensors header."""
    header: dict[str, Any] = _header(folder / "model.safetensors")
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for d in info["shape"]:
            n *= int(d)
        total += n
    return total


def _header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return dict(json.loads(f.read(n)))
