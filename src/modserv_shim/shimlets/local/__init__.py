"""The ``local`` shimlet: runs model servers as processes on this machine (the embedded default).

Files (the layout every shimlet shares, see :mod:`modserv_shim.shimlets`): ``options``
(every option with its type, default and meaning), ``render`` (the process spec: command
line, environment, log files; the check that the program exists), ``status`` (replicas ->
one status), ``shimlet`` (the plugin and its contracts); helpers: ``replica`` (one process
and its supervisor), ``state`` (the JSON state files), ``procfs`` (process identity, exit,
termination), ``ports`` and ``logfiles``.
"""

from modserv_shim.shimlets.local.options import LocalOptions
from modserv_shim.shimlets.local.shimlet import LocalShimlet

__all__ = ["LocalOptions", "LocalShimlet"]
