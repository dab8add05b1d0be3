"""Image pulls from a real registry: progress in the deploy step's log, and a pull that cannot work.

A registry of our own (Debian's ``docker-registry`` package: ``docker-registry serve``) listens on
127.0.0.1:<free port> with its storage in a temporary directory; the Engine allows plain HTTP to
registries on 127.0.0.1.  An image made for the test (the tiny busybox root filesystem plus a few MB
of random bytes, so its layer is new to the Engine) is pushed there and removed locally; the default
pipeline's resource-deployment step then deploys it on the docker shimlet, with a
:class:`~modserv_shim.testing.pipeline_contract.ContractContext` as its step context, whose log the
pull's progress lines must reach (``DeployContext.log``).

Without the registry binary the tests are skipped, unless ``MODSERV_REQUIRE_DOCKER=1``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.errors import PermanentStepError
from modserv_shim.pipelines.opensourcellm.pipeline import RESOURCE_DEPLOYMENT, OpenSourceLLMPipeline
from modserv_shim.plugins import ResourcePhase
from modserv_shim.shimlets.docker import DockerShimlet
from modserv_shim.shimlets.docker.deploy import PullProgress
from modserv_shim.testing import make_deploy_spec, make_plugin_context
from modserv_shim.testing.pipeline_contract import ContractContext, ServiceState
from modserv_shim.testing.shimlet_contract import new_service_id, phase_is, wait_for_status
from tests.conftest import free_port
from tests.helpers import docker_images as di
from tests.helpers.docker_engine import ENV_REQUIRE, DockerEngine, docker_engine_fixture  # noqa: F401
from tests.helpers.docker_images import tiny_image_fixture  # noqa: F401
from tests.helpers.docker_shimlet import FAST, busybox_launch, model_file_fixture  # noqa: F401

BLOB_BYTES = 6 * 2**20


@contextlib.contextmanager
def running_registry(root: Path) -> Iterator[str]:
    """``docker-registry serve`` on 127.0.0.1:<free port>, storage under ``root``; yields ``127.0.0.1:port``."""
    binary = shutil.which("docker-registry")
    if binary is None:
        reason = "no registry: the docker-registry binary is not installed (Debian package docker-registry)"
        if os.environ.get(ENV_REQUIRE) == "1":
            pytest.fail(f"{reason} ({ENV_REQUIRE}=1)", pytrace=False)
        pytest.skip(reason)
    address = f"127.0.0.1:{free_port()}"
    (root / "storage").mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {root / 'storage'}\n  delete:\n    enabled: true\n"
                      f"http:\n  addr: {address}\n")
    with (root / "registry.log").open("wb") as out:
        proc = subprocess.Popen([binary, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://{address}/v2/", timeout=1) as r:
                if r.status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the registry did not come up: {(root / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("registry")
    try:
        with running_registry(root) as address:
            yield address
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pushed_image(engine: DockerEngine, registry: str, work: Path) -> str:
    """A new image in ``registry`` (busybox + random bytes: a layer the Engine has not got), absent locally."""
    ref = f"{registry}/modserv-test/pull:{secrets.token_hex(4)}"
    tar = di.tiny_tar(work / "rootfs.tar")
    with tarfile.open(tar, "a") as t:
        blob = tarfile.TarInfo("www/blob")
        blob.size = BLOB_BYTES
        t.addfile(blob, io.BytesIO(os.urandom(BLOB_BYTES)))
    engine.cli("import", "--change", "ENV PATH=/bin", "--change", 'CMD ["sh"]', str(tar), ref)
    tar.unlink()
    engine.cli("push", ref, timeout=300)
    engine.cli("rmi", ref)
    assert engine.cli("image", "inspect", ref, check=False).returncode != 0
    return ref



class Deploys:
    """The default pipeline's resource-deployment step on a docker shimlet, one ContractContext per run."""

    def __init__(self, shimlet: DockerShimlet, pipeline: OpenSourceLLMPipeline, data: Path, model_file: str) -> None:
        self.shimlet, self.pipeline, self.data, self.model_file = shimlet, pipeline, data, model_file

    async def run(self, image: str) -> tuple[ContractContext, ServiceState]:
        state = ServiceState(new_service_id("pull"), outputs={"launch": busybox_launch(image).to_dict()})
        step = next(s for s in self.pipeline.steps() if s.name == RESOURCE_DEPLOYMENT)
        ctx = ContractContext(state, make_deploy_spec("tiny", modelFile=self.model_file), self.shimlet, self.data)
        try:
            await self.pipeline.run_step(step, ctx)
        finally:
            self.last = ctx
        return ctx, state


@contextlib.asynccontextmanager
async def deploys(engine: DockerEngine, tmp_path: Path, model_file: str, **options: Any) -> Any:
    shimlet = DockerShimlet(make_plugin_context(tmp_path / "shim", "docker", {"host": engine.host, **FAST, **options}))
    pipeline = OpenSourceLLMPipeline(make_plugin_context(tmp_path / "pipe", "opensourcellm", {}))
    await pipeline.start()
    try:
        yield Deploys(shimlet, pipeline, tmp_path, model_file)
    finally:
        for rid in shimlet.resource_ids():
            await shimlet.delete(rid)
        await shimlet.close()
        await pipeline.close()


