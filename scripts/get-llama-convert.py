#!/usr/bin/env python3
"""Fetch llama.cpp's convert_hf_to_gguf.py at the version that matches the pinned llama-cpp-python.

The quant pipeline converts a Hugging Face folder to GGUF with llama.cpp's own converter before it
quantizes it.  The converter is not part of any wheel, and this repository does not copy it: this
script downloads the llama-cpp-python sdist of the version pinned in pyproject.toml (extra
``llama``) with pip, and extracts from its ``vendor/llama.cpp/`` only what the converter needs

* ``convert_hf_to_gguf.py`` and the ``conversion/`` package beside it (one module per model family),
* ``gguf-py/gguf/`` (the converter puts ``gguf-py`` beside itself first on ``sys.path``),
* llama.cpp's ``LICENSE`` (MIT) and gguf-py's,

into ``<venv>/share/modserv-shim/llama.cpp-convert/`` (the default of the quant pipeline's option
``convert_script``), with a ``VERSION`` file.  Run with the virtualenv's Python (``make setup`` does);
it does nothing when that version is there already.  The converter's own dependencies (torch,
transformers, sentencepiece) are the extra ``convert``: ``pip install 'modserv-shim[convert]'``.

    .venv/bin/python scripts/get-llama-convert.py [--dest DIR] [--sdist FILE] [--force]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

from modserv_shim.pipelines.quant.convert import SCRIPT_NAME, VERSION_FILE, default_convert_dir

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "llama-cpp-python"
FILES = (SCRIPT_NAME, "LICENSE", "gguf-py/LICENSE")
FOLDERS = ("conversion/", "gguf-py/gguf/")


def pinned_version(pyproject: Path) -> str:
    """The version of llama-cpp-python the ``llama`` extra pins (``llama-cpp-python[server]==0.3.36``)."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for req in extras["llama"]:
        m = re.fullmatch(r"\s*llama-cpp-python(?:\[[^]]*\])?\s*==\s*([\w.+-]+)\s*", req)
        if m:
            return m.group(1)
    raise SystemExit(f"{pyproject}: the extra 'llama' pins no llama-cpp-python version (llama-cpp-python==X)")


def download(version: str, into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    "--dest", str(into), f"{PACKAGE}=={version}"], check=True)
    [sdist] = into.glob("llama_cpp_python-*.tar.gz")
    return sdist


def extract(sdist: Path, version: str, dest: Path) -> int:
    """The converter's files from ``sdist`` into ``dest`` (replaced in one rename); how many files."""
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        count = 0
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                rel = member.name.removeprefix(prefix)
                if rel == member.name or not member.isfile():
                    continue
                if rel not in FILES and not rel.startswith(FOLDERS):
                    continue
                member.name = rel
                tar.extract(member, work, filter="data")
                count += 1
        if not (work / SCRIPT_NAME).is_file() or not (work / "gguf-py" / "gguf" / "__init__.py").is_file():
            raise SystemExit(f"{sdist} has no vendor/llama.cpp/{SCRIPT_NAME} or gguf-py: not a llama-cpp-python sdist"
                             " this script knows")
        (work / VERSION_FILE).write_text(f"{PACKAGE} {version}\n")
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        work.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
        return count
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=default_convert_dir(),
                    help="where to put the converter (default: %(default)s)")
    ap.add_argument("--sdist", type=Path, help="a llama-cpp-python sdist already downloaded (else pip downloads it)")
    ap.add_argument("--force", action="store_true", help="extract again even when the version is there")
    args = ap.parse_args()
    version = pinned_version(REPO / "pyproject.toml")
    stamp = args.dest / VERSION_FILE
    try:
        installed = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed not in (None, version):
        print(f"warning: {PACKAGE} {installed} is installed, pyproject.toml pins {version}: the converter will be"
              f" {version}'s", file=sys.stderr)
    if (not args.force and (args.dest / SCRIPT_NAME).is_file() and stamp.is_file()
            and stamp.read_text().strip() == f"{PACKAGE} {version}"):
        print(f"llama.cpp's {SCRIPT_NAME} ({PACKAGE} {version}) is in {args.dest}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download(version, Path(tmp))
        count = extract(sdist, version, args.dest)
    print(f"llama.cpp's {SCRIPT_NAME} ({PACKAGE} {version}, {count} files) extracted into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
