"""A custom shimlet: "deploy" onto an OpenAI-compatible server that already runs somewhere.

It shows the whole Shimlet contract in a few lines.  The server's URL comes from
the deploy's ``env.EXTERNAL_URL``; modserv-shim then health-checks it, tracks its
lifecycle and forgets it on delete (the server itself is not touched).

    curl -X POST localhost:8080/api/v1/plugins/load -H 'Content-Type: application/json' \\
      -d '{"kind": "shimlet", "name": "external", "file": "external_shimlet.py", "attr": "ExternalShimlet"}'
"""

from __future__ import annotations

import json
from pathlib import Path

from modserv_shim.errors import PermanentStepError
from modserv_shim.plugins import DeployContext, PluginContext, ResourcePhase, ResourceStatus


class ExternalShimlet:
    name = "external"

    def __init__(self, ctx: PluginContext) -> None:
        self.file = ctx.data_dir / "external-endpoints.json"  # survives a restart of the shim

    def _load(self) -> dict[str, str]:
        return json.loads(self.file.read_text()) if self.file.exists() else {}

    def _save(self, data: dict[str, str]) -> None:
        tmp = Path(f"{self.file}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.file)

    async def create(self, ctx: DeployContext) -> str:
        url = ctx.spec.env.get("EXTERNAL_URL")
        if not url:
            raise PermanentStepError('the external shimlet needs "env": {"EXTERNAL_URL": "http://host:port"}')
        data = self._load()
        data[ctx.service_id] = url.rstrip("/")  # idempotent: same id, same entry
        self._save(data)
        return ctx.service_id

    async def status(self, resource_id: str) -> ResourceStatus:
        url = self._load().get(resource_id)
        if url is None:
            return ResourceStatus(ResourcePhase.NOT_FOUND)
        return ResourceStatus(ResourcePhase.READY, 1, 1, endpoint=url)  # the pipeline probes it

    async def delete(self, resource_id: str) -> None:
        data = self._load()
        if data.pop(resource_id, None) is not None:
            self._save(data)
