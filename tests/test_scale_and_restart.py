"""Scale runs the deploy's fit check; a restart of the shim reports only what it has observed.

Real local shimlet, real opensourcellm pipeline, real llama.cpp servers on a tiny GGUF.
"""

from __future__ import annotations

import asyncio
import functools
import math
from pathlib import Path

import pytest

from modserv_shim.modelinfo import inspect_model
from modserv_shim.modelinfo.accelerators import read_host_memory
from modserv_shim.modelinfo.memory import estimate_memory
from tests.conftest import Live, serve, wait_for
from tests.helpers.local_shim import deploy_body, local_settings, tiny_fixture  # noqa: F401


async def test_scale_up_that_does_not_fit_is_refused_like_a_deploy(start_server, tmp_path: Path, tiny: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(local_settings(tmp_path))
    body = {**deploy_body("tiny", tiny), "resourceRequirements": {"cpu": "1"}}  # no limit: replicas share this host
    per_replica = estimate_memory(inspect_model(str(tiny)), None).per_replica_bytes
    too_many = math.ceil(read_host_memory().available_bytes / per_replica) + 2
    if too_many > 64:
        pytest.skip(f"this host has room for more than 64 replicas of {per_replica} bytes")

    # the deploy with that many replicas is refused...
    r = await live.call("POST", "/api/v1/modserv/deploy", json={**body, "replicaCount": too_many,
                                                                 "dryRun": True}, expect=422)
    assert "does not fit" in r["message"] or "needs" in r["message"], r["message"]
    # ...and so is scaling a running service to it; nothing changes
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=202))["data"]["serviceId"]
    assert (await live.wait_state(sid, "running", "failed", timeout=120))["state"] == "running"
    r = await live.call("POST", f"/api/v1/modserv/{sid}/scale", json={"replicaCount": too_many}, expect=422)
    assert f"cannot scale tiny from 1 to {too_many} replicas" in r["message"], r["message"]
    assert "this host" in r["message"]
    svc = (await live.call("GET", f"/api/v1/modserv/{sid}"))["data"]
    assert svc["replicas"]["desired"] == 1 and svc["state"] == "running"
    events = (await live.call("GET", f"/api/v1/modserv/{sid}/events"))["data"]
    assert not [e for e in events if "scaled" in (e["reason"] or "")]

    # a scale-up that fits goes through
    await live.call("POST", f"/api/v1/modserv/{sid}/scale", json={"replicaCount": 2}, expect=200)

    async def two_ready() -> bool:
        data = (await live.call("GET", f"/api/v1/modserv/{sid}"))["data"]
        return bool(data["replicas"]["ready"] == 2)

    await wait_for(two_ready, timeout=120)


async def test_restart_of_the_shim_does_not_flip_running_services_to_degraded(  # type: ignore[no-untyped-def]
    start_server, tmp_path: Path, tiny: Path
) -> None:
    """Adopted model servers are probed before anything is said about them: no 'degraded' event,
    no '0 of 1 replicas ready', the service stays running throughout."""
    settings = local_settings(tmp_path)
    live: Live = await start_server(settings)
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=deploy_body("tiny", tiny),
                           expect=202))["data"]["serviceId"]
    assert (await live.wait_state(sid, "running", "failed", timeout=120))["state"] == "running"
    await live.stop()  # the model server keeps running
    try:
        for i in range(3):  # three restarts, each adopting the same process
            live = await serve(settings)
            assert (await live.call("GET", f"/api/v1/modserv/{sid}"))["data"]["state"] == "running"
            await wait_for(functools.partial(_replicas_ready, live, sid), timeout=10)
            await asyncio.sleep(0.3)  # a late 'degraded' would be stored by now
            if i < 2:
                await live.stop()
        events = [e["to"] for e in (await live.call("GET", f"/api/v1/modserv/{sid}/events"))["data"]]
        assert events[-1] == "running" and "degraded" not in events, events
    finally:
        await live.stop(delete_services=True)


async def _replicas_ready(live: Live, sid: str) -> bool:
    data = (await live.call("GET", f"/api/v1/modserv/{sid}"))["data"]
    return bool(data["replicas"]["ready"] == 1 and data["state"] == "running")
