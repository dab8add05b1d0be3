"""Validating a model where the containers will see it (the shimlet's ModelInspector).

``modelFile`` is a path as the model containers see it: on the Docker host, bound at
the same path, or under ``model_volume``'s target.  Where model-validation reads it
(``model_validation``):

* ``shim``: the shim reads it itself, at its path on the Docker host (a bind's
  ``source`` in place of its ``target``): right when the shim runs on the Docker host
  or sees the same folder at the same path;
* ``container``: a short **validation container** of ``validation_image`` (Python with
  ``modserv_shim``), the model mounted read-only exactly as the replicas get it, runs
  ``python3 -m modserv_shim.modelinfo <modelFile>`` (no network).  Its one JSON line on
  stdout (see :mod:`modserv_shim.modelinfo.__main__`) is the verdict; the container is
  removed afterwards, whatever happened;
* ``auto`` (default): ``shim`` when the Engine is on this machine (a Unix socket) and the
  model is a path on it (not in a named volume), else ``container`` (a remote Engine).

A model that is not there is "model not found on the Docker host", a permanent error;
so is a broken model (the checker's own words), and a validation container that
cannot run or prints no verdict (its exit code and last lines: is ``modserv_shim`` in
that image?).  Validation containers carry the label ``org.modserv-shim.validation``;
those an earlier run of the shim left (killed mid-validation) are removed at the first
validation of this run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from modserv_shim.errors import PermanentStepError, StepError, ValidationFailed
from modserv_shim.modelinfo import ModelFacts, ModelInvalid, inspect_model
from modserv_shim.plugins import SharedModelVolume
from modserv_shim.shimlets.docker import reasons
from modserv_shim.shimlets.docker.engine import CANNOT_CONNECT, Engine, EngineError
from modserv_shim.shimlets.docker.options import DockerOptions
from modserv_shim.spec import DeploySpec

log = logging.getLogger(__name__)

VALIDATION = "org.modserv-shim.validation"
OUTPUT_LINES = 40


def host_path(model_file: str, options: DockerOptions) -> str | None:
    """Where ``model_file`` is on the Docker host (None: in a named volume, no path there)."""
    volume = options.model_volume
    if volume.root is None:
        return model_file
    if volume.type == "volume" or volume.source is None:
        return None
    return str(PurePosixPath(volume.source) / PurePosixPath(model_file).relative_to(volume.root))


def shared_volume(options: DockerOptions) -> SharedModelVolume:
    """Where a file the shim writes is seen by the containers: the bound host folder of a local Engine.

    Refused (ValidationFailed, with what to configure) for a per-model bind (the containers see only
    the model's own file), a named volume (no host path the shim may write to) and a remote Engine
    (its folders are on another machine).
    """
    volume, url = options.model_volume, options.engine_url
    if volume.type == "volume":
        raise ValidationFailed(
            f"the containers see the models in the named volume {volume.source!r}, which the shim cannot write"
            " into: set the docker shimlet's model_volume to a host folder, {type: bind, source: /srv/models}")
    if volume.source is None:
        raise ValidationFailed(
            "the docker shimlet's model_volume is unset, so each container sees only its model's own file,"
            " not a copy the shim makes: set model_volume to the host folder holding the models,"
            " {type: bind, source: /srv/models}, and deploy modelFile from under it")
    if not url.startswith("unix://"):
        raise ValidationFailed(
            f"the Docker Engine at {url} is on another machine: the shim cannot write into its folder"
            f" {volume.source}; run the shim on the Docker host with the local socket"
            " (host: unix:///var/run/docker.sock)")
    return SharedModelVolume(workload_root=volume.target or volume.source, host_root=Path(volume.source))


def not_found(model_file: str, how: str) -> PermanentStepError:
    return PermanentStepError(f"model not found on the Docker host: {model_file} does not exist there ({how})",
                              details={"problem": "not_found", "path": model_file})


def read_here(model_file: str, local: str) -> dict[str, Any]:
    """The facts of the model read by the shim at ``local``; reported with the path the containers see."""
    try:
        facts = inspect_model(local)
    except ModelInvalid as exc:
        if exc.problem == "not_found":
            raise not_found(model_file, f"the shim looked for {local}") from exc
        raise
    return replace(facts, path=model_file).to_dict()


def verdict(output: list[str], code: int, model_file: str, image: str) -> dict[str, Any]:
    """Facts, or the error, from the validation container's output and exit code."""
    line = next((x for x in reversed(output) if x.startswith("{")), "")
    try:
        report = json.loads(line) if line else None
    except ValueError:
        report = None
    if not isinstance(report, Mapping):
        tail = "\n".join(output[-10:]) or "no output"
        raise PermanentStepError(f"the model validation container ({image}) exited with code {code} without a"
                                 f" verdict; is modserv_shim installed in that image? Its last lines:\n{tail}")
    if report.get("ok"):
        try:
            return ModelFacts.from_dict(report.get("facts") or {}).to_dict()
        except (TypeError, ValueError) as exc:
            raise PermanentStepError(f"the model validation container reported malformed facts: {exc}") from exc
    if report.get("problem") == "not_found":
        raise not_found(model_file, f"checked in a validation container of {image}")
    raise PermanentStepError(str(report.get("message") or f"the model at {model_file} is not valid"),
                             details=dict(report))


class ModelCheck:
    """Runs ``model_validation`` for the shimlet; ``ensure_image`` brings an image per ``pull``."""

    def __init__(self, engine: Engine, options: DockerOptions, ensure_image: Callable[[str], Awaitable[None]]) -> None:
        self._engine = engine
        self._options = options
        self._ensure_image = ensure_image
        self._sweep_task: asyncio.Task[None] | None = None

    async def inspect(self, spec: DeploySpec) -> dict[str, Any]:
        mount = self._options.model_volume.mount(spec.modelFile)  # outside the volume: refused, in words
        mode, local = self._options.model_validation, host_path(spec.modelFile, self._options)
        if mode == "shim" or (mode == "auto" and local is not None and self._engine.url.startswith("unix://")):
            return await asyncio.to_thread(read_here, spec.modelFile, local or spec.modelFile)
        return await self.in_container(spec.modelFile, mount)

    async def in_container(self, model_file: str, mount: dict[str, Any]) -> dict[str, Any]:
        image = self._options.check_image
        await self._sweep()
        await self._ensure_image(image)
        name = f"modserv-validate-{secrets.token_hex(4)}"
        body = {"Image": image, "Entrypoint": ["python3", "-m", "modserv_shim.modelinfo"], "Cmd": [model_file],
                "Labels": {VALIDATION: model_file[-200:]}, "NetworkDisabled": True,
                "HostConfig": {"Mounts": [mount], "NetworkMode": "none"}}
        log.info("docker shimlet: validation container %s checks %s", name, model_file)
        container: str | None = None
        try:
            container = await self._engine.create(name, body)
            await self._engine.start(container)
            code = await self._wait(container)
            output = await self._engine.logs(container, OUTPUT_LINES)
        except EngineError as exc:
            raise self._refused(exc, model_file, image) from None
        finally:
            if container is not None:
                await self._remove(container)
        return verdict(output, code, model_file, image)

    async def _wait(self, container: str) -> int:
        try:
            return await self._engine.wait(container, self._options.validation_timeout)
        except EngineError as exc:
            if exc.status != CANNOT_CONNECT:
                raise
            raise StepError(f"the model validation container did not finish within"
                            f" {self._options.validation_timeout:g} s (validation_timeout): {exc}") from None

    def _refused(self, exc: EngineError, model_file: str, image: str) -> Exception:
        if "bind source path does not exist" in exc.engine_message.lower():
            return not_found(model_file, f"the Engine said: {exc.engine_message}")
        refusal = reasons.refusal(exc.engine_message, image=image, port=None,
                                  what="the model validation container cannot run")
        return PermanentStepError(refusal.text) if refusal.permanent else exc

    async def _remove(self, container: str) -> None:
        try:
            await self._engine.remove(container)
        except EngineError as exc:  # the verdict stands; the next run's sweep removes it
            log.warning("docker shimlet: cannot remove validation container %s: %s", container, exc)

    async def _sweep(self) -> None:
        """Once per run, before our first validation container: remove those an earlier run left."""
        if self._sweep_task is None:
            self._sweep_task = asyncio.create_task(self._sweep_once(), name="docker-validation-sweep")
        await asyncio.shield(self._sweep_task)

    async def _sweep_once(self) -> None:
        try:
            for container in await self._engine.list_ids(VALIDATION):
                await self._remove(container)
        except EngineError as exc:
            log.warning("docker shimlet: cannot sweep old validation containers: %s", exc)
