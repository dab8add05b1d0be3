"""Test images built inside the test Docker Engine (nothing can be pulled from a registry here).

Use from a test module::

    from tests.helpers import docker_images as di
    from tests.helpers.docker_engine import DockerEngine, docker_engine_fixture  # noqa: F401
    from tests.helpers.docker_images import llama_image_fixture, tiny_image_fixture  # noqa: F401

    def test_x(docker_engine: DockerEngine, tiny_image: str) -> None:
        docker_engine.cli("run", "-d", "--network", "host", tiny_image, *di.serve_models_cmd("m", port))

``tiny_image`` -> ``modserv-test/busybox:1``: ``FROM scratch`` plus Debian's static busybox
(``/bin/busybox`` and a symlink per applet, ``PATH=/bin``, ``CMD ["sh"]``).  The ``*_cmd``
functions below are container commands for it: a fake OpenAI runtime, exit after N seconds,
ignore SIGTERM, run out of memory.

``llama_image`` -> ``modserv-test/llama:1``: a minimal Debian bookworm (debootstrap minbase with
python3 and libgomp1) plus the compiled llama-cpp-python and its ``[server]`` requirements,
copied from the project's virtualenv into ``/opt/modserv/site-packages`` (``PYTHONPATH``).
See ``llama_server_cmd``.  The debootstrap root filesystem is cached as a tarball under
``.cache/docker/`` keyed by its recipe, so only the first build on a machine runs debootstrap.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata as md
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.helpers.docker_engine import ENV_REQUIRE, DockerEngine, DockerError

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "docker"

TINY_IMAGE = "modserv-test/busybox:1"
LLAMA_IMAGE = "modserv-test/llama:1"
BUSYBOX = "/bin/busybox"  # Debian busybox-static

SITE = "/opt/modserv/site-packages"
SUITE = "bookworm"
ROOTFS_PACKAGES = ("python3", "libgomp1")
ROOTFS_RECIPE_VERSION = 1  # bump when the way the root filesystem is made changes


# ---------------------------------------------------------------------------------------------
# Container commands for the tiny image


def models_json(model: str) -> str:
    """An OpenAI ``/v1/models`` list with one model."""
    return json.dumps({"object": "list", "data": [
        {"id": model, "object": "model", "created": 0, "owned_by": "modserv-test"}]})


def serve_models_cmd(model: str, port: int, host: str = "127.0.0.1", delay: float = 0) -> list[str]:
    """Serve ``/v1/models`` (for ``model``) and ``/health`` over HTTP with busybox httpd.

    ``delay``: seconds to wait before listening, like a runtime loading its model.  httpd
    sends these files without a Content-Type; the bodies are JSON.
    """
    script = ('sleep "$3" && mkdir -p /www/v1 && printf "%s" "$1" > /www/v1/models'
              ' && printf "%s" \'{"status":"ok"}\' > /www/health && exec httpd -f -p "$2" -h /www')
    return ["sh", "-c", script, "serve-models", models_json(model), f"{host}:{port}", f"{delay:g}"]


def exit_after_cmd(seconds: float, code: int) -> list[str]:
    """Run for ``seconds``, then exit with ``code``."""
    return ["sh", "-c", f"sleep {seconds:g}; exit {int(code)}"]


def ignore_sigterm_cmd() -> list[str]:
    """A shell that ignores SIGTERM explicitly: only SIGKILL stops it, with or without ``--init``."""
    return ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]


def idle_shell_cmd() -> list[str]:
    """A shell with no signal handlers: as PID 1 (no ``--init``) it ignores SIGTERM, as PID 2 it dies."""
    return ["sh", "-c", "while :; do sleep 1; done"]


def oom_cmd() -> list[str]:
    """Allocate memory (a doubling shell string) until the cgroup's OOM killer ends it.

    Use with a small memory limit (e.g. ``--memory 32m`` / ``Memory: 33554432``):
    ``State.OOMKilled`` is then true and the exit code 137, within a second.
    """
    return ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done"]


def llama_server_cmd(model_path: str, port: int, host: str = "127.0.0.1", alias: str | None = None,
                     n_ctx: int = 2048) -> list[str]:
    """The llama.cpp server inside ``modserv-test/llama:1`` (the model file mounted at ``model_path``)."""
    cmd = ["python3", "-m", "llama_cpp.server", "--model", model_path, "--host", host, "--port", str(port),
           "--n_ctx", str(n_ctx)]
    if alias:
        cmd += ["--model_alias", alias]
    return cmd


# ---------------------------------------------------------------------------------------------
# Building


def _unavailable(reason: str) -> None:
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _has_image(engine: DockerEngine, name: str) -> bool:
    return engine.cli("image", "inspect", name, check=False).returncode == 0


def _dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, int(time.time())
    tar.addfile(ti)


def tiny_tar(path: Path) -> Path:
    """Write the tiny image's root filesystem as a tar: static busybox plus applet symlinks."""
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "dev", "proc", "sys", "etc", "www"):
            _dir(tar, d)
        _dir(tar, "tmp", 0o1777)
        ti = tar.gettarinfo(BUSYBOX, arcname="bin/busybox")
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        with open(BUSYBOX, "rb") as f:
            tar.addfile(ti, f)
        for applet in applets:
            if applet != "busybox":
                ti = tarfile.TarInfo(f"bin/{applet}")
                ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(ti)
        for name, text in (("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            data = text.encode()
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tar.addfile(ti, io.BytesIO(data))
    return path


def build_tiny_image(engine: DockerEngine) -> str:
    if _has_image(engine, TINY_IMAGE):
        return TINY_IMAGE
    if not os.access(BUSYBOX, os.X_OK) or not _is_static_elf(BUSYBOX):
        _unavailable(f"no static busybox at {BUSYBOX} (Debian package busybox-static)")
    with tempfile.TemporaryDirectory(prefix="modserv-tiny-") as tmp:
        tar = tiny_tar(Path(tmp) / "rootfs.tar")
        engine.cli("import", "--change", "ENV PATH=/bin", "--change", 'CMD ["sh"]',
                   "--message", "modserv tests: scratch + static busybox", str(tar), TINY_IMAGE)
    return TINY_IMAGE


def _is_static_elf(path: str) -> bool:
    """True for a 64-bit ELF executable without a program interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[:5] != b"\x7fELF\x02":
        return False
    phoff = int.from_bytes(head[0x20:0x28], "little")
    phentsize = int.from_bytes(head[0x36:0x38], "little")
    phnum = int.from_bytes(head[0x38:0x3A], "little")
    types = [int.from_bytes(head[phoff + i * phentsize:phoff + i * phentsize + 4], "little") for i in range(phnum)]
    return 3 not in types


# --- the inference image ------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources), or deb.debian.org."""
    if os.environ.get("MODSERV_TEST_DEBIAN_MIRROR"):
        return os.environ["MODSERV_TEST_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
               *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for src in sources:
        with contextlib.suppress(OSError):
            text = src.read_text()
            for m in re.finditer(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", text, re.M):
                if "security" not in m.group(1):
                    return m.group(1)
            for stanza in text.split("\n\n"):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                suites = re.search(r"^Suites:\s*(.*)$", stanza, re.M)
                if uris and suites and SUITE in suites.group(1).split() and "security" not in uris.group(1):
                    return uris.group(1)
    return "http://deb.debian.org/debian"


def rootfs_recipe() -> dict[str, object]:
    dv = subprocess.run(["debootstrap", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {"suite": SUITE, "variant": "minbase", "include": sorted(ROOTFS_PACKAGES), "mirror": debian_mirror(),
            "arch": os.uname().machine, "debootstrap": dv, "recipe": ROOTFS_RECIPE_VERSION}


def _mounts_under(path: Path) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == str(path) or point.startswith(f"{path}/"):
                out.append(point)
    return out


def _safe_rmtree(path: Path) -> None:
    """Remove a chroot directory, never following a mount (debootstrap mounts /proc, /sys in it)."""
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if _mounts_under(path):
        raise RuntimeError(f"cannot remove {path}: mounts remain under it: {_mounts_under(path)}")
    shutil.rmtree(path, ignore_errors=True)


def debian_rootfs_tar(log: Path | None = None) -> Path:
    """The cached debootstrap root filesystem tarball; built (about 2 minutes) when missing."""
    recipe = rootfs_recipe()
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"rootfs-{SUITE}-{key}.tar"
    if target.exists():
        return target
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is not installed (Debian package debootstrap)")
    with open(CACHE / "rootfs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a waiting session reuses it
        if target.exists():
            return target
        work = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
        try:
            rootfs = work / "rootfs"
            cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}", SUITE,
                   str(rootfs), str(recipe["mirror"])]
            p = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1200)
            if log:
                log.write_text(p.stdout + p.stderr)
            if p.returncode != 0:
                tail = "\n".join((p.stdout + p.stderr).splitlines()[-20:])
                raise RuntimeError(f"debootstrap failed (exit {p.returncode}):\n{tail}")
            for point in sorted(_mounts_under(rootfs), key=len, reverse=True):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for f in (rootfs / junk).glob("*"):
                    if f.is_file():
                        f.unlink()
            (rootfs / "etc" / "modserv-rootfs.json").write_text(json.dumps(recipe, indent=1) + "\n")
            partial = work / "rootfs.tar"
            subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "--one-file-system", "-cf",
                            str(partial), "."], check=True, capture_output=True)
            partial.rename(target)
            for old in CACHE.glob(f"rootfs-{SUITE}-*.tar"):
                if old != target:
                    old.unlink()
        finally:
            _safe_rmtree(work)
    return target


def _server_distributions() -> list[md.Distribution]:
    """llama-cpp-python and the closure of its ``[server]`` requirements, from this environment."""
    seen: dict[str, md.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [("llama-cpp-python", frozenset({"server"}))]
    while todo:
        name, extras = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        dist = md.distribution(name)
        seen[key] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return list(seen.values())


def site_packages_files() -> list[tuple[Path, str]]:
    """(file on this machine, path inside site-packages) for every file of those distributions."""
    out = []
    for dist in _server_distributions():
        base = Path(str(dist.locate_file(""))).resolve()
        for f in dist.files or []:
            src = Path(str(dist.locate_file(f))).resolve()
            try:
                rel = src.relative_to(base)
            except ValueError:
                continue  # scripts in bin/ and the like
            # lib/, include/, bin/, share/: llama-cpp-python's CMake install leftovers; Python loads
            # the copies in llama_cpp/lib (these have no usable RPATH anyway)
            if rel.parts[0] in ("lib", "include", "bin", "share") or "__pycache__" in rel.parts:
                continue
            if src.is_file():
                out.append((src, rel.as_posix()))
                if src.suffix == ".py":  # the venv's bytecode too (same CPython 3.11): a faster start
                    pyc = Path(importlib.util.cache_from_source(str(src)))
                    if pyc.is_file():
                        out.append((pyc, pyc.relative_to(base).as_posix()))
    return out


def _stream_llama_rootfs(rootfs_tar: Path, out: object) -> None:
    """Write the inference image's whole root filesystem, as one tar, to ``out`` (a pipe)."""
    with tarfile.open(fileobj=out, mode="w|") as dst:  # type: ignore[call-overload]
        with tarfile.open(rootfs_tar, "r|") as src:
            for member in src:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        made: set[str] = set()
        for src_path, rel in sorted(site_packages_files(), key=lambda t: t[1]):
            parts = f"{SITE}/{rel}".strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in made and d not in ("opt",):
                    made.add(d)
                    _dir(dst, d)
            ti = dst.gettarinfo(str(src_path), arcname="/".join(parts))
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            with open(src_path, "rb") as f:
                dst.addfile(ti, f)


def build_llama_image(engine: DockerEngine) -> str:
    if sys.version_info[:2] != (3, 11):
        _unavailable(f"the inference image copies compiled extensions built for CPython 3.11 (bookworm's); "
                     f"this is {sys.version.split()[0]}")
    try:
        md.distribution("llama-cpp-python")
    except md.PackageNotFoundError:
        _unavailable("llama-cpp-python is not installed in this environment (make setup)")
    if not _has_image(engine, LLAMA_IMAGE):
        rootfs = debian_rootfs_tar(log=CACHE / "debootstrap.log")
        changes = [f"ENV PYTHONPATH={SITE}", "ENV PYTHONDONTWRITEBYTECODE=1", "ENV PYTHONUNBUFFERED=1",
                   "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   'CMD ["python3", "-m", "llama_cpp.server", "--help"]']
        args = [engine.docker, "import"]
        for c in changes:
            args += ["--change", c]
        args += ["--message", f"modserv tests: debian {SUITE} minbase + llama-cpp-python[server]", "-", LLAMA_IMAGE]
        with tempfile.TemporaryFile() as err:  # a file, not a pipe: nothing blocks while we stream
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                    env=engine.full_env())
            assert proc.stdin is not None
            try:
                _stream_llama_rootfs(rootfs, proc.stdin)
            finally:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
                proc.wait(timeout=600)
            err.seek(0)
            if proc.returncode != 0:
                raise DockerError(f"docker import of {LLAMA_IMAGE}: exit {proc.returncode}: "
                                  f"{err.read().decode(errors='replace')}")
    # Once per session: every shared library resolves, and the server's imports all load.
    check = ("set -e; for f in $(find /opt/modserv/site-packages -name '*.so*' -type f); do "
             "if ldd \"$f\" | grep 'not found'; then echo \"in $f\"; exit 1; fi; done; "
             "python3 -m llama_cpp.server --help > /dev/null; echo ok")
    r = engine.cli("run", "--rm", "--network", "none", LLAMA_IMAGE, "sh", "-c", check, check=False, timeout=300)
    if r.returncode != 0 or not r.stdout.strip().endswith("ok"):
        raise DockerError(f"{LLAMA_IMAGE} does not run llama_cpp.server: exit {r.returncode}\n"
                          f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return LLAMA_IMAGE


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session", name="tiny_image")
def tiny_image_fixture(docker_engine: DockerEngine) -> str:
    """``modserv-test/busybox:1``, built in the session's engine."""
    return build_tiny_image(docker_engine)


@pytest.fixture(scope="session", name="llama_image")
def llama_image_fixture(docker_engine: DockerEngine) -> Iterator[str]:
    """``modserv-test/llama:1``, built in the session's engine (slow the first time on a machine)."""
    yield build_llama_image(docker_engine)
