"""Hot load over the API: a plugin file written by the test is loaded and used without restart."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.conftest import Live, fake_settings
from tests.helpers.api_flows import DEPLOY

QUANT_PIPELINE = textwrap.dedent('''
    from modserv_shim.plugins import DeployContext, LaunchSpec, Phase, StepSpec

    class QuantPipeline:
        name = "quantllm"

        def __init__(self, ctx):
            self.suffix = ctx.options.get("suffix", "-q4")

        def steps(self):
            return [StepSpec("model-validation"), StepSpec("model-quantization"),
                    StepSpec("resource-deployment", Phase.DEPLOYING)]

        async def run_step(self, step, ctx):
            if step.name == "model-quantization":
                ctx.log("quantizing", bits=4)
                ctx.set_output("quantized", ctx.spec.modelFile + self.suffix)
            elif step.name == "resource-deployment":
                launch = LaunchSpec("x", ctx.spec.modelName, ctx.outputs["quantized"], ("x",), ())
                rid = await ctx.shimlet.create(DeployContext(ctx.service_id, ctx.spec, launch, 1))
                await ctx.set_resource(rid)
''')


async def test_hot_loaded_pipeline_is_used_by_a_deploy(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    plugin_dir = live.server.settings.resolved_plugin_dir
    (plugin_dir / "quant.py").write_text(QUANT_PIPELINE)
    body = await live.call("POST", "/api/v1/plugins/load", expect=201,
                           json={"kind": "pipeline", "name": "quantllm", "file": "quant.py", "attr": "QuantPipeline"})
    assert [s["name"] for s in body["data"]["steps"]] == ["model-validation", "model-quantization",
                                                         "resource-deployment"]
    listed = (await live.call("GET", "/api/v1/plugins"))["data"]["pipelines"]
    assert "quantllm" in [p["name"] for p in listed]

    r = await live.call("POST", "/api/v1/modserv/deploy", json={**DEPLOY, "pipeline": "quantllm"}, expect=202)
    assert r["data"]["totalSteps"] == ["model-validation", "model-quantization", "resource-deployment"]
    sid = r["data"]["serviceId"]
    svc = await live.wait_state(sid, "running")
    assert svc["pipeline"] == "quantllm" and svc["resourceId"] == f"fake-{sid}"
    logs = (await live.call("GET", f"/api/v1/modserv/{sid}/pipeline/logs"))["data"]["logs"]
    assert any(x["message"] == "quantizing" and x["fields"] == {"bits": 4} for x in logs)


async def test_broken_plugins_are_refused_and_server_keeps_running(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    d = live.server.settings.resolved_plugin_dir
    (d / "boom.py").write_text("raise RuntimeError('kaboom at import')\n")
    (d / "noexec.py").write_text("class P:\n    name = 'p'\n    def steps(self):\n        return []\n")
    (d / "sync.py").write_text(
        "class S:\n    name='s'\n    def __init__(self, ctx): pass\n"
        "    def create(self, c): return 'x'\n    async def status(self, r): ...\n    async def delete(self, r): ...\n")
    (d / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (d / "backwards.py").write_text(
        "from modserv_shim.plugins import Phase, StepSpec\n"
        "class B:\n    name='b'\n    def __init__(self, ctx): pass\n"
        "    def steps(self): return [StepSpec('x', Phase.HEALTH_CHECKING), StepSpec('y', Phase.PIPELINE)]\n"
        "    async def run_step(self, step, ctx): ...\n")
    outside = d.parent / "outside.py"
    outside.write_text("X = 1\n")
    cases = [
        ({"kind": "pipeline", "file": "boom.py", "attr": "P"}, "failed to import: RuntimeError: kaboom at import"),
        ({"kind": "pipeline", "file": "noexec.py", "attr": "P"}, "failed to start"),
        ({"kind": "shimlet", "file": "sync.py", "attr": "S"}, "create() must be 'async def'"),
        ({"kind": "pipeline", "file": "exits.py", "attr": "P"}, "tried to exit while importing"),
        ({"kind": "pipeline", "file": "backwards.py", "attr": "B"}, "step phases must not go backwards"),
        ({"kind": "pipeline", "file": "../outside.py", "attr": "X"}, "must be inside the plugin directory"),
        ({"kind": "pipeline", "file": str(outside), "attr": "X"}, "must be inside the plugin directory"),
        ({"kind": "pipeline", "module": "os", "attr": "getcwd"}, "not in an allowed plugin package"),
        ({"kind": "shimlet", "file": "boom.py", "module": "os", "attr": "X"}, "exactly one of 'file' or 'module'"),
        ({"kind": "pipeline", "name": "fake", "file": "boom.py", "attr": "X"}, "already loaded"),
    ]
    for req, words in cases:
        r = await live.call("POST", "/api/v1/plugins/load", json={"name": "broken", **req}, expect=422)
        assert r["code"] == 1005 and words in r["message"], (req, r["message"])
    assert (await live.call("GET", "/healthz", expect=200))["data"]["status"] == "ok"
    names = [p["name"] for p in (await live.call("GET", "/api/v1/plugins"))["data"]["pipelines"]]
    assert "broken" not in names


async def test_module_plugin_from_allowed_package(start_server, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pkg = tmp_path / "pkgs" / "acme_plugins"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "quant.py").write_text(QUANT_PIPELINE)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    live: Live = await start_server(fake_settings(tmp_path, allowed_plugin_modules=["acme_plugins"]))
    r = await live.call("POST", "/api/v1/plugins/load", expect=201, json={
        "kind": "pipeline", "name": "quantllm", "module": "acme_plugins.quant", "attr": "QuantPipeline"})
    assert r["data"]["source"] == "module:acme_plugins.quant"
    r = await live.call("POST", "/api/v1/plugins/load", expect=422, json={
        "kind": "pipeline", "name": "other", "module": "acme_pluginsX.quant", "attr": "QuantPipeline"})
    assert "not in an allowed plugin package; allowed: acme_plugins" in r["message"]


async def test_hot_loaded_plugin_survives_restart(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = fake_settings(tmp_path)
    live: Live = await start_server(settings)
    (live.server.settings.resolved_plugin_dir / "quant.py").write_text(QUANT_PIPELINE)
    await live.call("POST", "/api/v1/plugins/load", expect=201,
                    json={"kind": "pipeline", "name": "quantllm", "file": "quant.py", "attr": "QuantPipeline"})
    again: Live = await start_server(fake_settings(tmp_path))  # a second server on the same data dir
    names = [p["name"] for p in (await again.call("GET", "/api/v1/plugins"))["data"]["pipelines"]]
    assert "quantllm" in names
