"""Prometheus metrics of the control plane, on a registry of their own (one per server).

Every name follows the Prometheus conventions (base units, ``_total`` for counters, ``_seconds``,
``_bytes``, ``_ratio``); docs/metrics.md lists them all.  Three kinds of value:

* **counted as things happen** and **rebuilt from the store at start** (:mod:`.metrics_store`):
  deploys accepted and finished, state transitions, step retries, services by state.  A restart
  does not reset them: they equal what the store's events, step runs and services say.
* **counted as things happen, from zero at every start**: histograms (time to running, pipeline
  and step durations), HTTP requests, plugin loads, capacity refresh failures.
* **read at scrape time** from the live services and the last capacity readings
  (:class:`_LiveCollector`): replicas, the resources that live services request, the capacity
  shimlets report (:class:`~modserv_shim.core.capacity.CapacityMonitor` refreshes it in the
  background) and the used ratios.  Nothing to drift, nothing to rebuild.

The core imports no web framework: the HTTP metrics are defined here and recorded by a middleware
of the REST layer (``server/http_metrics.py``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from modserv_shim.core.lifecycle import PIPELINE_STATES, State
from modserv_shim.core.records import ServiceRecord, now
from modserv_shim.plugins import Capacity
from modserv_shim.spec import cpu_cores, memory_bytes

_STEP_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HOLDING_STATES = frozenset({State.DEPLOYING, State.HEALTH_CHECKING, State.RUNNING, State.DEGRADED})
"""States in which a service's workload holds (or is taking) what it requested."""

NO_ACCELERATOR = "none"


def finished_result(old: State, new: State) -> str | None:
    """How a transition ends a pipeline run: ``succeeded``, ``failed``, ``cancelled`` (deleted); None
    when it does not end one.  Used live and when the counts are rebuilt from the stored events."""
    if old not in PIPELINE_STATES:
        return None
    return {State.RUNNING: "succeeded", State.FAILED: "failed", State.TERMINATING: "cancelled"}.get(new)


def accelerator_type_label(name: str) -> str:
    """One spelling for an accelerator type, whoever names it: ``NVIDIA-H20`` (a node label value) and
    ``NVIDIA_H20`` are ``NVIDIA H20``, as a deploy's ``acceleratorType`` says it."""
    return " ".join(p for p in re.split(r"[\s_-]+", name.strip()) if p)


@dataclass(frozen=True)
class Requested:
    """What one service asks for, all replicas together."""

    accelerator_type: str
    accelerators: int
    cpu_cores: float
    memory_bytes: int


def requested(rec: ServiceRecord) -> Requested:
    """``spec.resourceRequirements`` times desired replicas; a quantity not given (or unreadable) counts 0."""
    rr: Mapping[str, Any] = (rec.spec or {}).get("resourceRequirements") or {}
    replicas = max(int(rec.replicas_desired or 0), 0)
    kind = rr.get("acceleratorType")
    label = accelerator_type_label(kind) if isinstance(kind, str) and kind.strip() else NO_ACCELERATOR
    count = int(rr.get("acceleratorCount") or (1 if label != NO_ACCELERATOR else 0))
    try:
        cpu = cpu_cores(str(rr["cpu"])) if rr.get("cpu") else 0.0
    except ValueError:
        cpu = 0.0
    try:
        memory = memory_bytes(str(rr["memory"])) if rr.get("memory") else 0
    except ValueError:
        memory = 0
    return Requested(label, count * replicas if label != NO_ACCELERATOR else 0, cpu * replicas, memory * replicas)


