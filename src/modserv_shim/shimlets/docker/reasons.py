"""Why a container is not serving, in words a person reads, with the Docker term beside them.

Two sources: the container's ``State`` after it ended (``ExitCode``, ``OOMKilled``,
``Error``) and the Engine's refusal when a container is created or started ("No such
image", "port is already allocated", "could not select device driver").  Each text
keeps the Engine's term (``OOMKilled``, ``exit code 137``, its own message) so it can
be searched for.  Pure functions over inspect-shaped dicts; missing fields never fail.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

OOM_HINT = "raise resourceRequirements.memory or use a smaller model, quantization or context length"


def state(doc: Mapping[str, Any] | None) -> Mapping[str, Any]:
    value = (doc or {}).get("State")
    return value if isinstance(value, Mapping) else {}


def memory_limit(doc: Mapping[str, Any]) -> int:
    return int(((doc.get("HostConfig") or {}).get("Memory")) or 0)


def _size(n: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:g} {unit}"
    return f"{n} B"


def exit_text(doc: Mapping[str, Any]) -> str:
    """How the container's last run ended: "exited with code 1", "was killed for running out of memory ..."."""
    st = state(doc)
    code = int(st.get("ExitCode") or 0)
    if st.get("OOMKilled"):
        limit = memory_limit(doc)
        within = f" of its {_size(limit)} limit" if limit else ""
        return f"was killed for running out of memory{within} (OOMKilled, exit code {code}); {OOM_HINT}"
    if code > 128 and code - 128 in signal.valid_signals():
        return f"was killed by {signal.Signals(code - 128).name} (exit code {code})"
    error = str(st.get("Error") or "").strip()
    return f"exited with code {code}" + (f" ({error})" if error else "")


def with_lines(text: str, lines: Sequence[str]) -> str:
    if not lines:
        return text + "; it wrote no log lines"
    return text + ". Last log lines:\n" + "\n".join(f"  {line}" for line in lines)


@dataclass(frozen=True)
class Refusal:
    """The Engine refused to create or start a container: the words, and whether waiting can help."""

    text: str
    permanent: bool


def refusal(message: str, *, image: str, port: int | None, what: str) -> Refusal:
    """Plain words for an Engine error when creating or starting a container."""
    lowered = message.lower()
    if "port is already allocated" in lowered or "address already in use" in lowered:
        where = f"host port {port}" if port is not None else "its host port"
        return Refusal(f"{what}: {where} is already in use by another program (port is already allocated: "
                       f"{message})", permanent=False)
    if "could not select device driver" in lowered:
        return Refusal(f"{what}: the Docker host cannot give GPUs to containers (could not select device driver:"
                       f" {message}); install the NVIDIA Container Toolkit there, or deploy without"
                       " acceleratorType", permanent=True)
    if "unresolvable cdi devices" in lowered or "cdi device" in lowered:
        return Refusal(f"{what}: the Docker host does not know the CDI devices asked for ({message})",
                       permanent=True)
    if "no such image" in lowered:
        return Refusal(f"{what}: the image {image} is not on the Docker host (No such image: {message})",
                       permanent=True)
    if "bind source path does not exist" in lowered or "no such file or directory" in lowered:
        return Refusal(f"{what}: a path to mount is missing on the Docker host, probably the model ({message})",
                       permanent=True)
    if "executable file not found" in lowered or "exec format error" in lowered:
        return Refusal(f"{what}: the image {image} cannot run the server's program ({message})", permanent=True)
    if "network" in lowered and "not found" in lowered:
        return Refusal(f"{what}: the Docker network does not exist ({message})", permanent=True)
    return Refusal(f"{what}: the Docker Engine refused: {message}", permanent=False)


def pull_text(image: str, message: str, policy: str) -> str:
    if policy == "never":
        return (f"the image {image} is not on the Docker host and the docker shimlet's pull policy is `never`"
                f" (the Engine said: {message}); load it there (docker load / docker build) or allow pulls")
    return f"cannot pull the image {image}: the Docker Engine said: {message}"
