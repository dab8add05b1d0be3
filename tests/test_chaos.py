"""Crash chaos: deploys and deletes mixed, the server SIGKILLed at random moments, nothing lost.

The server is the real CLI in a child process (``tests/helpers/shim_process.py``); a timer thread
kills it with SIGKILL a random 0.05-1.5 s after some request was sent, while the driver keeps
sending requests, so kills land during requests, pipelines, deletes and the resume after a restart.
Every kill is followed by a restart on the same data dir and port; a quarter of those restarts are
killed again 0.3-3 s after the spawn, while the server imports, resumes pipelines and re-adopts
workloads.  After the run (a last kill and restart, then a bounded wait for things to settle):

* every deploy answered 202 is listed by ``GET /api/v1/modserv`` under its id; every other deploy
  carries an ``Idempotency-Key`` and, when a kill swallows its answer, is sent again after the restart
  (it must be answered, with one service); what else is listed came from deploys without a key
  whose answer the kill swallowed (never more of them than such deploys);
* every service not deleted is ``running``, or ``failed`` with a reason;
* every deleted service (its delete answered 200/202, or sent again after the restart that
  swallowed its answer) is ``terminated`` and has no workload left;
* no workload exists that the store does not list as live: local - no process carrying the data
  dir's ``MODSERV_SHIM_OWNER`` that a live service's state file does not name; k8s - no
  Deployment/StatefulSet/ReplicaSet/Service/Pod labelled ``managed-by=modserv-shim`` whose
  instance is not a live service;
* finally everything is deleted through the API, and then nothing at all is left.

Two environments: the ``local`` shimlet running real llama.cpp servers on a tiny random-weight GGUF
(at most 3 live at a time: each costs ~1 s of CPU to start), and the ``k8s`` shimlet against the
simulated cluster of tests/k8s_sim (pods, the service proxy to a stub OpenAI server).

Replay and longer runs::

    MODSERV_CHAOS_SEED=1234 .venv/bin/python -m pytest -q tests/test_chaos.py -s
    MODSERV_CHAOS_DEPLOYS=200 MODSERV_CHAOS_KILLS=40 .venv/bin/python -m pytest -q tests/test_chaos.py -s
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.helpers.k8s_shimlet import openai_backend
from tests.helpers.k8s_volume import modelinfo_job
from tests.helpers.shim_process import ShimProcess, kill_owned, owned_processes
from tests.helpers.tiny_gguf import write_tiny_llama_gguf
from tests.k8s_sim import NodeSpec, Sim, eventually, run_sim, wait_until

SEED_ENV, DEPLOYS_ENV, KILLS_ENV = "MODSERV_CHAOS_SEED", "MODSERV_CHAOS_DEPLOYS", "MODSERV_CHAOS_KILLS"
KILL_DELAY = (0.05, 1.5)  # seconds after an action
KILL_PENDING_PAUSE = (0.0, 0.02)  # seconds between actions while a kill is pending
START_KILL_SHARE = 0.25  # restarts during which the server is killed again, while it starts and resumes
START_KILL_DELAY = (0.3, 3.0)  # seconds after the spawn
LIVE_STATES = ("initializing", "pipeline_running", "deploying", "health_checking", "running", "degraded",
               "failed", "terminating")
LIST_PAGE = 500
K8S_KINDS = ("Deployment", "StatefulSet", "ReplicaSet", "Service", "Pod", "Job")
MANAGED = "app.kubernetes.io/managed-by=modserv-shim"
INSTANCE = "app.kubernetes.io/instance"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _run_timeout() -> int:
    """pytest-timeout for one chaos test: 300 s in CI, more for the longer modes."""
    return max(300, 6 * _env_int(DEPLOYS_ENV, 50) + 15 * _env_int(KILLS_ENV, 10))


def chaos_seed() -> int:
    return _env_int(SEED_ENV, random.SystemRandom().randrange(2**31))


class ServerGone(Exception):
    """A request failed because the server was killed (by us)."""


@dataclass
class Tracked:
    sid: str
    answered: bool = True  # False: found in the store after its deploy's answer was lost to a kill
    deleted: bool = False  # a delete was answered (200/202), or re-sent and answered after a restart
    delete_pending: bool = False  # a delete was sent and the kill swallowed its answer


@dataclass
class Figures:
    seed: int
    shimlet: str
    deploys_sent: int = 0
    deploys_answered: int = 0
    deploys_unanswered: int = 0  # of them: without an Idempotency-Key (with one, the deploy is re-sent)
    deploys_keyed: int = 0  # sent with an Idempotency-Key
    deploys_resent: int = 0  # keyed deploys whose answer a kill swallowed, sent again after the restart
    deletes_answered: int = 0
    deletes_resent: int = 0
    requests: int = 0
    requests_cut: int = 0  # requests in flight when the server was killed
    kills: int = 0
    kills_while_starting: int = 0  # of the kills: during a start (imports, resume), before /healthz answered
    restarts: int = 0
    found_unanswered: int = 0
    states_at_restart: dict[str, int] = field(default_factory=dict)  # services' states right after each restart
    reached_running: int = 0  # services that were running at some point (from their events)
    final: dict[str, int] = field(default_factory=dict)
    seconds_run: float = 0.0
    seconds_converge: float = 0.0
    seconds_total: float = 0.0
    seconds_server_start: float = 0.0  # mean time from spawn to /healthz
    failed_reasons: list[str] = field(default_factory=list)

    def line(self) -> str:
        data = {k: v for k, v in vars(self).items() if k != "failed_reasons"}
        return json.dumps(data, sort_keys=False)


class Chaos:
    """Drives one server: random deploys and deletes, random SIGKILLs, restarts; then checks."""

    def __init__(self, server: ShimProcess, rng: random.Random, figures: Figures, body: Callable[[int], dict[str, Any]],
                 *, deploys: int, kills: int, max_live: int, pause: tuple[float, float]) -> None:
        self.server, self.rng, self.figures, self.body = server, rng, figures, body
        self.target_deploys, self.target_kills, self.max_live, self.pause = deploys, kills, max_live, pause
        self.tracked: dict[str, Tracked] = {}
        self._resend: list[tuple[str, dict[str, Any]]] = []  # keyed deploys to send again after the restart
        self._timer: threading.Timer | None = None
        self._killed = threading.Event()
        self._actions_until_kill = self._kill_gap()

    # -- killing ---------------------------------------------------------------------------------------------------

    def _kill_gap(self) -> int:
        """Actions between two kills: spread the kills over the ~2 actions per deploy, with some randomness."""
        mean = max(1.0, 2.0 * self.target_deploys / (self.target_kills + 2))
        return self.rng.randint(1, max(1, round(2 * mean - 1)))

    def _arm(self) -> None:
        delay = self.rng.uniform(*KILL_DELAY)
        self._killed.clear()
        self._timer = threading.Timer(delay, self._kill)
        self._timer.daemon = True
        self._timer.start()

    def _kill(self) -> None:
        if self.server.kill9():
            self.figures.kills += 1
        self._killed.set()

    def _restart(self) -> None:
        """After a kill: wait for the timer to be done, start again, finish what the kill interrupted."""
        timer, self._timer = self._timer, None
        if timer is None:
            raise AssertionError(f"the server went away without being killed:\n{self.server.tail()}")
        timer.join(30)
        assert self._killed.is_set()
        self._killed.clear()
        if self.rng.random() < START_KILL_SHARE:  # killed again while it starts: resuming is interrupted
            self.server.spawn()
            time.sleep(self.rng.uniform(*START_KILL_DELAY))
            if self.server.kill9():
                self.figures.kills += 1
                self.figures.kills_while_starting += 1
        self.server.start()
        self.figures.restarts += 1
        self._actions_until_kill = self._kill_gap()
        for key, body in self._resend:  # the same key and body: the service the first try created, or a new one
            self.figures.deploys_resent += 1
            r = self._call("POST", "/api/v1/modserv/deploy", json=body, headers={"Idempotency-Key": key})
            assert r.status_code == 202, r.text
            sid = r.json()["data"]["serviceId"]
            self.tracked[sid] = Tracked(sid)
        self._resend.clear()
        listed = self._list()
        for svc in listed.values():
            if svc["state"] != "terminated":
                states = self.figures.states_at_restart
                states[svc["state"]] = states.get(svc["state"], 0) + 1
        for sid in listed:  # deploys accepted whose answer was lost
            if sid not in self.tracked:
                self.tracked[sid] = Tracked(sid, answered=False)
                self.figures.found_unanswered += 1
        for t in self.tracked.values():
            assert t.sid in listed, f"{t.sid} was accepted but is not listed after the restart"
        for t in list(self.tracked.values()):
            if t.delete_pending:
                self.figures.deletes_resent += 1
                self._delete(t)

    # -- requests ----------------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        self.figures.requests += 1
        try:
            return self.server.request(method, path, **kw)
        except httpx.TransportError as exc:
            if self.server.alive():
                time.sleep(0.3)  # the kill may be a moment behind the broken connection
            if self.server.alive():
                raise AssertionError(f"{method} {path} failed while the server runs: {exc!r}\n"
                                     f"{self.server.tail()}") from exc
            self.figures.requests_cut += 1
            raise ServerGone from exc

    def _with_restarts(self, fn: Callable[[], Any]) -> Any:
        while True:
            try:
                return fn()
            except ServerGone:
                self._restart()

    def _list(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        while True:  # every page
            r = self._call("GET", f"/api/v1/modserv?limit={LIST_PAGE}&offset={len(out)}")
            assert r.status_code == 200, r.text
            page = r.json()["data"]
            out.update((s["serviceId"], s) for s in page)
            if len(page) < LIST_PAGE:
                return out

    def _deploy(self) -> None:
        """Every other deploy carries an Idempotency-Key: if a kill swallows its answer it is sent again after the
        restart and must name one service; one without a key is looked for in the list after the restart."""
        n = self.figures.deploys_sent
        self.figures.deploys_sent += 1
        body = self.body(n)
        key = f"chaos-{self.figures.seed}-{n}" if n % 2 else None
        self.figures.deploys_keyed += key is not None
        try:
            r = self._call("POST", "/api/v1/modserv/deploy", json=body,
                           headers={"Idempotency-Key": key} if key else None)
        except ServerGone:
            if key:
                self._resend.append((key, body))
            else:
                self.figures.deploys_unanswered += 1
            raise
        assert r.status_code == 202, r.text
        self.figures.deploys_answered += 1
        sid = r.json()["data"]["serviceId"]
        self.tracked[sid] = Tracked(sid)

    def _delete(self, t: Tracked) -> None:
        t.delete_pending = True
        r = self._call("DELETE", f"/api/v1/modserv/{t.sid}")
        assert r.status_code in (200, 202), r.text
        t.delete_pending, t.deleted = False, True
        self.figures.deletes_answered += 1

    def running_kills(self) -> int:
        """Kills of a server that was up and serving (the target); kills while starting come on top."""
        return self.figures.kills - self.figures.kills_while_starting

    def live(self) -> list[Tracked]:
        return [t for t in self.tracked.values() if not t.deleted and not t.delete_pending]

    # -- the run --------------------------------------------------------------------------------------------------

    def run(self) -> None:
        t0 = time.monotonic()
        self.server.start()
        while self.figures.deploys_sent < self.target_deploys or self.running_kills() < self.target_kills:
            self._with_restarts(self._step)
        self._final_kill()
        self.figures.seconds_run = time.monotonic() - t0

    def _step(self) -> None:
        if self._timer is None:
            self._actions_until_kill -= 1
            if self._actions_until_kill <= 0:
                self._arm()
        live = self.live()
        can_deploy = self.figures.deploys_sent < self.target_deploys and len(live) < self.max_live
        done = self.figures.deploys_sent >= self.target_deploys
        if can_deploy and (not live or self.rng.random() < 0.55):
            self._deploy()
        elif live and not done:  # mostly the oldest: most services get to run before they go
            self._delete(live[0] if self.rng.random() < 0.7 else self.rng.choice(live))
        else:  # kills still to come: let the server work (and be killed); what is live stays for the checks
            self._call("GET", "/api/v1/modserv")
        # While a kill is pending, requests follow each other closely, so that kills cut requests too.
        time.sleep(self.rng.uniform(*(KILL_PENDING_PAUSE if self._timer is not None else self.pause)))
        if self._killed.is_set() or (self._timer is not None and not self.server.alive()):
            raise ServerGone

    def _final_kill(self) -> None:
        """One more kill at a random moment after the last action, then the restart everything settles on."""
        if self._timer is None:
            self._arm()
        try:
            while not self._killed.is_set():
                self._call("GET", "/healthz")
                time.sleep(0.05)
        except ServerGone:
            pass
        self._restart()

    # -- settling and checks ------------------------------------------------------------------------------------

    def converge(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Wait (bounded) until every service is terminated, running or failed; the final listing."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        settled = ("running", "failed", "terminated")
        while True:
            listed = self._list()
            pending = {sid: s["state"] for sid, s in listed.items() if s["state"] not in settled}
            pending |= {t.sid: listed[t.sid]["state"] for t in self.tracked.values()
                        if t.deleted and listed[t.sid]["state"] != "terminated"}
            if not pending or time.monotonic() > deadline:
                break
            sid = next(iter(pending))
            wait = "terminated" if self.tracked[sid].deleted else "running"
            left = max(1, min(30, round(deadline - time.monotonic())))
            self._call("GET", f"/api/v1/modserv/{sid}?waitFor={wait}&timeout={left}", timeout=left + 30)
        self.figures.seconds_converge = time.monotonic() - t0
        return listed

    def check(self, listed: dict[str, dict[str, Any]]) -> None:
        f = self.figures
        answered = {t.sid for t in self.tracked.values() if t.answered}
        assert answered <= set(listed), f"accepted deploys missing from the list: {answered - set(listed)}"
        unknown = set(listed) - answered
        assert len(unknown) <= f.deploys_unanswered, \
            f"{len(unknown)} services nobody's deploy was answered for, but only {f.deploys_unanswered} unanswered"
        problems = []
        for sid, svc in listed.items():
            state, reason = svc["state"], svc["reason"]
            if self.tracked[sid].deleted:
                if state != "terminated":
                    problems.append(f"{sid}: deleted but {state} ({reason})")
            elif state == "failed":
                f.failed_reasons.append(f"{sid}: {reason}")
                if not reason:
                    problems.append(f"{sid}: failed without a reason")
            elif state != "running":
                problems.append(f"{sid}: did not settle: {state} ({reason}, step {svc['currentStep']})")
        for sid in listed:
            r = self._call("GET", f"/api/v1/modserv/{sid}/events")
            f.reached_running += any(e["to"] == "running" for e in r.json()["data"])
        f.final = {s: sum(1 for x in listed.values() if x["state"] == s) for s in ("running", "failed", "terminated")}
        assert not problems, "\n".join(problems)

    def delete_everything(self) -> None:
        for sid, svc in self._list().items():
            if svc["state"] != "terminated":
                r = self._call("DELETE", f"/api/v1/modserv/{sid}")
                assert r.status_code in (200, 202), r.text
        deadline = time.monotonic() + 60
        while (left := [s for s in self._list().values() if s["state"] != "terminated"]) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"not terminated after delete: {[(s['serviceId'], s['state'], s['reason']) for s in left]}"


def live_ids(listed: dict[str, dict[str, Any]]) -> set[str]:
    return {sid for sid, s in listed.items() if s["state"] in LIVE_STATES}


def finish(figures: Figures, server: ShimProcess, t0: float) -> None:
    """End of a run, passed or not: the timings, the report, the server stopped."""
    figures.seconds_total = time.monotonic() - t0
    figures.seconds_server_start = sum(server.start_seconds) / max(1, len(server.start_seconds))
    report(figures)
    server.stop()


def report(figures: Figures) -> None:
    print(f"\nCHAOS {figures.line()}", flush=True)
    for reason in figures.failed_reasons:
        print(f"  failed: {reason}", flush=True)


# -- local shimlet: real llama.cpp servers ----------------------------------------------------------------------------


def local_orphans(data_dir: Path, live: set[str]) -> list[str]:
    """Processes of ours that no live service accounts for (by its state file naming the process group)."""
    leaders: dict[int, str] = {}
    for state in (data_dir / "local").glob("*/state.json"):
        record = json.loads(state.read_text())
        for replica in record.get("replicas", []):
            if replica.get("pid"):
                leaders[int(replica["pid"])] = record["resource_id"]
    out = []
    for p in owned_processes(str(data_dir)):
        owner = leaders.get(p.pgrp)
        if owner is None:
            out.append(f"pid {p.pid} (group {p.pgrp}) is named by no state file: {p.cmdline[:160]}")
        elif owner not in live:
            out.append(f"pid {p.pid} belongs to {owner}, which is not live: {p.cmdline[:160]}")
    return out


def local_replica_pids(data_dir: Path, sids: set[str]) -> dict[int, str]:
    """Process group leaders the state files of ``sids`` name."""
    out = {}
    for sid in sids:
        state = data_dir / "local" / sid / "state.json"
        if state.exists():
            for replica in json.loads(state.read_text()).get("replicas", []):
                if replica.get("pid"):
                    out[int(replica["pid"])] = sid
    return out


def test_orphan_scan_finds_a_process_no_state_file_names(tmp_path: Path) -> None:
    """The check above must be able to fail: a process carrying our owner variable and named by no
    state file is reported; once a live service's state file names it, it is not."""
    data = tmp_path / "data"
    (data / "local" / "svc-1").mkdir(parents=True)
    env = {**os.environ, "MODSERV_SHIM_OWNER": str(data / "local")}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env, start_new_session=True)
    try:
        wait_until(lambda: owned_processes(str(data)), timeout=5)
        [orphan] = local_orphans(data, live=set())
        assert f"pid {proc.pid}" in orphan and "named by no state file" in orphan
        (data / "local" / "svc-1" / "state.json").write_text(json.dumps(
            {"resource_id": "svc-1", "replicas": [{"index": 0, "pid": proc.pid}]}))
        assert local_orphans(data, live={"svc-1"}) == []
        [orphan] = local_orphans(data, live=set())
        assert "belongs to svc-1, which is not live" in orphan
    finally:
        proc.kill()
        proc.wait(5)
    assert not owned_processes(str(data))


