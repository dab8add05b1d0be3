"""The event routes as Server-Sent Events, over real HTTP against a real server (test-double shimlet and
pipeline): a whole deploy in order, a reconnect with ``Last-Event-ID`` that misses nothing and repeats
nothing, retries, the stream of all services, auth, masking, keep-alives, and the JSON forms unchanged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modserv_shim.core import journal
from modserv_shim.plugins import StepContext, StepSpec
from modserv_shim.private import PRIVATE_MASK, PRIVATE_OUTPUT
from modserv_shim.spec import MASK
from modserv_shim.testing.fake_pipeline import FakePipeline
from tests.conftest import Live
from tests.helpers.api_flows import DEPLOY
from tests.helpers.auth import OPER, VIEW, bearer, token_settings

SSE = {"Accept": "text/event-stream"}
LIFECYCLE = ["initializing", "pipeline_running", "deploying", "health_checking", "running"]


@dataclass
class Msg:
    id: int
    event: str
    data: dict[str, Any]


@dataclass
class Read:
    messages: list[Msg]
    closed: bool  # the server ended the stream
    comments: list[str]
    status: int
    content_type: str


async def read_stream(client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None, *,
                      until: Callable[[list[Msg]], bool] | None = None, comments: int = 0,
                      timeout: float = 20.0) -> Read:
    """Read a stream until the server closes it, ``until(messages)`` holds or ``comments`` comment lines
    came (then disconnect)."""
    messages: list[Msg] = []
    seen: list[str] = []
    closed = False
    async with asyncio.timeout(timeout), client.stream("GET", url, headers={**SSE, **(headers or {})}) as r:
        if r.status_code != 200:
            await r.aread()
            return Read([], True, [], r.status_code, r.headers.get("content-type", ""))
        assert r.headers["cache-control"] == "no-cache"
        fields: dict[str, str] = {}
        async for line in r.aiter_lines():
            if line.startswith(":"):
                seen.append(line)
                if comments and len(seen) >= comments:
                    break
                continue
            if line:
                name, _, value = line.partition(": ")
                assert name in ("id", "event", "data") and name not in fields, line
                fields[name] = value
                continue
            if not fields:  # the blank line after a comment
                continue
            assert set(fields) == {"id", "event", "data"}, fields  # every message has all three
            messages.append(Msg(int(fields["id"]), fields["event"], json.loads(fields["data"])))
            fields = {}
            if until is not None and until(messages):
                break
        else:
            closed = True
        return Read(messages, closed, seen, r.status_code, r.headers.get("content-type", ""))


def reached(state: str) -> Callable[[list[Msg]], bool]:
    return lambda ms: any(m.event == "state" and m.data["to"] == state for m in ms)


def states(ms: list[Msg]) -> list[str]:
    return [m.data["to"] for m in ms if m.event == "state"]


def strip(m: Msg) -> dict[str, Any]:
    return {k: v for k, v in m.data.items() if k != "serviceId"}


async def deploy(live: Live, headers: dict[str, str] | None = None, **env: str) -> str:
    body = await live.call("POST", "/api/v1/modserv/deploy", json={**DEPLOY, "env": env}, expect=202,
                           headers=headers or {})
    sid: str = body["data"]["serviceId"]
    return sid


def assert_increasing(ms: list[Msg]) -> None:
    ids = [m.id for m in ms]
    assert ids == sorted(set(ids)), ids


async def test_a_whole_deploy_in_order_then_the_stream_ends_after_terminated(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    sid = await deploy(live)
    url = f"/api/v1/modserv/{sid}/events"
    first = await read_stream(live.client, url, until=reached("running"))
    assert first.status == 200 and first.content_type.startswith("text/event-stream")
    assert not first.closed
    await live.call("POST", f"/api/v1/modserv/{sid}/scale", json={"replicaCount": 2}, expect=200)
    await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)
    whole = await read_stream(live.client, url)  # from the beginning (no Last-Event-ID), to the end
    assert whole.closed, "the server ends a service's stream after its terminated event"
    ms = whole.messages
    assert_increasing(ms)
    assert [m.id for m in ms[: len(first.messages)]] == [m.id for m in first.messages]
    assert all(m.data["serviceId"] == sid for m in ms)
    assert ms[-1].event == "state" and ms[-1].data["to"] == "terminated"
    assert states(ms) == [*LIFECYCLE, "running", "terminating", "terminated"]  # "running" again: the scale event

    # Each step: the phase first, then its start, its log line, its end with a duration.
    for step, phase in (("prepare", "pipeline_running"), ("deploy", "deploying"), ("verify", "health_checking")):
        pos = {m.id: i for i, m in enumerate(ms)}
        entered = next(pos[m.id] for m in ms if m.event == "state" and m.data["to"] == phase)
        runs = [m for m in ms if m.event == "step" and m.data["step"] == step]
        assert [r.data["status"] for r in runs] == ["running", "succeeded"], runs
        start, end = (pos[r.id] for r in runs)
        assert entered < start < end
        assert runs[0].data["finishedAt"] is None and runs[0].data["durationMs"] is None
        assert runs[1].data["durationMs"] >= 0 and runs[1].data["finishedAt"] and runs[1].data["error"] is None
        assert runs[0].data["startedAt"] == runs[1].data["startedAt"]
        lines = [pos[m.id] for m in ms if m.event == "log" and m.data["message"] == f"{step} attempt 1"]
        assert len(lines) == 1 and start < lines[0] < end
    running_at = next(i for i, m in enumerate(ms) if m.event == "state" and m.data["to"] == "running")
    assert ms[running_at - 1].event == "step" and ms[running_at - 1].data["step"] == "verify"  # the end first
    replicas = [strip(m) for m in ms if m.event == "replica"]
    assert [(r["ready"], r["desired"]) for r in replicas][:2] == [(1, 1), (1, 2)], replicas
    assert all(set(r) == {"ts", "ready", "desired"} for r in replicas)

    # The same shapes as the JSON routes, which are unchanged.
    events = (await live.call("GET", url, expect=200))["data"]
    assert all(set(e) == {"ts", "from", "to", "reason", "operator"} for e in events)
    assert [strip(m) for m in ms if m.event == "state"] == events
    logs = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline/logs", expect=200))["data"]
    assert [strip(m) for m in ms if m.event == "step" and m.data["status"] != "running"] == logs["runs"]
    assert [strip(m) for m in ms if m.event == "log"] == logs["logs"]

    # Reconnecting after the end: nothing more, closed at once.
    after = await read_stream(live.client, url, {"Last-Event-ID": str(ms[-1].id)}, timeout=5)
    assert after.closed and after.messages == []


async def test_disconnect_mid_deploy_and_reconnect_with_last_event_id(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The test the issue asks for: no gap, no repeat, compared with a full read from the start."""
    live: Live = await start_server()
    gate = tmp_path / "gate"
    sid = await deploy(live, FAKE_GATE_DEPLOY=str(gate), FAKE_FAIL_VERIFY="1")
    url = f"/api/v1/modserv/{sid}/events"

    def at_gate(ms: list[Msg]) -> bool:
        return any(m.event == "log" and m.data["message"] == "waiting for the gate" for m in ms)

    part1 = await read_stream(live.client, url, until=at_gate)
    assert not part1.closed and states(part1.messages) == LIFECYCLE[:3]
    held = [(m.event, m.data.get("status") or m.data.get("message")) for m in part1.messages
            if m.event in ("step", "log") and m.data["step"] == "deploy"]  # a long step: its start comes while it runs
    assert held == [("step", "running"), ("log", "deploy attempt 1"), ("log", "waiting for the gate")], held
    # Disconnected: the deploy goes on (the gate opens, verify fails once and is retried, it runs).
    gate.touch()
    await live.wait_state(sid, "running")
    await asyncio.sleep(0.2)  # let the last write-behind rows land, so the reconnect reads them from the store
    part2 = await read_stream(live.client, url, {"Last-Event-ID": str(part1.messages[-1].id)},
                              until=reached("running"))
    assert states(part2.messages) == LIFECYCLE[3:]
    # A third piece with ?after= (what a client without the header does), through the end.
    await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200)
    part3 = await read_stream(live.client, f"{url}?after={part2.messages[-1].id}")
    assert part3.closed and states(part3.messages) == ["terminating", "terminated"]

    full = await read_stream(live.client, url)
    assert full.closed
    pieces = part1.messages + part2.messages + part3.messages
    assert [m.id for m in pieces] == [m.id for m in full.messages]  # no gap, no repeat
    assert pieces == full.messages  # and the same content
    assert_increasing(full.messages)
    # Things that happened while the client was away are there, in order.
    kinds = [(m.event, m.data.get("step"), m.data.get("status")) for m in part2.messages]
    assert ("step", "deploy", "succeeded") in kinds and ("step", "verify", "failed") in kinds


