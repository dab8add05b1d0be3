"""A bounded, read-only walk over a GGUF file's header.

Why not just ``gguf.GGUFReader``?  It is the reference reader and our tests
compare against it, but for *validation* it has two weak spots: on a truncated
file it fails with a numpy reshape error that says nothing about missing bytes,
and on a corrupt array length it can loop for a very long time (reads past the
end return empty arrays, so its offset stops moving).  Model validation must
answer fast and in plain words, so this module walks the header itself:

* every read is checked against the file size before it happens, so a short
  file is reported as *truncated* with the number of bytes expected and found;
* array lengths are checked against the bytes left before anything is looped;
* every count and length taken from the file is held to a cap (:mod:`.limits`)
  before it is used: a string of 2**62 bytes, an array of 2**62 items or a
  million tensors is reported as corrupt, not allocated or looped over, and a
  string that fits in a 40 GB file is still not read when it is larger than any
  real metadata (the whole header, and all the text decoded from it, have caps
  too);
* tensor data is never touched: the file is memory-mapped and only the header
  pages are read, so a 40 GB model costs a few milliseconds.

The format tables (value types, tensor type block sizes, magic, versions) come
from the ``gguf`` package, so new tensor types arrive with a package upgrade.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS

from modserv_shim.modelinfo.facts import ModelInvalid, gib
from modserv_shim.modelinfo.limits import (
    GGUF_ARRAY_MAX_DEPTH,
    GGUF_ARRAY_MAX_LENGTH,
    GGUF_HEADER_MAX_BYTES,
    GGUF_KV_MAX_COUNT,
    GGUF_NAME_MAX_BYTES,
    GGUF_TENSOR_MAX_COUNT,
    GGUF_TEXT_MAX_BYTES,
    file_kind,
)

MAGIC = b"GGUF"
MAX_DIMS = 8  # ggml uses 4; anything above 8 is garbage, not a newer format
SMALL_ARRAY = 4096  # numeric arrays up to this many items are decoded (per-layer head counts)

_SCALARS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array.  ``values`` holds small numeric arrays; big ones and
    string arrays (the vocabulary) are only counted."""

    item_type: GGUFValueType
    length: int
    values: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    offset: int  # relative to the start of the tensor data section
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFLayout:
    path: str
    version: int
    file_size: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data the tensor infos say the file holds."""
        return max((t.offset + t.n_bytes for t in self.tensors), default=0)


class _EndOfFile(Exception):
    pass


class _Corrupt(Exception):
    pass


class _TooLarge(Exception):
    pass


_U64 = struct.Struct("<Q")
# The fewest bytes one metadata entry / one tensor info can take: an empty key (8-byte
# length) + a 4-byte type + a 1-byte value; an empty name + 4-byte dims + 4-byte type +
# 8-byte offset.  A count is checked against them before it is looped over.
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8


class _Cursor:
    """Little-endian reads over a memory map, each checked against its length.

    ``limit`` is where the header must end at the latest: the end of the file, or
    :data:`GGUF_HEADER_MAX_BYTES` into it.  A read past the end of the file is
    :class:`_EndOfFile` (truncated); past the cap inside a longer file, :class:`_TooLarge`.
    ``text`` counts the bytes of strings decoded so far, against :data:`GGUF_TEXT_MAX_BYTES`.
    """

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.limit = min(self.size, GGUF_HEADER_MAX_BYTES)
        self.text = 0

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.limit:
            self._past_limit(self.pos + n)

    def _past_limit(self, end: int) -> None:
        if end > self.size:
            raise _EndOfFile
        raise _TooLarge(f"its header goes on past {gib(GGUF_HEADER_MAX_BYTES)}")

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str, cap: int) -> str:
        """A length-prefixed string of at most ``cap`` bytes; ``what`` names it in an error."""
        n = self.unpack("<Q")
        if n > cap:
            raise _Corrupt(f"{what} claims {n} bytes, more than any real GGUF file has there (limit {cap})")
        self.need(n)
        self.text += n
        if self.text > GGUF_TEXT_MAX_BYTES:
            raise _TooLarge(
                f"the text of its metadata and tensor names adds up to more than {gib(GGUF_TEXT_MAX_BYTES)}"
            )
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str) -> Any:
        try:
            t = GGUFValueType(vtype)
        except ValueError:
            raise _Corrupt(f"metadata {_shown(key)} has unknown value type {vtype}") from None
        if t in _SCALARS:
            return self.unpack(_SCALARS[t])
        if t == GGUFValueType.STRING:
            return self.string(f"the value of metadata {_shown(key)}", GGUF_TEXT_MAX_BYTES)
        return self.array(key, 1)

    def array(self, key: str, depth: int) -> GGUFArray:
        if depth > GGUF_ARRAY_MAX_DEPTH:
            raise _Corrupt(f"metadata {_shown(key)} nests arrays more than {GGUF_ARRAY_MAX_DEPTH} deep")
        raw_item = self.unpack("<I")
        try:
            item = GGUFValueType(raw_item)
        except ValueError:
            raise _Corrupt(f"metadata {_shown(key)} has unknown array item type {raw_item}") from None
        length = self.unpack("<Q")
        if length > GGUF_ARRAY_MAX_LENGTH:
            raise _Corrupt(
                f"metadata {_shown(key)} claims an array of {length} items, more than any real model has"
                f" (limit {GGUF_ARRAY_MAX_LENGTH})"
            )
        if item in _SCALARS:
            width = struct.calcsize(_SCALARS[item])
            self.need(length * width)
            if length <= SMALL_ARRAY:
                fmt = "<" + _SCALARS[item][1] * length
                values = struct.unpack_from(fmt, self.buf, self.pos)
                self.pos += length * width
                return GGUFArray(item, length, tuple(values))
            self.pos += length * width
            return GGUFArray(item, length)
        # Strings or nested arrays: each item takes at least 8 bytes, so a length
        # that cannot fit in what is left is caught before we loop over it.
        self.need(length * 8)
        if item == GGUFValueType.STRING:
            self._skip_strings(length, key)
        else:
            for _ in range(length):
                self.array(key, depth + 1)
        return GGUFArray(item, length)

    def _skip_strings(self, count: int, key: str) -> None:
        """Skip ``count`` length-prefixed strings (a tokenizer's vocabulary: 30k-250k of them), in a
        tight loop: ~0.2 us a string instead of ~1.5 us through :meth:`string`.  Skipped strings are
        never decoded: each length is held to the cap of one string, their sum to the header's."""
        buf, pos, limit, read_len = self.buf, self.pos, self.limit, _U64.unpack_from
        for i in range(count):
            if pos + 8 > limit:
                self._past_limit(pos + 8)
            n = read_len(buf, pos)[0]
            if n > GGUF_TEXT_MAX_BYTES:
                raise _Corrupt(
                    f"item {i} of metadata {_shown(key)} claims a string of {n} bytes, more than any real GGUF"
                    f" file has there (limit {GGUF_TEXT_MAX_BYTES})"
                )
            pos += 8 + n
        if pos > limit:
            self._past_limit(pos)
        self.pos = pos


def _shown(name: str) -> str:
    """A key or tensor name as a message shows it: quoted, and cut when it is long."""
    return repr(name if len(name) <= 80 else name[:77] + "...")


def _tensor_nbytes(name: str, shape: tuple[int, ...], ggml_type: GGMLQuantizationType) -> int:
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % block:
        raise _Corrupt(f"tensor {name} has a row of {shape[0]} values, not a multiple of its {block}-value blocks")
    return n // block * type_size


def _read_tensor_info(cur: _Cursor) -> TensorInfo:
    name = cur.string("a tensor name", GGUF_NAME_MAX_BYTES)
    n_dims = cur.unpack("<I")
    if n_dims > MAX_DIMS:
        raise _Corrupt(f"tensor {_shown(name)} claims {n_dims} dimensions")
    shape = tuple(int(cur.unpack("<Q")) for _ in range(n_dims))
    raw_type = cur.unpack("<I")
    offset = cur.unpack("<Q")
    try:
        ggml_type = GGMLQuantizationType(raw_type)
        GGML_QUANT_SIZES[ggml_type]
    except (ValueError, KeyError):
        raise _Corrupt(
            f"tensor {name} has tensor type {raw_type}, unknown to this version of the gguf package"
            " (the file may need a newer llama.cpp)"
        ) from None
    n_elements = 1
    for d in shape:
        n_elements *= d
    return TensorInfo(name, shape, ggml_type, offset, n_elements, _tensor_nbytes(name, shape, ggml_type))


def _walk(cur: _Cursor, path: str) -> GGUFLayout:
    cur.pos = 4
    version = cur.unpack("<I")
    if version & 0xFFFF == 0 and version:
        raise ModelInvalid(
            f"model file {path} is a big-endian GGUF file; llama.cpp on this kind of machine needs a"
            " little-endian one (re-convert it without --bigendian)",
            problem="unsupported_version",
            path=path,
        )
    if version not in READER_SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in READER_SUPPORTED_VERSIONS)
        raise ModelInvalid(
            f"model file {path} uses GGUF version {version}, which this shim cannot read"
            f" (supported: {supported}); re-convert it with a current llama.cpp",
            problem="unsupported_version",
            path=path,
            details={"version": version},
        )
    tensor_count = cur.unpack("<Q")
    kv_count = cur.unpack("<Q")
    if tensor_count > GGUF_TENSOR_MAX_COUNT:
        raise _Corrupt(
            f"its header claims {tensor_count} tensors, more than any real model has (limit {GGUF_TENSOR_MAX_COUNT})"
        )
    if kv_count > GGUF_KV_MAX_COUNT:
        raise _Corrupt(
            f"its header claims {kv_count} metadata entries, more than any real model has (limit {GGUF_KV_MAX_COUNT})"
        )
    cur.need(kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES)
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cur.string("a metadata key", GGUF_NAME_MAX_BYTES)
        metadata[key] = cur.value(cur.unpack("<I"), key)
    cur.need(tensor_count * _MIN_TENSOR_INFO_BYTES)
    tensors = tuple(_read_tensor_info(cur) for _ in range(tensor_count))
    alignment = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Corrupt(f"general.alignment is {alignment!r}, not a power of two")
    data_offset = -(-cur.pos // alignment) * alignment
    return GGUFLayout(path, version, cur.size, alignment, data_offset, metadata, tensors)


def read_layout(path: Path) -> GGUFLayout:
    """Walk the header of the GGUF file at ``path`` and check the data is all there.

    Raises :class:`ModelInvalid` with ``problem`` one of ``empty``, ``not_gguf``,
    ``unsupported_version``, ``truncated``, ``corrupt`` (including counts and lengths
    over the caps of :mod:`.limits`), ``too_large`` (a header or its text over its
    cap) or ``not_a_file``.
    """
    where = str(path)
    # Path.open, not limits.open_regular: inspect_gguf has checked that this is a regular
    # file, and the check after opening catches one swapped in since (mmap needs a file).
    with path.open("rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise ModelInvalid(
                f"model file {where} is not a regular file but {file_kind(mode)}", problem="not_a_file", path=where
            )
        size = f.seek(0, 2)
        if size == 0:
            raise ModelInvalid(f"model file {where} is empty (0 bytes)", problem="empty", path=where)
        f.seek(0)
        head = f.read(64)
        if not head.startswith(MAGIC):
            raise ModelInvalid(_not_gguf_message(where, head), problem="not_gguf", path=where)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf)
            try:
                layout = _walk(cur, where)
            except _EndOfFile:
                raise ModelInvalid(
                    f"model file {where} is truncated: the file ends after {size} bytes, inside its"
                    " header (re-download or re-copy it)",
                    problem="truncated",
                    path=where,
                    details={"file_bytes": size},
                ) from None
            except _Corrupt as e:
                raise ModelInvalid(
                    f"model file {where} is corrupt: {e} (re-download or re-convert it)",
                    problem="corrupt",
                    path=where,
                ) from None
            except _TooLarge as e:
                raise ModelInvalid(
                    f"model file {where} is not read: {e}, far more than the metadata of any real model"
                    " (a vocabulary of 262k tokens takes ~10 MiB), so the file is damaged or not a model",
                    problem="too_large",
                    path=where,
                ) from None
    found = max(size - layout.data_offset, 0)
    if layout.data_bytes > found:
        raise ModelInvalid(
            f"model file {where} is truncated: expected at least {layout.data_bytes} bytes of tensor"
            f" data, found {found} (re-download or re-copy it)",
            problem="truncated",
            path=where,
            details={"expected_data_bytes": layout.data_bytes, "found_data_bytes": found},
        )
    return layout


def _not_gguf_message(where: str, head: bytes) -> str:
    if head.startswith(b"version https://git-lfs"):
        return (
            f"model file {where} is a Git LFS pointer, not the model itself: fetch the real file"
            " (git lfs pull) and try again"
        )
    return (
        f"model file {where} is not a GGUF file (it does not start with the bytes 'GGUF'); if it is a"
        " Hugging Face model, set modelFile to the folder that holds config.json"
    )
