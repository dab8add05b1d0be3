"""Time and peak memory of model validation on oversized and hostile model files (issue 8).

Model validation reads a model's metadata (config.json, the safetensors index and headers,
the GGUF header) before anything is scheduled.  A file that is much larger than such
metadata ever is must be refused after a ``stat`` and a bounded read, not parsed whole:
this script measures what each case costs, so the numbers in bench/RESULTS.md can be
re-made and compared (tests check behaviour and memory; timings live here).

Every case runs ``inspect_model`` once in a fresh interpreter and reports the wall time
of the call, the growth of the process's peak RSS during it (``ru_maxrss`` after minus
before, so the interpreter's own start-up is not counted) and the outcome (the
``problem`` tag and the start of the message, or the exception type when it was not a
:class:`ModelInvalid`).  The files are sparse where they are large: they cost no disk.

    .venv/bin/python bench/modelinfo_limits.py [--json bench/results/modelinfo_limits.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers.hf_fixtures import SMALL_CONFIG, write_small_hf_model  # noqa: E402
from tests.helpers.tiny_gguf import write_tiny_llama_gguf  # noqa: E402

SMOLLM2 = ROOT / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
GIB = 1024**3

# Runs in the child: one call, timed, with the peak-RSS growth it caused.
_CHILD = r"""
import json, resource, sys, time
from modserv_shim.modelinfo import ModelInvalid, inspect_model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    facts = inspect_model(sys.argv[1])
    outcome = "ok: " + facts.summary()
except ModelInvalid as e:
    outcome = f"{e.problem}: {e.message}"
except BaseException as e:  # noqa: BLE001 - what escapes is the finding
    outcome = f"{type(e).__name__}: {str(e)[:120]}"
elapsed = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if len(outcome) > 300:
    outcome = outcome[:300] + f"... ({len(outcome)} characters in all)"
print(json.dumps({"seconds": elapsed, "peak_rss_growth_mib": (after - before) / 1024, "outcome": outcome}))
"""


def _hf_with_big_config(folder: Path, size: int) -> Path:
    out = write_small_hf_model(folder)
    with (out / "config.json").open("r+b") as f:
        f.truncate(0)
        f.write(json.dumps(SMALL_CONFIG).encode()[:-1] + b', "padding": "')
        f.truncate(size)  # a sparse hole of NUL bytes: an unterminated JSON string
    return out


def _hf_with_deep_config(folder: Path) -> Path:
    out = write_small_hf_model(folder)
    (out / "config.json").write_bytes(b"[" * 100_000)
    return out


def _hf_with_huge_header_length(folder: Path) -> Path:
    out = write_small_hf_model(folder)
    with (out / "model.safetensors").open("r+b") as f:
        f.write(struct.pack("<Q", 2**60))
    return out


def _gguf_with_long_string(path: Path, claimed: int, size: int) -> Path:
    """A GGUF file of ``size`` bytes (sparse) whose first metadata string claims ``claimed`` bytes."""
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    key = b"general.architecture"
    head += struct.pack("<Q", len(key)) + key + struct.pack("<I", 8) + struct.pack("<Q", claimed)
    with path.open("wb") as f:
        f.write(head + b"llama")
        f.truncate(size)
    return path


def _hf_with_empty_objects(folder: Path, name: str, size: int) -> Path:
    """``name`` holding ``[{},{},...]`` of ``size`` bytes: the JSON that costs most memory per byte."""
    out = write_small_hf_model(folder, shards=2)
    n = (size - 1) // 3
    (out / name).write_bytes(b"[" + b"{}," * (n - 1) + b"{}]")
    return out


def _hf_with_header_of_empty_objects(folder: Path) -> Path:
    """A model.safetensors whose header is 100,000,000 bytes (the format's limit) of ``[{},{},...]``."""
    out = write_small_hf_model(folder)
    n = (100_000_000 - 1) // 3
    header = b"[" + b"{}," * (n - 1) + b"{}]"
    header += b" " * (100_000_000 - len(header))
    with (out / "model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
    return out


def _gguf_with_header_at_cap(path: Path) -> Path:
    """Two vocabularies of 2**24 empty strings: 256 MiB of header, the most the walk will skip through."""
    meta = [
        (b"general.architecture", struct.pack("<I", 8) + struct.pack("<Q", 5) + b"llama"),
        (b"llama.context_length", struct.pack("<II", 4, 4096)),
        (b"llama.block_count", struct.pack("<II", 4, 2)),
        (b"llama.embedding_length", struct.pack("<II", 4, 64)),
    ]
    with path.open("wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta) + 2))
        for key, value in meta:
            f.write(struct.pack("<Q", len(key)) + key + value)
        for key in (b"tokenizer.ggml.tokens", b"tokenizer.ggml.merges"):
            f.write(struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 2**24))
            f.seek(2**24 * 8, os.SEEK_CUR)  # 2**24 zero lengths: empty strings, sparse
        f.truncate(f.tell() + 4096)
    return path


def cases(tmp: Path) -> list[tuple[str, Path]]:
    out = [
        ("HF folder, config.json of 1 GiB (sparse)", _hf_with_big_config(tmp / "big-config", GIB)),
        ("HF folder, config.json of 100000 '['", _hf_with_deep_config(tmp / "deep-config")),
        ("HF folder, safetensors header length 2**60", _hf_with_huge_header_length(tmp / "st-header")),
        (
            "GGUF of 1 GiB (sparse), a metadata string claiming 900 MiB",
            _gguf_with_long_string(tmp / "long-string.gguf", 900 * 1024**2, GIB),
        ),
        ("GGUF, a metadata string claiming 2**62 bytes", _gguf_with_long_string(tmp / "huge.gguf", 2**62, 4096)),
        (
            "worst case: config.json of 16 MiB of empty objects",
            _hf_with_empty_objects(tmp / "objects-config", "config.json", 16 * 1024**2),
        ),
        (
            "worst case: index of 64 MiB of empty objects",
            _hf_with_empty_objects(tmp / "objects-index", "model.safetensors.index.json", 64 * 1024**2),
        ),
        (
            "worst case: safetensors header of 100,000,000 bytes of empty objects",
            _hf_with_header_of_empty_objects(tmp / "objects-header"),
        ),
        ("worst case: GGUF header of 256 MiB (2 x 2**24 strings)", _gguf_with_header_at_cap(tmp / "cap.gguf")),
        ("HF folder, valid (small)", write_small_hf_model(tmp / "valid-hf")),
        ("GGUF, valid (tiny, 0.6 MB)", write_tiny_llama_gguf(tmp / "tiny.gguf")),
    ]
    if SMOLLM2.is_file():
        out.append(("GGUF, valid (SmolLM2-135M, 98 MB)", SMOLLM2))
    return out


def run_case(path: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    if r.returncode != 0:
        return {"seconds": None, "peak_rss_growth_mib": None, "outcome": f"child failed: {r.stderr[-300:]}"}
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="modelinfo-limits-") as tmp:
        for name, path in cases(Path(tmp)):
            res = run_case(path)
            rows.append({"case": name, **res})
            secs = "-" if res["seconds"] is None else f"{res['seconds'] * 1000:.1f} ms"
            mem = "-" if res["peak_rss_growth_mib"] is None else f"{res['peak_rss_growth_mib']:.1f} MiB"
            outcome = res["outcome"] if len(res["outcome"]) <= 110 else res["outcome"][:107] + "..."
            print(f"| {name} | {secs} | {mem} | {outcome} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"python": platform.python_version(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
