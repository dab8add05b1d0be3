"""The child process that quantizes: ``python -m modserv_shim.pipelines.quant.worker REQUEST_JSON``.

Why a process of its own: ``llama_model_quantize`` is one C call that cannot be interrupted
from Python.  In a child, a cancelled step (a delete, a timeout) kills it at once, and it dies
with the shim (``PR_SET_PDEATHSIG``), instead of writing on for minutes in a thread nobody
can stop.  It writes only to the temporary name it is given; the pipeline renames the file
when this process has exited 0 (so a half file never carries the final name).

It reports on stdout, one JSON object a line:

* ``{"event": "start", "tensors": 272}`` once the model is open (from llama.cpp's log);
* ``{"event": "tensor", "done": 12, "total": 272}`` for each tensor written;
* ``{"event": "log", "level": "warning"|"error"|"info", "text": "..."}`` for llama.cpp's summary
  lines (sizes before and after, fallbacks) and its errors;
* ``{"event": "done", "seconds": 1.02}`` or ``{"event": "failed", "reason": "..."}`` last.

A request with ``"cache"`` is a task on the model volume instead (a Kubernetes Job, where no
shim is its parent): :mod:`.task` hashes the input, checks the cache, quantizes and reports.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import sys
import time
from typing import Any

TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")
LOADED_LINE = re.compile(r"loaded meta data with \d+ key-value pairs and (\d+) tensors")
KEPT_PREFIXES = ("llama_model_quantize_impl: model size", "llama_model_quantize_impl: quant size",
                 "llama_model_quantize_impl: WARNING", "llama_model_quantize: failed")
LEVELS = {3: "warning", 4: "error"}  # ggml_log_level: 2 info, 3 warn, 4 error, 5 continuation
PR_SET_PDEATHSIG = 1


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def die_with_parent(parent: int) -> None:
    """SIGKILL when the shim dies (Linux); if it is gone already, stop now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(3)


class LineLog:
    """llama.cpp logs a line in pieces (and from one thread): join them, then look at each line."""

    def __init__(self) -> None:
        self.buf = ""
        self.level = 2
        self.last_error = ""

    def feed(self, level: int, text: str) -> None:
        if level != 5:
            self.level = level
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self.line(line.rstrip())

    def line(self, line: str) -> None:
        if not line:
            return
        failed = line.find("failed to quantize")
        if failed >= 0:  # llama.cpp ends the tensor's line with the reason
            self.last_error = line[failed:]
            emit("log", level="error", text=self.last_error)
            return
        m = TENSOR_LINE.match(line)
        if m:
            emit("tensor", done=int(m.group(1)), total=int(m.group(2)))
            return
        m = LOADED_LINE.search(line)
        if m:
            emit("start", tensors=int(m.group(1)))
            return
        if line.startswith(KEPT_PREFIXES) or self.level == 4:
            level = "error" if self.level == 4 or "failed" in line else LEVELS.get(self.level, "info")
            if "WARNING" in line:
                level = "warning"
            if level == "error":
                self.last_error = line
            emit("log", level=level, text=line)


def main(argv: list[str]) -> int:
    req = json.loads(argv[1])
    if "cache" in req:  # a task on the model volume (a Kubernetes Job): see .task
        from modserv_shim.pipelines.quant.task import main as task_main

        return task_main(req)
    die_with_parent(int(req["parent"]))
    reason, seconds = quantize(req["src"], req["dst"], int(req["ftype"]), bool(req["allow_requantize"]),
                               int(req["threads"]))
    if reason is not None:
        emit("failed", reason=reason)
        return 1
    emit("done", seconds=seconds)
    return 0


def quantize(src: str, dst: str, ftype: int, allow_requantize: bool, threads: int) -> tuple[str | None, float]:
    """``llama_model_quantize(src -> dst)``, its progress as events on stdout, ``dst`` synced to disk;
    ``(None, seconds)``, or ``(reason, seconds)`` when llama.cpp failed."""
    import llama_cpp  # loading the library takes a moment

    log = LineLog()

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        log.feed(int(level), text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = allow_requantize
    params.nthread = threads
    t0 = time.monotonic()
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    log.feed(2, "\n")
    if rc != 0:
        return log.last_error or f"llama_model_quantize returned {rc}", round(time.monotonic() - t0, 3)
    fd = os.open(dst, os.O_RDONLY)  # on disk before the pipeline renames it
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return None, round(time.monotonic() - t0, 3)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
