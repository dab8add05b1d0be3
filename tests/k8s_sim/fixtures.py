"""Run the simulated cluster from tests: ``run_sim(**config) -> Sim``.

The simulator runs on its own thread with its own asyncio loop (uvicorn serving :class:`SimApp`
on ``127.0.0.1`` and a free port), so it works the same from sync tests, async tests (any loop),
benchmarks, or a shim server under test running its own loop.  Every :class:`Sim` method is
thread-safe: calls are marshalled onto the simulator's loop.

Example::

    from lightkube import AsyncClient, KubeConfig
    from tests.k8s_sim import run_sim, eventually
    from tests.k8s_sim import PodFault

    with run_sim(nodes=[]) as sim:
        sim.add_node("gpu-1", gpus=2, gpu_product="NVIDIA-H20")
        sim.inject(PodFault.crash_loop("app=broken"))
        config = KubeConfig.from_file(sim.write_kubeconfig(tmp_path / "kubeconfig"))
        async with AsyncClient(config, trust_env=False) as client:
            ...
        assert sim.request_count(method="PATCH") == 1
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
import yaml

from .cluster import Cluster, NodeSpec, SimConfig
from .faults import ApiFault, PodFault
from .kubelet import JobHandler, JobResult, LogSource
from .server import RequestLog, RequestRecord, SimApp
from .store import Obj

__all__ = ["FaultHandle", "JobResult", "Sim", "eventually", "run_sim", "wait_until"]

T = TypeVar("T")


class FaultHandle:
    """Returned by :meth:`Sim.inject`; ``remove()`` (or leaving the ``with`` block) lifts the fault."""

    def __init__(self, sim: Sim, fault_id: int) -> None:
        self._sim, self._id = sim, fault_id

    def remove(self) -> None:
        self._sim._call(lambda c: c.faults.remove(self._id))
        self._sim._call(lambda c: c.kick())

    def __enter__(self) -> FaultHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Sim:
    """A running simulated cluster and everything a test needs to steer and observe it."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._log = RequestLog()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cluster: Cluster | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Sim:
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say so, and
        # without it every response waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sock, ready), name=f"k8s-sim-{self.port}",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(15) or self._failure is not None:
            raise RuntimeError(f"k8s-sim failed to start: {self._failure!r}")
        return self

    def _run(self, sock: socket.socket, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(sock, ready))
        except BaseException as exc:  # reported to start() / stop()
            self._failure = exc
            ready.set()

    async def _main(self, sock: socket.socket, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        cluster = self._cluster = Cluster(self.config)
        app = SimApp(cluster, self._log)
        server = self._server = uvicorn.Server(uvicorn.Config(
            app, http="h11", ws="none", lifespan="off", log_level="warning", access_log=False,
            timeout_graceful_shutdown=2, timeout_keep_alive=30))
        cluster_task = asyncio.create_task(cluster.run())
        serve_task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serve_task.done():
            await asyncio.sleep(0.005)
        ready.set()
        try:
            await serve_task
        finally:
            cluster.stop()
            await cluster_task
            await app.aclose()
            sock.close()

    def stop(self) -> None:
        """Close open watches, stop the server and join its thread."""
        if self._thread is None or self._loop is None or self._server is None:
            return
        with contextlib.suppress(RuntimeError):
            self._call(lambda c: c.store.close_watchers("close"))
            self._call(lambda c: c.stop())
        self._server.should_exit = True
        self._thread.join(15)
        self._thread = None

    def __enter__(self) -> Sim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- marshalling ------------------------------------------------------------------------------

    def _call(self, fn: Callable[[Cluster], T], timeout: float = 10.0) -> T:
        """Run ``fn(cluster)`` on the simulator's loop and return its result."""
        loop, cluster = self._loop, self._cluster
        if loop is None or cluster is None:
            raise RuntimeError("k8s-sim is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return fn(cluster)

        async def invoke() -> T:
            return fn(cluster)

        return asyncio.run_coroutine_threadsafe(invoke(), loop).result(timeout)

    # -- connection ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str | None:
        return self.config.token

    @property
    def kubernetes_version(self) -> str:
        """The Kubernetes version whose schemas validate writes (and that ``/version`` reports)."""
        return self._call(lambda c: c.schema_version)

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        """A kubeconfig dict (plain http, bearer token) pointing at this simulator."""
        user: dict[str, Any] = {"token": self.token} if self.token else {"username": "sim", "password": "sim"}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "k8s-sim", "cluster": {"server": self.url}}],
            "users": [{"name": "k8s-sim", "user": user}],
            "contexts": [{"name": "k8s-sim", "context": {"cluster": "k8s-sim", "user": "k8s-sim",
                                                         "namespace": namespace}}],
            "current-context": "k8s-sim",
        }

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """Write :meth:`kubeconfig` as YAML; use with ``lightkube.KubeConfig.from_file(path)``."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.kubeconfig(namespace), sort_keys=False))
        return target

    def lightkube_config(self, namespace: str = "default") -> Any:
        """A ``lightkube.KubeConfig`` built from :meth:`kubeconfig` (no file needed)."""
        from lightkube import KubeConfig

        return KubeConfig.from_dict(self.kubeconfig(namespace))

    def async_client(self, namespace: str = "default", **kwargs: Any) -> Any:
        """A ``lightkube.AsyncClient`` for this simulator (``trust_env=False`` so proxies are ignored)."""
        from lightkube import AsyncClient

        kwargs.setdefault("trust_env", False)
        return AsyncClient(self.lightkube_config(namespace), **kwargs)

    # -- cluster shape --------------------------------------------------------------------------------

    def add_node(self, name: str | None = None, *, cpu: str = "8", memory: str = "32Gi", gpus: int = 0,
                 gpu_product: str | None = None, gpu_memory_mib: int | None = None,
                 labels: dict[str, str] | None = None, taints: list[dict[str, str]] | None = None,
                 unschedulable: bool = False) -> str:
        """Add a node; returns its name (``sim-node-<n>`` when not given)."""
        def add(c: Cluster) -> str:
            node_name = name or f"sim-node-{len(c.find('Node')) + 1}"
            c.add_node(NodeSpec(node_name, cpu, memory, gpus, gpu_product, gpu_memory_mib, dict(labels or {}),
                                tuple(taints or ()), unschedulable))
            return node_name

        return self._call(add)

    def remove_node(self, name: str) -> None:
        self._call(lambda c: c.remove_node(name))

    # -- faults -------------------------------------------------------------------------------------------

    def inject(self, fault: PodFault | ApiFault) -> FaultHandle:
        """Activate a fault until ``handle.remove()`` / :meth:`clear_faults`."""
        fid = self._call(lambda c: c.faults.add(fault))
        self._call(lambda c: c.kick())
        return FaultHandle(self, fid)

    def clear_faults(self) -> None:
        self._call(lambda c: c.faults.clear())
        self._call(lambda c: c.kick())

    def api_faults_fired(self) -> dict[str, int]:
        """How many requests each kind of API fault has hit so far, e.g. ``{"500": 12, "reset-after": 3}``."""
        return self._call(lambda c: c.faults.fired_counts())

    def drop_watches(self) -> int:
        """Abort every open watch connection mid-stream (clients see a broken chunked response)."""
        return self._call(lambda c: c.store.close_watchers("drop"))

    def close_watches(self) -> int:
        """End every open watch cleanly, as the API server does when ``timeoutSeconds`` expires."""
        return self._call(lambda c: c.store.close_watchers("close"))

    def compact(self) -> None:
        """Forget the event history: watches resuming from an older resourceVersion get 410 Expired."""
        self._call(lambda c: c.store.compact())

    def expire_watches(self) -> int:
        """Close every watch after a compaction they missed: resuming from their last version is 410.

        The resourceVersion moves on by one first (as writes to unwatched resources do on a real
        cluster), so a client must re-list; a watch from the new list's resourceVersion works.
        """
        def expire(c: Cluster) -> int:
            c.store.advance()
            c.store.compact()
            return c.store.close_watchers("close")

        return self._call(expire)

    # -- behaviour hooks ---------------------------------------------------------------------------------

    def set_pod_logs(self, source: LogSource, selector: str = "") -> None:
        """Text (or ``fn(pod) -> text``) written to the log of matching pods when their container starts."""
        self._call(lambda c: c.logs.sources.append((selector, source)))

    def set_job_handler(self, handler: JobHandler, selector: str = "") -> None:
        """Decide what the pods of matching Jobs do: ``handler(pod) -> JobResult``."""
        self._call(lambda c: c.set_job_handler(handler, selector))

    def set_service_backend(self, namespace: str, name: str, url: str) -> None:
        """Where ``/api/v1/namespaces/{ns}/services/{name}:{port}/proxy/...`` is forwarded."""
        def register(c: Cluster) -> None:
            c.service_backends[(namespace, name)] = url

        self._call(register)

    def set_default_service_backend(self, url: str, namespace: str | None = None) -> None:
        """Where the proxy forwards for every service (of ``namespace``, or of all) with no backend of its own."""
        def register(c: Cluster) -> None:
            c.service_backends[(namespace or "*", "*")] = url

        self._call(register)

    # -- observation ---------------------------------------------------------------------------------------

    def get(self, kind: str, name: str, namespace: str | None = "default") -> Obj | None:
        """A stored object by kind (``"Deployment"``, ``"pods"``, ``"deploy"``...) and name, or None."""
        matches = [o for o in self.list(kind, namespace) if o["metadata"]["name"] == name]
        return matches[0] if matches else None

    def list(self, kind: str, namespace: str | None = None, selector: str = "") -> builtins.list[Obj]:
        return self._call(lambda c: c.find(kind, namespace, selector))

    def events(self, namespace: str | None = None, involved_name: str | None = None) -> builtins.list[Obj]:
        events = self.list("Event", namespace)
        return [e for e in events if involved_name is None or e["involvedObject"].get("name") == involved_name]

    def open_watches(self) -> builtins.list[dict[str, str | None]]:
        """The watches currently open: kind, namespace and selectors of each."""
        def describe(c: Cluster) -> builtins.list[dict[str, str | None]]:
            return [{"kind": w.rt.kind, "namespace": w.namespace, "labelSelector": str(w.labels) or None,
                     "fieldSelector": ",".join(f"{f}{'=' if eq else '!='}{v}" for f, eq, v in w.fields.clauses)
                     or None} for w in c.store.watchers]

        return self._call(describe)

    @property
    def resource_version(self) -> int:
        return self._call(lambda c: c.store.rv)

    @property
    def requests(self) -> builtins.list[RequestRecord]:
        """Every request served so far (method, path, query, status, duration, ...)."""
        return self._log.snapshot()

    def request_count(self, *, method: str | None = None, path_contains: str | None = None,
                      since: float | None = None, watch: bool | None = None) -> int:
        """Requests matching the filters; ``since`` is a ``time.monotonic()`` value."""
        return sum(1 for rec in self._log.snapshot()
                   if (method is None or rec.method == method.upper())
                   and (path_contains is None or path_contains in rec.path)
                   and (since is None or rec.monotonic >= since)
                   and (watch is None or rec.watch == watch))

    def request_rate(self, since: float, **filters: Any) -> float:
        """Requests per minute since ``since`` (a ``time.monotonic()`` value), e.g. at steady state."""
        elapsed = max(time.monotonic() - since, 1e-9)
        return self.request_count(since=since, **filters) * 60.0 / elapsed

    def clear_requests(self) -> None:
        self._log.clear()

    def wait_until(self, predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.02) -> T:
        """Poll ``predicate`` (from a sync test) until it returns something truthy."""
        return wait_until(predicate, timeout, interval)


_CONFIG_FIELDS = {f.name for f in fields(SimConfig)}


@contextlib.contextmanager
def run_sim(**config: Any) -> Iterator[Sim]:
    """Start a simulator with :class:`SimConfig` options; stop it on exit.

    ``nodes`` may be given as :class:`NodeSpec` objects or as dicts of ``NodeSpec`` fields.
    """
    unknown = set(config) - _CONFIG_FIELDS
    if unknown:
        raise TypeError(f"unknown k8s-sim options: {sorted(unknown)}")
    if config.get("nodes") is not None:
        config["nodes"] = [n if isinstance(n, NodeSpec) else NodeSpec(**n) for n in config["nodes"]]
    sim = Sim(SimConfig(**config)).start()
    try:
        yield sim
    finally:
        sim.stop()


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.02) -> T:
    """Poll a sync predicate until truthy; raise ``TimeoutError`` with the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout}s (last value: {value!r})")
        time.sleep(interval)


async def eventually(probe: Callable[[], Awaitable[T]], timeout: float = 5.0, interval: float = 0.02) -> T:
    """Await ``probe()`` repeatedly until it returns something truthy (for async tests)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)
