"""Small helpers shared by the simulator modules: timestamps, generated names, stable hashes."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

__all__ = ["clone", "rfc3339", "safe_hash", "sim_uuid", "suffix"]

T = TypeVar("T")

# The alphabet Kubernetes uses for generated name suffixes and template hashes (no vowels).
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def rfc3339(ts: float | None = None) -> str:
    """Seconds-precision RFC 3339 UTC timestamp, as in ``metadata.creationTimestamp``."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def suffix(rng: random.Random, length: int = 5) -> str:
    """A ``generateName``-style random suffix."""
    return "".join(rng.choice(_ALPHABET) for _ in range(length))


def sim_uuid(rng: random.Random) -> str:
    """A version-4 UUID drawn from the simulator's seeded random source (reproducible runs)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def safe_hash(value: Any, length: int = 10) -> str:
    """A stable hash of a JSON value rendered in the safe alphabet (like ``pod-template-hash``)."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    number = int.from_bytes(digest[:8], "big")
    out = []
    for _ in range(length):
        number, rem = divmod(number, len(_ALPHABET))
        out.append(_ALPHABET[rem])
    return "".join(out)


def clone(value: T) -> T:
    """Deep copy (named for readability at call sites)."""
    return copy.deepcopy(value)
