"""What must outlive a restart of the shim: the replicas it gave up on.

The Engine keeps every container and its last exit, but not the shim's verdict: a
container the shim stopped restarting (``max_start_failures`` exits in a row before it
was ever ready) looks like any exited container.  Without a record, the next run of
the shim would adopt it and start it again, and its service would go from FAILED back
to PENDING.  So each verdict is written to ``<data_dir>/docker/given-up.json``::

    {"modserv-<service id>-0": {"id": "<container id>", "startedAt": "<State.StartedAt>",
                                "service": "<service id>", "replica": 0, "reason": "..."}}

A record holds for *that* container (its id: a new container of the same name is a
new deploy) as long as it has not run again since (its ``StartedAt``: somebody who
starts it by hand takes it back from the verdict).  Records go when the service is
retried (a new ``create``), when the container is removed by the shim, and at start
for containers that no longer exist.  The file is small and rewritten whole
(written to a temporary file, then renamed: a crash leaves the old or the new one).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Obj = dict[str, Any]
FILE = "given-up.json"


def _name(doc: Mapping[str, Any]) -> str:
    return str(doc.get("Name") or "").lstrip("/")


def _started(doc: Mapping[str, Any]) -> str:
    state = doc.get("State")
    return str((state or {}).get("StartedAt") or "") if isinstance(state, Mapping) else ""


class GivenUp:
    """The file of verdicts, loaded once and rewritten on every change (see the module docstring)."""

    def __init__(self, directory: Path | None) -> None:
        self.path = directory / FILE if directory is not None else None
        self._records: dict[str, Obj] = self._load()

    def _load(self) -> dict[str, Obj]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("docker shimlet: ignoring %s, which cannot be read: %s", self.path, exc)
            return {}
        return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(self._records, indent=1, sort_keys=True) + "\n")
        os.replace(partial, self.path)

    def record(self, doc: Mapping[str, Any], service: str, replica: int, reason: str) -> None:
        """The shim gave up on this container (in its current, ended run)."""
        self._records[_name(doc)] = {"id": str(doc.get("Id") or ""), "startedAt": _started(doc),
                                     "service": service, "replica": replica, "reason": reason}
        self._save()

    def reason_for(self, doc: Mapping[str, Any]) -> str | None:
        """The verdict on this container, if it still holds: same container, not run again since."""
        record = self._records.get(_name(doc))
        if record is None or record.get("id") != doc.get("Id") or record.get("startedAt") != _started(doc):
            return None
        return str(record.get("reason") or "") or None

    def drop(self, names: Iterable[str]) -> None:
        gone = [n for n in names if n in self._records]
        for name in gone:
            del self._records[name]
        if gone:
            self._save()

    def keep_only(self, names: Iterable[str]) -> None:
        """Forget the records of containers that no longer exist (removed while the shim was away)."""
        self.drop(set(self._records) - set(names))

    def __len__(self) -> int:
        return len(self._records)
