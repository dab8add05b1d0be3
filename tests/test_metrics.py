"""Prometheus metrics: ``/metrics`` scraped over HTTP from real servers and parsed with the Prometheus parser.

* the core's counts (deploys accepted and finished by result, transitions, retries, services by state),
  a histogram's count, HTTP requests by route template, plugin loads, and what a restart keeps
  (the test-double shimlet, given a capacity, and pipeline: the behaviour is the core's);
* the local shimlet with a real llama.cpp server: its capacity is this machine;
* the k8s shimlet on the simulated cluster: capacity from the nodes' allocatable, used ratios, and a
  restart;
* the Grafana dashboard and the alert rules name only metrics a real scrape has.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modserv_shim.config import Settings
from modserv_shim.modelinfo.accelerators import read_host_memory
from modserv_shim.plugins import Capacity, HostCapacity
from modserv_shim.server.runner import build_registry
from modserv_shim.testing.fake_pipeline import FakePipeline
from modserv_shim.testing.fake_shimlet import FakeShimlet
from tests.conftest import REPO, Live, fake_settings, free_port, serve, wait_for

GIB = 2**30
H20 = {"acceleratorType": "NVIDIA H20", "acceleratorCount": 2, "cpu": "500m", "memory": "1Gi"}


class Scrape:
    """One parsed scrape: ``value(name, **labels)`` sums the samples whose labels include ``labels``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples = [s for f in self.families for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def has(self, name: str, **labels: str) -> bool:
        return any(s.name == name and labels.items() <= s.labels.items() for s in self.samples)

    def names(self) -> set[str]:
        """Every name a query may use: sample names, family names, and ``_total`` of counters."""
        out = {s.name for s in self.samples} | {f.name for f in self.families}
        return out | {f"{f.name}_total" for f in self.families if f.type == "counter"}


async def scrape(live: Live) -> Scrape:
    r = await live.client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return Scrape(r.text)


class CapacityFakeShimlet(FakeShimlet):
    """The test double with a known capacity: one host, 8 cores, 32 GiB, 8 H20s (named as node labels name them)."""

    async def capacity(self) -> Capacity:
        return Capacity((HostCapacity("fake-host", 8.0, 32 * GIB, {"NVIDIA-H20": 8}),))


@pytest.fixture
async def start_fake(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Live]]]:
    """Servers with the capacity-reporting test-double shimlet and the fake pipeline; stopped at the end."""
    running: list[Live] = []

    async def start(settings: Settings) -> Live:
        registry = build_registry(settings)
        registry.register("shimlet", "fake", CapacityFakeShimlet, "test-double")
        registry.register("pipeline", "fake", FakePipeline, "test-double")
        live = await serve(settings, registry)
        running.append(live)
        return live

    yield start
    for live in reversed(running):
        await live.stop(delete_services=True)


async def deploy(live: Live, name: str, **extra: Any) -> str:
    body = {"modelName": name, "modelFile": f"/models/{name}", **extra}
    return str((await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=202))["data"]["serviceId"])


async def four_deploys(live: Live, tmp_path: Path) -> dict[str, str]:
    """running (2 replicas of 2 H20s), running after one retry, failed, and deleted while its pipeline ran."""
    ids = {
        "ok": await deploy(live, "ok", resourceRequirements=H20, replicaCount=2),
        "retried": await deploy(live, "retried", env={"FAKE_FAIL_DEPLOY": "1"}),
        "failed": await deploy(live, "failed", env={"FAKE_PERMANENT_PREPARE": "the model is broken"}),
        "cancelled": await deploy(live, "cancelled", env={"FAKE_GATE_DEPLOY": str(tmp_path / "never")}),
    }
    await live.wait_state(ids["ok"], "running")
    await live.wait_state(ids["retried"], "running")
    await live.wait_state(ids["failed"], "failed")
    await live.wait_state(ids["cancelled"], "deploying")
    assert (await live.call("DELETE", f"/api/v1/modserv/{ids['cancelled']}"))["data"]["state"] == "terminated"
    assert (await live.call("DELETE", f"/api/v1/modserv/{ids['retried']}"))["data"]["state"] == "terminated"
    return ids


