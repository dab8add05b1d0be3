"""How much of a model's files validation will read, and the one reader that keeps to it.

Model validation reads metadata only: a Hugging Face folder's ``config.json``, its
safetensors index and the header of each shard, a GGUF file's header.  Real metadata
is small (a config is a few KiB, the largest index a few tens of MiB), but the file
at the path may be anything: a 1 GiB file saved as ``config.json`` once took 4.5 s
and 2.2 GB of memory to be refused as "not valid JSON".  So every read here has a
cap, chosen well above any real file and far below what would hurt the server:

* :func:`read_capped` opens without blocking, refuses anything but a regular file
  (a FIFO would make the read wait for ever, a device would never end), refuses a
  file whose ``stat`` size is over the cap, and then reads at most ``cap + 1``
  bytes, because a file can grow while it is read and ``/proc`` files report a
  size of 0;
* :func:`read_model_json` adds what a person needs when a model's JSON file is
  refused, as a :class:`~modserv_shim.modelinfo.facts.ModelInvalid` (a permanent
  step failure: the service's reason, HTTP 422 for a dry run), and turns JSON
  nested too deeply for the parser (``RecursionError``) into the same.

The GGUF limits are applied while its header is walked (:mod:`.gguf_layout`): they
bound what a count or length field taken from the file may make us allocate or loop
over, before the bytes it claims are checked against the file's size.

Parsing JSON costs memory beyond the bytes read: ~3-7x their size for real files
and up to ~25x for hostile ones made of empty objects, so a hostile file at its cap
still costs ~250 MiB (config), ~1.5 GiB (index) or ~2.3 GiB (a safetensors header at
the format's limit); docs/memory-estimate.md, "Read limits", has the measurements.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from modserv_shim.modelinfo.facts import ModelInvalid, gib

KIB = 1024
MIB = 1024 * KIB

# -- Hugging Face folders -------------------------------------------------------------

# A causal LM's config.json is 1-10 KiB; multimodal ones with nested vision and audio
# configs reach ~100 KiB.  16 MiB is 100x more than any real one and still parses in
# well under a second.
CONFIG_MAX_BYTES = 16 * MIB

# The index maps every tensor name to its shard, ~100 bytes a tensor: Llama-3-70B's is
# ~60 KiB, DeepSeek-V3's (91k tensors with their FP8 scales) ~9 MiB, Kimi-K2's ~15 MiB.
# 64 MiB leaves room for a model four times larger.
INDEX_MAX_BYTES = 64 * MIB

# The safetensors format's own limit (MAX_HEADER_SIZE in the reference implementation,
# 100,000,000 bytes): no loader opens a file whose header is larger, so neither do we.
SAFETENSORS_HEADER_MAX_BYTES = 100_000_000

# -- GGUF ---------------------------------------------------------------------------

# The header (metadata and tensor list) of real files is 1-50 MiB, almost all of it the
# vocabulary: 262k tokens with their scores and types (Gemma 3), or 128k-152k tokens and
# as many BPE merges (Llama 3, Qwen).  256 MiB is 5x the largest; above it a file is not
# walked, which also bounds the time a hostile header can cost.
GGUF_HEADER_MAX_BYTES = 256 * MIB

# One metadata key or tensor name: real ones are under 100 bytes, and llama.cpp refuses
# tensor names of 64 bytes or more.
GGUF_NAME_MAX_BYTES = 4 * KIB

# The text decoded into memory from one header: keys, string values and tensor names
# together (vocabularies are skipped, not decoded).  Real files have a few KiB, or up to
# ~35 MiB when a converter embeds the Hugging Face tokenizer.json; a hostile file cannot
# make validation hold more than this.
GGUF_TEXT_MAX_BYTES = 64 * MIB

# Items of one metadata array: vocabularies hold 32k-262k tokens and merge lists up to
# ~500k; 16 Mi items is 30x that.
GGUF_ARRAY_MAX_LENGTH = 16 * 1024 * 1024

# Arrays of arrays: the format allows them, no converter writes them.
GGUF_ARRAY_MAX_DEPTH = 4

# Metadata keys: real files have 20-60.
GGUF_KV_MAX_COUNT = 65_536

# Tensors: a dense model has ~10 a layer (Llama-3-405B: 1,138), MoE files with merged
# experts about as many; even one tensor per expert (Arctic: 35 layers x 128 experts x 3)
# stays under 14k.  Each costs a few hundred bytes of memory while validating.
GGUF_TENSOR_MAX_COUNT = 131_072

# -- kernel files (accelerators.read_host_memory) -----------------------------------------

# /proc/meminfo is ~1.5 KiB and cgroup files a line; the cap only keeps an impostor bind-mounted
# over them from being read whole.
KERNEL_FILE_MAX_BYTES = 1 * MIB

_READ_CHUNK = 64 * KIB

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class FileRefused(Exception):
    """A file was not read whole.  ``reason`` completes "<name> in <folder> ...":
    "is 1.0 GiB; files over 16.0 MiB are not read".  ``size`` is the size seen (None
    for a file that is not regular); ``problem`` is ``too_large`` or ``not_a_file``."""

    def __init__(
        self, reason: str, *, problem: str, size: int | None = None, cap: int | None = None, kind: str = "a file"
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.problem = problem
        self.size = size
        self.cap = cap
        self.kind = kind  # "a named pipe (FIFO)"... for a file that is not regular


def file_kind(mode: int) -> str:
    """What a file that is not regular is, for a message: "a named pipe (FIFO)", "a directory"..."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "a file of an unknown kind"


