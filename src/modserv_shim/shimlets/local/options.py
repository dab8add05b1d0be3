"""Options of the local shimlet (``PluginContext.options``), with their defaults.

========================  ===========  ==================================================
key                       default      meaning
========================  ===========  ==================================================
``host``                  127.0.0.1    interface the servers listen on
``advertise_host``        (derived)    host put in the endpoint URL; defaults to ``host``,
                                       or 127.0.0.1 when ``host`` is a wildcard
``probe_interval``        0.005 s      how often a starting replica's port is tried; once it
                                       listens, its ready path is asked at 2x longer
                                       intervals (at most 0.5 s) until it answers 200
``probe_timeout``         2.0 s        timeout of one probe request
``poll_interval``         0.5 s        exit polling when pidfds are unavailable (< 1 s)
``restart_backoff``       1.0 s        first restart delay; doubles per consecutive crash
``restart_backoff_max``   60.0 s       cap of the restart delay
``stable_after``          60.0 s       a replica ready this long resets the backoff
``max_start_failures``    3            exits before ever becoming ready, in a row,
                                       before the resource is FAILED (no more restarts)
``stop_grace_period``     10.0 s       SIGTERM -> SIGKILL delay on delete / scale down
``reason_log_lines``      10           log lines quoted in FAILED / DEGRADED reasons
========================  ===========  ==================================================

Unknown keys are refused, so a typo in the config file is reported instead of
silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, cast

from modserv_shim.errors import ValidationFailed

_ACCEPTS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, type(None)),
    "float": (int, float),
    "int": (int,),
}
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True)
class LocalOptions:
    host: str = "127.0.0.1"
    advertise_host: str | None = None
    probe_interval: float = 0.005
    probe_timeout: float = 2.0
    poll_interval: float = 0.5
    restart_backoff: float = 1.0
    restart_backoff_max: float = 60.0
    stable_after: float = 60.0
    max_start_failures: int = 3
    stop_grace_period: float = 10.0
    reason_log_lines: int = 10

    def __post_init__(self) -> None:
        positive = ("probe_interval", "probe_timeout", "poll_interval", "max_start_failures")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValidationFailed(f"local shimlet option {name} must be > 0")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and value < 0:
                raise ValidationFailed(f"local shimlet option {f.name} must be >= 0")
        if self.poll_interval >= 1:
            raise ValidationFailed("local shimlet option poll_interval must be under 1 s")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> LocalOptions:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValidationFailed(f"unknown local shimlet option(s): {', '.join(unknown)}; known: {', '.join(known)}")
        values: dict[str, Any] = {}
        for key, value in options.items():
            kind = str(known[key].type)
            if isinstance(value, bool) or not isinstance(value, _ACCEPTS[kind]):
                raise ValidationFailed(f"local shimlet option {key} must be {kind}, got {value!r}")
            values[key] = float(cast(float, value)) if kind == "float" else value
        return cls(**values)

    @property
    def probe_host(self) -> str:
        """Where the shim itself reaches the servers."""
        return _WILDCARDS.get(self.host, self.host)

    @property
    def endpoint_host(self) -> str:
        return self.advertise_host or self.probe_host