@dataclass(frozen=True)
class CapacityReading:
    capacity: Capacity
    at: float  # wall-clock time of the reading


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        sp = ["shimlet", "pipeline"]
        self.deploys_accepted = Counter(
            "modserv_deploys_accepted", "Deploys accepted (stored).", sp, registry=r)
        self.deploys_finished = Counter(
            "modserv_deploys_finished",
            "Pipeline runs that ended: succeeded (running), failed, cancelled (deleted while running).",
            [*sp, "result"], registry=r)
        self.time_to_running = Histogram(
            "modserv_deploy_time_to_running_seconds",
            "Time from the accepted deploy to running, observed when a pipeline run ends in running.",
            sp, buckets=_STEP_BUCKETS, registry=r)
        self.transitions = Counter(
            "modserv_state_transitions", "Lifecycle transitions (from_state is empty for an accepted deploy).",
            [*sp, "from_state", "to_state"], registry=r)
        self.services = Gauge("modserv_services", "Services by lifecycle state.", [*sp, "state"], registry=r)
        self.step_duration = Histogram(
            "modserv_step_duration_seconds", "Duration of one step attempt.",
            [*sp, "step", "outcome"], buckets=_STEP_BUCKETS, registry=r)
        self.step_retries = Counter(
            "modserv_step_retries", "Step attempts after the first (retries).", [*sp, "step"], registry=r)
        self.pipeline_duration = Histogram(
            "modserv_pipeline_duration_seconds", "Duration of a pipeline run, from its start to running or failed.",
            [*sp, "result"], buckets=_STEP_BUCKETS, registry=r)
        self.http_requests = Counter(
            "modserv_http_requests", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=r)
        self.http_duration = Histogram(
            "modserv_http_request_duration_seconds", "Time to answer an HTTP request, by route template and method.",
            ["route", "method"], buckets=_HTTP_BUCKETS, registry=r)
        self.plugin_loads = Counter(
            "modserv_plugin_loads", "Plugin loads (hot-loads and reloads at start), by kind and result.",
            ["kind", "result"], registry=r)
        self.capacity_refresh_errors = Counter(
            "modserv_capacity_refresh_errors", "Capacity readings of a shimlet that failed.", ["shimlet"], registry=r)
        for kind in ("shimlet", "pipeline"):
            for result in ("succeeded", "failed"):
                self.plugin_loads.labels(kind=kind, result=result)
        self.capacity: dict[str, CapacityReading] = {}
        self._live: Callable[[], Iterable[ServiceRecord]] = tuple
        r.register(_LiveCollector(self))

    # ------------------------------------------------------------ wiring

    def watch_services(self, live: Callable[[], Iterable[ServiceRecord]]) -> None:
        """Where the scrape reads the live services (``ServiceStates.live``)."""
        self._live = live

    def live_services(self) -> Iterable[ServiceRecord]:
        return self._live()

    def set_capacity(self, shimlet: str, capacity: Capacity) -> None:
        self.capacity[shimlet] = CapacityReading(capacity, time.time())

    # ------------------------------------------------------------ events

    def ensure_state_series(self, shimlet: str, pipeline: str) -> None:
        """Every state of a shimlet/pipeline pair shows, 0 when no service is in it."""
        for s in State:
            self.services.labels(shimlet=shimlet, pipeline=pipeline, state=s.value)

    def accepted(self, rec: ServiceRecord) -> None:
        labels = {"shimlet": rec.shimlet, "pipeline": rec.pipeline}
        self.ensure_state_series(rec.shimlet, rec.pipeline)
        self.deploys_accepted.labels(**labels).inc()
        self.transitions.labels(**labels, from_state="", to_state=rec.state.value).inc()
        self.services.labels(**labels, state=rec.state.value).inc()

    def transitioned(self, rec: ServiceRecord, old: State, new: State) -> None:
        labels = {"shimlet": rec.shimlet, "pipeline": rec.pipeline}
        self.transitions.labels(**labels, from_state=old.value, to_state=new.value).inc()
        self.services.labels(**labels, state=old.value).dec()
        self.services.labels(**labels, state=new.value).inc()
        result = finished_result(old, new)
        if result is not None:
            self.deploys_finished.labels(**labels, result=result).inc()
        if result == "succeeded":
            self.time_to_running.labels(**labels).observe(max(now() - rec.created_at, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


_CAPACITY_HELP = "What a shimlet's environment offers (the last background reading), host by host."


class _LiveCollector(Collector):
    """Gauges computed at scrape time from the live services and the last capacity readings."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self._requested_seen: set[tuple[str, str, str]] = set()  # series keep showing (0) once seen

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def _families(self) -> list[GaugeMetricFamily]:
        sp = ["shimlet", "pipeline"]
        g = GaugeMetricFamily
        return [
            g("modserv_replicas_ready", "Ready replicas of a live service.", labels=["service", *sp]),
            g("modserv_replicas_desired", "Desired replicas of a live service.", labels=["service", *sp]),
            g("modserv_requested_accelerators", "Accelerators requested by live services (all replicas).",
              labels=[*sp, "accelerator_type"]),
            g("modserv_requested_cpu_cores", "CPU cores requested by live services (all replicas).",
              labels=[*sp, "accelerator_type"]),
            g("modserv_requested_memory_bytes", "Memory requested by live services (all replicas).",
              labels=[*sp, "accelerator_type"]),
            g("modserv_capacity_cpu_cores", _CAPACITY_HELP, labels=["shimlet", "host"]),
            g("modserv_capacity_memory_bytes", _CAPACITY_HELP, labels=["shimlet", "host"]),
            g("modserv_capacity_accelerators", _CAPACITY_HELP, labels=["shimlet", "host", "accelerator_type"]),
            g("modserv_capacity_used_ratio", "Requested / capacity of a shimlet, for cpu and memory.",
              labels=["shimlet", "resource"]),
            g("modserv_accelerators_used_ratio", "Requested / capacity of a shimlet, by accelerator type.",
              labels=["shimlet", "accelerator_type"]),
            g("modserv_capacity_refresh_timestamp_seconds", "When the capacity of a shimlet was last read.",
              labels=["shimlet"]),
        ]

    def collect(self) -> Iterator[Metric]:
        (ready, desired, req_acc, req_cpu, req_mem, cap_cpu, cap_mem, cap_acc, used, acc_used,
         refreshed) = self._families()
        sums: dict[tuple[str, str, str], list[float]] = {k: [0.0, 0.0, 0.0] for k in self._requested_seen}
        for rec in self.m.live_services():
            if rec.state is State.TERMINATED:
                continue
            ready.add_metric([rec.id, rec.shimlet, rec.pipeline], rec.replicas_ready)
            desired.add_metric([rec.id, rec.shimlet, rec.pipeline], rec.replicas_desired)
            if rec.state not in HOLDING_STATES:
                continue
            want = requested(rec)
            key = (rec.shimlet, rec.pipeline, want.accelerator_type)
            self._requested_seen.add(key)
            acc = sums.setdefault(key, [0.0, 0.0, 0.0])
            acc[0] += want.accelerators
            acc[1] += want.cpu_cores
            acc[2] += want.memory_bytes
        by_shimlet: dict[str, list[float]] = {}
        acc_by_type: dict[tuple[str, str], float] = {}
        for (shimlet, pipeline, kind), (n, cpu, memory) in sorted(sums.items()):
            req_acc.add_metric([shimlet, pipeline, kind], n)
            req_cpu.add_metric([shimlet, pipeline, kind], cpu)
            req_mem.add_metric([shimlet, pipeline, kind], memory)
            total = by_shimlet.setdefault(shimlet, [0.0, 0.0])
            total[0] += cpu
            total[1] += memory
            if kind != NO_ACCELERATOR:
                acc_by_type[(shimlet, kind)] = acc_by_type.get((shimlet, kind), 0.0) + n
        for shimlet, reading in sorted(self.m.capacity.items()):
            cap = reading.capacity
            refreshed.add_metric([shimlet], reading.at)
            for host in cap.hosts:
                if host.cpu_cores is not None:
                    cap_cpu.add_metric([shimlet, host.host], host.cpu_cores)
                if host.memory_bytes is not None:
                    cap_mem.add_metric([shimlet, host.host], host.memory_bytes)
                for kind, n in sorted(host.accelerators.items()):
                    cap_acc.add_metric([shimlet, host.host, accelerator_type_label(kind)], n)
            total = by_shimlet.get(shimlet, [0.0, 0.0])
            if cap.cpu_cores:
                used.add_metric([shimlet, "cpu"], total[0] / cap.cpu_cores)
            if cap.memory_bytes:
                used.add_metric([shimlet, "memory"], total[1] / cap.memory_bytes)
            offered: dict[str, int] = {}
            for kind, n in cap.accelerators.items():
                label = accelerator_type_label(kind)
                offered[label] = offered.get(label, 0) + n
            for label, n in sorted(offered.items()):
                if n > 0:
                    acc_used.add_metric([shimlet, label], acc_by_type.get((shimlet, label), 0.0) / n)
        yield from (ready, desired, req_acc, req_cpu, req_mem, cap_cpu, cap_mem, cap_acc, used, acc_used, refreshed)
