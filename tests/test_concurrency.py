"""Concurrency and idempotency over real HTTP: many callers at once get unique ids, lose no update and
never drive a service through a transition the lifecycle table forbids.

The environment is the fake shimlet (a test double keeping its workloads in a JSON file), so that the
test exercises the control plane, not model start-up.  ``MODSERV_CONCURRENCY_DEPLOYS`` raises the
number of concurrent deploys for a longer run (default 200).
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from pathlib import Path
from typing import Any

import httpx

from modserv_shim.core.lifecycle import State, can_transition
from modserv_shim.server.runner import build_registry
from modserv_shim.testing.fake_pipeline import FakePipeline
from modserv_shim.testing.fake_shimlet import FakeShimlet
from tests.conftest import Live, fake_settings, serve, wait_for
from tests.helpers.api_flows import DEPLOY

DEPLOYS = int(os.environ.get("MODSERV_CONCURRENCY_DEPLOYS", "200"))
SEED = int(os.environ.get("MODSERV_CONCURRENCY_SEED", random.randrange(1 << 30)))
TOKENS = "alice:operator:alice-token-0123456789,bob:operator:bob-token-0123456789"


def body(i: int, **extra: Any) -> dict[str, Any]:
    return {**DEPLOY, "modelName": f"m{i}", **extra}


def client(live: Live, token: str, connections: int = 64) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=120,
                             limits=limits)


async def events_of(live: Live, sid: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await live.call("GET", f"/api/v1/modserv/{sid}/events"))["data"]
    return events


def forbidden(events: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    """Transitions in an event history that the lifecycle table does not allow."""
    bad = []
    for e in events:
        src, dst = e["from"], e["to"]
        if src is None or src == dst:  # the first event, or a same-state note (scaled, a new reason)
            continue
        if not can_transition(State(src), State(dst)):
            bad.append((src, dst))
    return bad


async def test_concurrent_deploys_get_unique_ids_and_all_run(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    print(f"deploys={DEPLOYS}")
    live: Live = await start_server(fake_settings(tmp_path, tokens=TOKENS), headers=_auth("alice"))
    async with client(live, "alice-token-0123456789", connections=DEPLOYS) as alice:
        answers = await asyncio.gather(*(alice.post("/api/v1/modserv/deploy", json=body(i)) for i in range(DEPLOYS)))
    assert [r.status_code for r in answers] == [202] * DEPLOYS, {r.status_code for r in answers}
    ids = [r.json()["data"]["serviceId"] for r in answers]
    assert len(set(ids)) == DEPLOYS

    async def all_running() -> bool:
        services = (await live.call("GET", "/api/v1/modserv", headers=_auth("alice")))["data"]
        return len(services) == DEPLOYS and all(s["state"] == "running" for s in services)

    await wait_for(all_running, timeout=120, interval=0.2)
    listed = {s["serviceId"] for s in (await live.call("GET", "/api/v1/modserv", headers=_auth("alice")))["data"]}
    assert listed == set(ids)


async def test_scale_delete_and_retry_at_once_lose_nothing(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Per service, a random mix of scales, deletes and retries, all at once.  Afterwards: a service with
    an accepted delete is terminated with no workload; any other's desired count is the one its last
    'scaled to' event names, and the workload has it; every history obeys the transition table."""
    rng = random.Random(SEED)
    print(f"seed={SEED} (MODSERV_CONCURRENCY_SEED replays it)")
    live: Live = await start_server(fake_settings(tmp_path, tokens=TOKENS), headers=_auth("alice"))
    n = 40
    async with client(live, "alice-token-0123456789") as alice:
        sids = [r.json()["data"]["serviceId"] for r in await asyncio.gather(
            *(alice.post("/api/v1/modserv/deploy", json=body(i)) for i in range(n)))]
        for sid in sids:
            await live.wait_state(sid, "running", timeout=30)
        ops: list[tuple[str, str, str, dict[str, Any] | None]] = []
        for sid in sids:
            for _ in range(rng.randint(2, 6)):
                ops.append(("POST", sid, "scale", {"replicaCount": rng.randint(1, 8)}))
            for _ in range(rng.randint(0, 2)):
                ops.append(("POST", sid, "retry", None))
            if rng.random() < 0.4:
                ops += [("DELETE", sid, "", None)] * rng.randint(1, 2)
        rng.shuffle(ops)

        async def run(op: tuple[str, str, str, dict[str, Any] | None]) -> tuple[str, str, int, dict[str, Any]]:
            method, sid, verb, payload = op
            path = f"/api/v1/modserv/{sid}" + (f"/{verb}" if verb else "")
            r = await alice.request(method, path, json=payload)
            return sid, verb or "delete", r.status_code, r.json()

        results = await asyncio.gather(*(run(op) for op in ops))

    mix: dict[tuple[str, int], int] = {}
    for _, verb, status, _ in results:
        mix[verb, status] = mix.get((verb, status), 0) + 1
    print(f"CONCURRENCY {len(results)} requests at once on {n} services:",
          ", ".join(f"{verb} {status} x{k}" for (verb, status), k in sorted(mix.items())))
    expected = {"scale": {200, 409}, "retry": {409}, "delete": {200, 202}}
    odd = [(sid, verb, status, b["message"]) for sid, verb, status, b in results if status not in expected[verb]]
    assert not odd, odd[:5]
    deleted = {sid for sid, verb, status, _ in results if verb == "delete"}
    shimlet = await live.server.manager.registry.shimlet("fake")
    for sid in sids:
        svc = await live.wait_state(sid, "running", "terminated", timeout=30)
        history = await events_of(live, sid)
        assert not forbidden(history), (sid, forbidden(history))
        if sid in deleted:
            assert svc["state"] == "terminated"
            assert f"fake-{sid}" not in shimlet.resources()  # type: ignore[attr-defined]
            continue
        scaled = [e["reason"] for e in history if (e["reason"] or "").startswith("scaled to ")]
        accepted = [status for s, verb, status, _ in results if s == sid and verb == "scale" and status == 200]
        assert len(scaled) == len(accepted), (sid, scaled, accepted)
        want = int(scaled[-1].split()[2]) if scaled else 1
        assert svc["replicas"]["desired"] == want, (sid, svc["replicas"], scaled)
        assert shimlet.resources()[f"fake-{sid}"]["replicas"] == want  # type: ignore[attr-defined]