def messages(ctx: ContractContext) -> list[str]:
    return [message for _, message in ctx.lines]


@pytest.mark.parametrize("policy", ["missing", "always"])
async def test_pull_progress_reaches_the_step_log(docker_engine: DockerEngine, tiny_image: str, registry: str,
                                                  tmp_path: Path, model_file: str, policy: str) -> None:
    image = pushed_image(docker_engine, registry, tmp_path)
    try:
        async with deploys(docker_engine, tmp_path, model_file, pull=policy) as d:
            ctx, state = await d.run(image)
            lines = messages(ctx)
            assert lines[0] == f"pulling image {image} (pull: {policy})", lines
            layer = re.compile(rf"^pull {re.escape(image)}: layer [0-9a-f]{{12}}: (\w[\w ]*?)( [\d.]+ [kMG]?B of"
                               rf" [\d.]+ [kMG]?B)?$")
            states = [m.groups() for m in map(layer.match, lines) if m]
            assert ("Downloading" in {s for s, _ in states} and any(b for s, b in states if s == "Downloading")
                    and "Pull complete" in {s for s, _ in states}), lines
            assert any(re.match(rf"^pulled {re.escape(image)} in [\d.]+ s \(\d+ layer\(s\), [6-9]\.\d MB downloaded\)$",
                                line) for line in lines), lines
            assert len(lines) < 40, lines  # throttled: state changes, not every progress object
            assert lines[-1].startswith("workload created on docker"), lines  # the step's own line comes after
            assert state.resource_id is not None
            await wait_for_status(d.shimlet, state.resource_id, phase_is(ResourcePhase.READY, ready_replicas=1),
                                  timeout=30, interval=0.05, what="ready")
            # the image is there now: `missing` does not pull again, `always` does (and finds it up to date)
            again, _ = await d.run(image)
            pulled_again = [line for line in messages(again) if line.startswith(("pull", "pulled"))]
            assert bool(pulled_again) is (policy == "always"), messages(again)
    finally:
        docker_engine.cli("rmi", "-f", image, check=False)


async def test_pull_always_of_an_image_the_registry_lacks_fails_at_once(
        docker_engine: DockerEngine, tiny_image: str, registry: str, tmp_path: Path, model_file: str) -> None:
    image = f"{registry}/modserv-test/absent:{secrets.token_hex(4)}"
    async with deploys(docker_engine, tmp_path, model_file, pull="always") as d:
        begun = time.monotonic()
        with pytest.raises(PermanentStepError) as caught:
            await d.run(image)
        assert time.monotonic() - begun < 10
        text = str(caught.value)
        assert text.startswith(f"cannot pull the image {image}: the Docker Engine said:"), text
        assert "manifest unknown" in text, text  # the registry's words
        assert messages(d.last)[-1] == text  # in the step's log too
        status = await d.shimlet.status(d.last.service_id)
        assert status.phase == ResourcePhase.FAILED and status.reason == text


def test_progress_lines_are_throttled() -> None:
    """One line per layer state change; while a layer's state stays, at most one per 2 s (with bytes)."""
    now = [0.0]
    got: list[str] = []
    progress = PullProgress("r/x:1", got.append, clock=lambda: now[0])
    layer = "0123456789ab"
    progress.update({"status": "Pulling from x", "id": "1"})
    progress.update({"status": "Pulling fs layer", "id": layer})
    for i in range(1, 101):  # 100 progress objects over 6.25 s
        now[0] = i / 16
        progress.update({"status": "Downloading", "id": layer, "progressDetail": {"current": i * 10**6,
                                                                                   "total": 10**8}})
    progress.update({"status": "Download complete", "id": layer})
    progress.update({"status": "Digest: sha256:00", "id": ""})
    progress.update({"status": "Status: Downloaded newer image for r/x:1"})
    now[0] = 6.5
    progress.done()
    assert got == [
        "pull r/x:1: Pulling from x (1)",
        "pull r/x:1: layer 0123456789ab: Pulling fs layer",
        "pull r/x:1: layer 0123456789ab: Downloading 1.0 MB of 100.0 MB",
        "pull r/x:1: layer 0123456789ab: Downloading 33.0 MB of 100.0 MB",
        "pull r/x:1: layer 0123456789ab: Downloading 65.0 MB of 100.0 MB",
        "pull r/x:1: layer 0123456789ab: Downloading 97.0 MB of 100.0 MB",
        "pull r/x:1: layer 0123456789ab: Download complete",
        "pull r/x:1: Status: Downloaded newer image for r/x:1",
        "pulled r/x:1 in 6.5 s (1 layer(s), 100.0 MB downloaded)",
    ]
