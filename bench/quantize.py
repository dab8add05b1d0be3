"""Quantization time and size through the quant pipeline's own child process (llama.cpp's quantizer).

For each run: a fresh cache directory, then the model-quantization step's work as the pipeline
does it (the child ``python -m modserv_shim.pipelines.quant.worker``, which loads llama.cpp and
calls ``llama_model_quantize``), timed from the spawn to the exit (so the Python start-up and
the library load are included), and the sizes before and after read by modelinfo.

    .venv/bin/python bench/quantize.py [--model .models/SmolLM2-135M-Instruct.Q4_1.gguf] [--type Q4_K_M]
                                       [--runs 5] [--threads 0]

With ``--hf``: the tiny Hugging Face Llama of ``tests/helpers/tiny_hf_llama.py`` (random weights,
hidden 256, 2 layers, a SentencePiece tokenizer; built in a temporary folder), converted to F16 by
llama.cpp's ``convert_hf_to_gguf.py`` in the child process the pipeline starts (``python -c BOOT``
of :mod:`modserv_shim.pipelines.quant.convert`; torch's import included), then quantized to each
``--types`` type from that F16 file:

    .venv/bin/python bench/quantize.py --hf [--types Q8_0,Q4_K_M] [--runs 3]
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
from modserv_shim.pipelines.quant.convert import BOOT, SCRIPT_NAME, default_convert_dir
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


def convert_once(folder: Path, dst: Path) -> float:
    """llama.cpp's converter on ``folder`` into ``dst`` (F16), as model-quantization starts it; its wall time."""
    dst.unlink(missing_ok=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BOOT, str(os.getpid()), str(default_convert_dir() / SCRIPT_NAME), str(folder),
                    "--outfile", str(dst), "--outtype", "f16"], capture_output=True, text=True, check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return time.perf_counter() - t0


def hf(types: list[str], runs: int, threads: int) -> None:
    sys.path.insert(0, str(REPO))
    from tests.helpers.tiny_hf_llama import parameter_count, write_tiny_hf_llama

    kinds = [check_type(k) for k in types]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder = write_tiny_hf_llama(Path(tmp) / "tiny-llama")
        built = time.perf_counter() - t0
        weights = (folder / "model.safetensors").stat().st_size
        f16 = Path(tmp) / "tiny.F16.gguf"
        converts = [convert_once(folder, f16) for _ in range(runs)]
        rows = [("F16 (converted)", f16.stat().st_size, inspect_model(f16), converts, None)]
        for kind in kinds:
            walls, calls = [], []
            for _ in range(runs):
                wall, call, dst = once(f16, kind, threads, Path(tmp))
                walls.append(wall)
                calls.append(call)
            rows.append((kind, dst.stat().st_size, inspect_model(dst), walls, calls))
        print(f"tiny Hugging Face Llama: {parameter_count(folder)} parameters, float32 safetensors"
              f" {weights / 2**20:.2f} MiB (built in {built:.1f} s)")
        print(f"{'':18}{'file MiB':>10}{'weights MiB':>13}{'bits/weight':>13}   child wall median (min-max)")
        for name, size, facts, walls, calls in rows:
            call = "" if calls is None else f"; llama_model_quantize median {statistics.median(calls):.2f} s"
            print(f"{name:18}{size / 2**20:>10.2f}{facts.weights_bytes / 2**20:>13.2f}{facts.bits_per_weight:>13.2f}"
                  f"   {statistics.median(walls):.2f} s ({min(walls):.2f}-{max(walls):.2f}), {runs} runs{call}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=REPO / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--hf", action="store_true", help="the tiny Hugging Face Llama: convert, then quantize")
    ap.add_argument("--types", default="Q8_0,Q4_K_M", help="with --hf: the types to quantize the F16 file to")
    args = ap.parse_args()
    if args.hf:
        hf(args.types.split(","), args.runs, args.threads)
        return
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
