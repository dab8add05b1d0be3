"""Kubernetes API faults: 50 deploys through the REST API reach ``running`` anyway, deletes leave nothing.

The shim runs in this process (a real server on a socket, reached over HTTP) with the ``k8s``
shimlet and the ``opensourcellm`` pipeline, against the simulated cluster of ``tests/k8s_sim``
(the real lightkube client over real HTTP).  While the deploys and deletes run:

* about 10 % of every API request the shim sends (lists, watches, applies, deletes, the service
  proxy of the health check) fails: ``500``, ``429`` with ``Retry-After: 1``, or a TCP reset of
  the connection, before the request is handled or after it (the write took effect, the answer is
  lost);
* every 0.2-1 s the open watches are expired (``410 Gone`` on resumption: the shim relists) or
  dropped mid-stream.

Replay: ``MODSERV_FAULTS_SEED=<seed printed> .venv/bin/python -m pytest -q tests/test_k8s_faults.py -s``;
``MODSERV_FAULTS_DEPLOYS`` and ``MODSERV_FAULTS_RATIO`` change the size and the fault ratio.

The first tests pin down the simulator's reset fault the big test relies on.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from modserv_shim.config import Settings
from tests.conftest import Live, free_port, serve
from tests.helpers.k8s_shimlet import openai_backend
from tests.helpers.k8s_volume import modelinfo_job
from tests.helpers.tiny_gguf import write_tiny_llama_gguf
from tests.k8s_sim import ApiFault, NodeSpec, Sim, eventually, run_sim

SEED_ENV, DEPLOYS_ENV, RATIO_ENV = "MODSERV_FAULTS_SEED", "MODSERV_FAULTS_DEPLOYS", "MODSERV_FAULTS_RATIO"
MANAGED = "app.kubernetes.io/managed-by=modserv-shim"
KINDS = ("Deployment", "StatefulSet", "ReplicaSet", "Service", "Pod", "Job")


# -- the simulator's reset fault ----------------------------------------------------------------------------------


async def test_reset_before_changes_nothing_and_reset_after_loses_only_the_answer() -> None:
    with run_sim() as sim:
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
        path = "/api/v1/namespaces/default/configmaps"
        async with httpx.AsyncClient(base_url=sim.url, headers={"Authorization": f"Bearer {sim.token}"}) as client:
            sim.inject(ApiFault(reset="before", count=1))
            with pytest.raises(httpx.TransportError):
                await client.post(path, json=cm)
            assert sim.get("ConfigMap", "x") is None
            sim.inject(ApiFault(reset="after", count=1))
            with pytest.raises(httpx.TransportError):
                await client.post(path, json=cm)
            assert sim.get("ConfigMap", "x") is not None  # done, though the client never heard
            assert (await client.post(path, json=cm)).status_code == 409
        assert sim.api_faults_fired() == {"reset-before": 1, "reset-after": 1}
        assert [r.status for r in sim.requests] == [0, 0, 409]


def test_reset_fault_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="reset"):
        ApiFault(reset="sometimes")


# -- a validation Job whose apply took effect although the shim saw it fail ------------------------------------


@asynccontextmanager
async def _validating_shimlet(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Sim, Any]]:
    """A started k8s shimlet that validates models with a Job on a PVC holding the tiny GGUF."""
    from modserv_shim.plugins import PluginContext
    from modserv_shim.shimlets.k8s import K8sShimlet

    volume = tmp_path / "pvc"
    volume.mkdir()
    write_tiny_llama_gguf(volume / "tiny.gguf")
    with run_sim() as sim:
        sim.set_job_handler(modelinfo_job(volume, tmp_path, []))
        options = {"kubeconfig": str(sim.write_kubeconfig(tmp_path / "kubeconfig")), "trust_env": False,
                   "api_backoff": 0.01, "api_retries": 2,
                   "model_volume": {"type": "pvc", "claim_name": "models", "mount_path": "/models"}, **options}
        shimlet = K8sShimlet(PluginContext("k8s", tmp_path / "data", options))
        await shimlet.start()
        try:
            yield sim, shimlet
        finally:
            await shimlet.close()


async def test_a_validation_job_applied_although_its_answer_was_lost_is_deleted(tmp_path: Path) -> None:
    """Regression: every apply of the Job is carried out and its answer lost (reset after), so ``apply``
    fails after its retries; the Job it did create must still be deleted, not left to run."""
    from modserv_shim.errors import ShimError
    from modserv_shim.spec import DeploySpec

    async with _validating_shimlet(tmp_path) as (sim, shimlet):
        lost = ApiFault(reset="after", count=None, method="PATCH", path_contains="/jobs/")
        with sim.inject(lost), pytest.raises(ShimError, match="applying Job"):
            await shimlet.inspect_model(DeploySpec(modelName="tiny", modelFile="/models/tiny.gguf"))
        assert sim.api_faults_fired() == {"reset-after": 2}
        assert not sim.list("Job", "default"), "the Job the failed apply created is left behind"


async def test_a_validation_job_whose_delete_fails_is_deleted_later(tmp_path: Path) -> None:
    """Regression (found at 30 % faults): when deleting the validation Job used up its retries, the Job and its
    pod stayed for good (the TTL controller removes finished Jobs only 10 minutes later, unfinished ones
    never); the verdict stands, and the Job is deleted in the background as soon as the API lets us."""
    from modserv_shim.spec import DeploySpec

    async with _validating_shimlet(tmp_path, api_backoff_max=0.1) as (sim, shimlet):
        sim.inject(ApiFault(status=500, count=5, method="DELETE", path_contains="/jobs/"))
        facts = await shimlet.inspect_model(DeploySpec(modelName="tiny", modelFile="/models/tiny.gguf"))
        assert facts["format"] == "gguf"  # the verdict stands
        await eventually(lambda: _no_jobs(sim), timeout=5)
        assert sim.api_faults_fired() == {"500": 5}


async def _no_jobs(sim: Sim) -> bool:
    return not sim.list("Job", "default") and not sim.list("Pod", "default")


# -- the health check's requests through the API server's service proxy -----------------------------------------


async def test_a_probe_outlasts_an_api_server_outage_longer_than_the_call_retries(tmp_path: Path) -> None:
    """Regression (found at 25-30 % faults): a health-check request through the service proxy failed the deploy
    as soon as one call used up its ``api_retries``; the API server's own errors say nothing about the model
    server, so they are now retried for up to ``probe_timeout``.  Refusals (4xx) are still answered at once."""
    from modserv_shim.plugins import PluginContext, ResourcePhase
    from modserv_shim.shimlets.k8s import K8sShimlet
    from tests.helpers.k8s_shimlet import context, wait_phase

    with run_sim() as sim, openai_backend("tiny") as backend:
        sim.set_default_service_backend(backend)
        options = {"kubeconfig": str(sim.write_kubeconfig(tmp_path / "kubeconfig")), "trust_env": False,
                   "api_backoff": 0.01, "api_backoff_max": 0.05, "api_retries": 2, "probe_timeout": 10.0}
        shimlet = K8sShimlet(PluginContext("k8s", tmp_path / "data", options))
        await shimlet.start()
        try:
            rid = await shimlet.create(context("tiny-5a0b0c0d-0000-4000-8000-000000000001"))
            await wait_phase(shimlet, rid, ResourcePhase.READY)
            outage = [sim.inject(ApiFault(status=503, count=4, path_contains="/proxy/")),
                      sim.inject(ApiFault(reset="before", count=3, path_contains="/proxy/"))]
            status, body = await shimlet.request(rid, "GET", "/v1/models")
            assert status == 200 and body["data"][0]["id"] == "tiny"
            assert sim.api_faults_fired() == {"503": 4, "reset-before": 3}  # 7 failures > api_retries
            for handle in outage:
                handle.remove()
            with sim.inject(ApiFault(status=403, count=None, path_contains="/proxy/")):
                t0 = time.monotonic()
                status, _ = await shimlet.request(rid, "GET", "/v1/models")  # the pipeline says "answered 403"
                assert status == 403 and time.monotonic() - t0 < 1
        finally:
            await shimlet.delete(rid)
            await shimlet.close()


# -- 50 deploys through faults ------------------------------------------------------------------------------------


def fault_mix(ratio: float) -> list[ApiFault]:
    """Four kinds of faults, together hitting ``ratio`` of the requests (the first that fires wins)."""
    each = 1 - (1 - ratio) ** (1 / 4)
    return [ApiFault(status=500, count=None, ratio=each),
            ApiFault(status=429, count=None, ratio=each, retry_after=1),
            ApiFault(reset="before", count=None, ratio=each),
            ApiFault(reset="after", count=None, ratio=each)]


class WatchChaos:
    """A thread that expires or drops the open watches every 0.2-1 s."""

    def __init__(self, sim: Sim, rng: random.Random) -> None:
        self.sim, self.rng = sim, rng
        self.expired = self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch-chaos", daemon=True)

    def __enter__(self) -> WatchChaos:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(0.2, 1.0)):
            if self.rng.random() < 0.5:
                self.expired += self.sim.expire_watches()
            else:
                self.dropped += self.sim.drop_watches()


@pytest.mark.parametrize("validation", ["model_root", "job"])
async def test_50_deploys_through_api_faults_reach_running_and_deletes_leave_nothing(tmp_path: Path,
                                                                                     validation: str) -> None:
    """``validation``: the model is read through ``model_root``, or checked by a validation Job per deploy."""
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**31))
    deploys = int(os.environ.get(DEPLOYS_ENV) or 50)
    ratio = float(os.environ.get(RATIO_ENV) or 0.10)
    print(f"\nk8s API faults: seed {seed}; replay with {SEED_ENV}={seed}", flush=True)
    rng = random.Random(seed)
    volume = tmp_path / "pvc"
    volume.mkdir()
    write_tiny_llama_gguf(volume / "tiny.gguf")
    figures: dict[str, Any] = {"seed": seed, "validation": validation, "deploys": deploys, "ratio": ratio}
    nodes = [NodeSpec("cpu-1", cpu="128", memory="4Ti", pods=2000)]
    t_start = time.monotonic()
    with run_sim(nodes=nodes, seed=seed) as sim, openai_backend("faulty") as backend:
        sim.set_default_service_backend(backend)
        options = {"kubeconfig": str(sim.write_kubeconfig(tmp_path / "kubeconfig")), "trust_env": False,
                   "model_volume": {"type": "pvc", "claim_name": "models", "mount_path": "/models"},
                   "api_backoff": 0.05, "api_backoff_max": 0.5, "sync_timeout": 20.0, "delete_wait": 20.0}
        if validation == "model_root":
            options["model_root"] = str(volume)
        else:
            sim.set_job_handler(modelinfo_job(volume, tmp_path, []))
        settings = Settings.load(None, data_dir=tmp_path / "data", shimlet="k8s", pipeline="opensourcellm",
                                 port=free_port(), poll_interval=0.5, shimlets={"k8s": options})
        handles = [sim.inject(f) for f in fault_mix(ratio)]
        t0 = time.monotonic()
        live: Live = await serve(settings)
        try:
            with WatchChaos(sim, rng) as watches:
                body = {"modelName": "faulty", "modelFile": "/models/tiny.gguf",
                        "resourceRequirements": {"cpu": "100m", "memory": "1Gi"}}

                async def deploy(n: int) -> str:
                    await asyncio.sleep(rng.uniform(0, 2.0))  # spread over two seconds
                    data = (await live.call("POST", "/api/v1/modserv/deploy", expect=202,
                                            json={**body, "replicaCount": 1 + n % 2}))["data"]
                    return str(data["serviceId"])

                sids = await asyncio.gather(*(deploy(n) for n in range(deploys)))

                async def settled(sid: str) -> dict[str, Any]:
                    r = await live.call("GET", f"/api/v1/modserv/{sid}?waitFor=running&timeout=120",
                                        expect=200, timeout=150)
                    return dict(r["data"])

                services = await asyncio.gather(*(settled(s) for s in sids))
                figures["seconds_to_running"] = round(time.monotonic() - t0, 1)
                not_running = [(s["serviceId"], s["state"], s["reason"]) for s in services if s["state"] != "running"]
                assert not not_running, not_running
                assert {o["metadata"]["name"] for o in sim.list("Deployment", "default", MANAGED)} == set(sids)

                # Faults and watch losses go on: a running service must not flap to degraded or failed.
                await asyncio.sleep(3)
                flapped = []
                for sid in sids:
                    events = (await live.call("GET", f"/api/v1/modserv/{sid}/events", expect=200))["data"]
                    after = [e["to"] for e in events][[e["to"] for e in events].index("running"):]
                    if after != ["running"]:
                        flapped.append((sid, after))
                assert not flapped, flapped

                t1 = time.monotonic()

                async def delete(sid: str) -> dict[str, Any]:
                    await asyncio.sleep(rng.uniform(0, 1.0))
                    r = await live.call("DELETE", f"/api/v1/modserv/{sid}", timeout=120)
                    assert r["_status"] in (200, 202), r
                    r = await live.call("GET", f"/api/v1/modserv/{sid}?waitFor=terminated&timeout=60",
                                        expect=200, timeout=90)
                    return dict(r["data"])

                gone = await asyncio.gather(*(delete(s) for s in sids))
                assert all(s["state"] == "terminated" for s in gone)
                figures["seconds_to_delete"] = round(time.monotonic() - t1, 1)
            figures["watches_expired"], figures["watches_dropped"] = watches.expired, watches.dropped
            figures["faults"] = sim.api_faults_fired()
            for handle in handles:
                handle.remove()
            leftovers = [f"{kind} {o['metadata']['name']}" for kind in KINDS
                         for o in sim.list(kind, "default", MANAGED)]
            assert not leftovers, leftovers
        finally:
            await live.stop(delete_services=True)
            requests = sim.requests
            figures["requests"] = len(requests)
            figures["requests_failed"] = sum(1 for r in requests if r.status in (0, 429, 500))
            figures["seconds_total"] = round(time.monotonic() - t_start, 1)
            print(f"FAULTS {json.dumps(figures)}", flush=True)
    assert sum(figures["faults"].values()) >= 0.05 * figures["requests"], figures  # the faults really happened
