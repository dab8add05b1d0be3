"""The outputs of the default pipeline: what its steps write and what later steps read.

They are stored with the service (JSON, in ``outputs``), shown by a dry run, and read by the
steps after the one that wrote them -- including steps another pipeline inserts.  Stored
forms are the ones written before these declarations existed, so older records still read.

* ``model`` -- written by model-validation (and by a step that replaces the model file); read by
  config-rendering (runtime, context length, health timeout) and ``check_scale``.
* ``fit`` -- written by model-validation; for people (the numbers behind the fit check).
* ``model_file`` -- written by no default step: a step that makes another model file sets it (and
  ``model``); config-rendering serves it instead of the request's ``modelFile``.
* ``launch`` -- written by config-rendering; read by resource-deployment and health-check.
* ``workload`` -- written by config-rendering when the shimlet renders one; for people (dry runs).
* ``endpoint`` -- written by health-check; for people.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modserv_shim.kit.pipeline import Output, outputs_table
from modserv_shim.modelinfo import ModelFacts
from modserv_shim.plugins import LaunchSpec

MODEL: Output[ModelFacts] = Output(
    "model", "what the model is: ModelFacts.to_dict() of the file that will be served",
    stored=dict, encode=ModelFacts.to_dict, decode=ModelFacts.from_dict)
FIT: Output[Mapping[str, Any]] = Output(
    "fit", "the fit check: FitResult.to_dict() (verdict, memory estimate, suggestions)", stored=dict)
MODEL_FILE: Output[str] = Output(
    "model_file", "the model file to serve instead of the request's modelFile (e.g. a quantized copy)",
    stored=str)
LAUNCH: Output[LaunchSpec] = Output(
    "launch", "how to start a replica: LaunchSpec.to_dict() (runtime, command, image, probes)",
    stored=dict, encode=LaunchSpec.to_dict, decode=LaunchSpec.from_dict)
WORKLOAD: Output[Mapping[str, Any]] = Output(
    "workload", "what the shimlet would apply (manifests, a process spec), when it can render one", stored=dict)
ENDPOINT: Output[str | None] = Output(
    "endpoint", "the OpenAI endpoint that answered the health check", stored=(str, type(None)))

ALL: tuple[Output[Any], ...] = (MODEL, FIT, MODEL_FILE, LAUNCH, WORKLOAD, ENDPOINT)


def markdown() -> str:
    """The outputs as a Markdown table."""
    return outputs_table(ALL)
