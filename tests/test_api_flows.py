"""The brief's curl flows over real HTTP, with the test-double shimlet and pipeline."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Live, wait_for
from tests.helpers.api_flows import DEPLOY


async def test_brief_flow_deploy_status_pipeline_logs(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    body = await live.call("POST", "/api/v1/modserv/deploy", json=DEPLOY, expect=202)
    data = body["data"]
    assert data["serviceId"].startswith("llama-3-8b-")
    assert len(data["serviceId"]) == len("llama-3-8b-") + 36
    assert data["currentStep"] == "prepare"
    assert data["totalSteps"] == ["prepare", "deploy", "verify"]
    sid = data["serviceId"]

    svc = await live.wait_state(sid, "running")
    assert svc["reason"] is None
    assert svc["endpoint"] == f"http://fake/fake-{sid}"
    assert svc["replicas"] == {"ready": 1, "desired": 1}
    assert svc["spec"]["resourceRequirements"]["acceleratorType"] == "NVIDIA H20"
    assert svc["operator"] == "anonymous"

    pipe = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline", expect=200))["data"]
    assert [s["status"] for s in pipe["steps"]] == ["succeeded"] * 3
    assert [s["phase"] for s in pipe["steps"]] == ["pipeline_running", "deploying", "health_checking"]
    assert all(s["attempts"] == 1 and s["durationMs"] >= 0 for s in pipe["steps"])

    logs = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline/logs", expect=200))["data"]
    assert [r["step"] for r in logs["runs"]] == ["prepare", "deploy", "verify"]
    run = logs["runs"][0]
    assert run["operator"] == "anonymous" and run["durationMs"] is not None
    assert run["params"]["model"] == "/models/llama-3-8b" and run["params"]["timeout"] == 30
    assert any(line["message"] == "prepare attempt 1" for line in logs["logs"])

    events = (await live.call("GET", f"/api/v1/modserv/{sid}/events"))["data"]
    assert [e["to"] for e in events] == ["initializing", "pipeline_running", "deploying", "health_checking", "running"]

    listed = (await live.call("GET", "/api/v1/modserv?state=running"))["data"]
    assert [s["serviceId"] for s in listed] == [sid]
    assert (await live.call("GET", "/api/v1/modserv?state=failed"))["data"] == []


async def test_delete_removes_workload_and_is_idempotent(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=DEPLOY))["data"]["serviceId"]
    await live.wait_state(sid, "running")
    shimlet = await live.server.manager.registry.shimlet("fake")
    assert f"fake-{sid}" in shimlet.resources()  # type: ignore[attr-defined]
    body = await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)
    assert body["data"]["state"] == "terminated"
    assert f"fake-{sid}" not in shimlet.resources()  # type: ignore[attr-defined]
    again = await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)
    assert again["data"]["state"] == "terminated"
    events = (await live.call("GET", f"/api/v1/modserv/{sid}/events"))["data"]
    assert [e["to"] for e in events][-2:] == ["terminating", "terminated"]


async def test_delete_during_pipeline_cancels_it(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    spec = {**DEPLOY, "env": {"FAKE_GATE_DEPLOY": str(tmp_path / "never")}}
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=spec))["data"]["serviceId"]

    async def deploy_in_flight() -> bool:
        steps = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline"))["data"]["steps"]
        return bool(steps[1]["status"] == "running")

    await wait_for(deploy_in_flight)
    body = await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)
    assert body["data"]["state"] == "terminated"
    runs = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline/logs"))["data"]["runs"]
    assert [(r["step"], r["status"]) for r in runs] == [("prepare", "succeeded"), ("deploy", "cancelled")]
    assert runs[-1]["error"] == "cancelled: the service was deleted"


async def test_delete_right_after_deploy_leaves_no_run_behind(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    for _ in range(5):
        sid = (await live.call("POST", "/api/v1/modserv/deploy", json=DEPLOY))["data"]["serviceId"]
        body = await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)
        assert body["data"]["state"] == "terminated"
        runs = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline/logs"))["data"]["runs"]
        assert all(r["status"] in ("succeeded", "cancelled") for r in runs), runs
    shimlet = await live.server.manager.registry.shimlet("fake")
    assert shimlet.resources() == {}  # type: ignore[attr-defined]


async def test_failed_step_reason_and_retry_from_failed_step(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    spec = {**DEPLOY, "env": {"FAKE_FAIL_DEPLOY": "4"}}  # more failures than the 3 attempts of one round
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=spec))["data"]["serviceId"]
    svc = await live.wait_state(sid, "failed")
    assert svc["reason"] == "deploy failed (after 3 attempts): simulated temporary failure 3"
    assert svc["currentStep"] == "deploy"
    pipe = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline"))["data"]
    assert [s["status"] for s in pipe["steps"]] == ["succeeded", "failed", "pending"]
    assert pipe["steps"][1]["attempts"] == 3

    # retry runs from the failed step, at once in its phase; 'prepare' is not run again
    body = await live.call("POST", f"/api/v1/modserv/{sid}/retry", expect=202)
    assert body["data"]["currentStep"] == "deploy"
    assert body["data"]["state"] == "deploying"
    svc = await live.wait_state(sid, "running")
    assert svc["reason"] is None
    runs = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline/logs"))["data"]["runs"]
    assert [r["step"] for r in runs] == ["prepare"] + ["deploy"] * 5 + ["verify"]
    assert [r["status"] for r in runs if r["step"] == "deploy"] == ["failed"] * 4 + ["succeeded"]


async def test_retry_only_for_failed_services(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=DEPLOY))["data"]["serviceId"]
    await live.wait_state(sid, "running")
    body = await live.call("POST", f"/api/v1/modserv/{sid}/retry", expect=409)
    assert body["code"] == 1004 and "only a failed service can be retried" in body["message"]


async def test_permanent_failure_not_retried(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    spec = {**DEPLOY, "env": {"FAKE_PERMANENT_PREPARE": "the model needs 141 GiB, 1 x NVIDIA L4 has 24 GiB"}}
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=spec))["data"]["serviceId"]
    svc = await live.wait_state(sid, "failed")
    assert svc["reason"] == "prepare failed: the model needs 141 GiB, 1 x NVIDIA L4 has 24 GiB"
    pipe = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline"))["data"]
    assert pipe["steps"][0]["attempts"] == 1


async def test_running_service_degrades_and_recovers(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=DEPLOY))["data"]["serviceId"]
    await live.wait_state(sid, "running")
    shimlet = await live.server.manager.registry.shimlet("fake")
    shimlet.set_status(f"fake-{sid}", "degraded", "replica 0 exited with code 137")  # type: ignore[attr-defined]
    svc = await live.wait_state(sid, "degraded")
    assert svc["reason"] == "replica 0 exited with code 137"
    shimlet.set_status(f"fake-{sid}", None)  # type: ignore[attr-defined]
    svc = await live.wait_state(sid, "running")
    assert svc["reason"] is None


async def test_scale_updates_desired_replicas(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=DEPLOY))["data"]["serviceId"]
    await live.wait_state(sid, "running")
    body = await live.call("POST", f"/api/v1/modserv/{sid}/scale", json={"replicaCount": 3}, expect=200)
    assert body["data"]["replicas"]["desired"] == 3
    assert body["data"]["spec"]["replicaCount"] == 3

    async def ready3() -> bool:
        return (await live.call("GET", f"/api/v1/modserv/{sid}"))["data"]["replicas"]["ready"] == 3

    from tests.conftest import wait_for

    await wait_for(ready3)


async def test_plugins_listed_with_capabilities(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    data = (await live.call("GET", "/api/v1/plugins", expect=200))["data"]
    shimlets = {p["name"]: p for p in data["shimlets"]}
    pipelines = {p["name"]: p for p in data["pipelines"]}
    assert shimlets["fake"]["capabilities"] == ["scale", "logs"] and shimlets["fake"]["default"] is True
    assert [s["name"] for s in pipelines["fake"]["steps"]] == ["prepare", "deploy", "verify"]
    assert "local" in shimlets and "opensourcellm" in pipelines


async def test_default_plugins_start_with_the_server(start_server) -> None:  # type: ignore[no-untyped-def]
    """The first deploy must not wait for the default shimlet and pipeline to be imported and started."""
    live: Live = await start_server()
    reg = live.server.manager.registry

    async def started() -> bool:
        return all(reg.entry(k, "fake").instance is not None for k in ("shimlet", "pipeline"))

    await wait_for(started)
    assert reg.entry("shimlet", "local").instance is None  # the others start on first use


async def test_health_metrics_and_openapi(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    assert (await live.call("GET", "/healthz", expect=200))["data"]["status"] == "ok"
    assert (await live.call("GET", "/readyz", expect=200))["data"]["status"] == "ready"
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=DEPLOY))["data"]["serviceId"]
    await live.wait_state(sid, "running")
    text = (await live.client.get("/metrics")).text
    assert 'modserv_deploys_finished_total{pipeline="fake",result="succeeded",shimlet="fake"} 1.0' in text
    assert 'modserv_services{pipeline="fake",shimlet="fake",state="running"} 1.0' in text
    assert ('modserv_step_duration_seconds_count{outcome="succeeded",pipeline="fake",shimlet="fake",step="deploy"} 1.0'
            in text)
    openapi = (await live.client.get("/openapi.json")).json()
    assert "/api/v1/modserv/deploy" in openapi["paths"]
    assert (await live.client.get("/docs")).status_code == 200


async def test_dry_run_returns_rendering_and_stores_nothing(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    body = await live.call("POST", "/api/v1/modserv/deploy", json={**DEPLOY, "dryRun": True}, expect=200)
    data = body["data"]
    assert data["dryRun"] is True
    assert data["rendered"] == {"rendered": {"argv": ["fake-server", "/models/llama-3-8b"]}}
    assert [r["step"] for r in data["stepsRun"]] == ["prepare"]
    assert (await live.call("GET", "/api/v1/modserv"))["data"] == []
    await live.call("GET", f"/api/v1/modserv/{data['serviceId']}", expect=404)
