"""Control-plane overhead of the local shimlet: what the shim adds to time-to-running.

In one run, alternate N times between
  (a) starting the runtime by hand on the tiny model (the exact command line the shim
      renders, taken from a dry run) and polling /v1/models every 10 ms until the first 200,
  (b) deploying the same model through the shim (POST /api/v1/modserv/deploy) and asking
      GET /api/v1/modserv/{id}?waitFor=running (answered the moment it is running), and
  (c) the same as (b) but polling GET /api/v1/modserv/{id} every 10 ms,
and report the medians and their differences.  (b) and (c) include everything the shim
does: validation, rendering, spawn, readiness probe, the health check's /v1/models and
one-token completion, and the state changes written to SQLite.  The server's own
timestamps (events, step logs) split each deploy into phases; "control plane alone" is
the total minus the runtime's own start-up (workload created -> the shimlet saw it ready),
which takes the runtime's start-up noise (+-150 ms) out of the figure.

    .venv/bin/python bench/overhead.py [--runs 10] [--json bench/results/overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import benchlib  # noqa: E402
from bench.benchlib import free_port, write_json  # noqa: E402
from tests.helpers.tiny_gguf import write_tiny_llama_gguf  # noqa: E402

POLL = 0.01



def wait_until(pred: Any, timeout: float = 120.0) -> None:
    benchlib.wait_until(pred, timeout, POLL)


PROBE = httpx.Client(timeout=1)  # one client: building one per poll costs ~50 ms of CPU


def ok(url: str) -> bool:
    try:
        return PROBE.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def by_hand(argv: list[str]) -> float:
    port = free_port()
    cmd = [a.replace("{host}", "127.0.0.1").replace("{port}", str(port)) for a in argv]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: ok(f"http://127.0.0.1:{port}/v1/models"))
        return time.perf_counter() - t0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stamp(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def log_time(lines: list[dict[str, Any]], prefix: str) -> float:
    return stamp(next(x["ts"] for x in lines if x["message"].startswith(prefix)))


PHASES = ("accept", "to spawn", "runtime start", "health check", "client sees")


def through_shim(api: httpx.Client, body: dict[str, Any], wait: bool, phases: list[dict[str, float]]) -> float:
    """Time to running; appends to ``phases`` where the time went, from the server's own timestamps
    (events and step logs; same clock): accept = POST -> stored; to spawn = stored -> workload
    created (the process starts just before); runtime start = created -> the shimlet saw it ready;
    health check = ready -> running stored; client sees = running stored -> the client knows.
    ``wait``: the client asks ``GET ...?waitFor=running`` (answered the moment the state is
    stored) instead of polling every POLL seconds."""
    wall0, t0 = time.time(), time.perf_counter()
    r = api.post("/api/v1/modserv/deploy", json=body)
    sid = r.json()["data"]["serviceId"]
    query = "?waitFor=running&timeout=60" if wait else ""

    def running() -> bool:
        data = api.get(f"/api/v1/modserv/{sid}{query}").json()["data"]
        if data["state"] == "failed":
            raise RuntimeError(data["reason"])
        return bool(data["state"] == "running")

    try:
        wait_until(running)
        total = time.perf_counter() - t0
        seen = wall0 + total
        lines = api.get(f"/api/v1/modserv/{sid}/pipeline/logs").json()["data"]["logs"]
        events = {e["to"]: stamp(e["ts"]) for e in api.get(f"/api/v1/modserv/{sid}/events").json()["data"]}
        created, ready = log_time(lines, "workload created"), log_time(lines, "1/1 replicas ready")
        marks = [wall0, events["initializing"], created, ready, events["running"], seen]
        phases.append({name: b - a for name, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True)})
        return total
    finally:
        api.delete(f"/api/v1/modserv/{sid}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modserv-bench-"))
    model = write_tiny_llama_gguf(work / "tiny.gguf")
    port = free_port()
    log = (work / "server.log").open("wb")
    server = subprocess.Popen([str(Path(sys.executable).parent / "model-serve-shim"), f"--port={port}",
                               f"--data-dir={work / 'data'}"], stdout=log, stderr=log)  # default log level: info
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        wait_until(lambda: ok(f"http://127.0.0.1:{port}/healthz"), 60)
        body = {"modelName": "tiny", "modelFile": str(model), "resourceRequirements": {"memory": "1Gi"}}
        dry = api.post("/api/v1/modserv/deploy", json={**body, "dryRun": True}).json()["data"]
        launch = dry["rendered"]["launch"]
        argv = [*launch["local_command"], *launch["args"]]
        by_hand(argv)  # warm the page cache and imports once, unmeasured
        through_shim(api, body, True, [])
        hand: list[float] = []
        arms: dict[str, list[float]] = {"wait": [], "poll": []}
        phases: dict[str, list[dict[str, float]]] = {"wait": [], "poll": []}
        for _ in range(args.runs):
            hand.append(by_hand(argv))
            for arm, samples in arms.items():
                samples.append(through_shim(api, body, arm == "wait", phases[arm]))
    finally:
        api.close()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)  # the model, data dir and server log: nothing left in /tmp
    ms = lambda x: round(x * 1000, 1)  # noqa: E731
    mh = statistics.median(hand)
    result: dict[str, Any] = {
        "runs": args.runs,
        "command": " ".join(argv),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "by_hand_s": [round(x, 4) for x in hand],
        "median_by_hand_ms": ms(mh),
    }
    for arm, samples in arms.items():
        control = [sum(v for k, v in p.items() if k != "runtime start") for p in phases[arm]]
        result[arm] = {
            "through_shim_s": [round(x, 4) for x in samples],
            "median_through_shim_ms": ms(statistics.median(samples)),
            "difference_of_medians_ms": ms(statistics.median(samples) - mh),
            "median_paired_difference_ms": ms(statistics.median(b - a for a, b in zip(hand, samples, strict=True))),
            "median_runtime_start_ms": ms(statistics.median(p["runtime start"] for p in phases[arm])),
            "median_control_plane_ms": ms(statistics.median(control)),
            "control_plane_range_ms": [ms(min(control)), ms(max(control))],
            "median_phase_ms": {k: ms(statistics.median(p[k] for p in phases[arm])) for k in PHASES},
            "phases_ms": [{k: ms(v) for k, v in p.items()} for p in phases[arm]],
        }
    print(json.dumps(result, indent=2))
    print("\n| client | median by hand | median through the shim | difference of medians"
          " | median of paired differences | runtime start under the shim | control plane alone |")
    print("|---|---|---|---|---|---|---|")
    for arm, label in (("wait", "waitFor=running"), ("poll", f"polls every {POLL * 1000:g} ms")):
        r = result[arm]
        lo, hi = r["control_plane_range_ms"]
        print(f"| {label} | {result['median_by_hand_ms']} ms | {r['median_through_shim_ms']} ms |"
              f" {r['difference_of_medians_ms']} ms | {r['median_paired_difference_ms']} ms |"
              f" {r['median_runtime_start_ms']} ms | {r['median_control_plane_ms']} ms ({lo}-{hi}) |")
    print("\n| client | " + " | ".join(PHASES) + " |\n|---|" + "---|" * len(PHASES))
    for arm in arms:
        print(f"| {arm} | " + " | ".join(f"{result[arm]['median_phase_ms'][k]} ms" for k in PHASES) + " |")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
