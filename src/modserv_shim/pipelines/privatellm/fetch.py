"""model-fetch: resumable, parallel HTTPS downloads into the model cache.

Each file is written to ``<cache>/<source>/.partial/<name>.part`` and renamed into place once it
has every byte the server announced (fsync, then an atomic ``os.replace``), so a file under its
final name is always complete.  A broken connection resumes where it stopped with a ``Range``
request (``206`` appends; a ``200`` starts over), up to ``resume_attempts`` times in a row without
progress.  401/403 fail at once, naming the secret; 404 and other 4xx fail at once; 408, 429 and
5xx count as a broken attempt.  A line with bytes and rate goes to the step log every
``progress_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from modserv_shim.errors import PermanentStepError, StepError
from modserv_shim.kit.files import publish

CHUNK = 1 << 20
MIB = float(1 << 20)
TRANSIENT = {408, 425, 429, 500, 502, 503, 504}


class Log(Protocol):
    def __call__(self, message: str, level: str = "info", **fields: Any) -> None: ...


def mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


@dataclass(frozen=True)
class FileJob:
    name: str  # relative name in the source (and in the cache folder)
    url: str
    final: Path
    part: Path


@dataclass
class _FileProgress:
    done: int = 0
    total: int | None = None
    state: str = "waiting"  # waiting, fetching, done, cached


@dataclass
class Progress:
    """Bytes per file; :meth:`line` is what the log shows."""

    files: dict[str, _FileProgress] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    received: int = 0  # bytes received in this run (not counting what a resume skipped)
    _last_received: int = 0
    _last_time: float = field(default_factory=time.monotonic)

    def of(self, name: str) -> _FileProgress:
        return self.files.setdefault(name, _FileProgress())

    def add(self, name: str, n: int) -> None:
        self.of(name).done += n
        self.received += n

    def line(self) -> str:
        now = time.monotonic()
        rate = (self.received - self._last_received) / max(now - self._last_time, 1e-6)
        self._last_received, self._last_time = self.received, now
        done = sum(f.done for f in self.files.values())
        totals = [f.total for f in self.files.values()]
        total = sum(t for t in totals if t is not None) if all(t is not None for t in totals) else None
        of = f" of {mib(total)} ({100 * done / total:.0f}%)" if total else ""
        head = f"{mib(done)}{of}, {rate / MIB:.1f} MiB/s"
        active = [f"{n} {mib(f.done)}" + (f"/{mib(f.total)}" if f.total else "")
                  for n, f in self.files.items() if f.state == "fetching"]
        return f"fetched {head}" + (f" ({'; '.join(active)})" if len(self.files) > 1 and active else "")

    def summary(self) -> str:
        took = time.monotonic() - self.started
        return (f"{mib(self.received)} received in {took:.1f} s ({self.received / MIB / max(took, 1e-6):.1f} MiB/s"
                " on average)")


def refused(status: int, url: str, secret: str | None) -> PermanentStepError:
    if secret is None:
        return PermanentStepError(f"the server asks for credentials (HTTP {status}) for {url}: name a configured"
                                  " secret in modelSource.secret")
    return PermanentStepError(f"the server refused the credentials of secret {secret} (HTTP {status}) for {url}")


class _Broken(Exception):
    """A download attempt that ended early (short body, 5xx, ...); the file resumes."""


def check_status(r: httpx.Response, url: str, secret: str | None) -> None:
    """Raise for answers a retry cannot fix (:class:`PermanentStepError`) or that count as broken."""
    if r.url.scheme != "https":
        raise PermanentStepError(f"{url} redirected to a non-https URL ({r.url.scheme}://{r.url.host}); refused")
    if r.status_code in (401, 403):
        raise refused(r.status_code, url, secret)
    if r.status_code in TRANSIENT:
        raise _Broken(f"HTTP {r.status_code}")
    if r.status_code == 404:
        raise PermanentStepError(f"not found at the source (HTTP 404): {url}")
    if r.status_code >= 400 and r.status_code != 416:
        raise PermanentStepError(f"the source answered HTTP {r.status_code} for {url}")


def tls_problem(exc: BaseException) -> str | None:
    """The certificate error behind a connect error, if that is what it is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        if isinstance(seen, ssl.SSLError):
            return seen.reason or str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return text if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text else None


