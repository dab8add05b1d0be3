"""Docker Engine API calls per steady minute of the docker shimlet, with 10 and 100 running services.

A counting Unix-socket proxy sits between the shimlet and the Engine: the shimlet's ``host``
is the proxy's socket, the proxy relays every byte to the Engine's socket and parses each
HTTP request and response on the way (head, then the body by Content-Length or chunks).
Requests are counted by method and path template (``GET /containers/{id}/json``; the API
version prefix and the query string are dropped), and a request is "open" until its response
ends.  The event stream is one long request: counted once, when it opens.  After the window,
one container is ``docker kill``ed and the shimlet must notice (the stream is live, not stuck).

For each N: a fresh shimlet (in this process, no REST server: the Engine's only client in
the shim is the shimlet, and ``status()`` answers from its cache) deploys N services on the
tiny busybox image (``busybox httpd`` serving ``/v1/models``, ``network: host``), waits until
all are READY, lets things settle, then counts every request during a steady window
(``--window``, default 60 s), scaled to a minute.  A shimlet that polled would grow with N;
this one keeps one label-filtered ``GET /events`` for all services, so the count must be flat.

    .venv/bin/python bench/docker_api_calls.py [--counts 10 100] [--window 60] [--json FILE]

The Engine: ``--docker-host`` (or ``MODSERV_TEST_DOCKER_HOST``) if given, else our own
``dockerd`` in a temporary directory (tests/helpers/docker_engine.py), stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.benchlib import docker_engine, tree, write_json  # noqa: E402
from tests.helpers import docker_images as di  # noqa: E402
from tests.helpers.docker_engine import ENV_HOST, DockerEngine  # noqa: E402

from modserv_shim.plugins import LaunchSpec, ResourcePhase  # noqa: E402
from modserv_shim.shimlets.docker import DockerShimlet, render  # noqa: E402
from modserv_shim.testing import make_deploy_context, make_deploy_spec, make_plugin_context  # noqa: E402

POLL_BASELINE_SECONDS = 2.0  # the server's default poll_interval, for the "if it polled" column

# --------------------------------------------------------------------------------------------
# The counting proxy

_VERSION = re.compile(r"^/v\d+\.\d+(?=/)")
_IMAGE_ACTIONS = ("json", "history", "push", "tag", "get")


def template(target: str) -> str:
    """``/v1.43/containers/abc/json?all=1`` -> ``/containers/{id}/json``."""
    path = _VERSION.sub("", target.split("?", 1)[0])
    parts = path.strip("/").split("/")
    if len(parts) >= 2 and parts[0] in ("containers", "exec", "networks", "volumes") \
            and parts[1] not in ("json", "create", "prune"):
        return "/" + "/".join([parts[0], "{id}", *parts[2:]])
    if len(parts) >= 2 and parts[0] == "images" and parts[1] not in ("json", "create", "load", "search", "prune"):
        action = parts[-1] if len(parts) > 2 and parts[-1] in _IMAGE_ACTIONS else None
        return "/images/{name}" + (f"/{action}" if action else "")
    return path


@dataclass
class Conn:
    opened: float
    current: str | None = None  # the open request's "METHOD template" (None: its response has ended)
    since: float = 0.0
    closed: float | None = None


@dataclass
class CountingProxy:
    """Listens on ``listen`` (a Unix socket path), relays to ``upstream``, counts requests."""

    listen: str
    upstream: str
    log: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, "METHOD template")
    conns: list[Conn] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.listen)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def count(self, since: float, until: float) -> Counter[str]:
        return Counter(what for t, what in self.log if since <= t < until)

    def open_since(self, since: float) -> list[str]:
        """Requests that began before ``since`` and are still open now (their response has not ended)."""
        return sorted(c.current for c in self.conns if c.current and c.since < since and c.closed is None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Conn(time.monotonic())
        self.conns.append(conn)
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        ins = asyncio.create_task(self._requests(reader, up_writer, conn))
        outs = asyncio.create_task(self._responses(up_reader, writer, conn))
        try:
            await asyncio.wait({ins, outs}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # close(): end quietly
        finally:
            conn.closed = time.monotonic()
            for t in (ins, outs):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(ins, outs, return_exceptions=True)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
            self._tasks.discard(task)

    async def _requests(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter, conn: Conn) -> None:
        """Forward HTTP/1.1 requests one by one, counting each at its request line."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            what = f"{method} {template(target)}"
            now = time.monotonic()
            self.log.append((now, what))
            conn.current, conn.since = what, now
            up.write(head)
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    up.write(size_line)
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                            up.write(trailer)
                        up.write(b"\r\n")
                        break
                    up.write(await reader.readexactly(size + 2))
            elif (length := int(headers.get("content-length", "0") or 0)) > 0:
                up.write(await reader.readexactly(length))
            await up.drain()

    @staticmethod
    async def _responses(reader: asyncio.StreamReader, down: asyncio.StreamWriter, conn: Conn) -> None:
        """Relay the Engine's responses; a request stays open (``conn.current``) until its response ends."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            down.write(head)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            if status < 200:
                continue
            if status in (204, 304) or (conn.current or "").startswith("HEAD "):
                pass
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    down.write(size_line)
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                            down.write(trailer)
                        down.write(b"\r\n")
                        break
                    down.write(await reader.readexactly(size + 2))
                    await down.drain()
            elif "content-length" in headers:
                down.write(await reader.readexactly(int(headers["content-length"])))
            else:  # until the connection closes (a raw stream)
                while data := await reader.read(65536):
                    down.write(data)
                    await down.drain()
                return
            await down.drain()
            conn.current = None


# --------------------------------------------------------------------------------------------
# The services


def busybox_launch(image: str) -> LaunchSpec:
    """The fake runtime: busybox httpd serving /v1/models on the port the shimlet gives the replica."""
    return LaunchSpec(runtime="busybox", served_model_name="tiny", model_path="/models/tiny.gguf", local_command=(),
                      args=tuple(di.serve_models_cmd("tiny", "{port}", "{host}")),  # type: ignore[arg-type]
                      image=image, startup_timeout=120)


def fake_model(work: Path) -> Path:
    """A model file to bind-mount (busybox never reads it)."""
    model = work / "models" / "tiny.gguf"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"GGUF")
    return model


def port_report(engine: DockerEngine, services: set[str]) -> dict[str, Any]:
    """Host ports our containers were given: any given twice, and who listens on those of troubled services."""
    out = engine.cli("ps", "-a", "--filter", f"label={render.MANAGED_BY}={render.MANAGER}", "--format",
                     f'{{{{.Label "{render.SERVICE_ID}"}}}} {{{{.Label "{render.PORT}"}}}} {{{{.State}}}}').stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    given = Counter(port for _, port, _ in rows)
    troubled = {}
    for sid, port, state in rows:
        if sid in services:
            who = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True,
                                 check=False).stdout
            troubled[sid] = {"port": port, "state": state, "listening": " ".join(who.split())}
    return {"containers": len(rows), "given_twice": sorted(p for p, n in given.items() if n > 1),
            "troubled": troubled}


async def all_ready(shimlet: DockerShimlet, rids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(rids)
    while pending:
        pending = {r for r in pending if (await shimlet.status(r)).phase is not ResourcePhase.READY}
        if pending and time.monotonic() > deadline:
            some = sorted(pending)[0]
            raise TimeoutError(f"{len(pending)} services not READY after {timeout:g} s;"
                               f" {some}: {await shimlet.status(some)}")
        await asyncio.sleep(0.2)


async def steady_state(n: int, window: float, settle: float, engine: DockerEngine, image: str,
                       work: Path) -> dict[str, Any]:
    upstream = engine.socket_path
    assert upstream, "the counting proxy needs the Engine on a Unix socket"
    model = fake_model(work)
    proxy = CountingProxy(str(work / "proxy.sock"), upstream)
    await proxy.start()
    shimlet = DockerShimlet(make_plugin_context(work / "data", "docker", {
        "host": f"unix://{proxy.listen}", "network": "host", "pull": "never", "stop_grace_period": 2.0}))
    rids: list[str] = []
    trouble: list[dict[str, Any]] = []  # every status with a problem, from the shimlet's watch stream

    async def follow() -> None:
        async for rid, st in shimlet.watch():
            if st.phase in (ResourcePhase.DEGRADED, ResourcePhase.FAILED) or (st.reason and "exit" in st.reason):
                trouble.append({"t": round(time.monotonic() - t_start, 1), "service": rid, "phase": str(st.phase),
                                "reason": st.reason})

    follower: asyncio.Task[None] | None = None
    try:
        t_start = time.monotonic()
        await shimlet.start()
        follower = asyncio.create_task(follow())
        t_create = time.monotonic()
        gate = asyncio.Semaphore(8)

        async def deploy(i: int) -> str:
            ctx = make_deploy_context(f"bench-{n}-{i:04d}", 1, launch=busybox_launch(image),
                                      spec=make_deploy_spec("tiny", modelFile=str(model)))
            async with gate:
                return await shimlet.create(ctx)

        rids = list(await asyncio.gather(*(deploy(i) for i in range(n))))
        await all_ready(shimlet, rids, timeout=120 + 3 * n)
        t_ready = time.monotonic()
        deploy_calls = proxy.count(t_create, t_ready)
        await asyncio.sleep(settle)  # the last events and inspects drain
        t0 = time.monotonic()
        await asyncio.sleep(window)
        t1 = time.monotonic()
        counted = proxy.count(t0, t1)
        long_open = proxy.open_since(t0)
        ready_after = sum([(await shimlet.status(r)).phase is ResourcePhase.READY for r in rids])
        running = len(engine.cli("ps", "-q", "--filter", f"label={render.MANAGED_BY}={render.MANAGER}",
                                 "--filter", "status=running").stdout.split())
        # The stream is live, not stuck: `docker kill` one container; the shimlet must notice by itself.
        t_kill = time.monotonic()
        engine.cli("kill", render.container_name(rids[0], 0))
        while (await shimlet.status(rids[0])).phase is ResourcePhase.READY:
            if time.monotonic() - t_kill > 30:
                raise TimeoutError("the shimlet did not notice a killed container within 30 s")
            await asyncio.sleep(0.005)
        noticed = time.monotonic() - t_kill
        ports = port_report(engine, {x["service"] for x in trouble if x["t"] < t1 - t_start})
    finally:
        gate = asyncio.Semaphore(8)

        async def remove(rid: str) -> None:
            async with gate:
                await shimlet.delete(rid)

        if follower is not None:
            follower.cancel()
        await asyncio.gather(*(remove(r) for r in rids), return_exceptions=True)
        await shimlet.close()
        await proxy.close()
    total = sum(counted.values())
    scale = 60 / (t1 - t0)
    return {
        "services": n,
        "window_s": round(t1 - t0, 2),
        "calls_per_minute": round(total * scale, 2),
        "calls_in_window": dict(sorted(counted.items())),
        "long_requests_open_through_window": long_open,
        "services_ready_at_end": ready_after,
        "killed_one_noticed_after_ms": round(noticed * 1000, 1),
        "window_s_from_start": [round(t0 - t_start, 1), round(t1 - t_start, 1)],
        "problems_seen": [x for x in trouble if x["t"] < t1 - t_start],
        "ports": ports,
        "containers_running_at_end": running,
        "start_calls": dict(sorted(proxy.count(t_start, t_create).items())),
        "deploy_calls": dict(sorted(deploy_calls.items())),
        "deploy_calls_per_service": round(sum(deploy_calls.values()) / n, 2),
        "deploy_seconds": round(t_ready - t_create, 1),
        "a_2s_poll_per_service_would_send_per_minute": round(n * 60 / POLL_BASELINE_SECONDS),
    }


async def run(args: argparse.Namespace, engine: DockerEngine, image: str) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="modserv-apicalls-", dir="/tmp") as tmp:  # short: socket paths
        for n in args.counts:
            rows.append(await steady_state(n, args.window, args.settle, engine, image, Path(tmp) / f"n{n}"))
            print(f"# {n} services measured: {rows[-1]['calls_per_minute']} calls/min", file=sys.stderr)
    return rows



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--window", type=float, default=60.0, help="steady-state window in seconds")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after all are READY before the window")
    ap.add_argument("--docker-host", default=os.environ.get(ENV_HOST), help="an Engine to use (unix://...)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    bench_engine = docker_engine(args.docker_host)
    if bench_engine is None:
        return 0
    engine = bench_engine.engine
    try:
        image = di.build_tiny_image(engine)
        load0 = os.getloadavg()
        rows = asyncio.run(run(args, engine, image))
        load1 = os.getloadavg()
    finally:
        bench_engine.stop()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "tree": tree(),
        "engine": engine.cli("version", "--format", "{{.Server.Version}}", check=False).stdout.strip()
        if bench_engine.own is None else "own dockerd (stopped)",
        "load_average_before_after": [round(load0[0], 2), round(load1[0], 2)],
        "deployed_through": "the docker shimlet directly (DockerShimlet in this process)",
        "image": image,
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    print(f"\nSteady state: {args.window:g} s window after all READY (+{args.settle:g} s), scaled to a minute;"
          " the event stream is one long request, counted when it opens.\n")
    print("| running services | Engine API calls / min | calls in the window | long requests open through it |"
          " deploy calls / service | a 2 s poll per service would send |")
    print("|---:|---:|---|---|---:|---:|")
    for r in rows:
        calls = ", ".join(f"{k}: {v}" for k, v in r["calls_in_window"].items()) or "none"
        print(f"| {r['services']} | {r['calls_per_minute']:g} | {calls} |"
              f" {', '.join(r['long_requests_open_through_window'])} | {r['deploy_calls_per_service']:g} |"
              f" {r['a_2s_poll_per_service_would_send_per_minute']} / min |")
    print("\nDeploy calls (all services): " + "; ".join(
        f"N={r['services']}: " + ", ".join(f"{k} x{v}" for k, v in r["deploy_calls"].items()) for r in rows))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
