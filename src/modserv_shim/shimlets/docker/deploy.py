"""The writes: bring an image, create and start a replica's container, stop and remove one.

* **Images** follow ``pull``: ``missing`` pulls only an absent image, ``always`` before
  every create, ``never`` fails at once when it is absent, naming the image and the
  Engine's words.  Pull progress goes to the shim's log and the deploy step's log
  (:class:`PullProgress`: one line per layer state change, else at most one per 2 s).
* **Ports** are ours to choose (see :mod:`.render`): the first free one of
  ``port_range`` after a random start, skipping ports our containers hold and, when
  the Engine is on this machine (a Unix socket), ports something else listens on.  A
  start refused because the port is taken ("port is already allocated": another
  container has it; "address already in use": another program, which the shim cannot
  see when the Engine is reached over TCP, or took it meanwhile) gets a new container on
  another port of the range, twice; then the refusal, naming the port and the Engine's
  words, is the step's error.  A container that could not start is removed.
* **Create** is idempotent per container name: a name that exists (409) is the replica.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from modserv_shim.errors import BackendUnavailable, PermanentStepError
from modserv_shim.plugins import DeployContext
from modserv_shim.shimlets.docker import reasons, render
from modserv_shim.shimlets.docker.engine import Engine, EngineError
from modserv_shim.shimlets.docker.options import DockerOptions

log = logging.getLogger(__name__)

Obj = dict[str, Any]
PORT_TRIES = 3


def _size(n: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


class PullProgress:
    """The Engine's pull progress objects, as a few lines: one per layer state change, else one per 2 s.

    A line names the layer, its state, and bytes done of total while it downloads or extracts
    (``pull r/x:1: layer 3f4a5b6c7d8e: Downloading 1.2 MB of 4.2 MB``).  Each line goes to the
    shim's log and, when given, to ``step_log`` (the deploy step's log).
    """

    EVERY = 2.0  # seconds between two progress lines of a layer whose state did not change

    def __init__(self, image: str, step_log: Callable[[str], None] | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.image = image
        self._step_log = step_log
        self._clock = clock
        self._began = self._last = clock()
        self._states: dict[str, str] = {}
        self._bytes: dict[str, tuple[int, int]] = {}  # layer -> (downloaded, total)
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)
        log.info("docker shimlet: %s", line)
        if self._step_log is not None:
            self._step_log(line)
        self._last = self._clock()

    def update(self, item: Mapping[str, Any]) -> None:
        status = str(item.get("status") or "").strip()
        if not status:
            return
        layer = str(item.get("id") or "")
        detail = item.get("progressDetail") or {}
        current, total = int(detail.get("current") or 0), int(detail.get("total") or 0)
        if not layer or not _is_layer(layer):  # "Pulling from ...", "Digest: ...", "Status: ..."
            if not status.startswith("Digest:"):
                self.say(f"pull {self.image}: {status}" + (f" ({layer})" if layer else ""))
            return
        if status == "Downloading" and total:
            self._bytes[layer] = (current, total)
        elif status in ("Download complete", "Already exists") and layer in self._bytes:
            self._bytes[layer] = (self._bytes[layer][1], self._bytes[layer][1])
        changed = self._states.get(layer) != status
        self._states[layer] = status
        if changed or (total and self._clock() - self._last >= self.EVERY):
            amount = f" {_size(current)} of {_size(total)}" if total else ""
            self.say(f"pull {self.image}: layer {layer}: {status}{amount}")

    def done(self) -> None:
        got = sum(total for _, total in self._bytes.values())
        layers = len(self._states)
        self.say(f"pulled {self.image} in {self._clock() - self._began:.1f} s ({layers} layer(s),"
                 f" {_size(got)} downloaded)")


def _is_layer(name: str) -> bool:
    """A layer's short id (12 hex digits), not a tag such as ``1`` in "Pulling from x (1)"."""
    return len(name) >= 12 and all(c in "0123456789abcdef" for c in name)


def port_taken(engine_message: str) -> bool:
    """Did the Engine refuse a start because the host port is taken (by a container, or another program)?"""
    lowered = engine_message.lower()
    return "port is already allocated" in lowered or "address already in use" in lowered


class Deployer:
    """Creates and removes containers; ``ports_in_use()`` names the host ports our containers hold."""

    def __init__(self, engine: Engine, options: DockerOptions, ports_in_use: Callable[[], Iterable[int]]) -> None:
        self._engine = engine
        self._options = options
        self._ports_in_use = ports_in_use
        self._handed_out: set[int] = set()
        self.pull_log: list[str] = []

    async def ensure_image(self, image: str, step_log: Callable[[str], None] | None = None) -> None:
        """Bring ``image`` per ``pull``; the pull's progress goes to the shim's log and to ``step_log``."""
        policy = self._options.pull
        if policy != "always" and await self._engine.image_present(image):
            return
        if policy == "never":
            raise PermanentStepError(reasons.pull_text(image, f"No such image: {image}", policy))
        progress = PullProgress(image, step_log)
        progress.say(f"pulling image {image} (pull: {policy})")
        try:
            async for item in self._engine.pull(image):
                progress.update(item)
        except EngineError as exc:
            if exc.status == 900:
                raise
            text = reasons.pull_text(image, exc.engine_message, policy)
            progress.say(text)
            raise PermanentStepError(text) from None
        if not await self._engine.image_present(image):
            raise PermanentStepError(reasons.pull_text(image, "the pull ended without the image", policy))
        progress.done()
        self.pull_log = [*self.pull_log, *progress.lines][-50:]

    def pick_port(self, refused: Iterable[int] = ()) -> int:
        """A free host port of ``port_range`` (none of ``refused``, those the Engine just refused)."""
        first, last = self._options.port_range
        taken = set(self._ports_in_use()) | self._handed_out | set(refused)
        span = last - first + 1
        start = random.randrange(span)
        for step in range(span):
            port = first + (start + step) % span
            if port not in taken and self._bindable(port):
                self._handed_out.add(port)
                return port
        where = " or in use on this machine" if self._engine.url.startswith("unix://") else ""
        refusals = f" (the Engine refused {', '.join(map(str, sorted(refused)))})" if refused else ""
        raise PermanentStepError(f"no free host port left in the docker shimlet's port_range {first}-{last}: each"
                                 f" is held by a container of ours{where}{refusals}; widen port_range")

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
        refused: list[int] = []  # ports the Engine said are taken, in this call
        refusal: Exception | None = None
        for _ in range(PORT_TRIES):
            try:
                port = self.pick_port(refused)
            except PermanentStepError:
                if refusal is None:
                    raise
                raise refusal from None  # the range is used up: the Engine's words say why
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
                if exc.status == 900:
                    raise refusal from None
                await self._engine.remove(container)  # never started: a retried create makes it anew
                if not port_taken(exc.engine_message):
                    raise refusal from None
                refused.append(port)
                log.info("docker shimlet: %s; trying another port", refusal)
        assert refusal is not None
        raise refusal

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
