"""Tokens and roles on the API; the token name is the operator in step logs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from modserv_shim.errors import ValidationFailed
from modserv_shim.server.auth import Role, TokenTable, is_loopback
from tests.conftest import Live, fake_settings
from tests.helpers.api_flows import DEPLOY
from tests.helpers.auth import ADMIN, OPER, VIEW, bearer, token_settings


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


async def test_secrets_are_masked_in_api_output(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # the fake pipeline declares no runtime: the admin allows these two names (allowed_env)
    live: Live = await start_server(fake_settings(tmp_path, allowed_env=["FAKE_*", "HF_TOKEN", "LOG_LEVEL"]))
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


# --- the token table: duplicates, shapes, digests; never a secret in a message


def load_error(file: Path | None, env: str | None = None) -> str:
    with pytest.raises(ValidationFailed) as info:
        TokenTable.load(file, env)
    return str(info.value)


def test_same_secret_twice_is_refused_naming_both_entries(tmp_path: Path) -> None:
    f = tmp_path / "tokens.yaml"
    f.write_text(f"tokens:\n  - {{name: vera, role: viewer, token: {VIEW}}}\n"
                 f"  - {{name: otto, role: admin, token: {VIEW}}}\n")
    msg = load_error(f)
    assert msg == (f"token 'otto' ({f}: tokens[1]) has the same secret as token 'vera' ({f}: tokens[0]):"
                   " each token needs its own secret")
    # the same secret once as text and once as its digest
    digest = hashlib.sha256(VIEW.encode()).hexdigest().upper()
    f.write_text(f"tokens:\n  - {{name: vera, role: viewer, token: {VIEW}}}\n"
                 f"  - {{name: otto, role: admin, token_sha256: {digest}}}\n")
    assert "token 'otto'" in (msg := load_error(f)) and "token 'vera'" in msg
    # twice in MODSERV_TOKENS, and across the file and MODSERV_TOKENS
    msg = load_error(None, f"ada:admin:{ADMIN},bob:viewer:{ADMIN}")
    assert msg == ("token 'bob' (MODSERV_TOKENS entry 2) has the same secret as token 'ada' (MODSERV_TOKENS entry 1):"
                   " each token needs its own secret")
    f.write_text(f"tokens:\n  - {{name: vera, role: viewer, token: {VIEW}}}\n")
    msg = load_error(f, f"ada:admin:{VIEW}")
    assert msg == (f"token 'ada' (MODSERV_TOKENS entry 1) has the same secret as token 'vera' ({f}: tokens[0]):"
                   " each token needs its own secret")
    for m in (msg, load_error(None, f"ada:admin:{ADMIN},bob:viewer:{ADMIN}")):
        assert VIEW not in m and ADMIN not in m


def test_one_name_with_two_secrets_is_a_rotation_and_allowed(tmp_path: Path) -> None:
    f = tmp_path / "tokens.yaml"
    f.write_text(f"tokens:\n  - {{name: ci, role: operator, token: {OPER}}}\n"
                 f"  - {{name: ci, role: operator, token: {OPER}-new}}\n")
    table = TokenTable.load(f, f"ci:viewer:{VIEW}")
    assert len(table) == 3
    assert table.authenticate(f"Bearer {OPER}").name == "ci"
    assert table.authenticate(f"Bearer {OPER}-new").role == Role.OPERATOR
    assert table.authenticate(f"Bearer {VIEW}").role == Role.VIEWER  # each secret keeps its own role


def test_token_sha256_must_be_64_hex_characters(tmp_path: Path) -> None:
    f = tmp_path / "tokens.yaml"
    digest = hashlib.sha256(OPER.encode()).hexdigest()
    for bad in (digest[:-1], digest + "0", "z" * 64, "'" + OPER + "'"):
        f.write_text(f"tokens:\n  - {{name: otto, role: operator, token_sha256: {bad}}}\n")
        msg = load_error(f)
        assert msg.startswith(f"token 'otto' ({f}: tokens[0]): token_sha256 must be the SHA-256 of the token as 64"
                              " hexadecimal characters")
        assert OPER not in msg
    f.write_text(f"tokens:\n  - {{name: otto, role: operator, token_sha256: '{digest.upper()}'}}\n")
    assert TokenTable.load(f, None).authenticate(f"Bearer {OPER}").name == "otto"


@pytest.mark.parametrize(("text", "expected"), [
    ("tokens: [a,\n", "line 2, column 1: invalid YAML"),
    ("- {name: a, role: admin, token: x}\n", "must be a YAML mapping (key: value lines), not a list"),
    ("tokens: {name: a}\n",
     "tokens must be a list of {name, role, token | token_sha256, optional groups}, not a mapping"),
    ("token:\n  - {name: a}\n", "unknown key(s) 'token'; it holds one key, tokens"),
    ("tokens:\n  - just-a-string\n", "tokens[0]: each token needs a name, a role and a token"),
    ("tokens:\n  - {name: a, roel: admin, token: x}\n", "tokens[0]: unknown key(s) 'roel'"),
    ("tokens:\n  - {name: a, role: admin, token: 12345678901234567890}\n",
     "tokens[0]: token must be text (put it in quotes), not int"),
    ("tokens:\n  - {name: a, role: root, token: aaaaaaaaaaaaaaaaaaaa}\n", "tokens[0]: unknown role 'root'"),
    ("tokens:\n  - {name: a, role: admin, token: x, token_sha256: y}\n", "give token or token_sha256, not both"),
])
def test_broken_tokens_file_is_one_clear_message(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "tokens.yaml"
    f.write_text(text)
    msg = load_error(f)
    assert str(f) in msg and expected in msg and "\n" not in msg


def test_missing_or_odd_tokens_file(tmp_path: Path) -> None:
    assert load_error(tmp_path / "nope.yaml") == f"tokens file not found: {tmp_path / 'nope.yaml'}"
    assert load_error(tmp_path) == f"tokens file {tmp_path} is a directory, not a file"
    f = tmp_path / "tokens.yaml"
    f.write_text("")
    assert len(TokenTable.load(f, None)) == 0  # an empty file: no tokens
    f.write_text("tokens:\n")
    assert len(TokenTable.load(f, None)) == 0


@pytest.mark.parametrize(("env", "expected"), [
    ("just-a-secret-0123456789", "MODSERV_TOKENS entry 1 must look like name:role:token"),
    (f"ada:admin:{ADMIN},bob:", "MODSERV_TOKENS entry 2 must look like name:role:token"),
    ("ada:my-secret-part:rest-of-secret", "MODSERV_TOKENS entry 1: unknown role (viewer, operator or admin)"),
    ("ada:admin:short", "token 'ada' is too short: use at least 16 characters"),
])
def test_malformed_modserv_tokens(env: str, expected: str) -> None:
    msg = load_error(None, env)
    assert msg == expected
    assert "secret" not in msg and ADMIN not in msg


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True), ("LOCALHOST", True), ("::1", True),
    ("[::1]", True), ("0:0:0:0:0:0:0:1", True), ("::ffff:127.0.0.1", True),
    ("0.0.0.0", False), ("::", False), ("[::]", False), ("", False), ("10.0.0.1", False), ("fe80::1", False),
    ("::ffff:10.0.0.1", False), ("example.com", False), ("localhost.example.com", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
