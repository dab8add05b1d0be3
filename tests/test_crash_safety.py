"""kill -9 of the server loses no accepted deploy; a restart resumes the step in flight."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import modserv_shim.testing
from tests.helpers.api_flows import DEPLOY
from tests.helpers.server_process import ServerProcess

DOUBLES = Path(modserv_shim.testing.__file__).parent  # fake_shimlet.py, fake_pipeline.py: hot-loaded as files


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    data = tmp_path / "data"
    (data / "plugins").mkdir(parents=True)
    for f in ("fake_shimlet.py", "fake_pipeline.py"):
        shutil.copy(DOUBLES / f, data / "plugins" / f)
    s = ServerProcess(data, tmp_path / "server.log")
    yield s
    s.stop()


def load_doubles(s: ServerProcess) -> None:
    s.api("POST", "/api/v1/plugins/load", json={"kind": "shimlet", "name": "fake", "file": "fake_shimlet.py",
                                                 "attr": "FakeShimlet"})
    s.api("POST", "/api/v1/plugins/load", json={"kind": "pipeline", "name": "fake", "file": "fake_pipeline.py",
                                                 "attr": "FakePipeline"})


def test_sigkill_during_step_then_restart_reaches_running(server: ServerProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    server.start()
    load_doubles(server)
    spec = {**DEPLOY, "shimlet": "fake", "pipeline": "fake",
            "env": {"FAKE_GATE_DEPLOY": str(gate), "HF_TOKEN": "hf_do_not_log_me"}}
    sid = server.api("POST", "/api/v1/modserv/deploy", json=spec)["serviceId"]

    def deploy_running() -> bool:
        steps = server.api("GET", f"/api/v1/modserv/{sid}/pipeline")["steps"]
        return steps[1]["status"] == "running"

    server.wait(deploy_running)
    server.kill9()

    server.start()  # same data dir: plugins reload, the service resumes
    svc = server.api("GET", f"/api/v1/modserv/{sid}")
    assert svc["state"] == "deploying" and svc["currentStep"] == "deploy"
    gate.touch()
    server.wait(lambda: server.api("GET", f"/api/v1/modserv/{sid}")["state"] == "running")
    runs = server.api("GET", f"/api/v1/modserv/{sid}/pipeline/logs")["runs"]
    assert [(r["step"], r["status"]) for r in runs] == [
        ("prepare", "succeeded"), ("deploy", "interrupted"), ("deploy", "succeeded"), ("verify", "succeeded")]
    assert "hf_do_not_log_me" not in server.log.read_text()


def test_sigkill_right_after_accept_loses_nothing(server: ServerProcess) -> None:
    server.start()
    load_doubles(server)
    ids = [server.api("POST", "/api/v1/modserv/deploy",
                      json={**DEPLOY, "shimlet": "fake", "pipeline": "fake"})["serviceId"] for _ in range(5)]
    server.kill9()
    server.start()
    server.wait(lambda: all(server.api("GET", f"/api/v1/modserv/{i}")["state"] == "running" for i in ids))
    listed = {s["serviceId"] for s in server.api("GET", "/api/v1/modserv")}
    assert listed == set(ids)


def test_running_service_is_reattached_not_recreated(server: ServerProcess) -> None:
    server.start()
    load_doubles(server)
    sid = server.api("POST", "/api/v1/modserv/deploy",
                     json={**DEPLOY, "shimlet": "fake", "pipeline": "fake"})["serviceId"]
    server.wait(lambda: server.api("GET", f"/api/v1/modserv/{sid}")["state"] == "running")
    created = (server.data_dir / "fake-shimlet.json").read_text()
    server.kill9()
    server.start()
    svc = server.api("GET", f"/api/v1/modserv/{sid}")
    assert svc["state"] == "running" and svc["resourceId"] == f"fake-{sid}"
    assert (server.data_dir / "fake-shimlet.json").read_text() == created  # same workload record
    events = server.api("GET", f"/api/v1/modserv/{sid}/events")
    assert [e["to"] for e in events].count("running") == 1


def test_stop_answers_pending_wait_for_at_once(server: ServerProcess, tmp_path: Path) -> None:
    """SIGTERM while a client waits (?waitFor=running&timeout=120): the client gets its answer and the
    server is gone in seconds, not after the wait's timeout."""
    import threading

    server.start()
    load_doubles(server)
    spec = {**DEPLOY, "shimlet": "fake", "pipeline": "fake", "env": {"FAKE_GATE_DEPLOY": str(tmp_path / "never")}}
    sid = server.api("POST", "/api/v1/modserv/deploy", json=spec)["serviceId"]
    server.wait(lambda: server.api("GET", f"/api/v1/modserv/{sid}")["state"] == "deploying")
    answers: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(
        httpx.get(f"{server.url}/api/v1/modserv/{sid}?waitFor=running&timeout=120", timeout=130)))
    waiting.start()
    time.sleep(0.5)
    assert not answers  # still waiting
    assert server.proc is not None
    t0 = time.monotonic()
    server.proc.terminate()
    server.proc.wait(30)
    waiting.join(5)
    assert time.monotonic() - t0 < 8
    assert answers and answers[0].status_code == 200 and answers[0].json()["data"]["state"] == "deploying"
