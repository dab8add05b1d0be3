"""Plain records the core keeps: services, step runs, step logs, events.

They are what the store persists and what the REST layer renders; no ORM object
leaves the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from modserv_shim.core.lifecycle import State


def now() -> float:
    return time.time()


@dataclass
class ServiceRecord:
    id: str
    model_name: str
    spec: dict[str, Any]
    shimlet: str
    pipeline: str
    state: State
    total_steps: list[str]
    current_step: int = 0
    reason: str | None = None
    resource_id: str | None = None
    endpoint: str | None = None
    replicas_ready: int = 0
    replicas_desired: int = 0
    outputs: dict[str, Any] = field(default_factory=dict)
    operator: str = "anonymous"
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)

    @property
    def current_step_name(self) -> str | None:
        if 0 <= self.current_step < len(self.total_steps):
            return self.total_steps[self.current_step]
        return None


class RunStatus:
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the server died while it ran; it is run again


@dataclass
class StepRun:
    service_id: str
    step: str
    attempt: int
    status: str
    started_at: float
    operator: str
    params: dict[str, Any] = field(default_factory=dict)
    finished_at: float | None = None
    duration_ms: float | None = None
    error: str | None = None
    id: int | None = None


@dataclass
class StepLog:
    service_id: str
    step: str
    attempt: int
    ts: float
    level: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


@dataclass
class Event:
    service_id: str
    ts: float
    from_state: str | None
    to_state: str
    reason: str | None
    operator: str
    id: int | None = None


@dataclass
class PluginRecord:
    kind: str
    name: str
    file: str | None
    module: str | None
    attr: str
    operator: str
    loaded_at: float = field(default_factory=now)


class JournalKind:
    """What a journal entry reports (the ``event:`` of a Server-Sent Event)."""

    STATE = "state"  # a state change (or a same-state event: scaled, key rotated): an Event's fields
    STEP = "step"  # a step attempt started (status running) or ended: a StepRun's fields
    LOG = "log"  # a step's log line: a StepLog's fields
    REPLICA = "replica"  # the ready/desired replica count changed: {"ready", "desired"}


@dataclass
class JournalEntry:
    """One row of the journal: what the event streams send, in commit order (``id`` increases)."""

    id: int
    service_id: str
    ts: float
    kind: str
    data: dict[str, Any]