@pytest.fixture
def chaos_dir(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "data"
    data.mkdir()
    yield data
    leftovers = kill_owned(str(data))  # whatever happened, no model server outlives the test
    if leftovers:
        print(f"killed {len(leftovers)} leftover model server process(es): {[p.pid for p in leftovers]}")


@pytest.mark.timeout(_run_timeout())
def test_crash_chaos_local(tmp_path: Path, chaos_dir: Path) -> None:
    seed = chaos_seed()
    print(f"\nchaos (local): seed {seed}; replay with {SEED_ENV}={seed}", flush=True)
    rng = random.Random(seed)
    model = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    config = tmp_path / "modserv.yaml"
    config.write_text(yaml.safe_dump({
        "shimlets": {"local": {"restart_backoff": 0.2, "restart_backoff_max": 1.0, "probe_interval": 0.02,
                               "stop_grace_period": 5.0}},
    }))
    server = ShimProcess(chaos_dir, tmp_path / "server.log", free_port(),
                         ["--shimlet=local", "--pipeline=opensourcellm", f"--config={config}"])
    figures = Figures(seed, "local")

    def body(n: int) -> dict[str, Any]:
        return {"modelName": f"chaos-{'abc'[n % 3]}", "modelFile": str(model),
                "resourceRequirements": {"cpu": "1", "memory": "1Gi"}, "replicaCount": 1, "contextLength": 512}

    chaos = Chaos(server, rng, figures, body, deploys=_env_int(DEPLOYS_ENV, 50), kills=_env_int(KILLS_ENV, 10),
                  max_live=4, pause=(0.1, 0.6))
    t0 = time.monotonic()
    try:
        chaos.run()
        listed = chaos.converge(timeout=120)
        chaos.check(listed)
        orphans = local_orphans(chaos_dir, live_ids(listed))
        assert not orphans, "\n".join(orphans)
        running = {sid for sid, svc in listed.items() if svc["state"] == "running"}
        serving = local_replica_pids(chaos_dir, running)
        assert len(serving) == len(running), "a running service whose state file names no process"
        found = {p.pid for p in owned_processes(str(chaos_dir))}
        assert set(serving) <= found, "the process scan misses model servers: the orphan check would see nothing"
        for t in chaos.tracked.values():
            if t.deleted:
                assert not (chaos_dir / "local" / t.sid).exists(), f"{t.sid} was deleted but its state is left"
        chaos.delete_everything()
        assert not owned_processes(str(chaos_dir)), "model servers left after every service was deleted"
    finally:
        finish(figures, server, t0)
    assert chaos.running_kills() >= chaos.target_kills


# -- k8s shimlet: the simulated cluster -------------------------------------------------------------------------------


async def test_validation_jobs_left_by_a_killed_run_are_deleted_when_the_shimlet_starts(tmp_path: Path) -> None:
    """Regression (found by test_crash_chaos_k8s): a server killed while a validation Job ran never deleted
    it, and the resumed step started a Job of its own, so every such kill leaked a Job and its pod."""
    from lightkube.types import PatchType

    from modserv_shim.plugins import PluginContext
    from modserv_shim.shimlets.k8s import K8sShimlet, render
    from modserv_shim.shimlets.k8s.options import K8sOptions
    from modserv_shim.spec import DeploySpec

    volume = tmp_path / "pvc"
    volume.mkdir()
    write_tiny_llama_gguf(volume / "tiny.gguf")
    spec = DeploySpec(modelName="tiny", modelFile="/models/tiny.gguf")
    options = {"kubeconfig": str(tmp_path / "kubeconfig"), "trust_env": False, "api_backoff": 0.02,
               "model_volume": {"type": "pvc", "claim_name": "models", "mount_path": "/models"}}
    with run_sim() as sim:
        sim.write_kubeconfig(tmp_path / "kubeconfig")
        sim.set_job_handler(modelinfo_job(volume, tmp_path, []))
        # What a run killed mid-validation leaves: its Job (and the Job's pod), applied as the shimlet applies it.
        leftover = render.validation_job(spec, "tiny-check-dead00", "default", K8sOptions.parse(options))
        async with sim.async_client(field_manager="modserv-shim") as client:
            from lightkube.resources.batch_v1 import Job

            await client.patch(Job, "tiny-check-dead00", leftover, patch_type=PatchType.APPLY, force=True)
        wait_until(lambda: sim.list("Pod", "default", "modserv-shim/validation-job=tiny-check-dead00"), timeout=5)

        shimlet = K8sShimlet(PluginContext("k8s", tmp_path / "data", options))
        await shimlet.start()
        try:
            await eventually(lambda: _none_left(sim, "tiny-check-dead00"), timeout=5)
            facts = await shimlet.inspect_model(spec)  # the new run's own validation is not swept
            assert facts["format"] == "gguf"
            assert not sim.list("Job", "default")
        finally:
            await shimlet.close()


async def _none_left(sim: Sim, job: str) -> bool:
    return not sim.list("Job", "default") and not sim.list("Pod", "default", f"modserv-shim/validation-job={job}")


def k8s_orphans(sim: Sim, live: set[str]) -> list[str]:
    out = []
    for kind in K8S_KINDS:
        for obj in sim.list(kind, "default", MANAGED):
            meta = obj["metadata"]
            instance = (meta.get("labels") or {}).get(INSTANCE)
            if instance not in live:
                out.append(f"{kind} {meta['name']} (instance {instance}) belongs to no live service")
    return out


def k8s_leftovers(sim: Sim, sid: str) -> list[str]:
    return [f"{kind} {o['metadata']['name']}" for kind in K8S_KINDS
            for o in sim.list(kind, "default", f"{INSTANCE}={sid}")]


@pytest.mark.timeout(_run_timeout())
def test_crash_chaos_k8s(tmp_path: Path, chaos_dir: Path) -> None:
    seed = chaos_seed()
    print(f"\nchaos (k8s): seed {seed}; replay with {SEED_ENV}={seed}", flush=True)
    rng = random.Random(seed)
    volume = tmp_path / "pvc"
    volume.mkdir()
    write_tiny_llama_gguf(volume / "tiny.gguf")
    figures = Figures(seed, "k8s")
    nodes = [NodeSpec("cpu-1", cpu="64", memory="256Gi", pods=250)]
    # Pods take ~0.7 s to become ready, as a small model server would, and the model is validated by a
    # validation Job (no model_root) running ~0.3 s: kills land during validation and deploys too.
    with run_sim(nodes=nodes, seed=seed, pod_start_delay=0.2, pod_ready_delay=0.5, job_run_seconds=0.3) as sim, \
            openai_backend("chaos") as backend:
        sim.set_default_service_backend(backend)
        sim.set_job_handler(modelinfo_job(volume, tmp_path, []))
        kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
        config = tmp_path / "modserv.yaml"
        config.write_text(yaml.safe_dump({"shimlets": {"k8s": {
            "kubeconfig": str(kubeconfig), "trust_env": False,
            "model_volume": {"type": "pvc", "claim_name": "models", "mount_path": "/models"},
            "api_backoff": 0.05, "api_backoff_max": 0.5, "sync_timeout": 15.0, "delete_wait": 10.0}}}))
        server = ShimProcess(chaos_dir, tmp_path / "server.log", free_port(),
                             ["--shimlet=k8s", "--pipeline=opensourcellm", f"--config={config}"])

        def body(n: int) -> dict[str, Any]:
            return {"modelName": "chaos", "modelFile": "/models/tiny.gguf",
                    "resourceRequirements": {"cpu": "1", "memory": "1Gi"}, "replicaCount": 1 + n % 2}

        chaos = Chaos(server, rng, figures, body, deploys=_env_int(DEPLOYS_ENV, 50),
                      kills=_env_int(KILLS_ENV, 10), max_live=8, pause=(0.1, 0.6))
        t0 = time.monotonic()
        try:
            chaos.run()
            listed = chaos.converge(timeout=60)
            chaos.check(listed)
            live = live_ids(listed)
            # the garbage collector removes ReplicaSets and pods of deleted workloads a moment later
            with contextlib.suppress(TimeoutError):
                sim.wait_until(lambda: not k8s_orphans(sim, live), timeout=10)
            orphans = k8s_orphans(sim, live)
            assert not orphans, "\n".join(orphans)
            for sid, svc in listed.items():  # and the check sees what exists: every running service's workload
                if svc["state"] == "running":
                    assert sim.get("Deployment", sid) is not None, f"{sid} is running without a Deployment"
            for t in chaos.tracked.values():
                if t.deleted:
                    assert not k8s_leftovers(sim, t.sid), f"{t.sid} was deleted but left {k8s_leftovers(sim, t.sid)}"
            chaos.delete_everything()
            with contextlib.suppress(TimeoutError):
                sim.wait_until(lambda: not k8s_orphans(sim, set()), timeout=10)
            assert not k8s_orphans(sim, set()), k8s_orphans(sim, set())
        finally:
            finish(figures, server, t0)
    assert chaos.running_kills() >= chaos.target_kills
