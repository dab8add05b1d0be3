"""What every inference runtime (llama.cpp, vLLM, SGLang) has in common.

A :class:`Runtime` knows how one inference server is started and probed: its
container image and command, the command that runs it on this machine, the
paths that say "ready" and "healthy", and how the deploy parameters map onto
its flags.  It does not start anything: :meth:`Runtime.render` turns
:class:`LaunchParams` into the environment-neutral
:class:`~modserv_shim.plugins.LaunchSpec` a shimlet runs.

Two choices worth knowing:

* Host and port stay placeholders (``{host}`` / ``{port}``): the local shimlet
  allocates a free port per replica, a container shimlet uses the container
  port.  The runtime never picks a port.
* ``target`` ("local" or "container") is a required argument of ``render``
  because one runtime can have two different programs behind it: llama.cpp
  runs as ``llama-server`` in its container image, but on a machine without
  that binary the local shimlet runs llama-cpp-python's server, whose flags
  differ.  A spec's ``args`` belong to exactly one program, so a spec rendered
  for "local" with llama-cpp-python has no image (it must not be shipped to a
  container), and a spec rendered for "container" always matches its image.
* ``program`` (optional, for ``render``, ``check_request``, ``arg_rules`` and
  ``refused_args``) names the program that will run when the caller knows it
  better than the runtime's default: a container shimlet whose image for
  llama.cpp holds llama-cpp-python says so (``programs`` on the shimlet, read
  with :func:`modserv_shim.plugins.runtime_program`), and the spec, the flags
  and the allowlists are those of that program.  Each runtime lists the
  programs it knows in :attr:`Runtime.programs`; any other name is refused.
  ``None`` keeps the runtime's own choice (:meth:`Runtime.default_program`).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from modserv_shim.allowlist import ArgRule, RequestPolicy, check_args, check_env
from modserv_shim.errors import PermanentStepError
from modserv_shim.plugins import LaunchSpec

ModelFormat = Literal["gguf", "hf"]
Target = Literal["local", "container"]
TARGETS: tuple[Target, ...] = ("local", "container")

HOST = "{host}"
PORT = "{port}"

COMMON_ENV = frozenset({
    # threads and devices
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
    # the NCCL switches people flip when multi-GPU start-up hangs (not NCCL_NET_PLUGIN & co: they load libraries)
    "NCCL_DEBUG", "NCCL_P2P_DISABLE", "NCCL_IB_DISABLE", "NCCL_SHM_DISABLE",
    # staying offline and quiet
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK", "TOKENIZERS_PARALLELISM",
    "TZ",
})
"""Variables any runtime may be given: none of them names code, a library or a file to load."""



class Why:
    """Why a flag is never accepted in ``runtimeArgs``, whatever the runtime (see :meth:`Runtime.refused_args`)."""

    LISTEN = "the shim chooses the address and port the server listens on"
    MODEL = "the shim passes the model: set modelFile"
    NAME = "the shim passes the served name: set modelName"
    CONTEXT = "the shim passes the context length: set contextLength"
    PARALLEL = "the shim sets tensor parallelism from resourceRequirements.acceleratorCount"
    GPU_SHARE = "the shim sets the GPU memory share (the pipeline's gpu_memory_utilization option)"
    EXPOSES = "it changes who can reach the server or how (the shim manages exposure)"
    LOADS_CODE = "it makes the server load code or templates from outside the model's own files"
    LOADS_FILES = "it makes the server read or write other files than the model"
    DOWNLOADS = "it makes the server download from the network; models are served from local files"


def refusing(*groups: tuple[str, tuple[str, ...]]) -> dict[str, str]:
    """``(reason, (flag, ...)), ...`` -> flag -> reason: refusals written grouped by their reason."""
    return {flag: reason for reason, flags in groups for flag in flags}


@dataclass(frozen=True)
class LaunchParams:
    """The deploy parameters a runtime turns into flags.

    ``accelerator_count`` is the tensor parallel size on GPU runtimes (0 means
    CPU).  ``None`` means "let the runtime decide" and adds no flag.
    ``extra_args`` (the request's ``runtimeArgs``) are appended after ours, so
    a user flag given twice wins with the usual last-one-wins parsing.
    """

    served_model_name: str
    model_path: str
    accelerator_count: int = 0
    context_length: int | None = None
    dtype: str | None = None
    gpu_memory_utilization: float | None = None
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout: float = 600.0
    policy: RequestPolicy = field(default_factory=RequestPolicy)  # what the admin allows beyond our lists
    api_key_file: str | None = None  # the server requires the key in this file (see Runtime.api_key)

    def __post_init__(self) -> None:
        if not self.served_model_name:
            raise ValueError("served_model_name must not be empty")
        if not self.model_path:
            raise ValueError("model_path must not be empty")
        if self.accelerator_count < 0:
            raise ValueError("accelerator_count must be >= 0")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")


class Runtime(ABC):
    """One inference server kind.  Subclasses set the class attributes and ``server_args``.

    An instance carries the container image, so an operator can pin another
    tag (``get_runtime("vllm", image="vllm/vllm-openai:v0.9.2")``).
    """

    name: ClassVar[str]
    formats: ClassVar[frozenset[ModelFormat]]
    default_image: ClassVar[str]
    container_command: ClassVar[tuple[str, ...]]
    ready_path: ClassVar[str] = "/v1/models"
    health_path: ClassVar[str] = "/health"
    base_env: ClassVar[Mapping[str, str]] = {}
    env_names: ClassVar[frozenset[str]] = frozenset()
    """Variables this runtime is known to use, besides :data:`COMMON_ENV` (whichever program runs)."""
    programs: ClassVar[tuple[str, ...]]
    """The server programs this runtime can run, by name; the first is the default in a container."""

    def __init__(self, image: str | None = None) -> None:
        self.image = image or self.default_image
        self.image_given = image or None
        """The image an operator pinned, if any (``image`` falls back to :attr:`default_image`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image={self.image!r})"

    # The hooks below take ``program``: one of :attr:`programs`, or None for :meth:`default_program`.

    @abstractmethod
    def local_command(self, *, target: Target, program: str | None = None) -> tuple[str, ...]:
        """The program (and its leading arguments) that runs this server on this machine."""

    @abstractmethod
    def server_args(self, params: LaunchParams, *, target: Target, program: str | None = None) -> list[str]:
        """Our flags for ``params``, without the user's extra args."""

    @abstractmethod
    def arg_rules(self, *, target: Target, program: str | None = None) -> Mapping[str, ArgRule]:
        """The flags a request's ``runtimeArgs`` may hold for the program that runs, with their values."""

    @abstractmethod
    def refused_args(self, *, target: Target, program: str | None = None) -> Mapping[str, str]:
        """Flags never accepted, with the reason (we set them, or they change exposure or load code)."""

    def default_program(self, *, target: Target) -> str:
        """The program that runs when nobody names one: the first of :attr:`programs`."""
        return self.programs[0]

    def program(self, *, target: Target, program: str | None = None) -> str:
        """The program that serves: ``program`` if given, else :meth:`default_program`.

        Raises :class:`PermanentStepError` listing :attr:`programs` for a name this runtime does not know.
        """
        if program is None:
            return self.default_program(target=target)
        if program not in self.programs:
            raise PermanentStepError(
                f"unknown program {program!r} for runtime {self.name!r}; its programs are: {', '.join(self.programs)}")
        return program

    def api_key(self, key_file: str, *, target: Target, program: str) -> tuple[list[str], str]:
        """How ``program`` is told to require the key in ``key_file``: flags that name the file, or the
        environment variable the shimlet puts the key in (never a flag with the key: command lines are
        visible to every user of the host).  Raises :class:`PermanentStepError` when it cannot be told."""
        raise PermanentStepError(f"the {self.name} runtime ({program}) cannot take an API key from a file or"
                                 " its environment, so it cannot serve a service that needs one")

    def allowed_env(self) -> frozenset[str]:
        return COMMON_ENV | self.env_names

    def check_request(self, env: Mapping[str, str], args: Sequence[str], policy: RequestPolicy, *,
                      target: Target, program: str | None = None) -> None:
        """Raise :class:`~modserv_shim.errors.ValidationFailed` naming the first variable or argument
        that is not allowed (see :mod:`modserv_shim.allowlist`).  The flags checked are those of
        ``program`` (see :meth:`program`); the admin's extra flags apply to every program of the runtime."""
        chosen = self.program(target=target, program=program)
        reserved = {name: f"{name}={value}" for name, value in self.base_env.items()}
        check_env(env, allowed=self.allowed_env(), policy=policy, who=f"the {self.name} runtime",
                  reserved=reserved)
        # Name the program in refusals when it was chosen for us and the runtime has others.
        who = f"{self.name} ({chosen})" if program is not None and len(self.programs) > 1 else self.name
        check_args(args, rules=self.arg_rules(target=target, program=chosen),
                   refused=self.refused_args(target=target, program=chosen),
                   admin_flags=policy.runtime_args.get(self.name, frozenset()), runtime=who)

    def check_format(self, model_format: ModelFormat, model_path: str) -> None:
        """Raise :class:`PermanentStepError` when this runtime cannot serve ``model_format``."""
        if model_format not in self.formats:
            raise PermanentStepError(self.format_error(model_format, model_path))

    def format_error(self, model_format: ModelFormat, model_path: str) -> str:
        kinds = " or ".join(sorted(self.formats))
        return f"runtime {self.name!r} serves {kinds} models, but {model_path} is {model_format}"

    def render(self, params: LaunchParams, *, target: Target, program: str | None = None) -> LaunchSpec:
        """The launch spec for ``params``; see the module docstring for ``target`` and ``program``."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        # Checked here too, not only when the request is accepted: whatever builds a launch spec gets it.
        self.check_request(params.env, params.extra_args, params.policy, target=target, program=program)
        chosen = self.program(target=target, program=program)
        key_args: list[str] = []
        key_env = ""
        if params.api_key_file:
            key_args, key_env = self.api_key(params.api_key_file, target=target, program=chosen)
        args = (*self.server_args(params, target=target, program=chosen), *key_args, *params.extra_args)
        return LaunchSpec(
            runtime=self.name,
            served_model_name=params.served_model_name,
            model_path=params.model_path,
            local_command=self.local_command(target=target, program=chosen),
            args=args,
            image=self.image,
            container_command=self.container_command,
            env={**params.env, **self.base_env},
            ready_path=self.ready_path,
            health_path=self.health_path,
            startup_timeout=params.startup_timeout,
            api_key_file=params.api_key_file or "",
            api_key_env=key_env,
        )


def python_module(module: str) -> tuple[str, ...]:
    """``python -m module`` with the interpreter running the shim (so its venv is used)."""
    return (sys.executable or "python3", "-m", module)


def flag(args: list[str], name: str, value: object | None) -> None:
    """Append ``name value`` when ``value`` is not None."""
    if value is not None:
        args.extend((name, str(value)))
