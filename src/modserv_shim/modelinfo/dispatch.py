"""``inspect_model``: one entry point for whatever ``modelFile`` points at.

A directory is a Hugging Face folder; a file is GGUF when it ends in ``.gguf``
or starts with the GGUF magic (people rename files).  Anything else is
reported with what we expected, instead of a parser's error; a path that is
neither a folder nor a regular file (a FIFO, a device) is refused before it is
opened, since reading it could block for ever or never end.
"""

from __future__ import annotations

import os
from pathlib import Path

from modserv_shim.modelinfo.facts import ModelFacts, ModelInvalid, model_not_found
from modserv_shim.modelinfo.gguf_info import inspect_gguf
from modserv_shim.modelinfo.gguf_layout import MAGIC
from modserv_shim.modelinfo.hf_info import inspect_hf_folder
from modserv_shim.modelinfo.limits import FileRefused, file_kind, open_regular, read_exactly


def inspect_model(path: str | Path) -> ModelFacts:
    """Validate the model at ``path`` (GGUF file or HF folder) and return its facts.

    Raises :class:`~modserv_shim.modelinfo.facts.ModelInvalid` with a message
    for a person; ``problem`` tells the kind (``not_found``, ``truncated``...).
    """
    p = Path(path)
    where = str(p)
    if not p.exists():
        raise model_not_found(where)
    if p.is_dir():
        return inspect_hf_folder(p)
    if not p.is_file():
        raise ModelInvalid(
            f"model file {where} is not a regular file but {file_kind(p.stat().st_mode)}: a model is a GGUF"
            " file or a Hugging Face model folder",
            problem="not_a_file",
            path=where,
        )
    if p.suffix.lower() == ".gguf" or _starts_with_magic(p):
        return inspect_gguf(p)
    if p.name == "config.json" or p.suffix == ".safetensors":
        raise ModelInvalid(
            f"model file {where} is part of a Hugging Face model: set modelFile to the folder {p.parent} instead",
            problem="not_a_model",
            path=where,
        )
    raise ModelInvalid(
        f"model file {where} is neither a GGUF file nor a Hugging Face model folder",
        problem="not_a_model",
        path=where,
    )


def _starts_with_magic(p: Path) -> bool:
    try:
        fd = open_regular(p)
    except (OSError, FileRefused):
        return False
    try:
        return read_exactly(fd, len(MAGIC)) == MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)
