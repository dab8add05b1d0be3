"""What the k8s shimlet costs the API server at steady state, and how fast it notices a ready pod.

1. **Requests per minute at steady state** with 10, 100 and 1000 running services:
   deploy N services on the simulated cluster (tests/k8s_sim), wait until all are
   READY, then count every request the shimlet sends during a quiet window (the
   simulator's request log) and scale it to a minute.  A shimlet that polls would
   grow with N; this one keeps three label-selected watches for all services, so
   the number must be flat.  The window is short (``--window``), so the watch
   lifetime is shortened too (``--watch-timeout``): each re-opened watch is one
   request, and that is the only steady-state traffic there is.
2. **Pod ready -> READY latency**: the time from the simulated pod's Ready
   condition turning True (a listener on the simulator's store, same clock) to
   the shimlet's ``watch()`` stream reporting the service READY; median of
   ``--latency-runs`` deploys, one at a time.

    .venv/bin/python bench/k8s_requests.py [--counts 10 100 1000] [--window 10] [--watch-timeout 5]

Prints a markdown table.  Nothing here talks to a real cluster.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers.k8s_shimlet import context  # noqa: E402
from tests.k8s_sim import NodeSpec, Sim, run_sim  # noqa: E402

from modserv_shim.plugins import PluginContext, ResourcePhase  # noqa: E402
from modserv_shim.shimlets.k8s import K8sShimlet  # noqa: E402
from modserv_shim.shimlets.k8s.naming import INSTANCE  # noqa: E402

POLL_BASELINE_SECONDS = 2.0  # the server's default poll_interval, for the "if it polled" column


def shimlet_for(sim: Sim, work: Path, watch_timeout: float) -> K8sShimlet:
    kubeconfig = sim.write_kubeconfig(work / "kubeconfig")
    options = {"kubeconfig": str(kubeconfig), "trust_env": False, "watch_timeout": watch_timeout,
               "sync_timeout": 60.0, "api_timeout": 60.0}
    return K8sShimlet(PluginContext("k8s", work, options))


async def all_ready(shimlet: K8sShimlet, rids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(rids)
    while pending:
        pending = {r for r in pending if (await shimlet.status(r)).phase is not ResourcePhase.READY}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} services not READY after {timeout} s")
        await asyncio.sleep(0.1)


async def steady_state(n: int, window: float, watch_timeout: float, work: Path) -> dict[str, Any]:
    node = NodeSpec("big", cpu="100000", memory="100000Gi", pods=n + 10)
    with run_sim(nodes=[node], watch_history=100_000) as sim:
        shimlet = shimlet_for(sim, work, watch_timeout)
        await shimlet.start()
        try:
            t_create = time.monotonic()
            gate = asyncio.Semaphore(32)

            async def deploy(i: int) -> str:
                async with gate:
                    return await shimlet.create(context(f"svc-{i:04d}"))

            rids = list(await asyncio.gather(*(deploy(i) for i in range(n))))
            await all_ready(shimlet, rids, timeout=60 + n)
            deploy_requests = sim.request_count(since=t_create)
            await asyncio.sleep(1.0)  # let the last status updates drain
            t0 = time.monotonic()
            await asyncio.sleep(window)
            elapsed = time.monotonic() - t0
            total = sim.request_count(since=t0)
            watches = sim.request_count(since=t0, watch=True)
            open_watches = len(sim.open_watches())
            status_calls_ok = all([(await shimlet.status(r)).phase is ResourcePhase.READY for r in rids])
        finally:
            await shimlet.close()
    return {"n": n, "per_minute": total * 60 / elapsed, "watch_per_minute": watches * 60 / elapsed,
            "other_per_minute": (total - watches) * 60 / elapsed, "open_watches": open_watches,
            "deploy_requests_per_service": deploy_requests / n, "all_ready": status_calls_ok,
            "poll_baseline": n * 60 / POLL_BASELINE_SECONDS}


async def ready_latency(runs: int, work: Path) -> list[float]:
    with run_sim(nodes=[NodeSpec("n1", cpu="1000", memory="1000Gi", pods=runs + 10)]) as sim:
        ready_at: dict[str, float] = {}

        def listener(event: Any) -> None:  # runs on the simulator's loop: stamp the Ready transition
            if event.rt.kind != "Pod" or event.type != "MODIFIED":
                return
            name = (event.obj["metadata"].get("labels") or {}).get(INSTANCE)
            if name and name not in ready_at and _ready(event.obj) and not _ready(event.old or {}):
                ready_at[name] = time.monotonic()

        sim._call(lambda cluster: cluster.store.listeners.append(listener))
        shimlet = shimlet_for(sim, work, 300.0)
        await shimlet.start()
        seen: dict[str, float] = {}
        stream = shimlet.watch()

        async def consume() -> None:
            async for rid, status in stream:
                if status.phase is ResourcePhase.READY and rid not in seen:
                    seen[rid] = time.monotonic()

        consumer = asyncio.create_task(consume())
        latencies: list[float] = []
        try:
            for i in range(runs):
                rid = await shimlet.create(context(f"lat-{i:03d}"))
                while rid not in seen:
                    await asyncio.sleep(0.005)
                latencies.append(seen[rid] - ready_at[rid])
                await shimlet.delete(rid)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
            await shimlet.close()
    return latencies


def _ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--window", type=float, default=10.0, help="steady-state window in seconds")
    parser.add_argument("--watch-timeout", type=float, default=5.0,
                        help="server-side watch lifetime (the shimlet's default is 300 s)")
    parser.add_argument("--latency-runs", type=int, default=30)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="k8s-bench-") as tmp:
        for n in args.counts:
            rows.append(await steady_state(n, args.window, args.watch_timeout, Path(tmp) / f"n{n}"))
            print(f"# {n} services measured", file=sys.stderr)
        latencies = await ready_latency(args.latency_runs, Path(tmp) / "latency")
    print(f"Steady state: {args.window:g} s window scaled to a minute; watch lifetime {args.watch_timeout:g} s"
          " (each re-opened watch is one request).\n")
    print("| running services | API requests / min | of which watch re-opens | other requests / min |"
          " open watches | deploy requests / service | a 2 s poll per service would send |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']} | {r['per_minute']:.1f} | {r['watch_per_minute']:.1f} | {r['other_per_minute']:.1f} |"
              f" {r['open_watches']} | {r['deploy_requests_per_service']:.2f} | {r['poll_baseline']:.0f} / min |")
    ms = sorted(x * 1000 for x in latencies)
    p90 = ms[max(0, int(len(ms) * 0.9) - 1)]
    print(f"\nPod Ready -> READY via watch(), {len(ms)} deploys: median {statistics.median(ms):.1f} ms,"
          f" p90 {p90:.1f} ms, max {ms[-1]:.1f} ms (target: median < 200 ms).")


if __name__ == "__main__":
    asyncio.run(main())