async def test_retries_show_as_the_failed_end_a_log_line_and_the_next_start(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    sid = await deploy(live, FAKE_FAIL_DEPLOY="2")
    read = await read_stream(live.client, f"/api/v1/modserv/{sid}/events", until=reached("running"))
    deploy_msgs = [m for m in read.messages if m.event in ("step", "log") and m.data["step"] == "deploy"]
    seen = [(m.event, m.data["attempt"], m.data.get("status") or m.data["message"]) for m in deploy_msgs]
    assert seen == [
        ("step", 1, "running"), ("log", 1, "deploy attempt 1"), ("step", 1, "failed"),
        ("log", 1, "attempt 1 failed: simulated temporary failure 1; retrying in 0.01 s"),
        ("step", 2, "running"), ("log", 2, "deploy attempt 2"), ("step", 2, "failed"),
        ("log", 2, "attempt 2 failed: simulated temporary failure 2; retrying in 0.02 s"),
        ("step", 3, "running"), ("log", 3, "deploy attempt 3"), ("step", 3, "succeeded"),
    ], seen
    failed = [m.data for m in deploy_msgs if m.event == "step" and m.data["status"] == "failed"]
    assert all(f["error"].startswith("simulated temporary failure") and f["durationMs"] >= 0 for f in failed)
    note = next(m for m in deploy_msgs if m.event == "log" and "retrying" in m.data["message"])
    assert note.data["level"] == "warning"


async def test_the_stream_of_all_services_and_its_json_form(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    old = await deploy(live)
    await live.wait_state(old, "running")
    await asyncio.sleep(0.2)

    async def watch() -> Read:
        def both_running(ms: list[Msg]) -> bool:
            done = {m.data["serviceId"] for m in ms if m.event == "state" and m.data["to"] == "running"}
            return len(done) == 2

        return await read_stream(live.client, "/api/v1/events", until=both_running)

    watching = asyncio.ensure_future(watch())
    await asyncio.sleep(0.3)  # the stream is open ("from now": the first service's history is not sent)
    a, b = await deploy(live), await deploy(live)
    read = await watching
    assert not read.closed
    assert {m.data["serviceId"] for m in read.messages} == {a, b}
    assert_increasing(read.messages)
    for sid in (a, b):
        assert states([m for m in read.messages if m.data["serviceId"] == sid]) == LIFECYCLE

    # ?after=0: from the beginning of the journal, every service.
    history = await read_stream(live.client, "/api/v1/events?after=0",
                                until=lambda ms: bool(ms) and ms[-1].id >= read.messages[-1].id)
    assert {m.data["serviceId"] for m in history.messages} == {old, a, b}
    assert [m for m in history.messages if m.id >= read.messages[0].id] == read.messages

    # JSON: the state changes of all services, newest last, with serviceId; ?limit= keeps the newest.
    events = (await live.call("GET", "/api/v1/events", expect=200))["data"]
    assert len(events) == 15 and all(set(e) == {"serviceId", "ts", "from", "to", "reason", "operator"} for e in events)
    assert [e["to"] for e in events if e["serviceId"] == old] == LIFECYCLE
    assert [e for e in events if e["serviceId"] == a] == [{"serviceId": a, **strip(m)} for m in read.messages
                                                         if m.event == "state" and m.data["serviceId"] == a]
    last = (await live.call("GET", "/api/v1/events?limit=2", expect=200))["data"]
    assert last == events[-2:]
    await live.call("GET", "/api/v1/events?limit=0", expect=422)


async def test_auth_roles_and_bad_requests(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(token_settings(tmp_path))
    sid = await deploy(live, bearer(OPER))
    for url in (f"/api/v1/modserv/{sid}/events", "/api/v1/events"):
        r = await read_stream(live.client, url)
        assert r.status == 401 and r.content_type.startswith("application/json")
        r = await read_stream(live.client, url, {"Authorization": "Bearer not-a-known-token-0123456789"})
        assert r.status == 401
        r = await read_stream(live.client, url, {**bearer(VIEW), "Last-Event-ID": "abc"})
        assert r.status == 422
    viewer = await read_stream(live.client, f"/api/v1/modserv/{sid}/events", bearer(VIEW), until=reached("running"))
    assert viewer.status == 200 and states(viewer.messages) == LIFECYCLE
    missing = await live.client.get("/api/v1/modserv/no-such-service/events", headers={**SSE, **bearer(VIEW)})
    assert missing.status_code == 404 and missing.json()["code"] == 1002


class PrivateFakePipeline(FakePipeline):
    """The fake pipeline serving a private model: a private path (masked by the core) and a token in a
    log line's fields and the step's parameters (masked in every view)."""

    name = "fake-private"

    async def run_step(self, step: StepSpec, ctx: StepContext) -> None:
        if step.name == "prepare":
            ctx.set_output(PRIVATE_OUTPUT, ["/vault/models/secret-model"])
            ctx.log("fetched /vault/models/secret-model", api_token="tok-0123456789",
                    where="/vault/models/secret-model")
            ctx.set_params(api_token="tok-0123456789")
        await super().run_step(step, ctx)


async def test_secrets_and_private_values_stay_masked(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    live.server.manager.registry.register("pipeline", "fake-private", PrivateFakePipeline, "test-double")
    body = {**DEPLOY, "pipeline": "fake-private",
            "env": {"FAKE_PERMANENT_DEPLOY": "cannot read /vault/models/secret-model"}}
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=202))["data"]["serviceId"]
    url = f"/api/v1/modserv/{sid}/events"
    read = await read_stream(live.client, url, until=reached("failed"))
    raw = json.dumps([m.data for m in read.messages])
    assert "/vault/models" not in raw and "tok-0123456789" not in raw
    line = next(m.data for m in read.messages if m.event == "log" and "fetched" in m.data["message"])
    assert line["message"] == f"fetched {PRIVATE_MASK}" and line["fields"]["api_token"] == MASK
    assert line["fields"]["where"] == PRIVATE_MASK
    prepare_end = next(m.data for m in read.messages if m.event == "step" and m.data["step"] == "prepare"
                       and m.data["status"] == "succeeded")
    assert prepare_end["params"]["api_token"] == MASK
    failed = next(m.data for m in read.messages if m.event == "state" and m.data["to"] == "failed")
    assert PRIVATE_MASK in failed["reason"]
    assert [strip(m) for m in read.messages if m.event == "state"] == (await live.call("GET", url))["data"]


async def test_keep_alive_comments_in_silence(start_server, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(journal, "KEEPALIVE", 0.2)
    live: Live = await start_server()
    sid = await deploy(live)
    await live.wait_state(sid, "running")
    await asyncio.sleep(0.2)
    quiet = await read_stream(live.client, "/api/v1/events", comments=2, timeout=10)
    assert quiet.comments == [": keep-alive"] * 2 and quiet.messages == []
    history = await read_stream(live.client, f"/api/v1/modserv/{sid}/events", comments=1, timeout=10)
    assert states(history.messages) == LIFECYCLE and history.comments == [": keep-alive"]


async def test_accept_negotiation(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    sid = await deploy(live)
    await live.wait_state(sid, "running")
    url = f"/api/v1/modserv/{sid}/events"
    for accept in ("application/json", "*/*", "text/event-stream;q=0", ""):
        r = await live.client.get(url, headers={"Accept": accept})
        assert r.headers["content-type"].startswith("application/json"), accept
        assert r.json()["code"] == 0
    # What the CLI client sends.
    read = await read_stream(live.client, url, {"Accept": "text/event-stream, application/json;q=0.5"},
                             until=reached("running"))
    assert states(read.messages) == LIFECYCLE


async def test_the_server_stopping_ends_the_streams(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    reading = asyncio.ensure_future(read_stream(live.client, "/api/v1/events", timeout=10))
    await asyncio.sleep(0.3)
    live.server.manager.stop_waiting()  # what SIGTERM does
    read = await reading
    assert read.closed