REBUILT = [  # (name, labels, value after four_deploys): what a restart must keep
    ("modserv_deploys_accepted_total", {}, 4),
    ("modserv_deploys_finished_total", {"result": "succeeded"}, 2),
    ("modserv_deploys_finished_total", {"result": "failed"}, 1),
    ("modserv_deploys_finished_total", {"result": "cancelled"}, 1),
    ("modserv_state_transitions_total", {"from_state": "", "to_state": "initializing"}, 4),
    ("modserv_state_transitions_total", {"from_state": "health_checking", "to_state": "running"}, 2),
    ("modserv_state_transitions_total", {"from_state": "deploying", "to_state": "terminating"}, 1),
    ("modserv_state_transitions_total", {"from_state": "terminating", "to_state": "terminated"}, 2),
    ("modserv_step_retries_total", {"step": "deploy"}, 1),
    ("modserv_step_retries_total", {"step": "prepare"}, 0),
    ("modserv_services", {"state": "running"}, 1),
    ("modserv_services", {"state": "failed"}, 1),
    ("modserv_services", {"state": "terminated"}, 2),
    ("modserv_services", {"state": "deploying"}, 0),
    ("modserv_requested_accelerators", {"accelerator_type": "NVIDIA H20"}, 4),
    ("modserv_requested_cpu_cores", {"accelerator_type": "NVIDIA H20"}, 1.0),
    ("modserv_requested_memory_bytes", {"accelerator_type": "NVIDIA H20"}, 2 * GIB),
]


async def test_counts_histograms_http_plugins_and_a_restart(start_fake, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = fake_settings(tmp_path, capacity_interval=0.2)
    live: Live = await start_fake(settings)
    ids = await four_deploys(live, tmp_path)
    await live.call("GET", "/api/v1/modserv/no-such-service", expect=404)
    await live.call("POST", "/api/v1/plugins/load", expect=422,
                    json={"kind": "shimlet", "name": "nope", "file": "missing.py", "attr": "Shimlet"})

    m = await scrape(live)
    fake = {"shimlet": "fake", "pipeline": "fake"}
    for name, labels, want in REBUILT:
        assert m.value(name, **fake, **labels) == want, (name, labels)
    # a histogram: one observation per deploy that reached running
    assert m.value("modserv_deploy_time_to_running_seconds_count", **fake) == 2
    assert 0 < m.value("modserv_deploy_time_to_running_seconds_sum", **fake) < 30
    assert m.value("modserv_pipeline_duration_seconds_count", **fake, result="succeeded") == 2
    assert m.value("modserv_step_duration_seconds_count", **fake, step="deploy", outcome="failed") == 1
    # replicas of the live services only
    assert m.value("modserv_replicas_desired", service=ids["ok"]) == 2
    assert m.value("modserv_replicas_ready", service=ids["ok"]) == 2
    assert not m.has("modserv_replicas_desired", service=ids["retried"])  # terminated
    # HTTP: route templates, never raw paths
    assert m.value("modserv_http_requests_total", route="/api/v1/modserv/deploy", method="POST", status="202") == 4
    assert m.value("modserv_http_requests_total", route="/api/v1/modserv/{service_id}", method="GET",
                   status="404") == 1
    assert m.value("modserv_http_request_duration_seconds_count", route="/api/v1/modserv/deploy", method="POST") == 4
    assert "no-such-service" not in m.text and ids["ok"] not in {s.labels.get("route") for s in m.samples}
    assert m.value("modserv_plugin_loads_total", kind="shimlet", result="failed") == 1
    assert m.value("modserv_plugin_loads_total", kind="shimlet", result="succeeded") == 0

    # capacity, read in the background, and the used ratios: requested / capacity
    async def capacity_read() -> Scrape | None:
        s = await scrape(live)
        return s if s.has("modserv_capacity_cpu_cores", shimlet="fake") else None

    m = await wait_for(capacity_read)
    assert m.value("modserv_capacity_cpu_cores", shimlet="fake", host="fake-host") == 8
    assert m.value("modserv_capacity_memory_bytes", shimlet="fake") == 32 * GIB
    assert m.value("modserv_capacity_accelerators", shimlet="fake", accelerator_type="NVIDIA H20") == 8
    assert m.value("modserv_capacity_used_ratio", shimlet="fake", resource="cpu") == pytest.approx(1.0 / 8)
    assert m.value("modserv_capacity_used_ratio", shimlet="fake", resource="memory") == pytest.approx(2 / 32)
    assert m.value("modserv_accelerators_used_ratio", shimlet="fake", accelerator_type="NVIDIA H20") == 0.5

    # a restart: what the store says is rebuilt, not reset; histograms and HTTP counts start again
    await live.stop()
    live = await start_fake(settings)
    m = await scrape(live)
    for name, labels, want in REBUILT:
        assert m.value(name, **fake, **labels) == want, ("after a restart", name, labels)
    assert m.value("modserv_deploy_time_to_running_seconds_count", **fake) == 0
    assert m.value("modserv_http_requests_total", route="/api/v1/modserv/deploy") == 0
    assert m.value("modserv_replicas_desired", service=ids["ok"]) == 2

    # counting goes on from the rebuilt values
    await live.call("DELETE", f"/api/v1/modserv/{ids['ok']}", expect=200)
    m = await scrape(live)
    assert m.value("modserv_services", **fake, state="terminated") == 3
    assert m.value("modserv_services", **fake, state="running") == 0
    assert m.value("modserv_requested_accelerators", **fake, accelerator_type="NVIDIA H20") == 0  # still shown, 0
    assert m.value("modserv_state_transitions_total", **fake, from_state="terminating", to_state="terminated") == 3


# -- the Grafana dashboard and the alert rules ---------------------------------------------------------------------

DASHBOARD = REPO / "deploy" / "grafana" / "modserv-shim.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
METRIC_RE = re.compile(r"\bmodserv_[a-z0-9_]+")


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_parse_and_are_complete() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {"ModservDeployFailureRatioHigh", "ModservServicesDegraded",
                                           "ModservPipelinesStuck"}
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]) and rule["labels"].get("severity")
        assert rule["annotations"].get("summary") and rule["annotations"].get("description")
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


