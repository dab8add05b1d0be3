"""The writes: bring an image, create and start a replica's container, stop and remove one.

* **Images** follow ``pull``: ``missing`` pulls only an absent image, ``always`` before
  every create, ``never`` fails at once when it is absent, naming the image and the
  Engine's words.  Pull progress goes to the log (one line per layer status change).
* **Ports** are ours to choose (see :mod:`.render`): the first free one of
  ``port_range`` after a random start, skipping ports our containers hold and, when
  the Engine is on this machine, ports something else listens on.  A start refused
  with "port is already allocated" gets a new container on another port, twice.
* **Create** is idempotent per container name: a name that exists (409) is the replica.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable, Iterable
from typing import Any

from modserv_shim.errors import BackendUnavailable, PermanentStepError
from modserv_shim.plugins import DeployContext
from modserv_shim.shimlets.docker import reasons, render
from modserv_shim.shimlets.docker.engine import Engine, EngineError
from modserv_shim.shimlets.docker.options import DockerOptions

log = logging.getLogger(__name__)

Obj = dict[str, Any]
PORT_TRIES = 3


class Deployer:
    """Creates and removes containers; ``ports_in_use()`` names the host ports our containers hold."""

    def __init__(self, engine: Engine, options: DockerOptions, ports_in_use: Callable[[], Iterable[int]]) -> None:
        self._engine = engine
        self._options = options
        self._ports_in_use = ports_in_use
        self._handed_out: set[int] = set()
        self.pull_log: list[str] = []

    async def ensure_image(self, image: str) -> None:
        policy = self._options.pull
        if policy != "always" and await self._engine.image_present(image):
            return
        if policy == "never":
            raise PermanentStepError(reasons.pull_text(image, f"No such image: {image}", policy))
        log.info("docker shimlet: pulling %s", image)
        seen: dict[str, str] = {}
        try:
            async for item in self._engine.pull(image):
                key, status = str(item.get("id") or image), str(item.get("status") or "")
                if status and seen.get(key) != status:
                    seen[key] = status
                    line = f"pull {image}: {key}: {status}"
                    self.pull_log = [*self.pull_log[-49:], line]
                    log.info("docker shimlet: %s", line)
        except EngineError as exc:
            if exc.status == 900:
                raise
            raise PermanentStepError(reasons.pull_text(image, exc.engine_message, policy)) from None
        if not await self._engine.image_present(image):
            raise PermanentStepError(reasons.pull_text(image, "the pull ended without the image", policy))

    def pick_port(self) -> int:
        first, last = self._options.port_range
        taken = set(self._ports_in_use()) | self._handed_out
        span = last - first + 1
        start = random.randrange(span)
        for step in range(span):
            port = first + (start + step) % span
            if port not in taken and self._bindable(port):
                self._handed_out.add(port)
                return port
        raise PermanentStepError(f"no free host port left in the docker shimlet's port_range {first}-{last}")

    def _bindable(self, port: int) -> bool:
        """Is ``port`` free here?  Only asked when the Engine runs on this machine (a Unix socket)."""
        if not self._engine.url.startswith("unix://"):
            return True
        host = self._options.publish_host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
        return True

    async def create_replica(self, ctx: DeployContext, index: int) -> str:
        """Create and start replica ``index``; returns the container id (an existing one is kept as it is)."""
        name = render.container_name(ctx.service_id, index)
        for attempt in range(1, PORT_TRIES + 1):
            port = self.pick_port()
            try:
                container = await self._engine.create(name, render.create_body(ctx, index, port, self._options))
            except EngineError as exc:
                if exc.status == 409:  # it exists: this replica was created before
                    doc = await self._engine.inspect(name)
                    if doc is not None:
                        return str(doc["Id"])
                raise self._refused(exc, ctx, port, f"replica {index} cannot be created") from None
            finally:
                self._handed_out.discard(port)
            try:
                await self._engine.start(container)
                return container
            except EngineError as exc:
                refusal = self._refused(exc, ctx, port, f"replica {index} cannot be started")
                if "port is already allocated" in exc.engine_message and attempt < PORT_TRIES:
                    await self._engine.remove(container)
                    continue
                raise refusal from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _refused(self, exc: EngineError, ctx: DeployContext, port: int, what: str) -> Exception:
        if exc.status == 900:
            return exc
        refusal = reasons.refusal(exc.engine_message, image=render.image_of(ctx.launch, self._options),
                                  port=port, what=what)
        return PermanentStepError(refusal.text) if refusal.permanent else BackendUnavailable(refusal.text)

    async def remove(self, containers: Iterable[str]) -> None:
        """Stop (SIGTERM, SIGKILL after the grace period) and remove, all at once; missing ones are fine."""
        async def one(container: str) -> None:
            await self._engine.stop(container, self._options.stop_grace_period)
            await self._engine.remove(container)

        await asyncio.gather(*(one(c) for c in containers))
