"""The stable plugin API: what a shimlet and a pipeline must provide.

Two plugin kinds sit around the core:

* a **shimlet** adapts one environment (local processes, Kubernetes, ...).  It
  must implement :class:`Shimlet` (``create`` / ``status`` / ``delete``) and may
  add optional capabilities, each a small Protocol checked with ``isinstance``
  (:data:`CAPABILITIES`): :class:`Scalable`, :class:`LogSource`, :class:`Watchable`,
  :class:`WorkloadRenderer`, :class:`ModelInspector`, :class:`EndpointProber`,
  :class:`ModelVolumeSharer`, :class:`VolumeTaskRunner`, :class:`CapacityReporter`, and
  :class:`Lifecycle` (start/close).
  Two optional attributes describe what it runs:
  ``launch_target`` (:func:`launch_target`) and ``programs`` (:func:`runtime_program`).
* a **pipeline** is an ordered list of :class:`StepSpec` plus
  ``run_step(step, ctx)``; see :class:`Pipeline`.  Written by hand, or declared step by
  step with :class:`modserv_shim.kit.pipeline.DeclaredPipeline` (which also lets one
  pipeline extend another by inserting, replacing or removing steps).  A pipeline that starts a runtime
  also implements :class:`RequestChecker` (what a request may put into it) and may
  implement :class:`ScaleChecker`.

Both are built by a *factory*: any callable taking a :class:`PluginContext` and
returning the plugin (a class whose ``__init__`` takes the context works).
Factories are found in the built-in registry, in the entry-point groups
``modserv_shim.shimlets`` / ``modserv_shim.pipelines``, or loaded at run time
through ``POST /api/v1/plugins/load``.

This module imports nothing but the standard library and our own spec, allowlist
and errors, so a plugin author depends on a small, stable surface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, runtime_checkable

from modserv_shim.allowlist import RequestPolicy
from modserv_shim.spec import DeploySpec

# ---------------------------------------------------------------- pipelines


class Phase(StrEnum):
    """The lifecycle state a step belongs to while it runs."""

    PIPELINE = "pipeline_running"
    DEPLOYING = "deploying"
    HEALTH_CHECKING = "health_checking"


PHASE_ORDER = (Phase.PIPELINE, Phase.DEPLOYING, Phase.HEALTH_CHECKING)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step is tried and how long to wait between tries.

    ``attempts`` counts the first try.  The wait after failed attempt *n*
    (1-based) is ``min(backoff * multiplier ** (n - 1), max_delay)`` seconds.
    """

    attempts: int = 1
    backoff: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.backoff < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("RetryPolicy backoff/max_delay must be >= 0 and multiplier >= 1")

    def delay(self, failed_attempt: int) -> float:
        return float(min(self.backoff * self.multiplier ** (failed_attempt - 1), self.max_delay))


@dataclass(frozen=True)
class StepSpec:
    """One step of a pipeline.

    ``permanent`` lists exception types that must not be retried (in addition
    to :class:`modserv_shim.errors.PermanentStepError`).  A step must be
    idempotent: after a crash of the server the step that was in flight runs
    again from the start.
    """

    name: str
    phase: Phase = Phase.PIPELINE
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    permanent: tuple[type[BaseException], ...] = ()
    description: str = ""

    def with_overrides(
        self, *, timeout: float | None = None, retry: Mapping[str, Any] | None = None
    ) -> StepSpec:
        new_retry = replace(self.retry, **dict(retry)) if retry else self.retry
        return replace(self, timeout=self.timeout if timeout is None else timeout, retry=new_retry)


