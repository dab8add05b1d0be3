"""model-quantization's first half for a Hugging Face folder: llama.cpp's ``convert_hf_to_gguf.py`` to F16.

llama.cpp quantizes GGUF files only, so a Hugging Face folder (safetensors or ``.bin`` weights,
``config.json``, a tokenizer) is converted first, with llama.cpp's own converter at the version
of the installed llama-cpp-python: ``scripts/get-llama-convert.py`` extracts it from that
version's sdist into ``<venv>/share/modserv-shim/llama.cpp-convert/`` (``make setup`` runs it;
option ``convert_script`` points elsewhere).  It needs torch, transformers and sentencepiece: the
extra ``convert`` (``pip install 'modserv-shim[convert]'``); a missing script or module is a
:class:`ConverterMissing` saying what to install, before any work.

The step then

1. names the output by the folder's content: ``hf-<digest>.F16.gguf`` (``BF16`` for a bfloat16
   checkpoint, whose values F16 cannot always hold) in the quant cache, where ``<digest>`` is the
   SHA-256 of the sorted (file name, SHA-256) of the folder's files (each file's SHA-256
   remembered per path, size, mtime and inode in ``<cache>/sources/``, as for GGUF input) and of
   the converter's version.  A second deploy of the same folder finds the file there (a cache
   hit, logged, no work);
2. checks the free disk space (2 bytes per parameter, plus a margin);
3. runs the converter in a child process (``python -c BOOT``: it dies with the shim,
   ``PR_SET_PDEATHSIG``, then runs the script as ``__main__``) into ``<name>.partial``, logging
   tensors and bytes written every 2 s, and renames the file when the child exited 0
   (:func:`~modserv_shim.kit.files.publish`).  A cancelled step kills the child and removes the
   partial file; a leftover from a crash is removed by the next attempt.  One lock file per
   output keeps two deploys of the same folder from converting it twice at the same time.

The quantization that follows is the GGUF path of :mod:`.pipeline`, on the converted file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from modserv_shim.errors import PermanentStepError, StepError
from modserv_shim.kit.files import publish
from modserv_shim.modelinfo import FitResult, ModelDoesNotFit, ModelFacts, inspect_model
from modserv_shim.modelinfo.facts import GIB, gib
from modserv_shim.pipelines.opensourcellm import MODEL
from modserv_shim.pipelines.quant.cache import Hashing, Work, cached, locked, remove_leftover, writing
from modserv_shim.pipelines.quant.options import QuantOptions
from modserv_shim.pipelines.quant.types import AUTO, choose_auto, quantized_facts
from modserv_shim.plugins import StepContext

SCRIPT_NAME = "convert_hf_to_gguf.py"
VERSION_FILE = "VERSION"
CONVERT_SUBDIR = Path("share") / "modserv-shim" / "llama.cpp-convert"
INSTALL_EXTRA = "pip install 'modserv-shim[convert]'"
SETUP_SCRIPT = "python scripts/get-llama-convert.py"

MODULES: dict[str, str] = {  # module the converter imports -> the package that installs it
    "torch": "torch", "transformers": "transformers", "sentencepiece": "sentencepiece",
    "google.protobuf": "protobuf", "safetensors": "safetensors", "numpy": "numpy", "yaml": "pyyaml",
    "tqdm": "tqdm",
}
BASE_SECONDS = 120.0
PROGRESS_SECONDS = 2.0
OUTPUT_LINES = 20
DISK_MARGIN = 1.05
DISK_SLACK_BYTES = 32 * 2**20  # the vocabulary and metadata: a few MiB for a 150k-token tokenizer
TENSOR_LINE = re.compile(r"^INFO:hf-to-gguf:(\S+),\s+\S+ --> \w+, shape = ")
KEPT_LINES = ("INFO:hf-to-gguf:Model architecture:", "WARNING:", "ERROR:")
ERROR_LINE = re.compile(r"^(ERROR:\S+:|[\w.]*(Error|Exception|Interrupt): )")
CONVERTING = Work(verb="convert", doing="converting", done="converted", another="conversion of the same folder",
                  origin="was converted from the same files")

# Run in the converter's interpreter (which need not have modserv_shim): die with the shim
# (PR_SET_PDEATHSIG = 1, as quant/worker.py does), stop if it is gone already, then run the
# script as ``python convert_hf_to_gguf.py ARGS`` would (its folder first on sys.path).
BOOT = """\
import ctypes, os, runpy, signal, sys
parent, script = int(sys.argv[1]), sys.argv[2]
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    os._exit(3)
sys.argv = sys.argv[2:]
sys.path[0] = os.path.dirname(os.path.abspath(script))
runpy.run_path(script, run_name="__main__")
"""

# Which of the modules named on the command line the interpreter lacks (a missing parent package,
# ``google`` of ``google.protobuf``, is an ImportError rather than None).
FIND_MODULES = """\
import importlib.util, sys
def missing(name):
    try:
        return importlib.util.find_spec(name) is None
    except ImportError:
        return True
