"""The ``local`` shimlet: runs model servers as processes on this machine (the embedded default).

Files: ``shimlet`` (the plugin and its contracts), ``replica`` (one process and
its supervisor), ``status`` (replicas -> one status), ``state`` (the JSON state
files), ``procfs`` (process identity, exit, termination), ``ports``,
``logfiles`` and ``options`` (every option with its default).
"""

from modserv_shim.shimlets.local.options import LocalOptions
from modserv_shim.shimlets.local.shimlet import LocalShimlet

__all__ = ["LocalOptions", "LocalShimlet"]
