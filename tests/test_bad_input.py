"""Bad input gets a clear 4xx in the envelope and changes nothing stored."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Live
from tests.helpers.api_flows import DEPLOY


def with_(**changes: Any) -> dict[str, Any]:
    body = {**DEPLOY, **changes}
    return {k: v for k, v in body.items() if v is not None}


def rr(**changes: Any) -> dict[str, Any]:
    return with_(resourceRequirements={**DEPLOY["resourceRequirements"], **changes})  # type: ignore[dict-item]


CASES = [
    # (body, HTTP status, code, words the message must contain)
    (with_(modelName=None), 422, 1001, "modelName: is required"),
    (with_(modelFile=None), 422, 1001, "modelFile: is required"),
    (with_(modelName="Llama-3-8B"), 422, 1001, "try 'llama-3-8b'"),
    (with_(modelName="llama_3"), 422, 1001, "lowercase letters, digits and '-'"),
    (with_(modelName="x" * 64), 422, 1001, "at most 63 characters"),
    (with_(modelFile="models/llama"), 422, 1001, "must be an absolute path"),
    (with_(modelFile="/models/../etc/passwd"), 422, 1001, "must not contain '..'"),
    (with_(modelFile="hf://meta-llama/Llama-3-8B"), 422, 1001, "not supported yet"),
    (with_(replicaCount="two"), 422, 1001, "replicaCount: Input should be a valid integer"),
    (with_(replicaCount=0), 422, 1001, "replicaCount: Input should be greater than or equal to 1"),
    (with_(replicaCount=1000), 422, 1001, "replicaCount: Input should be less than or equal to 64"),
    (rr(cpu="four"), 422, 1001, "cpu must be a Kubernetes quantity"),
    (rr(memory="16GB"), 422, 1001, "memory must be a Kubernetes quantity such as '16Gi'"),
    (rr(acceleratorCount=-1), 422, 1001, "acceleratorCount"),
    (rr(acceleratorType=None, acceleratorCount=2), 422, 1001, "acceleratorType is not"),
    (with_(replicas=2), 422, 1001, "replicas: is not a known field"),
    (with_(shimlet="nope"), 422, 1001, "no shimlet named 'nope'; available: docker, fake, k8s, local"),
    (with_(pipeline="nope"), 422, 1001, "no pipeline named 'nope'"),
    (with_(env={"1BAD": "x"}), 422, 1001, "not a valid variable name"),
    (with_(env={"LD_PRELOAD": "/tmp/evil.so"}), 422, 1001, "env.LD_PRELOAD: LD_PRELOAD is not allowed"),
    (with_(env={"PYTHONPATH": "/tmp"}), 422, 1001, "PYTHONPATH is not allowed"),
    (with_(runtimeArgs=["--host", "0.0.0.0"]), 422, 1001, "does not declare which runtime arguments"),
    (with_(dryRun="false"), 422, 1001, "dryRun: Input should be a valid boolean"),
    (with_(dryRun=0), 422, 1001, "dryRun: Input should be a valid boolean"),
    (with_(replicaCount="2"), 422, 1001, "replicaCount: Input should be a valid integer"),
    (with_(replicaCount=2.0), 422, 1001, "replicaCount: Input should be a valid integer"),
    (rr(memory="99999999999999Ei"), 422, 1001, "memory must be from 1Mi to 64Ti"),
    (rr(memory="0"), 422, 1001, "memory must be from 1Mi to 64Ti"),
    (rr(cpu="100000"), 422, 1001, "cpu must be from 1m to 4096 cores"),
    (rr(acceleratorCount=True), 422, 1001, "acceleratorCount: Input should be a valid integer"),
    (with_(env={"A": "x" * 5000}), 422, 1001, "at most 4096 are accepted"),
    (with_(env={f"FAKE_{i}": "x" for i in range(65)}), 422, 1001, "env: Dictionary should have at most 64 items"),
    (with_(runtimeArgs=["--x"] * 65), 422, 1001, "runtimeArgs: List should have at most 64 items"),
    (with_(modelFile="/models/a\nb"), 422, 1001, "control characters"),
    (with_(runtime="tgi"), 422, 1001, "runtime"),
    ([1, 2], 422, 1001, "invalid request"),
]


@pytest.mark.parametrize(("body", "status", "code", "words"), CASES)
async def test_bad_deploy_body(start_server, body: Any, status: int, code: int, words: str) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    before = await _snapshot(live)
    r = await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=status)
    assert r["code"] == code
    assert words in r["message"], r["message"]
    assert r["data"] is None
    assert await _snapshot(live) == before


async def _snapshot(live: Live) -> Any:
    return (await live.call("GET", "/api/v1/modserv"))["data"]


async def test_malformed_json_and_wrong_content(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=DEPLOY))["data"]["serviceId"]
    await live.wait_state(sid, "running")
    before = await _snapshot(live)
    r = await live.call("POST", "/api/v1/modserv/deploy", content=b'{"modelName": "x",', expect=400,
                        headers={"content-type": "application/json"})
    assert r["code"] == 1000 and "not valid JSON" in r["message"]
    r = await live.call("POST", "/api/v1/modserv/deploy", content=b"", expect=422,
                        headers={"content-type": "application/json"})
    assert r["code"] == 1001
    assert await _snapshot(live) == before


async def test_unknown_ids_and_routes(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    for method, path in [("GET", "/api/v1/modserv/nope-1"), ("GET", "/api/v1/modserv/nope-1/pipeline"),
                         ("GET", "/api/v1/modserv/nope-1/pipeline/logs"), ("DELETE", "/api/v1/modserv/nope-1"),
                         ("POST", "/api/v1/modserv/nope-1/retry")]:
        r = await live.call(method, path, expect=404)
        assert r["code"] == 1002 and r["message"] == "no service with id 'nope-1'"
    r = await live.call("GET", f"/api/v1/modserv/{'x' * 5000}", expect=404)  # answered without a store lookup
    assert r["code"] == 1002 and "ids have at most 120 characters" in r["message"] and len(r["message"]) < 300
    r = await live.call("GET", "/api/v1/nothing-here", expect=404)
    assert r["code"] == 1002 and "no such endpoint" in r["message"]
    r = await live.call("POST", "/api/v1/modserv/nope-1/scale", json={"replicaCount": 2}, expect=404)
    r = await live.call("POST", "/api/v1/modserv/nope-1/scale", json={"replicaCount": 0}, expect=422)
    assert "replicaCount" in r["message"]


async def test_scale_refused_when_not_serving(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    body = with_(env={"FAKE_PERMANENT_PREPARE": "bad model"})
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=body))["data"]["serviceId"]
    await live.wait_state(sid, "failed")
    r = await live.call("POST", f"/api/v1/modserv/{sid}/scale", json={"replicaCount": 2}, expect=409)
    assert r["code"] == 1004 and "is failed" in r["message"]
    assert (await live.call("GET", f"/api/v1/modserv/{sid}"))["data"]["replicas"]["desired"] == 1


async def test_unknown_plugin_load_requests(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    r = await live.call("POST", "/api/v1/plugins/load", json={"kind": "shimlet", "name": "x", "file": "missing.py",
                                                              "attr": "X"}, expect=422)
    assert r["code"] == 1005 and "plugin file not found" in r["message"]
    r = await live.call("POST", "/api/v1/plugins/load", json={"kind": "widget", "name": "x", "file": "a.py",
                                                              "attr": "X"}, expect=422)
    assert r["code"] == 1001 and "kind" in r["message"]
    plugins = (await live.call("GET", "/api/v1/plugins"))["data"]
    assert "x" not in [p["name"] for p in plugins["shimlets"]]
