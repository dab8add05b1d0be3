"""The command line of the brief and the configuration precedence."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modserv_shim.config import Settings
from tests.conftest import Live, fake_settings
from tests.test_api_flows import DEPLOY

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


async def test_step_overrides_from_config_file(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pipelines:\n  fake:\n    steps:\n      deploy: {timeout: 0.2, retry: {attempts: 1}}\n")
    base = fake_settings(tmp_path)
    settings = Settings.load(cfg, data_dir=base.data_dir, shimlet="fake", pipeline="fake", port=base.port)
    live: Live = await start_server(settings)
    spec = {**DEPLOY, "env": {"FAKE_SLEEP_DEPLOY": "5"}}
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=spec))["data"]["serviceId"]
    svc = await live.wait_state(sid, "failed")
    assert svc["reason"] == "deploy failed: step deploy did not finish within 0.2 s"
    pipe = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline"))["data"]
    deploy = pipe["steps"][1]
    assert deploy["timeout"] == 0.2 and deploy["retry"]["attempts"] == 1 and deploy["attempts"] == 1
    assert pipe["steps"][0]["retry"]["attempts"] == 3  # other steps keep their own policy
