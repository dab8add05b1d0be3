"""The outputs of the ``privatellm`` steps (beside the default pipeline's, :mod:`..opensourcellm.outputs`).

* ``fetched`` -- written by model-fetch; read by model-verification: the cache folder, each file's
  path in it and the file to serve.
* ``model_file`` (the default pipeline's) -- written by model-verification once every file matches
  the manifest: the verified file the later steps serve (the request's ``modelFile`` is
  ``/modelsource/<file>``, a name).
* ``manifest`` -- written by model-verification: file -> SHA-256 it checked, and where the
  manifest came from (``request`` or the signed/unsigned URL).
* ``private`` -- written by model-fetch and model-verification: the cache folder and the served
  file, which the core masks in every log line, step parameter, reason and view of the service
  (:mod:`modserv_shim.private`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modserv_shim.kit.pipeline import Output, outputs_table
from modserv_shim.pipelines.opensourcellm import MODEL_FILE
from modserv_shim.private import PRIVATE_OUTPUT

FETCHED: Output[Mapping[str, Any]] = Output(
    "fetched", "the fetched model: {dir, files: {name: path}, serve: path} in the model cache", stored=dict)
MANIFEST: Output[Mapping[str, Any]] = Output(
    "manifest", "what model-verification checked: {source, files: {name: sha256}}", stored=dict)

PRIVATE: Output[list[str]] = Output(
    PRIVATE_OUTPUT, "paths masked as `<private>` in the service's logs and views: the cache folder, the served file",
    stored=list)

ALL = (FETCHED, MANIFEST, MODEL_FILE, PRIVATE)


def markdown() -> str:
    """The outputs as a Markdown table."""
    return outputs_table(ALL)
