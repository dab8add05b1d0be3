"""A model volume for the k8s shimlet's tests on the simulator: the PersistentVolumeClaim "models" at /models,
a local folder standing in for it, and a job handler that runs the validation pod's command on that folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modserv_shim.modelinfo.__main__ import main as modelinfo_main
from tests.helpers.tiny_gguf import write_tiny_llama_gguf
from tests.k8s_sim import JobResult

VOLUME = {"type": "pvc", "claim_name": "models", "mount_path": "/models"}


def pvc_folder(tmp_path: Path) -> Path:
    """``tmp_path/pvc``, the content of the PVC "models" (what the pods see under /models): ``tiny.gguf``."""
    root = tmp_path / "pvc"
    root.mkdir()
    write_tiny_llama_gguf(root / "tiny.gguf")
    return root


def modelinfo_job(volume: Path, tmp_path: Path, seen: list[list[str]]) -> Callable[[dict[str, Any]], JobResult]:
    """A job handler that runs the pod's command against ``volume`` mounted at /models."""

    def handle(pod: dict[str, Any]) -> JobResult:
        container = pod["spec"]["containers"][0]
        command = list(container["command"])
        seen.append(command)
        assert command[:3] == ["python", "-m", "modserv_shim.modelinfo"]
        path, report = command[3], tmp_path / f"termination-{len(seen)}"
        local = volume / Path(path).relative_to("/models")
        code = modelinfo_main([str(local), "--termination-log", str(report)])
        message = report.read_text().replace(str(local), path)  # paths as the pod sees them
        return JobResult(succeeded=code == 0, message=message, exit_code=code)

    return handle
