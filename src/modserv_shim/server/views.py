"""How records look on the wire (camelCase like the brief; secrets masked)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from modserv_shim.core.manager import DryRunResult
from modserv_shim.core.records import Event, RunStatus, ServiceRecord, StepLog, StepRun
from modserv_shim.plugins import StepSpec
from modserv_shim.spec import redact


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts is not None else None


def service(rec: ServiceRecord) -> dict[str, Any]:
    return {
        "serviceId": rec.id,
        "modelName": rec.model_name,
        "state": rec.state.value,
        "reason": rec.reason,
        "currentStep": rec.current_step_name,
        "totalSteps": rec.total_steps,
        "shimlet": rec.shimlet,
        "pipeline": rec.pipeline,
        "resourceId": rec.resource_id,
        "endpoint": rec.endpoint,
        "replicas": {"ready": rec.replicas_ready, "desired": rec.replicas_desired},
        "spec": redact(rec.spec),
        "operator": rec.operator,
        "createdAt": iso(rec.created_at),
        "updatedAt": iso(rec.updated_at),
    }


def accepted(rec: ServiceRecord) -> dict[str, Any]:
    return {
        "serviceId": rec.id,
        "state": rec.state.value,
        "currentStep": rec.current_step_name,
        "totalSteps": rec.total_steps,
    }


def run(r: StepRun) -> dict[str, Any]:
    return {
        "step": r.step,
        "attempt": r.attempt,
        "status": r.status,
        "startedAt": iso(r.started_at),
        "finishedAt": iso(r.finished_at),
        "durationMs": r.duration_ms,
        "error": r.error,
        "operator": r.operator,
        "params": redact(r.params),
    }


def log_line(x: StepLog) -> dict[str, Any]:
    return {
        "ts": iso(x.ts),
        "step": x.step,
        "attempt": x.attempt,
        "level": x.level,
        "message": x.message,
        "fields": redact(x.fields),
    }


def event(e: Event) -> dict[str, Any]:
    return {"ts": iso(e.ts), "from": e.from_state, "to": e.to_state, "reason": e.reason, "operator": e.operator}


def pipeline(rec: ServiceRecord, steps: list[StepSpec] | None, runs: list[StepRun]) -> dict[str, Any]:
    by_step: dict[str, list[StepRun]] = {}
    for r in runs:
        by_step.setdefault(r.step, []).append(r)
    spec_by_name = {s.name: s for s in steps or []}
    out = []
    for i, name in enumerate(rec.total_steps):
        step_runs = by_step.get(name, [])
        if i < rec.current_step:
            status = RunStatus.SUCCEEDED
        elif step_runs:
            status = step_runs[-1].status
        else:
            status = "pending"
        s = spec_by_name.get(name)
        out.append({
            "name": name,
            "phase": s.phase.value if s else None,
            "status": status,
            "attempts": len(step_runs),
            "durationMs": round(sum(r.duration_ms or 0 for r in step_runs), 3),
            "timeout": s.timeout if s else None,
            "retry": vars(s.retry).copy() if s else None,
            "runs": [run(r) for r in step_runs],
        })
    return {
        "serviceId": rec.id,
        "pipeline": rec.pipeline,
        "state": rec.state.value,
        "reason": rec.reason,
        "currentStep": rec.current_step_name,
        "totalSteps": rec.total_steps,
        "steps": out,
    }


def dry_run(res: DryRunResult) -> dict[str, Any]:
    return {
        "serviceId": res.service_id,
        "dryRun": True,
        "currentStep": None,
        "totalSteps": res.total_steps,
        "stepsRun": [run(r) for r in res.steps_run],
        "logs": [log_line(x) for x in res.logs],
        "rendered": redact(res.outputs),
    }
