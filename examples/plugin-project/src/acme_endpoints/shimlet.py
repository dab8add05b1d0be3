"""The ``endpoints`` shimlet: serve a model from an OpenAI-compatible server that already runs.

A GPU box someone else operates, a vendor's endpoint: the admin lists them per model
in the server's configuration::

    shimlets:
      endpoints:
        options:
          endpoints: {llama-3-8b: "http://gpu-box-1:8000"}
          probe_interval: 10

A deploy of ``llama-3-8b`` with ``"shimlet": "endpoints"`` then makes that server the
service's endpoint: the shimlet probes its ``/v1/models`` in the background and
reports READY while it lists the model, DEGRADED when it stops answering after it did;
delete forgets the service (the server itself is never started nor stopped).  The
URLs come from the admin's configuration, never from a request, so a deploy cannot
make the shim call an address of its choosing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import httpx
from modserv_shim.errors import PermanentStepError
from modserv_shim.kit import PluginOptions
from modserv_shim.plugins import DeployContext, PluginContext, ResourcePhase, ResourceStatus
from pydantic import Field


class EndpointsOptions(PluginOptions):
    label: ClassVar[str] = "endpoints shimlet"

    endpoints: dict[str, str] = Field(default_factory=dict,
                                      description="model name -> base URL of the server that serves it")
    probe_interval: float = Field(10.0, gt=0, description="seconds between two probes of an endpoint")
    probe_timeout: float = Field(5.0, gt=0, description="seconds a probe may take")


class EndpointsShimlet:
    name = "endpoints"

    def __init__(self, ctx: PluginContext) -> None:
        self.options = EndpointsOptions.parse(ctx.options)
        self.file = Path(ctx.data_dir) / "endpoints-shimlet.json"  # the services survive a restart of the shim
        self.services: dict[str, dict[str, str]] = json.loads(self.file.read_text()) if self.file.exists() else {}
        # What the last probe saw, per resource; nothing is probed yet after a restart.
        self.seen: dict[str, tuple[ResourcePhase, str | None]] = {
            rid: (ResourcePhase.UNKNOWN, "not probed since the shim started") for rid in self.services
        }
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._http = httpx.AsyncClient(trust_env=False, timeout=self.options.probe_timeout)
        self._task = asyncio.create_task(self._probe_forever(), name="endpoints-shimlet-probes")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    # ------------------------------------------------------------ the Shimlet contract

    async def create(self, ctx: DeployContext) -> str:
        if ctx.replicas != 1:
            raise PermanentStepError(f"the endpoints shimlet serves one replica per model, not {ctx.replicas}")
        url = self.options.endpoints.get(ctx.spec.modelName)
        if url is None:
            known = ", ".join(sorted(self.options.endpoints)) or "none"
            model = ctx.spec.modelName
            raise PermanentStepError(f"no endpoint is configured for model {model!r} (configured: {known})")
        if ctx.service_id not in self.services:  # idempotent: the same service keeps its entry
            self.services[ctx.service_id] = {"url": url.rstrip("/"), "model": ctx.launch.served_model_name}
            self.seen[ctx.service_id] = (ResourcePhase.PENDING, "not probed yet")
            self._save()
            self._wake.set()  # probe it now, not at the next interval
        return ctx.service_id

    async def status(self, resource_id: str) -> ResourceStatus:
        service = self.services.get(resource_id)
        if service is None:
            return ResourceStatus(ResourcePhase.NOT_FOUND, reason=f"no service {resource_id!r}")
        phase, reason = self.seen[resource_id]
        ready = 1 if phase is ResourcePhase.READY else 0
        return ResourceStatus(phase, ready, 1, service["url"], reason, {"model": service["model"]})

    async def delete(self, resource_id: str) -> None:
        if self.services.pop(resource_id, None) is not None:  # the resource id is the service id
            self._save()
        self.seen.pop(resource_id, None)

    # ------------------------------------------------------------ helpers

    def _save(self) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.services))
        os.replace(tmp, self.file)

    async def _probe_forever(self) -> None:
        while True:
            self._wake.clear()
            services = list(self.services.items())
            await asyncio.gather(*(self._probe(rid, s["url"], s["model"]) for rid, s in services))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.probe_interval)

    async def _probe(self, resource_id: str, url: str, model: str) -> None:
        assert self._http is not None
        try:
            response = await self._http.get(f"{url}/v1/models")
            response.raise_for_status()
            models: list[Any] = response.json().get("data", [])
            found = model in [m.get("id") for m in models]
            problem = None if found else f"{url} does not serve the model {model!r}"
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            problem = f"{url} does not answer: {exc or type(exc).__name__}"
        if resource_id not in self.services:  # deleted while the probe ran
            return
        if problem is None:
            self.seen[resource_id] = (ResourcePhase.READY, None)
        elif self.seen[resource_id][0] in (ResourcePhase.READY, ResourcePhase.DEGRADED):
            self.seen[resource_id] = (ResourcePhase.DEGRADED, problem)
        else:
            self.seen[resource_id] = (ResourcePhase.PENDING, problem)
