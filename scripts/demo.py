"""The README's main job: a real model from a file to a running OpenAI-compatible service.

Starts ``model-serve-shim`` (local shimlet, opensourcellm pipeline), deploys the
model through ``POST /api/v1/modserv/deploy``, shows the lifecycle and the
pipeline's step logs as they happen, sends one chat completion to the service's
endpoint and prints the answer.  Then it keeps everything running until Ctrl-C
(which deletes the service and stops the server), or cleans up at once when it
is not attached to a terminal (or with ``--no-wait``).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
ROOT = Path(__file__).resolve().parent.parent


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(client: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    r = client.request(method, path, **kw)
    body = r.json()
    if body.get("code") != 0:
        raise SystemExit(f"{method} {path} -> HTTP {r.status_code}: {body.get('message')}")
    return body["data"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="absolute path of a GGUF file or HF folder")
    ap.add_argument("--name", default="smollm2-135m")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--data-dir", default=str(ROOT / ".data" / "demo"))
    ap.add_argument("--question", default="What is the capital of France? Answer in one sentence.")
    ap.add_argument("--no-wait", action="store_true", help="clean up right after the answer")
    args = ap.parse_args()

    port = args.port if port_free(args.port) else free_port()
    url = f"http://127.0.0.1:{port}"
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    log_path = Path(args.data_dir) / "server.log"
    exe = Path(sys.executable).parent / "model-serve-shim"
    cmd = [str(exe), f"--port={port}", "--shimlet=local", "--pipeline=opensourcellm", f"--data-dir={args.data_dir}"]
    console.print(f"[bold]$ {' '.join(cmd)}[/]   (log: {log_path})")
    with log_path.open("ab") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    client = httpx.Client(base_url=url, timeout=120)
    sid = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                console.print(log_path.read_text()[-3000:])
                raise SystemExit("the server did not start; its log is above")
            time.sleep(0.2)
        console.print(f"server up at {url} (PID {server.pid}); OpenAPI docs at {url}/docs\n")

        body = {"modelName": args.name, "modelFile": args.model,
                "resourceRequirements": {"cpu": "2", "memory": "2Gi"}, "replicaCount": 1}
        console.print(f"[bold]POST /api/v1/modserv/deploy[/] {body}")
        accepted = api(client, "POST", "/api/v1/modserv/deploy", json=body)
        sid = accepted["serviceId"]
        console.print(f"  serviceId   {sid}\n  totalSteps  {accepted['totalSteps']}\n")

        states = ["initializing", "pipeline_running", "deploying", "health_checking", "running", "degraded"]
        shown: set[tuple[str, str]] = set()
        t0 = datetime.fromisoformat(api(client, "GET", f"/api/v1/modserv/{sid}")["createdAt"])
        state = "initializing"
        while True:
            # a long poll: answers at the next state change, or after 0.25 s to show new log lines
            others = ",".join(s for s in states if s != state)
            svc = api(client, "GET", f"/api/v1/modserv/{sid}?waitFor={others}&timeout=0.25")
            state = svc["state"]
            # every state change (events) and step log line, in the order they happened; lines newer
            # than the last event wait for the next round (their event may not be fetched yet)
            events = [(e["ts"], f"[bold cyan]state: {e['to']}[/]" + (f"  ({e['reason']})" if e["reason"] else ""))
                      for e in api(client, "GET", f"/api/v1/modserv/{sid}/events")]
            logs = [(x["ts"], f"    [dim]{x['step']:<20}[/] {x['message']}")
                    for x in api(client, "GET", f"/api/v1/modserv/{sid}/pipeline/logs")["logs"]]
            final = state in ("running", "failed", "degraded")
            for ts, text in sorted(events + logs):
                if (ts, text) not in shown and (final or ts <= events[-1][0]):
                    shown.add((ts, text))
                    console.print(f"{(datetime.fromisoformat(ts) - t0).total_seconds():6.2f}s {text}")
            if final:
                break
        if svc["state"] != "running":
            raise SystemExit(f"deploy ended {svc['state']}: {svc['reason']}")

        endpoint = svc["endpoint"]
        pipe = api(client, "GET", f"/api/v1/modserv/{sid}/pipeline")
        for step in pipe["steps"]:
            console.print(f"  {step['name']:<20} {step['status']:<10} {step['durationMs']:>9.1f} ms")
        console.print(f"\nOpenAI endpoint: {endpoint}/v1")
        console.print(f"[bold]POST {endpoint}/v1/chat/completions[/]  \"{args.question}\"")
        r = httpx.post(f"{endpoint}/v1/chat/completions", timeout=120, json={
            "model": args.name, "max_tokens": 64, "temperature": 0,
            "messages": [{"role": "user", "content": args.question}]})
        answer = r.json()["choices"][0]["message"]["content"].strip()
        console.print(f"[bold green]answer:[/] {answer}\n")

        if args.no_wait or not sys.stdin.isatty():
            return 0
        console.print("Everything keeps running. Try:\n"
                      f"  curl {url}/api/v1/modserv/{sid}\n"
                      f"  curl {url}/api/v1/modserv/{sid}/pipeline/logs\n"
                      f"  curl {endpoint}/v1/models\n"
                      "Press Ctrl-C to stop: the service is deleted and the server stopped "
                      f"(or by hand: curl -X DELETE {url}/api/v1/modserv/{sid}; kill {server.pid}).")
        try:
            while server.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            console.print()
        return 0
    finally:
        if sid is not None and server.poll() is None:
            with_deleted = api(client, "DELETE", f"/api/v1/modserv/{sid}")
            console.print(f"service {sid}: {with_deleted['state']}")
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        console.print(f"server stopped (PID {server.pid})")


if __name__ == "__main__":
    sys.exit(main())
