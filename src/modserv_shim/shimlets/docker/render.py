"""What a service looks like on a Docker host: one ``ContainerCreate`` body per replica.

Pure: the same request, replica index and port render the same body, byte for byte,
and ``render`` (dry runs) shows exactly what ``create`` sends.

Choices worth knowing:

* **Labels** carry everything the shim must know after a restart (adoption reads them,
  no state file): who manages the container, the service id, the replica index, the
  model, the host port and the ready path.  The request's own labels come first; ours win.
* **Ports.**  With ``network: host`` the server shares the host's network: it listens
  on ``publish_host``:<a free host port>, which fills the runtime's ``{host}``/``{port}``.
  On a named network it listens on ``0.0.0.0``:``container_port`` inside the container,
  published on ``publish_host``:<a free host port>.  The port is ours to choose either
  way (not the Engine's), so the body is exact and a dry run shows it as ``{port}``.
* ``Init: true`` puts a tiny init as PID 1: a Python server as PID 1 ignores SIGTERM,
  so every stop would wait out the grace period and end in SIGKILL.
* **Resources**: ``Memory`` (bytes) and ``NanoCpus`` from ``resourceRequirements``;
  GPUs as ``DeviceRequests`` (``Count`` = ``acceleratorCount``, capabilities ``gpu``),
  or CDI device names.  The model is mounted read-only at the path the runtime is given.
* **Restart policy** ``no`` unless the admin chose Docker's: then the shim only watches.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from modserv_shim.errors import PermanentStepError
from modserv_shim.plugins import DeployContext, LaunchSpec
from modserv_shim.shimlets.docker.options import DockerOptions
from modserv_shim.spec import MASK, DeploySpec, ResourceRequirements, redact

PREFIX = "org.modserv-shim."
MANAGED_BY = PREFIX + "managed-by"
MANAGER = "modserv-shim"
SERVICE_ID = PREFIX + "service-id"
REPLICA = PREFIX + "replica"
MODEL = PREFIX + "model"
PORT = PREFIX + "port"
READY_PATH = PREFIX + "ready-path"
STARTUP_TIMEOUT = PREFIX + "startup-timeout"
DEPLOY = PREFIX + "deploy"  # the request and launch spec without env values: what a scale-up renders from
LISTEN_ALL = "0.0.0.0"
PORT_PLACEHOLDER = "{port}"
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_.-]")


def container_name(service_id: str, index: int) -> str:
    """``modserv-<service id>-<replica index>`` (characters Docker refuses in names become ``-``)."""
    return f"modserv-{_NAME_BAD.sub('-', service_id)}-{index}"


def image_of(launch: LaunchSpec, options: DockerOptions) -> str:
    image = options.image_of(launch.runtime) or launch.image
    if not image:
        raise PermanentStepError(
            f"the {launch.runtime} launch spec has no container image (it was rendered for local processes);"
            f" set the docker shimlet option images.{launch.runtime}")
    return image


def labels(ctx: DeployContext, index: int, port: int | None) -> dict[str, str]:
    out = {str(k): str(v) for k, v in ctx.labels.items()}
    out.update({
        MANAGED_BY: MANAGER,
        SERVICE_ID: ctx.service_id,
        REPLICA: str(index),
        MODEL: ctx.spec.modelName,
        PORT: PORT_PLACEHOLDER if port is None else str(port),
        READY_PATH: ctx.launch.ready_path,
        STARTUP_TIMEOUT: f"{ctx.launch.startup_timeout:g}",
        DEPLOY: deploy_label(ctx),
    })
    return out


def deploy_label(ctx: DeployContext) -> str:
    """The context ``create`` was given, without env values (those are in the container's ``Env``)."""
    spec = {**ctx.spec.wire(), "env": {}}
    launch = {**ctx.launch.to_dict(), "env": {}}
    return json.dumps({"spec": spec, "launch": launch, "labels": dict(ctx.labels),
                       "env_names": sorted(ctx.launch.env)}, sort_keys=True)


def context_of(doc: Mapping[str, Any], replicas: int) -> DeployContext:
    """The :class:`DeployContext` a container was created from (its ``deploy`` label and ``Env``)."""
    config = doc.get("Config") or {}
    saved = json.loads((config.get("Labels") or {})[DEPLOY])
    names = set(saved.get("env_names") or ())
    env = {k: v for k, _, v in (item.partition("=") for item in config.get("Env") or []) if k in names}
    launch = LaunchSpec.from_dict({**saved["launch"], "env": env})
    spec = DeploySpec(**saved["spec"])
    return DeployContext(str((config.get("Labels") or {})[SERVICE_ID]), spec, launch, replicas, saved["labels"])


def nano_cpus(cpu: str) -> int:
    """``"4"`` -> 4e9, ``"500m"`` -> 5e8 (the request was checked by the spec)."""
    cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return math.ceil(cores * 1e9)


def devices(rr: ResourceRequirements, options: DockerOptions) -> list[dict[str, Any]]:
    if rr.acceleratorCount <= 0:
        return []
    if options.gpu_runtime == "cdi":
        return [{"Driver": "cdi", "DeviceIDs": list(options.cdi_devices)}]
    return [{"Driver": "nvidia", "Count": rr.acceleratorCount, "Capabilities": [["gpu"]]}]


def host_config(ctx: DeployContext, port: int | None, options: DockerOptions) -> dict[str, Any]:
    rr = ctx.spec.resourceRequirements
    policy: dict[str, Any] = {"Name": options.restart}
    if options.restart == "on-failure":
        policy["MaximumRetryCount"] = options.max_start_failures
    host: dict[str, Any] = {
        "Init": True,
        "NetworkMode": options.network,
        "RestartPolicy": policy,
        "Mounts": [options.model_volume.mount(ctx.spec.modelFile)],
    }
    if not options.host_network:
        published = PORT_PLACEHOLDER if port is None else str(port)
        host["PortBindings"] = {f"{ctx.launch.container_port}/tcp": [{"HostIp": options.publish_host,
                                                                       "HostPort": published}]}
    if rr.memory:
        host["Memory"] = rr.memory_bytes
    if rr.cpu:
        host["NanoCpus"] = nano_cpus(rr.cpu)
    if gpus := devices(rr, options):
        host["DeviceRequests"] = gpus
    if options.shm_bytes:
        host["ShmSize"] = options.shm_bytes
    return host


def create_body(ctx: DeployContext, index: int, port: int | None, options: DockerOptions) -> dict[str, Any]:
    """The ``POST /containers/create`` body of replica ``index``; ``port`` None renders ``{port}`` (dry runs)."""
    launch = ctx.launch
    if options.host_network:
        listen_host, listen_port = options.publish_host, PORT_PLACEHOLDER if port is None else str(port)
    else:
        listen_host, listen_port = LISTEN_ALL, str(launch.container_port)
    body: dict[str, Any] = {"Image": image_of(launch, options)}
    if launch.container_command:
        body["Entrypoint"] = list(launch.container_command)
    body["Cmd"] = [a.replace("{host}", listen_host).replace("{port}", listen_port) for a in launch.args]
    body["Env"] = [f"{k}={v}" for k, v in sorted(launch.env.items())]
    body["Labels"] = labels(ctx, index, port)
    body["StopTimeout"] = math.ceil(options.stop_grace_period)
    if not options.host_network:
        body["ExposedPorts"] = {f"{launch.container_port}/tcp": {}}
    body["HostConfig"] = host_config(ctx, port, options)
    return body


def endpoint(options: DockerOptions, port: int | str) -> str:
    host = options.probe_host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _masked(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body for people: values of ``Env`` and secret-looking arguments masked."""
    shown = dict(redact(dict(body)))
    shown["Env"] = [f"{item.split('=', 1)[0]}={MASK}" for item in body.get("Env") or []]
    return shown


def render(ctx: DeployContext, options: DockerOptions) -> dict[str, Any]:
    """What ``create`` would send, for dry runs: one create body per replica (ports chosen at create)."""
    containers: list[dict[str, Any]] = [
        {"name": container_name(ctx.service_id, i), "body": create_body(ctx, i, None, options)}
        for i in range(ctx.replicas)]
    return {
        "kind": "docker-containers",
        "resourceId": ctx.service_id,
        "engine": options.engine_url,
        "pull": options.pull,
        "containers": containers,
        "json": json.dumps([{**c, "body": _masked(c["body"])} for c in containers], indent=2),
    }
