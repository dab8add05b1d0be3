"""What a service keeps private, masked wherever the core stores or shows it.

A pipeline that serves a private model (``privatellm``) sets the step output
:data:`PRIVATE_OUTPUT` to the strings that must not be seen: the folder the model
was fetched into, the file served.  From then on the core replaces each of them by
:data:`PRIVATE_MASK` in the service's step log lines, step parameters and errors,
state-change reasons, runtime log lines and every ``GET`` view of the service.

Masking happens where a line is stored (so the database holds no private path
either), and again where a record is shown (the step outputs the later steps need
keep the real path; their views do not).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PRIVATE_OUTPUT = "private"
PRIVATE_MASK = "<private>"
MIN_PRIVATE = 4  # shorter strings are not masked: they would mask ordinary words


def private_values(outputs: Mapping[str, Any]) -> tuple[str, ...]:
    """The private strings of a service's outputs, longest first (a folder's file before the folder)."""
    found = outputs.get(PRIVATE_OUTPUT)
    if not isinstance(found, list | tuple):
        return ()
    return tuple(sorted({v for v in found if isinstance(v, str) and len(v) >= MIN_PRIVATE}, key=len, reverse=True))


def mask_private(value: Any, private: Iterable[str]) -> Any:
    """A copy of ``value`` (text, or lists and mappings of it) with every private string masked."""
    values = tuple(private)
    if not values:
        return value
    return _mask(value, values)


def _mask(value: Any, private: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for p in private:
            if p in value:
                value = value.replace(p, PRIVATE_MASK)
        return value
    if isinstance(value, Mapping):
        return {k: _mask(v, private) for k, v in value.items() if k != PRIVATE_OUTPUT}
    if isinstance(value, list | tuple):
        return [_mask(v, private) for v in value]
    return value
