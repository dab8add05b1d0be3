"""Hardening: races, cancellation, crash-safety and secret-masking defects found in review, each pinned.

The test doubles defined here are small subclasses of the shared doubles in
tests/doubles, registered on the running server's registry under new names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.errors import PermanentStepError, StateConflict
from modserv_shim.plugins import (
    DeployContext,
    LaunchSpec,
    Phase,
    PluginContext,
    ResourcePhase,
    ResourceStatus,
    StepContext,
    StepSpec,
)
from modserv_shim.server.runner import build, build_registry
from modserv_shim.spec import DeploySpec
from modserv_shim.testing.fake_pipeline import FakePipeline
from modserv_shim.testing.fake_shimlet import FakeShimlet
from tests.conftest import Live, fake_settings, wait_for
from tests.helpers.api_flows import DEPLOY

# --------------------------------------------------------------------------------------------- test doubles


class WatchingFake(FakeShimlet):
    """TEST DOUBLE: the fake shimlet plus a watch stream the test drives (publish / break)."""

    name = "wfake"

    def __init__(self, ctx: PluginContext) -> None:
        super().__init__(ctx)
        self.subscribers: list[asyncio.Queue[str | None]] = []

    def publish(self, rid: str) -> None:
        for q in list(self.subscribers):
            q.put_nowait(rid)

    def break_streams(self) -> None:
        for q in list(self.subscribers):
            q.put_nowait(None)

    async def _stream(self, q: asyncio.Queue[str | None]) -> AsyncIterator[tuple[str, ResourceStatus]]:
        try:
            while True:
                rid = await q.get()
                if rid is None:
                    raise ConnectionResetError("watch connection reset by peer")
                yield rid, await self.status(rid)
        finally:
            self.subscribers.remove(q)

    def watch(self) -> AsyncIterator[tuple[str, ResourceStatus]]:
        q: asyncio.Queue[str | None] = asyncio.Queue()
        self.subscribers.append(q)
        return self._stream(q)


class FlakyAfterReady(FakeShimlet):
    """TEST DOUBLE: the first status() call after one that said READY raises a transient error."""

    name = "flaky"

    def __init__(self, ctx: PluginContext) -> None:
        super().__init__(ctx)
        self.ready_seen: set[str] = set()
        self.raised: set[str] = set()

    async def status(self, resource_id: str) -> ResourceStatus:
        st = await super().status(resource_id)
        if resource_id in self.ready_seen and resource_id not in self.raised:
            self.raised.add(resource_id)
            raise ConnectionError("the API server did not answer (transient)")
        if st.phase is ResourcePhase.READY:
            self.ready_seen.add(resource_id)
        return st


async def _create(ctx: StepContext) -> None:
    launch = LaunchSpec("fake", ctx.spec.modelName, ctx.spec.modelFile, ("fake",), ())
    rid = await ctx.shimlet.create(DeployContext(ctx.service_id, ctx.spec, launch, ctx.spec.replicaCount))
    await ctx.set_resource(rid)


class ScriptPipeline:
    """TEST DOUBLE: a pipeline whose steps are (name, phase, coroutine) triples."""

    def __init__(self, name: str, steps: list[tuple[str, Phase, Any]]) -> None:
        self.name = name
        self._steps = steps

    def steps(self) -> Sequence[StepSpec]:
        return [StepSpec(n, p, timeout=30) for n, p, _ in self._steps]

    async def run_step(self, step: StepSpec, ctx: StepContext) -> None:
        for n, _, fn in self._steps:
            if n == step.name:
                await fn(ctx)


def register_pipeline(live: Live, name: str, steps: list[tuple[str, Phase, Any]]) -> None:
    live.server.manager.registry.register("pipeline", name, lambda _ctx: ScriptPipeline(name, steps), "review-test")


async def fake_resources(live: Live) -> dict[str, Any]:
    shimlet = await live.server.manager.registry.shimlet("fake")
    return shimlet.resources()  # type: ignore[attr-defined,no-any-return]


async def settle(live: Live, sid: str, *states: str, timeout: float = 5.0) -> dict[str, Any]:
    """The service once it is in one of ``states``; else fail showing where it is stuck."""
    deadline = time.monotonic() + timeout
    while True:
        data: dict[str, Any] = (await live.call("GET", f"/api/v1/modserv/{sid}"))["data"]
        if data["state"] in states or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert data["state"] in states, f"still {data['state']!r} (reason {data['reason']!r}) after {timeout} s"
    return data


async def runs_of(live: Live, sid: str) -> list[tuple[str, str]]:
    runs = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline/logs"))["data"]["runs"]
    return [(r["step"], r["status"]) for r in runs]


# ------------------------------------------------------------------------------------ 1. concurrent retries


async def test_concurrent_retries_start_one_pipeline_and_delete_leaves_no_orphan(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two retries of a service that failed after running both pass the checks (the first one
    suspends in store.update_service before changing the state), so two pipeline tasks run.
    Delete cancels only the one in ``_pipelines``; the other creates the workload after the
    delete: an orphaned workload behind a terminated service."""
    live: Live = await start_server()
    gate = tmp_path / "gate"
    gate.touch()
    spec = {**DEPLOY, "env": {"FAKE_GATE_DEPLOY": str(gate)}}
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=spec))["data"]["serviceId"]
    await live.wait_state(sid, "running")
    shimlet = await live.server.manager.registry.shimlet("fake")
    shimlet.set_status(f"fake-{sid}", "failed", "CrashLoopBackOff")  # type: ignore[attr-defined]
    await live.wait_state(sid, "failed")
    gate.unlink()  # the retried deploy step now waits at the gate

    m = live.server.manager
    results = await asyncio.gather(m.retry(sid, "a"), m.retry(sid, "b"), return_exceptions=True)
    accepted = [r for r in results if not isinstance(r, StateConflict)]
    await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)
    gate.touch()  # the pipeline the delete did not cancel goes on
    await asyncio.sleep(0.5)
    left = await fake_resources(live)
    assert (len(accepted), left) == (1, {}), f"{len(accepted)} retries accepted; workloads left after delete: {left}"