def _content_range(value: str | None) -> tuple[int, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); the total may be ``*``."""
    try:
        unit, _, rest = (value or "").partition(" ")
        span, _, total = rest.partition("/")
        start = int(span.split("-", 1)[0])
        if unit != "bytes":
            raise ValueError(unit)
        return start, None if total in ("", "*") else int(total)
    except ValueError:
        raise _Broken(f"a 206 answer with an unreadable Content-Range: {value!r}") from None


def _check_space(folder: Path, needed: int, name: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise PermanentStepError(f"not enough disk space in the model cache for {name}: {mib(needed)} more"
                                 f" needed, {mib(free)} free in {folder}")


async def fetch_file(job: FileJob, http: httpx.AsyncClient, progress: Progress, log: Log, *,
                     secret: str | None, resume_attempts: int) -> None:
    """Download ``job.url`` to ``job.final`` (see the module docstring)."""
    state = progress.of(job.name)
    job.part.parent.mkdir(parents=True, exist_ok=True)
    stalls = 0
    while True:
        have = job.part.stat().st_size if job.part.exists() else 0
        start_have = have
        headers = {"Range": f"bytes={have}-"} if have else {}
        state.state, state.done = "fetching", have
        try:
            async with http.stream("GET", job.url, headers=headers) as r:
                check_status(r, job.url, secret)
                if r.status_code == 416:  # the part file is not a prefix of what is there now
                    job.part.unlink(missing_ok=True)
                    raise _Broken("HTTP 416 for the resumed range: starting over")
                total: int | None
                if r.status_code == 206:
                    begin, total = _content_range(r.headers.get("content-range"))
                    if begin != have:
                        job.part.unlink(missing_ok=True)
                        raise _Broken(f"the server resumed at byte {begin}, not {have}: starting over")
                    mode = "ab"
                    log(f"{job.name}: resuming at {mib(have)}" + (f" of {mib(total)}" if total else "")
                        + " (HTTP 206)")
                else:
                    length = r.headers.get("content-length")
                    total = int(length) if length and length.isdigit() else None
                    if have:
                        log(f"{job.name}: the server does not resume (HTTP {r.status_code}): starting over",
                            level="warning")
                    have = start_have = 0
                    state.done = 0
                    mode = "wb"
                    log(f"{job.name}: fetching {job.url}" + (f" ({mib(total)})" if total else ""))
                state.total = total
                if total is not None:
                    _check_space(job.part.parent, total - have, job.name)
                with job.part.open(mode) as f:
                    async for chunk in r.aiter_raw(CHUNK):
                        f.write(chunk)
                        have += len(chunk)
                        progress.add(job.name, len(chunk))
            if total is not None and have != total:
                if have > total:
                    job.part.unlink(missing_ok=True)
                    raise _Broken(f"received {have} bytes, more than the {total} announced: starting over")
                raise _Broken(f"the body ended at {mib(have)} of {mib(total)}")
            await asyncio.to_thread(publish, job.part, job.final)
            state.state = "done"
            return
        except httpx.TooManyRedirects:
            raise PermanentStepError(f"too many redirects for {job.url}") from None
        except (httpx.TransportError, _Broken) as exc:
            problem = tls_problem(exc) if isinstance(exc, httpx.ConnectError) else None
            if problem is not None:
                raise PermanentStepError(
                    f"the TLS certificate of {httpx.URL(job.url).host} is not trusted ({problem}): configure the"
                    f" CA in ca_file of secret {secret}" if secret else
                    f"the TLS certificate of {httpx.URL(job.url).host} is not trusted ({problem}): name a"
                    " configured secret whose ca_file holds its CA in modelSource.secret") from None
            got = (job.part.stat().st_size if job.part.exists() else 0) - start_have
            stalls = 0 if got > 0 else stalls + 1
            why = str(exc) or type(exc).__name__
            if stalls > resume_attempts:
                raise StepError(f"{job.name}: the download broke {stalls} times in a row without progress"
                                f" (last: {why})") from None
            log(f"{job.name}: download broken after {mib(have)} ({why}); resuming", level="warning")
            await asyncio.sleep(min(0.2 * 2 ** stalls, 10.0) if stalls else 0.1)


async def _ticker(progress: Progress, log: Log, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        log(progress.line())


async def fetch_all(jobs: Sequence[FileJob], http: httpx.AsyncClient, log: Log, *, secret: str | None,
                    parallel: int, resume_attempts: int, interval: float) -> Progress:
    """Fetch ``jobs``, ``parallel`` at a time, with a progress line every ``interval`` s; the first failure
    cancels the others and is raised."""
    progress = Progress()
    for j in jobs:
        progress.of(j.name)
    gate = asyncio.Semaphore(parallel)

    async def one(job: FileJob) -> None:
        async with gate:
            await fetch_file(job, http, progress, log, secret=secret, resume_attempts=resume_attempts)

    ticker = asyncio.create_task(_ticker(progress, log, interval))
    tasks = [asyncio.create_task(one(j)) for j in jobs]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in tasks:
            failure = t.exception() if t.done() and not t.cancelled() else None
            if failure is not None:
                raise failure
    finally:
        for t in (*tasks, ticker):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, ticker, return_exceptions=True)
    log(f"fetched {len(jobs)} file{'s' if len(jobs) != 1 else ''}: {progress.summary()}")
    return progress


async def check_access(http: httpx.AsyncClient, url: str, log: Callable[..., None], secret: str | None) -> None:
    """A cache hit still asks the source (HEAD) whether the credentials are good: revoked ones stop the
    deploy; a source that cannot be reached does not (the cached file is verified)."""
    try:
        r = await http.head(url)
    except httpx.HTTPError as exc:
        log(f"the source could not be asked whether the credentials still work ({type(exc).__name__});"
            " using the cached files", level="warning")
        return
    if r.status_code in (401, 403):
        raise refused(r.status_code, url, secret)
    if r.status_code >= 400:
        log(f"the source answered HTTP {r.status_code} to HEAD {url}; using the cached files", level="warning")