print(" ".join(m for m in sys.argv[1:] if missing(m)))
"""

Record = Callable[[StepContext, str | None, Path, str | None, ModelFacts, FitResult, Path | None], None]
"""``QuantPipeline._record``: what the step serves, its facts and fit."""


class ConverterMissing(PermanentStepError):
    """llama.cpp's converter or a module it needs is not installed."""


def default_convert_dir() -> Path:
    """Where ``scripts/get-llama-convert.py`` puts the converter: ``<sys.prefix>/share/modserv-shim/llama.cpp-convert``.
    """
    return Path(sys.prefix) / CONVERT_SUBDIR


def convert_script(options: QuantOptions) -> Path:
    return Path(options.convert_script).expanduser() if options.convert_script else default_convert_dir() / SCRIPT_NAME


def convert_python(options: QuantOptions) -> str:
    return options.convert_python or sys.executable


def out_type(facts: ModelFacts) -> str:
    """F16, or BF16 for a bfloat16 checkpoint (F16 overflows past 65504 and loses bfloat16's tiny values)."""
    return "BF16" if facts.dtype.lower() in ("bfloat16", "bf16") else "F16"


@dataclass(frozen=True)
class Converted:
    """The converted GGUF file, its facts, and the bytes of the folder it was made from."""

    file: Path
    facts: ModelFacts
    input_bytes: int


async def check_converter(script: Path, python: str) -> None:
    """A :class:`ConverterMissing` naming what to install when the script or a module it imports is missing."""
    if not await asyncio.to_thread(script.is_file):
        raise ConverterMissing(
            f"the quant pipeline converts a Hugging Face folder to GGUF with llama.cpp's {SCRIPT_NAME}, which is not"
            f" at {script}: fetch it with `{SETUP_SCRIPT}` (`make setup` runs it; it extracts the version that"
            f" matches llama-cpp-python into {default_convert_dir()}) or set the quant pipeline's option"
            f" convert_script; it also needs the extra convert: {INSTALL_EXTRA}",
            details={"convert_script": str(script), "install": INSTALL_EXTRA, "setup": SETUP_SCRIPT})
    try:
        proc = await asyncio.create_subprocess_exec(
            python, "-c", FIND_MODULES, *MODULES, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
    except OSError as exc:
        raise ConverterMissing(f"cannot run {python} to convert the Hugging Face folder: {exc.strerror or exc}"
                               " (the quant pipeline's option convert_python)") from None
    if proc.returncode != 0:
        raise ConverterMissing(f"{python} failed to look for the converter's modules:"
                               f" {err.decode(errors='replace').strip()[-300:]}")
    missing = sorted({MODULES[m] for m in out.decode().split()})
    if missing:
        raise ConverterMissing(
            f"converting a Hugging Face folder to GGUF needs {', '.join(missing)}, which {python} does not have:"
            f" {INSTALL_EXTRA} (the extra convert: torch, transformers, sentencepiece, protobuf, safetensors)",
            details={"missing": missing, "python": python, "install": INSTALL_EXTRA})


def converter_version(script: Path) -> str:
    """What the converter's VERSION file says (``llama-cpp-python 0.3.36``), else the script's SHA-256."""
    with contextlib.suppress(OSError):
        return (script.parent / VERSION_FILE).read_text().strip()
    return "sha256:" + hashlib.sha256(script.read_bytes()).hexdigest()


def source_files(folder: Path) -> list[Path]:
    """The files of the folder the converter may read: every regular file at its top level but hidden
    ones and GGUF files (config, tokenizer, weights, their index, the model card it reads metadata from)."""
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and not p.name.endswith((".gguf", ".partial")) and p.is_file())


