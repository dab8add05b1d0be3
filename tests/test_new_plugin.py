"""``model-serve-shim new-plugin`` writes plugin projects that lint, type-check and, once their
TODOs are filled, pass modserv-shim's contract suites -- run as their authors run them.

The projects are written by the real CLI into this test's directory.  Their TODO stubs
(``raise NotImplementedError("TODO: ...")``, one line each) are replaced by small working
bodies: the shimlet runs the OpenAI stub as processes of this machine, the pipeline's own step
records what it prepared in a file, the step added to opensourcellm reads what model-validation
found.  Installed like tests/test_plugin_project.py installs the example project: offline, into a
directory of this test's own (``pip --no-deps --no-build-isolation --target``), used through
``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.helpers.plugin_install import builds_offline
from tests.helpers.tiny_gguf import write_tiny_llama_gguf

CLI = [sys.executable, "-m", "modserv_shim.cli"]
TODO = re.compile(r'^(\s*)raise NotImplementedError\("TODO: [^"]*"\)\n$')
DEF = re.compile(r"^(\s*)(?:async )?def (\w+)\(")

# project directory -> (new-plugin arguments, package)
PROJECTS: dict[str, tuple[list[str], str]] = {
    "podman": (["shimlet", "podman"], "podman_shimlet"),
    "quantllm": (["pipeline", "quantllm"], "quantllm_pipeline"),
    "acme-prep": (["pipeline", "acme-prep", "--extends", "opensourcellm"], "acme_prep_pipeline"),
}

SHIMLET_BODIES = {
    "_list_workloads": """
        import json

        path = self.data_dir / "workloads.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        return {rid: int(w["replicas"]) for rid, w in data.items()}
    """,
    "_apply": """
        import json
        import socket
        import subprocess

        path = self.data_dir / "workloads.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        if ctx.service_id in data:
            return
        procs = []
        for _ in range(ctx.replicas):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            proc = subprocess.Popen(ctx.launch.argv("127.0.0.1", port), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            self.__dict__.setdefault("children", []).append(proc)
            procs.append({"pid": proc.pid, "port": port})
        data[ctx.service_id] = {"replicas": ctx.replicas, "procs": procs}
        path.write_text(json.dumps(data))
    """,
    "_observe": """
        import json

        import httpx

        path = self.data_dir / "workloads.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        w = data.get(resource_id)
        if w is None:
            return None
        ready = 0
        async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:
            for proc in w["procs"]:
                try:
                    ready += (await client.get(f"http://127.0.0.1:{proc['port']}/v1/models")).status_code == 200
                except httpx.HTTPError:
                    pass
        return Observed(desired=int(w["replicas"]), ready=ready, endpoint=f"http://127.0.0.1:{w['procs'][0]['port']}")
    """,
    "_remove": """
        import json
        import os
        import signal

        path = self.data_dir / "workloads.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        w = data.pop(resource_id, None)
        if w is None:
            return
        for proc in w["procs"]:
            try:
                os.kill(proc["pid"], signal.SIGTERM)
                os.waitpid(proc["pid"], 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        path.write_text(json.dumps(data))
    """,
}

PIPELINE_BODIES = {
    "prepare": """
        import hashlib
        import json

        record = ctx.data_dir / "prepared" / f"{ctx.service_id}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(ctx.spec.modelFile.encode()).hexdigest()
        record.write_text(json.dumps({"model": ctx.spec.modelFile, "digest": digest}))
        ctx.log(f"prepared {ctx.spec.modelFile} ({digest[:12]})")
        MODEL_PATH.set(ctx, ctx.spec.modelFile)
    """,
}


def extension_bodies(model: Path) -> dict[str, str]:
    return {
        "prepare": """
            facts = MODEL.get(ctx)
            PREPARATION.set(ctx, {"architecture": facts.architecture, "weights_bytes": facts.weights_bytes})
            ctx.log(f"prepared a {facts.architecture} model")
        """,
        "deploy_spec": f"""
            return DeploySpec.model_validate({{"modelName": "tiny", "modelFile": {str(model)!r},
                                              "resourceRequirements": {{"memory": "2Gi"}}}})
        """,
    }


def run(argv: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=cwd, env=None if env is None else dict(env), capture_output=True,
                          text=True, timeout=timeout, check=False)


def run_all(jobs: Mapping[str, tuple[Sequence[str], Path, Mapping[str, str]]],
            timeout: float = 120) -> dict[str, tuple[int, str]]:
    """Run the commands side by side (they mostly wait on child processes); name -> (status, output)."""
    procs = {name: subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
             for name, (argv, cwd, env) in jobs.items()}
    results: dict[str, tuple[int, str]] = {}
    try:
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=timeout)
            results[name] = (proc.returncode, out)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def pytest_env(pythonpath: Sequence[Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def inner_pytest(basetemp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", *extra]


def fill_todos(project: Path, bodies: Mapping[str, str]) -> set[str]:
    """Replace every one-line TODO stub with the body for its function; the functions filled."""
    filled: set[str] = set()
    for path in sorted(project.rglob("*.py")):
        lines = path.read_text().splitlines(keepends=True)
        for i, line in enumerate(lines):
            stub = TODO.match(line)
            if stub is None:
                continue
            indent = stub.group(1)
            fn = next(m.group(2) for m in (DEF.match(x) for x in reversed(lines[:i]))
                      if m is not None and len(m.group(1)) < len(indent))
            assert fn in bodies, f"{path.relative_to(project)}: no body for the TODO in {fn}()"
            lines[i] = textwrap.indent(textwrap.dedent(bodies[fn]).strip("\n") + "\n", indent)
            filled.add(fn)
        path.write_text("".join(lines))
    return filled


def kill_leftovers(root: Path) -> None:
    """Stub processes a failed shimlet test may have left (their pids are in the filled shimlet's file)."""
    for state in root.rglob("workloads.json"):
        for workload in json.loads(state.read_text()).values():
            for proc in workload["procs"]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc["pid"], signal.SIGKILL)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three projects, as new-plugin writes them, under one directory."""
    root = tmp_path_factory.mktemp("generated")
    for name, (args, _) in PROJECTS.items():
        r = run([*CLI, "new-plugin", *args], cwd=root)
        assert r.returncode == 0, r.stderr
        assert f"wrote the {name} {args[0]} project to {root / name}" in r.stdout
    return root


def test_the_layout_is_the_built_ins_layout(generated: Path) -> None:
    shimlet, pipeline = generated / "podman", generated / "quantllm"
    for role in ("__init__", "options", "render", "status", "shimlet"):
        assert (shimlet / "src" / "podman_shimlet" / f"{role}.py").is_file()
    for role in ("__init__", "options", "outputs", "pipeline"):
        assert (pipeline / "src" / "quantllm_pipeline" / f"{role}.py").is_file()
    for project, package in ((shimlet, "podman_shimlet"), (pipeline, "quantllm_pipeline")):
        name = project.name
        for rel in ("pyproject.toml", "README.md", "conftest.py", f"docs/{name}.md", "tests/test_contract.py",
                    f"src/{package}/py.typed"):
            assert (project / rel).is_file(), rel
    assert '[project.entry-points."modserv_shim.shimlets"]\n"podman" = "podman_shimlet:PodmanShimlet"' in (
        shimlet / "pyproject.toml").read_text()
    assert '[project.entry-points."modserv_shim.pipelines"]\n"quantllm" = "quantllm_pipeline:QuantllmPipeline"' in (
        pipeline / "pyproject.toml").read_text()
    assert '"modserv-shim[testing]>=0.1"' in (shimlet / "pyproject.toml").read_text()
    extension = (generated / "acme-prep" / "src" / "acme_prep_pipeline" / "pipeline.py").read_text()
    assert "class AcmePrepPipeline(OpenSourceLLMPipeline):" in extension
    assert '@step("model-preparation", after=MODEL_VALIDATION' in extension
    doc = (generated / "podman" / "docs" / "podman.md").read_text()
    assert "| `poll_interval` | number | `2.0` |" in doc


def test_the_generated_code_passes_ruff_and_mypy_strict(generated: Path, tmp_path: Path) -> None:
    for name in PROJECTS:
        r = run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=generated / name)
        assert r.returncode == 0, f"{name}:\n{r.stdout}{r.stderr}"
    sources = [str(generated / name / "src" / package) for name, (_, package) in PROJECTS.items()]
    r = run([sys.executable, "-m", "mypy", "--strict", f"--cache-dir={tmp_path / 'mypy'}",
             f"--config-file={generated / 'podman' / 'pyproject.toml'}", *sources], cwd=generated)
    assert r.returncode == 0, f"{r.stdout}{r.stderr}"
    assert "Success: no issues found in 13 source files" in r.stdout


def test_unfilled_skeletons_fail_with_their_todo_messages(generated: Path, tmp_path: Path) -> None:
    jobs = {name: (inner_pytest(tmp_path / name, "-k", "not entry_point"), generated / name,
                   pytest_env([generated / name / "src"])) for name in PROJECTS}
    for name, (status, out) in run_all(jobs).items():
        assert status == 1, f"{name}:\n{out}"
        assert "NotImplementedError: TODO: " in out, f"{name}:\n{out}"
        assert re.search(r"\b[1-9]\d* passed", out), f"{name}: the docs tests should pass as generated\n{out}"
    kill_leftovers(tmp_path)


def test_filled_projects_pass_their_own_tests(generated: Path, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    model = write_tiny_llama_gguf(tmp_path / "models" / "tiny.gguf")
    projects = tmp_path / "projects"
    bodies = {"podman": SHIMLET_BODIES, "quantllm": PIPELINE_BODIES, "acme-prep": extension_bodies(model)}
    for name in PROJECTS:
        shutil.copytree(generated / name, projects / name)
        assert fill_todos(projects / name, bodies[name]) == set(bodies[name]), name
        assert "TODO: " not in "".join(p.read_text() for p in (projects / name / "src").rglob("*.py"))
    contract = projects / "podman" / "tests" / "test_contract.py"  # the stub processes really serve HTTP
    contract.write_text(contract.read_text().replace("    ready_timeout = 30.0\n",
                                                     "    ready_timeout = 30.0\n    endpoint_serves_http = True\n"))

    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
               *(str(projects / name) for name in PROJECTS)]
    if builds_offline():
        install.insert(4, "--no-build-isolation")  # else pip fetches setuptools from the package index
    built = run(install, cwd=tmp_path, timeout=180)
    assert built.returncode == 0, f"pip could not install the generated projects:\n{built.stdout}\n{built.stderr}"

    jobs = {name: (inner_pytest(tmp_path / f"pytest-{name}"), projects / name, pytest_env([site])) for name in PROJECTS}
    try:
        results = run_all(jobs)
    finally:
        kill_leftovers(tmp_path)
    minimum = {"podman": 11, "quantllm": 8, "acme-prep": 7}  # the contract ran, not an empty collection
    for name, (status, out) in results.items():
        assert status == 0, f"{name}: the generated project's tests failed:\n{out}"
        passed = re.search(r"(\d+) passed", out)
        assert passed and int(passed.group(1)) >= minimum[name], f"{name}:\n{out}"


# ------------------------------------------------------------------ the command line


def test_new_plugin_refuses_what_it_must(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    cases = [
        (["shimlet", "podman", f"--dir={tmp_path / 'taken'}"], "is a directory that is not empty"),
        (["shimlet", "Docker"], "'Docker' is not a plugin name"),
        (["shimlet", "-x"], "No such option"),
        (["pipeline", "x" * 64], "is not a plugin name"),
        (["shimlet", "podman", "--extends", "opensourcellm"], "--extends is for pipelines"),
        (["pipeline", "mine", "--extends", "nope"], "can extend opensourcellm, not 'nope'"),
        (["shimlet", "k8s"], "'k8s' is the name of a built-in shimlet"),
        (["pipeline", "mine", "--package", "not-a-package"], "is not a Python package name"),
        (["pipeline", "mine", "--package", "json"], "is taken"),
        (["widget", "mine"], "'widget' is not one of"),
    ]
    for args, needle in cases:
        r = run([*CLI, "new-plugin", *args], cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert needle in " ".join(r.stderr.split()), (args, r.stderr)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing written by a refused command


def test_new_plugin_writes_into_an_empty_dir_with_the_package_asked_for(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = run([*CLI, "new-plugin", "shimlet", "edge.box", "--dir", str(tmp_path / "empty"), "--package", "acme_edge"],
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shimlet = (tmp_path / "empty" / "src" / "acme_edge" / "shimlet.py").read_text()
    assert 'class EdgeBoxShimlet(ShimletBase):' in shimlet and 'name = "edge.box"' in shimlet
    assert (tmp_path / "empty" / "docs" / "edge.box.md").is_file()


def test_help_lists_the_server_flags_and_the_command_and_server_flags_stay_with_the_server(tmp_path: Path) -> None:
    r = run([*CLI, "--help"], cwd=tmp_path, env={**os.environ, "COLUMNS": "200", "TERM": "dumb"})
    assert r.returncode == 0, r.stderr
    for flag in ("--port", "--host", "--shimlet", "--pipeline", "--data-dir", "--config", "--tokens-file",
                 "--tls-certfile", "--tls-keyfile", "--version", "new-plugin"):
        assert flag in r.stdout, flag
    r = run([*CLI, "new-plugin", "--help"], cwd=tmp_path, env={**os.environ, "COLUMNS": "200", "TERM": "dumb"})
    assert r.returncode == 0 and "--dir" in r.stdout and "--package" in r.stdout and "--extends" in r.stdout
    r = run([*CLI, "--port=9", "new-plugin", "shimlet", "podman"], cwd=tmp_path)
    assert r.returncode == 2 and "--port: server options go without a command" in r.stderr, r.stderr
    assert not (tmp_path / "podman").exists()
