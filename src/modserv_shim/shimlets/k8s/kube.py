"""The Kubernetes API as the shimlet uses it: lightkube calls with retries and errors in our words.

Why a layer over lightkube at all:

* **Retries.**  lightkube raises on the first 429 or 5xx.  An API server under
  load answers 429 with ``Retry-After``, and a control-plane upgrade answers
  503 for a while; neither should fail a deploy.  :meth:`KubeApi.call` retries
  those and broken connections with exponential back-off (jittered), waiting
  ``Retry-After`` when the server names it.  Anything else is not retried.
* **Errors.**  :func:`translate` turns what is left into the product's error
  tree: 403 names the missing permission (see ``deploy/kubernetes/rbac.yaml``),
  422 is a manifest Kubernetes refuses (permanent), exhausted retries are
  :class:`~modserv_shim.errors.BackendUnavailable` ("try again").
* **Plain dicts.**  Objects leave this module as the API's JSON (``to_dict``),
  so status logic and tests work on the same shapes the API documents.
* **Requests lightkube has no call for:** the service proxy
  (``/api/v1/namespaces/{ns}/services/{name}:{port}/proxy/...``) and the logs
  of a container's previous run.  They go through a second HTTP client built
  by lightkube's own adapter from the same config, so TLS and credentials
  (tokens, exec plugins, client certificates) are handled identically.

Every write is server-side apply with our field manager and ``force``: the shim
owns these objects, and takes its fields back if someone edited them by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx2
from lightkube import AsyncClient, KubeConfig
from lightkube.config.client_adapter import AsyncClient as adapter_client
from lightkube.config.client_adapter import ConnectionParams
from lightkube.config.kubeconfig import SingleConfig
from lightkube.core.exceptions import ApiError, ConfigError
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod, Service
from lightkube.types import CascadeType, PatchType

from modserv_shim.errors import BackendUnavailable, PermanentStepError, ShimError, StepError
from modserv_shim.shimlets.k8s.naming import MANAGED_BY, MANAGER
from modserv_shim.shimlets.k8s.options import K8sOptions

log = logging.getLogger(__name__)

T = TypeVar("T")
Obj = dict[str, Any]

RESOURCES: dict[str, Any] = {"Deployment": Deployment, "StatefulSet": StatefulSet, "Service": Service,
                             "Pod": Pod, "Job": Job}
RETRYABLE = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0
RBAC_HINT = "grant it the Role in deploy/kubernetes/rbac.yaml"


def load_config(options: K8sOptions) -> SingleConfig:
    """The kubeconfig context (or in-cluster service account) the options name; no network access."""
    try:
        if options.in_cluster:
            config = KubeConfig.from_service_account()
        elif options.kubeconfig:
            config = KubeConfig.from_file(options.kubeconfig)
        else:
            config = KubeConfig.from_env()
        single = config.get(context_name=options.context)
    except (ConfigError, KeyError, OSError, ValueError) as exc:
        where = "the in-cluster service account" if options.in_cluster else (options.kubeconfig or "kubeconfig")
        raise BackendUnavailable(f"cannot load the Kubernetes configuration from {where}: {exc}") from exc
    if single is None:  # pragma: no cover - get() raises instead
        raise BackendUnavailable("the Kubernetes configuration has no usable context")
    return single


def status_code(exc: BaseException) -> int | None:
    if isinstance(exc, ApiError) and exc.status is not None:
        return int(exc.status.code) if exc.status.code is not None else None
    if isinstance(exc, httpx2.HTTPStatusError) and exc.response is not None:
        return int(exc.response.status_code)
    return None


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``Retry-After`` or ``details.retryAfterSeconds``)."""
    response = getattr(exc, "response", None)
    header = response.headers.get("Retry-After") if response is not None else None
    if header:
        with contextlib.suppress(ValueError):
            return max(0.0, float(header))
    details = getattr(getattr(exc, "status", None), "details", None)
    seconds = getattr(details, "retryAfterSeconds", None)
    return float(seconds) if seconds is not None else None


def is_retryable(exc: BaseException) -> bool:
    return status_code(exc) in RETRYABLE or isinstance(exc, httpx2.TransportError)


