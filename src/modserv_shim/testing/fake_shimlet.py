"""TEST DOUBLE: a shimlet whose "workloads" are JSON records in a file.

It is not an environment; it lets core, API and pipeline tests drive every
outcome without real processes.  It keeps the whole shimlet contract
(:class:`~modserv_shim.testing.shimlet_contract.ShimletContract` passes against
it), can scale and shows logs.  State lives in ``<data_dir>/fake-shimlet.json`` so a
restarted server sees the same workloads (like a real environment would).

Behaviour per deploy comes from ``spec.env`` (test-only keys):
``FAKE_READY_DELAY`` seconds until ready (default 0.05), ``FAKE_STATUS`` force a
phase (``failed`` / ``degraded``) with ``FAKE_REASON``.

This module imports only :mod:`modserv_shim.plugins` and :mod:`modserv_shim.errors`, so
the file can also be copied into a server's plugin directory and hot-loaded
(``{"kind": "shimlet", "name": "fake", "file": "fake_shimlet.py", "attr": "FakeShimlet"}``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from modserv_shim.errors import NotFound
from modserv_shim.plugins import DeployContext, PluginContext, ResourcePhase, ResourceStatus


class FakeShimlet:
    name = "fake"

    def __init__(self, ctx: PluginContext) -> None:
        self.path = Path(ctx.data_dir) / "fake-shimlet.json"
        self.creates = 0
        self.deletes = 0

    def _load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
            return data
        except FileNotFoundError:
            return {}

    def _save(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    def resources(self) -> dict[str, Any]:
        return self._load()

    async def create(self, ctx: DeployContext) -> str:
        data = self._load()
        rid = f"fake-{ctx.service_id}"
        if rid not in data:  # idempotent: a second create changes nothing
            self.creates += 1
            env = ctx.spec.env
            data[rid] = {
                "replicas": ctx.replicas,
                "ready_at": time.time() + float(env.get("FAKE_READY_DELAY", "0.05")),
                "status": env.get("FAKE_STATUS"),
                "reason": env.get("FAKE_REASON"),
                "created": time.time(),
            }
            self._save(data)
        return rid

    async def status(self, resource_id: str) -> ResourceStatus:
        r = self._load().get(resource_id)
        if r is None:
            return ResourceStatus(ResourcePhase.NOT_FOUND, reason="no such fake resource")
        if r.get("status"):
            return ResourceStatus(ResourcePhase(r["status"]), 0, r["replicas"], None, r.get("reason"))
        if time.time() < r["ready_at"]:
            return ResourceStatus(ResourcePhase.PENDING, 0, r["replicas"], None, "starting")
        return ResourceStatus(ResourcePhase.READY, r["replicas"], r["replicas"], f"http://fake/{resource_id}")

    async def delete(self, resource_id: str) -> None:
        data = self._load()
        rid = resource_id if resource_id.startswith("fake-") else f"fake-{resource_id}"
        if data.pop(rid, None) is not None:
            self.deletes += 1
            self._save(data)

    async def scale(self, resource_id: str, replicas: int) -> None:
        data = self._load()
        if resource_id not in data:
            raise NotFound(f"no fake resource {resource_id!r}")
        data[resource_id]["replicas"] = replicas
        self._save(data)

    async def logs(self, resource_id: str, tail: int = 100) -> list[str]:
        if resource_id not in self._load():
            raise NotFound(f"no fake resource {resource_id!r}")
        return [f"fake log line {i} of {resource_id}" for i in range(3)][-tail:]

    def set_status(self, resource_id: str, status: str | None, reason: str | None = None) -> None:
        data = self._load()
        data[resource_id]["status"] = status
        data[resource_id]["reason"] = reason
        self._save(data)


class ProbedFakeShimlet(FakeShimlet):
    """TEST DOUBLE: :class:`FakeShimlet` that also answers the default pipeline's health check itself.

    It is an ``EndpointProber``: ``/v1/models`` lists the served model and a completion answers
    ``" hi"``, so a pipeline built on opensourcellm runs through health-check with no server at all
    (what :class:`~modserv_shim.testing.pipeline_contract.PipelineContract` needs for a quick run).
    """

    name = "fake"

    def __init__(self, ctx: PluginContext) -> None:
        super().__init__(ctx)
        self.served: dict[str, str] = {}

    async def create(self, ctx: DeployContext) -> str:
        rid = await super().create(ctx)
        self.served[rid] = ctx.launch.served_model_name
        return rid

    async def request(self, resource_id: str, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        if path == "/v1/models":
            return 200, {"data": [{"id": self.served.get(resource_id)}]}
        return 200, {"choices": [{"text": " hi"}]}
