"""The quant cache's pieces that the step (:mod:`.pipeline`), the converter (:mod:`.convert`) and the task on
the model volume (:mod:`.task`) share.

* :class:`SourceMemo`: a file's SHA-256, remembered in ``<cache>/sources/`` per path while its
  size, mtime and inode stay the same (a second deploy hashes nothing);
* :class:`Hashing`: files hashed in pieces (a cancelled step stops between two) through that memo,
  with progress in the step's log;
* :func:`locked`: an exclusive ``flock`` on an output's lock file, waiting for another step;
* :func:`cached`: the facts of an output already in the cache (a cache hit), or None.

The words of the log lines (quantizing, converting) are a :class:`Work`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from modserv_shim.modelinfo import ModelFacts, ModelInvalid, inspect_model
from modserv_shim.modelinfo.facts import gib
from modserv_shim.plugins import StepContext

HASH_CHUNK = 64 * 2**20
LOCK_POLL_SECONDS = 0.2
PROGRESS_SECONDS = 2.0


@dataclass(frozen=True)
class Work:
    """How the log lines name the work the cache saves."""

    verb: str
    """``quantize``: "nothing to quantize"."""
    doing: str
    """``quantizing``: "... is unreadable; quantizing again"."""
    done: str
    """``quantized``: "hashing ... to name the quantized file"."""
    another: str
    """``quantization of the same model and type``: "waiting for another ..."."""
    origin: str
    """``was made from the same input``: "cache hit: <file> (<type>, <size>) ..."."""


@dataclass(frozen=True)
class SourceMemo:
    """Where the SHA-256 of ``stamp["path"]`` is remembered, and what the file was when it was hashed."""

    file: Path
    stamp: dict[str, Any]

    @classmethod
    def of(cls, src: Path, cache: Path) -> SourceMemo:
        st = src.stat()
        stamp = {"path": str(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev}
        return cls(cache / "sources" / f"{hashlib.sha256(str(src).encode()).hexdigest()[:32]}.json", stamp)

    @property
    def size(self) -> int:
        return int(self.stamp["size"])

    def known(self) -> str | None:
        """The remembered SHA-256 while the file is as it was; else None."""
        with contextlib.suppress(OSError, ValueError):
            known = json.loads(self.file.read_text())
            if isinstance(known, dict) and {k: known.get(k) for k in self.stamp} == self.stamp:
                return str(known["sha256"])
        return None

    def remember(self, sha256: str) -> None:
        write_atomically(self.file, json.dumps({**self.stamp, "sha256": sha256}))


def file_sha256(src: Path, cache: Path) -> str:
    """The SHA-256 of ``src`` through its memo in ``cache`` (blocking: the task on the model volume)."""
    memo = SourceMemo.of(src, cache)
    sha = memo.known()
    if sha is None:
        h = hashlib.sha256()
        with src.open("rb") as f:
            while read_into(f, h):
                pass
        sha = h.hexdigest()
        memo.remember(sha)
    return sha


class Hashing:
    """A step hashing ``total`` bytes of ``what`` through the memo: before the first byte it reads it logs
    ``hashing <what> (<total>) to name the <done> file``, then its progress every ``PROGRESS_SECONDS``."""

    def __init__(self, ctx: StepContext, what: str, total: int, work: Work) -> None:
        self.ctx, self.what, self.total, self.work = ctx, what, total, work
        self.done = 0
        self.t0 = self.last = time.monotonic()

    async def sha256(self, src: Path, cache: Path) -> str:
        memo = await asyncio.to_thread(SourceMemo.of, src, cache)
        known = await asyncio.to_thread(memo.known)
        if known is not None:
            return known
        if not self.done and memo.size:
            self.ctx.log(f"hashing {self.what} ({gib(self.total)}) to name the {self.work.done} file")
        h = hashlib.sha256()
        f = await asyncio.to_thread(open, src, "rb")
        try:  # in pieces: a cancelled step stops between two
            while piece := await asyncio.to_thread(read_into, f, h):
                self.done += piece
                if time.monotonic() - self.last >= PROGRESS_SECONDS:
                    self.last = time.monotonic()
                    self.ctx.log(f"hashing: {gib(self.done)} of {gib(self.total)}, {self.last - self.t0:.0f} s")
        finally:
            f.close()
        digest = h.hexdigest()
        await asyncio.to_thread(memo.remember, digest)
        return digest


@contextlib.asynccontextmanager
async def locked(ctx: StepContext, path: Path, work: Work) -> AsyncIterator[int]:
    """An exclusive ``flock`` on ``path`` (its fd is handed to the child, which holds it too)."""
    fd = await asyncio.to_thread(os.open, path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    ctx.log(f"waiting for another {work.another} ({path.name})")
                    waited = True
                await asyncio.sleep(LOCK_POLL_SECONDS)
        yield fd
    finally:
        os.close(fd)  # releases the lock once the child (if any) is gone too


async def cached(ctx: StepContext, final: Path, kind: str, digest: str, work: Work) -> ModelFacts | None:
    """The facts of ``final`` when it is in the cache and reads as a model (an unreadable one is removed)."""
    if not await asyncio.to_thread(final.exists):
        return None
    try:
        facts = await asyncio.to_thread(inspect_model, final)
    except ModelInvalid as exc:
        ctx.log(f"the cached {final.name} is unreadable ({exc}); {work.doing} again", level="warning")
        await asyncio.to_thread(final.unlink, missing_ok=True)
        return None
    size = (await asyncio.to_thread(final.stat)).st_size
    ctx.log(f"cache hit: {final} ({kind}, {gib(size)}) {work.origin}"
            f" (sha256 {digest[:12]}...): nothing to {work.verb}")
    return facts


def read_into(f: IO[bytes], h: Any) -> int:
    """One piece of ``f`` into the hash ``h``; its length (0 at the end)."""
    piece = f.read(HASH_CHUNK)
    h.update(piece)
    return len(piece)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def remove_leftover(ctx: StepContext, partial: Path) -> None:
    """Remove the half file of an attempt that did not finish (a crash, a kill -9 of the shim)."""
    if await asyncio.to_thread(partial.exists):
        ctx.log(f"removing {partial.name}, left by an attempt that did not finish")
        await asyncio.to_thread(partial.unlink, missing_ok=True)


@contextlib.asynccontextmanager
async def writing(proc: asyncio.subprocess.Process, partial: Path) -> AsyncIterator[None]:
    """While a child writes ``partial``: if the step is cancelled (a delete, the timeout) or breaks,
    the child is killed and its half file removed, so nothing half-written survives."""
    try:
        yield
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.to_thread(partial.unlink, missing_ok=True)
        raise
