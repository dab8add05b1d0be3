"""Is a safetensors file whole?  Answered from its size and its header alone.

A safetensors file is an 8-byte little-endian header length, a JSON header
giving every tensor's ``data_offsets``, then the data.  So the data a complete
file must hold is the largest end offset in the header, and a download cut
short shows up as fewer bytes than that, without reading any tensor data.

One case is let through on purpose: a header length of 0.  No real file has
it; it is what a pre-allocated or sparse placeholder reads as, and such a file
is then judged by its size only (as the index's ``total_size`` check does).

The header length comes from the file itself, so it is checked before anything
is read: at most the format's own limit (100,000,000 bytes), and no more than
the file holds.  A shard that is not a regular file (a FIFO would block the
read for ever) is reported as such, unread.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from modserv_shim.modelinfo.limits import SAFETENSORS_HEADER_MAX_BYTES, FileRefused, open_regular, read_exactly

HEADER_LEN_BYTES = 8
MAX_HEADER_BYTES = SAFETENSORS_HEADER_MAX_BYTES  # the limit the safetensors format sets


@dataclass(frozen=True)
class ShardCheck:
    """What one file holds.  ``expected_data_bytes`` is None when the header is unknown."""

    name: str
    size: int
    data_bytes: int
    expected_data_bytes: int | None = None
    problem: str | None = None  # "short", "corrupt" or "not_a_file"
    reason: str = ""  # a predicate: "is only 4 bytes", "has 10 of 20 bytes of tensor data"


def check_shard(path: Path) -> ShardCheck:
    """Judge the safetensors file at ``path`` from its size and header; ``OSError`` when unreadable."""
    name = path.name
    try:
        fd = open_regular(path)
    except FileRefused as e:
        return ShardCheck(name, 0, 0, problem="not_a_file", reason=f"is {e.kind}")
    try:
        size = os.fstat(fd).st_size
        if size <= HEADER_LEN_BYTES:
            return ShardCheck(name, size, 0, problem="short", reason=f"is only {size} bytes")
        head = read_exactly(fd, HEADER_LEN_BYTES)
        if len(head) < HEADER_LEN_BYTES:  # cut while we looked
            return ShardCheck(name, size, 0, problem="short", reason=f"is only {len(head)} bytes")
        (header_len,) = struct.unpack("<Q", head)
        if header_len == 0:
            return ShardCheck(name, size, size)
        if header_len > MAX_HEADER_BYTES:
            return ShardCheck(
                name,
                size,
                0,
                problem="corrupt",
                reason=f"claims a header of {header_len} bytes, more than the {MAX_HEADER_BYTES} the safetensors"
                " format allows",
            )
        if HEADER_LEN_BYTES + header_len > size:
            return ShardCheck(name, size, 0, problem="short", reason=f"ends inside its header ({size} bytes)")
        raw = read_exactly(fd, header_len)
    finally:
        os.close(fd)
    if len(raw) < header_len:
        return ShardCheck(name, size, 0, problem="short", reason=f"ends inside its header ({size} bytes)")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ShardCheck(name, size, 0, problem="corrupt", reason="has a header that is not JSON")
    except RecursionError:
        return ShardCheck(
            name, size, 0, problem="corrupt", reason="has a header nested too deeply to be a safetensors header"
        )
    if not isinstance(header, dict):
        return ShardCheck(name, size, 0, problem="corrupt", reason="has a header that is not a JSON object")
    expected = 0
    for key, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) and key != "__metadata__" else None
        if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
            expected = max(expected, offsets[1])
    data = size - HEADER_LEN_BYTES - header_len
    if data < expected:
        return ShardCheck(
            name, size, data, expected, problem="short", reason=f"has {data} of {expected} bytes of tensor data"
        )
    return ShardCheck(name, size, data, expected)
