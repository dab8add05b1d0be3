"""privatellm access: who may deploy (role + the model's groups), a key per service, nothing private shown.

A real server with a tokens file, a real HTTPS model source, the local shimlet serving SmolLM2 with a real
llama.cpp server that requires the service's key.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import Live
from tests.helpers.https_file_server import ModelSourceServer, write_signed_manifest
from tests.helpers.privatellm import (
    API,
    TOKEN,
    body,
    chat,
    chat_response,
    settings,
    smollm2,
    source_fixture,  # noqa: F401
)

ALICE = "alice-operator-token-7f3a9c"  # operator in ml-team: may deploy the acme models
BOB = "bob-operator-token-2b8e4d1"  # operator in sales: may not
VERA = "vera-viewer-token-5c1f0a7e"  # viewer in ml-team: may read, not deploy
ADMIN = "root-admin-token-9d2e6b3f"


def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(json.dumps({"tokens": [
        {"name": "alice", "role": "operator", "token": ALICE, "groups": ["ml-team"]},
        {"name": "bob", "role": "operator", "token": BOB, "groups": ["sales"]},
        {"name": "vera", "role": "viewer", "token": VERA, "groups": ["ml-team"]},
        {"name": "root", "role": "admin", "token": ADMIN},
    ]}))
    return path


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def served(tmp_path: Path, source: ModelSourceServer) -> dict[str, Any]:
    folder = source.root / "models"
    folder.mkdir()
    (folder / "smollm2.gguf").symlink_to(smollm2())
    write_signed_manifest(folder, {"smollm2.gguf": smollm2()}, Ed25519PrivateKey.generate(), tmp_path / "acme.pub")
    return body("smollm2", {"url": source.url("models/smollm2.gguf"), "secret": "acme"})


async def test_groups_decide_who_deploys_the_key_guards_the_endpoint_and_nothing_private_is_shown(  # type: ignore[no-untyped-def]
        start_server, tmp_path: Path, source: ModelSourceServer, served: dict[str, Any],
        capfd: pytest.CaptureFixture[str]) -> None:
    cfg = settings(tmp_path, source, public_key=tmp_path / "acme.pub", groups=["ml-team"],
                   server_settings={"tokens_file": tokens_file(tmp_path)})
    live: Live = await start_server(cfg, headers=as_(VERA))  # a viewer reads (wait_state)
    seen: list[str] = []  # every API response body, to look for secrets in

    async def call(method: str, path: str, token: str, expect: int, **kw: Any) -> dict[str, Any]:
        r = await live.call(method, path, expect=expect, headers=as_(token), **kw)
        seen.append(json.dumps(r))
        return r

    # Who may deploy: an operator outside the secret's groups and a viewer inside them are refused, nothing stored.
    refused = await call("POST", f"{API}/deploy", BOB, 403, json=served)
    assert "membership of ml-team" in refused["message"] and "bob is in sales" in refused["message"], refused
    refused = await call("POST", f"{API}/deploy", VERA, 403, json=served)
    assert "operator role" in refused["message"], refused
    assert (await call("GET", API, ALICE, 200))["data"] == []
    assert source.seen("models/smollm2.gguf") == []  # nothing was fetched for them

    accepted = await call("POST", f"{API}/deploy", ALICE, 202, json=served)
    key = accepted["data"]["apiKey"]
    assert key.startswith("msk-") and len(key) > 40, accepted
    assert "shown this once" in accepted["message"]
    sid = accepted["data"]["serviceId"]
    svc = await live.wait_state(sid, "running", "failed", timeout=180)
    assert svc["state"] == "running", svc["reason"]

    key_file = tmp_path / "data" / "keys" / f"{sid}.key"
    assert key_file.read_text() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700

    # The endpoint wants the key.
    endpoint = svc["endpoint"]
    assert (await chat_response(endpoint, "smollm2", None)).status_code == 401
    assert (await chat_response(endpoint, "smollm2", "msk-not-the-key")).status_code == 401
    assert "Paris" in await chat(endpoint, "smollm2", key)

    view = (await call("GET", f"{API}/{sid}", VERA, 200))["data"]
    assert view["apiKey"]["fingerprint"] == f"msk-...{key[-4:]}", view

    # Rotation: same rule as deploying; the old key stops working, the new one works.
    refused = await call("POST", f"{API}/{sid}/rotate-key", BOB, 403)
    assert "ml-team" in refused["message"]
    assert key_file.read_text() == key  # a refused rotation changes nothing
    rotated = (await call("POST", f"{API}/{sid}/rotate-key", ALICE, 200))["data"]
    new_key = rotated["apiKey"]
    assert new_key != key and rotated["fingerprint"] == f"msk-...{new_key[-4:]}"
    svc = await live.wait_state(sid, "running", timeout=120)
    endpoint = svc["endpoint"]
    assert (await chat_response(endpoint, "smollm2", key)).status_code == 401
    assert "Paris" in await chat(endpoint, "smollm2", new_key)
    events = (await call("GET", f"{API}/{sid}/events", VERA, 200))["data"]
    assert any(e["reason"] == f"API key rotated (now msk-...{new_key[-4:]})" and e["operator"] == "alice"
               for e in events), events

    # Nothing private in what anyone can read: neither key, nor where the model lives.
    cache = str(tmp_path / "data" / "privatellm" / "models")
    for path in ("", "/pipeline", "/pipeline/logs", "/events", "/logs"):
        await call("GET", f"{API}/{sid}{path}", VERA, 200)
    await call("GET", API, VERA, 200)
    logs = (await call("GET", f"{API}/{sid}/pipeline/logs", VERA, 200))["data"]
    assert any("<private>" in x["message"] for x in logs["logs"]), logs  # masked, not dropped
    runtime = (await call("GET", f"{API}/{sid}/logs", VERA, 200))["data"]["lines"]
    assert runtime and not any(cache in line for line in runtime)
    dry = await call("POST", f"{API}/deploy", ALICE, 200, json={**served, "modelName": "again", "dryRun": True})
    assert dry["data"]["rendered"]["model_file"] == "<private>"
    assert "apiKey" not in dry["data"]

    async with httpx.AsyncClient() as c:  # /metrics too
        seen.append((await c.get(f"{live.url}/metrics", headers=as_(VERA))).text)
    await call("DELETE", f"{API}/{sid}", ALICE, 200)
    assert not key_file.exists()  # the key goes with the service

    server_log = capfd.readouterr()
    everything = "\n".join([*seen, server_log.out, server_log.err])
    for secret in (key, new_key, TOKEN, cache):
        assert secret not in everything.replace(f'"apiKey": "{key}"', "").replace(f'"apiKey": "{new_key}"', "")
    # ...the two responses that made the keys hold them, once each
    assert everything.count(key) == 1 and everything.count(new_key) == 1


async def test_a_secret_without_groups_is_for_admins_and_admins_may_always(  # type: ignore[no-untyped-def]
        start_server, tmp_path: Path, source: ModelSourceServer, served: dict[str, Any]) -> None:
    cfg = settings(tmp_path, source, public_key=tmp_path / "acme.pub",
                   server_settings={"tokens_file": tokens_file(tmp_path)})
    live: Live = await start_server(cfg)
    dry = {**served, "dryRun": True}
    refused = await live.call("POST", f"{API}/deploy", expect=403, headers=as_(ALICE), json=dry)
    assert "secret acme allows no group, so only admins may deploy through it" in refused["message"], refused
    ok = await live.call("POST", f"{API}/deploy", expect=200, headers=as_(ADMIN), json=dry)
    assert ok["data"]["dryRun"] is True


def test_tokens_file_groups_are_names(tmp_path: Path) -> None:
    from modserv_shim.errors import ValidationFailed
    from modserv_shim.server.auth import TokenTable

    path = tmp_path / "tokens.yaml"
    path.write_text(json.dumps({"tokens": [{"name": "a", "role": "operator", "token": ALICE, "groups": "ml"}]}))
    with pytest.raises(ValidationFailed, match=r"tokens\[0\]: groups must be a list of names, not str"):
        TokenTable.load(path, None)
    path.write_text(json.dumps({"tokens": [{"name": "a", "role": "operator", "token": ALICE, "groups": ["$(x)"]}]}))
    with pytest.raises(ValidationFailed, match=r"group '\$\(x\)' is not a name"):
        TokenTable.load(path, None)
    path.write_text(json.dumps({"tokens": [{"name": "a", "role": "operator", "token": ALICE, "groups": ["ml"]}]}))
    who = TokenTable.load(path, None).authenticate(f"Bearer {ALICE}")
    assert who.caller().groups == frozenset({"ml"}) and who.caller().role == "operator"