async def convert_hf_folder(
    ctx: StepContext, folder: Path, *, cache: Path, options: QuantOptions, kind: str,
    fit_check: Callable[[ModelFacts], FitResult], record: Record,
) -> Converted | None:
    """The folder converted to an F16/BF16 GGUF file in ``cache`` (or found there); None on a dry run
    that would convert (it records what it would serve, with estimated facts)."""
    facts = MODEL.get(ctx)
    if not await asyncio.to_thread(folder.is_dir):
        raise PermanentStepError(f"{folder} is neither a GGUF file nor a Hugging Face folder: the quant pipeline takes"
                                 " one of them")
    script, python = convert_script(options), convert_python(options)
    outtype = out_type(facts)
    expected = max(facts.parameter_count, 0) * 2
    input_bytes = facts.weights_bytes
    ctx.set_timeout(BASE_SECONDS + options.seconds_per_gib * (input_bytes + expected) / GIB)
    await check_converter(script, python)
    await asyncio.to_thread(cache.mkdir, parents=True, exist_ok=True)
    files = await asyncio.to_thread(source_files, folder)
    digest = await folder_digest(ctx, folder, files, cache, await asyncio.to_thread(converter_version, script))
    final = cache / f"hf-{digest}.{outtype}.gguf"
    async with locked(ctx, cache / f"hf-{digest}.{outtype}.lock", CONVERTING) as lock_fd:
        converted = await cached(ctx, final, outtype, digest, CONVERTING)
        if converted is None and ctx.dry_run:
            _dry_run(ctx, folder, final, digest, facts, outtype, kind, fit_check, record)
            return None
        if converted is None:
            need = int(expected * DISK_MARGIN) + DISK_SLACK_BYTES
            free = (await asyncio.to_thread(shutil.disk_usage, cache)).free
            if free < need:
                raise PermanentStepError(
                    f"not enough disk space for the converted model in {cache}: {outtype} needs about {gib(need)},"
                    f" {gib(free)} is free; free some, or point the quant pipeline's cache_dir at a larger disk",
                    details={"cache_dir": str(cache), "needed_bytes": need, "free_bytes": free})
            await _convert(ctx, python, script, folder, final, outtype, lock_fd, expected, need)
            converted = await asyncio.to_thread(inspect_model, final)
            ctx.log(f"{gib(input_bytes)} of {facts.dtype} weights in {len(files)} files -> {final.name}:"
                    f" {gib(converted.weights_bytes)} of {outtype} ({converted.parameter_count:,} parameters)")
    return Converted(final, converted, input_bytes)


def _dry_run(ctx: StepContext, folder: Path, final: Path, digest: str, facts: ModelFacts, outtype: str, kind: str,
             fit_check: Callable[[ModelFacts], FitResult], record: Record) -> None:
    estimate = replace(facts, format="gguf", path=str(final), dtype=outtype, quantization=None,
                       weights_bytes=facts.parameter_count * 2)
    served: str | None = kind
    if kind == AUTO:
        choice = choose_auto(estimate, fit_check)
        if choice is None:
            raise ModelDoesNotFit(f"no quantization type makes {ctx.spec.modelName} fit: {fit_check(estimate).message}")
        served = choice.kind
    if served is not None and served != outtype:
        estimate = quantized_facts(estimate, served)
    ctx.log(f"dry run: would convert {folder} to {outtype} as {final}"
            + (f", then quantize it to {served}" if served not in (None, outtype) else "")
            + f" (weights about {gib(estimate.weights_bytes)})")
    record(ctx, served if served != outtype else None, folder, digest, estimate, fit_check(estimate), final)


