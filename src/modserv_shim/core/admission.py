"""What a deploy must pass before anything is stored: its plugins exist, what it puts into a
process is allowed (docs/SECURITY.md), and its ``Idempotency-Key`` is well formed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from modserv_shim.allowlist import RequestPolicy, check_env, check_model_path, refuse
from modserv_shim.core.lifecycle import State
from modserv_shim.core.records import ServiceRecord
from modserv_shim.core.registry import Registry
from modserv_shim.errors import PluginNotFound, ValidationFailed
from modserv_shim.plugins import AccessChecker, Caller, Pipeline, RequestChecker, Shimlet, StepSpec
from modserv_shim.spec import DeploySpec

IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


def check_request(spec: DeploySpec, pipeline_name: str, shimlet: Shimlet, pipeline: Pipeline,
                  policy: RequestPolicy) -> None:
    """What the request puts into a process must be allowed (docs/SECURITY.md), before anything is stored."""
    check_model_path(spec.modelFile, policy.model_roots)
    if isinstance(pipeline, RequestChecker):
        pipeline.check_request(spec, shimlet)
        return
    # A pipeline that does not say which runtimes it starts gets the strict default.
    check_env(spec.env, allowed=frozenset(), policy=policy,
              who=f"the {pipeline_name} pipeline (it declares no runtime)")
    if spec.runtimeArgs:
        raise refuse("runtimeArgs", f"the {pipeline_name} pipeline does not declare which runtime arguments"
                     " it accepts, so none are")


class Admission:
    def __init__(
        self, registry: Registry, policy: RequestPolicy, *, default_shimlet: str, default_pipeline: str,
        steps_of: Callable[[str], Awaitable[list[StepSpec]]],
    ) -> None:
        self.registry = registry
        self.policy = policy
        self.default_shimlet = default_shimlet
        self.default_pipeline = default_pipeline
        self.steps_of = steps_of
        self._key_locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def admit(self, spec: DeploySpec, operator: str, caller: Caller | None = None
                    ) -> tuple[ServiceRecord, Shimlet, Pipeline, list[StepSpec]]:
        """A new record (``initializing``, not stored) for the request, once its plugins are found
        (an unknown one is a :class:`ValidationFailed`), the request is checked and, for a pipeline
        that decides who may deploy what (:class:`AccessChecker`), ``caller`` may."""
        shimlet_name = spec.shimlet or self.default_shimlet
        pipeline_name = spec.pipeline or self.default_pipeline
        try:
            shimlet = await self.registry.shimlet(shimlet_name)
            pipeline = await self.registry.pipeline(pipeline_name)
        except PluginNotFound as exc:
            raise ValidationFailed(str(exc)) from None
        check_request(spec, pipeline_name, shimlet, pipeline, self.policy)
        if caller is not None and isinstance(pipeline, AccessChecker):
            pipeline.check_access(spec, caller)
        steps = await self.steps_of(pipeline_name)
        rec = ServiceRecord(
            id=f"{spec.modelName}-{uuid.uuid4()}", model_name=spec.modelName, spec=spec.wire(),
            shimlet=shimlet_name, pipeline=pipeline_name, state=State.INITIALIZING,
            total_steps=[s.name for s in steps], replicas_desired=spec.replicaCount, operator=operator,
        )
        return rec, shimlet, pipeline, steps

    @staticmethod
    def body_digest(key: str, spec: DeploySpec) -> str:
        """The hash of the body a key is stored with; a key that is not 1 to 255 printable ASCII
        characters is a :class:`ValidationFailed`."""
        if not IDEMPOTENCY_KEY_RE.match(key):
            raise ValidationFailed("the Idempotency-Key header must be 1 to 255 printable ASCII characters"
                                   " without spaces (a UUID is a good choice)")
        return hashlib.sha256(json.dumps(spec.wire(), sort_keys=True).encode()).hexdigest()

    @asynccontextmanager
    async def key_held(self, operator: str, key: str) -> AsyncIterator[None]:
        """One request per caller and key at a time in this process (the store's primary key guards
        other processes)."""
        lock = self._key_locks.setdefault((operator, key), asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked():
                self._key_locks.pop((operator, key), None)
