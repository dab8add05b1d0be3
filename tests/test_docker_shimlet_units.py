"""The docker shimlet without an Engine: options, the create bodies, and how states read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.errors import PermanentStepError, ValidationFailed
from modserv_shim.plugins import DeployContext, LaunchSpec, ResourcePhase, runtime_program
from modserv_shim.shimlets.docker import DockerOptions, DockerShimlet, reasons, render
from modserv_shim.shimlets.docker.engine import demultiplex
from modserv_shim.shimlets.docker.keeper import Memory, unix_time
from modserv_shim.shimlets.docker.status import Track, summarize
from modserv_shim.testing import make_deploy_spec, make_plugin_context

DOC = Path(__file__).resolve().parent.parent / "docs" / "docker.md"


def launch(**fields: Any) -> LaunchSpec:
    base: dict[str, Any] = dict(
        runtime="llama.cpp", served_model_name="tiny", model_path="/models/tiny.gguf", local_command=(),
        args=("--host", "{host}", "--port", "{port}", "--model", "/models/tiny.gguf"), image="ghcr.io/x/llama:1",
        container_command=("llama-server",), container_port=8080, env={"HF_TOKEN": "s3cret", "A": "1"})
    base.update(fields)
    return LaunchSpec(**base)


def context(replicas: int = 1, **spec: Any) -> DeployContext:
    return DeployContext("tiny-1234", make_deploy_spec("tiny", replicas=replicas, **spec), launch(), replicas,
                         {"team": "ml"})


# ------------------------------------------------------------------ options


def test_the_docs_show_exactly_the_generated_tables() -> None:
    text = DOC.read_text()
    for table in (DockerOptions.markdown_table(), render_table()):
        assert text.count(table.splitlines()[2]) == 1
        assert f"\n\n{table}\n" in text or text.endswith(f"\n\n{table}")


def render_table() -> str:
    from modserv_shim.shimlets.docker import ImageChoice, ModelVolume

    return ModelVolume.markdown_table() + "\n" + ImageChoice.markdown_table()


@pytest.mark.parametrize(("options", "expected"), [
    ({"netwrok": "host"}, "unknown docker shimlet option(s): netwrok"),
    ({"pull": "sometimes"}, "pull must be one of"),
    ({"host": "/var/run/docker.sock"}, "host must be an Engine address"),
    ({"tls_cert": "/c.pem"}, "tls_cert and tls_key go together"),
    ({"port_range": [3, 1]}, "port_range must be [first, last]"),
    ({"shm_size": "lots"}, "shm_size must be a size"),
    ({"max_start_failures": 0}, "max_start_failures must be > 0"),
    ({"images": {"vllm": {"imag": "x"}}}, "imag is not a known key"),
    ({"model_volume": {"type": "volume"}}, "needs source"),
    ({"model_volume": {"source": "models"}}, "must be an absolute path"),
    ({"network": "no such"}, "must be `host` or the name of a Docker network"),
])
def test_bad_options_are_refused_in_words(options: dict[str, object], expected: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        DockerOptions.parse(options)
    assert expected in info.value.message


def test_images_and_programs(tmp_path: Path) -> None:
    opts = {"images": {"llama.cpp": {"image": "x/llama:1", "program": "llama-cpp-python"}, "vllm": "v/vllm:2"}}
    shimlet = DockerShimlet(make_plugin_context(tmp_path, "docker", opts))
    assert shimlet.programs == {"llama.cpp": "llama-cpp-python"}
    assert (shimlet.options.image_of("llama.cpp"), shimlet.options.image_of("vllm")) == ("x/llama:1", "v/vllm:2")
    assert shimlet.options.image_of("sglang") is None
    assert runtime_program(shimlet, "llama.cpp") == "llama-cpp-python"  # what the pipelines read
    assert runtime_program(shimlet, "vllm") is None


def test_engine_address_and_probe_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert DockerOptions.parse({}).engine_url == "unix:///var/run/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "tcp://gpu-1:2376")
    opts = DockerOptions.parse({"publish_host": "0.0.0.0"})
    assert (opts.engine_url, opts.probe_host) == ("tcp://gpu-1:2376", "gpu-1")
    assert DockerOptions.parse({"host": "unix:///x.sock", "publish_host": "10.0.0.5"}).probe_host == "10.0.0.5"


# ------------------------------------------------------------------ render


def test_host_network_body() -> None:
    ctx = context(resourceRequirements={"cpu": "500m", "memory": "2Gi"})
    body = render.create_body(ctx, 1, 31000, DockerOptions.parse({}))
    assert body["Image"] == "ghcr.io/x/llama:1"
    assert body["Entrypoint"] == ["llama-server"]
    assert body["Cmd"] == ["--host", "127.0.0.1", "--port", "31000", "--model", "/models/tiny.gguf"]
    assert body["Env"] == ["A=1", "HF_TOKEN=s3cret"]
    labels = body["Labels"]
    assert labels["team"] == "ml"
    assert {k: labels[k] for k in (render.MANAGED_BY, render.SERVICE_ID, render.REPLICA, render.MODEL,
                                   render.PORT)} == {render.MANAGED_BY: "modserv-shim",
                                                     render.SERVICE_ID: "tiny-1234", render.REPLICA: "1",
                                                     render.MODEL: "tiny", render.PORT: "31000"}
    host = body["HostConfig"]
    assert host["Init"] is True and host["NetworkMode"] == "host"
    assert (host["Memory"], host["NanoCpus"]) == (2 * 2**30, 500_000_000)
    assert host["Mounts"] == [{"Type": "bind", "Source": "/models/tiny.gguf", "Target": "/models/tiny.gguf",
                               "ReadOnly": True}]
    assert host["RestartPolicy"] == {"Name": "no"}
    assert "PortBindings" not in host and "ExposedPorts" not in body and "DeviceRequests" not in host
    assert render.container_name("tiny-1234", 1) == "modserv-tiny-1234-1"


def test_named_network_publishes_the_runtime_port() -> None:
    opts = DockerOptions.parse({"network": "models", "publish_host": "10.1.2.3", "restart": "on-failure",
                                "shm_size": "1Gi"})
    body = render.create_body(context(), 0, 31001, opts)
    assert body["Cmd"][:4] == ["--host", "0.0.0.0", "--port", "8080"]
    assert body["ExposedPorts"] == {"8080/tcp": {}}
    host = body["HostConfig"]
    assert host["NetworkMode"] == "models"
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "10.1.2.3", "HostPort": "31001"}]}
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert host["ShmSize"] == 2**30
    assert render.endpoint(opts, 31001) == "http://10.1.2.3:31001"


def test_gpus_become_device_requests() -> None:
    ctx = context(resourceRequirements={"acceleratorType": "NVIDIA L4", "acceleratorCount": 2})
    host = render.create_body(ctx, 0, 1, DockerOptions.parse({}))["HostConfig"]
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": 2, "Capabilities": [["gpu"]]}]
    cdi = DockerOptions.parse({"gpu_runtime": "cdi", "cdi_devices": ["nvidia.com/gpu=0"]})
    assert render.create_body(ctx, 0, 1, cdi)["HostConfig"]["DeviceRequests"] == [
        {"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=0"]}]


def test_model_volumes() -> None:
    ctx = context(modelFile="/srv/models/tiny.gguf")
    bind = DockerOptions.parse({"model_volume": {"source": "/srv/models"}})
    assert render.create_body(ctx, 0, 1, bind)["HostConfig"]["Mounts"] == [
        {"Type": "bind", "Source": "/srv/models", "Target": "/srv/models", "ReadOnly": True}]
    named = DockerOptions.parse({"model_volume": {"type": "volume", "source": "models", "target": "/srv"}})
    assert render.create_body(ctx, 0, 1, named)["HostConfig"]["Mounts"][0]["Type"] == "volume"
    elsewhere = DockerOptions.parse({"model_volume": {"source": "/data"}})
    with pytest.raises(PermanentStepError, match="not on the model volume"):
        render.create_body(ctx, 0, 1, elsewhere)


def test_no_image_is_a_permanent_error_naming_the_option() -> None:
    ctx = DeployContext("s", make_deploy_spec(), launch(image=""), 1)
    with pytest.raises(PermanentStepError, match=r"images\.llama\.cpp"):
        render.create_body(ctx, 0, 1, DockerOptions.parse({}))
    assert render.create_body(ctx, 0, 1, DockerOptions.parse({"images": {"llama.cpp": "mine:1"}}))["Image"] == "mine:1"


def test_dry_run_render_masks_env_and_leaves_ports_open(tmp_path: Path) -> None:
    shimlet = DockerShimlet(make_plugin_context(tmp_path, "docker", {}))
    out = shimlet.render(context(replicas=2))
    assert out["kind"] == "docker-containers"
    assert [c["name"] for c in out["containers"]] == ["modserv-tiny-1234-0", "modserv-tiny-1234-1"]
    assert out["containers"][0]["body"]["Labels"][render.PORT] == "{port}"
    shown = json.loads(out["json"])
    assert shown[0]["body"]["Env"] == ["A=***", "HF_TOKEN=***"]
    assert "s3cret" not in out["json"]


def test_a_container_tells_its_context_back() -> None:
    ctx = context(replicas=2)
    body = render.create_body(ctx, 0, 31000, DockerOptions.parse({}))
    doc = {"Config": {"Labels": body["Labels"], "Env": [*body["Env"], "PATH=/bin"]}}
    again = render.context_of(doc, 3)
    assert (again.service_id, again.replicas, again.spec, dict(again.launch.env)) == (
        "tiny-1234", 3, ctx.spec.model_copy(update={"env": {}}), {"A": "1", "HF_TOKEN": "s3cret"})
    assert render.create_body(again, 0, 31000, DockerOptions.parse({}))["Cmd"] == body["Cmd"]


# ------------------------------------------------------------------ reasons and status


STARTED = "2026-01-01T00:00:00.5Z"


def doc(index: int = 0, *, running: bool = True, started: str = STARTED, **state: Any) -> dict[str, Any]:
    st = {"Status": "running" if running else "exited", "Running": running, "StartedAt": started, **state}
    return {"Id": f"c{index}", "Name": f"/modserv-s-{index}", "State": st, "HostConfig": {"Memory": 32 * 2**20},
            "Config": {"Labels": {render.SERVICE_ID: "s", render.REPLICA: str(index), render.PORT: f"3100{index}"}}}


def test_exit_texts_keep_the_docker_terms() -> None:
    assert reasons.exit_text(doc(running=False, ExitCode=137, OOMKilled=True)).startswith(
        "was killed for running out of memory of its 32 MiB limit (OOMKilled, exit code 137)")
    assert reasons.exit_text(doc(running=False, ExitCode=137)) == "was killed by SIGKILL (exit code 137)"
    assert reasons.exit_text(doc(running=False, ExitCode=3)) == "exited with code 3"
    assert reasons.with_lines("exited", ["a", "b"]) == "exited. Last log lines:\n  a\n  b"


@pytest.mark.parametrize(("message", "words", "permanent"), [
    ("driver failed programming external connectivity: Bind for 127.0.0.1:31000 failed: port is already allocated",
     "host port 31000 is already in use", False),
    ('could not select device driver "nvidia" with capabilities: [[gpu]]',
     "cannot give GPUs to containers (could not select device driver", True),
    ("No such image: x/y:1", "the image x/y:1 is not on the Docker host", True),
    ('invalid mount config for type "bind": bind source path does not exist: /m', "probably the model", True),
    ("something else", "the Docker Engine refused: something else", False),
])
def test_engine_refusals_in_plain_words(message: str, words: str, permanent: bool) -> None:
    refusal = reasons.refusal(message, image="x/y:1", port=31000, what="replica 0 cannot be started")
    assert words in refusal.text and refusal.permanent is permanent


def test_status_phases() -> None:
    opts = DockerOptions.parse({})
    docs = [doc(0), doc(1)]
    mem = {0: Memory(0), 1: Memory(1)}
    track = Track(desired=2)
    st = summarize(docs, mem, track, opts)
    assert (st.phase, st.ready_replicas, st.endpoint) == (ResourcePhase.PENDING, 0, "http://127.0.0.1:31000")
    mem[0].ready_run = mem[1].ready_run = "2026-01-01T00:00:00.5Z"
    assert summarize(docs, mem, track, opts).phase is ResourcePhase.READY
    docs[1] = doc(1, running=False, ExitCode=137)
    mem[1].problem = "replica 1 was killed by SIGKILL (exit code 137); restarting in 1 s (restart 1)"
    st = summarize(docs, mem, track, opts)
    assert (st.phase, st.ready_replicas, st.reason) == (ResourcePhase.DEGRADED, 1, mem[1].problem)
    mem[1].failure = "replica 1 gave up"
    assert summarize(docs, mem, track, opts).phase is ResourcePhase.FAILED
    mem[1].failure = None
    assert summarize(docs, mem, track, opts).phase is ResourcePhase.FAILED  # latched until a new create


def test_adopted_containers_are_unknown_until_probed() -> None:
    mem = {0: Memory(0, adopted=True)}
    st = summarize([doc(0)], mem, Track(desired=1, was_ready=True), DockerOptions.parse({}))
    assert st.phase is ResourcePhase.UNKNOWN and "found running after a restart" in (st.reason or "")


def test_docker_restart_policy_restart_loop_is_failed() -> None:
    opts = DockerOptions.parse({"restart": "always", "max_start_failures": 2})
    d = doc(0, running=False, ExitCode=1, Restarting=True)
    d["RestartCount"] = 2
    st = summarize([d], {0: Memory(0)}, Track(desired=1), opts)
    assert st.phase is ResourcePhase.FAILED and "restart loop (RestartCount 2)" in (st.reason or "")


def test_small_helpers() -> None:
    assert unix_time("2026-01-01T00:00:00.25Z") == pytest.approx(1767225600.25)
    assert unix_time("0001-01-01T00:00:00Z") is None
    framed = b"\x01\x00\x00\x00\x00\x00\x00\x06hello\n\x02\x00\x00\x00\x00\x00\x00\x04bye\n"
    assert demultiplex(framed) == ["hello", "bye"]
    assert demultiplex(b"plain\r\ntext\n") == ["plain", "text"]


def test_a_container_gets_no_privileges_and_only_the_model_mount() -> None:
    """docs/docker.md "Security": nothing in a request can widen what a model container may do."""
    for options in ({}, {"network": "models", "shm_size": "1Gi", "restart": "on-failure"}):
        body = render.create_body(context(), 0, 31000, DockerOptions.parse(options))
        host = body["HostConfig"]
        for key in ("Privileged", "CapAdd", "PidMode", "IpcMode", "UsernsMode", "SecurityOpt", "Devices",
                    "Binds", "VolumesFrom", "Sysctls"):
            assert not host.get(key), f"{key} set to {host.get(key)!r}"
        assert [m["ReadOnly"] for m in host["Mounts"]] == [True]