async def test_concurrent_retries_of_a_failed_service_start_one_pipeline(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(fake_settings(tmp_path, tokens=TOKENS), headers=_auth("alice"))
    bodies = [body(i, env={"FAKE_FAIL_VERIFY": "3"}) for i in range(10)]  # fails its 3 attempts, then works
    sids = [(await live.call("POST", "/api/v1/modserv/deploy", json=b, expect=202))[
        "data"]["serviceId"] for b in bodies]
    for sid in sids:
        await live.wait_state(sid, "failed", timeout=30)
    async with client(live, "alice-token-0123456789") as alice:
        answers = await asyncio.gather(*(alice.post(f"/api/v1/modserv/{sid}/retry") for sid in sids for _ in range(8)))
    by_sid: dict[str, list[int]] = {}
    for sid, r in zip([s for s in sids for _ in range(8)], answers, strict=True):
        by_sid.setdefault(sid, []).append(r.status_code)
    for sid, codes in by_sid.items():
        assert sorted(codes) == [202] + [409] * 7, (sid, codes)
        svc = await live.wait_state(sid, "running", "failed", timeout=30)
        assert svc["state"] == "running", svc
        assert not forbidden(await events_of(live, sid))


async def test_idempotency_key_returns_the_same_service(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = fake_settings(tmp_path, tokens=TOKENS)
    live: Live = await start_server(settings, headers=_auth("alice"))
    key = str(uuid.uuid4())
    async with client(live, "alice-token-0123456789") as alice:
        answers = await asyncio.gather(*(alice.post("/api/v1/modserv/deploy", json=body(1),
                                                    headers={"Idempotency-Key": key}) for _ in range(20)))
        assert {r.status_code for r in answers} == {202}
        ids = {r.json()["data"]["serviceId"] for r in answers}
        assert len(ids) == 1, ids
        (sid,) = ids
        # the same key with another body is refused, and nothing is created
        r = await alice.post("/api/v1/modserv/deploy", json=body(2), headers={"Idempotency-Key": key})
        assert r.status_code == 409 and r.json()["code"] == 1009 and sid in r.json()["message"], r.text
        # a bad key is a clear 422
        r = await alice.post("/api/v1/modserv/deploy", json=body(1), headers={"Idempotency-Key": "has space"})
        assert r.status_code == 422 and "Idempotency-Key" in r.json()["message"]
    async with client(live, "bob-token-0123456789") as bob:  # keys belong to their caller
        r = await bob.post("/api/v1/modserv/deploy", json=body(1), headers={"Idempotency-Key": key})
        assert r.status_code == 202 and r.json()["data"]["serviceId"] != sid
    services = (await live.call("GET", "/api/v1/modserv", headers=_auth("alice")))["data"]
    assert len(services) == 2
    # the key outlives a restart of the server
    await live.stop()
    registry = build_registry(settings)  # the same plugins as before the restart
    registry.register("shimlet", "fake", FakeShimlet, "test-double")
    registry.register("pipeline", "fake", FakePipeline, "test-double")
    live = await serve(settings, registry, headers=_auth("alice"))
    try:
        async with client(live, "alice-token-0123456789") as alice:
            r = await alice.post("/api/v1/modserv/deploy", json=body(1), headers={"Idempotency-Key": key})
            assert r.status_code == 202 and r.json()["data"]["serviceId"] == sid
    finally:
        await live.stop(delete_services=True)


def _auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}-token-0123456789"}
