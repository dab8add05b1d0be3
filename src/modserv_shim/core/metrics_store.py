"""Rebuild at start the metrics that must survive a restart, from what the store keeps.

* ``modserv_state_transitions_total`` and ``modserv_deploys_accepted_total``: the stored events (an
  accepted deploy is the event without a ``from_state``; events from a state to itself, such as a
  scale, are not transitions);
* ``modserv_deploys_finished_total``: the events that end a pipeline run (:func:`finished_result`);
* ``modserv_step_retries_total``: the stored step attempts after the first;
* ``modserv_services``: the services by state.

Each is labelled with the service's shimlet and pipeline (the services table).  Called once, on a
fresh :class:`~modserv_shim.core.metrics.Metrics`, before anything else counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from modserv_shim.core.lifecycle import State
from modserv_shim.core.metrics import Metrics, finished_result
from modserv_shim.core.store import Store
from modserv_shim.core.store import tables as t


@dataclass(frozen=True)
class StoredCounts:
    events: list[tuple[str, str, str | None, str, int]]  # shimlet, pipeline, from, to, count
    services: list[tuple[str, str, str, int]]  # shimlet, pipeline, state, count
    retries: list[tuple[str, str, str, int]]  # shimlet, pipeline, step, count


def _read(conn: Connection) -> StoredCounts:
    s, e, r = t.services, t.events, t.step_runs
    events = conn.execute(
        select(s.c.shimlet, s.c.pipeline, e.c.from_state, e.c.to_state, func.count())
        .select_from(e.join(s, s.c.id == e.c.service_id))
        .group_by(s.c.shimlet, s.c.pipeline, e.c.from_state, e.c.to_state)).all()
    services = conn.execute(
        select(s.c.shimlet, s.c.pipeline, s.c.state, func.count())
        .group_by(s.c.shimlet, s.c.pipeline, s.c.state)).all()
    retries = conn.execute(
        select(s.c.shimlet, s.c.pipeline, r.c.step, func.count())
        .select_from(r.join(s, s.c.id == r.c.service_id))
        .where(r.c.attempt > 1)
        .group_by(s.c.shimlet, s.c.pipeline, r.c.step)).all()
    return StoredCounts(
        [(str(a), str(b), None if c is None else str(c), str(d), int(n)) for a, b, c, d, n in events],
        [(str(a), str(b), str(c), int(n)) for a, b, c, n in services],
        [(str(a), str(b), str(c), int(n)) for a, b, c, n in retries])


async def rebuild_metrics(store: Store, metrics: Metrics) -> None:
    counts = await store.read_bulk(_read)
    states = {s.value: s for s in State}
    for shimlet, pipeline, old, new, n in counts.events:
        labels = {"shimlet": shimlet, "pipeline": pipeline}
        if old is None:
            metrics.deploys_accepted.labels(**labels).inc(n)
            metrics.transitions.labels(**labels, from_state="", to_state=new).inc(n)
            continue
        if old == new:
            continue
        metrics.transitions.labels(**labels, from_state=old, to_state=new).inc(n)
        if old in states and new in states:
            result = finished_result(states[old], states[new])
            if result is not None:
                metrics.deploys_finished.labels(**labels, result=result).inc(n)
    for shimlet, pipeline, state, n in counts.services:
        metrics.ensure_state_series(shimlet, pipeline)
        metrics.services.labels(shimlet=shimlet, pipeline=pipeline, state=state).set(n)
    for shimlet, pipeline, step, n in counts.retries:
        metrics.step_retries.labels(shimlet=shimlet, pipeline=pipeline, step=step).inc(n)
