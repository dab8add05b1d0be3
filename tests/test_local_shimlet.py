"""The local shimlet with real processes and real HTTP.

The runtime is the test double ``tests/helpers/fake_openai_server.py`` (starts
in ~50 ms); ``test_local_shimlet_llama.py`` runs the real llama.cpp server.
Every test cleans up through ``make_shimlet``: at teardown a fresh shimlet
re-adopts whatever is left in the data directory and deletes it, so no
process outlives a test even when it fails or deliberately leaves processes
running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from modserv_shim.errors import NotFound, PermanentStepError, StateConflict, ValidationFailed
from modserv_shim.plugins import (
    DeployContext,
    LaunchSpec,
    PluginContext,
    ResourcePhase,
    ResourceStatus,
    launch_target,
    shimlet_capabilities,
)
from modserv_shim.shimlets.local import LocalShimlet
from modserv_shim.spec import DeploySpec
from modserv_shim.testing.shimlet_contract import ShimletContract, phase_is, wait_for_status
from tests.helpers.fake_openai_server import PATH as FAKE_SERVER
from tests.helpers.local_shimlet import FAST, OWNER, OWNER_VAR, fake_context, fake_launch, gone, running

MakeShimlet = Callable[..., Awaitable[LocalShimlet]]
REPO = Path(__file__).resolve().parent.parent


def leftovers() -> list[int]:
    """Live processes started by these tests (found by their environment), other than this one."""
    found = []
    marker = f"{OWNER_VAR}={OWNER}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ and running(int(entry.name)):
                found.append(int(entry.name))
    return found


def pids(status: ResourceStatus) -> list[int]:
    return [r["pid"] for r in status.detail["replicas"]]


def starts_logged(shimlet: LocalShimlet, service_id: str, index: int = 0) -> int:
    log = shimlet.root / service_id / f"replica-{index}.log"
    return log.read_text().count(f"starting replica {index}:")


async def ready(shimlet: LocalShimlet, rid: str, replicas: int = 1, timeout: float = 15.0) -> ResourceStatus:
    return await wait_for_status(
        shimlet,
        rid,
        phase_is(ResourcePhase.READY, ready_replicas=replicas, desired_replicas=replicas),
        timeout=timeout,
        what=f"READY with {replicas} replica(s)",
    )


class Watcher:
    """Collects a shimlet's watch events with their arrival time."""

    def __init__(self, shimlet: LocalShimlet) -> None:
        self.events: list[tuple[float, str, ResourceStatus]] = []
        self._stream = shimlet.watch()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for rid, status in self._stream:
            self.events.append((time.monotonic(), rid, status))

    async def first(
        self, rid: str, phase: ResourcePhase, after: float = 0.0, timeout: float = 10.0
    ) -> tuple[float, ResourceStatus]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, r, s in self.events:
                if r == rid and s.phase is phase and at >= after:
                    return at, s
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {phase} event for {rid} within {timeout} s: {self.events}")

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
async def make_shimlet(tmp_path: Path) -> AsyncIterator[MakeShimlet]:
    data_dir = tmp_path / "data"
    made: list[LocalShimlet] = []

    async def make(**options: Any) -> LocalShimlet:
        shimlet = LocalShimlet(PluginContext("local", data_dir, {**FAST, **options}))
        await shimlet.start()
        made.append(shimlet)
        return shimlet

    try:
        yield make
    finally:
        for shimlet in made:
            await shimlet.close()
        janitor = LocalShimlet(PluginContext("local", data_dir, FAST))
        await janitor.start()
        for rid in janitor.resource_ids():
            await janitor.delete(rid)
        await janitor.close()
        left = leftovers()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left behind: {left}"


class TestLocalShimletContract(ShimletContract):
    ready_timeout = 15.0
    endpoint_serves_http = True

    @pytest.fixture
    async def shimlet(self, make_shimlet: MakeShimlet) -> LocalShimlet:
        return await make_shimlet()

    @pytest.fixture
    def make_context(self) -> Callable[[str, int], DeployContext]:
        return fake_context


# ------------------------------------------------------------------ basics


