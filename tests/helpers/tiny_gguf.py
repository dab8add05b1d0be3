"""A tiny random-weight llama GGUF that llama.cpp really loads and serves.

Why: the local shimlet and the llama.cpp runtime need a real model file to
exercise start-up, readiness and one completion, and a 98 MB download is not
always there.  This file is about 0.6 MB, written in a few milliseconds, and
complete enough for ``llama_cpp.Llama`` and ``python -m llama_cpp.server``:

* a SentencePiece-style ("llama") vocabulary with <unk>, <s>, </s>, all 256
  byte-fallback tokens (llama.cpp looks up ``<0x0A>`` for the newline and falls
  back to bytes for any character it cannot piece together) and a few pieces;
* every tensor the llama architecture needs, matrices in F16, norms in F32;
* a small ``tokenizer.chat_template``, so /v1/chat/completions works.

The output is gibberish, of course; only shapes and plumbing are real.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType

EMBED = 128
HEADS = 2
KV_HEADS = 1
HEAD_DIM = EMBED // HEADS
FFN = 128
BLOCKS = 2

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_PIECES = [
    "\u2581",
    *"abcdefghijklmnopqrstuvwxyz",
    "th",
    "he",
    "in",
    "er",
    "an",
    "on",
    "\u2581t",
    "\u2581th",
    "\u2581the",
    "\u2581a",
    "\u2581hello",
    "\u2581world",
]


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types: 3 specials, 256 bytes, then the pieces."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    tokens += _PIECES
    types += [TokenType.NORMAL] * len(_PIECES)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(_PIECES))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama_gguf(
    path: str | os.PathLike[str], *, n_ctx: int = 2048, seed: int = 0, name: str = "tiny-llama"
) -> Path:
    """Write the tiny model to ``path`` and return it as a :class:`Path`."""
    out = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary()
    vocab = len(tokens)

    w = GGUFWriter(str(out), "llama")
    w.add_name(name)
    w.add_context_length(n_ctx)
    w.add_embedding_length(EMBED)
    w.add_block_count(BLOCKS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(EMBED, dtype=np.float32)

    # numpy shapes are (rows, cols); GGUF stores them reversed (ne0 = cols).
    w.add_tensor("token_embd.weight", matrix(vocab, EMBED))
    for i in range(BLOCKS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        w.add_tensor(f"blk.{i}.attn_q.weight", matrix(HEADS * HEAD_DIM, EMBED))
        w.add_tensor(f"blk.{i}.attn_k.weight", matrix(KV_HEADS * HEAD_DIM, EMBED))
        w.add_tensor(f"blk.{i}.attn_v.weight", matrix(KV_HEADS * HEAD_DIM, EMBED))
        w.add_tensor(f"blk.{i}.attn_output.weight", matrix(EMBED, HEADS * HEAD_DIM))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        w.add_tensor(f"blk.{i}.ffn_gate.weight", matrix(FFN, EMBED))
        w.add_tensor(f"blk.{i}.ffn_up.weight", matrix(FFN, EMBED))
        w.add_tensor(f"blk.{i}.ffn_down.weight", matrix(EMBED, FFN))
    w.add_tensor("output_norm.weight", norm())
    w.add_tensor("output.weight", matrix(vocab, EMBED))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def expected_parameter_count(vocab: int | None = None) -> int:
    """Parameters of the tiny model, computed from its dimensions."""
    v = vocab if vocab is not None else len(vocabulary()[0])
    per_block = 2 * EMBED + EMBED * HEAD_DIM * (2 * HEADS + 2 * KV_HEADS) + 3 * EMBED * FFN
    return 2 * v * EMBED + BLOCKS * per_block + EMBED


def write_truncated_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str], keep_fraction: float) -> Path:
    """Copy the first ``keep_fraction`` of ``src`` to ``dst``: an interrupted download."""
    if not 0 <= keep_fraction <= 1:
        raise ValueError("keep_fraction must be between 0 and 1")
    data = Path(src).read_bytes()
    out = Path(dst)
    out.write_bytes(data[: int(len(data) * keep_fraction)])
    return out
