"""The service lifecycle: states and the one table of allowed transitions.

::

    initializing -> pipeline_running -> deploying -> health_checking -> running
          \\______________\\__________________\\______________\\--> failed (reason kept)
    running <-> degraded          any live state -> terminating -> terminated
    failed -> (retry) the phase of the failed step

The phase while a pipeline runs follows the step in flight (each step
declares it).  Only :meth:`modserv_shim.core.states.ServiceStates.transition`
changes a state; it consults :func:`check_transition` first.
"""

from __future__ import annotations

from enum import StrEnum

from modserv_shim.errors import InternalError


class State(StrEnum):
    INITIALIZING = "initializing"
    PIPELINE_RUNNING = "pipeline_running"
    DEPLOYING = "deploying"
    HEALTH_CHECKING = "health_checking"
    RUNNING = "running"
    DEGRADED = "degraded"
    FAILED = "failed"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


S = State
PIPELINE_STATES = frozenset({S.INITIALIZING, S.PIPELINE_RUNNING, S.DEPLOYING, S.HEALTH_CHECKING})
SERVING_STATES = frozenset({S.RUNNING, S.DEGRADED})

TRANSITIONS: dict[State, frozenset[State]] = {
    S.INITIALIZING: frozenset({S.PIPELINE_RUNNING, S.DEPLOYING, S.HEALTH_CHECKING, S.FAILED, S.TERMINATING}),
    S.PIPELINE_RUNNING: frozenset({S.DEPLOYING, S.HEALTH_CHECKING, S.RUNNING, S.FAILED, S.TERMINATING}),
    S.DEPLOYING: frozenset({S.HEALTH_CHECKING, S.RUNNING, S.FAILED, S.TERMINATING}),
    S.HEALTH_CHECKING: frozenset({S.RUNNING, S.FAILED, S.TERMINATING}),
    S.RUNNING: frozenset({S.DEGRADED, S.FAILED, S.TERMINATING}),
    S.DEGRADED: frozenset({S.RUNNING, S.FAILED, S.TERMINATING}),
    S.FAILED: frozenset({S.PIPELINE_RUNNING, S.DEPLOYING, S.HEALTH_CHECKING, S.RUNNING, S.DEGRADED, S.TERMINATING}),
    S.TERMINATING: frozenset({S.TERMINATED}),
    S.TERMINATED: frozenset(),
}


def can_transition(src: State, dst: State) -> bool:
    return dst in TRANSITIONS[src]


def check_transition(src: State, dst: State) -> None:
    """Raise :class:`InternalError` for a transition the table forbids (a bug, not bad input)."""
    if not can_transition(src, dst):
        raise InternalError(f"illegal lifecycle transition {src.value} -> {dst.value}")
