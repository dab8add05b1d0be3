"""``python -m modserv_shim.modelinfo PATH``: inspect a model and print JSON.

Meant for a validation Job that mounts a model volume the shim cannot read:
it prints ``{"ok": true, "facts": {...}}`` or ``{"ok": false, "problem": ...,
"message": ...}`` on stdout and, with ``--termination-log FILE``, writes the
same line there (Kubernetes shows a pod's termination message in its status,
so the shim can read the result without fetching logs).  Exit status: 0 when
the model is valid, 2 when it is not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from modserv_shim.modelinfo.dispatch import inspect_model
from modserv_shim.modelinfo.facts import ModelInvalid

TERMINATION_MESSAGE_LIMIT = 4096  # bytes Kubernetes keeps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modserv_shim.modelinfo", description=__doc__)
    parser.add_argument("path", help="GGUF file or Hugging Face model folder")
    parser.add_argument("--termination-log", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    result: dict[str, Any]
    try:
        result = {"ok": True, "facts": inspect_model(args.path).to_dict()}
        code = 0
    except ModelInvalid as e:
        result = {"ok": False, "problem": e.problem, "message": e.message, "details": e.details}
        code = 2
    line = json.dumps(result, sort_keys=True)
    print(line)
    if args.termination_log is not None:
        if len(line.encode()) > TERMINATION_MESSAGE_LIMIT:  # keep it valid JSON: drop the extras
            result.pop("details", None)
            line = json.dumps(result, sort_keys=True)
        args.termination_log.write_text(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
