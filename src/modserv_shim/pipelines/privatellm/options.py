"""Options of the ``privatellm`` pipeline (config ``pipelines.privatellm.options``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from modserv_shim.pipelines.opensourcellm import OpenSourceLLMOptions


class PrivateLLMOptions(OpenSourceLLMOptions):
    """The default pipeline's options, and how models are fetched and verified."""

    label: ClassVar[str] = "privatellm pipeline"

    cache_dir: Path | None = Field(None, description="the model cache; default: `<data_dir>/privatellm/models`")
    parallel_files: int = Field(4, ge=1, le=32, description="files of one source fetched at the same time")
    resume_attempts: int = Field(5, ge=0, le=100,
                                 description="times a broken download resumes (Range) without progress before"
                                 " the step fails (and is retried per its retry policy)")
    progress_interval: float = Field(2.0, gt=0, le=60, description="seconds between two progress lines in the"
                                     " model-fetch log")
    read_timeout: float = Field(60.0, gt=0, description="seconds without a byte from the source before a"
                                " download counts as broken (and resumes)")
    groups: list[str] = Field(default_factory=list, max_length=100,
                              description="groups whose operators may deploy a modelSource that names no secret,"
                              " or no modelSource (a secret's own `groups` decide for its sources); none: admins only")
    allow_unsigned_manifest: bool = Field(
        False, description="accept a manifest.json fetched from a source whose secret has no public_key_file"
        " (it then guards against corruption, not against a hostile source)")
