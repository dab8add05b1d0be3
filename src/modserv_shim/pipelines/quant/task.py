"""model-quantization as a task on the model volume (a Kubernetes Job: see docs/pipelines.md).

``python -m modserv_shim.pipelines.quant.worker '{"src": ..., "cache": ..., ...}'``: the worker's
command, with a request that names the cache (paths as the pods see them).  Where the shim
cannot read the model volume, this program does there what the step does on the shim's host:

1. the input's SHA-256, remembered per path in ``<cache>/sources/`` while its size, mtime and
   inode stay the same (the memo the step keeps: a second deploy hashes nothing);
2. under the output's lock file (``flock``: two Jobs for the same model and type wait for each
   other), a **cache hit** when ``<sha256>.<TYPE>.gguf`` exists and reads as a GGUF model: no
   work, a short Job;
3. otherwise: removes a ``.partial`` file a killed Job left, checks the free space against the
   step's estimate (``need``), quantizes into ``<name>.partial`` (llama.cpp, in this process: the
   pod is the unit that gets killed), renames it (:func:`~modserv_shim.kit.files.publish`);
4. writes its report, one JSON line, to ``$MODSERV_TASK_REPORT`` (the pod's termination message):
   ``{"ok": true, "sha256": ..., "file": ..., "cached": false, "seconds": 1.6, "tensors": 272,
   "facts": {...}}`` or ``{"ok": false, "problem": "not_found" | "no_space" | "failed",
   "reason": "..."}``.  Exit code 0 with ``ok``, else 1.

Progress goes to stdout as the worker's events (``kubectl logs`` shows them; the shim does not
read them, which would need the ``pods/log`` permission).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from modserv_shim.kit.files import publish
from modserv_shim.modelinfo import ModelInvalid, inspect_model
from modserv_shim.modelinfo.facts import gib
from modserv_shim.pipelines.quant.cache import file_sha256
from modserv_shim.plugins import TASK_REPORT_ENV


class TaskFailed(Exception):
    def __init__(self, problem: str, reason: str) -> None:
        super().__init__(reason)
        self.problem = problem


def run(req: dict[str, Any]) -> dict[str, Any]:
    """Steps 1 to 3; the report of step 4 (raises :class:`TaskFailed` for a report with ``ok`` false)."""
    from modserv_shim.pipelines.quant.worker import quantize

    src, cache, kind = Path(req["src"]), Path(req["cache"]), str(req["type"])
    if not src.is_file():
        raise TaskFailed("not_found", f"{src} is not a file on the model volume")
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    sha = file_sha256(src, cache)
    hashed = time.monotonic() - t0
    final = cache / f"{sha}.{kind}.gguf"
    with (cache / f"{sha}.{kind}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another Job making the same file: wait for it
        done = _readable(final)
        if done is not None:
            return {"ok": True, "sha256": sha, "file": str(final), "cached": True, "hash_seconds": round(hashed, 3),
                    "facts": done}
        partial = final.with_name(final.name + ".partial")
        removed = partial.exists()
        partial.unlink(missing_ok=True)  # left by a Job that was killed
        need, free = int(req.get("need") or 0), shutil.disk_usage(cache).free
        if free < need:
            raise TaskFailed("no_space", f"not enough disk space for the quantized model in {cache}: {kind} needs"
                                         f" about {gib(need)}, {gib(free)} is free")
        try:
            reason, seconds = quantize(str(src), str(partial), int(req["ftype"]), bool(req["allow_requantize"]),
                                       int(req.get("threads") or 0))
            if reason is not None:
                problem = "no_space" if "No space left" in reason else "failed"
                raise TaskFailed(problem, reason)
            publish(partial, final)
        finally:
            partial.unlink(missing_ok=True)
        facts = _readable(final)
        if facts is None:
            raise TaskFailed("failed", f"llama.cpp wrote {final}, which does not read as a GGUF model")
        return {"ok": True, "sha256": sha, "file": str(final), "cached": False, "seconds": seconds,
                "hash_seconds": round(hashed, 3), "removed_partial": removed, "facts": facts}


def _readable(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return replace(inspect_model(path), path=str(path)).to_dict()
    except ModelInvalid:
        return None


def main(req: dict[str, Any]) -> int:
    """Run the task; its report to ``$MODSERV_TASK_REPORT`` (and stdout); 0 when it succeeded."""
    try:
        report = run(req)
    except TaskFailed as exc:
        report = {"ok": False, "problem": exc.problem, "reason": str(exc)}
    except Exception as exc:  # the report is the only way the shim learns what happened
        report = {"ok": False, "problem": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    line = json.dumps(report, separators=(",", ":"))
    target = os.environ.get(TASK_REPORT_ENV) or req.get("report")
    if target:
        Path(target).write_text(line + "\n")
    print(json.dumps({"event": "report", **report}), flush=True)
    return 0 if report["ok"] else 1
