"""Options of the local shimlet (``shimlets.local.options`` in the config file).

Every key, its type, default and meaning is declared once, in :class:`LocalOptions`;
docs/local.md shows the table :meth:`LocalOptions.markdown_table` makes of them.
Unknown keys and wrong types are refused (:class:`~modserv_shim.errors.ValidationFailed`),
so a typo in the config file is reported instead of silently ignored.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from modserv_shim.kit.options import RestartRuleOptions

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


class LocalOptions(RestartRuleOptions):
    """Every option of the local shimlet."""

    label: ClassVar[str] = "local shimlet"

    host: str = Field("127.0.0.1", description="interface the model servers listen on")
    advertise_host: str | None = Field(
        None, description="host in the endpoint URL; unset: `host`, or 127.0.0.1 when `host` is a wildcard")
    probe_interval: float = Field(
        0.005, gt=0, description="seconds between tries of a starting replica's port (a TCP connect, ~0.1 ms);"
        " once it listens, its ready path is asked at doubling intervals (at most 0.5 s) until it answers 200")
    probe_timeout: float = Field(2.0, gt=0, description="seconds one probe request may take")
    poll_interval: float = Field(
        0.5, gt=0, lt=1, description="seconds between exit polls where pidfds are unavailable (under 1 s)")

    @property
    def probe_host(self) -> str:
        """Where the shim itself reaches the servers."""
        return _WILDCARDS.get(self.host, self.host)

    @property
    def endpoint_host(self) -> str:
        return self.advertise_host or self.probe_host
