"""The command line of the brief and the configuration precedence."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modserv_shim.config import Settings
from tests.conftest import Live, fake_settings, free_port
from tests.helpers.api_flows import DEPLOY
from tests.helpers.shim_process import stop_process

CLI = [sys.executable, "-m", "modserv_shim.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, check=False)


def test_version() -> None:
    r = run_cli("--version")
    assert r.returncode == 0
    assert re.fullmatch(r"ModelServeShim v\d+\.\d+\.\d+\S* \(commit: ([0-9a-f]{7,}|unknown)\)\n", r.stdout)


def test_console_script_installed() -> None:
    exe = Path(sys.executable).parent / "model-serve-shim"
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.startswith("ModelServeShim v")


@pytest.mark.parametrize(("flag", "kind"), [("--shimlet=nope", "shimlet"), ("--pipeline=nope", "pipeline")])
def test_unknown_plugin_exits_2_listing_available(tmp_path: Path, flag: str, kind: str) -> None:
    r = run_cli("--port=0", flag, f"--data-dir={tmp_path}")
    assert r.returncode == 2
    assert f"unknown {kind} 'nope'; available:" in r.stderr
    assert ("local" if kind == "shimlet" else "opensourcellm") in r.stderr


def test_refuses_public_address_without_tokens(tmp_path: Path) -> None:
    r = run_cli("--host=0.0.0.0", "--port=0", f"--data-dir={tmp_path}")
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API tokens" in r.stderr


def test_bad_config_file_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: not-a-number\n")
    r = run_cli(f"--config={cfg}")
    assert r.returncode == 2 and "bad configuration" in r.stderr and "port" in r.stderr
    r = run_cli(f"--config={tmp_path / 'missing.yaml'}")
    assert r.returncode == 2 and "config file not found" in r.stderr


def test_precedence_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: 1111\nshimlet: from-file\npipeline: from-file\nhost: 127.0.0.2\n")
    monkeypatch.setenv("MODSERV_PORT", "2222")
    monkeypatch.setenv("MODSERV_SHIMLET", "from-env")
    s = Settings.load(cfg, port=3333)
    assert (s.port, s.shimlet, s.pipeline, s.host) == (3333, "from-env", "from-file", "127.0.0.2")
    s = Settings.load(cfg)
    assert s.port == 2222
    monkeypatch.delenv("MODSERV_PORT")
    assert Settings.load(cfg).port == 1111
    monkeypatch.delenv("MODSERV_SHIMLET")
    assert Settings.load(None).shimlet == "local" and Settings.load(None).pipeline == "opensourcellm"


def test_step_overrides_from_the_environment_name_steps_with_dashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config docstring's example: an environment variable cannot hold '-', so '_' stands for it."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pipelines:\n  opensourcellm:\n    steps:\n"
                   "      health-check: {timeout: 5, retry: {attempts: 2}}\n      model_validation: {timeout: 9}\n")
    monkeypatch.setenv("MODSERV_PIPELINES__OPENSOURCELLM__STEPS__HEALTH_CHECK__TIMEOUT", "1800")
    steps = Settings.load(cfg).pipelines["opensourcellm"].steps
    assert sorted(steps) == ["health-check", "model-validation"]
    assert steps["health-check"].timeout == 1800  # the environment wins over the file ...
    assert steps["health-check"].retry is not None and steps["health-check"].retry.attempts == 2  # ... field by field
    assert steps["model-validation"].timeout == 9


async def test_step_overrides_from_config_file(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pipelines:\n  fake:\n    steps:\n      deploy: {timeout: 0.2, retry: {attempts: 1}}\n")
    base = fake_settings(tmp_path)
    settings = Settings.load(cfg, data_dir=base.data_dir, shimlet="fake", pipeline="fake", port=base.port,
                             allowed_env=base.allowed_env)
    live: Live = await start_server(settings)
    spec = {**DEPLOY, "env": {"FAKE_SLEEP_DEPLOY": "5"}}
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=spec))["data"]["serviceId"]
    svc = await live.wait_state(sid, "failed")
    assert svc["reason"] == "deploy failed: step deploy did not finish within 0.2 s"
    pipe = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline"))["data"]
    deploy = pipe["steps"][1]
    assert deploy["timeout"] == 0.2 and deploy["retry"]["attempts"] == 1 and deploy["attempts"] == 1
    assert pipe["steps"][0]["retry"]["attempts"] == 3  # other steps keep their own policy


# --- broken config and tokens files: one line on stderr naming the file, status 2, no traceback


def assert_one_line_exit_2(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("model-serve-shim: "), r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize(("text", "needles"), [
    ("port: [1,\n", ("invalid YAML", "line 2, column 1")),
    ("port: 8080\nshimlet: local\n  pipeline: x\n", ("line 3, column 11", "mapping values are not allowed here")),
    ("- port: 8080\n", ("must be a YAML mapping (key: value lines), not a list",)),
    ("8080\n", ("must be a YAML mapping (key: value lines), not a single int value",)),
])
def test_broken_config_file_is_one_line_and_exit_2(tmp_path: Path, text: str, needles: tuple[str, ...]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    r = run_cli(f"--config={cfg}", f"--data-dir={tmp_path}")
    assert_one_line_exit_2(r, f"bad configuration: config file {cfg}", *needles)


def test_config_path_that_is_no_readable_file(tmp_path: Path) -> None:
    r = run_cli(f"--config={tmp_path}", f"--data-dir={tmp_path}")
    assert_one_line_exit_2(r, f"config file {tmp_path} is a directory, not a file")
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"port: 8080\nhost: \xff\n")
    with pytest.raises(ValueError, match=r"is not UTF-8 text \(bad byte at offset 17\)"):
        Settings.load(cfg)
    if os.geteuid() != 0:  # root reads anything
        cfg.write_text("port: 8080\n")
        cfg.chmod(0)
        with pytest.raises(ValueError, match=f"cannot read config file {re.escape(str(cfg))}: Permission denied"):
            Settings.load(cfg)


def test_bad_values_are_one_line_without_the_values(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: 99999\ntokens: [ada-admin-secret-0123456789]\nprt: 1\n")
    line = assert_one_line_exit_2(run_cli(f"--config={cfg}", f"--data-dir={tmp_path}"), "bad configuration: ")
    assert "port: Input should be less than or equal to 65535" in line
    assert "tokens: Input should be a valid string" in line and "prt: Extra inputs are not permitted" in line
    assert "ada-admin-secret" not in line


@pytest.mark.parametrize(("text", "needles"), [
    ("tokens: [a,\n", ("invalid YAML", "line 2, column 1")),
    ("- {name: a}\n", ("must be a YAML mapping",)),
    ("tokens: alice\n", ("tokens must be a list", "not str")),
    ("tokens:\n  - {name: a, role: admin, token: ada-admin-secret-0123456789}\n"
     "  - {name: b, role: viewer, token: ada-admin-secret-0123456789}\n",
     ("token 'b'", "has the same secret as token 'a'", "tokens[0]", "tokens[1]")),
])
def test_broken_tokens_file_is_one_line_and_exit_2(tmp_path: Path, text: str, needles: tuple[str, ...]) -> None:
    f = tmp_path / "tokens.yaml"
    f.write_text(text)
    line = assert_one_line_exit_2(run_cli(f"--tokens-file={f}", f"--data-dir={tmp_path}"),
                                  "model-serve-shim: cannot read API tokens: ", str(f), *needles)
    assert "ada-admin-secret" not in line


def test_missing_tokens_file_and_malformed_modserv_tokens(tmp_path: Path) -> None:
    r = run_cli(f"--tokens-file={tmp_path / 'nope.yaml'}", f"--data-dir={tmp_path}")
    assert_one_line_exit_2(r, f"cannot read API tokens: tokens file not found: {tmp_path / 'nope.yaml'}")
    r = run_cli(f"--data-dir={tmp_path}", env={"MODSERV_TOKENS": "ada:admin"})
    assert_one_line_exit_2(r, "cannot read API tokens: MODSERV_TOKENS entry 1 must look like name:role:token")
    f = tmp_path / "tokens.yaml"
    f.write_text("tokens:\n  - {name: vera, role: viewer, token: vera-viewer-secret-0123456789}\n")
    r = run_cli(f"--tokens-file={f}", f"--data-dir={tmp_path}",
                env={"MODSERV_TOKENS": "ada:admin:vera-viewer-secret-0123456789"})
    line = assert_one_line_exit_2(
        r, f"token 'ada' (MODSERV_TOKENS entry 1) has the same secret as token 'vera' ({f}: tokens[0])")
    assert "vera-viewer-secret" not in line


# --- IPv6 addresses: brackets in URLs, loopback without tokens


def test_listen_url_brackets_ipv6() -> None:
    from modserv_shim.cli import listen_url

    assert listen_url("::1", 8080) == "http://[::1]:8080"
    assert listen_url("[::1]", 8080, tls=True) == "https://[::1]:8080"
    assert listen_url("fe80::1%eth0", 80) == "http://[fe80::1%25eth0]:80"
    assert listen_url("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert listen_url("localhost", 443, tls=True) == "https://localhost:443"
    assert Settings.load(None, host="[::1]").host == "::1"


def test_banner_for_ipv6_loopback(tmp_path: Path) -> None:
    """``--host ::1`` is loopback (no tokens needed) and the banner's URL has brackets."""
    proc = subprocess.Popen([*CLI, "--host=::1", f"--port={free_port()}", f"--data-dir={tmp_path}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MODSERV_TOKENS": ""})
    try:
        assert proc.stderr is not None
        banner = ""  # printed before the server binds (IPv6 may be off on this machine)
        while "listening on" not in banner and (line := proc.stderr.readline()):
            banner = line
    finally:
        stop_process(proc)
    assert re.search(r" listening on http://\[::1\]:\d+ \(shimlet=local, pipeline=opensourcellm", banner), banner


def test_a_step_override_naming_no_step_stops_the_start(tmp_path: Path) -> None:
    """A typo in a step name used to be ignored silently: the operator believed the timeout applied."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pipelines:\n  opensourcellm:\n    steps:\n      health-chek:\n        timeout: 30\n")
    r = run_cli(f"--config={cfg}", "--port=0", f"--data-dir={tmp_path / 'data'}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "health-chek" in r.stderr
    for step in ("model-validation", "config-rendering", "resource-deployment", "health-check"):
        assert step in r.stderr
    env = {"MODSERV_PIPELINES__OPENSOURCELLM__STEPS__HEALTH_CHEK__TIMEOUT": "30"}
    r = run_cli("--port=0", f"--data-dir={tmp_path / 'data'}", env=env)
    assert r.returncode == 2 and "health-chek" in r.stderr
