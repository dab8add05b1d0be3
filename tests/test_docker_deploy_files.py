"""deploy/docker: the Compose file that runs the shim next to Docker, and its configuration."""

from __future__ import annotations

from pathlib import Path

import yaml

from modserv_shim.config import Settings
from modserv_shim.shimlets.docker.options import DockerOptions

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "docker"


def test_the_configuration_is_valid_for_the_server_and_the_shimlet() -> None:
    data = yaml.safe_load((DEPLOY / "modserv.yaml").read_text())
    settings = Settings(**data)
    assert (settings.shimlet, settings.pipeline) == ("docker", "opensourcellm")
    options = DockerOptions.parse(settings.shimlets["docker"])
    assert options.network == "host" and options.host == "unix:///var/run/docker.sock"


def test_the_compose_file_runs_the_shim_with_the_socket_config_and_models() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    shim = compose["services"]["modserv-shim"]
    build = shim["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve().is_file()
    mounts = {v.split(":")[1]: v for v in shim["volumes"]}
    assert mounts["/var/run/docker.sock"].startswith("/var/run/docker.sock:")
    assert mounts["/etc/modserv/modserv.yaml"] == "./modserv.yaml:/etc/modserv/modserv.yaml:ro"
    models = next(v for v in shim["volumes"] if "MODELS_DIR" in v)
    assert models.endswith(":${MODELS_DIR}:ro"), "models must appear at the same path, read-only"
    assert "--config=/etc/modserv/modserv.yaml" in shim["command"]
    assert "--host=127.0.0.1" in shim["command"], "no API tokens are configured: loopback only"
    assert shim["network_mode"] == "host", "the shim probes model servers on 127.0.0.1"
    assert "modserv-data" in compose["volumes"]


def test_the_configuration_examples_in_docs_docker_md_are_valid() -> None:
    text = (DEPLOY.parent.parent / "docs" / "docker.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    assert len(blocks) >= 2
    for block in blocks:
        settings = Settings(**yaml.safe_load(block))
        DockerOptions.parse(settings.shimlets["docker"])
