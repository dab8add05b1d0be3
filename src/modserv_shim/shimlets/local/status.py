"""How a resource's replicas add up to one :class:`ResourceStatus`.

* FAILED   — a replica gave up (it kept exiting before ever becoming ready);
             the reason quotes its exit code and last log lines.
* READY    — every desired replica answers its ready path.
* DEGRADED — the resource was READY once and a replica is down or restarting.
* UNKNOWN  — a replica found running after a restart of the shim has not been
             probed yet: nothing is claimed until it is (a restart must not flip
             a running service to degraded for the moment the probe takes).
* PENDING  — anything else: starting for the first time, or a new replica after
             a scale-up.

Computed from memory only, so ``status()`` never waits on a process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modserv_shim.plugins import ResourcePhase, ResourceStatus
from modserv_shim.shimlets.local.ports import url_host
from modserv_shim.shimlets.local.replica import Replica, ReplicaPhase
from modserv_shim.shimlets.local.state import ResourceRecord


def summarize(record: ResourceRecord, replicas: Sequence[Replica], endpoint_host: str) -> ResourceStatus:
    ready = sum(1 for r in replicas if r.phase is ReplicaPhase.READY)
    desired = record.desired_replicas
    first = next((r for r in replicas if r.index == 0), None)
    endpoint = f"http://{url_host(endpoint_host)}:{first.record.port}" if first else None
    troubled = [r for r in replicas if r.phase is not ReplicaPhase.READY and r.problem]
    detail: dict[str, Any] = {"replicas": [_replica_detail(r) for r in replicas]}
    lines = [f"[replica {r.index}] {line}" for r in troubled for line in r.last_lines]
    if lines:
        detail["last_log_lines"] = lines

    def status(phase: ResourcePhase, reason: str | None) -> ResourceStatus:
        return ResourceStatus(phase, ready, desired, endpoint, reason, detail)

    if record.failed_reason:
        return status(ResourcePhase.FAILED, record.failed_reason)
    if ready >= desired:
        return status(ResourcePhase.READY, None)
    adopted = [str(r.index) for r in replicas if r.phase is ReplicaPhase.ADOPTED]
    if adopted:
        return status(ResourcePhase.UNKNOWN, f"replica {', '.join(adopted)} found running after a restart of the"
                      " shim; probing it")
    problems = "; ".join(r.problem for r in troubled if r.problem)
    if record.was_ready and troubled:
        return status(ResourcePhase.DEGRADED, problems)
    starting = [str(r.index) for r in replicas if r.phase is ReplicaPhase.STARTING]
    waiting = f"; waiting for replica {', '.join(starting)} to answer {record.launch.ready_path}" if starting else ""
    return status(ResourcePhase.PENDING, problems or f"{ready} of {desired} replicas ready{waiting}")


def _replica_detail(replica: Replica) -> dict[str, Any]:
    return {
        "index": replica.index,
        "phase": str(replica.phase),
        "pid": replica.record.pid,
        "port": replica.record.port,
        "restarts": replica.restarts,
        "last_exit_code": replica.last_exit_code,
        "log": str(replica.log_path),
    }
