"""What the quant pipeline's tests share: settings and request bodies, the step's log, leftovers in the cache,
the quantizer processes, and a small real file system for the disk-full cases."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Live, fake_settings
from tests.helpers.local_shim import FAST_LOCAL

WORKER = "modserv_shim.pipelines.quant.worker"


def quant_settings(tmp_path: Path, cache: Path, **kw: Any):  # type: ignore[no-untyped-def]
    return fake_settings(tmp_path, shimlet="local", pipeline="opensourcellm", shimlets={"local": FAST_LOCAL},
                         pipelines={"quant": {"options": {"cache_dir": str(cache)}}}, **kw)


def quant_body(name: str, model: Path, quantization: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"modelName": name, "modelFile": str(model), "pipeline": "quant",
                            "resourceRequirements": {"cpu": "1", "memory": "2Gi"}}
    body.update(extra)
    if quantization is not None:
        body["quantization"] = quantization
    return body


async def logs_of(live: Live, sid: str) -> list[dict[str, Any]]:
    data = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline/logs"))["data"]
    return list(data["logs"])


async def messages(live: Live, sid: str) -> list[str]:
    return [x["message"] for x in await logs_of(live, sid)]


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob("*.partial")) if cache.exists() else []


def quantizers_of(parent: int) -> list[int]:
    """The quantizer child processes of ``parent`` (not the zombies)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            state, ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue
        if int(ppid) == parent and state not in ("Z", "X") and WORKER.encode() in cmd:
            found.append(int(d.name))
    return found


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (``2m``) at ``folder`` (tmpfs; needs the right to mount, else the test is
    skipped), unmounted at the end."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=False,
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
