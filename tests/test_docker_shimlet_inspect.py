"""The docker shimlet's inspect-model against a real Docker Engine: the real SmolLM2 GGUF read in a validation
container of ``modserv-test/modserv:1`` (tests/helpers/docker_validation_image.py), compared with
``modserv_shim.modelinfo.inspect_model`` run here; a missing model and an image without modserv_shim
are refused in words; no validation container is left behind.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.errors import PermanentStepError
from modserv_shim.modelinfo import inspect_model
from modserv_shim.plugins import ModelInspector
from modserv_shim.shimlets.docker import DockerShimlet
from modserv_shim.shimlets.docker.inspect import VALIDATION
from modserv_shim.testing import make_deploy_spec, make_plugin_context
from tests.helpers.docker_engine import DockerEngine, docker_engine_fixture  # noqa: F401
from tests.helpers.docker_images import REPO, llama_image_fixture, tiny_image_fixture  # noqa: F401
from tests.helpers.docker_validation_image import validation_image_fixture  # noqa: F401

MODEL = REPO / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason=f"{MODEL} is not there (make models)")


def leftovers(engine: DockerEngine) -> list[str]:
    return engine.cli("ps", "-aq", "--filter", f"label={VALIDATION}").stdout.split()


async def shimlet_with(engine: DockerEngine, tmp_path: Path, **options: Any) -> DockerShimlet:
    shimlet = DockerShimlet(make_plugin_context(tmp_path / "data", "docker",
                                                {"host": engine.host, "pull": "never", **options}))
    await shimlet.start()
    return shimlet


@pytest.fixture
async def in_container(docker_engine: DockerEngine, validation_image: str,
                       tmp_path: Path) -> AsyncIterator[DockerShimlet]:
    shimlet = await shimlet_with(docker_engine, tmp_path, model_validation="container",
                                 validation_image=validation_image)
    try:
        yield shimlet
    finally:
        await shimlet.close()


async def test_the_real_gguf_is_read_in_a_validation_container(in_container: DockerShimlet,
                                                               docker_engine: DockerEngine) -> None:
    assert isinstance(in_container, ModelInspector)
    begun = time.monotonic()
    facts = await in_container.inspect_model(make_deploy_spec("smollm2", modelFile=str(MODEL)))
    took = time.monotonic() - begun
    assert facts == inspect_model(MODEL).to_dict()
    assert facts["format"] == "gguf" and facts["path"] == str(MODEL)
    assert leftovers(docker_engine) == []
    print(f"\ninspect-model in a container: {took:.2f} s")


async def test_a_missing_model_is_not_found_on_the_docker_host(in_container: DockerShimlet,
                                                               docker_engine: DockerEngine, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "gone.gguf")  # a per-model bind: the Engine refuses the mount
    with pytest.raises(PermanentStepError) as info:
        await in_container.inspect_model(make_deploy_spec("gone", modelFile=missing))
    assert info.value.message.startswith(f"model not found on the Docker host: {missing} does not exist there")
    assert info.value.details["problem"] == "not_found"
    assert leftovers(docker_engine) == []


async def test_a_missing_file_in_the_model_volume_is_not_found(docker_engine: DockerEngine, validation_image: str,
                                                               tmp_path: Path) -> None:
    shimlet = await shimlet_with(docker_engine, tmp_path, model_validation="container",
                                 validation_image=validation_image,
                                 model_volume={"source": str(MODEL.parent), "target": "/models"})
    try:
        spec = make_deploy_spec("smollm2", modelFile=f"/models/{MODEL.name}")
        assert (await shimlet.inspect_model(spec))["parameter_count"] == inspect_model(MODEL).parameter_count
        with pytest.raises(PermanentStepError) as info:  # the folder is mounted; the checker finds no file
            await shimlet.inspect_model(make_deploy_spec("gone", modelFile="/models/gone.gguf"))
        assert info.value.message == ("model not found on the Docker host: /models/gone.gguf does not exist there"
                                      f" (checked in a validation container of {validation_image})")
        assert leftovers(docker_engine) == []
    finally:
        await shimlet.close()


async def test_an_image_without_modserv_shim_is_refused_clearly(docker_engine: DockerEngine, tiny_image: str,
                                                                tmp_path: Path) -> None:
    shimlet = await shimlet_with(docker_engine, tmp_path, model_validation="container", validation_image=tiny_image)
    try:
        with pytest.raises(PermanentStepError) as info:
            await shimlet.inspect_model(make_deploy_spec("smollm2", modelFile=str(MODEL)))
        assert "the model validation container cannot run" in info.value.message
        assert tiny_image in info.value.message and "executable file not found" in info.value.message
        assert leftovers(docker_engine) == []
    finally:
        await shimlet.close()


async def test_auto_reads_the_file_itself_when_the_engine_is_here(docker_engine: DockerEngine,
                                                                  tmp_path: Path) -> None:
    shimlet = await shimlet_with(docker_engine, tmp_path, validation_image="modserv-test/not-there:1")
    try:  # the image does not exist: a container would fail, so the file was read by the shim
        facts = await shimlet.inspect_model(make_deploy_spec("smollm2", modelFile=str(MODEL)))
        assert facts == inspect_model(MODEL).to_dict()
    finally:
        await shimlet.close()


def test_where_the_model_is_on_the_docker_host() -> None:
    from modserv_shim.shimlets.docker import DockerOptions
    from modserv_shim.shimlets.docker.inspect import host_path

    assert host_path("/srv/m/a.gguf", DockerOptions.parse({})) == "/srv/m/a.gguf"
    folder = DockerOptions.parse({"model_volume": {"source": "/srv/models", "target": "/models"}})
    assert host_path("/models/q/a.gguf", folder) == "/srv/models/q/a.gguf"
    named = DockerOptions.parse({"model_volume": {"type": "volume", "source": "models", "target": "/models"}})
    assert host_path("/models/a.gguf", named) is None


async def test_auto_with_a_local_engine_says_not_found_without_a_container(docker_engine: DockerEngine,
                                                                            tmp_path: Path) -> None:
    shimlet = await shimlet_with(docker_engine, tmp_path, validation_image="modserv-test/not-there:1")
    try:
        with pytest.raises(PermanentStepError) as info:
            await shimlet.inspect_model(make_deploy_spec("gone", modelFile=str(tmp_path / "gone.gguf")))
        assert info.value.message.startswith("model not found on the Docker host:")
        assert "the shim looked for" in info.value.message
    finally:
        await shimlet.close()
