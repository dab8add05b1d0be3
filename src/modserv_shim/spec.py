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


def cpu_cores(quantity: str) -> float:
    """Cores in a Kubernetes CPU quantity such as ``4``, ``0.5`` or ``500m``."""
    if not CPU_RE.match(quantity):
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


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


MAX_SOURCE_URL = 2048
MAX_SOURCE_FILES = 64
MAX_SOURCE_FILE_NAME = 255
SECRET_NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,62}$"
SECRET_NAME_RE = re.compile(SECRET_NAME_PATTERN)
HUB_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SOURCE_ROOT = "/modelsource"
"""``modelFile`` of a deploy with a ``modelSource`` and no ``modelFile``: ``/modelsource/<file>``, a name
for the file the pipeline fetches (the privatellm pipeline serves it from its cache)."""


def check_https_url(v: str, what: str) -> str:
    """An ``https://host/path`` URL without user, password, query or fragment (credentials come from
    a named secret in the server's configuration, never from a request)."""
    from urllib.parse import urlsplit

    if len(v) > MAX_SOURCE_URL or has_control_chars(v) or " " in v:
        raise ValueError(f"{what} must be an https URL of at most {MAX_SOURCE_URL} characters without spaces or"
                         " control characters")
    try:
        parts = urlsplit(v)
        _ = parts.port
    except ValueError:
        raise ValueError(f"{what} is not a URL: {_short(v)}") from None
    if parts.scheme != "https":
        raise ValueError(f"{what} must be an https:// URL (got {parts.scheme or 'no'} scheme)")
    if not parts.hostname:
        raise ValueError(f"{what} names no host: {_short(v)}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} must not carry a user or password: name a configured secret in"
                         " modelSource.secret instead")
    if parts.query or parts.fragment or v.endswith(("?", "#")):
        raise ValueError(f"{what} must not have a query or fragment (put credentials in a configured secret)")
    if ".." in PurePosixPath(parts.path).parts:
        raise ValueError(f"{what} must not contain '..'")
    return v


def check_source_file(v: str, what: str) -> str:
    """A relative file name of a source (``model.gguf``, ``sub/tokenizer.json``): no ``..``, no leading
    ``/`` or ``.``, no backslash or control characters."""
    if not v or len(v) > MAX_SOURCE_FILE_NAME or has_control_chars(v) or "\\" in v:
        raise ValueError(f"{what} must be 1 to {MAX_SOURCE_FILE_NAME} characters without control characters"
                         " or backslashes")
    parts = v.split("/")
    if v.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ValueError(f"{what} must be a relative path without '..', empty or hidden parts (got {_short(v)})")
    return v


class HubSource(_Strict):
    """A Hugging Face-compatible hub: files are fetched from ``<endpoint>/<repo>/resolve/<revision>/<file>``."""

    endpoint: str = Field(max_length=MAX_SOURCE_URL, description="The hub's https URL, e.g. https://huggingface.co"
                          " or a private mirror.", examples=["https://hub.example.com"])
    repo: str = Field(max_length=193, description="'org/name'.", examples=["acme/support-7b"])
    revision: str = Field(default="main", max_length=128, description="Branch, tag or commit.")
    files: list[str] = Field(min_length=1, max_length=MAX_SOURCE_FILES,
                             description="The files to fetch, relative to the repository's root;"
                             " the first '.gguf' one is served (else the folder).")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return check_https_url(v, "modelSource.hub.endpoint").rstrip("/")

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not HUB_REPO_RE.match(v) or ".." in v:
            raise ValueError(f"modelSource.hub.repo must be 'org/name' (letters, digits, '._-'), got {_short(v)}")
        return v

    @field_validator("revision")
    @classmethod
    def _revision(cls, v: str) -> str:
        if not REVISION_RE.match(v) or ".." in v.split("/") or "//" in v:
            raise ValueError(f"modelSource.hub.revision must be a branch, tag or commit (got {_short(v)})")
        return v

    @field_validator("files")
    @classmethod
    def _files(cls, v: list[str]) -> list[str]:
        for i, f in enumerate(v):
            check_source_file(f, f"modelSource.hub.files[{i}]")
        if len(set(v)) != len(v):
            raise ValueError("modelSource.hub.files names a file twice")
        return v