# ------------------------------------------------------------------------ 2. watch reconnect loses changes


async def test_status_change_during_watch_reconnect_is_not_lost(start_server) -> None:  # type: ignore[no-untyped-def]
    """After a watch stream error the manager re-subscribes but never re-reads status(), and the
    poller skips shimlets that have a watcher: a change published during the gap is lost for good."""
    live: Live = await start_server()
    live.server.manager.registry.register("shimlet", "wfake", WatchingFake, "review-test")
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json={**DEPLOY, "shimlet": "wfake"}))["data"]["serviceId"]
    await live.wait_state(sid, "running")
    shimlet: WatchingFake = await live.server.manager.registry.shimlet("wfake")  # type: ignore[assignment]
    await wait_for(lambda: _true(len(shimlet.subscribers) == 1))

    shimlet.break_streams()  # e.g. a network error or 410 Gone on the underlying watch
    await wait_for(lambda: _true(len(shimlet.subscribers) == 0))
    rid = f"fake-{sid}"
    shimlet.set_status(rid, "degraded", "replica 0 crashed")
    shimlet.publish(rid)  # nobody is subscribed right now
    await wait_for(lambda: _true(len(shimlet.subscribers) == 1), timeout=15)  # the manager reconnected
    svc = await settle(live, sid, "degraded", timeout=5)
    assert svc["reason"] == "replica 0 crashed"


async def _true(value: bool) -> bool:
    return value


# ------------------------------------------------------------------- 3. resume aborts on one status() error


