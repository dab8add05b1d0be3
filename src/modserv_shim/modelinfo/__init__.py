"""Model validation: what a model is, whether it is complete, and whether it fits.

Used by the ``model-validation`` step of the default pipeline, and runnable on
its own (``python -m modserv_shim.modelinfo PATH``) so that a validation Job in
a cluster can inspect a volume the shim cannot see and report back JSON.

* :func:`inspect_model` -> :class:`ModelFacts` (GGUF file or Hugging Face folder),
  raising :class:`ModelInvalid` in plain words;
* :func:`check_fit` -> :class:`FitResult`: the memory estimate against the GPUs
  (catalog in :mod:`.accelerators`) or the host's RAM, with suggestions.

This package reads files and ``/proc``; it starts no process and imports no
web framework, so the core may use it.
"""

from modserv_shim.modelinfo.accelerators import (
    DEFAULT_CATALOG,
    Accelerator,
    AcceleratorCatalog,
    HostMemory,
    UnknownAccelerator,
    lookup_accelerator,
    read_host_memory,
)
from modserv_shim.modelinfo.dispatch import inspect_model
from modserv_shim.modelinfo.facts import ModelFacts, ModelInvalid
from modserv_shim.modelinfo.gguf_info import inspect_gguf
from modserv_shim.modelinfo.hf_info import inspect_hf_folder
from modserv_shim.modelinfo.memory import (
    FitResult,
    MemoryEstimate,
    ModelDoesNotFit,
    check_fit,
    default_context_length,
    estimate_memory,
    kv_cache_bytes,
)

__all__ = [
    "DEFAULT_CATALOG",
    "Accelerator",
    "AcceleratorCatalog",
    "FitResult",
    "HostMemory",
    "MemoryEstimate",
    "ModelDoesNotFit",
    "ModelFacts",
    "ModelInvalid",
    "UnknownAccelerator",
    "check_fit",
    "default_context_length",
    "estimate_memory",
    "inspect_gguf",
    "inspect_hf_folder",
    "inspect_model",
    "kv_cache_bytes",
    "lookup_accelerator",
    "read_host_memory",
]
