"""Hostile deploys: every field that reaches a process, a container or a manifest, with values an
attacker holding the operator role would try.  None may run code, widen exposure or stall the server.

The server is real (local shimlet, opensourcellm pipeline, real HTTP); a canary file stands for
"code ran": every payload that could run a command would create it.  Each refused request must
answer 4xx in the envelope, name the offending field, store nothing and leave the server responsive.
Accepted-but-harmless values are checked through dry runs (what would be started) and one real
deploy (what was started: the process's arguments, environment and listening address).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Live
from tests.helpers.local_shim import deploy_body, local_settings, replica_pids, tiny_fixture  # noqa: F401

CANARY = "/tmp/modserv-hostile-canary"
SHELL = f"touch {CANARY}"

# (label, changes to a valid body, words the 4xx message must contain)
ENV_ROWS: list[tuple[str, dict[str, Any], str]] = [
    ("stdlib webbrowser via PYTHONWARNINGS", {"env": {"PYTHONWARNINGS": "::Warning:antigravity.x:0",
                                                     "BROWSER": f"/bin/sh -c '{SHELL}' %s"}}, "env.BROWSER"),
    ("PYTHONWARNINGS alone", {"env": {"PYTHONWARNINGS": "::Warning:antigravity.x:0"}}, "env.PYTHONWARNINGS"),
    ("iconv modules", {"env": {"GCONV_PATH": "/tmp"}}, "env.GCONV_PATH"),
    ("interactive inspect", {"env": {"PYTHONINSPECT": "1"}}, "env.PYTHONINSPECT"),
    ("preload", {"env": {"LD_PRELOAD": "/tmp/evil.so"}}, "env.LD_PRELOAD"),
    ("library path", {"env": {"LD_LIBRARY_PATH": "/tmp"}}, "env.LD_LIBRARY_PATH"),
    ("PATH", {"env": {"PATH": "/tmp"}}, "env.PATH"),
    ("PYTHONPATH", {"env": {"PYTHONPATH": "/tmp"}}, "env.PYTHONPATH"),
    ("PYTHONSTARTUP", {"env": {"PYTHONSTARTUP": "/tmp/x.py"}}, "env.PYTHONSTARTUP"),
    ("PYTHONHOME", {"env": {"PYTHONHOME": "/tmp"}}, "env.PYTHONHOME"),
    ("bash env", {"env": {"BASH_ENV": "/tmp/x.sh"}}, "env.BASH_ENV"),
    ("node options", {"env": {"NODE_OPTIONS": "--require /tmp/x.js"}}, "env.NODE_OPTIONS"),
    ("perl", {"env": {"PERL5OPT": "-Mx"}}, "env.PERL5OPT"),
    ("NCCL plugin", {"env": {"NCCL_NET_PLUGIN": "/tmp/x.so"}}, "env.NCCL_NET_PLUGIN"),
    ("vLLM plugins", {"runtime": "vllm", "env": {"VLLM_PLUGINS": "evil"}}, "env.VLLM_PLUGINS"),
    ("vLLM logging config", {"runtime": "vllm", "env": {"VLLM_LOGGING_CONFIG_PATH": "/tmp/x.json"}},
     "env.VLLM_LOGGING_CONFIG_PATH"),
    ("override the shim's offline switch", {"runtime": "vllm", "env": {"HF_HUB_OFFLINE": "0"}}, "the shim sets it"),
    ("the shim's own tokens", {"env": {"MODSERV_TOKENS": "x:admin:yyyyyyyyyyyyyyyyyyyy"}}, "env.MODSERV_TOKENS"),
    ("lower-case twin", {"env": {"browser": "sh"}}, "env.browser"),
    ("newline in a value", {"env": {"OMP_NUM_THREADS": "4\nBROWSER=sh"}}, "control characters"),
    ("NUL in a value", {"env": {"OMP_NUM_THREADS": "4\x00"}}, "control characters"),
    ("'=' in a name", {"env": {"A=B": "1"}}, "not a valid variable name"),
    ("empty name", {"env": {"": "1"}}, "not a valid variable name"),
    ("huge value", {"env": {"OMP_NUM_THREADS": "1" * 10_000}}, "at most 4096"),
    ("a body over the cap", {"env": {"OMP_NUM_THREADS": "1" * 100_000}}, "max_body_bytes"),
    ("too many", {"env": {f"V{i}": "1" for i in range(65)}}, "at most 64"),
]

ARG_ROWS: list[tuple[str, dict[str, Any], str]] = [
    ("listen everywhere", {"runtimeArgs": ["--host", "0.0.0.0"]}, "--host is not accepted"),
    ("listen everywhere, = form", {"runtimeArgs": ["--host=0.0.0.0"]}, "--host is not accepted"),
    ("another port", {"runtimeArgs": ["--port", "80"]}, "--port is not accepted"),
    ("another model", {"runtimeArgs": ["--model", "/etc/shadow"]}, "--model is not accepted"),
    ("an API key of the attacker's", {"runtimeArgs": ["--api_key", "mine"]}, "--api_key is not accepted"),
    ("a config file", {"runtimeArgs": ["--config_file", "/tmp/x.json"]}, "--config_file is not accepted"),
    ("a download", {"runtimeArgs": ["--hf_model_repo_id", "evil/model"]}, "--hf_model_repo_id is not accepted"),
    ("a LoRA file", {"runtimeArgs": ["--lora_path", "/tmp/x"]}, "--lora_path is not accepted"),
    ("short flag", {"runtimeArgs": ["-m", "/etc/shadow"]}, "not a flag"),
    ("positional", {"runtimeArgs": ["/etc/shadow"]}, "not a flag"),
    ("unknown flag", {"runtimeArgs": ["--whatever", "1"]}, "--whatever is not an argument the shim accepts"),
    ("shell in a number", {"runtimeArgs": ["--n_threads", f"$({SHELL})"]}, "takes a whole number"),
    ("shell after a number", {"runtimeArgs": ["--n_threads", "2; rm -rf /"]}, "takes a whole number"),
    ("huge number", {"runtimeArgs": ["--n_threads", "9" * 40]}, "takes a whole number"),
    ("out of range", {"runtimeArgs": ["--n_threads", "100000"]}, "from 1 to 1024"),
    ("path in a word", {"runtimeArgs": ["--chat_format", "../../etc/passwd"]}, "takes a short word"),
    ("a choice outside its set", {"runtimeArgs": ["--use_mmap", "maybe"]}, "takes one of"),
    ("trailing positional", {"runtimeArgs": ["--n_threads", "2", "x"]}, "not a flag"),
    ("remote code (vLLM)", {"runtime": "vllm", "runtimeArgs": ["--trust-remote-code"]},
     "--trust-remote-code is not accepted"),
    ("middleware (vLLM)", {"runtime": "vllm", "runtimeArgs": ["--middleware", "evil.mod"]},
     "--middleware is not accepted"),
    ("more GPUs than asked (vLLM)", {"runtime": "vllm", "runtimeArgs": ["--tensor-parallel-size", "8"]},
     "acceleratorCount"),
    ("chat template (SGLang)", {"runtime": "sglang", "runtimeArgs": ["--chat-template", "/tmp/x"]},
     "--chat-template is not accepted"),
    ("control character", {"runtimeArgs": ["--n_threads", "2\n"]}, "control characters"),
    ("too long", {"runtimeArgs": ["--chat_format", "x" * 1000]}, "1 to 512 characters"),
    ("too many", {"runtimeArgs": ["--verbose", "true"] * 40}, "at most 64"),
]

NAME_PATH_SIZE_ROWS: list[tuple[str, dict[str, Any], str]] = [
    ("shell in the name", {"modelName": f"x;{SHELL}"}, "modelName"),
    ("path in the name", {"modelName": "../../x"}, "modelName"),
    ("path in the shimlet", {"shimlet": "../../etc"}, "not a plugin name"),
    ("shell in the pipeline", {"pipeline": "x;y"}, "not a plugin name"),
    ("relative path", {"modelFile": "models/x.gguf"}, "absolute path"),
    ("dot-dot", {"modelFile": "/models/../etc/shadow"}, "must not contain '..'"),
    ("NUL in the path", {"modelFile": "/models/x\x00.gguf"}, "control characters"),
    ("newline in the path", {"modelFile": "/models/x\n--host=0.0.0.0"}, "control characters"),
    ("URL", {"modelFile": "file:///etc/passwd"}, "filesystem path"),
    ("huge path", {"modelFile": "/" + "x" * 5000}, "at most 4096"),
    ("outside the model roots", {"modelFile": "/etc/passwd"}, "outside the folders this server may serve"),
    ("replicas", {"replicaCount": 10**9}, "replicaCount"),
    ("context", {"contextLength": 10**12}, "contextLength"),
    ("health-check timeout", {"healthCheckTimeout": 1e308}, "healthCheckTimeout"),
    ("impossible memory", {"resourceRequirements": {"memory": "99999999999999Ei"}}, "memory must be"),
    ("huge memory string", {"resourceRequirements": {"memory": "9" * 10_000}}, "memory"),
    ("impossible cpu", {"resourceRequirements": {"cpu": "1e9"}}, "cpu must be"),
    ("label injection", {"resourceRequirements": {"acceleratorType": "H20,evil=1"}}, "acceleratorType"),
    ("string for a boolean", {"dryRun": "false"}, "dryRun"),
    ("number for a boolean", {"dryRun": 0}, "dryRun"),
    # privatellm's model source: where the shim downloads from (credentials only from the server's config)
    ("plain-HTTP source", {"modelSource": {"url": "http://models.example/x.gguf"}}, "must be an https:// URL"),
    ("file source", {"modelSource": {"url": "file:///etc/passwd"}}, "must be an https:// URL"),
    ("credentials in the source", {"modelSource": {"url": "https://u:p@models.example/x.gguf"}},
     "must not carry a user or password"),
    ("dot-dot in the source", {"modelSource": {"url": "https://models.example/a/../x.gguf"}}, "must not contain '..'"),
    ("huge source URL", {"modelSource": {"url": "https://models.example/" + "x" * 5000}}, "modelSource"),
    ("path out of the hub repo", {"modelSource": {"hub": {"endpoint": "https://hub.example", "repo": "a/b",
                                                          "files": ["../../etc/passwd"]}}}, "without '..'"),
    ("shell in the secret name", {"modelSource": {"url": "https://models.example/x.gguf", "secret": "a;rm -rf"}},
     "modelSource.secret"),
    ("a checksum that is no SHA-256", {"modelSource": {"url": "https://models.example/x.gguf",
                                                       "manifest": {"x.gguf": "zz"}}}, "SHA-256"),
    ("a source the pipeline would ignore", {"modelSource": {"url": "https://models.example/x.gguf"}},
     "does not use modelSource"),
    # quant's type: reaches the quantizer's arguments
    ("shell in the quantization type", {"quantization": {"type": f"Q4;{SHELL}"}}, "quantization.type"),
    ("huge quantization type", {"quantization": {"type": "Q" * 100}}, "quantization"),
    ("string for allowRequantize", {"quantization": {"type": "Q4_K_M", "allowRequantize": "yes"}},
     "allowRequantize"),
    ("a quantization the pipeline would ignore", {"quantization": {"type": "Q4_K_M"}}, "does not use quantization"),
]

ROWS = ENV_ROWS + ARG_ROWS + NAME_PATH_SIZE_ROWS


def code_ran() -> bool:
    return os.path.exists(CANARY)


def proc_strings(pid: int, name: str) -> list[str]:
    """``/proc/<pid>/<name>`` (cmdline, environ) split at NULs."""
    return Path(f"/proc/{pid}/{name}").read_bytes().decode().split("\0")


@pytest.fixture
async def hostile_server(start_server, tmp_path: Path, tiny: Path):  # type: ignore[no-untyped-def]
    """A real server whose model root is the tiny model's folder (model_roots is an admin setting)."""
    live: Live = await start_server(local_settings(tmp_path, model_roots=[str(tiny.parent)]))
    return live, tiny


