"""Tokens and roles on the API; the token name is the operator in step logs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx

from tests.conftest import Live, fake_settings
from tests.test_api_flows import DEPLOY

VIEW = "viewer-token-0123456789"
OPER = "operator-token-0123456789"
ADMIN = "admin-token-0123456789"


def token_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    f = tmp_path / "tokens.yaml"
    f.write_text(
        "tokens:\n"
        f"  - {{name: vera, role: viewer, token: {VIEW}}}\n"
        f"  - {{name: otto, role: operator, token_sha256: {hashlib.sha256(OPER.encode()).hexdigest()}}}\n"
    )
    return fake_settings(tmp_path, tokens_file=f, tokens=f"ada:admin:{ADMIN}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_roles_are_enforced(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server(token_settings(tmp_path))
    r = await live.call("GET", "/api/v1/modserv", expect=401)
    assert r["code"] == 1401 and "Bearer" in r["message"]
    r = await live.call("GET", "/api/v1/modserv", expect=401, headers=bearer("wrong-token-0123456789"))
    assert r["message"] == "unknown API token"
    await live.call("GET", "/api/v1/modserv", expect=200, headers=bearer(VIEW))
    r = await live.call("POST", "/api/v1/modserv/deploy", json=DEPLOY, expect=403, headers=bearer(VIEW))
    assert r["code"] == 1403 and r["message"] == "deploying needs the operator role; vera has viewer"
    assert (await live.call("GET", "/api/v1/modserv", headers=bearer(VIEW)))["data"] == []

    r = await live.call("POST", "/api/v1/modserv/deploy", json=DEPLOY, expect=202, headers=bearer(OPER))
    sid = r["data"]["serviceId"]
    live.client.headers.update(bearer(VIEW))
    svc = await live.wait_state(sid, "running")
    assert svc["operator"] == "otto"
    runs = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline/logs"))["data"]["runs"]
    assert {run["operator"] for run in runs} == {"otto"}

    load = {"kind": "pipeline", "name": "q", "file": "q.py", "attr": "Q"}
    r = await live.call("POST", "/api/v1/plugins/load", json=load, expect=403, headers=bearer(OPER))
    assert "loading plugins needs the admin role" in r["message"]
    r = await live.call("POST", "/api/v1/plugins/load", json=load, expect=422, headers=bearer(ADMIN))
    assert "plugin file not found" in r["message"]
    await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=403, headers=bearer(VIEW))
    r = await live.call("DELETE", f"/api/v1/modserv/{sid}", expect=200, headers=bearer(OPER))
    events = (await live.call("GET", f"/api/v1/modserv/{sid}/events"))["data"]
    assert events[-1]["operator"] == "otto"
    assert (await httpx.AsyncClient(base_url=live.url).get("/healthz")).status_code == 200
    assert (await httpx.AsyncClient(base_url=live.url).get("/metrics")).status_code == 401


async def test_secrets_are_masked_in_api_output(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    body = {**DEPLOY, "env": {"HF_TOKEN": "hf_supersecretvalue", "LOG_LEVEL": "debug"}}
    sid = (await live.call("POST", "/api/v1/modserv/deploy", json=body))["data"]["serviceId"]
    svc = await live.wait_state(sid, "running")
    assert svc["spec"]["env"] == {"HF_TOKEN": "***", "LOG_LEVEL": "***"}
    text = (await live.client.get(f"/api/v1/modserv/{sid}/pipeline/logs")).text
    assert "hf_supersecretvalue" not in text


def test_redaction_of_nested_env_lists_and_secret_flags() -> None:
    from modserv_shim.spec import redact

    manifest = {"containers": [{"env": [{"name": "HF_TOKEN", "value": "hf_x"}, {"name": "A", "valueFrom": {}}],
                                "args": ["--model", "/m", "--api-key", "sk-123", "--hf-token=hf_y", "--port", "80"]}]}
    out = redact(manifest)
    c = out["containers"][0]
    assert c["env"] == [{"name": "HF_TOKEN", "value": "***"}, {"name": "A", "valueFrom": {}}]
    assert c["args"] == ["--model", "/m", "--api-key", "***", "--hf-token=***", "--port", "80"]
    assert redact({"database_url_password": "x", "note": "token in text stays"}) == {
        "database_url_password": "***", "note": "token in text stays"}
