"""examples/plugin-project passes its own tests, run as its author runs them.

The project is installed (built by pip through its pyproject.toml, entry point and all)
into a directory of this test's own, never into the virtualenv, and its tests run with
``python -m pytest`` from the project's directory in a child process.  A copy of the
project is built, so the build leaves nothing behind in the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.helpers.plugin_install import builds_offline

PROJECT = REPO / "examples" / "plugin-project"


def test_the_example_plugin_project_passes_its_own_tests(tmp_path: Path) -> None:
    project = tmp_path / "plugin-project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"))
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(project)]
    if builds_offline():
        install.insert(4, "--no-build-isolation")  # else pip fetches setuptools from the package index
    built = subprocess.run(install, check=False, capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, f"pip could not install the plugin project:\n{built.stdout}\n{built.stderr}"
    assert (site / "acme_endpoints" / "shimlet.py").exists()

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                         check=False, cwd=project, env=env, capture_output=True, text=True, timeout=110)
    report = f"{run.stdout}\n{run.stderr}"
    assert run.returncode == 0, f"the plugin project's tests failed:\n{report}"
    summary = re.search(r"(\d+) passed", report)
    assert summary and int(summary.group(1)) >= 10, report  # the contract ran, not an empty collection