async def folder_digest(ctx: StepContext, folder: Path, files: Sequence[Path], cache: Path, version: str) -> str:
    """SHA-256 of the converter's version and the sorted (name, SHA-256) of ``files``."""
    if not files:
        raise PermanentStepError(f"{folder} is empty: nothing to convert")
    total = sum([(await asyncio.to_thread(p.stat)).st_size for p in files])
    hashing = Hashing(ctx, f"the files of {folder}", total, CONVERTING)
    entries = [[p.name, await hashing.sha256(p, cache)] for p in files]
    if hashing.done:
        ctx.log(f"hashed {len(files)} files of {folder} ({gib(hashing.done)})"
                f" in {time.monotonic() - hashing.t0:.1f} s")
    return hashlib.sha256(json.dumps({"converter": version, "files": entries}).encode()).hexdigest()


@dataclass
class _Output:
    tensors: int = 0
    lines: deque[str] | None = None


async def _convert(ctx: StepContext, python: str, script: Path, folder: Path, final: Path, outtype: str,
                   lock_fd: int, expected: int, need: int) -> None:
    partial = final.with_name(final.name + ".partial")
    await remove_leftover(ctx, partial)
    ctx.log(f"converting {folder} to {outtype} with llama.cpp's {SCRIPT_NAME} ({script.parent}) into {partial.name}")
    out = _Output(lines=deque(maxlen=OUTPUT_LINES))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        python, "-c", BOOT, str(os.getpid()), str(script), str(folder), "--outfile", str(partial),
        "--outtype", outtype.lower(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, pass_fds=(lock_fd,), env=env)
    assert proc.stdout is not None
    reader = asyncio.create_task(_read_output(proc.stdout, out, ctx))
    try:
        async with writing(proc, partial):
            while not reader.done():
                await asyncio.wait({reader}, timeout=PROGRESS_SECONDS)
                if not reader.done():
                    written = await asyncio.to_thread(_size, partial)
                    at = f"{time.monotonic() - t0:.0f} s"
                    if out.tensors == 0 and written == 0:
                        ctx.log(f"converting to {outtype}: the converter starts (it imports torch and"
                                f" transformers), {at}")
                    else:
                        ctx.log(f"converting to {outtype}: {out.tensors} tensors read, {gib(written)} of about"
                                f" {gib(expected)} written, {at}")
            await reader
            rc = await proc.wait()
    finally:
        reader.cancel()
    if rc != 0:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
        if rc < 0:
            raise StepError(f"the converter was killed by signal {-rc} after {out.tensors} tensors; its partial file"
                            " was removed")
        reason = _reason(out.lines or deque()) or f"exit code {rc}"
        free = (await asyncio.to_thread(shutil.disk_usage, final.parent)).free
        if free < need // 4 or "No space left" in reason:
            raise PermanentStepError(f"the disk of {final.parent} filled up while converting ({gib(free)} free):"
                                     f" {reason}")
        raise PermanentStepError(f"llama.cpp's {SCRIPT_NAME} could not convert {folder}: {reason}",
                                 details={"output": list(out.lines or ())})
    await asyncio.to_thread(publish, partial, final)
    ctx.log(f"converted {out.tensors} tensors to {outtype} in {time.monotonic() - t0:.1f} s: {final}")


async def _read_output(stream: asyncio.StreamReader, out: _Output, ctx: StepContext) -> None:
    """The converter's log lines (and tqdm's ``\\r`` updates): count tensors, keep the last lines, pass on the
    important ones."""
    assert out.lines is not None
    buf = ""
    while chunk := await stream.read(65536):
        buf += chunk.decode("utf-8", errors="replace")
        *lines, buf = re.split(r"[\r\n]", buf)
        for line in (x.strip() for x in lines):
            if not line:
                continue
            out.lines.append(line)
            if TENSOR_LINE.match(line):
                out.tensors += 1
            elif line.startswith(KEPT_LINES):
                level = "error" if line.startswith("ERROR:") else "warning" if line.startswith("WARNING:") else "info"
                ctx.log(f"convert_hf_to_gguf: {line.split(':', 2)[-1].strip()}", level=level)
    if buf.strip():
        out.lines.append(buf.strip())


def _reason(lines: deque[str]) -> str | None:
    for line in reversed(lines):
        if ERROR_LINE.match(line):
            return line
    return lines[-1] if lines else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0

