"""Control-plane overhead of the local shimlet: what the shim adds to time-to-running.

In one run, alternate N times between
  (a) starting the runtime by hand on the tiny model (the exact command line the shim
      renders, taken from a dry run) and polling /v1/models until the first 200, and
  (b) deploying the same model through the shim (POST /api/v1/modserv/deploy) and
      polling GET /api/v1/modserv/{id} until it says ``running``,
both polled every 10 ms, and report the medians and their difference.
(b) includes everything the shim does: validation, rendering, spawn, readiness
probe, the health check's /v1/models and one-token completion, and the state
changes written to SQLite.

    .venv/bin/python bench/overhead.py [--runs 10] [--json bench/results/overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
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
from tests.helpers.tiny_gguf import write_tiny_llama_gguf  # noqa: E402

POLL = 0.01


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(POLL)
    raise TimeoutError("condition not met")


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


def log_time(lines: list[dict[str, Any]], prefix: str) -> float:
    ts = next(x["ts"] for x in lines if x["message"].startswith(prefix))
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def through_shim(api: httpx.Client, body: dict[str, Any], split: list[float]) -> float:
    """Time to running; appends to ``split`` the part that is not the runtime's own start-up:
    total minus (first "replicas ready" log line - "workload created" log line)."""
    t0 = time.perf_counter()
    r = api.post("/api/v1/modserv/deploy", json=body)
    sid = r.json()["data"]["serviceId"]
    state: dict[str, str] = {}

    def running() -> bool:
        state["s"] = api.get(f"/api/v1/modserv/{sid}").json()["data"]["state"]
        if state["s"] == "failed":
            raise RuntimeError(api.get(f"/api/v1/modserv/{sid}").json()["data"]["reason"])
        return state["s"] == "running"

    try:
        wait_until(running)
        total = time.perf_counter() - t0
        lines = api.get(f"/api/v1/modserv/{sid}/pipeline/logs").json()["data"]["logs"]
        runtime = log_time(lines, "1/1 replicas ready") - log_time(lines, "workload created")
        split.append(total - runtime)
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
                               f"--data-dir={work / 'data'}", "--log-level=warning"], stdout=log, stderr=log)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        wait_until(lambda: ok(f"http://127.0.0.1:{port}/healthz"), 60)
        body = {"modelName": "tiny", "modelFile": str(model), "resourceRequirements": {"memory": "1Gi"}}
        dry = api.post("/api/v1/modserv/deploy", json={**body, "dryRun": True}).json()["data"]
        launch = dry["rendered"]["launch"]
        argv = [*launch["local_command"], *launch["args"]]
        by_hand(argv)  # warm the page cache and imports once, unmeasured
        through_shim(api, body, [])
        hand: list[float] = []
        shim: list[float] = []
        control: list[float] = []
        for _ in range(args.runs):
            hand.append(by_hand(argv))
            shim.append(through_shim(api, body, control))
    finally:
        api.close()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    mh, ms = statistics.median(hand), statistics.median(shim)
    paired = statistics.median(b - a for a, b in zip(hand, shim, strict=True))
    result = {
        "runs": args.runs,
        "by_hand_s": [round(x, 4) for x in hand],
        "through_shim_s": [round(x, 4) for x in shim],
        "median_by_hand_ms": round(mh * 1000, 1),
        "median_through_shim_ms": round(ms * 1000, 1),
        "overhead_ms": round((ms - mh) * 1000, 1),
        "median_paired_difference_ms": round(paired * 1000, 1),
        "control_plane_s": [round(x, 4) for x in control],
        "median_control_plane_ms": round(statistics.median(control) * 1000, 1),
        "command": " ".join(argv),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))
    print(f"\n| median by hand | median through the shim | difference of medians | median of paired differences |\n"
          f"|---|---|---|---|\n"
          f"| {result['median_by_hand_ms']} ms | {result['median_through_shim_ms']} ms |"
          f" {result['overhead_ms']} ms | {result['median_paired_difference_ms']} ms |")
    print(f"\ncontrol plane (time to running minus the runtime's own start-up, from the step logs):"
          f" median {result['median_control_plane_ms']} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
