"""GPU placement by product on the docker shimlet: the Engine's ``org.modserv-shim.gpu.product`` label.

A second ``dockerd`` of our own (tests/helpers/docker_engine.py's ``OwnDockerd``), labelled the way
an admin does it: ``labels`` in its daemon.json, reloaded with SIGHUP.  On it, an
``acceleratorType`` the label does not name fails at once naming what the host has; one it names
goes on to the device request (which this host, without the NVIDIA toolkit, refuses).  The
session's engine, unlabelled, keeps today's behaviour (tests/test_docker_shimlet.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modserv_shim.errors import PermanentStepError
from modserv_shim.plugins import ResourcePhase
from modserv_shim.shimlets.docker import DockerShimlet
from modserv_shim.shimlets.docker.placement import GPU_COUNT_LABEL, GPU_PRODUCT_LABEL, host_products, refusal
from modserv_shim.testing import make_plugin_context
from tests.helpers import docker_images as di
from tests.helpers.docker_engine import DockerEngine, OwnDockerd
from tests.helpers.docker_shimlet import FAST, context, model_file_fixture  # noqa: F401

PRODUCTS = "NVIDIA H20,NVIDIA L40S"


@pytest.fixture(scope="module")
def labelled_engine() -> Iterator[DockerEngine]:
    """Our own dockerd whose labels name two GPU products (stopped at the end of the module)."""
    if not shutil.which("dockerd") or os.geteuid() != 0:
        pytest.skip("a second Docker Engine needs dockerd and root")
    own = OwnDockerd.start()
    try:
        (own.root / "daemon.json").write_text(json.dumps({"labels": [f"{GPU_PRODUCT_LABEL}={PRODUCTS}"]}))
        own.proc.send_signal(signal.SIGHUP)  # dockerd reloads its labels from the config file
        deadline = time.monotonic() + 10
        while host_products(own.engine.api("GET", "/info")[1]) != PRODUCTS.split(","):
            assert time.monotonic() < deadline, f"dockerd did not reload its labels:\n{own.log_tail()}"
            time.sleep(0.05)
        di.build_tiny_image(own.engine)
        yield own.engine
    finally:
        own.stop()



async def test_a_gpu_the_host_does_not_name_fails_at_once(labelled_engine: DockerEngine, model_file: str,
                                                          tmp_path: Path) -> None:
    shimlet = DockerShimlet(make_plugin_context(tmp_path / "data", "docker",
                                                {"host": labelled_engine.host, "pull": "never", **FAST}))
    await shimlet.start()
    try:
        wrong = context(di.TINY_IMAGE, model_file, resourceRequirements={"acceleratorType": "NVIDIA L4",
                                                                         "acceleratorCount": 1})
        begun = time.monotonic()
        with pytest.raises(PermanentStepError) as info:
            await shimlet.create(wrong)
        took = time.monotonic() - begun
        assert took < 2, took
        assert f"has no NVIDIA L4 GPU: it has NVIDIA H20, NVIDIA L40S (Engine label {GPU_PRODUCT_LABEL})" in \
            info.value.message
        status = await shimlet.status(wrong.service_id)
        assert status.phase is ResourcePhase.FAILED and "has no NVIDIA L4 GPU" in (status.reason or "")
        assert labelled_engine.cli("ps", "-aq").stdout.strip() == ""  # nothing was created

        right = context(di.TINY_IMAGE, model_file, resourceRequirements={"acceleratorType": "nvidia-h20",
                                                                         "acceleratorCount": 1})
        with pytest.raises(PermanentStepError) as info:  # placed; then this host has no NVIDIA runtime
            await shimlet.create(right)
        assert "could not select device driver" in info.value.message
        await shimlet.delete(right.service_id)
        await shimlet.delete(wrong.service_id)
    finally:
        await shimlet.close()


def test_label_parsing_and_the_decision() -> None:
    info = {"Labels": ["foo=bar", f"{GPU_PRODUCT_LABEL}=NVIDIA H20, \"NVIDIA L4\"", f"{GPU_PRODUCT_LABEL}=NVIDIA H20"]}
    assert host_products(info) == ["NVIDIA H20", "NVIDIA L4"]
    assert host_products({"Labels": None}) == [] and host_products({}) == []
    assert refusal("NVIDIA_H20", ["NVIDIA H20"], "unix:///x") is None
    assert refusal("NVIDIA A100", [], "unix:///x") is None  # the host names nothing: no check
    assert refusal(None, ["NVIDIA H20"], "unix:///x") is None
    why = refusal("NVIDIA A100", ["NVIDIA H20", "NVIDIA L4"], "tcp://gpu-1:2376")
    assert why is not None and why.startswith("the Docker host at tcp://gpu-1:2376 has no NVIDIA A100 GPU: it has"
                                              " NVIDIA H20, NVIDIA L4")


def _meminfo_total() -> int:
    line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal:"))
    return int(line.split()[1]) * 1024


async def test_capacity_is_what_the_engine_reports_and_its_gpu_labels(tmp_path: Path) -> None:
    """``capacity()`` against a real Engine: its CPUs and memory (this host's: the Engine runs here), and
    the GPUs its labels name (one product and a count; two products with a count stay unknown)."""
    if not shutil.which("dockerd") or os.geteuid() != 0:
        pytest.skip("our own Docker Engine needs dockerd and root")
    own = OwnDockerd.start()
    try:
        shimlet = DockerShimlet(make_plugin_context(tmp_path / "data", "docker", {"host": own.engine.host, **FAST}))
        await shimlet.start()
        try:
            [host] = (await shimlet.capacity()).hosts
            assert host.cpu_cores == os.cpu_count()
            assert host.memory_bytes is not None and abs(host.memory_bytes - _meminfo_total()) < 0.01 * _meminfo_total()
            assert host.accelerators == {}  # the Engine names no GPU

            for labels, expected in (([f"{GPU_PRODUCT_LABEL}=NVIDIA H20", f"{GPU_COUNT_LABEL}=2"], {"NVIDIA H20": 2}),
                                     ([f"{GPU_PRODUCT_LABEL}={PRODUCTS}", f"{GPU_COUNT_LABEL}=4"], {})):
                (own.root / "daemon.json").write_text(json.dumps({"labels": labels}))
                own.proc.send_signal(signal.SIGHUP)  # dockerd reloads its labels from the config file
                deadline = time.monotonic() + 10
                while sorted(own.engine.api("GET", "/info")[1].get("Labels") or []) != sorted(labels):
                    assert time.monotonic() < deadline, f"dockerd did not reload its labels:\n{own.log_tail()}"
                    await asyncio.sleep(0.05)
                capacity = await shimlet.capacity()
                assert capacity.accelerators == expected, labels
        finally:
            await shimlet.close()
    finally:
        own.stop()
