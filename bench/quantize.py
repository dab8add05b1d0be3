"""Quantization time and size through the quant pipeline's own child process (llama.cpp's quantizer).

For each run: a fresh cache directory, then the model-quantization step's work as the pipeline
does it (the child ``python -m modserv_shim.pipelines.quant.worker``, which loads llama.cpp and
calls ``llama_model_quantize``), timed from the spawn to the exit (so the Python start-up and
the library load are included), and the sizes before and after read by modelinfo.

    .venv/bin/python bench/quantize.py [--model .models/SmolLM2-135M-Instruct.Q4_1.gguf] [--type Q4_K_M]
                                       [--runs 5] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modserv_shim.modelinfo import inspect_model
from modserv_shim.pipelines.quant.types import check_type, llama_ftypes

REPO = Path(__file__).resolve().parent.parent


def once(model: Path, kind: str, threads: int, out_dir: Path) -> tuple[float, float, Path]:
    dst = out_dir / f"out.{kind}.gguf"
    dst.unlink(missing_ok=True)
    req = {"parent": os.getpid(), "src": str(model), "dst": str(dst), "ftype": llama_ftypes()[kind],
           "allow_requantize": True, "threads": threads or os.cpu_count() or 1}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "modserv_shim.pipelines.quant.worker", json.dumps(req)],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    done = next(e for e in events if e["event"] == "done")
    return wall, float(done["seconds"]), dst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=REPO / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    kind = check_type(args.type)
    before = inspect_model(args.model)
    walls, calls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            wall, call, dst = once(args.model, kind, args.threads, Path(tmp))
            walls.append(wall)
            calls.append(call)
        after = inspect_model(dst)
        out_size = dst.stat().st_size
    print(f"model {args.model.name}: {before.dtype}, {before.parameter_count} parameters")
    print(f"{'':24}{'file MiB':>10}{'weights MiB':>13}{'bits/weight':>13}")
    print(f"{'before (' + before.dtype + ')':24}{args.model.stat().st_size / 2**20:>10.1f}"
          f"{before.weights_bytes / 2**20:>13.1f}{before.bits_per_weight:>13.2f}")
    print(f"{'after (' + kind + ')':24}{out_size / 2**20:>10.1f}{after.weights_bytes / 2**20:>13.1f}"
          f"{after.bits_per_weight:>13.2f}")
    print(f"runs {args.runs}, threads {args.threads or os.cpu_count()}:"
          f" child wall median {statistics.median(walls):.2f} s (min {min(walls):.2f}, max {max(walls):.2f});"
          f" llama_model_quantize median {statistics.median(calls):.2f} s")


if __name__ == "__main__":
    main()
