"""The plugin kit: the shared parts a shimlet or a pipeline is built from.

:mod:`modserv_shim.plugins` says *what* a plugin must provide (the Protocols); the kit
gives the parts that make it short to write:

* :mod:`modserv_shim.kit.options` -- options declared once as a pydantic model
  (:class:`PluginOptions`): unknown keys refused, types checked, defaults documented
  from the model.
* :mod:`modserv_shim.kit.shimlet` -- :class:`ShimletBase` (start once, auto-start,
  refuse after close) and :class:`WatchHub` (one status stream fanned out to every
  watcher, repeats dropped), keyed by :func:`status_key`.
* :mod:`modserv_shim.kit.pipeline` -- :class:`DeclaredPipeline`: each step declared once
  with :func:`step` (handler, phase, timeout, retry policy, the :class:`Output` keys it
  reads and writes); a pipeline extends another by inserting, replacing or removing
  steps (:func:`insert`, :func:`replace_step`, :func:`remove`).
* :mod:`modserv_shim.kit.files` -- :func:`~modserv_shim.kit.files.publish`: a file a step made
  takes its final name atomically and durably (never seen half written).
* :mod:`modserv_shim.allowlist` -- what a request may put into a process (each runtime
  in :mod:`modserv_shim.runtimes` declares the variables and flags it accepts).

Like :mod:`modserv_shim.plugins`, the kit imports no web framework, Kubernetes client
or process code, and nothing from the core.  Contract test suites and test doubles for
plugin authors are in :mod:`modserv_shim.testing` (needs the ``testing`` extra).
"""

from modserv_shim.kit.options import OptionDoc, PluginOptions
from modserv_shim.kit.pipeline import (
    DeclaredPipeline,
    Output,
    PipelineDeclarationError,
    Step,
    insert,
    outputs_table,
    remove,
    replace_step,
    step,
)
from modserv_shim.kit.shimlet import Event, ShimletBase, StatusKey, WatchHub, status_key

__all__ = [
    "DeclaredPipeline",
    "Event",
    "OptionDoc",
    "Output",
    "PipelineDeclarationError",
    "PluginOptions",
    "ShimletBase",
    "StatusKey",
    "Step",
    "WatchHub",
    "insert",
    "outputs_table",
    "remove",
    "replace_step",
    "status_key",
    "step",
]
