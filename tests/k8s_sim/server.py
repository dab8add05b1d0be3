"""The HTTP face of the simulator: a small ASGI app speaking the Kubernetes REST API.

Routing follows the real URL layout (``/api/v1/...``, ``/apis/{group}/{version}/...``,
``namespaces/{ns}/{plural}/{name}/{subresource}``).  Errors are ``Status`` bodies with
``Content-Type: application/json`` (lightkube only turns a response into ``ApiError`` when that
header is exactly ``application/json``).  Watches are newline-delimited JSON streams; a dropped
watch aborts the TCP connection mid-stream, as a network failure would; a ``reset`` API fault
answers with a TCP RST instead of a response.  The service proxy forwards to a per-service backend
URL registered by the test (or to a default backend for every service).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from . import resources as r
from .api import WriteOptions
from .cluster import Cluster
from .errors import StatusError
from .selection import FieldSelector, LabelSelector
from .store import Obj, Watcher
from .util import rfc3339

__all__ = ["ConnectionReset", "RequestLog", "RequestRecord", "SimApp", "WatchDropped"]

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_PUBLIC_PATHS = {"/healthz", "/livez", "/readyz", "/version"}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
               "authorization", "content-length", "proxy-authorization", "proxy-connection"}


class WatchDropped(Exception):
    """Raised inside a watch stream to abort its connection (the "dropped watch" fault)."""


class ConnectionReset(Exception):
    """Raised while handling a request to answer it with a TCP reset (the "reset" API fault)."""


class _QuietDrops(logging.Filter):
    """Hide uvicorn's traceback for the connections we abort on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, WatchDropped | ConnectionReset)


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


@dataclass(frozen=True)
class RequestRecord:
    """One API request as seen by the server (``duration``: until the response started, so a watch
    counts its set-up time, not how long it stayed open)."""

    time: float  # wall clock
    monotonic: float
    method: str
    path: str
    query: str
    status: int
    duration: float
    watch: bool
    user_agent: str


