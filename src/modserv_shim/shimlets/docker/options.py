"""Options of the docker shimlet (``shimlets.docker.options`` in the config file).

Every key, its type, default and meaning is declared once, in :class:`DockerOptions`
(with :class:`ImageChoice` for an entry of ``images`` and :class:`ModelVolume` for
``model_volume``); docs/docker.md shows the tables
:meth:`~modserv_shim.kit.options.PluginOptions.markdown_table` makes of them.
Unknown keys and wrong types are refused (:class:`~modserv_shim.errors.ValidationFailed`).

Why ``host`` is resolved here and not left to the client library: aiodocker would also
read Docker *contexts* from ``~/.docker``, so the Engine the shim talks to could change
with a file the admin never meant for it.  We read exactly ``host``, else ``DOCKER_HOST``,
else the local socket.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from modserv_shim import __version__
from modserv_shim.errors import PermanentStepError
from modserv_shim.kit.options import PluginOptions, RestartRuleOptions
from modserv_shim.spec import MEMORY_RE, memory_bytes

LOCAL_SOCKET = "unix:///var/run/docker.sock"
DEFAULT_VALIDATION_IMAGE = f"ghcr.io/modserv-shim/modserv-shim:{__version__.split('+')[0]}"
_HOST_RE = re.compile(r"^(unix://|tcp://|https?://|ssh://)\S+$")
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def _absolute(value: str) -> str:
    p = PurePosixPath(value)
    if not p.is_absolute() or ".." in p.parts:
        raise ValueError(f"must be an absolute path without '..', got {value!r}")
    return value


class ImageChoice(PluginOptions):
    """One runtime's image, and the program it runs when that is not the runtime's usual one."""

    label: ClassVar[str] = "docker shimlet images entry"

    image: str = Field(min_length=1, max_length=512, description="the image reference (`registry/name:tag`)")
    program: str | None = Field(
        None, min_length=1, max_length=64,
        description="which program the image runs for the runtime (`llama-cpp-python` for `python3 -m"
        " llama_cpp.server` instead of `llama-server`); unset: the runtime's usual one")


class ModelVolume(PluginOptions):
    """Where the model files are on the Docker host, mounted read-only into every container.

    * unset (default): ``modelFile`` is a path on the Docker host, bound at the same path;
    * ``{type: bind, source: /srv/models}``: that host folder, at ``target`` (default ``source``);
    * ``{type: volume, source: models, target: /models}``: a named Docker volume.

    With ``source`` set, ``modelFile`` must lie under ``target``.
    """

    label: ClassVar[str] = "docker shimlet model_volume"

    type: Literal["bind", "volume"] = Field("bind", description="`bind`: a host folder; `volume`: a named volume")
    source: str | None = Field(
        None, description="the host folder (bind) or the volume's name (volume); unset (bind only): each model's"
        " own path")
    target: str | None = Field(None, description="where the containers see it; default: `source` (bind)")

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(value)

    @model_validator(mode="after")
    def _fits_type(self) -> Self:
        if self.type == "volume":
            if not self.source or not _NAME_RE.match(self.source):
                raise ValueError("of type volume needs source, the name of a Docker volume")
            if self.target is None:
                raise ValueError("of type volume needs target, where the containers see the volume")
        elif self.source is not None:
            _absolute(self.source)
        elif self.target is not None:
            raise ValueError("of type bind needs source when target is set")
        return self

    @property
    def root(self) -> str | None:
        """The path in the container where the volume's root appears; None for a per-model bind."""
        return self.target or self.source if self.source is not None else None

    def mount(self, model_file: str) -> dict[str, Any]:
        """The Engine's ``Mounts`` entry that makes ``model_file`` visible read-only at its own path."""
        root = self.root
        if root is None:
            return {"Type": "bind", "Source": model_file, "Target": model_file, "ReadOnly": True}
        target = PurePosixPath(model_file)
        if target != PurePosixPath(root) and PurePosixPath(root) not in target.parents:
            raise PermanentStepError(
                f"modelFile {model_file} is not on the model volume, which the containers see at {root}"
                f" ({self.type} {self.source}); put the model under {root} or change the docker shimlet's"
                " model_volume")
        return {"Type": self.type, "Source": self.source, "Target": root, "ReadOnly": True}


