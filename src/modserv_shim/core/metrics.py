"""Prometheus metrics of the control plane, on a registry of their own (one per server)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_STEP_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.deployments = Counter(
            "modserv_deployments", "Pipelines finished, by result (succeeded / failed).", ["result"], registry=r
        )
        self.transitions = Counter(
            "modserv_state_transitions", "Lifecycle transitions.", ["from_state", "to_state"], registry=r
        )
        self.services = Gauge("modserv_services", "Services by lifecycle state.", ["state"], registry=r)
        self.step_duration = Histogram(
            "modserv_step_duration_seconds", "Duration of one step attempt.",
            ["pipeline", "step", "outcome"], buckets=_STEP_BUCKETS, registry=r,
        )
        self.step_retries = Counter(
            "modserv_step_retries", "Step attempts that were retried.", ["pipeline", "step"], registry=r
        )
        self.pipeline_duration = Histogram(
            "modserv_pipeline_duration_seconds", "Time from accepted deploy to running or failed.",
            ["pipeline", "result"], buckets=_STEP_BUCKETS, registry=r,
        )
        self.replicas_ready = Gauge(
            "modserv_replicas_ready", "Ready replicas of a serving service.", ["service"], registry=r
        )
        self.replicas_desired = Gauge(
            "modserv_replicas_desired", "Desired replicas of a service.", ["service"], registry=r
        )

    def set_state_counts(self, counts: dict[str, int], states: list[str]) -> None:
        for s in states:
            self.services.labels(state=s).set(counts.get(s, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
