"""A model volume for the k8s shimlet's tests on the simulator: the PersistentVolumeClaim "models" at /models,
a local folder standing in for it, a job handler that runs the validation pod's command on that folder, and
the fixture ``k8s_server``: a server whose default shimlet is k8s on ``sim`` with that volume."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.config import Settings
from modserv_shim.modelinfo.__main__ import main as modelinfo_main
from tests.conftest import Live, free_port, serve
from tests.helpers.k8s_shimlet import options_for
from tests.helpers.tiny_gguf import write_tiny_llama_gguf
from tests.k8s_sim import JobResult, Sim

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


@pytest.fixture(name="k8s_server")
async def k8s_server_fixture(sim: Sim, tmp_path: Path) -> AsyncIterator[Live]:
    """A ModelServeShim server whose default shimlet is k8s on ``sim``, with the model volume ``VOLUME``."""
    options = options_for(sim, tmp_path, model_volume=VOLUME)
    settings = Settings.load(None, data_dir=tmp_path / "data", shimlet="k8s", pipeline="opensourcellm",
                             port=free_port(), poll_interval=0.05, shimlets={"k8s": options})
    live = await serve(settings)
    try:
        yield live
    finally:
        await live.stop(delete_services=True)