class DockerOptions(RestartRuleOptions):
    """Every option of the docker shimlet."""

    label: ClassVar[str] = "docker shimlet"

    host: str | None = Field(
        None, description="the Engine's address (`unix:///var/run/docker.sock`, `tcp://gpu-1:2376`); unset:"
        " `DOCKER_HOST`, else the local socket")
    tls_ca: str | None = Field(None, description="CA certificate file that signed the Engine's certificate (TCP)")
    tls_cert: str | None = Field(None, description="client certificate file (TCP with TLS)")
    tls_key: str | None = Field(None, description="client key file (TCP with TLS)")
    tls_verify: bool = Field(True, description="check the Engine's certificate against `tls_ca`")
    network: str = Field(
        "host", min_length=1, max_length=128,
        description="`host`: the servers share the host's network and listen on `publish_host`:<free port>;"
        " else a named network, the runtime's port published on `publish_host`:<free port>")
    publish_host: str = Field("127.0.0.1", min_length=1, description="host address the ports are published on")
    endpoint_host: str | None = Field(
        None, description="host in the endpoint URL and the probes; unset: `publish_host`, or the Engine's host"
        " name (TCP) or 127.0.0.1 when `publish_host` is a wildcard")
    port_range: list[int] = Field(
        default_factory=lambda: [30000, 32767], description="host ports given to replicas: `[first, last]`")
    images: dict[str, str | ImageChoice] = Field(
        default_factory=dict, description="runtime name → image (`{vllm: vllm/vllm-openai:v0.8.5}`), or"
        " `{image: ..., program: ...}` when the image runs another program for that runtime")
    pull: Literal["missing", "always", "never"] = Field(
        "missing", description="pull the image when it is missing, before every create, or never")
    gpu_runtime: Literal["nvidia", "cdi"] = Field(
        "nvidia", description="how GPUs are asked for: `nvidia` device requests (`Count` = `acceleratorCount`),"
        " or the CDI device names in `cdi_devices`")
    cdi_devices: list[str] = Field(
        default_factory=lambda: ["nvidia.com/gpu=all"], description="CDI device names given to a replica that"
        " asks for GPUs (with `gpu_runtime: cdi`)")
    shm_size: str | None = Field(
        None, description="size of `/dev/shm` (`8Gi`); unset: Docker's default (64 MiB), too small for tensor"
        " parallel")
    restart: Literal["no", "on-failure", "unless-stopped", "always"] = Field(
        "no", description="Docker's restart policy; `no`: the shim restarts a dead container itself (with"
        " back-off, `max_start_failures`)")
    model_volume: ModelVolume = Field(
        default_factory=ModelVolume, description="where the model is on the Docker host (see below)")
    model_validation: Literal["auto", "shim", "container"] = Field(
        "auto", description="where model-validation reads the model: `shim` (the shim reads it itself, at the"
        " path on the Docker host), `container` (a short container of `validation_image` with the model mounted"
        " as the replicas see it), `auto`: `shim` when the Engine is on this machine (a Unix socket) and the"
        " model is a path there (not a named volume), else `container`")
    validation_image: str | None = Field(
        None, min_length=1, description="image of the validation container (needs Python and `modserv_shim`);"
        " unset: `ghcr.io/modserv-shim/modserv-shim:<version>`")
    validation_timeout: float = Field(300.0, gt=0, description="seconds the validation container may take")
    probe_interval: float = Field(
        0.005, gt=0, description="seconds between tries of a starting replica's port (a TCP connect); once it"
        " listens, its ready path is asked at doubling intervals (at most 0.5 s) until it answers 200")
    probe_timeout: float = Field(2.0, gt=0, description="seconds one probe may take")
    health_interval: float = Field(
        10.0, ge=0, description="seconds between two health checks of a ready replica (its ready path);"
        " 0: no checks after ready")
    health_timeout: float = Field(5.0, gt=0, description="seconds one health check may take")
    health_failures: int = Field(
        3, gt=0, description="failed health checks in a row after which a ready replica is not ready (degraded)"
        " and, with `restart: no`, is restarted")
    api_timeout: float = Field(30.0, gt=0, description="seconds one Engine request may take (not pulls)")
    reconnect_backoff_max: float = Field(
        10.0, gt=0, description="cap of the delay before the event stream is opened again, in seconds")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_RE.match(value):
            raise ValueError(f"must be an Engine address such as unix:///var/run/docker.sock or tcp://host:2376,"
                             f" got {value!r}")
        return value

    @field_validator("network")
    @classmethod
    def _network(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"must be `host` or the name of a Docker network, got {value!r}")
        return value

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, value: str | None) -> str | None:
        if value is not None and not MEMORY_RE.match(value):
            raise ValueError(f"must be a size such as '8Gi' or '512Mi', got {value!r}")
        return value

    @field_validator("port_range")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        if len(value) != 2 or not 1 <= value[0] <= value[1] <= 65535:
            raise ValueError(f"must be [first, last] with 1 <= first <= last <= 65535, got {value}")
        return value

    @model_validator(mode="after")
    def _tls(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self

    @property
    def engine_url(self) -> str:
        return self.host or os.environ.get("DOCKER_HOST") or LOCAL_SOCKET

    @property
    def host_network(self) -> bool:
        return self.network == "host"

    @property
    def shm_bytes(self) -> int | None:
        return memory_bytes(self.shm_size) if self.shm_size else None

    @property
    def programs(self) -> Mapping[str, str]:
        """Runtime name -> the program its configured image runs (only where one was declared)."""
        return {rt: c.program for rt, c in self.images.items() if isinstance(c, ImageChoice) and c.program}

    def image_of(self, runtime: str) -> str | None:
        choice = self.images.get(runtime)
        return choice.image if isinstance(choice, ImageChoice) else choice

    @property
    def check_image(self) -> str:
        """The validation container's image: ``validation_image``, or this project's image of this version."""
        return self.validation_image or DEFAULT_VALIDATION_IMAGE

    @property
    def probe_host(self) -> str:
        """Where the shim reaches the published ports."""
        if self.endpoint_host:
            return self.endpoint_host
        if self.publish_host not in ("0.0.0.0", "::", ""):
            return self.publish_host
        url = self.engine_url
        if url.startswith(("tcp://", "http://", "https://")):
            return url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
        return "127.0.0.1"
