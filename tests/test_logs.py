"""Every log line leaves through one renderer: JSON for plugins' stdlib lines too, with secrets masked.

Run in a child interpreter: ``logs.configure`` sets up the process's logging, which pytest's own
log capture must keep for the other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROGRAM = """
import logging, structlog
from modserv_shim import logs
logs.configure("info", "json")
logging.getLogger("modserv_shim.shimlets.local.shimlet").warning("stopping model server pid %d", 42)
logging.getLogger("acme.plugin").info("started", extra={"env": {"HF_TOKEN": "hf_plugin_secret"}})
structlog.get_logger("modserv_shim.manager").info("deploy accepted", params={"env": {"HF_TOKEN": "hf_core_secret"}})
logging.getLogger("acme.plugin").debug("not shown at info")
"""


def test_json_lines_from_stdlib_and_structlog_alike_with_secrets_masked() -> None:
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=True)
    lines = [json.loads(line) for line in out.stderr.splitlines()]  # every line is JSON
    assert [(x["level"], x["event"]) for x in lines] == [
        ("warning", "stopping model server pid 42"), ("info", "started"), ("info", "deploy accepted")]
    assert lines[0]["logger"] == "modserv_shim.shimlets.local.shimlet" and "timestamp" in lines[0]
    assert lines[1]["env"] == {"HF_TOKEN": "***"}
    assert "hf_plugin_secret" not in out.stderr and "hf_core_secret" not in out.stderr