class RequestLog:
    """Thread-safe list of :class:`RequestRecord`, read by tests and benchmarks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")


def status_response(err: StatusError) -> Response:
    headers = dict(err.headers)
    return json_response(err.to_status(), err.code, headers)


class StreamResponse:
    """A chunked streaming response that also notices client disconnects while idle."""

    def __init__(self, chunks: AsyncIterator[bytes], media_type: str, status: int = 200,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.chunks = chunks
        self.status_code = status
        self.headers = [(b"content-type", media_type.encode()), *(headers or [])]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.headers})

        async def pump() -> None:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pump_task = asyncio.ensure_future(pump())
        watch_task = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({pump_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump_task, watch_task):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(BaseException):
                    await aclose()
        if pump_task.done() and not pump_task.cancelled() and pump_task.exception() is not None:
            raise pump_task.exception()  # type: ignore[misc]


@dataclass
class Target:
    """A parsed request path."""

    rt: r.ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    subpath: str


# Go zero values of a few kinds, as a real server renders the object of a BOOKMARK event.
_BOOKMARK_BODIES: dict[str, dict[str, Any]] = {
    "Pod": {"spec": {"containers": None}, "status": {}},
    "Deployment": {"spec": {"selector": None, "template": {"metadata": {"creationTimestamp": None},
                                                           "spec": {"containers": None}}, "strategy": {}},
                   "status": {}},
    "ReplicaSet": {"spec": {"selector": None, "template": {"metadata": {"creationTimestamp": None},
                                                           "spec": {"containers": None}}}, "status": {"replicas": 0}},
    "StatefulSet": {"spec": {"selector": None, "template": {"metadata": {"creationTimestamp": None},
                                                            "spec": {"containers": None}}, "serviceName": "",
                             "updateStrategy": {}}, "status": {"replicas": 0, "availableReplicas": 0}},
    "Job": {"spec": {"template": {"metadata": {"creationTimestamp": None}, "spec": {"containers": None}}},
            "status": {}},
    "Service": {"spec": {}, "status": {"loadBalancer": {}}},
}


def _bool(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


class SimApp:
    """ASGI application serving one :class:`Cluster`."""

    def __init__(self, cluster: Cluster, requests: RequestLog) -> None:
        self.cluster = cluster
        self.requests = requests
        self._proxy_client: Any = None

    async def aclose(self) -> None:
        if self._proxy_client is not None:
            await self._proxy_client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        started = time.monotonic()
        is_watch = _bool(request.query_params.get("watch"))
        try:
            response = await self._handle(request, is_watch)
        except ConnectionReset:
            self.requests.add(RequestRecord(time.time(), started, request.method, request.url.path,
                                            request.url.query, 0, time.monotonic() - started, is_watch,
                                            request.headers.get("user-agent", "")))
            await _reset_connection(send)
            return
        except StatusError as err:
            response = status_response(err)
        except Exception as exc:
            log.exception("k8s-sim: unhandled error for %s %s", request.method, request.url.path)
            response = status_response(StatusError(500, f"Internal error occurred: {exc!r}"))
        self.requests.add(RequestRecord(time.time(), started, request.method, request.url.path,
                                        request.url.query, response.status_code, time.monotonic() - started,
                                        is_watch, request.headers.get("user-agent", "")))
        await response(scope, receive, send)  # type: ignore[arg-type]

    # -- entry ----------------------------------------------------------------------------------------

    async def _handle(self, request: Request, is_watch: bool) -> Response | StreamResponse:
        path, method = request.url.path.rstrip("/") or "/", request.method
        if path in ("/healthz", "/livez", "/readyz"):
            return PlainTextResponse("ok")
        token = self.cluster.config.token
        if token and path not in _PUBLIC_PATHS and request.headers.get("authorization") != f"Bearer {token}":
            raise StatusError(401, "Unauthorized", reason="Unauthorized")
        fault = self.cluster.faults.take_api_fault(method, path, is_watch)
        if fault is not None and fault.reset is not None:
            if fault.reset == "after" and not is_watch:
                with contextlib.suppress(Exception):  # carried out; whatever the answer, it is lost
                    response = await self._route(request, path, method, is_watch)
                    if isinstance(response, StreamResponse):  # e.g. the service proxy: finish the upstream
                        async with asyncio.timeout(2):
                            async for _ in response.chunks:
                                pass
            raise ConnectionReset(f"k8s-sim reset the connection of {method} {path}")
        if fault is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            message = fault.message or ("the server has received too many requests and has asked us to try again "
                                        "later" if fault.status == 429 else
                                        "Internal error occurred: injected by k8s-sim")
            details = {"retryAfterSeconds": fault.retry_after} if fault.retry_after is not None else None
            raise StatusError(fault.status, message, details=details, headers=headers)
        return await self._route(request, path, method, is_watch)

    async def _route(self, request: Request, path: str, method: str, is_watch: bool) -> Response | StreamResponse:
        discovery = self._discovery(path, request)
        if discovery is not None:
            if method != "GET":
                raise StatusError.method_not_allowed()
            return json_response(discovery)
        target = self._parse(path)
        return await self._dispatch(request, target, is_watch)

    # -- discovery -----------------------------------------------------------------------------------

    def _discovery(self, path: str, request: Request) -> dict[str, Any] | None:
        version = self.cluster.schema_version
        major, minor = version.split(".")[:2]
        if path == "/version":
            return {"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0", "gitCommit": "k8s-sim",
                    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
                    "compiler": "gc", "platform": "linux/amd64"}
        if path == "/api":
            host = request.headers.get("host", "127.0.0.1")
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}
        groups = r.groups()
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
                for g, vs in groups.items() if g]}
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) == 2 and parts[1] in groups:
            vs = groups[parts[1]]
            return {"kind": "APIGroup", "apiVersion": "v1", "name": parts[1],
                    "versions": [{"groupVersion": f"{parts[1]}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{parts[1]}/{vs[0]}", "version": vs[0]}}
        if (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) == 3):
            group, ver = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            kinds = [rt for rt in r.REGISTRY if rt.group == group and rt.version == ver]
            if not kinds:
                raise StatusError.path_not_found()
            resources: list[dict[str, Any]] = []
            verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
            for rt in kinds:
                resources.append({"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                                  "kind": rt.kind, "verbs": verbs, "shortNames": list(rt.short_names)})
                for sub in sorted(rt.subresources):
                    entry: dict[str, Any] = {"name": f"{rt.plural}/{sub}", "singularName": "",
                                             "namespaced": rt.namespaced, "kind": rt.kind,
                                             "verbs": ["get", "patch", "update"]}
                    if sub == "scale":
                        entry.update(kind="Scale", group="autoscaling", version="v1")
                    elif sub == "log":
                        entry.update(kind="Pod", verbs=["get"])
                    elif sub == "proxy":
                        entry.update(kind="ServiceProxyOptions",
                                     verbs=["create", "delete", "get", "patch", "update"])
                    resources.append(entry)
            return {"kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": f"{group}/{ver}" if group else ver, "resources": resources}
        return None

    # -- routing ----------------------------------------------------------------------------------------

    def _parse(self, path: str) -> Target:
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise StatusError.path_not_found()
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            inner = r.lookup(group, version, rest[2])
            if inner is not None:
                if not inner.namespaced:
                    raise StatusError.path_not_found()
                namespace, rest = rest[1], rest[2:]
        rt = r.lookup(group, version, rest[0])
        if rt is None:
            raise StatusError.path_not_found()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in rt.subresources:
            raise StatusError.path_not_found()
        if sub != "proxy" and len(rest) > 3:
            raise StatusError.path_not_found()
        return Target(rt, namespace, name, sub, "/".join(rest[3:]))

    async def _dispatch(self, request: Request, t: Target, is_watch: bool) -> Response | StreamResponse:
        api, q, method = self.cluster.api, request.query_params, request.method
        rt = t.rt
        if rt.namespaced and t.namespace is None and (t.name is not None or method != "GET"):
            raise StatusError.method_not_allowed() if t.name is None else StatusError.path_not_found()
        content_type = request.headers.get("content-type", "")
        if method == "PATCH" and content_type.startswith("application/apply-patch") and not q.get("fieldManager"):
            raise StatusError.bad_request("PATCH, application/apply-patch+yaml requests must supply a "
                                          "fieldManager parameter")
        opts = WriteOptions(manager=q.get("fieldManager") or _manager_from(request),
                            dry_run=bool(q.get("dryRun")), force=_bool(q.get("force")))
        if t.name is None:
            labels = LabelSelector.parse(q.get("labelSelector"))
            fields = FieldSelector.parse(q.get("fieldSelector"), rt)
            if method == "GET" and is_watch:
                return self._watch(request, t, labels, fields)
            if method == "GET":
                limit = int(q["limit"]) if q.get("limit") else None
                return json_response(api.list_collection(rt, t.namespace, labels, fields, limit, q.get("continue")))
            if method == "POST":
                obj = api.create(rt, t.namespace, await _json_body(request), opts)
                return json_response(obj, 201)
            if method == "DELETE":
                body = await _optional_json(request)
                return json_response(api.delete_collection(rt, t.namespace, labels, fields,
                                                           propagation=q.get("propagationPolicy")
                                                           or body.get("propagationPolicy"),
                                                           dry_run=opts.dry_run))
            raise StatusError.method_not_allowed()
        name = t.name
        if t.subresource == "proxy":
            return await self._proxy(request, t)
        if t.subresource == "log":
            if method != "GET":
                raise StatusError.method_not_allowed()
            return self._log(request, t)
        if t.subresource == "scale":
            if method == "GET":
                return json_response(api.get_scale(rt, t.namespace, name))
            if method == "PUT":
                return json_response(api.update_scale(rt, t.namespace, name, await _json_body(request), opts))
            if method == "PATCH":
                return json_response(api.patch_scale(rt, t.namespace, name, await request.body(),
                                                     request.headers.get("content-type", ""), opts))
            raise StatusError.method_not_allowed()
        if method == "GET":
            return json_response(api.get(rt, t.namespace, name))
        if method == "PUT":
            return json_response(api.replace(rt, t.namespace, name, await _json_body(request), opts,
                                             subresource=t.subresource))
        if method == "PATCH":
            obj, created = api.patch(rt, t.namespace, name, await request.body(),
                                     request.headers.get("content-type", ""), opts, subresource=t.subresource)
            return json_response(obj, 201 if created else 200)
        if method == "DELETE" and t.subresource is None:
            body = await _optional_json(request)
            grace = q.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
            obj = api.delete(rt, t.namespace, name,
                             propagation=q.get("propagationPolicy") or body.get("propagationPolicy"),
                             grace_seconds=float(grace) if grace is not None else None,
                             dry_run=opts.dry_run or bool(body.get("dryRun")),
                             preconditions=body.get("preconditions"))
            return json_response(obj)
        raise StatusError.method_not_allowed()

    # -- watch -----------------------------------------------------------------------------------------------

    def _watch(self, request: Request, t: Target, labels: LabelSelector, fields: FieldSelector) -> StreamResponse:
        q = request.query_params
        store, cfg = self.cluster.store, self.cluster.config
        watcher = Watcher(t.rt, t.namespace if t.rt.namespaced else None, labels, fields)
        rv_param = q.get("resourceVersion")
        bookmarks = _bool(q.get("allowWatchBookmarks"))
        send_initial = _bool(q.get("sendInitialEvents"))
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        # Register and compute the backlog in one synchronous step: no write can fall in between.
        store.add_watcher(watcher)
        backlog: list[tuple[str, Obj]] = []
        error: StatusError | None = None
        if rv_param in (None, "", "0") or send_initial:
            backlog = [("ADDED", o) for o in self.cluster.api.select(watcher.rt, watcher.namespace, labels, fields)]
        else:
            try:
                for event in store.events_since(int(rv_param)):
                    translated = watcher.translate(event)
                    if translated is not None:
                        backlog.append(translated)
            except ValueError:
                error = StatusError.bad_request(f"invalid resource version: {rv_param}")
            except StatusError as err:
                error = err
        start_rv = store.rv

        def line(type_: str, obj: Obj) -> bytes:
            return json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"

        def bookmark(rv: int, initial_end: bool = False) -> bytes:
            meta: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            body = {"kind": t.rt.kind, "apiVersion": t.rt.api_version, "metadata": meta,
                    **json.loads(json.dumps(_BOOKMARK_BODIES.get(t.rt.kind, {})))}
            return line("BOOKMARK", body)

        async def stream() -> AsyncIterator[bytes]:
            try:
                if error is not None:
                    yield line("ERROR", error.to_status())
                    return
                for type_, obj in backlog:
                    yield line(type_, obj)
                if send_initial and bookmarks:
                    yield bookmark(start_rv, initial_end=True)
                deadline = time.monotonic() + timeout if timeout else None
                while True:
                    wait = cfg.bookmark_interval if bookmarks else None
                    if deadline is not None:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return
                        wait = remaining if wait is None else min(wait, remaining)
                    try:
                        item = await asyncio.wait_for(watcher.queue.get(), wait)
                    except TimeoutError:
                        if bookmarks and watcher.queue.empty():
                            yield bookmark(store.rv)
                        continue
                    if item == "close":
                        return
                    if item == "drop":
                        raise WatchDropped("k8s-sim dropped this watch")
                    assert not isinstance(item, str)
                    yield line(*item)
            finally:
                store.remove_watcher(watcher)

        return StreamResponse(stream(), "application/json")

    # -- pod logs ------------------------------------------------------------------------------------------------

    def _log(self, request: Request, t: Target) -> Response | StreamResponse:
        q = request.query_params
        assert t.name is not None
        pod_name = t.name
        pod = self.cluster.api.get(r.POD, t.namespace, pod_name)
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        container = q.get("container")
        if not container:
            if len(names) != 1:
                raise StatusError.bad_request(f"a container name must be specified for pod {t.name}, choose one "
                                              f"of: [{' '.join(names)}]")
            container = names[0]
        if container not in names:
            raise StatusError.bad_request(f"container {container} is not valid for pod {t.name}")
        status = next((s for s in (pod.get("status") or {}).get("containerStatuses") or []
                       if s.get("name") == container), None)
        restarts = int((status or {}).get("restartCount", 0))
        waiting = ((status or {}).get("state") or {}).get("waiting")
        if status is None or (waiting and restarts == 0):
            reason = (waiting or {}).get("reason", "ContainerCreating")
            raise StatusError.bad_request(f'container "{container}" in pod "{t.name}" is waiting to start: {reason}')
        if _bool(q.get("previous")) and restarts == 0:
            raise StatusError.bad_request(f'previous terminated container "{container}" in pod "{t.name}" not found')
        uid = pod["metadata"]["uid"]
        logs = self.cluster.logs
        lines = logs.read(uid)
        if q.get("tailLines"):
            lines = lines[-int(q["tailLines"]):] if int(q["tailLines"]) > 0 else []
        stamp = _bool(q.get("timestamps"))

        def render(chunk: list[str]) -> str:
            return "".join(f"{rfc3339()} {ln}" if stamp else ln for ln in chunk)

        if not _bool(q.get("follow")):
            return PlainTextResponse(render(lines))
        cluster = self.cluster

        async def follow() -> AsyncIterator[bytes]:
            sent = len(logs.read(uid))
            yield render(lines).encode()
            while True:
                await asyncio.sleep(0.05)
                current = logs.read(uid)
                if len(current) > sent:
                    yield render(current[sent:]).encode()
                    sent = len(current)
                live = cluster.store.get(r.POD, t.namespace, pod_name)
                if cluster.stopping or live is None or live["metadata"]["uid"] != uid or \
                        (live.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    return

        return StreamResponse(follow(), "text/plain")

    # -- service proxy --------------------------------------------------------------------------------------------

    async def _proxy(self, request: Request, t: Target) -> Response | StreamResponse:
        assert t.name is not None
        parts = t.name.split(":")
        if len(parts) == 3:
            _, svc_name, port = parts
        elif len(parts) == 2 and parts[0] in ("http", "https"):
            svc_name, port = parts[1], ""
        elif len(parts) == 2:
            svc_name, port = parts
        else:
            svc_name, port = parts[0], ""
        svc = self.cluster.api.get(r.SERVICE, t.namespace, svc_name)
        ports = (svc.get("spec") or {}).get("ports") or []
        if port and not any(port in (str(p.get("port")), p.get("name")) for p in ports):
            raise StatusError(503, f'no endpoints available for service "{t.name}"')
        if (svc.get("spec") or {}).get("selector") and not self.cluster.ready_endpoints(svc):
            raise StatusError(503, f'no endpoints available for service "{t.name}"')
        backends = self.cluster.service_backends
        backend = backends.get((t.namespace or "", svc_name)) or backends.get((t.namespace or "", "*")) \
            or backends.get(("*", "*"))
        if backend is None:
            raise StatusError(503, f'no endpoints available for service "{t.name}" (k8s-sim: no backend URL '
                                   f"registered with Sim.set_service_backend)")
        import httpx

        if self._proxy_client is None:
            self._proxy_client = httpx.AsyncClient(trust_env=False, timeout=self.cluster.config.proxy_timeout)
        url = backend.rstrip("/") + "/" + t.subpath
        if request.url.query:
            url += "?" + request.url.query
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        upstream = self._proxy_client.build_request(request.method, url, headers=headers,
                                                    content=await request.body())
        try:
            response = await self._proxy_client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            raise StatusError(503, f"error trying to reach service: {exc}") from exc
        out_headers = [(k.encode(), v.encode()) for k, v in response.headers.items()
                       if k.lower() not in _HOP_BY_HOP and k.lower() != "content-type"]

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()

        return StreamResponse(body(), response.headers.get("content-type", "application/octet-stream"),
                              status=response.status_code, headers=out_headers)


async def _reset_connection(send: Send) -> None:
    """Close the client's connection with a TCP RST (SO_LINGER 0), as a broken network or a crashed
    load balancer does.  uvicorn's ``send`` is a method of its per-request cycle, which holds the
    transport; without one, a started and then aborted response stands in for the reset."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:  # pragma: no cover - another ASGI server
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise WatchDropped("k8s-sim reset this connection")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    for _ in range(3):  # let the server notice the lost connection: it then sends no 500 of its own
        await asyncio.sleep(0)


def _manager_from(request: Request) -> str:
    agent = request.headers.get("user-agent", "unknown")
    return agent.split("/")[0] or "unknown"


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise StatusError.bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc


async def _optional_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise StatusError.bad_request(f"json parse error: {exc}") from exc
    return body if isinstance(body, dict) else {}