def message_of(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return str(getattr(status, "message", None) or exc or type(exc).__name__)


def translate(exc: BaseException, what: str) -> ShimError:
    """An API failure as a product error, with what we were doing in front."""
    code, text = status_code(exc), message_of(exc)
    if code == 403:
        return PermanentStepError(f"{what}: the shim's Kubernetes account may not do this ({text}); {RBAC_HINT}")
    if code in (400, 404, 422):
        return PermanentStepError(f"{what}: Kubernetes refused it ({code}): {text}")
    if code == 409:
        return StepError(f"{what}: conflict ({text})")
    if code is None:
        return BackendUnavailable(f"{what}: cannot reach the Kubernetes API ({type(exc).__name__}: {text})")
    return BackendUnavailable(f"{what}: the Kubernetes API answered {code}: {text}")


class Backoff:
    """Delays between attempts: ``base * 2**(n-1)`` jittered, capped; ``Retry-After`` when given."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap = base, cap

    def delay(self, failures: int, exc: BaseException | None = None) -> float:
        asked = retry_after(exc) if exc is not None else None
        if asked is not None:
            return min(asked, MAX_RETRY_AFTER)
        return min(self.base * 2.0 ** (failures - 1), self.cap) * random.uniform(0.5, 1.0)


class KubeApi:
    """One namespace of one cluster, through lightkube (typed calls) and lightkube's HTTP adapter (raw)."""

    def __init__(self, config: SingleConfig, namespace: str, options: K8sOptions) -> None:
        self.namespace = namespace
        self.options = options
        self.backoff = Backoff(options.api_backoff, options.api_backoff_max)
        timeout = httpx2.Timeout(options.api_timeout)
        self.client = AsyncClient(config, namespace=namespace, field_manager=options.field_manager,
                                  trust_env=options.trust_env, timeout=timeout)
        raw_timeout = httpx2.Timeout(options.probe_timeout, connect=options.api_timeout)
        self.raw: httpx2.AsyncClient = adapter_client(
            config, ConnectionParams(timeout=raw_timeout, trust_env=options.trust_env))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.raw.aclose()
        with contextlib.suppress(Exception):
            await self.client.close()

    # ---------------------------------------------------------------- retries

    async def call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """``op()`` with retries on 429/5xx/connection errors; other errors as :func:`translate` says."""
        failures = 0
        while True:
            try:
                return await op()
            except (ApiError, httpx2.HTTPError) as exc:
                failures += 1
                if not is_retryable(exc) or failures >= self.options.api_retries:
                    raise translate(exc, what) from exc
                await asyncio.sleep(self.backoff.delay(failures, exc))

    async def _tolerate_404(self, what: str, op: Callable[[], Awaitable[T]]) -> T | None:
        try:
            return await self.call(what, op)
        except ShimError as exc:
            if status_code(exc.__cause__ or exc) == 404:
                return None
            raise

    # ----------------------------------------------------------------- writes

    async def apply(self, manifest: Mapping[str, Any]) -> Obj:
        """Server-side apply ``manifest`` (created if missing, a no-op if unchanged); the stored object."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        res = RESOURCES[kind]

        async def op() -> Any:
            return await self.client.patch(res, name, dict(manifest), namespace=self.namespace,
                                           patch_type=PatchType.APPLY, force=True)

        obj = await self.call(f"applying {kind} {self.namespace}/{name}", op)
        return dict(obj.to_dict())

    async def delete(self, kind: str, name: str) -> bool:
        """Delete with background cascade (dependents go too); False if it was not there."""
        res = RESOURCES[kind]

        async def op() -> bool:
            await self.client.delete(res, name, namespace=self.namespace, cascade=CascadeType.BACKGROUND)
            return True

        return await self._tolerate_404(f"deleting {kind} {self.namespace}/{name}", op) is not None

    async def scale(self, kind: str, name: str, replicas: int) -> Obj:
        """Set ``replicas`` through the ``/scale`` subresource; the Scale object."""
        res = RESOURCES[kind].Scale

        async def op() -> Any:
            return await self.client.patch(res, name, {"spec": {"replicas": replicas}}, namespace=self.namespace,
                                           patch_type=PatchType.MERGE)

        obj = await self.call(f"scaling {kind} {self.namespace}/{name}", op)
        return dict(obj.to_dict())

    # ------------------------------------------------------------------ reads

    async def list_kind(self, kind: str) -> tuple[str, list[Obj]]:
        """Every object of ``kind`` we manage, and the list's resourceVersion (one attempt: callers retry)."""
        listing = self.client.list(RESOURCES[kind], namespace=self.namespace, labels={MANAGED_BY: MANAGER})
        items = [dict(o.to_dict()) async for o in listing]
        return str(listing.resourceVersion), items

    async def list_nodes(self) -> list[Obj]:
        """Every node of the cluster (cluster-scoped: needs the ClusterRole of deploy/kubernetes/rbac.yaml)."""
        what = "listing the nodes"
        status, body = await self.raw_request("GET", "/api/v1/nodes", what=what)
        if status != 200 or not isinstance(body, dict):
            hint = "; grant the ClusterRole modserv-shim-nodes in deploy/kubernetes/rbac.yaml" if status == 403 else ""
            raise BackendUnavailable(f"{what}: Kubernetes answered {status}: {status_message(body)}{hint}")
        return [dict(o) for o in body.get("items") or [] if isinstance(o, dict)]

    async def watch(self, kind: str, resource_version: str) -> AsyncIterator[tuple[str, Obj]]:
        """Events of our objects of ``kind`` after ``resource_version``; raises on any error (the caller resumes).

        lightkube itself re-opens a watch the server ended cleanly (``timeoutSeconds``),
        from the last version it saw.
        """
        stream: Any = self.client.watch(RESOURCES[kind], namespace=self.namespace, labels={MANAGED_BY: MANAGER},
                                        resource_version=resource_version,
                                        server_timeout=max(1, round(self.options.watch_timeout)))
        try:
            async for event_type, obj in stream:
                yield str(event_type), dict(obj.to_dict())
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def logs(self, pod: str, tail: int, *, previous: bool = False) -> list[str]:
        """The last ``tail`` lines of a pod's container (``previous``: of its last run, after a crash)."""
        what = f"reading the logs of pod {self.namespace}/{pod}"
        if not previous:
            async def op() -> list[str]:
                return [line.rstrip("\n") async for line in self.client.log(pod, namespace=self.namespace,
                                                                            tail_lines=tail)]

            return await self.call(what, op)
        path = f"/api/v1/namespaces/{self.namespace}/pods/{pod}/log"
        status, body = await self.raw_request("GET", path, params={"tailLines": str(tail), "previous": "true"},
                                              what=what, decode=False)
        if status != 200:
            raise PermanentStepError(f"{what}: Kubernetes answered {status}: {status_message(body)}")
        return str(body).splitlines()[-tail:] if tail > 0 else []

    # ------------------------------------------------------------ raw HTTP

    async def raw_request(self, method: str, path: str, *, what: str, json_body: Any = None,
                          params: Mapping[str, str] | None = None, decode: bool = True,
                          client: httpx2.AsyncClient | None = None) -> tuple[int, Any]:
        """A request lightkube has no call for; retried like the others when the *API server* says 429/5xx.

        A 5xx from behind the service proxy (the model server) is returned as it
        is; the API server's own errors are ``Status`` objects, which is how the
        two are told apart.
        """
        http = client or self.raw

        async def op() -> tuple[int, Any]:
            response = await http.request(method, path, json=json_body, params=params)
            body: Any = response.text
            if decode:
                try:
                    body = response.json()
                except ValueError:
                    body = None
            if response.status_code in RETRYABLE and _is_status(response):
                response.raise_for_status()
            return response.status_code, body

        return await self.call(what, op)

    async def through_proxy(self, method: str, service: str, port: str, path: str, *,
                            json_body: Any = None) -> tuple[int, Any]:
        """``method path`` on ``service:port`` through the API server's service proxy.

        The API server's own failures (429/5xx ``Status``, broken connections) say nothing
        about the model server behind it, so a call that used up its ``api_retries`` is tried
        again, until ``probe_timeout`` has passed: a short API outage must not fail a health
        check.  Refusals (4xx) fail at once; the model server's answers are returned.
        """
        what = f"{method} {path} on service {self.namespace}/{service}"
        url = proxy_path(self.namespace, service, port, path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.probe_timeout
        rounds = 0
        while True:
            try:
                return await self.raw_request(method, url, what=what, json_body=json_body)
            except BackendUnavailable:
                rounds += 1
                delay = self.backoff.delay(rounds)
                if loop.time() + delay >= deadline:
                    raise
                log.info("k8s shimlet: %s: the API server keeps failing; trying again in %.2f s", what, delay)
                await asyncio.sleep(delay)


def _is_status(response: httpx2.Response) -> bool:
    if not response.headers.get("content-type", "").startswith("application/json"):
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("kind") == "Status"


def status_message(body: Any) -> str:
    """The ``message`` of a ``Status`` body (JSON text or decoded), else the body's start."""
    try:
        data = json.loads(body) if isinstance(body, str) else body
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return str(body)[:300]


def proxy_path(namespace: str, service: str, port: str, path: str) -> str:
    """The API server's service-proxy URL path for ``path`` on ``service:port``."""
    return f"/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/{path.lstrip('/')}"
