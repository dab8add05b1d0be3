"""Large stored requests must not stall the event loop: list time and /healthz latency with many big rows.

Issue 8 found that one deploy with a 50 MB ``env`` value made every later list take ~0.45 s on the
event loop (``/healthz`` 0.16 s).  Requests are now capped (64 KiB bodies, 32 KiB of ``env``), and a
listing reads its rows without step outputs, on a worker thread.  This bench stores N services whose
``env`` is at the cap, then, while C clients list all of them in a loop, samples ``/healthz`` every
10 ms.  Two arms in the same run: the listing as it is now, and the earlier read path (every column,
on the event loop) for comparison; in both arms the response is shaped and encoded on a worker thread.

    .venv/bin/python bench/large_rows.py [--services 1000] [--clients 4] [--seconds 5]

The server runs in this process (fake shimlet and pipeline, the test doubles: no model is started).
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
from tests.conftest import fake_settings, serve  # noqa: E402
from tests.helpers.api_flows import DEPLOY  # noqa: E402

from modserv_shim.server.runner import build_registry  # noqa: E402
from modserv_shim.testing.fake_pipeline import FakePipeline  # noqa: E402
from modserv_shim.testing.fake_shimlet import FakeShimlet  # noqa: E402

BIG_ENV = {f"BIG_{i}": "x" * 4000 for i in range(8)}  # 32,000 characters: the cap


async def measure(live: Any, clients: int, seconds: float) -> dict[str, float]:
    stop = time.monotonic() + seconds
    list_times: list[float] = []
    health: list[float] = []

    async def lister() -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            r = await live.client.get("/api/v1/modserv")
            assert r.status_code == 200
            list_times.append(time.perf_counter() - t0)

    async def prober() -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            r = await live.client.get("/healthz")
            assert r.status_code == 200
            health.append(time.perf_counter() - t0)
            await asyncio.sleep(0.01)

    await asyncio.gather(prober(), *(lister() for _ in range(clients)))
    health.sort()
    return {
        "lists": len(list_times),
        "list_median_ms": 1000 * statistics.median(list_times),
        "healthz_median_ms": 1000 * statistics.median(health),
        "healthz_p99_ms": 1000 * health[int(0.99 * (len(health) - 1))],
        "healthz_max_ms": 1000 * health[-1],
    }


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="modserv-bench-rows-"))
    # poll rarely: the fake shimlet (a test double) re-reads one JSON file of all services per status()
    settings = fake_settings(tmp, allowed_env=["FAKE_*", "BIG_*"], poll_interval=60)
    registry = build_registry(settings)
    registry.register("shimlet", "fake", FakeShimlet, "test-double")
    registry.register("pipeline", "fake", FakePipeline, "test-double")
    live = await serve(settings, registry)
    try:
        for start in range(0, args.services, 50):
            await asyncio.gather(*(live.client.post("/api/v1/modserv/deploy", json={
                **DEPLOY, "modelName": f"m{i}", "env": BIG_ENV}) for i in range(start, min(start + 50, args.services))))
        manager = live.server.manager
        now = await measure(live, args.clients, args.seconds)
        light = manager.list_services

        async def every_column_on_the_loop(state: Any = None, **kw: Any) -> Any:
            return await manager.store.list_services([state] if state else None, limit=kw.get("limit"))

        manager.list_services = every_column_on_the_loop  # type: ignore[method-assign]
        before = await measure(live, args.clients, args.seconds)
        manager.list_services = light  # type: ignore[method-assign]
    finally:
        await live.stop(delete_services=False)
    print(f"{args.services} services with {sum(map(len, BIG_ENV.values()))} characters of env each,"
          f" {args.clients} clients listing for {args.seconds} s")
    print("| read path | lists | list median | /healthz median | /healthz p99 | /healthz max |")
    print("|---|---|---|---|---|---|")
    arms = (("rows with every column, read on the loop", before),
            ("rows without outputs, read on a worker thread (now)", now))
    for name, r in arms:
        print(f"| {name} | {r['lists']} | {r['list_median_ms']:.0f} ms | {r['healthz_median_ms']:.1f} ms"
              f" | {r['healthz_p99_ms']:.1f} ms | {r['healthz_max_ms']:.1f} ms |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(main(p.parse_args()))
