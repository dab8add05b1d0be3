"""Request bodies over ``max_body_bytes`` are refused with 413 (code 1007) before they cost memory.

Issue 8: eight 50 MB bodies at once grew the server from 142 to 537 MB, and it stayed there.
The memory test runs the real CLI in a child process and reads its VmRSS, since a server in
the test process would share its memory with the client building the bodies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Live, fake_settings
from tests.helpers.api_flows import DEPLOY
from tests.helpers.server_process import ServerProcess

MB = 1024 * 1024
BIG = b" " * (50 * MB)  # one buffer, shared by every request that sends it


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body without Content-Length: httpx sends it with Transfer-Encoding: chunked."""
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b" " * n


def assert_refused(r: httpx.Response, limit: int) -> None:
    assert r.status_code == 413, r.text[:300]
    body = r.json()
    assert body["code"] == 1007 and body["data"] is None, body
    assert str(limit) in body["message"] and "max_body_bytes" in body["message"], body["message"]
    assert "MODSERV_MAX_BODY_BYTES" in body["message"], body["message"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    yield s
    s.stop()


def test_eight_50mb_bodies_at_once_are_refused_fast_and_leave_memory_flat(server: ServerProcess) -> None:
    server.start()
    assert server.proc is not None
    url = f"{server.url}/api/v1/modserv/deploy"
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=60) as warm:  # first requests allocate what any request needs
        assert_refused(warm.post(url, content=BIG[: 2 * MB], headers=headers), 65536)
        assert warm.get(f"{server.url}/api/v1/modserv").status_code == 200
    before = rss_bytes(server.proc.pid)

    def post(kind: str) -> tuple[httpx.Response, float]:
        t0 = time.monotonic()
        with httpx.Client(timeout=60) as c:
            if kind == "length":
                r = c.post(url, content=BIG, headers=headers)
            else:
                r = c.post(url, content=chunks(50 * MB), headers=headers)
        return r, time.monotonic() - t0

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(post, ["length"] * 8 + ["chunked"] * 2))
    for r, _ in results:
        assert_refused(r, 65536)
    slowest = max(seconds for _, seconds in results)
    assert slowest < 20, f"a refused 50 MB body took {slowest:.1f} s"

    grown = rss_bytes(server.proc.pid) - before
    assert grown < 20 * MB, f"the server grew by {grown / MB:.0f} MB refusing ten 50 MB bodies"
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{server.url}/api/v1/modserv", timeout=5).json()["data"] == []


def test_the_limit_comes_from_the_environment(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSERV_MAX_BODY_BYTES", "2048")
    server.start()
    r = httpx.post(f"{server.url}/api/v1/modserv/deploy", content=b" " * 2049,
                   headers={"content-type": "application/json"}, timeout=10)
    assert_refused(r, 2048)


async def test_cap_is_exact_and_normal_deploys_still_work(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    limit = 4096
    live: Live = await start_server(fake_settings(tmp_path, max_body_bytes=limit))
    headers = {"content-type": "application/json"}
    await live.call("POST", "/api/v1/modserv/deploy", json=DEPLOY, expect=202)

    import json

    body = json.dumps(DEPLOY).encode()
    at_cap = body + b" " * (limit - len(body))  # JSON allows trailing whitespace
    await live.call("POST", "/api/v1/modserv/deploy", content=at_cap, headers=headers, expect=202)
    r = await live.client.post("/api/v1/modserv/deploy", content=at_cap + b" ", headers=headers)
    assert_refused(r, limit)

    async def stream(data: bytes, size: int = 1000):  # type: ignore[no-untyped-def]
        for i in range(0, len(data), size):
            yield data[i:i + size]

    r = await live.client.post("/api/v1/modserv/deploy", content=stream(at_cap), headers=headers)
    assert r.status_code == 202, r.text  # chunked, at the cap: fine
    r = await live.client.post("/api/v1/modserv/deploy", content=stream(at_cap + b" " * 5000), headers=headers)
    assert_refused(r, limit)
    r = await live.client.post("/api/v1/modserv/x/scale", content=stream(b" " * 10_000), headers=headers)
    assert_refused(r, limit)

    services = (await live.call("GET", "/api/v1/modserv"))["data"]
    assert len(services) == 3  # the refused bodies stored nothing
    assert (await live.call("GET", "/healthz"))["data"]["status"] == "ok"
