"""From a simulated pod turning Ready to the REST API reporting the service ``running``.

The whole path a user waits on: the k8s shimlet's pod watch, its cache, the
health-check step (``/v1/models`` and a one-token completion through the API
server's service proxy, answered by a tiny OpenAI-shaped backend), the state
change, and ``GET /api/v1/modserv/{id}`` (polled every 5 ms).  Pods turn Ready
``--ready-delay`` seconds after they start, long enough that the pipeline is
already waiting in its health check, so the number is the reaction time, not
the pipeline's own duration.

    .venv/bin/python bench/k8s_api_latency.py [--runs 10] [--ready-delay 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import free_port  # noqa: E402
from tests.helpers.k8s_shimlet import NODES, openai_backend, options_for  # noqa: E402
from tests.helpers.k8s_volume import VOLUME, modelinfo_job  # noqa: E402
from tests.helpers.tiny_gguf import write_tiny_llama_gguf  # noqa: E402
from tests.k8s_sim import run_sim  # noqa: E402

from modserv_shim.config import Settings  # noqa: E402
from modserv_shim.logs import configure as configure_logs  # noqa: E402
from modserv_shim.server.runner import build, build_registry, uvicorn_config  # noqa: E402
from modserv_shim.shimlets.k8s.naming import INSTANCE  # noqa: E402


def _ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


async def measure(runs: int, ready_delay: float, work: Path) -> list[float]:
    volume = work / "pvc"
    volume.mkdir()
    write_tiny_llama_gguf(volume / "tiny.gguf")
    latencies: list[float] = []
    with run_sim(nodes=NODES, pod_ready_delay=ready_delay) as sim, openai_backend() as backend:
        ready_at: dict[str, float] = {}

        def listener(event: Any) -> None:  # on the simulator's loop, same monotonic clock
            if event.rt.kind != "Pod" or event.type != "MODIFIED":
                return
            name = (event.obj["metadata"].get("labels") or {}).get(INSTANCE)
            if name and name not in ready_at and _ready(event.obj) and not _ready(event.old or {}):
                ready_at[name] = time.monotonic()

        sim._call(lambda cluster: cluster.store.listeners.append(listener))
        sim.set_job_handler(modelinfo_job(volume, work, []))
        settings = Settings.load(None, data_dir=work / "data", shimlet="k8s", pipeline="opensourcellm",
                                 port=free_port(), log_level="warning",
                                 shimlets={"k8s": options_for(sim, work, model_volume=VOLUME)})
        server = build(settings, build_registry(settings))
        userver = uvicorn.Server(uvicorn_config(server, log_level="warning", lifespan="on"))
        task = asyncio.create_task(userver.serve())
        while not userver.started:
            await asyncio.sleep(0.01)
        api = httpx.AsyncClient(base_url=f"http://{settings.host}:{settings.port}", timeout=30)
        body = {"modelName": "tiny", "modelFile": "/models/tiny.gguf",
                "resourceRequirements": {"cpu": "1", "memory": "2Gi"}}
        try:
            for _ in range(runs):
                sid = (await api.post("/api/v1/modserv/deploy", json=body)).json()["data"]["serviceId"]
                sim.set_service_backend("default", sid, backend)
                while True:
                    data = (await api.get(f"/api/v1/modserv/{sid}")).json()["data"]
                    if data["state"] == "running":
                        seen = time.monotonic()
                        break
                    if data["state"] == "failed":
                        raise RuntimeError(data["reason"])
                    await asyncio.sleep(0.005)
                latencies.append(seen - ready_at[sid])
                await api.delete(f"/api/v1/modserv/{sid}")
        finally:
            await api.aclose()
            userver.should_exit = True
            await task
    return latencies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--ready-delay", type=float, default=1.0)
    args = ap.parse_args()
    configure_logs("warning")
    lat = asyncio.run(measure(args.runs, args.ready_delay, Path(tempfile.mkdtemp(prefix="modserv-k8s-lat-"))))
    ms = sorted(x * 1000 for x in lat)
    print(f"runs {len(ms)}: " + ", ".join(f"{x:.1f}" for x in ms) + " ms")
    print(f"\n| pod Ready -> API running | median | p90 | max |\n|---|---|---|---|\n"
          f"| {len(ms)} deploys | {statistics.median(ms):.1f} ms | {ms[int(0.9 * (len(ms) - 1))]:.1f} ms |"
          f" {ms[-1]:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