@pytest.mark.parametrize("dry", [False, True], ids=["deploy", "dry-run"])
@pytest.mark.parametrize(("label", "changes", "words"), ROWS, ids=[r[0] for r in ROWS])
async def test_hostile_value_is_refused_and_nothing_runs(
    hostile_server: tuple[Live, Path], label: str, changes: dict[str, Any], words: str, dry: bool
) -> None:
    live, model = hostile_server
    if code_ran():
        os.unlink(CANARY)
    body = {**deploy_body("hostile", model), **changes, "dryRun": changes.get("dryRun", dry)}
    if "resourceRequirements" in changes:
        body["resourceRequirements"] = {**deploy_body("x", model)["resourceRequirements"],
                                        **changes["resourceRequirements"]}
    t0 = time.monotonic()
    r = await live.client.post("/api/v1/modserv/deploy", json=body)
    answered = time.monotonic() - t0
    assert r.status_code in (413, 422), (label, r.status_code, r.text[:500])
    envelope = r.json()
    assert envelope["code"] in (1001, 1007) and envelope["data"] is None, envelope
    assert words in envelope["message"], (label, envelope["message"][:500])
    assert len(envelope["message"]) < 4000, "a hostile value must not make a huge message"
    assert (await live.call("GET", "/api/v1/modserv"))["data"] == []  # nothing stored
    t0 = time.monotonic()
    await live.call("GET", "/healthz", expect=200)
    assert time.monotonic() - t0 < 1.0 and answered < 5.0, "the server stalled"
    await asyncio.sleep(0.05)  # a process started by mistake would have had time to act
    assert not code_ran(), f"{label}: code ran on the host"


