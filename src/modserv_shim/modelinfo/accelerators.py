"""How much memory the hardware offers: a catalog of GPUs, and the host's RAM.

The catalog maps the names people and clusters use for a GPU to its memory.
People write "NVIDIA H20", "H20" or "nvidia-h20"; GPU feature discovery labels
nodes with ``nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3``.  All of these are
normalised the same way: lower-case, vendor and series words dropped
("nvidia", "tesla", "geforce"), form-factor words dropped ("sxm4", "pcie",
"hbm3"...), separators removed.  "H100-80GB-HBM3" thus becomes ``h10080gb``,
which is an alias of the H100.

Memory sizes are the vendor's nominal figures read as GiB.  The driver reports
a little less (an 80 GB H100 shows 79.6 GiB); the ``gpu_memory_utilization``
headroom in :mod:`modserv_shim.modelinfo.memory` absorbs that.

A plain "A100" is taken to be the **40 GB** model: when a name is ambiguous the
fit check assumes the smaller card.  Guessing too small costs a clear "does not
fit, write A100-80GB" message now; guessing too big costs an out-of-memory
crash after a long wait, which is exactly what the fit check exists to prevent.
Same for "V100" (16 GB).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from modserv_shim.errors import PermanentStepError
from modserv_shim.modelinfo.limits import KERNEL_FILE_MAX_BYTES, FileRefused, read_capped

GIB = 1024**3

_DROP_WORDS = frozenset(
    {"nvidia", "tesla", "geforce", "sxm", "sxm2", "sxm4", "sxm5", "pcie", "hbm2", "hbm2e", "hbm3", "hbm3e"}
)


class UnknownAccelerator(PermanentStepError):
    """``acceleratorType`` names a device the catalog does not know."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        listed = ", ".join(known)
        super().__init__(
            f"unknown acceleratorType {name!r}: cannot tell how much memory it has. Known types: {listed}"
            " (ask the operator to add it to the accelerator catalog)",
            details={"acceleratorType": name},
        )
        self.name = name


@dataclass(frozen=True)
class Accelerator:
    """One kind of device: its display name, memory and the names it goes by."""

    name: str
    memory_gib: float
    aliases: tuple[str, ...] = ()

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)


def normalise(name: str) -> str:
    """The key a device name is matched by: ``"NVIDIA-H100-80GB-HBM3"`` -> ``"h10080gb"``."""
    words = [w for w in re.split(r"[\s_\-/]+", name.lower()) if w and w not in _DROP_WORDS]
    return "".join(words)


_BUILTIN: tuple[Accelerator, ...] = (
    Accelerator("NVIDIA H20", 96),
    Accelerator("NVIDIA H100", 80, ("H100 80GB",)),
    Accelerator("NVIDIA H100 NVL", 94, ("H100 NVL 94GB",)),
    Accelerator("NVIDIA H800", 80, ("H800 80GB",)),
    Accelerator("NVIDIA H200", 141, ("H200 141GB",)),
    Accelerator("NVIDIA A100-40GB", 40, ("A100", "A100 40GB")),
    Accelerator("NVIDIA A100-80GB", 80),
    Accelerator("NVIDIA A800", 80, ("A800 80GB",)),
    Accelerator("NVIDIA L40S", 48),
    Accelerator("NVIDIA L40", 48),
    Accelerator("NVIDIA L20", 48),
    Accelerator("NVIDIA L4", 24),
    Accelerator("NVIDIA A40", 48),
    Accelerator("NVIDIA A10", 24),
    Accelerator("NVIDIA A10G", 24),
    Accelerator("NVIDIA RTX A6000", 48, ("A6000",)),
    Accelerator("NVIDIA T4", 16),
    Accelerator("NVIDIA V100-16GB", 16, ("V100", "V100 16GB")),
    Accelerator("NVIDIA V100-32GB", 32, ("V100 32GB",)),
    Accelerator("NVIDIA GeForce RTX 4090", 24, ("RTX 4090", "4090")),
    Accelerator("NVIDIA GeForce RTX 3090", 24, ("RTX 3090", "3090")),
)


class AcceleratorCatalog:
    """Name -> :class:`Accelerator`, tolerant of how the name is spelled."""

    def __init__(self, accelerators: Iterable[Accelerator]) -> None:
        self._items: tuple[Accelerator, ...] = tuple(accelerators)
        self._by_key: dict[str, Accelerator] = {}
        for acc in self._items:
            for spelling in (acc.name, *acc.aliases):
                self._by_key[normalise(spelling)] = acc

    def lookup(self, name: str) -> Accelerator:
        """The accelerator called ``name``; :class:`UnknownAccelerator` lists the known ones."""
        found = self._by_key.get(normalise(name))
        if found is None:
            raise UnknownAccelerator(name, self.names())
        return found

    def names(self) -> list[str]:
        return sorted(a.name for a in self._items)

    def __iter__(self) -> Iterator[Accelerator]:
        return iter(self._items)

    def with_extra(self, memory_gib_by_name: Mapping[str, float]) -> AcceleratorCatalog:
        """A catalog with operator-supplied devices added (or overriding a built-in)."""
        extra = [Accelerator(name, float(gib_)) for name, gib_ in memory_gib_by_name.items()]
        keys = {normalise(a.name) for a in extra}
        kept = [a for a in self._items if normalise(a.name) not in keys]
        return AcceleratorCatalog([*kept, *extra])


DEFAULT_CATALOG = AcceleratorCatalog(_BUILTIN)


def lookup_accelerator(name: str, catalog: AcceleratorCatalog = DEFAULT_CATALOG) -> Accelerator:
    """Shorthand for ``catalog.lookup(name)`` on the built-in catalog."""
    return catalog.lookup(name)


# ----------------------------------------------------------------- host memory


@dataclass(frozen=True)
class HostMemory:
    """RAM on this machine: ``total`` installed, ``available`` for a new process now.

    ``available`` is the kernel's MemAvailable, lowered to what the shim's own
    cgroup still allows when it runs under a memory limit (a container): the
    local shimlet's servers are its children and share that limit.
    """

    total_bytes: int
    available_bytes: int


def read_host_memory(meminfo: Path = Path("/proc/meminfo"), cgroup_dir: Path = Path("/sys/fs/cgroup")) -> HostMemory:
    """Read :class:`HostMemory` from ``/proc/meminfo`` (and cgroup v2, if limited)."""
    values: dict[str, int] = {}
    for line in _read_kernel_file(meminfo).splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    total = values.get("MemTotal", 0)
    available = values.get("MemAvailable", values.get("MemFree", 0))
    limit, used = _cgroup_limit(cgroup_dir)
    if limit is not None:
        total = min(total, limit) if total else limit
        available = min(available, max(limit - (used or 0), 0))
    return HostMemory(total_bytes=total, available_bytes=available)


def _read_kernel_file(path: Path) -> str:
    """A /proc or cgroup file, read with the same byte cap as model files (:mod:`.limits`)."""
    return read_capped(path, KERNEL_FILE_MAX_BYTES).decode("utf-8", errors="replace")


def _cgroup_limit(cgroup_dir: Path) -> tuple[int | None, int | None]:
    try:
        raw_max = _read_kernel_file(cgroup_dir / "memory.max").strip()
    except (OSError, FileRefused):
        return None, None
    if not raw_max.isdigit():  # "max": no limit
        return None, None
    try:
        used = int(_read_kernel_file(cgroup_dir / "memory.current").strip())
    except (OSError, FileRefused, ValueError):
        used = None
    return int(raw_max), used
