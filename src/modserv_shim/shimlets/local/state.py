"""What the local shimlet remembers on disk, one JSON file per resource.

Layout under ``<data_dir>/local/``::

    <service_id>/state.json        this module's records
    <service_id>/replica-<i>.log   stdout + stderr of replica i

The state file is what lets a restarted shim find its model servers again
(pid + process start time, see :mod:`.procfs`) instead of loading every
model a second time.  It is rewritten atomically (write a temporary file,
``os.replace``) so a crash of the shim mid-write leaves the old or the new
version, never half of one.  It is not fsynced: what it is for, finding running
processes again, only matters while the machine stays up (after a power cut no
model server is left to adopt), and an fsync per status change would cost more
than the rest of a deploy's bookkeeping.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modserv_shim.plugins import LaunchSpec

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_FILE = "state.json"
RESOURCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def valid_resource_id(resource_id: str) -> bool:
    """Ids become directory names: letters, digits, ``.``, ``_``, ``-``; no path tricks."""
    return bool(RESOURCE_ID_RE.match(resource_id))


@dataclass
class ReplicaRecord:
    index: int
    port: int
    argv: list[str] = field(default_factory=list)
    pid: int | None = None
    start_time: int | None = None  # /proc/<pid>/stat field 22: identifies the process
    started_at: float | None = None  # wall clock, for people


@dataclass
class ResourceRecord:
    resource_id: str
    launch: LaunchSpec
    desired_replicas: int
    replicas: list[ReplicaRecord] = field(default_factory=list)
    was_ready: bool = False  # reached READY once: later outages are DEGRADED, not PENDING
    failed_reason: str | None = None  # set once the resource gave up (crash loop before ready)
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["launch"] = self.launch.to_dict()
        data["version"] = STATE_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResourceRecord:
        data = dict(data)
        data.pop("version", None)
        data["launch"] = LaunchSpec.from_dict(data["launch"])
        data["replicas"] = [ReplicaRecord(**r) for r in data.get("replicas", [])]
        return cls(**data)


class StateStore:
    """Reads and writes the per-resource directories under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def resource_dir(self, resource_id: str) -> Path:
        return self.root / resource_id

    def log_path(self, resource_id: str, index: int) -> Path:
        return self.resource_dir(resource_id) / f"replica-{index}.log"

    def save(self, record: ResourceRecord) -> None:
        directory = self.resource_dir(record.resource_id)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{STATE_FILE}.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(record.to_json(), f, indent=1, sort_keys=True)
        os.replace(tmp, directory / STATE_FILE)

    def load_all(self) -> list[ResourceRecord]:
        """Every readable record; unreadable ones are logged and skipped, never fatal."""
        records = []
        for path in sorted(self.root.glob(f"*/{STATE_FILE}")):
            try:
                records.append(ResourceRecord.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("local shimlet: ignoring unreadable state file %s: %s", path, exc)
        return records

    def remove(self, resource_id: str) -> None:
        """Forget a resource: its state file and its logs."""
        shutil.rmtree(self.resource_dir(resource_id), ignore_errors=True)