async def test_allowed_values_reach_the_command_line(hostile_server: tuple[Live, Path]) -> None:
    """The other side of the allowlist: known variables and flags pass, and land where they belong."""
    live, model = hostile_server
    body = {**deploy_body("tame", model), "dryRun": True, "env": {"OMP_NUM_THREADS": "2", "TZ": "UTC"},
            "runtimeArgs": ["--n_threads", "2", "--use_mmap=false", "--chat_format", "chatml"]}
    rendered = (await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=200))["data"]["rendered"]
    command = rendered["workload"]["command"]
    assert command[-5:] == ["--n_threads", "2", "--use_mmap=false", "--chat_format", "chatml"], command
    assert "--host" in command and command[command.index("--host") + 1] == "127.0.0.1"
    assert set(rendered["launch"]["env"]) == {"OMP_NUM_THREADS", "TZ"}


async def test_admin_can_allow_more_names_and_flags(start_server, tmp_path: Path, tiny: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(local_settings(tmp_path, allowed_env=["FAKE_*", "ACME_*", "HF_TOKEN"],
                                                   allowed_runtime_args={"llama.cpp": ["--n_seq_max"]}))
    body = {**deploy_body("acme", tiny), "dryRun": True, "env": {"ACME_REGION": "eu", "HF_TOKEN": "hf_secret123"},
            "runtimeArgs": ["--n_seq_max", "4"]}
    r = await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=200)
    assert r["data"]["rendered"]["workload"]["command"][-2:] == ["--n_seq_max", "4"]
    assert "hf_secret123" not in str(r), "env values are masked in what the API shows"
    # the admin's list never reopens what the shim sets itself
    body["runtimeArgs"] = ["--host", "0.0.0.0"]
    r = await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=422)
    assert "--host is not accepted" in r["message"]


async def test_a_model_server_gets_no_secret_of_the_shim_and_listens_on_loopback(
    start_server, tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """A real llama.cpp server: its environment lacks the shim's MODSERV_* settings (tokens, database URL)
    and holds the request's allowed variables; it listens on 127.0.0.1 only."""
    monkeypatch.setenv("MODSERV_SECRET_PROBE", "s3cret-of-the-shim")
    live: Live = await start_server(local_settings(tmp_path))
    body = {**deploy_body("tame", tiny), "env": {"OMP_NUM_THREADS": "1"}, "runtimeArgs": ["--n_threads", "1"]}
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=202))["data"]["serviceId"]
    svc = await live.wait_state(sid, "running", "failed", timeout=120)
    assert svc["state"] == "running", svc["reason"]
    (pid,) = await replica_pids(live, sid)
    environ = dict(item.split("=", 1) for item in proc_strings(pid, "environ") if "=" in item)
    assert "MODSERV_SECRET_PROBE" not in environ and environ["OMP_NUM_THREADS"] == "1"
    argv = proc_strings(pid, "cmdline")
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv.count("--host") == 1
