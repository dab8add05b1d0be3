"""Is a safetensors file whole?  Answered from its size and its header alone.

A safetensors file is an 8-byte little-endian header length, a JSON header
giving every tensor's ``data_offsets``, then the data.  So the data a complete
file must hold is the largest end offset in the header, and a download cut
short shows up as fewer bytes than that, without reading any tensor data.

One case is let through on purpose: a header length of 0.  No real file has
it; it is what a pre-allocated or sparse placeholder reads as, and such a file
is then judged by its size only (as the index's ``total_size`` check does).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

HEADER_LEN_BYTES = 8
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the safetensors format sets


@dataclass(frozen=True)
class ShardCheck:
    """What one file holds.  ``expected_data_bytes`` is None when the header is unknown."""

    name: str
    size: int
    data_bytes: int
    expected_data_bytes: int | None = None
    problem: str | None = None  # "short" or "corrupt"
    reason: str = ""  # a predicate: "is only 4 bytes", "has 10 of 20 bytes of tensor data"


def check_shard(path: Path) -> ShardCheck:
    size = path.stat().st_size
    name = path.name
    if size <= HEADER_LEN_BYTES:
        return ShardCheck(name, size, 0, problem="short", reason=f"is only {size} bytes")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(HEADER_LEN_BYTES))
        if header_len == 0:
            return ShardCheck(name, size, size)
        if header_len > MAX_HEADER_BYTES:
            return ShardCheck(name, size, 0, problem="corrupt", reason=f"claims a header of {header_len} bytes")
        if HEADER_LEN_BYTES + header_len > size:
            return ShardCheck(name, size, 0, problem="short", reason=f"ends inside its header ({size} bytes)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ShardCheck(name, size, 0, problem="corrupt", reason="has a header that is not JSON")
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
