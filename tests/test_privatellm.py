"""The privatellm pipeline against a real HTTPS model source (tests/helpers/https_file_server.py).

Real TLS with a CA made here and trusted through the secret's ca_file, bearer-token auth, Range
requests, a connection dropped mid-body, Ed25519-signed manifests, the REST API on the local
shimlet and real llama.cpp servers (SmolLM2 from ``make setup``, a tiny random GGUF).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modserv_shim.config import Settings
from modserv_shim.pipelines.privatellm import PrivateLLMOptions, PrivateLLMPipeline
from modserv_shim.spec import DeploySpec
from modserv_shim.testing.pipeline_contract import PipelineContract
from tests.conftest import REPO, Live
from tests.helpers.https_file_server import ModelSourceServer, make_certs, sha256, write_signed_manifest
from tests.helpers.privatellm import (
    API,
    TOKEN,
    WRONG,
    body,
    chat,
    deploy,
    logs,
    messages,
    settings,
    smollm2,
    source_fixture,  # noqa: F401
)
from tests.helpers.tiny_gguf import write_tiny_llama_gguf


async def test_interrupted_fetch_resumes_verifies_and_serves_paris(  # type: ignore[no-untyped-def]
        start_server, tmp_path: Path, source: ModelSourceServer) -> None:
    model = smollm2()
    folder = source.root / "models"
    folder.mkdir()
    (folder / "smollm2.gguf").symlink_to(model)
    write_signed_manifest(folder, {"smollm2.gguf": model}, Ed25519PrivateKey.generate(), tmp_path / "acme.pub")
    drop_at = 40 * 2**20
    source.drop_once["/models/smollm2.gguf"] = drop_at
    source.rate = 30e6  # ~3.5 s in all: several progress lines
    live: Live = await start_server(settings(tmp_path, source, public_key=tmp_path / "acme.pub"))
    b = body("smollm2", {"url": source.url("models/smollm2.gguf"), "secret": "acme"})

    svc = await deploy(live, b, "running", "failed")
    assert svc["state"] == "running", svc["reason"]

    gets = source.seen("models/smollm2.gguf")
    assert len(gets) == 2 and gets[0].range is None, gets
    ranged = re.fullmatch(r"bytes=(\d+)-", gets[1].range or "")
    assert ranged, gets
    resumed_at = int(ranged.group(1))
    assert 0 < resumed_at <= drop_at  # the second request resumed where the first one's bytes ended
    assert [g.status for g in gets] == [200, 206]
    assert [g.status for g in source.seen("models/manifest.json") + source.seen("models/manifest.json.sig")] \
        == [200, 200]
    data = await logs(live, svc["serviceId"])
    fetch_lines = messages(data, "model-fetch")
    assert any(f"resuming at {resumed_at / 2**20:.1f} MiB" in m for m in fetch_lines), fetch_lines
    assert any("download broken after" in m for m in fetch_lines), fetch_lines
    progress = [x for x in data["logs"] if x["step"] == "model-fetch" and "MiB/s" in x["message"]
                and x["message"].startswith("fetched ")]
    assert len(progress) >= 3, fetch_lines
    stamps = [datetime.fromisoformat(x["ts"]) for x in progress]
    assert max((b2 - a).total_seconds() for a, b2 in itertools.pairwise(stamps)) < 2.0
    verify_lines = messages(data, "model-verification")
    assert any("Ed25519 signature good" in m for m in verify_lines), verify_lines
    assert any(m.startswith("smollm2.gguf: SHA-256 ") and "matches" in m for m in verify_lines), verify_lines
    runs = {r["step"]: r for r in data["runs"]}
    assert list(runs)[:3] == ["model-fetch", "model-verification", "model-validation"]
    assert runs["model-fetch"]["attempt"] == 1  # resumed inside the step, not by a retry
    assert any("135M parameters" in m for m in messages(data, "model-validation"))

    cached = [p for p in (tmp_path / "data" / "privatellm" / "models").rglob("*") if p.is_file()]
    names = sorted(p.name for p in cached)
    assert names == [".verified.json", "smollm2.gguf"], names  # no .part left
    gguf = next(p for p in cached if p.name == "smollm2.gguf")
    assert gguf.stat().st_size == model.stat().st_size and not gguf.is_symlink()

    answer = await chat(svc["endpoint"], "smollm2", svc["_apiKey"])
    assert "Paris" in answer, answer

    # The next deploy of the same source reuses the verified file: a HEAD (credentials still good), no GET.
    dry = (await live.call("POST", f"{API}/deploy", json={**b, "modelName": "smollm2-again", "dryRun": True},
                           expect=200))["data"]
    lines = [x["message"] for x in dry["logs"]]
    assert len(source.seen("models/smollm2.gguf")) == 2
    assert [s.status for s in source.seen("models/smollm2.gguf", "HEAD")] == [200]
    assert any(m.startswith("cache hit: 1 file") for m in lines), lines
    assert any("remembered from an earlier check" in m for m in lines), lines
    assert dry["rendered"]["model_file"] == "<private>"  # the cache path is masked (test_privatellm_access.py)
    await live.call("DELETE", f"{API}/{svc['serviceId']}", expect=200)


@pytest.fixture
def hub(tmp_path: Path, source: ModelSourceServer) -> dict[str, Path]:
    """A Hugging Face-style repo acme/tiny at revision main: a tiny GGUF and a 3 MiB data file."""
    folder = source.root / "acme" / "tiny" / "resolve" / "main"
    folder.mkdir(parents=True)
    (folder / "extra").mkdir()
    gguf = write_tiny_llama_gguf(folder / "tiny.gguf")
    extra = folder / "extra" / "data.bin"
    extra.write_bytes(os.urandom(3 * 2**20))
    return {"tiny.gguf": gguf, "extra/data.bin": extra}


def hub_source(server: ModelSourceServer, manifest: dict[str, str] | None = None) -> dict[str, Any]:
    src: dict[str, Any] = {"hub": {"endpoint": server.url(""), "repo": "acme/tiny", "revision": "main",
                                   "files": ["tiny.gguf", "extra/data.bin"]}, "secret": "acme"}
    if manifest is not None:
        src["manifest"] = manifest
    return src


async def test_tampered_byte_fails_naming_the_file_and_a_retry_fetches_it_again(  # type: ignore[no-untyped-def]
        start_server, tmp_path: Path, source: ModelSourceServer, hub: dict[str, Path]) -> None:
    manifest = {name: sha256(p) for name, p in hub.items()}
    good = hub["extra/data.bin"].read_bytes()
    tampered = bytearray(good)
    tampered[len(good) // 2] ^= 0x01
    hub["extra/data.bin"].write_bytes(bytes(tampered))
    live: Live = await start_server(settings(tmp_path, source))

    svc = await deploy(live, body("tiny", hub_source(source, manifest)), "failed", "running")
    assert svc["state"] == "failed"
    assert svc["currentStep"] == "model-verification"
    assert svc["reason"].startswith("model-verification failed: extra/data.bin does not match the manifest"
                                    " (given in the request): SHA-256 ")
    assert manifest["extra/data.bin"] in svc["reason"]
    # both files came over the hub's resolve URLs, each once
    for name in hub:
        assert [s.status for s in source.seen(f"acme/tiny/resolve/main/{name}")] == [200]
    cache = next((tmp_path / "data" / "privatellm" / "models").iterdir())
    assert (cache / "tiny.gguf").is_file()
    assert not (cache / "extra" / "data.bin").exists()  # the bad file left the cache
    runs = [r for r in (await logs(live, svc["serviceId"]))["runs"] if r["step"] == "model-verification"]
    assert len(runs) == 1  # a mismatch is not retried

    hub["extra/data.bin"].write_bytes(good)  # the source is repaired; a retry fetches the file again
    await live.call("POST", f"{API}/{svc['serviceId']}/retry", expect=202)
    svc = await live.wait_state(svc["serviceId"], "running", "failed", timeout=120)
    assert svc["state"] == "running", svc["reason"]
    assert [s.status for s in source.seen("acme/tiny/resolve/main/extra/data.bin")] == [200, 200]
    assert [s.status for s in source.seen("acme/tiny/resolve/main/tiny.gguf")] == [200]
    await live.call("DELETE", f"{API}/{svc['serviceId']}", expect=200)


async def test_wrong_token_fails_at_once_and_no_token_is_shown(  # type: ignore[no-untyped-def]
        start_server, tmp_path: Path, source: ModelSourceServer, hub: dict[str, Path],
        capfd: pytest.CaptureFixture[str]) -> None:
    live: Live = await start_server(settings(tmp_path, source, token=WRONG, allow_unsigned_manifest=True))
    svc = await deploy(live, body("tiny", hub_source(source)), "failed", "running", timeout=60)
    assert svc["state"] == "failed"
    assert svc["currentStep"] == "model-fetch"
    assert svc["reason"].startswith("model-fetch failed: the server refused the credentials of secret acme"
                                    " (HTTP 401)"), svc["reason"]
    assert all(not s.authorised and s.status == 401 for s in source.requests)
    data = await logs(live, svc["serviceId"])
    assert [r["attempt"] for r in data["runs"] if r["step"] == "model-fetch"] == [1]  # never retried
    sid = svc["serviceId"]
    responses = [json.dumps(await live.call("GET", path)) for path in (
        f"{API}/{sid}", f"{API}/{sid}/pipeline/logs", f"{API}/{sid}/events", f"{API}/{sid}/pipeline", f"{API}",
        "/api/v1/plugins")]
    out, err = capfd.readouterr()
    for text in (*responses, out, err):
        assert WRONG not in text and TOKEN not in text
    assert "HTTP 401" in responses[1]


async def test_requests_are_checked_before_anything_is_fetched(  # type: ignore[no-untyped-def]
        start_server, tmp_path: Path, source: ModelSourceServer) -> None:
    live: Live = await start_server(settings(tmp_path, source))
    url = source.url("models/m.gguf")
    refused = {
        "modelSource.secret": {"url": url, "secret": "nobody"},
        "modelSource.url": {"url": url.replace("https://", "http://"), "secret": "acme"},
    }
    for field, src in refused.items():
        r = await live.call("POST", f"{API}/deploy", json=body("m", src), expect=422)
        assert field in json.dumps(r["data"] or r["message"]) or field in r["message"], r
    r = await live.call("POST", f"{API}/deploy", json=body("m", {"url": url.replace("https://", f"https://{TOKEN}@"),
                                                                  "secret": "acme"}), expect=422)
    assert "must not carry a user or password" in json.dumps(r) and TOKEN not in r["message"]
    assert source.requests == []
    plugins = (await live.call("GET", "/api/v1/plugins"))["data"]
    mine = next(p for p in plugins["pipelines"] if p["name"] == "privatellm")
    assert [s["name"] for s in mine["steps"]] == ["model-fetch", "model-verification", "model-validation",
                                                  "config-rendering", "resource-deployment", "health-check"]


async def test_fetched_manifest_must_be_signed_by_the_configured_key(  # type: ignore[no-untyped-def]
        start_server, tmp_path: Path, source: ModelSourceServer, hub: dict[str, Path]) -> None:
    folder = hub["tiny.gguf"].parent
    write_signed_manifest(folder, hub, Ed25519PrivateKey.generate(), tmp_path / "someone-else.pub")
    write_signed_manifest(tmp_path, hub, Ed25519PrivateKey.generate(), tmp_path / "acme.pub")  # acme's own key
    live: Live = await start_server(settings(tmp_path, source, public_key=tmp_path / "acme.pub"))
    svc = await deploy(live, body("tiny", hub_source(source)), "failed", "running", timeout=60)
    assert svc["currentStep"] == "model-verification"
    assert "does not match the configured public key: the manifest is not trusted" in svc["reason"]
    assert "acme/tiny/resolve/main/manifest.json" in svc["reason"]

    unsigned: Live = await start_server(settings(tmp_path / "b", source))  # no public_key_file
    svc = await deploy(unsigned, body("tiny", hub_source(source)), "failed", "running", timeout=60)
    assert svc["currentStep"] == "model-verification"
    assert "unsigned: configure public_key_file for secret acme" in svc["reason"]


def test_secrets_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "modserv.yaml"
    cfg.write_text(f"secrets:\n  acme:\n    token: {TOKEN}\n    ca_file: /etc/ca.pem\n"
                   "  mirror.eu:\n    token_file: /run/token\n    groups: [ml-team]\n")
    s = Settings.load(cfg)
    assert s.secrets["acme"].token is not None and s.secrets["acme"].token.get_secret_value() == TOKEN
    assert TOKEN not in repr(s) and TOKEN not in str(s.model_dump())
    assert s.secrets["mirror.eu"].plain() == {"token": None, "token_file": "/run/token", "ca_file": None,
                                              "public_key_file": None, "groups": ["ml-team"]}
    monkeypatch.setenv("MODSERV_SECRETS__ACME__TOKEN", "from-env")
    assert Settings.load(cfg).secrets["acme"].plain()["token"] == "from-env"
    with pytest.raises(ValueError, match="token or token_file, not both"):
        Settings.load(None, secrets={"x": {"token": "a", "token_file": "/t"}})
    with pytest.raises(ValueError, match="secret name 'Bad Name'"):
        Settings.load(None, secrets={"Bad Name": {"token": "a"}})


def test_options_defaults() -> None:
    assert PrivateLLMOptions.parse({}).progress_interval == 2.0
    assert PrivateLLMPipeline.Options is PrivateLLMOptions


def test_docs_section_matches_the_code(tmp_path: Path) -> None:
    from modserv_shim.pipelines.privatellm.outputs import markdown

    page = (REPO / "docs" / "pipelines.md").read_text()
    section = page.split("\n## `privatellm`", 1)[1].split("\n## ", 1)[0]
    assert PrivateLLMOptions.markdown_table() in section
    assert markdown() in section
    steps = [s.name for s in PrivateLLMPipeline.step_specs()]
    assert all(f"`{name}`" in section for name in steps)
    for block in re.findall(r"```yaml\n(.*?)```", section, re.S):
        cfg = tmp_path / "modserv.yaml"
        cfg.write_text(block)
        assert Settings.load(cfg).secrets  # every YAML example is a valid config with a secret
    bodies = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, re.S)]
    bodies += [json.loads(b) for b in re.findall(r"-d '(\{.*?\})'", section, re.S)]
    assert len(bodies) == 2
    for b in bodies:
        spec = DeploySpec.model_validate(b)
        assert spec.modelSource is not None and spec.modelFile.startswith("/modelsource/")


# --- the plugin contract (idempotent steps, cancellation, crash-resume) with a real fetch


@pytest.fixture
def contract_source(tmp_path: Path) -> Iterator[ModelSourceServer]:
    root = tmp_path / "source"
    (root / "m").mkdir(parents=True)
    write_tiny_llama_gguf(root / "m" / "tiny.gguf")
    server = ModelSourceServer(root, make_certs(tmp_path / "certs"), TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


class TestPrivateLLMContract(PipelineContract):
    cancel_points = 16
    factory = PrivateLLMPipeline

    @pytest.fixture
    def server_settings(self, contract_source: ModelSourceServer) -> dict[str, Any]:
        return {"secrets": {"acme": {"token": TOKEN, "ca_file": str(contract_source.certs.ca)}}}

    @pytest.fixture
    def deploy_spec(self, contract_source: ModelSourceServer) -> DeploySpec:
        gguf = contract_source.root / "m" / "tiny.gguf"
        return DeploySpec.model_validate({
            "modelName": "tiny", "resourceRequirements": {"memory": "2Gi"},
            "modelSource": {"url": contract_source.url("m/tiny.gguf"), "secret": "acme",
                            "manifest": {"tiny.gguf": sha256(gguf)}}})