def open_regular(path: Path) -> int:
    """Open ``path`` for reading and return the descriptor, or raise :class:`FileRefused`
    when it is not a regular file.  Opening does not block (``O_NONBLOCK``), so a FIFO is
    refused instead of waiting for a writer; reads of a regular file are unaffected."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = file_kind(mode)
            raise FileRefused(
                f"is not a regular file but {kind}; model validation reads only regular files",
                problem="not_a_file",
                kind=kind,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_exactly(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes from ``fd``'s position: fewer only at the end of the file."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_capped(path: Path, cap: int) -> bytes:
    """The whole of the regular file at ``path``, if it holds at most ``cap`` bytes.

    Raises :class:`FileRefused` for a file that is not regular or is (or grows) over
    ``cap``, and ``OSError`` when it cannot be opened or read.
    """
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > cap:
            raise FileRefused(
                f"is {gib(size)}; files over {gib(cap)} are not read", problem="too_large", size=size, cap=cap
            )
        # Ask for one byte more than stat promised: a file that grew (or a /proc file,
        # whose size reads as 0) shows it, and then we go on in chunks up to cap + 1.
        parts = [read_exactly(fd, size + 1)]
        total = len(parts[0])
        while total > size and total <= cap:
            chunk = os.read(fd, min(_READ_CHUNK, cap + 1 - total))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > cap:
        raise FileRefused(
            f"grew past {gib(cap)} while it was read; files over {gib(cap)} are not read",
            problem="too_large",
            size=total,
            cap=cap,
        )
    return b"".join(parts)


def read_model_json(path: Path, where: str, *, cap: int, typical: str, problem: str = "bad_config") -> Any:
    """Read and parse the JSON file at ``path`` of the model at ``where``, at most ``cap`` bytes.

    ``typical`` says, for a person, how large the file really is ("a model's config.json
    is a few KiB").  Raises :class:`ModelInvalid`: ``problem`` (by default ``bad_config``)
    for text that is not UTF-8 JSON or is nested too deeply to parse, ``too_large`` or
    ``not_a_file`` when the file is refused unread.  ``OSError`` is left to the caller's
    :func:`~modserv_shim.modelinfo.facts.readable`.
    """
    name = path.name
    try:
        raw = read_capped(path, cap)
    except FileRefused as e:
        if e.problem == "too_large":
            message = (
                f"{name} in {where} {e.reason}: {typical}, so this file is probably not the model's"
                f" {name} (put the right file there)"
            )
        else:
            message = f"{name} in {where} {e.reason} (put the model's {name} there as a plain file)"
        details = {"file": name, "file_bytes": e.size, "limit_bytes": e.cap} if e.size is not None else {"file": name}
        raise ModelInvalid(message, problem=e.problem, path=where, details=details) from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelInvalid(f"{name} in {where} is not valid JSON ({e})", problem=problem, path=where) from None
    except RecursionError:
        raise ModelInvalid(
            f"{name} in {where} nests lists or objects too deeply to be read (hundreds of levels;"
            f" a real {name} nests a few), so the file is damaged or is not the model's {name}",
            problem=problem,
            path=where,
        ) from None
