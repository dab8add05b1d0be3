"""How records look on the wire (camelCase like the brief; secrets masked).

Each view has a ``TypedDict``: mypy checks that the functions below build exactly that
shape, and the OpenAPI document shows the same types as the response bodies.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, NotRequired

from typing_extensions import TypedDict

from modserv_shim.core.lifecycle import State
from modserv_shim.core.manager import DryRunResult
from modserv_shim.core.records import Event, JournalEntry, JournalKind, RunStatus, ServiceRecord, StepLog, StepRun
from modserv_shim.plugins import API_KEY_OUTPUT, StepSpec
from modserv_shim.private import mask_private, private_values
from modserv_shim.spec import redact


class Health(TypedDict):
    status: str
    version: str


class Ready(TypedDict):
    status: str


class WhoAmI(TypedDict):
    """The caller as the server sees it (the web dashboard shows or hides buttons by ``role``)."""

    name: str
    role: str
    groups: list[str]


class Replicas(TypedDict):
    ready: int
    desired: int


class ServiceView(TypedDict):
    serviceId: str
    modelName: str
    state: State
    reason: str | None
    currentStep: str | None
    totalSteps: list[str]
    shimlet: str
    pipeline: str
    resourceId: str | None
    endpoint: str | None
    replicas: Replicas
    spec: dict[str, Any]
    operator: str
    createdAt: str
    updatedAt: str
    apiKey: NotRequired[ApiKeyInfo]


class ApiKeyInfo(TypedDict):
    """A service's API key as ``GET`` shows it: which one, never the key."""

    fingerprint: str
    createdAt: str


class AcceptedView(TypedDict):
    serviceId: str
    state: State
    currentStep: str | None
    totalSteps: list[str]
    apiKey: NotRequired[str]


class RotatedKeyView(TypedDict):
    serviceId: str
    apiKey: str
    fingerprint: str


class RunView(TypedDict):
    step: str
    attempt: int
    status: str
    startedAt: str
    finishedAt: str | None
    durationMs: float | None
    error: str | None
    operator: str
    params: dict[str, Any]


class LogLineView(TypedDict):
    ts: str
    step: str
    attempt: int
    level: str
    message: str
    fields: dict[str, Any]


EventView = TypedDict("EventView", {"ts": str, "from": str | None, "to": str, "reason": str | None,
                                    "operator": str})


class StepView(TypedDict):
    name: str
    phase: str | None
    status: str
    attempts: int
    durationMs: float
    timeout: float | None
    retry: dict[str, Any] | None
    runs: list[RunView]


class PipelineView(TypedDict):
    serviceId: str
    pipeline: str
    state: State
    reason: str | None
    currentStep: str | None
    totalSteps: list[str]
    steps: list[StepView]


class PipelineLogsView(TypedDict):
    serviceId: str
    runs: list[RunView]
    logs: list[LogLineView]


class RuntimeLogsView(TypedDict):
    serviceId: str
    lines: list[str]


class DryRunView(TypedDict):
    serviceId: str
    dryRun: bool
    currentStep: None
    totalSteps: list[str]
    stepsRun: list[RunView]
    logs: list[LogLineView]
    rendered: dict[str, Any]


class PluginView(TypedDict):
    """A plugin as ``GET /api/v1/plugins`` lists it (``capabilities`` / ``steps`` once it is loaded)."""

    name: str
    source: str
    loaded: bool
    capabilities: NotRequired[list[str]]
    steps: NotRequired[list[dict[str, Any]]]
    default: NotRequired[bool]
    error: NotRequired[str]


class RefusedPluginView(TypedDict):
    kind: str
    name: str
    source: str
    error: str


class PluginsView(TypedDict):
    shimlets: list[PluginView]
    pipelines: list[PluginView]
    refused: list[RefusedPluginView]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def iso_or_none(ts: float | None) -> str | None:
    return iso(ts) if ts is not None else None


def key_info(rec: ServiceRecord) -> ApiKeyInfo | None:
    info = rec.outputs.get(API_KEY_OUTPUT)
    if not isinstance(info, dict):
        return None
    return {"fingerprint": str(info.get("fingerprint", "")), "createdAt": iso(float(info.get("createdAt", 0)))}


