"""Faults a test can inject into the simulated cluster.

* :class:`PodFault` -- what goes wrong for the pods matching a label selector: no capacity (the
  scheduler finds every node short of what the pod requests), a bad image (``ErrImagePull`` then
  ``ImagePullBackOff``), a crash loop (``CrashLoopBackOff`` with a growing ``restartCount`` and
  ``lastState.terminated``), an OOM kill (``OOMKilled``, exit code 137), a config error
  (``CreateContainerConfigError``) or a readiness probe that never passes.  Faults are looked up
  every time the simulated kubelet (re)starts a container, so removing one lets pods recover.
* :class:`ApiFault` -- the next ``count`` matching API requests (or a ``ratio`` of them) fail with
  ``status`` (500, 429 with ``Retry-After``, 503, ...), or have their TCP connection reset
  (``reset="before"``: nothing was done; ``reset="after"``: the request was carried out and its
  answer is lost, as when a connection breaks on the way back).

Watch faults (dropped connections, expired resourceVersions) are methods of the ``Sim`` object.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .selection import LabelSelector

__all__ = ["ApiFault", "FaultBook", "PodFault", "PodFaultKind"]


class PodFaultKind(StrEnum):
    NO_CAPACITY = "no_capacity"
    BAD_IMAGE = "bad_image"
    CRASH_LOOP = "crash_loop"
    OOM_KILLED = "oom_killed"
    CONFIG_ERROR = "config_error"
    NOT_READY = "not_ready"


@dataclass(frozen=True)
class PodFault:
    """A pod-level failure for pods matching ``selector`` (a label selector string; "" = all)."""

    kind: PodFaultKind
    selector: str = ""
    namespace: str | None = None
    message: str | None = None
    exit_code: int | None = None

    def matches(self, pod: dict[str, Any]) -> bool:
        meta = pod["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return LabelSelector.parse(self.selector).matches(meta.get("labels"))

    # Convenience constructors: ``PodFault.bad_image("app=llm")``.
    @classmethod
    def no_capacity(cls, selector: str = "", **kw: Any) -> PodFault:
        return cls(PodFaultKind.NO_CAPACITY, selector, **kw)

    @classmethod
    def bad_image(cls, selector: str = "", **kw: Any) -> PodFault:
        return cls(PodFaultKind.BAD_IMAGE, selector, **kw)

    @classmethod
    def crash_loop(cls, selector: str = "", **kw: Any) -> PodFault:
        return cls(PodFaultKind.CRASH_LOOP, selector, **kw)

    @classmethod
    def oom_killed(cls, selector: str = "", **kw: Any) -> PodFault:
        return cls(PodFaultKind.OOM_KILLED, selector, **kw)

    @classmethod
    def config_error(cls, selector: str = "", **kw: Any) -> PodFault:
        return cls(PodFaultKind.CONFIG_ERROR, selector, **kw)

    @classmethod
    def not_ready(cls, selector: str = "", **kw: Any) -> PodFault:
        return cls(PodFaultKind.NOT_READY, selector, **kw)


@dataclass(frozen=True)
class ApiFault:
    """Fail matching API requests with ``status``.

    ``count`` bounds how many requests fail (``None``: no bound); ``ratio`` is the share of
    matching requests that fail (drawn from the simulator's seeded random source).
    ``method`` (e.g. ``"PATCH"``) and ``path_contains`` (e.g. ``"/deployments"``) narrow the match;
    ``include_watch=False`` spares watch requests.

    ``reset`` replaces the answer by a TCP reset (RST) of the connection: ``"before"`` the request
    is handled (nothing changed) or ``"after"`` it (a write took effect; the client cannot know).
    A watch is always reset before it starts.
    """

    status: int = 500
    count: int | None = 1
    ratio: float = 1.0
    retry_after: int | None = None
    method: str | None = None
    path_contains: str | None = None
    include_watch: bool = True
    message: str | None = None
    reset: str | None = None  # None | "before" | "after"

    def __post_init__(self) -> None:
        if self.reset not in (None, "before", "after"):
            raise ValueError(f"ApiFault.reset must be None, 'before' or 'after', got {self.reset!r}")

    @property
    def label(self) -> str:
        """What the fault does, for counters: ``"500"``, ``"429"``, ``"reset-before"``, ..."""
        return f"reset-{self.reset}" if self.reset else str(self.status)

    def matches(self, method: str, path: str, is_watch: bool) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        if self.path_contains and self.path_contains not in path:
            return False
        return self.include_watch or not is_watch


@dataclass
class _ApiFaultState:
    fault: ApiFault
    remaining: int | None
    fired: int = 0


@dataclass
class FaultBook:
    """The active faults; thread-safe because tests add faults from their own thread."""

    rng: random.Random = field(default_factory=lambda: random.Random(0))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pod: dict[int, PodFault] = field(default_factory=dict)
    _api: dict[int, _ApiFaultState] = field(default_factory=dict)
    _next_id: int = 1
    fired: dict[str, int] = field(default_factory=dict)  # label -> firings so far (survives removal)

    def add(self, fault: PodFault | ApiFault) -> int:
        with self._lock:
            fid = self._next_id
            self._next_id += 1
            if isinstance(fault, PodFault):
                self._pod[fid] = fault
            else:
                self._api[fid] = _ApiFaultState(fault, fault.count)
            return fid

    def remove(self, fid: int) -> None:
        with self._lock:
            self._pod.pop(fid, None)
            self._api.pop(fid, None)

    def clear(self) -> None:
        with self._lock:
            self._pod.clear()
            self._api.clear()

    def fired_counts(self) -> dict[str, int]:
        """How many requests each kind of API fault has hit so far (``{"500": 12, "reset-after": 3}``)."""
        with self._lock:
            return dict(self.fired)

    def pod_fault(self, pod: dict[str, Any], *kinds: PodFaultKind) -> PodFault | None:
        """The most recently injected fault of one of ``kinds`` matching ``pod``."""
        with self._lock:
            faults = list(self._pod.values())
        for fault in reversed(faults):
            if fault.kind in kinds and fault.matches(pod):
                return fault
        return None

    def take_api_fault(self, method: str, path: str, is_watch: bool) -> ApiFault | None:
        """Consume one firing of the first matching API fault, if any fires for this request."""
        with self._lock:
            for fid, state in list(self._api.items()):
                if not state.fault.matches(method, path, is_watch):
                    continue
                if state.fault.ratio < 1.0 and self.rng.random() >= state.fault.ratio:
                    continue
                state.fired += 1
                self.fired[state.fault.label] = self.fired.get(state.fault.label, 0) + 1
                if state.remaining is not None:
                    state.remaining -= 1
                    if state.remaining <= 0:
                        del self._api[fid]
                return state.fault
        return None
