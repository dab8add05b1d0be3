"""Is an installed plugin found the way the server finds it at start-up?

``discover_plugin("shimlet", "mine")`` registers the built-in plugins and every
entry point (groups ``modserv_shim.shimlets`` / ``modserv_shim.pipelines``), as the
server does, and returns the factory registered under that name, or fails with the
server's reason: the name is missing, taken by a built-in, or the entry point does
not import.  Use it in a plugin project's tests, against the installed project::

    def test_the_server_finds_the_shimlet():
        assert discover_plugin("shimlet", "mine") is MyShimlet
"""

from __future__ import annotations

from pathlib import Path

from modserv_shim.builtins import BUILTINS
from modserv_shim.core.registry import ENTRY_POINT_GROUPS, Factory, Kind, Registry, RegistryConfig


def discover_plugin(kind: Kind, name: str) -> Factory:
    """The factory the server would register for ``kind``/``name``; AssertionError with the reason if none."""
    unused = Path("/nonexistent/modserv-shim-discovery")  # nothing is instantiated, nothing written
    registry = Registry(RegistryConfig(data_dir=unused, plugin_dir=unused))
    registry.register_builtins(BUILTINS)
    registry.discover_entry_points()
    for broken in registry.broken:
        if (broken.kind, broken.name) == (kind, name):
            raise AssertionError(f"the server refuses {kind} {name!r} ({broken.source}): {broken.error}")
    if not registry.has(kind, name):
        found = ", ".join(registry.names(kind)) or "none"
        raise AssertionError(
            f"no {kind} named {name!r} in entry-point group {ENTRY_POINT_GROUPS[kind]!r}"
            f" (is the project installed?); {kind}s found: {found}")
    return registry.entry(kind, name).factory
