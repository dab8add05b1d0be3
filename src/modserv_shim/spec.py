"""The deploy request: the brief's JSON body, validated with messages a person reads.

Field names are the brief's contract (camelCase on the wire).  Everything beyond
the brief is optional.  Unknown fields are rejected so that a typo such as
``replicas`` instead of ``replicaCount`` is reported instead of silently ignored.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

from modserv_shim.allowlist import (
    ENV_NAME_RE,
    MAX_ARG_LENGTH,
    MAX_ARGS,
    MAX_ENV_BYTES,
    MAX_ENV_NAME,
    MAX_ENV_VALUE,
    MAX_ENV_VARS,
    MAX_PATH_LENGTH,
    has_control_chars,
)

MODEL_NAME_PATTERN = r"^[a-z]([a-z0-9-]*[a-z0-9])?$"
MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
PLUGIN_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
# Kubernetes resource.Quantity, restricted to the forms people write.
CPU_RE = re.compile(r"^(\d+(\.\d+)?|\.\d+)m?$")
MEMORY_RE = re.compile(r"^(\d+(\.\d+)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}

RUNTIMES = ("auto", "llama.cpp", "vllm", "sglang")
# The largest machines sold have a few TiB of memory and a few hundred cores: a request beyond these is a typo.
MAX_MEMORY_BYTES = 64 * 2**40
MAX_CPU = 4096
MAX_QUANTITY_LENGTH = 32


def memory_bytes(quantity: str) -> int:
    """Bytes in a Kubernetes memory quantity such as ``16Gi`` or ``500M``."""
    m = MEMORY_RE.match(quantity)
    if not m:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    suffix = m.group(3) or ""
    number = float(quantity[: len(quantity) - len(suffix)])
    factor = _BINARY.get(suffix) or _DECIMAL.get(suffix) or 1
    return int(number * factor)


def _short(value: Any) -> str:
    """``repr`` of a value for an error message, cut so that a huge input does not make a huge message."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def suggest_model_name(name: str) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    s = re.sub(r"^[^a-z]+", "", s)
    return s[:63].rstrip("-") or "model"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ResourceRequirements(_Strict):
    acceleratorType: str | None = Field(
        default=None,
        max_length=64,
        description="Accelerator model, e.g. 'NVIDIA H20'. Omit (or 'cpu') for CPU-only.",
        examples=["NVIDIA H20"],
    )
    acceleratorCount: StrictInt = Field(
        default=0, ge=0, le=16, description="Accelerators per replica (tensor parallel size)."
    )
    cpu: str | None = Field(default=None, max_length=MAX_QUANTITY_LENGTH,
                            description="CPU per replica, e.g. '4' or '500m' (at most 4096).",
                            json_schema_extra={"pattern": CPU_RE.pattern})
    memory: str | None = Field(default=None, max_length=MAX_QUANTITY_LENGTH,
                               description="Memory per replica, e.g. '16Gi' (from 1Mi to 64Ti).",
                               json_schema_extra={"pattern": MEMORY_RE.pattern})

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("cpu must be a quantity such as '4' or '500m', not a boolean")
        if isinstance(v, int | float):
            v = str(v)
        if v is not None and (not isinstance(v, str) or len(v) > MAX_QUANTITY_LENGTH or not CPU_RE.match(v)):
            raise ValueError(f"cpu must be a Kubernetes quantity such as '4' or '500m' (got {_short(v)})")
        if v is not None:
            cores = float(v[:-1]) / 1000 if v.endswith("m") else float(v)
            if not 0.001 <= cores <= MAX_CPU:
                raise ValueError(f"cpu must be from 1m to {MAX_CPU} cores (got {v!r})")
        return v

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("memory must be a quantity such as '16Gi', not a boolean")
        if isinstance(v, int):
            v = str(v)
        if v is not None and (not isinstance(v, str) or len(v) > MAX_QUANTITY_LENGTH or not MEMORY_RE.match(v)):
            raise ValueError(
                f"memory must be a Kubernetes quantity such as '16Gi' or '512Mi' (got {_short(v)})"
            )
        if v is not None and not 2**20 <= memory_bytes(v) <= MAX_MEMORY_BYTES:
            raise ValueError(f"memory must be from 1Mi to 64Ti per replica (got {v!r})")
        return v

    @field_validator("acceleratorType")
    @classmethod
    def _accel_type(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = " ".join(v.split())
        if v.lower() in ("", "cpu", "none"):
            return None
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$", v):
            raise ValueError(f"acceleratorType has unexpected characters: {v!r}")
        return v

    @model_validator(mode="after")
    def _count_matches_type(self) -> ResourceRequirements:
        if self.acceleratorType is not None and self.acceleratorCount == 0:
            # 'NVIDIA H20' without a count means one of them.
            object.__setattr__(self, "acceleratorCount", 1)
        if self.acceleratorType is None and self.acceleratorCount > 0:
            raise ValueError(
                "acceleratorCount is set but acceleratorType is not: name the accelerator,"
                " e.g. \"acceleratorType\": \"NVIDIA H20\""
            )
        return self

    @property
    def memory_bytes(self) -> int | None:
        return memory_bytes(self.memory) if self.memory else None


class DeploySpec(_Strict):
    """The body of ``POST /api/v1/modserv/deploy``."""

    modelName: str = Field(
        min_length=1,
        max_length=63,
        description="DNS-safe name: lowercase letters, digits and '-'.",
        examples=["llama-3-8b"],
        json_schema_extra={"pattern": MODEL_NAME_PATTERN},
    )
    modelFile: str = Field(
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="Absolute path of the model as the inference server sees it"
        " (a GGUF file or a Hugging Face folder); no '..', no control characters.",
        json_schema_extra={"pattern": r"^/[^\x00-\x1f\x7f]*$"},
        examples=["/models/llama-3-8b"],
    )
    resourceRequirements: ResourceRequirements = Field(default_factory=ResourceRequirements)
    replicaCount: StrictInt = Field(default=1, ge=1, le=64)
    shimlet: str | None = Field(default=None, max_length=63,
                                description="Environment plugin; server default if omitted.")
    pipeline: str | None = Field(default=None, max_length=63,
                                 description="Deploy flow plugin; server default if omitted.")
    runtime: Literal["auto", "llama.cpp", "vllm", "sglang"] = "auto"
    runtimeArgs: list[str] = Field(
        default_factory=list, max_length=MAX_ARGS,
        description="Extra flags for the inference server, checked against the runtime's allowlist"
        " (docs/SECURITY.md): '--flag value' or '--flag=value'.")
    env: dict[str, str] = Field(
        default_factory=dict, max_length=MAX_ENV_VARS,
        description="Environment variables for the inference server, checked against the runtime's allowlist"
        " and the server's allowed_env setting (docs/SECURITY.md).")
    dryRun: StrictBool = False
    healthCheckTimeout: float | None = Field(
        default=None, gt=0, le=86400, strict=True,
        description="Seconds the health check may take (default grows with model size).")
    contextLength: StrictInt | None = Field(default=None, ge=128, le=1_048_576)
    workloadType: Literal["Deployment", "StatefulSet"] = "Deployment"

    @field_validator("modelName")
    @classmethod
    def _model_name(cls, v: str) -> str:
        if not MODEL_NAME_RE.match(v):
            raise ValueError(
                "modelName must be lowercase letters, digits and '-', start with a letter and"
                f" end with a letter or digit (got {v!r}; try {suggest_model_name(v)!r})"
            )
        return v

    @field_validator("modelFile")
    @classmethod
    def _model_file(cls, v: str) -> str:
        if has_control_chars(v):
            raise ValueError("modelFile must not contain control characters (NUL, newline, ...)")
        if "://" in v:
            raise ValueError(
                f"modelFile must be a filesystem path; remote sources such as {v.split('://', maxsplit=1)[0]}://"
                " are not supported yet"
            )
        if not v.startswith("/"):
            raise ValueError(f"modelFile must be an absolute path (got {v!r})")
        if ".." in PurePosixPath(v).parts:
            raise ValueError(f"modelFile must not contain '..' (got {v!r})")
        return v

    @field_validator("shimlet", "pipeline")
    @classmethod
    def _plugin_name(cls, v: str | None) -> str | None:
        if v is not None and not PLUGIN_NAME_RE.match(v):
            raise ValueError(f"not a plugin name: {v!r}")
        return v

    @field_validator("runtimeArgs")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        for i, a in enumerate(v):
            if len(a) > MAX_ARG_LENGTH or not a or has_control_chars(a):
                raise ValueError(f"runtimeArgs[{i}] must be 1 to {MAX_ARG_LENGTH} characters without control"
                                 " characters")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        total = 0
        for k, val in v.items():
            if len(k) > MAX_ENV_NAME or not ENV_NAME_RE.match(k):
                raise ValueError(f"env name {_short(k)} is not a valid variable name (letters, digits and '_',"
                                 f" at most {MAX_ENV_NAME} characters)")
            if len(val) > MAX_ENV_VALUE:
                raise ValueError(f"env value of {k} is {len(val)} characters; at most {MAX_ENV_VALUE} are accepted")
            if has_control_chars(val):
                raise ValueError(f"env value of {k} must not contain control characters (NUL, newline, ...)")
            total += len(k) + len(val)
        if total > MAX_ENV_BYTES:
            raise ValueError(f"env holds {total} characters in all; at most {MAX_ENV_BYTES} are accepted")
        return v

    def wire(self) -> dict[str, Any]:
        """The JSON form, as stored and shown by the API."""
        return self.model_dump(mode="json")


_SECRET_KEY_RE = re.compile(r"(token|secret|password|passwd|api[_-]?key|credential|authorization)", re.I)
_SECRET_FLAG_RE = re.compile(r"^--?[\w-]*(token|secret|password|passwd|api[_-]?key|credential)[\w-]*$", re.I)
MASK = "***"


def redact(value: Any, *, _under_env: bool = False) -> Any:
    """A copy with secret-looking values masked.

    Masked: every value of an ``env`` mapping, the ``value`` of ``{name, value}`` items in
    an ``env`` list (Kubernetes containers), values under keys like ``*token*`` or
    ``*password*``, and the argument after a flag like ``--api-key`` in a list of strings.
    """
    if isinstance(value, dict):
        if _under_env and "name" in value:  # an item of a Kubernetes env list
            return {**value, "value": MASK} if "value" in value else value
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if _under_env and not isinstance(v, dict | list):
                out[k] = MASK if v not in (None, "") else v
            elif isinstance(k, str) and _SECRET_KEY_RE.search(k) and isinstance(v, str | bytes):
                out[k] = MASK if v else v
            else:
                out[k] = redact(v, _under_env=k == "env")
        return out
    if isinstance(value, list | tuple):
        items = [redact(v, _under_env=_under_env) for v in value]
        for i in range(1, len(items)):
            prev = items[i - 1]
            if isinstance(prev, str) and isinstance(items[i], str) and _SECRET_FLAG_RE.match(prev):
                items[i] = MASK
        return [
            (f"{v.split('=', 1)[0]}={MASK}" if isinstance(v, str) and "=" in v
             and _SECRET_FLAG_RE.match(v.split("=", 1)[0]) else v)
            for v in items
        ]
    return value