async def test_dashboard_and_alerts_name_only_metrics_a_scrape_has(start_fake, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = fake_settings(tmp_path, capacity_interval=0.2)
    live: Live = await start_fake(settings)
    await four_deploys(live, tmp_path)

    async def with_capacity() -> Scrape | None:
        s = await scrape(live)
        return s if s.has("modserv_capacity_refresh_timestamp_seconds") else None

    names = (await wait_for(with_capacity)).names()
    exprs = dashboard_exprs() + [r["expr"] for r in alert_rules()]
    used = {name for expr in exprs for name in METRIC_RE.findall(expr)}
    assert len(used) >= 15
    assert used - names == set(), "the dashboard or the alert rules name metrics the server does not export"
    documented = (REPO / "docs" / "metrics.md").read_text()
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in (await scrape(live)).families
                if not f.name.endswith("_created")}  # prometheus_client's start time of each counter series
    assert {n for n in exported if n.startswith("modserv_") and f"`{n}`" not in documented} == set(), \
        "docs/metrics.md misses metrics"


# -- the local shimlet: a real llama.cpp server -------------------------------------------------------------------


async def test_local_deploys_requested_resources_against_this_machine(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers.local_shim import deploy_body, local_settings
    from tests.helpers.tiny_gguf import write_tiny_llama_gguf, write_truncated_copy

    (tmp_path / "models").mkdir()
    tiny = write_tiny_llama_gguf(tmp_path / "models" / "tiny.gguf")
    cut = write_truncated_copy(tiny, tmp_path / "models" / "cut.gguf", 0.6)
    live: Live = await start_server(local_settings(tmp_path, capacity_interval=0.2))
    ok = (await live.call("POST", "/api/v1/modserv/deploy", json=deploy_body("tiny", tiny), expect=202))["data"]
    bad = (await live.call("POST", "/api/v1/modserv/deploy", json=deploy_body("cut", cut), expect=202))["data"]
    assert (await live.wait_state(ok["serviceId"], "running", "failed", timeout=120))["state"] == "running"
    assert (await live.wait_state(bad["serviceId"], "failed", timeout=60))["state"] == "failed"

    cpus = len(os.sched_getaffinity(0))
    memory = read_host_memory().total_bytes
    local = {"shimlet": "local", "pipeline": "opensourcellm"}

    async def with_capacity() -> Scrape | None:
        s = await scrape(live)
        return s if s.has("modserv_capacity_cpu_cores", shimlet="local") else None

    m = await wait_for(with_capacity)
    assert m.value("modserv_capacity_cpu_cores", shimlet="local") == cpus
    assert m.value("modserv_capacity_memory_bytes", shimlet="local") == memory
    assert m.value("modserv_requested_cpu_cores", **local, accelerator_type="none") == 1.0
    assert m.value("modserv_requested_memory_bytes", **local, accelerator_type="none") == 2 * GIB
    assert m.value("modserv_capacity_used_ratio", shimlet="local", resource="cpu") == pytest.approx(1 / cpus)
    assert m.value("modserv_capacity_used_ratio", shimlet="local", resource="memory") == pytest.approx(2 * GIB / memory)
    assert m.value("modserv_deploys_finished_total", **local, result="succeeded") == 1
    assert m.value("modserv_deploys_finished_total", **local, result="failed") == 1
    assert m.value("modserv_deploy_time_to_running_seconds_count", **local) == 1
    assert m.value("modserv_step_duration_seconds_count", **local, step="model-validation", outcome="failed") == 1

    assert (await live.call("DELETE", f"/api/v1/modserv/{ok['serviceId']}"))["data"]["state"] == "terminated"
    m = await scrape(live)
    assert m.value("modserv_requested_cpu_cores", **local) == 0
    assert m.value("modserv_capacity_used_ratio", shimlet="local", resource="memory") == 0
    assert m.value("modserv_services", **local, state="terminated") == 1
    assert m.value("modserv_services", **local, state="failed") == 1


# -- the k8s shimlet on the simulated cluster ---------------------------------------------------------------------


async def test_k8s_capacity_from_nodes_and_used_ratios_survive_a_restart(tmp_path: Path) -> None:
    from tests.helpers.k8s_shimlet import openai_backend
    from tests.helpers.tiny_gguf import write_tiny_llama_gguf
    from tests.k8s_sim import NodeSpec, run_sim

    volume = tmp_path / "pvc"
    volume.mkdir()
    write_tiny_llama_gguf(volume / "tiny.gguf")
    nodes = [NodeSpec("gpu-1", cpu="16", memory="64Gi", gpus=4, gpu_product="NVIDIA-H20"),
             NodeSpec("gpu-2", cpu="16", memory="64Gi", gpus=2, gpu_product="NVIDIA-L4"),
             NodeSpec("cpu-1", cpu="7500m", memory="32Gi"),
             NodeSpec("cordoned", cpu="64", memory="256Gi", gpus=8, gpu_product="NVIDIA-H20", unschedulable=True)]
    with run_sim(nodes=nodes) as sim, openai_backend("tiny") as backend:
        sim.set_default_service_backend(backend)
        options = {"kubeconfig": str(sim.write_kubeconfig(tmp_path / "kubeconfig")), "trust_env": False,
                   "model_volume": {"type": "pvc", "claim_name": "models", "mount_path": "/models"},
                   "model_root": str(volume), "api_backoff": 0.05, "api_backoff_max": 0.5}
        settings = Settings.load(None, data_dir=tmp_path / "data", shimlet="k8s", pipeline="opensourcellm",
                                 port=free_port(), poll_interval=0.2, capacity_interval=0.2,
                                 shimlets={"k8s": options})
        live = await serve(settings)
        try:
            gpu = {"modelName": "tiny", "modelFile": "/models/tiny.gguf", "replicaCount": 1,
                   "resourceRequirements": {"acceleratorType": "NVIDIA H20", "acceleratorCount": 2, "cpu": "2",
                                            "memory": "8Gi"}}
            cpu = {"modelName": "tiny", "modelFile": "/models/tiny.gguf", "replicaCount": 2,
                   "resourceRequirements": {"cpu": "1500m", "memory": "2Gi"}}
            missing = {"modelName": "missing", "modelFile": "/models/missing.gguf"}
            sids = [(await live.call("POST", "/api/v1/modserv/deploy", json=b, expect=202))["data"]["serviceId"]
                    for b in (gpu, cpu, missing)]
            for sid, want in zip(sids, ("running", "running", "failed"), strict=True):
                state = await live.wait_state(sid, "running", "failed", timeout=60)
                assert state["state"] == want, state

            async def with_capacity() -> Scrape | None:
                s = await scrape(live)
                return s if s.has("modserv_capacity_cpu_cores", shimlet="k8s") else None

            m = await wait_for(with_capacity)
            k8s = {"shimlet": "k8s", "pipeline": "opensourcellm"}
            # capacity: the schedulable, ready nodes' allocatable (the cordoned node does not count)
            assert m.value("modserv_capacity_cpu_cores", shimlet="k8s") == 16 + 16 + 7.5
            assert m.value("modserv_capacity_cpu_cores", shimlet="k8s", host="cpu-1") == 7.5
            assert not m.has("modserv_capacity_cpu_cores", shimlet="k8s", host="cordoned")
            assert m.value("modserv_capacity_memory_bytes", shimlet="k8s") == (64 + 64 + 32) * GIB
            assert m.value("modserv_capacity_accelerators", shimlet="k8s", accelerator_type="NVIDIA H20") == 4
            assert m.value("modserv_capacity_accelerators", shimlet="k8s", accelerator_type="NVIDIA L4") == 2
            # requested by the live services, against that
            assert m.value("modserv_requested_accelerators", **k8s, accelerator_type="NVIDIA H20") == 2
            assert m.value("modserv_requested_cpu_cores", **k8s) == 2 + 2 * 1.5
            assert m.value("modserv_requested_memory_bytes", **k8s) == (8 + 2 * 2) * GIB
            assert m.value("modserv_accelerators_used_ratio", shimlet="k8s", accelerator_type="NVIDIA H20") == 0.5
            assert m.value("modserv_accelerators_used_ratio", shimlet="k8s", accelerator_type="NVIDIA L4") == 0
            assert m.value("modserv_capacity_used_ratio", shimlet="k8s", resource="cpu") == pytest.approx(5 / 39.5)
            assert m.value("modserv_capacity_used_ratio", shimlet="k8s", resource="memory") == pytest.approx(12 / 160)
            assert m.value("modserv_replicas_ready", service=sids[1]) == 2
            assert m.value("modserv_deploys_finished_total", **k8s, result="succeeded") == 2
            assert m.value("modserv_deploys_finished_total", **k8s, result="failed") == 1
            assert m.value("modserv_deploy_time_to_running_seconds_count", **k8s) == 2

            assert (await live.call("DELETE", f"/api/v1/modserv/{sids[0]}"))["data"]["state"] == "terminated"
            m = await scrape(live)
            assert m.value("modserv_requested_accelerators", **k8s, accelerator_type="NVIDIA H20") == 0
            assert m.value("modserv_accelerators_used_ratio", shimlet="k8s", accelerator_type="NVIDIA H20") == 0

            # a restart: counts from the store, live services re-adopted, capacity read again
            await live.stop()
            live = await serve(settings)
            m = await wait_for(with_capacity)
            assert m.value("modserv_deploys_accepted_total", **k8s) == 3
            assert m.value("modserv_deploys_finished_total", **k8s, result="succeeded") == 2
            assert m.value("modserv_deploys_finished_total", **k8s, result="failed") == 1
            assert m.value("modserv_services", **k8s, state="running") == 1
            assert m.value("modserv_services", **k8s, state="terminated") == 1
            assert m.value("modserv_requested_cpu_cores", **k8s) == 3
            assert m.value("modserv_capacity_used_ratio", shimlet="k8s", resource="cpu") == pytest.approx(3 / 39.5)
            assert m.value("modserv_deploy_time_to_running_seconds_count", **k8s) == 0
        finally:
            await live.stop(delete_services=True)


# -- how the shimlets read capacity (pure functions) -----------------------------------------------------------------


def test_docker_gpu_count_label_under_the_one_product() -> None:
    from modserv_shim.shimlets.docker.placement import host_gpus

    product, count = "org.modserv-shim.gpu.product", "org.modserv-shim.gpu.count"
    assert host_gpus({"Labels": [f"{product}=NVIDIA H20", f"{count}=8"]}) == {"NVIDIA H20": 8}
    assert host_gpus({"Labels": [f"{count}=2"]}) == {"nvidia.com/gpu": 2}
    assert host_gpus({"Labels": [f"{product}=NVIDIA H20,NVIDIA L4", f"{count}=8"]}) == {}  # the split is unknown
    assert host_gpus({"Labels": [f"{product}=NVIDIA H20", f"{count}=many"]}) == {}
    assert host_gpus({"Labels": None}) == {}


def test_k8s_node_capacity_counts_ready_schedulable_nodes_and_names_gpus_as_deploys_do() -> None:
    from modserv_shim.shimlets.k8s.nodes import node_capacity
    from modserv_shim.shimlets.k8s.options import K8sOptions

    options = K8sOptions.parse({"accelerator_labels": {"NVIDIA H20 141GB": "H20-141"}})

    def node(name: str, ready: str = "True", **status: Any) -> dict[str, Any]:
        labels = status.pop("labels", {})
        return {"metadata": {"name": name, "labels": labels}, "spec": status.pop("spec", {}),
                "status": {"allocatable": status, "conditions": [{"type": "Ready", "status": ready}]}}

    big = node_capacity(node("a", cpu="3920m", memory="16332100Ki", **{"nvidia.com/gpu": "2"},
                             labels={"nvidia.com/gpu.product": "H20-141"}), options)
    assert big == HostCapacity("a", 3.92, 16332100 * 1024, {"NVIDIA H20 141GB": 2})
    unlabelled = node_capacity(node("b", cpu="4", memory="8Gi", **{"nvidia.com/gpu": "1"}), options)
    assert unlabelled is not None and unlabelled.accelerators == {"nvidia.com/gpu": 1}
    assert node_capacity(node("c", ready="False", cpu="4"), options) is None
    assert node_capacity(node("d", cpu="4", spec={"unschedulable": True}), options) is None
    odd = node_capacity(node("e", cpu="lots", memory="1.5e9"), options)
    assert odd == HostCapacity("e", None, None, {})


def test_requested_resources_of_a_record() -> None:
    from modserv_shim.core.lifecycle import State
    from modserv_shim.core.metrics import accelerator_type_label, requested
    from modserv_shim.core.records import ServiceRecord

    def rec(rr: dict[str, Any], replicas: int) -> ServiceRecord:
        return ServiceRecord(id="x", model_name="x", spec={"resourceRequirements": rr, "replicaCount": replicas},
                             shimlet="s", pipeline="p", state=State.RUNNING, total_steps=[], current_step=0,
                             replicas_desired=replicas)

    got = requested(rec({"acceleratorType": "NVIDIA_H20", "acceleratorCount": 2, "cpu": "250m", "memory": "512Mi"}, 3))
    assert got.accelerator_type == "NVIDIA H20" and got.accelerators == 6
    assert got.cpu_cores == pytest.approx(0.75) and got.memory_bytes == 3 * 512 * 2**20
    cpu_only = requested(rec({}, 2))
    assert (cpu_only.accelerator_type, cpu_only.accelerators, cpu_only.cpu_cores, cpu_only.memory_bytes) == \
        ("none", 0, 0.0, 0)
    assert accelerator_type_label(" NVIDIA-H20 ") == "NVIDIA H20"
