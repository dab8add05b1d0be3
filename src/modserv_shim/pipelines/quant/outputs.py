"""The output model-quantization adds to opensourcellm's (it also writes ``model_file``, ``model`` and ``fit``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modserv_shim.kit.pipeline import Output, outputs_table

QUANTIZATION: Output[Mapping[str, Any]] = Output(
    "quantization",
    "what model-quantization made: type (null: served as it is), source, its SHA-256, the served file and its"
    " weights bytes", stored=dict)

ALL: tuple[Output[Any], ...] = (QUANTIZATION,)


def markdown() -> str:
    """The outputs as a Markdown table."""
    return outputs_table(ALL)
