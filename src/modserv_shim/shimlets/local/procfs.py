"""Processes as Linux sees them: identity, liveness, exit and termination.

Why ``/proc`` and not just ``os.kill(pid, 0)``: after a restart of the shim
the pids in our state files may have been recycled by the kernel for some
unrelated process.  A pid is ours only if ``/proc/<pid>/stat`` still shows the
*start time* we recorded when we launched it (field 22, clock ticks since
boot), which no other process can share.  A zombie (state ``Z``) has exited
and only waits to be reaped, so it counts as gone.

Exit detection uses a pidfd (``os.pidfd_open``, Linux 5.3+): the descriptor
becomes readable the moment the process exits, for our own children and for
re-adopted processes alike, with no thread and no polling.  Where pidfds are
unavailable (old kernel, seccomp) it falls back to polling every
``poll_interval`` seconds.

Replicas run in their own session, so their process group id equals the
leader's pid; signals go to the whole group to reach worker processes too.

Every replica also carries an environment variable naming its owner (the
shimlet's state directory, :data:`OWNER_ENV`).  Reading ``/proc/<pid>/stat``
right after the spawn can wait several milliseconds while the new program
maps its libraries, so the start time is read on a worker thread and saved a
moment later; a crash of the shim in that moment leaves a process no state
file knows, and the next start finds it by its owner variable
(:func:`owned_leaders`) and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
KILL_WAIT = 5.0


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    pgrp: int
    start_time: int


def read_stat(pid: int) -> ProcStat | None:
    """The interesting fields of ``/proc/<pid>/stat``, or None if there is no such process."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain ") ".
    rest = raw[raw.rfind(")") + 2 :].split()
    return ProcStat(pid=pid, state=rest[0], pgrp=int(rest[2]), start_time=int(rest[19]))


OWNER_ENV = "MODSERV_SHIM_OWNER"


def owner_of(pid: int) -> str | None:
    """The :data:`OWNER_ENV` value in the process's initial environment, if it is readable."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:  # gone, or not ours to read
        return None
    prefix = OWNER_ENV.encode() + b"="
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode("utf-8", "replace")
    return None


def owned_leaders(owner: str) -> list[int]:
    """Running process-group leaders started with ``OWNER_ENV=owner`` (replicas, not their workers)."""
    found = []
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None and stat.pgrp == stat.pid and _running(stat) and owner_of(stat.pid) == owner:
                found.append(stat.pid)
    return found


def _running(stat: ProcStat | None) -> bool:
    return stat is not None and stat.state not in ("Z", "X", "x")


def start_time(pid: int) -> int | None:
    stat = read_stat(pid)
    return stat.start_time if stat else None


def is_ours(pid: int | None, started: int | None) -> bool:
    """True while the process we started as ``pid`` at ``started`` is still running."""
    if pid is None or started is None:
        return False
    stat = read_stat(pid)
    return _running(stat) and stat is not None and stat.start_time == started


def group_members(pgid: int) -> list[int]:
    """Running (non-zombie) processes of process group ``pgid``."""
    members = []
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and _running(stat):
                members.append(stat.pid)
    return members


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to a process group; False if the group no longer exists."""
    if pgid <= 1:  # 0 would be our own group, 1 init's: never a replica's
        raise ValueError(f"refusing to signal process group {pgid}")
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def wait_exit(
    pid: int, started: int | None, child: subprocess.Popen[bytes] | None, poll_interval: float
) -> int | None:
    """Wait until the process exits; its exit code if it is our ``child``, else None.

    A negative code means "killed by that signal" (``-9`` is SIGKILL).
    """
    fd = _open_pidfd(pid, started, child)
    if fd is not None:
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def _on_readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, _on_readable)
        try:
            await exited
        finally:
            loop.remove_reader(fd)
            os.close(fd)
    else:
        while (child.poll() is None) if child is not None else is_ours(pid, started):
            await asyncio.sleep(poll_interval)
    return child.wait() if child is not None else None


def _open_pidfd(pid: int, started: int | None, child: subprocess.Popen[bytes] | None) -> int | None:
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone already, or pidfds not allowed here: poll instead
        return None
    # The pid could have been recycled between our last look and pidfd_open.
    if child is None and not is_ours(pid, started):
        os.close(fd)
        return None
    return fd


async def terminate(
    pid: int, started: int | None, child: subprocess.Popen[bytes] | None, *, grace: float, poll_interval: float
) -> bool:
    """SIGTERM the process group, SIGKILL whatever is left after ``grace`` seconds.

    True once the leader and every other member of its group are gone; False
    if something survived even SIGKILL for ``KILL_WAIT`` seconds (a process
    stuck in the kernel).  A pid that is no longer the process we started is
    not signalled; only what is left of its process group is killed.
    """
    loop = asyncio.get_running_loop()
    if child is None and not is_ours(pid, started):
        if not group_members(pid):
            return True
        signal_group(pid, signal.SIGKILL)  # the leader is gone, its workers are not
        return await _gone(pid, started, child, poll_interval, loop.time() + KILL_WAIT)
    signal_group(pid, signal.SIGTERM)
    if not await _gone(pid, started, child, poll_interval, loop.time() + grace):
        signal_group(pid, signal.SIGKILL)
        return await _gone(pid, started, child, poll_interval, loop.time() + KILL_WAIT)
    return True


async def _gone(
    pid: int, started: int | None, child: subprocess.Popen[bytes] | None, poll_interval: float, deadline: float
) -> bool:
    """Wait until the leader has exited and its group is empty, or ``deadline`` (loop time) passes."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await wait_exit(pid, started, child, poll_interval)
    while group_members(pid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return child.poll() is not None if child is not None else not is_ours(pid, started)