class StepContext(Protocol):
    """What a step sees.  Provided by the executor; plugins do not build it."""

    @property
    def service_id(self) -> str: ...
    @property
    def spec(self) -> DeploySpec: ...
    @property
    def operator(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def dry_run(self) -> bool: ...
    @property
    def shimlet(self) -> Shimlet: ...
    @property
    def outputs(self) -> Mapping[str, Any]:
        """Outputs of the steps that already succeeded (JSON values, persisted)."""
        ...
    @property
    def resource_id(self) -> str | None: ...
    @property
    def data_dir(self) -> Path: ...

    def log(self, message: str, level: str = "info", **fields: Any) -> None:
        """Append a line to this step's log (shown by ``/pipeline/logs``)."""

    def set_output(self, key: str, value: Any) -> None:
        """Record a JSON-serialisable output; later steps read it from ``outputs``."""

    def set_params(self, **params: Any) -> None:
        """Record the parameters this step worked with (shown in its step run)."""

    async def set_resource(self, resource_id: str) -> None:
        """Persist the shimlet resource id at once, so a crash right after is re-attached."""

    def set_timeout(self, seconds: float, *, force: bool = False) -> None:
        """Set this attempt's timeout to ``seconds`` from the attempt's start.

        Used by steps whose right timeout depends on the model (health-check).
        Ignored when the operator fixed this step's timeout in the config file,
        unless ``force`` (a per-request value such as ``healthCheckTimeout``).
        """


@runtime_checkable
class RequestChecker(Protocol):
    """A pipeline that knows which runtimes it may start checks what a request puts into them.

    ``check_request`` raises :class:`~modserv_shim.errors.ValidationFailed` (HTTP 422) naming
    the first environment variable or runtime argument that is not allowed (see
    :mod:`modserv_shim.allowlist`); it is called before a deploy or dry run is accepted.
    A pipeline without it gets the strict default: only the variables the admin allows,
    and no runtime arguments.
    """

    def check_request(self, spec: DeploySpec, shimlet: Shimlet) -> None: ...


@runtime_checkable
class ScaleChecker(Protocol):
    """A pipeline that can tell whether ``replicas`` replicas of a running service still fit.

    ``outputs`` are the service's step outputs (what its validation found).  Raises
    :class:`~modserv_shim.errors.ValidationFailed` with the reason, as a deploy would.
    """

    def check_scale(self, spec: DeploySpec, outputs: Mapping[str, Any], replicas: int, shimlet: Shimlet) -> None: ...


@dataclass(frozen=True)
class Caller:
    """Who asks: the token's name, its role (``viewer``, ``operator`` or ``admin``) and its groups
    (the tokens file's ``groups``).  With no token configured every caller is ``anonymous``, an admin."""

    name: str
    role: str
    groups: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@runtime_checkable
class AccessChecker(Protocol):
    """A pipeline that decides who may deploy a request (``privatellm``: members of the model's groups).

    ``check_access`` raises :class:`~modserv_shim.errors.Forbidden` (HTTP 403) with the reason; it is
    called before a deploy or dry run is accepted, and before a service's API key is rotated.
    """

    def check_access(self, spec: DeploySpec, caller: Caller) -> None: ...


API_KEY_OUTPUT = "api_key"
"""The output the core sets for a service of a pipeline with ``issues_api_keys = True``:
``{"file": <path of the key file, 0600>, "sha256": <hex>, "fingerprint": "msk-...abcd", "createdAt": <ts>}``.
The runtime reads the key from the file (never from a command line); the health check sends it."""


def issues_api_keys(pipeline: object) -> bool:
    """Does ``pipeline`` serve every service behind its own API key (class attribute ``issues_api_keys``)?"""
    return getattr(pipeline, "issues_api_keys", False) is True


@runtime_checkable
class Pipeline(Protocol):
    """A deploy flow: ordered steps and the code that runs one of them.

    ``steps()`` must return at least one step; names are unique and phases never
    go backwards (pipeline_running, then deploying, then health_checking).
    ``run_step`` raises on failure: :class:`~modserv_shim.errors.PermanentStepError`
    (or a type in ``step.permanent``) stops the pipeline at once, anything else
    is retried per ``step.retry``.  :class:`modserv_shim.kit.pipeline.DeclaredPipeline`
    derives both methods from declared steps; :mod:`modserv_shim.testing.pipeline_contract`
    checks either kind.
    """

    name: str

    def steps(self) -> Sequence[StepSpec]: ...

    async def run_step(self, step: StepSpec, ctx: StepContext) -> None: ...


# ----------------------------------------------------------------- shimlets


@dataclass(frozen=True)
class LaunchSpec:
    """How to start one replica of an inference server, independent of environment.

    Rendered by a runtime (llama.cpp, vLLM, SGLang).  ``args`` may contain the
    placeholders ``{host}`` and ``{port}``, which the shimlet fills in: a local
    shimlet allocates a free port, a container shimlet uses ``container_port``.

    ``api_key_file``, when set, is a file holding the key the server requires (a
    service of a pipeline that ``issues_api_keys``): the shimlet sends it as a bearer
    token on its own probes and, when ``api_key_env`` is set, hands it to the
    process in that environment variable (a program that reads the file itself
    finds it in ``args``).  The key never appears on a command line.
    """

    runtime: str
    served_model_name: str
    model_path: str
    local_command: tuple[str, ...]
    args: tuple[str, ...]
    image: str = ""
    container_command: tuple[str, ...] = ()
    container_port: int = 8000
    env: Mapping[str, str] = field(default_factory=dict)
    ready_path: str = "/v1/models"
    health_path: str = "/v1/models"
    startup_timeout: float = 600.0
    api_key_file: str = ""
    api_key_env: str = ""

    def read_api_key(self) -> str | None:
        """The key in ``api_key_file`` (None without one); an unreadable file is an ``OSError``."""
        if not self.api_key_file:
            return None
        return Path(self.api_key_file).read_text(encoding="utf-8").strip()

    def argv(self, host: str, port: int) -> list[str]:
        """The local command line with ``{host}`` / ``{port}`` filled in."""
        return [*self.local_command, *(a.replace("{host}", host).replace("{port}", str(port)) for a in self.args)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["env"] = dict(self.env)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LaunchSpec:
        data = dict(d)
        for key in ("local_command", "args", "container_command"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


@dataclass(frozen=True)
class DeployContext:
    """Everything a shimlet needs to create the workload of one service.

    ``log``, when set, appends a line to the log of the step in flight (the pipeline passes
    its :meth:`StepContext.log`; ``/pipeline/logs`` shows the lines): for progress of a long
    ``create``, such as an image pull.  It is None outside a step (a scale-up, a test, a
    pipeline that does not pass it), so a shimlet calls it only when set, with a few lines,
    never a flood.  Not part of the context's equality.
    """

    service_id: str
    spec: DeploySpec
    launch: LaunchSpec
    replicas: int
    labels: Mapping[str, str] = field(default_factory=dict)
    log: Callable[[str], None] | None = field(default=None, compare=False, repr=False)


class ResourcePhase(StrEnum):
    PENDING = "pending"  # being created or starting; nothing wrong yet
    READY = "ready"  # all desired replicas ready
    DEGRADED = "degraded"  # was serving, now some or all replicas are not (restarting)
    FAILED = "failed"  # will not become ready without a change (bad model, crash loop)
    NOT_FOUND = "not_found"  # nothing exists under this resource id
    UNKNOWN = "unknown"  # not observed yet (e.g. a process adopted after a restart, before its first probe)


@dataclass(frozen=True)
class ResourceStatus:
    """A snapshot of a workload, as the shimlet sees it.  ``reason`` is plain words."""

    phase: ResourcePhase
    ready_replicas: int = 0
    desired_replicas: int = 0
    endpoint: str | None = None
    reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Shimlet(Protocol):
    """Adapts one environment.  Contracts every implementation keeps:

    * ``create`` is idempotent for the same ``ctx.service_id``: a second call
      returns the same resource id and does not start a second workload.
    * ``status`` never blocks on the workload (answers from cached/cheap state)
      and returns ``NOT_FOUND`` for an unknown id instead of raising.
    * ``delete`` is idempotent: deleting a missing resource succeeds.  It also
      accepts the *service id* in place of the resource id: when the server died
      between ``create`` and recording its result, the core deletes by service id.
    * Raise :class:`~modserv_shim.errors.BackendUnavailable` (or any non-permanent
      error) for "try again"; :class:`~modserv_shim.errors.PermanentStepError`
      when retrying cannot help.
    """

    name: str

    async def create(self, ctx: DeployContext) -> str: ...

    async def status(self, resource_id: str) -> ResourceStatus: ...

    async def delete(self, resource_id: str) -> None: ...


@runtime_checkable
class Scalable(Protocol):
    async def scale(self, resource_id: str, replicas: int) -> None: ...


@runtime_checkable
class Restartable(Protocol):
    """A shimlet that restarts a workload's replicas one at a time, each waiting for the one before
    to be ready again (a rolling restart): each new process reads its files (the API key) anew.
    Raises :class:`~modserv_shim.errors.BackendUnavailable` when a replica does not come back."""

    async def restart(self, resource_id: str) -> None: ...


@runtime_checkable
class LogSource(Protocol):
    async def logs(self, resource_id: str, tail: int = 100) -> list[str]: ...


@runtime_checkable
class Watchable(Protocol):
    def watch(self) -> AsyncIterator[tuple[str, ResourceStatus]]:
        """One stream of ``(resource_id, status)`` for every resource of this shimlet."""
        ...


@runtime_checkable
class Lifecycle(Protocol):
    """Optional start/stop hooks, called once when the server starts and stops."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class WorkloadRenderer(Protocol):
    """Shows what ``create`` would apply (manifests, a process spec), for ``dryRun``."""

    def render(self, ctx: DeployContext) -> Mapping[str, Any]: ...


@runtime_checkable
class ModelInspector(Protocol):
    """Inspects the model where the workload will see it (e.g. a validation Job on the volume).

    Returns ``ModelFacts.to_dict()`` of :mod:`modserv_shim.modelinfo`; raises
    :class:`~modserv_shim.errors.PermanentStepError` when the model is missing or
    broken.  Shimlets without it have their model read directly by the shim.
    """

    async def inspect_model(self, spec: DeploySpec) -> Mapping[str, Any]: ...


@runtime_checkable
class EndpointProber(Protocol):
    """Sends a request to the service's OpenAI endpoint from the shim's side.

    For environments whose endpoint the shim cannot reach directly (Kubernetes
    from outside the cluster: the API server's service proxy).  Returns the HTTP
    status and the decoded JSON body (or None).
    """

    async def request(
        self, resource_id: str, method: str, path: str, json: Any = None
    ) -> tuple[int, Any]: ...


@dataclass(frozen=True)
class SharedModelVolume:
    """The folder a shimlet's workloads see the model in, where files made for them can go too.

    ``workload_root`` is where the workloads see it (a bind mount's target, a volume's mount
    path).  ``host_root`` is the same folder on the shim's own host when the shim can read
    and write it there (a host folder bound into the containers of a local Docker Engine);
    None when only the shimlet's :class:`VolumeTaskRunner` reaches it (a Kubernetes volume).
    Paths are POSIX paths; files the shim writes under ``host_root`` appear to the workloads
    under ``workload_root``.
    """

    workload_root: str
    host_root: Path | None = None

    def relative(self, workload_path: str) -> PurePosixPath:
        """``workload_path`` relative to ``workload_root``; ValueError when it lies outside."""
        root, path = PurePosixPath(self.workload_root), PurePosixPath(workload_path)
        if (path != root and root not in path.parents) or ".." in path.parts:
            raise ValueError(f"{workload_path} is not under {self.workload_root}, where the workloads see the"
                             " model volume")
        return path.relative_to(root)

    def on_host(self, workload_path: str) -> Path:
        """Where the shim finds ``workload_path`` (ValueError: outside the volume, or no ``host_root``)."""
        if self.host_root is None:
            raise ValueError(f"the shim has no path of its own to {self.workload_root}")
        return self.host_root / self.relative(workload_path)

    def in_workload(self, host_path: Path) -> str:
        """How the workloads see ``host_path``, a path under ``host_root``."""
        if self.host_root is None:
            raise ValueError(f"the shim has no path of its own to {self.workload_root}")
        return str(PurePosixPath(self.workload_root) / host_path.relative_to(self.host_root).as_posix())


@runtime_checkable
class ModelVolumeSharer(Protocol):
    """A container shimlet whose workloads see a whole folder (not only the model's own file), so a
    pipeline may put a file it made for them there (the quant pipeline's quantized model).

    ``shared_model_volume`` is called before a deploy is accepted and by the step: it answers
    without I/O, and raises :class:`~modserv_shim.errors.ValidationFailed` with why the
    workloads of ``spec`` see no such folder and what to configure instead.
    """

    def shared_model_volume(self, spec: DeploySpec) -> SharedModelVolume: ...


@dataclass(frozen=True)
class VolumeTask:
    """A short program to run next to the model volume, mounted read-write, where the workloads run.

    ``command`` is an argv in the shimlet's tool image (Python with ``modserv_shim``: the image of
    its model validation), with paths as the workloads see them (under
    :attr:`SharedModelVolume.workload_root`).  The program writes its report (a JSON line,
    at most 4 KiB) to the file named by the environment variable :data:`TASK_REPORT_ENV`.
    ``spec`` is the deploy's: its model volume, its nodes, its cpu and memory.  ``log``, when
    set, gets a line about the task's progress (where it is, its phase) every
    ``progress_seconds``.  ``kind`` is one short word naming the task (``quantize``).
    """

    kind: str
    spec: DeploySpec
    command: tuple[str, ...]
    timeout: float
    log: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    progress_seconds: float = 2.0


TASK_REPORT_ENV = "MODSERV_TASK_REPORT"


@dataclass(frozen=True)
class VolumeTaskResult:
    """How a :class:`VolumeTask` ended: its exit code, its report, and where it ran (for messages)."""

    exit_code: int | None
    report: str
    where: str
    reason: str | None = None  # the environment's word for an abnormal end (OOMKilled, DeadlineExceeded)


@runtime_checkable
class VolumeTaskRunner(Protocol):
    """Runs a :class:`VolumeTask` where the model volume is (a Kubernetes Job on the volume).

    Returns once the program ended, whatever its exit code, and removes what it created.
    Raises :class:`~modserv_shim.errors.PermanentStepError` when the program cannot run there
    (its image cannot be pulled, no node can take it) and a retryable error when it did not
    finish within ``timeout``.
    """

    async def run_volume_task(self, task: VolumeTask) -> VolumeTaskResult: ...


@dataclass(frozen=True)
class HostCapacity:
    """What one host (a machine, a Kubernetes node, a Docker host) offers the workloads of a shimlet.

    Each figure is None when the shimlet does not know it.  ``accelerators`` counts accelerators by
    type, named as a deploy's ``acceleratorType`` names them where the shimlet can tell (``NVIDIA H20``),
    else by the environment's own word (a node label value, ``nvidia.com/gpu``).
    """

    host: str
    cpu_cores: float | None = None
    memory_bytes: int | None = None
    accelerators: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Capacity:
    """What a shimlet's environment offers, host by host (the Prometheus capacity gauges)."""

    hosts: Sequence[HostCapacity] = ()

    @property
    def cpu_cores(self) -> float | None:
        known = [h.cpu_cores for h in self.hosts if h.cpu_cores is not None]
        return float(sum(known)) if known else None

    @property
    def memory_bytes(self) -> int | None:
        known = [h.memory_bytes for h in self.hosts if h.memory_bytes is not None]
        return sum(known) if known else None

    @property
    def accelerators(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for h in self.hosts:
            for kind, n in h.accelerators.items():
                total[kind] = total.get(kind, 0) + n
        return total


@runtime_checkable
class CapacityReporter(Protocol):
    """A shimlet that knows what its environment offers: CPU cores, memory and accelerators per host.

    Called by the server in the background (every ``capacity_interval`` seconds), never while a
    request waits; it may do I/O (list nodes, ask an Engine) and raise when it cannot tell now.
    """

    async def capacity(self) -> Capacity: ...


CAPABILITIES: dict[str, type] = {
    "scale": Scalable,
    "logs": LogSource,
    "watch": Watchable,
    "render": WorkloadRenderer,
    "inspect-model": ModelInspector,
    "probe": EndpointProber,
    "shared-model-volume": ModelVolumeSharer,
    "volume-task": VolumeTaskRunner,
    "capacity": CapacityReporter,
}


def launch_target(shimlet: object) -> str:
    """``"local"`` for shimlets that run processes on this machine, else ``"container"``.

    A shimlet says so with a class attribute ``launch_target``; the default is
    ``"container"`` (images and container commands).
    """
    value = getattr(shimlet, "launch_target", "container")
    return "local" if value == "local" else "container"


def runtime_program(shimlet: object, runtime: str) -> str | None:
    """The server program the shimlet runs for ``runtime``, or None: the runtime's default.

    Some runtimes have more than one program (llama.cpp: ``"llama-server"``, the
    default in containers, and ``"llama-cpp-python"``), each with its own command,
    flags and health path.  A shimlet whose image for a runtime runs another program
    than the default says so with an attribute (or property) ``programs``: a mapping
    of runtime name to program name, e.g. ``{"llama.cpp": "llama-cpp-python"}``.
    Runtimes it does not list, and shimlets without it, get the runtime's default.
    The pipeline renders the launch spec, and checks requests, for that program;
    a name the runtime does not know is refused when the spec is rendered.
    """
    programs = getattr(shimlet, "programs", None)
    if programs is None:
        return None
    if not isinstance(programs, Mapping):
        raise TypeError(f"the {getattr(shimlet, 'name', type(shimlet).__name__)} shimlet's programs must map"
                        f" runtime names to program names, not {type(programs).__name__}")
    program = programs.get(runtime)
    if program is not None and not isinstance(program, str):
        raise TypeError(f"programs[{runtime!r}] must be a program name (a string), not {type(program).__name__}")
    return program


def shimlet_capabilities(obj: object) -> list[str]:
    return [name for name, proto in CAPABILITIES.items() if isinstance(obj, proto)]


# ------------------------------------------------------------------ factory


@dataclass(frozen=True)
class PluginContext:
    """Handed to a plugin factory: where to keep files and the plugin's own config."""

    name: str
    data_dir: Path
    options: Mapping[str, Any] = field(default_factory=dict)
    server_settings: Mapping[str, Any] = field(default_factory=dict)
    policy: RequestPolicy = field(default_factory=RequestPolicy)
    """What the admin allows a request to put into processes beyond the runtimes' allowlists."""