async def test_restart_is_not_aborted_by_one_services_status_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ServiceManager.start -> _resume only catches ShimError; any other exception from one
    service's shimlet.status() (a connection error, a plugin bug) propagates out of start(),
    the lifespan fails and the whole server refuses to start."""
    settings = fake_settings(tmp_path)

    def registry() -> Any:
        reg = build_registry(settings)
        reg.register("shimlet", "fake", FakeShimlet, "test-double")
        reg.register("pipeline", "fake", FakePipeline, "test-double")
        return reg

    srv = build(settings, registry())
    await srv.manager.store.open()
    await srv.manager.start()
    rec = (await srv.manager.deploy(DeploySpec.model_validate(DEPLOY), "tester")).record
    await wait_for(lambda: _true(srv.manager.states.find(rec.id).state.value == "running"))
    await srv.manager.close()
    await srv.manager.registry.close()
    await srv.manager.store.close()

    async def broken_status(self: FakeShimlet, resource_id: str) -> ResourceStatus:
        raise ConnectionError("environment unreachable for a moment")

    monkeypatch.setattr(FakeShimlet, "status", broken_status)
    srv2 = build(settings, registry())
    await srv2.manager.store.open()
    try:
        await srv2.manager.start()  # raises ConnectionError today
        assert (await srv2.manager.get(rec.id)).state.value in ("running", "degraded", "failed")
    finally:
        await srv2.manager.close()
        await srv2.manager.registry.close()
        await srv2.manager.store.close()


# --------------------------------------------------------- 4. exception after the last step: stuck forever


async def test_status_error_after_last_step_does_not_leave_service_stuck(start_server) -> None:  # type: ignore[no-untyped-def]
    """_run_pipeline calls shimlet.status / _record_replicas / _transition(RUNNING) outside its
    try block: one transient error there kills the task and the service stays in
    health_checking for ever (the poller skips pipeline states; nothing else moves it)."""
    live: Live = await start_server()
    live.server.manager.registry.register("shimlet", "flaky", FlakyAfterReady, "review-test")
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json={**DEPLOY, "shimlet": "flaky"}))["data"]["serviceId"]

    async def all_steps_done() -> bool:
        steps = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline"))["data"]["steps"]
        return all(s["status"] == "succeeded" for s in steps)

    await wait_for(all_steps_done)
    await settle(live, sid, "running", "degraded", "failed", timeout=5)


# ------------------------------------------------------------ 5. a step that swallows the delete's cancel


async def test_step_swallowing_cancellation_does_not_run_later_steps(start_server) -> None:  # type: ignore[no-untyped-def]
    """If run_step swallows CancelledError and returns, the executor records success and runs the
    next steps (creating the workload) while delete() waits for it; the service even goes
    through 'running' after the user deleted it."""
    live: Live = await start_server()

    async def stubborn(ctx: StepContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:  # e.g. a library's "except BaseException: cleanup" that does not re-raise
            ctx.log("cleaning up after a cancel")

    register_pipeline(live, "stubborn", [("slow", Phase.PIPELINE, stubborn), ("deploy", Phase.DEPLOYING, _create)])
    body = await live.call("POST", "/api/v1/modserv/deploy", json={**DEPLOY, "pipeline": "stubborn"})
    sid = body["data"]["serviceId"]

    async def slow_running() -> bool:
        steps = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline"))["data"]["steps"]
        return bool(steps[0]["status"] == "running")

    await wait_for(slow_running)
    await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)
    events = [e["to"] for e in (await live.call("GET", f"/api/v1/modserv/{sid}/events"))["data"]]
    assert "running" not in events and "deploying" not in events, events
    assert await runs_of(live, sid) == [("slow", "cancelled")]


# ------------------------------------------------- 6. CancelledError not caused by a delete: stuck state


async def test_step_raising_cancelled_error_fails_the_service(start_server) -> None:  # type: ignore[no-untyped-def]
    """A CancelledError that is not a cancellation of the pipeline task (e.g. awaiting a future some
    library cancelled) is recorded as 'cancelled: the service was deleted' and re-raised; the
    pipeline task ends and the service stays in pipeline_running with no reason, for ever."""
    live: Live = await start_server()

    async def inner_cancel(ctx: StepContext) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.cancel()  # someone else's future, cancelled by its owner
        await fut

    register_pipeline(live, "innercancel", [("probe", Phase.PIPELINE, inner_cancel)])
    sid = (await live.call("POST", "/api/v1/modserv/deploy",
                           json={**DEPLOY, "pipeline": "innercancel"}))["data"]["serviceId"]
    svc = await settle(live, sid, "failed", timeout=5)
    assert svc["reason"]


# -------------------------------------------------------------- 7. dry run runs steps of later phases


async def test_dry_run_never_runs_a_step_after_the_pipeline_phase(start_server) -> None:  # type: ignore[no-untyped-def]
    """Executor.run stops only at a step whose phase == stop_before (DEPLOYING).  A valid
    pipeline may go PIPELINE -> HEALTH_CHECKING (phases must only not go backwards); its dry
    run then runs the later step and creates a real workload that nothing tracks."""
    live: Live = await start_server()

    async def render(ctx: StepContext) -> None:
        ctx.set_output("rendered", True)

    register_pipeline(live, "nodeployphase", [("render", Phase.PIPELINE, render),
                                              ("up-and-check", Phase.HEALTH_CHECKING, _create)])
    body = await live.call("POST", "/api/v1/modserv/deploy",
                           json={**DEPLOY, "pipeline": "nodeployphase", "dryRun": True}, expect=200)
    assert [r["step"] for r in body["data"]["stepsRun"]] == ["render"]
    assert await fake_resources(live) == {}, "a dry run created a workload"


# ------------------------------------------------------------------------------- 8. secrets in API output


async def test_dry_run_failure_details_mask_secrets(start_server) -> None:  # type: ignore[no-untyped-def]
    """A failed dry run returns details.steps = [vars(run)] (manager.py:214) without redact(),
    while the success path masks the same params through views.run."""
    live: Live = await start_server()

    async def leaky(ctx: StepContext) -> None:
        ctx.set_params(env=dict(ctx.spec.env))
        raise PermanentStepError("the model does not fit")

    register_pipeline(live, "leaky", [("check", Phase.PIPELINE, leaky)])
    spec = {**DEPLOY, "pipeline": "leaky", "dryRun": True, "env": {"HF_TOKEN": "hf_s3cretvalue"}}
    r = await live.client.post("/api/v1/modserv/deploy", json=spec)
    assert r.status_code == 422
    assert "hf_s3cretvalue" not in r.text, r.text


# ------------------------------------------------------------------------------------ 9. HTTP status


async def test_plugin_file_with_nul_is_a_client_error(start_server) -> None:  # type: ignore[no-untyped-def]
    """Path.resolve() raises ValueError for a NUL byte; registry.resolve_plugin_file does not
    catch it, so the request is answered 500 InternalError instead of 422."""
    live: Live = await start_server()
    r = await live.call("POST", "/api/v1/plugins/load",
                        json={"kind": "pipeline", "name": "nul", "file": "x\u0000.py", "attr": "P"})
    assert r["_status"] == 422 and r["code"] == 1005, r



# ------------------------------------------------------- waiting for a state instead of polling it


async def test_wait_for_answers_the_moment_the_state_is_reached(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    gate = asyncio.Event()

    async def held(ctx: StepContext) -> None:
        await gate.wait()

    register_pipeline(live, "gated", [("hold", Phase.PIPELINE, held), ("deploy", Phase.DEPLOYING, _create)])
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json={**DEPLOY, "pipeline": "gated"}))["data"]["serviceId"]
    waiting = asyncio.ensure_future(live.call("GET", f"/api/v1/modserv/{sid}?waitFor=running&timeout=20", expect=200))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # nothing changed yet: the call is still waiting
    gate.set()
    body = await asyncio.wait_for(waiting, 5)
    assert body["data"]["state"] == "running" and body["data"]["replicas"]["ready"] == 1


async def test_wait_for_returns_on_failure_and_on_timeout(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    gate = asyncio.Event()

    async def held_then_fails(ctx: StepContext) -> None:
        await gate.wait()
        raise PermanentStepError("model file not found: /models/x")

    register_pipeline(live, "doomed", [("hold", Phase.PIPELINE, held_then_fails)])
    body = await live.call("POST", "/api/v1/modserv/deploy", json={**DEPLOY, "pipeline": "doomed"})
    sid = body["data"]["serviceId"]
    t0 = time.monotonic()
    body = await live.call("GET", f"/api/v1/modserv/{sid}?waitFor=running&timeout=0.2", expect=200)
    assert body["data"]["state"] == "pipeline_running" and time.monotonic() - t0 >= 0.2  # timed out: as it is now
    waiting = asyncio.ensure_future(live.call("GET", f"/api/v1/modserv/{sid}?waitFor=running", expect=200))
    await asyncio.sleep(0.1)
    gate.set()
    body = await asyncio.wait_for(waiting, 5)  # a failed service will not get to running by itself
    assert body["data"]["state"] == "failed" and "model file not found" in body["data"]["reason"]


@pytest.mark.parametrize("query, message", [
    ("waitFor=runnning", "waitFor takes states separated by commas"),
    ("waitFor=running&timeout=301", "timeout"),
])
async def test_wait_for_bad_input(start_server, query: str, message: str) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=DEPLOY))["data"]["serviceId"]
    body = await live.call("GET", f"/api/v1/modserv/{sid}?{query}")
    assert body["_status"] in (400, 422) and body["code"] == 1001 and message in body["message"], body


async def test_an_idle_keep_alive_connection_outlives_the_clients_idle_timeout(start_server) -> None:  # type: ignore[no-untyped-def]
    """Regression (a CI flake, httpx.ReadError): uvicorn closed idle connections after 5 s, the same moment
    httpx reuses them, so a request sent on a connection the server was closing failed with a reset.  The
    server now keeps an idle connection longer than clients and proxies do."""
    live = await start_server()
    host, port = live.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        for _ in range(2):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            await asyncio.sleep(6)  # longer than httpx's keepalive_expiry and uvicorn's default
        assert not reader.at_eof()
    finally:
        writer.close()