async def test_capabilities_and_resource_id(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet()
    assert shimlet.name == "local"
    assert shimlet_capabilities(shimlet) == ["scale", "logs", "watch", "render", "capacity"]
    assert launch_target(shimlet) == "local"
    assert await shimlet.create(fake_context("svc-a")) == "svc-a"


async def test_render_shows_the_command_and_starts_nothing(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet()
    shown = shimlet.render(fake_context("dry", 2))
    assert shown["replicas"] == 2
    assert shown["command"] == [
        sys.executable, FAKE_SERVER, "--host", "127.0.0.1", "--port", "{port}", "--model-name", "tiny",
    ]  # fmt: skip
    assert shimlet.resource_ids() == []
    assert (await shimlet.status("dry")).phase is ResourcePhase.NOT_FOUND


async def test_pending_until_ready_then_endpoint_serves_chat(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet()
    rid = await shimlet.create(fake_context("slow", 1, "--ready-delay", "0.8"))
    pending = await wait_for_status(shimlet, rid, lambda s: s.detail["replicas"][0]["pid"] is not None, timeout=5)
    assert pending.phase is ResourcePhase.PENDING
    assert pending.reason == "0 of 1 replicas ready; waiting for replica 0 to answer /v1/models"
    status = await ready(shimlet, rid)
    assert status.endpoint == pending.endpoint
    async with httpx.AsyncClient(trust_env=False) as client:
        reply = await client.post(
            f"{status.endpoint}/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "hello"}]},
        )
    assert reply.json()["choices"][0]["message"]["content"] == "fake reply to: hello"


async def test_host_given_by_name_is_probed_and_served(make_shimlet: MakeShimlet) -> None:
    """host=localhost: the port probe resolves the name (it may be ::1 first) instead of assuming IPv4."""
    shimlet = await make_shimlet(host="localhost")
    rid = await shimlet.create(fake_context("named"))
    status = await ready(shimlet, rid)
    assert status.endpoint is not None and status.endpoint.startswith("http://localhost:")
    await shimlet.delete(rid)


async def test_create_twice_starts_one_process(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet()
    ctx = fake_context("once")
    await shimlet.create(ctx)
    first = await ready(shimlet, "once")
    await shimlet.create(ctx)
    await asyncio.sleep(0.3)
    again = await shimlet.status("once")
    assert again.phase is ResourcePhase.READY
    assert pids(again) == pids(first)
    assert starts_logged(shimlet, "once") == 1


async def test_missing_program_or_module_fails_fast(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet()
    spec = DeploySpec(modelName="tiny", modelFile="/models/tiny.gguf")
    no_binary = LaunchSpec("llama.cpp", "tiny", "/m", local_command=("/nonexistent/llama-server",), args=())
    with pytest.raises(PermanentStepError, match="'/nonexistent/llama-server' is not an executable"):
        await shimlet.create(DeployContext("nobin", spec, no_binary, 1))
    no_module = LaunchSpec("vllm", "tiny", "/m", (sys.executable, "-m", "no_such_module_x.server"), args=())
    with pytest.raises(PermanentStepError, match="'no_such_module_x' is not installed"):
        await shimlet.create(DeployContext("nomod", spec, no_module, 1))
    assert (await shimlet.status("nobin")).phase is ResourcePhase.NOT_FOUND
    assert shimlet.resource_ids() == []


async def test_bad_ids_and_options_are_refused(make_shimlet: MakeShimlet, tmp_path: Path) -> None:
    shimlet = await make_shimlet()
    with pytest.raises(PermanentStepError):
        await shimlet.create(fake_context("../escape"))
    assert (await shimlet.status("../escape")).phase is ResourcePhase.NOT_FOUND
    with pytest.raises(NotFound):
        await shimlet.scale("nope", 2)
    with pytest.raises(ValidationFailed, match="restart_backof"):
        LocalShimlet(PluginContext("local", tmp_path, {"restart_backof": 1}))
    with pytest.raises(ValidationFailed, match="stop_grace_period"):
        LocalShimlet(PluginContext("local", tmp_path, {"stop_grace_period": "10s"}))


# --------------------------------------------------------- crash and restart


async def test_crash_after_ready_is_degraded_within_a_second_then_ready_again(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet(restart_backoff=0.5)
    rid = await shimlet.create(fake_context("crashy"))
    before = await ready(shimlet, rid)
    watcher = Watcher(shimlet)
    try:
        killed_at = time.monotonic()
        os.kill(pids(before)[0], signal.SIGKILL)
        seen_at, degraded = await watcher.first(rid, ResourcePhase.DEGRADED)
        assert seen_at - killed_at < 1.0
        assert degraded.reason == "replica 0 exited with code -9 (killed by SIGKILL); restarting in 0.5 s (restart 1)"
        assert any("listening on" in line for line in degraded.detail["last_log_lines"])
        _, again = await watcher.first(rid, ResourcePhase.READY, after=seen_at)
    finally:
        await watcher.stop()
    assert pids(again)[0] != pids(before)[0]
    assert again.endpoint == before.endpoint  # the port was free, so it was kept
    assert again.detail["replicas"][0]["restarts"] == 1
    assert not running(pids(before)[0])


async def test_restart_delay_doubles_up_to_the_cap_and_resets_once_stable(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet(restart_backoff=0.1, restart_backoff_max=0.4, stable_after=0.5)
    rid = await shimlet.create(fake_context("flappy"))
    delays = []
    for restart in range(1, 6):
        status = await ready(shimlet, rid)
        if restart == 5:
            await asyncio.sleep(0.5)  # ready for stable_after: the next crash starts the backoff afresh
        os.kill(pids(status)[0], signal.SIGKILL)
        degraded = await wait_for_status(shimlet, rid, phase_is(ResourcePhase.DEGRADED), timeout=2, interval=0.01)
        assert degraded.reason is not None and degraded.reason.endswith(f"(restart {restart})")
        delays.append(degraded.reason.split("restarting in ")[1].split(" s")[0])
    assert delays == ["0.1", "0.2", "0.4", "0.4", "0.1"]


async def test_exit_code_of_a_crash_is_reported(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet(restart_backoff=5.0, restart_backoff_max=10.0)
    rid = await shimlet.create(fake_context("exits", 1, "--crash-after", "1.0", "--crash-code", "7"))
    await ready(shimlet, rid)
    degraded = await wait_for_status(shimlet, rid, phase_is(ResourcePhase.DEGRADED), timeout=5)
    assert degraded.reason is not None
    assert degraded.reason == "replica 0 exited with code 7; restarting in 5 s (restart 1)"
    assert "crashing with code 7 as asked" in degraded.detail["last_log_lines"][-1]


async def test_exit_before_ready_fails_with_the_last_log_lines(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet(restart_backoff=0.05)
    rid = await shimlet.create(fake_context("broken", 1, "--fail-immediately", "CUDA error: out of memory (fake)"))
    failed = await wait_for_status(shimlet, rid, phase_is(ResourcePhase.FAILED), timeout=10)
    assert failed.reason is not None
    assert failed.reason.startswith(
        "replica 0 exited with code 1 before becoming ready (3 failed starts in a row); giving up. Last log lines:"
    )
    assert "  CUDA error: out of memory (fake)" in failed.reason.splitlines()
    assert "  fake-openai-server: loading model tiny" in failed.reason.splitlines()
    await asyncio.sleep(0.5)
    assert (await shimlet.status(rid)).phase is ResourcePhase.FAILED
    assert starts_logged(shimlet, rid) == 3  # no restart after giving up
    with pytest.raises(StateConflict):
        await shimlet.scale(rid, 2)
    # A restarted shim remembers the failure instead of trying again.
    await shimlet.close()
    later = await make_shimlet()
    remembered = await later.status(rid)
    assert (remembered.phase, remembered.reason) == (ResourcePhase.FAILED, failed.reason)
    await asyncio.sleep(0.3)
    assert starts_logged(later, rid) == 3


async def test_create_after_failed_starts_afresh(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet(restart_backoff=0.05, max_start_failures=1)
    await shimlet.create(fake_context("retry", 1, "--fail-immediately", "boom"))
    await wait_for_status(shimlet, "retry", phase_is(ResourcePhase.FAILED), timeout=10)
    assert await shimlet.create(fake_context("retry")) == "retry"
    await ready(shimlet, "retry")


async def test_not_ready_within_the_startup_timeout_counts_as_a_failed_start(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet(max_start_failures=1, stop_grace_period=1.0)
    launch = LaunchSpec.from_dict({**fake_launch("--ready-delay", "30").to_dict(), "startup_timeout": 0.5})
    rid = await shimlet.create(DeployContext("sluggish", fake_context("x").spec, launch, 1))
    failed = await wait_for_status(shimlet, rid, phase_is(ResourcePhase.FAILED), timeout=10)
    assert failed.reason is not None
    assert failed.reason.startswith(
        "replica 0 was not ready after 0.5 s and was stopped (1 failed start in a row); giving up."
    )
    assert "GET /v1/models -> 503" in failed.reason


async def test_exits_are_noticed_within_a_second_without_pidfds(
    make_shimlet: MakeShimlet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "pidfd_open")  # old kernels, strict seccomp: the polling fallback
    shimlet = await make_shimlet(poll_interval=0.5)
    rid = await shimlet.create(fake_context("polled"))
    child = pids(await ready(shimlet, rid))[0]
    await shimlet.close()
    adopter = await make_shimlet(poll_interval=0.5)  # now it is not our child: /proc is polled
    for victim in (child, None):
        status = await ready(adopter, rid)
        pid = victim or pids(status)[0]  # first the adopted process, then the adopter's own child
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await wait_for_status(adopter, rid, phase_is(ResourcePhase.DEGRADED), timeout=1.0, interval=0.02)
        assert time.monotonic() - killed_at < 1.0


# ------------------------------------------------------- delete and scale


async def test_delete_leaves_no_process_even_when_sigterm_is_ignored(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet(stop_grace_period=0.5)
    rid = await shimlet.create(fake_context("stubborn", 2, "--ignore-sigterm", "--spawn-worker"))
    status = await ready(shimlet, rid, 2)
    logs = await shimlet.logs(rid)
    workers = [int(line.rsplit(" ", 1)[1]) for line in logs if "worker pid" in line]
    assert len(workers) == 2 and all(running(p) for p in [*workers, *pids(status)])
    started = time.monotonic()
    await shimlet.delete(rid)
    assert time.monotonic() - started >= 0.5  # it waited out the grace period, then SIGKILL
    for pid in [*pids(status), *workers]:
        assert await gone(pid, timeout=1.0), f"pid {pid} survived delete"
    assert not (shimlet.root / rid).exists()
    assert (await shimlet.status(rid)).phase is ResourcePhase.NOT_FOUND


async def test_scale_one_two_one(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet()
    rid = await shimlet.create(fake_context("scaled"))
    one = await ready(shimlet, rid, 1)
    await shimlet.scale(rid, 2)
    two = await ready(shimlet, rid, 2)
    ports = [r["port"] for r in two.detail["replicas"]]
    assert len(set(ports)) == 2
    assert two.endpoint == one.endpoint and pids(two)[0] == pids(one)[0]
    logs = await shimlet.logs(rid, tail=3)
    assert {line.split("]")[0] for line in logs} == {"[replica 0", "[replica 1"}
    await shimlet.scale(rid, 1)
    back = await shimlet.status(rid)
    assert (back.phase, back.ready_replicas, back.desired_replicas) == (ResourcePhase.READY, 1, 1)
    assert pids(back) == [pids(one)[0]]
    assert await gone(pids(two)[1], timeout=1.0)


async def test_two_watchers_see_the_same_changes(make_shimlet: MakeShimlet) -> None:
    shimlet = await make_shimlet()
    first, second = Watcher(shimlet), Watcher(shimlet)
    try:
        rid = await shimlet.create(fake_context("watched"))
        await first.first(rid, ResourcePhase.READY)
        await second.first(rid, ResourcePhase.READY)
        await shimlet.delete(rid)
        await first.first(rid, ResourcePhase.NOT_FOUND)
        await second.first(rid, ResourcePhase.NOT_FOUND)
        assert [(r, s.phase) for _, r, s in first.events] == [(r, s.phase) for _, r, s in second.events]
    finally:
        await first.stop()
        await second.stop()


# -------------------------------------------------- surviving the shim


async def test_close_leaves_servers_running_and_start_readopts_them(make_shimlet: MakeShimlet) -> None:
    old = await make_shimlet()
    rid = await old.create(fake_context("durable"))
    before = await ready(old, rid)
    stream = old.watch()
    await old.close()
    assert [e async for e in stream] == []  # the watch ends with the shimlet
    assert running(pids(before)[0])

    new = await make_shimlet()
    assert new.resource_ids() == [rid]
    after = await ready(new, rid)
    assert pids(after) == pids(before)  # re-adopted, not restarted
    assert after.endpoint == before.endpoint
    assert starts_logged(new, rid) == 1
    # It is still watched for exits: a crash is noticed and the replica restarted.
    os.kill(pids(after)[0], signal.SIGKILL)
    degraded = await wait_for_status(new, rid, phase_is(ResourcePhase.DEGRADED), timeout=2)
    assert degraded.reason is not None and "exit code unknown" in degraded.reason
    await wait_for_status(new, rid, lambda s: s.phase is ResourcePhase.READY and pids(s) != pids(before), timeout=10)
    await new.delete(rid)
    assert not running(pids(before)[0])


async def test_start_restarts_replicas_whose_process_is_gone(make_shimlet: MakeShimlet) -> None:
    old = await make_shimlet()
    rid = await old.create(fake_context("lost", 1, "--spawn-worker"))
    before = await ready(old, rid)
    worker = next(int(line.rsplit(" ", 1)[1]) for line in await old.logs(rid) if "worker pid" in line)
    await old.close()
    os.kill(pids(before)[0], signal.SIGKILL)  # the server dies while the shim is down; its worker lives on
    assert await gone(pids(before)[0])
    assert running(worker)

    new = await make_shimlet()
    first = await new.status(rid)
    assert first.phase is ResourcePhase.DEGRADED
    assert first.reason == "replica 0 was not running when the shim started; starting it again"
    assert await gone(worker, timeout=1.0), "the dead server's worker was not cleaned up"
    after = await ready(new, rid)
    assert pids(after) != pids(before)
    assert starts_logged(new, rid) == 2


SHIM_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from modserv_shim.plugins import PluginContext
    from modserv_shim.shimlets.local import LocalShimlet
    from tests.helpers.local_shimlet import FAST, fake_context

    async def main():
        shimlet = LocalShimlet(PluginContext("local", sys.argv[1], FAST))
        await shimlet.start()
        await shimlet.create(fake_context("orphan"))
        while (status := await shimlet.status("orphan")).phase != "ready":
            await asyncio.sleep(0.05)
        print(status.detail["replicas"][0]["pid"], flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


async def test_sigkill_of_the_shim_leaves_the_server_running(make_shimlet: MakeShimlet, tmp_path: Path) -> None:
    shim = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SHIM_SCRIPT,
        str(tmp_path / "data"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, OWNER_VAR: OWNER},
    )
    try:
        assert shim.stdout is not None
        server_pid = int(await asyncio.wait_for(shim.stdout.readline(), timeout=30))
    finally:
        shim.kill()
        await shim.wait()
    await asyncio.sleep(0.3)
    assert running(server_pid)
    shimlet = await make_shimlet()
    status = await ready(shimlet, "orphan")
    assert pids(status) == [server_pid]
    await shimlet.delete("orphan")
    assert await gone(server_pid)


async def test_start_stops_a_server_no_state_file_recorded(make_shimlet: MakeShimlet, tmp_path: Path) -> None:
    """A crash between the spawn and the first save of the state file leaves a server no record names;
    the next start finds it by its owner variable and stops it (and leaves other owners' alone)."""
    from modserv_shim.shimlets.local import procfs

    shimlet = await make_shimlet()
    root = str(shimlet.root)
    await shimlet.close()

    def spawn(owner: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, OWNER_VAR: OWNER, procfs.OWNER_ENV: owner}
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env,
                                start_new_session=True)

    unrecorded, foreign = spawn(root), spawn(str(tmp_path / "another-shim"))
    try:
        await asyncio.sleep(0.2)
        again = await make_shimlet()
        assert again.resource_ids() == []
        assert await gone(unrecorded.pid), "the unrecorded server of ours was left running"
        assert running(foreign.pid), "a server of another owner was stopped"
    finally:
        for p in (unrecorded, foreign):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