def service(rec: ServiceRecord) -> ServiceView:
    view: ServiceView = {
        "serviceId": rec.id,
        "modelName": rec.model_name,
        "state": rec.state,
        "reason": rec.reason,
        "currentStep": rec.current_step_name,
        "totalSteps": rec.total_steps,
        "shimlet": rec.shimlet,
        "pipeline": rec.pipeline,
        "resourceId": rec.resource_id,
        "endpoint": rec.endpoint,
        "replicas": {"ready": rec.replicas_ready, "desired": rec.replicas_desired},
        "spec": mask_private(redact(rec.spec), private_values(rec.outputs)),
        "operator": rec.operator,
        "createdAt": iso(rec.created_at),
        "updatedAt": iso(rec.updated_at),
    }
    key = key_info(rec)
    if key is not None:
        view["apiKey"] = key
    return view


def accepted(rec: ServiceRecord, api_key: str | None = None) -> AcceptedView:
    view: AcceptedView = {
        "serviceId": rec.id,
        "state": rec.state,
        "currentStep": rec.current_step_name,
        "totalSteps": rec.total_steps,
    }
    if api_key is not None:
        view["apiKey"] = api_key  # this once: only its hash is stored
    return view


def run(r: StepRun) -> RunView:
    return {
        "step": r.step,
        "attempt": r.attempt,
        "status": r.status,
        "startedAt": iso(r.started_at),
        "finishedAt": iso_or_none(r.finished_at),
        "durationMs": r.duration_ms,
        "error": r.error,
        "operator": r.operator,
        "params": redact(r.params),
    }


def log_line(x: StepLog) -> LogLineView:
    return {
        "ts": iso(x.ts),
        "step": x.step,
        "attempt": x.attempt,
        "level": x.level,
        "message": x.message,
        "fields": redact(x.fields),
    }


def event(e: Event) -> EventView:
    return {"ts": iso(e.ts), "from": e.from_state, "to": e.to_state, "reason": e.reason, "operator": e.operator}


def pipeline(rec: ServiceRecord, steps: list[StepSpec] | None, runs: list[StepRun]) -> PipelineView:
    by_step: dict[str, list[StepRun]] = {}
    for r in runs:
        by_step.setdefault(r.step, []).append(r)
    spec_by_name = {s.name: s for s in steps or []}
    out: list[StepView] = []
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
        "state": rec.state,
        "reason": rec.reason,
        "currentStep": rec.current_step_name,
        "totalSteps": rec.total_steps,
        "steps": out,
    }


def dry_run(res: DryRunResult) -> DryRunView:
    return {
        "serviceId": res.service_id,
        "dryRun": True,
        "currentStep": None,
        "totalSteps": res.total_steps,
        "stepsRun": [run(r) for r in res.steps_run],
        "logs": [log_line(x) for x in res.logs],
        "rendered": mask_private(redact(res.outputs), private_values(res.outputs)),
    }


# ------------------------------------------------------------------------------------ event streams
# ``GET /api/v1/events`` (JSON) and the Server-Sent Events of both event routes: the views above with
# the service's id.

ServiceEventView = TypedDict("ServiceEventView", {"serviceId": str, "ts": str, "from": str | None, "to": str,
                                                  "reason": str | None, "operator": str})


class ServiceRunView(RunView):
    serviceId: str


class ServiceLogLineView(LogLineView):
    serviceId: str


class ReplicaView(TypedDict):
    serviceId: str
    ts: str
    ready: int
    desired: int


def service_event(e: Event) -> ServiceEventView:
    return {"serviceId": e.service_id, **event(e)}


def _record(cls: type[Any], service_id: str, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(service_id=service_id, **{k: v for k, v in data.items() if k in names and k != "service_id"})


def journal_entry(e: JournalEntry, private: tuple[str, ...] = ()) -> dict[str, Any]:
    """A journal row as the data of its Server-Sent Event (``event:`` is ``e.kind``); ``private``: the
    service's private strings (already masked where the row was written; masked again here)."""
    view: ServiceEventView | ServiceRunView | ServiceLogLineView | ReplicaView
    if e.kind == JournalKind.STATE:
        view = service_event(_record(Event, e.service_id, e.data))
    elif e.kind == JournalKind.STEP:
        view = {"serviceId": e.service_id, **run(_record(StepRun, e.service_id, e.data))}
    elif e.kind == JournalKind.LOG:
        view = {"serviceId": e.service_id, **log_line(_record(StepLog, e.service_id, e.data))}
    else:
        view = {"serviceId": e.service_id, "ts": iso(e.ts), "ready": int(e.data.get("ready", 0)),
                "desired": int(e.data.get("desired", 0))}
    shown: dict[str, Any] = mask_private(dict(view), private)
    return shown