class ModelSource(_Strict):
    """Where a pipeline that fetches models (``privatellm``) gets the model: one ``url`` or one ``hub``."""

    url: str | None = Field(default=None, max_length=MAX_SOURCE_URL,
                            description="https URL of one model file.", examples=["https://models.example.com/m.gguf"])
    hub: HubSource | None = None
    secret: str | None = Field(
        default=None, max_length=63,
        description="Name of a secret configured on the server (its 'secrets' setting): the bearer token, the"
        " CA to trust and the manifest signing key of this source. Never the credential itself.")
    manifest: dict[str, str] | None = Field(
        default=None, max_length=MAX_SOURCE_FILES,
        description="file -> SHA-256 (64 hex digits) of every fetched file; when omitted, the signed"
        " manifest.json next to the files is fetched.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        check_https_url(v, "modelSource.url")
        name = v.rsplit("/", 1)[-1]
        check_source_file(name, "the file name of modelSource.url")
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        if v is not None and not SECRET_NAME_RE.match(v):
            raise ValueError(f"modelSource.secret must be the name of a configured secret ({SECRET_NAME_PATTERN})")
        return v

    @field_validator("manifest")
    @classmethod
    def _manifest(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return None
        out: dict[str, str] = {}
        for name, digest in v.items():
            check_source_file(name, "a modelSource.manifest file name")
            if not isinstance(digest, str) or not SHA256_RE.match(digest.lower()):
                raise ValueError(f"modelSource.manifest[{name!r}] must be a SHA-256 (64 hex digits)")
            out[name] = digest.lower()
        return out

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.url is None) == (self.hub is None):
            raise ValueError("modelSource needs exactly one of url or hub")
        if self.manifest is not None:
            missing = [f for f in self.files if f not in self.manifest]
            if missing:
                raise ValueError(f"modelSource.manifest has no SHA-256 for {', '.join(missing)}")
        return self

    @property
    def files(self) -> list[str]:
        """The files fetched: the URL's file name, or the hub's files."""
        if self.hub is not None:
            return list(self.hub.files)
        assert self.url is not None
        return [self.url.rsplit("/", 1)[-1]]

    @property
    def served(self) -> str:
        """The file served (relative to the fetched folder); empty: the folder (a Hugging Face model)."""
        files = self.files
        if self.url is not None:
            return files[0]
        ggufs = [f for f in files if f.lower().endswith(".gguf")]
        return sorted(ggufs)[0] if ggufs else ""


def _source_model_file(source: Any) -> str | None:
    """``/modelsource/<file>`` for a raw ``modelSource`` (None when it is not one we can name)."""
    if not isinstance(source, dict):
        return None
    url, hub = source.get("url"), source.get("hub")
    if isinstance(url, str) and "/" in url:
        name = url.rsplit("/", 1)[-1]
    elif isinstance(hub, dict) and isinstance(hub.get("files"), list) and isinstance(hub.get("repo"), str):
        ggufs = sorted(f for f in hub["files"] if isinstance(f, str) and f.lower().endswith(".gguf"))
        name = ggufs[0] if ggufs else hub["repo"].rsplit("/", 1)[-1]
    else:
        return None
    if not name or has_control_chars(name) or len(name) > MAX_SOURCE_FILE_NAME:
        return None
    return f"{SOURCE_ROOT}/{name}"


QUANT_TYPE_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")


class Quantization(_Strict):
    """What the ``quant`` pipeline makes of the model (docs/pipelines.md).  The type is checked against
    llama.cpp's list by the pipeline when the deploy is accepted (422 listing the valid ones)."""

    type: str = Field(min_length=1, max_length=32,
                      description="A llama.cpp quantization type (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, IQ4_XS, ...)"
                      " or 'auto': the largest type whose memory estimate fits resourceRequirements.",
                      examples=["Q4_K_M"], json_schema_extra={"pattern": QUANT_TYPE_RE.pattern})
    allowRequantize: StrictBool = Field(
        default=False, description="Quantize a file that is quantized already (quality drops; off by default).")

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        v = v.strip()
        if not QUANT_TYPE_RE.match(v):
            raise ValueError("quantization.type must be a llama.cpp type such as 'Q4_K_M', or 'auto'"
                             f" (got {_short(v)})")
        return "auto" if v.lower() == "auto" else v.upper()


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
    modelSource: ModelSource | None = Field(
        default=None,
        description="Fetch the model from an https URL or a Hugging Face-compatible hub, with a named secret"
        " (pipelines that fetch: privatellm). modelFile may then be omitted (it reads /modelsource/<file>).")
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
    quantization: Quantization | None = Field(
        default=None, description="The quant pipeline: the type to quantize the model to before serving it.",
        examples=[{"type": "Q4_K_M", "allowRequantize": False}])

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

    @model_validator(mode="before")
    @classmethod
    def _derive_model_file(cls, data: Any) -> Any:
        """With a ``modelSource`` and no ``modelFile``: ``/modelsource/<file>``, the fetched file."""
        if isinstance(data, dict) and data.get("modelSource") is not None and "modelFile" not in data:
            derived = _source_model_file(data["modelSource"])
            if derived is not None:
                return {**data, "modelFile": derived}
        return data

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
