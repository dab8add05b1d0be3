"""How the client shows things: tables, the live lifecycle of a deploy, the curl to try a service."""

from __future__ import annotations

import json
import shlex
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from modserv_shim.client.follow import LIFECYCLE, LogLine, Snapshot, StateChange, StepUpdate, Update, parse_ts

STATE_STYLE = {"running": "green", "degraded": "yellow", "failed": "red", "terminating": "magenta",
               "terminated": "dim"}
STATUS_STYLE = {"succeeded": "green", "failed": "red", "timed_out": "red", "cancelled": "yellow",
                "interrupted": "yellow", "running": "cyan", "pending": "dim"}


def console(*, err: bool = False) -> Console:
    """A console for stdout (or stderr); off a terminal it is wide, so ids and reasons stay on one line."""
    c = Console(stderr=err, highlight=False, soft_wrap=False)
    if not c.is_terminal:
        c = Console(stderr=err, highlight=False, soft_wrap=False, width=max(c.width, 240), no_color=True)
    return c


def styled(value: str | None, styles: dict[str, str]) -> Text:
    text = value or "-"
    return Text(text, style=styles.get(text, ""))


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def age(iso: str | None, now: datetime | None = None) -> str:
    if not iso:
        return "-"
    seconds = max(0.0, ((now or datetime.now(UTC)) - parse_ts(iso)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def table(*columns: str) -> Table:
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")
    return t


def services_table(services: list[dict[str, Any]]) -> Table:
    t = table("SERVICE", "MODEL", "STATE", "REPLICAS", "SHIMLET", "PIPELINE", "ENDPOINT", "AGE")
    for s in services:
        rep = s.get("replicas") or {}
        t.add_row(s.get("serviceId", ""), s.get("modelName", ""), styled(s.get("state"), STATE_STYLE),
                  f"{rep.get('ready', 0)}/{rep.get('desired', 0)}", s.get("shimlet", ""), s.get("pipeline", ""),
                  s.get("endpoint") or "-", age(s.get("createdAt")))
    return t


def service_view(s: dict[str, Any], pipeline: dict[str, Any] | None) -> RenderableType:
    rep = s.get("replicas") or {}
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column(overflow="fold")
    rows: list[tuple[str, str | Text]] = [
        ("service", s.get("serviceId", "")),
        ("model", s.get("modelName", "")),
        ("state", styled(s.get("state"), STATE_STYLE)),
        ("reason", s.get("reason") or "-"),
        ("current step", s.get("currentStep") or "-"),
        ("replicas", f"{rep.get('ready', 0)}/{rep.get('desired', 0)} ready"),
        ("endpoint", s.get("endpoint") or "-"),
        ("shimlet", s.get("shimlet", "")),
        ("pipeline", s.get("pipeline", "")),
        ("resource", s.get("resourceId") or "-"),
        ("operator", s.get("operator", "")),
        ("created", s.get("createdAt", "")),
        ("updated", s.get("updatedAt", "")),
    ]
    for key, value in rows:
        info.add_row(key, value)
    if not pipeline:
        return info
    return Group(info, Text(""), steps_table(pipeline.get("steps", [])))


def steps_table(steps: list[dict[str, Any]]) -> Table:
    t = table("STEP", "STATUS", "ATTEMPTS", "DURATION", "ERROR")
    t.columns[-1].overflow, t.columns[-1].no_wrap, t.columns[-1].max_width = "ellipsis", True, 100
    for st in steps:
        runs = st.get("runs") or []
        error = None if st.get("status") == "succeeded" else next(
            (r.get("error") for r in reversed(runs) if r.get("error")), None)
        t.add_row(st.get("name", ""), styled(st.get("status"), STATUS_STYLE), str(st.get("attempts", 0)),
                  ms(st.get("durationMs")) if st.get("attempts") else "-", error or "")
    return t


def events_table(events: list[dict[str, Any]]) -> Table:
    t = table("TIME", "FROM", "TO", "REASON", "OPERATOR")
    for e in events:
        t.add_row(e.get("ts", ""), e.get("from") or "-", styled(e.get("to"), STATE_STYLE), e.get("reason") or "",
                  e.get("operator") or "")
    return t


def plugins_table(data: dict[str, Any]) -> Table:
    t = table("KIND", "NAME", "SOURCE", "LOADED", "DETAILS")
    for kind, key in (("shimlet", "shimlets"), ("pipeline", "pipelines")):
        for p in data.get(key, []):
            if p.get("capabilities") is not None:
                details = "capabilities: " + (", ".join(p["capabilities"]) or "-")
            elif p.get("steps") is not None:
                details = "steps: " + " -> ".join(str(x.get("name")) for x in p["steps"])
            else:
                details = p.get("error") or ""
            name = p.get("name", "") + (" (default)" if p.get("default") else "")
            t.add_row(kind, name, p.get("source", ""), "yes" if p.get("loaded") else "no", details)
    for p in data.get("refused", []):
        t.add_row(p.get("kind", ""), p.get("name", ""), p.get("source", ""), Text("refused", style="red"),
                  p.get("error", ""))
    return t


def log_text(x: dict[str, Any]) -> str:
    return f"{x.get('ts', '')} {x.get('step', ''):<20} #{x.get('attempt', '')} {x.get('level', ''):<7} " \
           f"{x.get('message', '')}"


def run_text(r: dict[str, Any]) -> str:
    ts = r.get("finishedAt") or r.get("startedAt", "")
    text = f"{ts} {r.get('step', ''):<20} #{r.get('attempt', '')} {r.get('status', '')}" \
           f" {ms(r.get('durationMs'))} by {r.get('operator', '')}"
    return text + (f": {r['error']}" if r.get("error") else "")


def endpoint_base(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    return base[:-3] if base.endswith("/v1") else base


def curl_command(endpoint: str, model: str) -> str:
    """A chat completion for the service, ready to paste."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello! Who are you?"}]})
    return (f"curl {shlex.quote(endpoint_base(endpoint) + '/v1/chat/completions')}"
            f" -H 'Content-Type: application/json' -d {shlex.quote(body)}")


# ---------------------------------------------------------------------------------- deploy progress


@dataclass
class StepProgress:
    status: str = "pending"
    attempt: int = 0
    duration_ms: float | None = None
    started: float | None = None  # local monotonic time the attempt was seen running
    error: str | None = None


class DeployProgress:
    """The lifecycle and each step of one deploy, updated from :mod:`~modserv_shim.client.follow` updates;
    drawn live on a terminal (:meth:`__rich__`) or as one plain line per update (:meth:`line`)."""

    def __init__(self, sid: str, steps: list[str], start: datetime | None = None) -> None:
        self.sid = sid
        self.steps = {name: StepProgress() for name in steps}
        self.reached: dict[str, datetime] = {}
        self.state: str | None = None
        self.reason: str | None = None
        self.start = start
        self.recent: deque[str] = deque(maxlen=5)

    def elapsed(self, ts: datetime) -> float:
        if self.start is None:
            self.start = ts
        return max(0.0, (ts - self.start).total_seconds())

    def apply(self, update: Update) -> str | None:
        """Take an update in; the plain line that tells it (None for a snapshot)."""
        if isinstance(update, StateChange):
            self.state, self.reason = update.to, update.reason
            self.reached.setdefault(update.to, update.ts)
            why = f" ({update.reason})" if update.reason else ""
            return f"{self.elapsed(update.ts):7.2f}s state: {update.to}{why}"
        if isinstance(update, StepUpdate):
            st = self.steps.setdefault(update.step, StepProgress())
            st.status, st.attempt, st.error = update.status, update.attempt, update.error
            st.duration_ms = update.duration_ms
            st.started = time.monotonic() if update.status == "running" else st.started
            if update.status == "running":
                text = f"attempt {update.attempt} started"
            else:
                text = f"attempt {update.attempt} {update.status} in {ms(update.duration_ms)}"
                text += f": {update.error}" if update.error else ""
            return f"{self.elapsed(update.ts):7.2f}s     {update.step:<20} {text}"
        if isinstance(update, LogLine):
            self.recent.append(f"{update.step}: {update.message}")
            return f"{self.elapsed(update.ts):7.2f}s     {update.step:<20} {update.message}"
        if isinstance(update, Snapshot):
            self.state = str(update.service.get("state"))
            self.reason = update.service.get("reason")
        return None

    def lifecycle(self) -> Text:
        text = Text()
        path = list(LIFECYCLE)
        if self.state and self.state not in path:
            path.append(self.state)
        for i, name in enumerate(path):
            if i:
                text.append(" → ", style="dim")
            if name == self.state:
                style = STATE_STYLE.get(name, "bold cyan")
                mark = "✓" if name in ("running",) else "✗" if name == "failed" else "…"
                text.append(f"{name} {mark}", style=style if name in STATE_STYLE else "bold cyan")
            elif name in self.reached:
                text.append(f"{name} ✓", style="green")
            else:
                text.append(name, style="dim")
        return text

    def __rich__(self) -> RenderableType:
        t = table("STEP", "STATUS", "ATTEMPT", "DURATION")
        for name, st in self.steps.items():
            status: RenderableType = styled(st.status, STATUS_STYLE)
            duration = ms(st.duration_ms) if st.duration_ms is not None else "-"
            if st.status == "running":
                status = Spinner("dots", text=Text("running", style="cyan"))
                if st.started is not None:
                    duration = f"{time.monotonic() - st.started:.1f} s"
            t.add_row(name, status, str(st.attempt or "-"), duration)
        parts: list[RenderableType] = [Text(self.sid, style="bold"), self.lifecycle(), t]
        if self.recent:
            parts.append(Text("\n".join(self.recent), style="dim", overflow="ellipsis", no_wrap=True))
        return Group(*parts)
