"""Time-to-running of the docker shimlet vs ``docker run`` by hand of the same image, command and model.

In one run, alternate N times (which arm goes first alternates too) between
  (a) **by hand**: ``docker run -d`` of the exact container the shim renders (taken from a dry
      run's create body, turned into CLI flags; see ``run_argv``), polling ``/v1/models`` every
      10 ms from the moment the CLI is started until the first 200, and
  (b) **through the shim**: ``POST /api/v1/modserv/deploy`` of the real SmolLM2 GGUF on a server
      started with ``--shimlet=docker`` (``network: host``, the test image ``modserv-test/llama:1``
      as llama.cpp running llama-cpp-python), then ``GET /api/v1/modserv/{id}?waitFor=running``,
and report the medians, the difference of medians and the median of paired differences.
(b) includes everything the shim does: validation of the GGUF and the fit check, rendering,
the image check, ContainerCreate + start, the readiness probe, the health check (``/v1/models``
and a one-token completion) and every state change written to SQLite.

Phases, from timestamps on the same clock (the client's, the server's events and step logs,
and the Engine's ``Created`` / ``State.StartedAt`` of the container, read before it is removed):

* through the shim: *accept* (POST -> stored), *to create* (stored -> the Engine created the
  container), *engine create+start* (Created -> StartedAt), *runtime start* (StartedAt -> the
  shimlet saw /v1/models answer 200), *health check* (-> running stored), *client sees*;
* by hand: *CLI to create* (CLI started -> Created), *engine create+start*, *runtime start*
  (StartedAt -> our poll saw 200).

"Control plane alone" is the total minus the runtime start (the runtime's own start-up noise out);
for the hand arm the same figure is what ``docker run`` itself costs.  Their difference is the
shim's overhead without the runtime's noise.

    .venv/bin/python bench/docker_overhead.py [--runs 20] [--json bench/results/docker_overhead.json]

The Engine: ``--docker-host`` (or ``MODSERV_TEST_DOCKER_HOST``) if given, else our own ``dockerd``
in a temporary directory (tests/helpers/docker_engine.py), stopped at the end.  The image is built
in it (tests/helpers/docker_images.py; the Debian root filesystem is cached under .cache/docker/).
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
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import benchlib  # noqa: E402
from bench.benchlib import docker_engine, free_port, tree, write_json  # noqa: E402
from tests.helpers import docker_images as di  # noqa: E402
from tests.helpers.docker_engine import ENV_HOST, DockerEngine  # noqa: E402

MODEL = ROOT / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
POLL = 0.01
API = "/api/v1/modserv"
SHIM_PHASES = ("accept", "to create", "engine create+start", "runtime start", "health check", "client sees")
HAND_PHASES = ("CLI to create", "engine create+start", "runtime start")



def wait_until(pred: Any, timeout: float = 300.0) -> None:
    benchlib.wait_until(pred, timeout, POLL)


PROBE = httpx.Client(timeout=1, trust_env=False)


def ok(url: str) -> bool:
    try:
        return PROBE.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def stamp(ts: str) -> float:
    """An RFC 3339 time (the server's microseconds or the Engine's nanoseconds) as epoch seconds."""
    head, _, frac = ts.rstrip("Z").partition(".")
    head = head.split("+")[0]
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or 0}")


def engine_times(engine: DockerEngine, name: str) -> tuple[float, float]:
    doc = engine.inspect(name)
    return stamp(doc["Created"]), stamp(doc["State"]["StartedAt"])


# --------------------------------------------------------------------------------------------
# By hand


def run_argv(body: dict[str, Any], name: str, port: int) -> list[str]:
    """``docker run -d`` flags for a ContainerCreate body; refuses any key it does not translate.

    Labels are left out: ``org.modserv-shim.managed-by`` would make the shim adopt the container,
    and labels change nothing in how it starts.  A multi-word Entrypoint becomes ``--entrypoint``
    plus the rest in front of the command (the process's argv is the same).
    """
    body = json.loads(json.dumps(body).replace("{port}", str(port)))
    known = {"Image", "Entrypoint", "Cmd", "Env", "Labels", "StopTimeout", "HostConfig"}
    host_known = {"Init", "NetworkMode", "RestartPolicy", "Mounts", "Memory", "NanoCpus", "ShmSize"}
    if set(body) - known or set(body["HostConfig"]) - host_known:
        raise SystemExit(f"run_argv does not translate {set(body) - known} {set(body['HostConfig']) - host_known}")
    hc = body["HostConfig"]
    argv = ["run", "-d", "--name", name]
    if hc.get("Init"):
        argv.append("--init")
    argv += ["--network", hc["NetworkMode"]]
    policy = hc.get("RestartPolicy") or {}
    if policy.get("Name", "no") != "no":
        count = policy.get("MaximumRetryCount")
        argv += ["--restart", policy["Name"] + (f":{count}" if count else "")]
    for m in hc.get("Mounts") or []:
        spec = f"type={m['Type']},source={m['Source']},target={m['Target']}"
        spec += ",readonly" if m.get("ReadOnly") else ""
        argv += ["--mount", spec]
    if hc.get("Memory"):
        argv += ["--memory", str(hc["Memory"])]
    if hc.get("NanoCpus"):
        argv += ["--cpus", f"{hc['NanoCpus'] / 1e9:g}"]
    if hc.get("ShmSize"):
        argv += ["--shm-size", str(hc["ShmSize"])]
    if "StopTimeout" in body:
        argv += ["--stop-timeout", str(body["StopTimeout"])]
    for item in body.get("Env") or []:
        argv += ["--env", item]
    entry = list(body.get("Entrypoint") or [])
    if entry:
        argv += ["--entrypoint", entry[0]]
    return [*argv, body["Image"], *entry[1:], *body["Cmd"]]


def by_hand(engine: DockerEngine, body: dict[str, Any], i: int, phases: list[dict[str, float]]) -> float:
    port = free_port()
    name = f"bench-by-hand-{i}"
    argv = [engine.docker, *run_argv(body, name, port)]
    wall0, t0 = time.time(), time.perf_counter()
    cli = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=engine.full_env())
    try:
        def up() -> bool:
            if cli.poll() not in (None, 0):
                raise RuntimeError(f"docker run failed: {cli.stderr.read().decode() if cli.stderr else ''}")
            return ok(f"http://127.0.0.1:{port}/v1/models")

        wait_until(up)
        total = time.perf_counter() - t0
        cli.wait(60)
        created, started = engine_times(engine, name)
        marks = [wall0, created, started, wall0 + total]
        phases.append({k: b - a for k, a, b in zip(HAND_PHASES, marks[:-1], marks[1:], strict=True)})
        return total
    finally:
        if cli.poll() is None:
            cli.wait(60)
        engine.cli("rm", "-f", "-v", name, check=False)


# --------------------------------------------------------------------------------------------
# Through the shim


def log_time(lines: list[dict[str, Any]], prefix: str) -> float:
    return stamp(next(x["ts"] for x in lines if x["message"].startswith(prefix)))


def through_shim(api: httpx.Client, engine: DockerEngine, body: dict[str, Any],
                 phases: list[dict[str, float]]) -> float:
    wall0, t0 = time.time(), time.perf_counter()
    r = api.post(f"{API}/deploy", json=body)
    if r.status_code != 202:
        raise RuntimeError(f"deploy answered {r.status_code}: {r.text}")
    sid = r.json()["data"]["serviceId"]
    try:
        data = api.get(f"{API}/{sid}?waitFor=running&timeout=300", timeout=330).json()["data"]
        total = time.perf_counter() - t0
        if data["state"] != "running":
            raise RuntimeError(f"{sid}: {data['state']}: {data['reason']}")
        lines = api.get(f"{API}/{sid}/pipeline/logs").json()["data"]["logs"]
        events = {e["to"]: stamp(e["ts"]) for e in api.get(f"{API}/{sid}/events").json()["data"]}
        created, started = engine_times(engine, f"modserv-{sid}-0")
        ready = log_time(lines, "1/1 replicas ready")
        marks = [wall0, events["initializing"], created, started, ready, events["running"], wall0 + total]
        phase = {k: b - a for k, a, b in zip(SHIM_PHASES, marks[:-1], marks[1:], strict=True)}
        phase["(create returned after start)"] = log_time(lines, "workload created") - started
        phases.append(phase)
        return total
    finally:
        api.delete(f"{API}/{sid}")
        api.get(f"{API}/{sid}?waitFor=terminated&timeout=60", timeout=90)


# --------------------------------------------------------------------------------------------


def same_container(engine: DockerEngine, a: str, b: str) -> list[str]:
    """Where two containers differ in what decides how they start (the port aside)."""
    da, db = engine.inspect(a), engine.inspect(b)
    out = []
    for path in (("Config", "Image"), ("Config", "Env"), ("HostConfig", "Init"),
                 ("HostConfig", "NetworkMode"), ("HostConfig", "Memory"), ("HostConfig", "NanoCpus"),
                 ("HostConfig", "ShmSize"), ("HostConfig", "RestartPolicy"), ("HostConfig", "Mounts"),
                 ("Config", "StopTimeout"), ("Path",)):
        va, vb = da, db
        for k in path:
            va, vb = (va or {}).get(k), (vb or {}).get(k)
        if va != vb:
            out.append(f"{'.'.join(path)}: {va!r} != {vb!r}")
    ca, cb = [da["Path"], *da["Args"]], [db["Path"], *db["Args"]]  # Entrypoint + Cmd, the process's argv
    strip = lambda c: [x for x in c if not x.isdigit() or len(x) < 4]  # noqa: E731 - the ports differ
    if strip(ca) != strip(cb):
        out.append(f"argv: {ca} != {cb}")
    return out



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--docker-host", default=os.environ.get(ENV_HOST), help="an Engine to use (unix://...)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not MODEL.is_file():
        raise SystemExit(f"{MODEL} is missing: `make setup` puts it there")
    bench_engine = docker_engine(args.docker_host)
    if bench_engine is None:
        return 0
    engine = bench_engine.engine
    work = Path(tempfile.mkdtemp(prefix="modserv-bench-docker-"))
    server: subprocess.Popen[bytes] | None = None
    api = httpx.Client(timeout=60, trust_env=False)
    try:
        image = di.build_llama_image(engine)
        config = work / "modserv.yaml"
        config.write_text(yaml.safe_dump({"shimlets": {"docker": {
            "host": engine.host, "network": "host", "pull": "never",
            "images": {"llama.cpp": {"image": image, "program": "llama-cpp-python"}}}}}))
        port = free_port()
        log = (work / "server.log").open("wb")
        server = subprocess.Popen([str(Path(sys.executable).parent / "model-serve-shim"), f"--port={port}",
                                   f"--data-dir={work / 'data'}", "--shimlet=docker", f"--config={config}"],
                                  stdout=log, stderr=log)  # default log level: info
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, trust_env=False)
        wait_until(lambda: ok(f"http://127.0.0.1:{port}/healthz"), 60)
        body = {"modelName": "smollm2", "modelFile": str(MODEL), "contextLength": 2048,
                "resourceRequirements": {"cpu": "2", "memory": "2Gi"}}
        dry = api.post(f"{API}/deploy", json={**body, "dryRun": True}).json()["data"]
        create = dry["rendered"]["workload"]["containers"][0]["body"]
        # Once, unmeasured: warm the page cache and the image's layers; check both containers are the same.
        by_hand(engine, create, -1, [])
        check_port = free_port()
        subprocess.run([engine.docker, *run_argv(create, "bench-check", check_port)], check=True,
                       capture_output=True, env=engine.full_env())
        sid = api.post(f"{API}/deploy", json=body).json()["data"]["serviceId"]
        api.get(f"{API}/{sid}?waitFor=running&timeout=300", timeout=330)
        differences = same_container(engine, "bench-check", f"modserv-{sid}-0")
        engine.cli("rm", "-f", "-v", "bench-check", check=False)
        api.delete(f"{API}/{sid}")
        api.get(f"{API}/{sid}?waitFor=terminated&timeout=60", timeout=90)
        if differences:
            raise SystemExit("the hand-made container differs from the shim's: " + "; ".join(differences))
        load0 = os.getloadavg()
        hand: list[float] = []
        shim: list[float] = []
        hand_phases: list[dict[str, float]] = []
        shim_phases: list[dict[str, float]] = []
        for i in range(args.runs):
            first_hand = i % 2 == 0
            for arm in ("hand", "shim") if first_hand else ("shim", "hand"):
                if arm == "hand":
                    hand.append(by_hand(engine, create, i, hand_phases))
                else:
                    shim.append(through_shim(api, engine, body, shim_phases))
            print(f"# run {i + 1}/{args.runs}: by hand {hand[-1] * 1000:.0f} ms,"
                  f" through the shim {shim[-1] * 1000:.0f} ms", file=sys.stderr)
        load1 = os.getloadavg()
    finally:
        api.close()
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        leftovers = engine.cli("ps", "-aq", "--filter", "name=bench-", check=False).stdout.split()
        leftovers += engine.cli("ps", "-aq", "--filter", "label=org.modserv-shim.managed-by",
                                check=False).stdout.split()
        if leftovers:
            engine.cli("rm", "-f", "-v", *leftovers, check=False)
        bench_engine.stop()
        shutil.rmtree(work, ignore_errors=True)
    ms = lambda x: round(x * 1000, 1)  # noqa: E731
    med = statistics.median
    mh, msh = med(hand), med(shim)
    shim_cp = [p["accept"] + p["to create"] + p["engine create+start"] + p["health check"] + p["client sees"]
               for p in shim_phases]
    hand_cp = [p["CLI to create"] + p["engine create+start"] for p in hand_phases]
    result: dict[str, Any] = {
        "runs": args.runs,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "tree": tree(),
        "load_average_before_after": [round(load0[0], 2), round(load1[0], 2)],
        "engine": "own dockerd, temporary directory" if bench_engine.own is not None else engine.host,
        "image": image,
        "deploy_body": body,
        "by_hand_command": "docker " + " ".join(run_argv(create, "bench-by-hand-N", 12345)),
        "by_hand_s": [round(x, 4) for x in hand],
        "through_shim_s": [round(x, 4) for x in shim],
        "median_by_hand_ms": ms(mh),
        "median_through_shim_ms": ms(msh),
        "difference_of_medians_ms": ms(msh - mh),
        "median_paired_difference_ms": ms(med(b - a for a, b in zip(hand, shim, strict=True))),
        "paired_difference_range_ms": [ms(min(b - a for a, b in zip(hand, shim, strict=True))),
                                       ms(max(b - a for a, b in zip(hand, shim, strict=True)))],
        "median_runtime_start_ms": {"by_hand": ms(med(p["runtime start"] for p in hand_phases)),
                                    "through_shim": ms(med(p["runtime start"] for p in shim_phases))},
        "median_control_plane_ms": {"by_hand (docker run alone)": ms(med(hand_cp)),
                                    "through_shim": ms(med(shim_cp))},
        "control_plane_range_ms": {"by_hand": [ms(min(hand_cp)), ms(max(hand_cp))],
                                   "through_shim": [ms(min(shim_cp)), ms(max(shim_cp))]},
        "median_paired_control_plane_difference_ms": ms(med(b - a for a, b in zip(hand_cp, shim_cp, strict=True))),
        "median_phase_ms": {
            "by_hand": {k: ms(med(p[k] for p in hand_phases)) for k in HAND_PHASES},
            "through_shim": {k: ms(med(p[k] for p in shim_phases)) for k in shim_phases[0]},
        },
        "phases_ms": {"by_hand": [{k: ms(v) for k, v in p.items()} for p in hand_phases],
                      "through_shim": [{k: ms(v) for k, v in p.items()} for p in shim_phases]},
    }
    print(json.dumps(result, indent=2))
    r = result
    print(f"\n{args.runs} runs per arm\n")
    print("| median by hand | median through the shim | difference of medians | median of paired differences |"
          " control plane alone: shim / docker run (median) | median of paired control-plane differences |")
    print("|---|---|---|---|---|---|")
    cp = r["median_control_plane_ms"]
    print(f"| {r['median_by_hand_ms']} ms | {r['median_through_shim_ms']} ms | {r['difference_of_medians_ms']} ms |"
          f" {r['median_paired_difference_ms']} ms | {cp['through_shim']} / {cp['by_hand (docker run alone)']} ms |"
          f" {r['median_paired_control_plane_difference_ms']} ms |")
    for arm, names in (("through_shim", list(shim_phases[0])), ("by_hand", list(HAND_PHASES))):
        print(f"\n| {arm} | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
        print("| median | " + " | ".join(f"{r['median_phase_ms'][arm][k]} ms" for k in names) + " |")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
