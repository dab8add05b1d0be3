"""kill -9 of the shim mid-quantization (issue 11): the quantizer dies with it, no partial file survives the
restart, and the deploy completes.

The real server CLI in a child process (tests/helpers/shim_process.py) with the local shimlet; the real
SmolLM2 GGUF (Q4_1) re-quantized to Q4_K_M by llama.cpp.  The shim is killed while the quantizer's
``.partial`` file is being written; the core resumes the pipeline at the step in flight when the shim
starts again on the same data dir, and the step removes the leftover before it quantizes again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.helpers.local_shim import FAST_LOCAL, SMOLLM2, alive
from tests.helpers.quant import quantizers_of
from tests.helpers.shim_api import api, chat
from tests.helpers.shim_process import ShimProcess, kill_owned


@pytest.fixture
def shim(tmp_path: Path) -> Iterator[ShimProcess]:
    if not SMOLLM2.is_file():
        pytest.fail(f"{SMOLLM2} is missing: `make setup` puts it there", pytrace=False)
    config = tmp_path / "modserv.yaml"
    config.write_text(yaml.safe_dump({"shimlets": {"local": FAST_LOCAL},
                                      "pipelines": {"quant": {"options": {"cache_dir": str(tmp_path / "qcache")}}}}))
    data = tmp_path / "data"
    server = ShimProcess(data, tmp_path / "shim.log", free_port(), ["--shimlet=local", f"--config={config}"])
    try:
        yield server
    finally:
        server.stop()
        kill_owned(str(data))  # no model server outlives the test, whatever happened


@pytest.mark.timeout(600)
def test_kill_9_mid_quantization_then_restart_completes_the_deploy(shim: ShimProcess, tmp_path: Path) -> None:
    cache = tmp_path / "qcache"
    shim.start()
    sid = api(shim, "POST", "/deploy", expect=202, json={
        "modelName": "smol-crash", "modelFile": str(SMOLLM2), "pipeline": "quant",
        "quantization": {"type": "Q4_K_M", "allowRequantize": True},
        "resourceRequirements": {"cpu": "1", "memory": "2Gi"}})["serviceId"]

    assert shim.proc is not None
    server_pid = shim.proc.pid
    deadline = time.monotonic() + 120
    worker = None
    while worker is None and time.monotonic() < deadline:  # the quantizer runs and its partial file grows
        partial = list(cache.glob("*.Q4_K_M.gguf.partial"))
        pids = quantizers_of(server_pid)
        if partial and pids and partial[0].stat().st_size > 0:
            worker = pids[0]
            break
        time.sleep(0.005)
    assert worker is not None, f"the quantizer was not seen writing its partial file:\n{shim.tail()}"
    assert shim.kill9()
    left = sorted(p.name for p in cache.glob("*.partial"))
    assert left, "the shim was killed while the quantizer wrote: its partial file stays until the next attempt"
    assert not list(cache.glob("*.Q4_K_M.gguf")), "killed mid-file: no final file may exist"

    deadline = time.monotonic() + 10  # PR_SET_PDEATHSIG: the quantizer dies with the shim
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(worker), f"the quantizer {worker} outlived the shim"
    assert not quantizers_of(1) and not quantizers_of(server_pid)

    shim.start()  # the same data dir: the pipeline resumes at model-quantization
    svc = api(shim, "GET", f"/{sid}?waitFor=running&timeout=300", timeout=330)
    assert svc["state"] == "running", f"{svc['state']}: {svc['reason']}\n{shim.tail()}"
    assert not list(cache.glob("*.partial")), "a partial file survived the restart"
    [made] = cache.glob("*.Q4_K_M.gguf")
    runs = [(r["step"], r["status"]) for r in api(shim, "GET", f"/{sid}/pipeline/logs")["runs"]]
    assert runs[:3] == [("model-validation", "succeeded"), ("model-quantization", "interrupted"),
                        ("model-quantization", "succeeded")], runs
    text = [x["message"] for x in api(shim, "GET", f"/{sid}/pipeline/logs?step=model-quantization")["logs"]]
    assert any(m == f"removing {left[0]}, left by an attempt that did not finish" for m in text), text
    assert any(m.startswith("quantized 272/272 tensors to Q4_K_M") and str(made) in m for m in text), text
    assert "Paris" in chat(svc["endpoint"], "smol-crash")
    api(shim, "DELETE", f"/{sid}", expect=(200, 202))
    api(shim, "GET", f"/{sid}?waitFor=terminated&timeout=60", timeout=90)
    assert os.path.exists(made)
