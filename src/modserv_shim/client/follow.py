"""Follow a service: its state changes, step attempts and pipeline log lines, as they happen.

:func:`follow` is the one entry point.  It asks ``GET /api/v1/modserv/{id}/events`` for
``text/event-stream``; a server that streams is read as Server-Sent Events (reconnecting with
``Last-Event-ID`` after a dropped connection); a server that answers the JSON list instead is
followed by polling: the events, the pipeline's attempts and log lines, and the service through
the ``waitFor`` long poll (a state change wakes it at once, a log line shows within ``poll`` s).

Either way it yields :class:`StateChange`, :class:`StepUpdate` and :class:`LogLine` in the order
they happened and ends with a :class:`Snapshot` of the service once it is in one of the ``until``
states, or raises :class:`FollowTimeout` at the deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modserv_shim.client.api import ApiClient, ClientError, StreamBroken

STATES = ("initializing", "pipeline_running", "deploying", "health_checking", "running",
          "degraded", "failed", "terminating", "terminated")
LIFECYCLE = ("initializing", "pipeline_running", "deploying", "health_checking", "running")
SETTLED = frozenset({"running", "degraded", "failed", "terminated"})  # a deploy's pipeline is over
LOG_PAGE = 10000  # the API's largest page of pipeline log lines


@dataclass(frozen=True)
class StateChange:
    ts: datetime
    from_state: str | None
    to: str
    reason: str | None
    operator: str


@dataclass(frozen=True)
class StepUpdate:
    ts: datetime
    step: str
    attempt: int
    status: str
    duration_ms: float | None
    error: str | None
    started: str = ""  # the attempt's startedAt: a retried pipeline numbers its attempts from 1 again


@dataclass(frozen=True)
class LogLine:
    ts: datetime
    step: str
    attempt: int
    level: str
    message: str


@dataclass(frozen=True)
class Snapshot:
    service: dict[str, Any]


Update = StateChange | StepUpdate | LogLine | Snapshot


class FollowTimeout(ClientError):
    def __init__(self, service: dict[str, Any], waited: float) -> None:
        super().__init__(f"{service.get('serviceId')} is still {service.get('state')} after {waited:.0f} s")
        self.service = service


@dataclass
class Cursor:
    """What has been shown already: a follow that starts from a cursor shows only what is newer."""

    events: int = 0
    logs: int = 0
    runs: dict[tuple[str, int, str], str] = field(default_factory=dict)  # (step, attempt, startedAt) -> status
    last_to: str | None = None  # the state the last event shown went to
    since: datetime | None = None  # an event stream that replays history: older state changes and lines are skipped
    last_ts: datetime | None = None  # when the last event shown happened
    pending: list[tuple[datetime, int, Update]] = field(default_factory=list)  # held back until events catch up

    @classmethod
    def now(cls, client: ApiClient, sid: str) -> Cursor:
        """Everything so far counts as shown (``retry --wait`` shows the retry only)."""
        events = client.events(sid)
        cur = cls(events=len(events), last_to=str(events[-1]["to"]) if events else None,
                  last_ts=parse_ts(events[-1].get("ts")) if events else None)
        logs = client.pipeline_logs(sid, limit=LOG_PAGE)
        cur.logs = len(logs.get("logs", []))
        cur.runs = {_run_key(r): str(r["status"]) for r in logs.get("runs", [])}
        stamps = [parse_ts(e.get("ts")) for e in events] + [parse_ts(x.get("ts")) for x in logs.get("logs", [])]
        cur.since = max(stamps, default=None)
        return cur


def parse_ts(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def state_change(e: dict[str, Any]) -> StateChange:
    return StateChange(parse_ts(e.get("ts")), e.get("from"), str(e.get("to")), e.get("reason"),
                       str(e.get("operator") or ""))


def step_update(r: dict[str, Any]) -> StepUpdate:
    return StepUpdate(parse_ts(r.get("finishedAt") or r.get("startedAt")), str(r.get("step")),
                      int(r.get("attempt") or 0), str(r.get("status")), r.get("durationMs"), r.get("error"),
                      str(r.get("startedAt") or ""))


def _run_key(r: dict[str, Any]) -> tuple[str, int, str]:
    return str(r.get("step")), int(r.get("attempt") or 0), str(r.get("startedAt") or "")


def log_line(x: dict[str, Any]) -> LogLine:
    return LogLine(parse_ts(x.get("ts")), str(x.get("step")), int(x.get("attempt") or 0),
                   str(x.get("level") or "info"), str(x.get("message") or ""))


def follow(client: ApiClient, sid: str, *, until: Iterable[str] = SETTLED, cursor: Cursor | None = None,
           timeout: float | None = None, poll: float = 0.5) -> Iterator[Update]:
    """Everything that happens to ``sid`` from ``cursor`` on, until it is in one of ``until`` (see the module)."""
    goal = frozenset(until)
    cur = cursor or Cursor()
    deadline = None if timeout is None else time.monotonic() + timeout
    last_id: str | None = None
    retry_s = 1.0
    while True:
        with client.event_stream(sid, last_id) as stream:
            if stream.events is not None:  # no event stream on this server: poll
                yield from _poll(client, sid, goal, cur, deadline, timeout, poll)
                return
            assert stream.lines is not None
            try:
                for ev in parse_sse(stream.lines):
                    if ev.id is not None:
                        last_id = ev.id
                    if ev.retry is not None:
                        retry_s = ev.retry / 1000
                    for update in _from_sse(ev, cur):
                        yield update
                        if isinstance(update, StateChange) and update.to in goal:
                            yield Snapshot(client.service(sid))
                            return
                    _check_deadline(client, sid, deadline, timeout)
            except StreamBroken:
                pass
        # The stream ended or broke: settled meanwhile? Otherwise reconnect where it stopped.
        svc = client.service(sid)
        if svc.get("state") in goal:
            yield Snapshot(svc)
            return
        _check_deadline(client, sid, deadline, timeout, svc)
        time.sleep(min(retry_s, 5.0))


def _check_deadline(client: ApiClient, sid: str, deadline: float | None, timeout: float | None,
                    svc: dict[str, Any] | None = None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise FollowTimeout(svc or client.service(sid), timeout or 0.0)


# ---------------------------------------------------------------------------------------- polling


def _poll(client: ApiClient, sid: str, goal: frozenset[str], cur: Cursor, deadline: float | None,
          timeout: float | None, poll: float) -> Iterator[Update]:
    while True:
        svc = yield from _drain(client, sid, cur)
        state = svc.get("state")
        if state in goal:
            # The store writes behind: the last event and attempt may land a moment after the state.
            settle = time.monotonic() + 2.0
            while cur.last_to != state and time.monotonic() < settle:
                time.sleep(0.05)
                yield from _drain(client, sid, cur)
            yield from _drain(client, sid, cur, flush=True)
            yield Snapshot(client.service(sid))
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise FollowTimeout(svc, timeout or 0.0)
        wait = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
        started = time.monotonic()
        woke = client.service(sid, wait_for=[s for s in STATES if s != state], timeout=round(wait, 3))
        if woke.get("state") == state and time.monotonic() - started < wait / 2:
            time.sleep(wait)  # an answer without waiting (a server without waitFor?): no busy loop


def _drain(client: ApiClient, sid: str, cur: Cursor, flush: bool = False
           ) -> Generator[Update, None, dict[str, Any]]:
    """Yield the updates newer than ``cur``, oldest first, and move ``cur``; return the service.

    Events, attempts and log lines are stored apart and written behind, in order.  The events are read
    first (what was written before them is then readable), then the attempts and lines, then the
    service; :func:`_ready` holds back what may still be missing something older."""
    events = client.events(sid)
    logs = client.pipeline_logs(sid, limit=LOG_PAGE)
    svc = client.service(sid)
    new: list[tuple[datetime, int, Update]] = []
    for e in events[cur.events:]:
        change = state_change(e)
        new.append((change.ts, 0, change))
        cur.last_to, cur.last_ts = change.to, change.ts
    cur.events = max(cur.events, len(events))
    for r in logs.get("runs", []):
        key = _run_key(r)
        if cur.runs.get(key) != r["status"]:
            cur.runs[key] = str(r["status"])
            upd = step_update(r)
            new.append((upd.ts, 2 if upd.status != "running" else 1, upd))
    lines = logs.get("logs", [])
    for x in lines[cur.logs:]:
        line = log_line(x)
        new.append((line.ts, 1, line))
    cur.logs = max(cur.logs, len(lines))
    cur.pending.extend(new)
    cur.pending.sort(key=lambda item: (item[0], item[1]))
    ready, cur.pending = _ready(cur, svc.get("state"), flush)
    for _, _, update in ready:
        yield update
    return svc


def _ready(cur: Cursor, state: Any, flush: bool) -> tuple[list[tuple[datetime, int, Update]],
                                                          list[tuple[datetime, int, Update]]]:
    """The pending updates that can be shown (oldest first) and those that wait.

    A step's log lines land with its attempt when it ends, so a state change newer than the start of
    an attempt still running waits for that attempt (steps run one at a time: the next phase begins
    after it).  A state change after the events were read shows in the service's ``state`` (read
    last): until the events catch up, what is newer than the last event waits.  ``flush``: all goes."""
    if flush:
        return cur.pending, []
    open_since = min((parse_ts(key[2]) for key, status in cur.runs.items() if status == "running"), default=None)
    lagging = cur.last_ts is not None and cur.last_to != state
    for i, (ts, prio, _) in enumerate(cur.pending):
        if prio == 0 and open_since is not None and ts > open_since:
            return cur.pending[:i], cur.pending[i:]
        if prio != 0 and lagging and cur.last_ts is not None and ts > cur.last_ts:
            return cur.pending[:i], cur.pending[i:]
    return cur.pending, []


# ---------------------------------------------------------------------------------------- SSE


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None
    retry: int | None


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Server-Sent Events (the WHATWG rules): ``field: value`` lines, a blank line ends an event, ``:``
    starts a comment, ``data`` lines join with newlines; ``id`` carries over to later events."""
    event, retry = "", None
    data: list[str] = []
    last_id: str | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event or "message", "\n".join(data), last_id, retry)
            event, data, retry = "", [], None
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isdigit():
            retry = int(value)
    if data:
        yield SseEvent(event or "message", "\n".join(data), last_id, retry)


_KINDS: dict[str, Callable[[dict[str, Any]], Update]] = {
    "state": state_change, "event": state_change, "transition": state_change,
    "step": step_update, "run": step_update, "attempt": step_update,
    "log": log_line, "line": log_line,
}


def _from_sse(ev: SseEvent, cur: Cursor) -> list[Update]:
    """The update an event carries: by its ``event`` name, or by the shape of its JSON ``data``."""
    try:
        data = json.loads(ev.data)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    make = _KINDS.get(ev.event)
    if make is None:
        if "to" in data:
            make = state_change
        elif "message" in data and "step" in data:
            make = log_line
        elif "step" in data and "status" in data:
            make = step_update
        else:
            return []  # a keep-alive, a snapshot, a kind this client does not know
    try:
        update = make(data)
    except (TypeError, ValueError):
        return []
    if isinstance(update, StateChange | LogLine) and cur.since is not None and update.ts <= cur.since:
        return []
    if isinstance(update, StepUpdate):
        key = (update.step, update.attempt, update.started)
        seen = cur.runs.get(key)
        # A stream sends an attempt's start (running) and its end: both are old news once it has ended.
        if seen == update.status or (seen is not None and seen != "running"):
            return []
        cur.runs[key] = update.status
    return [update]
