"""How a service's containers add up to one :class:`ResourceStatus`.

* FAILED   -- a replica gave up (it exited ``max_start_failures`` times in a row before
             ever being ready; with a Docker restart policy: ``RestartCount`` got there,
             a restart loop), or the Engine refused the service in a way waiting cannot
             fix (no image with ``pull: never``, no GPU driver).  Latched until a new
             ``create``.  The reason quotes the exit and the last log lines.
* READY    -- as many containers as desired, every one running and answering its ready
             path in its current run.
* UNKNOWN  -- containers found running after a restart of the shim, not probed yet.
* DEGRADED -- the service was READY once and a replica is down, restarting or missing.
* PENDING  -- anything else: starting, pulling, a new replica after a scale-up.

Pure: computed from the cache and the keeper's memory, so ``status()`` never waits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modserv_shim.plugins import ResourcePhase, ResourceStatus
from modserv_shim.shimlets.docker import reasons
from modserv_shim.shimlets.docker.keeper import Memory, running
from modserv_shim.shimlets.docker.options import DockerOptions
from modserv_shim.shimlets.docker.render import PORT, endpoint
from modserv_shim.shimlets.docker.watcher import replica_of

Obj = dict[str, Any]


@dataclass
class Track:
    """What the shimlet remembers about one service."""

    desired: int
    was_ready: bool = False
    failed_reason: str | None = None


def _docker_restarts(doc: Obj, mem: Memory, options: DockerOptions) -> str | None:
    """With a Docker restart policy: what the Engine's restarts say (None when nothing is wrong)."""
    st = reasons.state(doc)
    count = int(doc.get("RestartCount") or 0)
    if options.restart == "no" or (running(doc) and count == 0):
        return None
    if st.get("Restarting") or not running(doc):
        words = f"replica {mem.index} {reasons.exit_text(doc)}; Docker restarts it (restart {count})"
        if count >= options.max_start_failures and mem.ready_run is None:
            mem.failure = f"replica {mem.index} is in a restart loop (RestartCount {count}): last run " + \
                reasons.exit_text(doc)
        return words
    return None


def summarize(docs: Sequence[Obj], memory: Mapping[int, Memory], track: Track,
              options: DockerOptions) -> ResourceStatus:
    desired = track.desired
    ready = sum(1 for d in docs if memory[replica_of(d)].is_ready(d))
    first = next((d for d in docs if replica_of(d) == 0), None)
    port = ((first or {}).get("Config") or {}).get("Labels", {}).get(PORT) if first else None
    url = endpoint(options, port) if port else None
    problems = [p for d in docs if (p := _problem(d, memory[replica_of(d)], options))]
    detail: dict[str, Any] = {"containers": [_detail(d, memory[replica_of(d)]) for d in docs]}

    def out(phase: ResourcePhase, reason: str | None) -> ResourceStatus:
        return ResourceStatus(phase, ready, desired, url, reason, detail)

    failure = track.failed_reason or next((m.failure for d in docs if (m := memory[replica_of(d)]).failure), None)
    if failure:
        track.failed_reason = failure
        return out(ResourcePhase.FAILED, failure)
    if ready >= desired and len(docs) == desired:
        track.was_ready = True
        return out(ResourcePhase.READY, None)
    adopted = [str(memory[replica_of(d)].index) for d in docs if memory[replica_of(d)].adopted]
    if adopted:
        return out(ResourcePhase.UNKNOWN, f"replica {', '.join(adopted)} found running after a restart of the"
                   " shim; probing it")
    missing = desired - len(docs)
    if track.was_ready and (problems or ready < desired):
        lost = f"{desired - ready} of {desired} replicas not ready"
        return out(ResourcePhase.DEGRADED, "; ".join(problems) or lost)
    waiting = [str(replica_of(d)) for d in docs if running(d) and not memory[replica_of(d)].is_ready(d)]
    text = f"{ready} of {desired} replicas ready"
    if waiting:
        text += f"; waiting for replica {', '.join(waiting)} to answer its ready path"
    if missing > 0:
        text += f"; {missing} container(s) not there (being created, or removed by hand)"
    return out(ResourcePhase.PENDING, "; ".join(problems) or text)


def _problem(doc: Obj, mem: Memory, options: DockerOptions) -> str | None:
    if mem.is_ready(doc):
        return None
    return _docker_restarts(doc, mem, options) or mem.problem


def _detail(doc: Obj, mem: Memory) -> dict[str, Any]:
    st = reasons.state(doc)
    return {
        "name": str(doc.get("Name") or "").lstrip("/"), "id": str(doc.get("Id") or "")[:12],
        "replica": mem.index, "state": st.get("Status"), "ready": mem.is_ready(doc),
        "exitCode": st.get("ExitCode"), "oomKilled": bool(st.get("OOMKilled")), "restarts": mem.restarts,
        "dockerRestarts": int(doc.get("RestartCount") or 0), "lastLogLines": list(mem.last_lines),
    }
