"""What a local workload looks like: one process per replica, before anything starts.

* The command line is the runtime's ``local_command`` plus its arguments, with
  ``{host}`` replaced by the ``host`` option; ``{port}`` is filled in when a replica
  starts, since ports are picked then (so a dry run shows ``{port}``).
* The environment is the runtime's (what the request added, after its allowlist);
  at start the replica adds the shim's own environment minus ``MODSERV_*`` (see
  :mod:`.replica`).
* Each replica writes stdout and stderr to ``<data dir>/local/<service id>/replica-<i>.log``.

:func:`check_command` is the one check ``create`` makes before starting anything:
that the program exists on this machine (and, for ``python -m``, that the module is
installed), so that a missing runtime fails the deploy at once, in words.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from modserv_shim.errors import PermanentStepError
from modserv_shim.plugins import DeployContext, LaunchSpec


def render(ctx: DeployContext, host: str, resource_dir: Path) -> dict[str, Any]:
    """What ``create`` would start (for ``dryRun``); ports are allocated at start, so ``{port}`` stays."""
    launch = ctx.launch
    return {
        "kind": "local-processes",
        "resourceId": ctx.service_id,
        "replicas": ctx.replicas,
        "command": [*launch.local_command, *(a.replace("{host}", host) for a in launch.args)],
        "env": dict(launch.env),
        "readyPath": launch.ready_path,
        "logs": str(resource_dir / "replica-<i>.log"),
    }


def check_command(launch: LaunchSpec) -> None:
    """Fail fast, in words, when the server program cannot start on this machine."""
    command = launch.local_command
    if not command:
        raise PermanentStepError(f"the {launch.runtime} launch spec has no local command")
    program = command[0]
    found = os.access(program, os.X_OK) if os.sep in program else shutil.which(program) is not None
    if not found:
        raise PermanentStepError(
            f"cannot start the {launch.runtime} server: {program!r} is not an executable on this machine"
        )
    if len(command) >= 3 and command[1] == "-m" and _same_file(program, sys.executable):
        module = command[2].split(".")[0]
        if not _module_installed(module):
            raise PermanentStepError(
                f"cannot start the {launch.runtime} server: the Python module {module!r} is not installed"
                f" in {sys.executable}; install it there (for llama.cpp: pip install"
                " 'llama-cpp-python[server]'), or put the server's own binary on PATH"
            )


@functools.cache
def _module_installed(module: str) -> bool:
    """Cached: the search walks ``sys.path``; a module installed later needs a restart anyway."""
    return importlib.util.find_spec(module) is not None


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)
