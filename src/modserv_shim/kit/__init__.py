"""The plugin kit: the shared parts a shimlet or a pipeline is built from.

:mod:`modserv_shim.plugins` says *what* a plugin must provide (the Protocols); the kit
gives the parts that make it short to write:

* :mod:`modserv_shim.kit.options` -- options declared once as a pydantic model
  (:class:`~modserv_shim.kit.options.PluginOptions`): unknown keys refused, types
  checked, defaults documented from the model.

Like :mod:`modserv_shim.plugins`, the kit imports no web framework, Kubernetes client
or process code, and nothing from the core.
"""

from modserv_shim.kit.options import OptionDoc, PluginOptions

__all__ = ["OptionDoc", "PluginOptions"]
