"""``modserv-test/modserv:1``: an image that runs ``python3 -m modserv_shim.modelinfo``, for the docker shimlet's
model validation container (the stand-in for the project's image, which cannot be pulled here).

Use from a test module::

    from tests.helpers.docker_engine import DockerEngine, docker_engine_fixture  # noqa: F401
    from tests.helpers.docker_images import llama_image_fixture  # noqa: F401
    from tests.helpers.docker_validation_image import validation_image_fixture  # noqa: F401

    def test_x(validation_image: str) -> None: ...

It is ``modserv-test/llama:1`` (tests/helpers/docker_images.py: Debian with Python 3.11, numpy,
pydantic, PyYAML ... in ``/opt/modserv/site-packages``) plus what ``modserv_shim.modelinfo`` needs
beyond that: this checkout's ``src/modserv_shim`` and the distributions it imports that the llama
image lacks (``gguf``), copied from the project's virtualenv into the same site-packages.  No builder
is needed: a stopped container of the llama image gets the files (``docker cp -`` of a tar stream)
and is committed.  The image carries a label with a digest of what was copied, so a change to the
sources (or the venv) builds it again; otherwise the session reuses it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import io
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.helpers import docker_images as di
from tests.helpers.docker_engine import DockerEngine, DockerError

VALIDATION_IMAGE = "modserv-test/modserv:1"
DIGEST_LABEL = "org.modserv-shim.test.digest"
SOURCE = di.REPO / "src" / "modserv_shim"


def _needed_distributions() -> set[str]:
    """Distributions whose modules ``python -m modserv_shim.modelinfo`` imports, found by importing it here."""
    probe = ("import sys, importlib.metadata as md; before = set(sys.modules);"
             " import modserv_shim.modelinfo.__main__;"
             " tops = {m.split('.')[0] for m in set(sys.modules) - before}; pd = md.packages_distributions();"
             " print('\\n'.join(sorted({d for t in tops for d in pd.get(t, [])})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return {d for d in out.split() if d.replace("_", "-").lower() != "modserv-shim"}


def files_to_copy() -> list[tuple[Path, str]]:
    """(file here, path in site-packages): modserv_shim's sources and the distributions the llama image lacks."""
    present = {rel.split("/")[0] for _, rel in di.site_packages_files()}
    out = [(f, f"modserv_shim/{f.relative_to(SOURCE).as_posix()}") for f in sorted(SOURCE.rglob("*"))
           if f.is_file() and "__pycache__" not in f.parts]
    for name in sorted(_needed_distributions()):
        dist = md.distribution(name)
        base = Path(str(dist.locate_file(""))).resolve()
        entries = [(Path(str(dist.locate_file(f))).resolve(), f) for f in dist.files or []]
        files = [(src, src.relative_to(base).as_posix()) for src, f in entries
                 if src.is_file() and src.is_relative_to(base) and "__pycache__" not in Path(str(f)).parts]
        if any(rel.split("/")[0] in present for _, rel in files if not rel.split("/")[0].endswith("-info")):
            continue  # already in the llama image
        out += files
    return out


def _tar(files: list[tuple[Path, str]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        made: set[str] = set()
        for src, rel in files:
            parts = rel.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in made:
                    made.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tar.gettarinfo(str(src), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(src, "rb") as f:
                tar.addfile(info, f)
    return buffer.getvalue()


def _digest(files: list[tuple[Path, str]]) -> str:
    h = hashlib.sha256()
    for src, rel in files:
        h.update(rel.encode() + b"\0" + src.read_bytes())
    return h.hexdigest()[:16]


def build_validation_image(engine: DockerEngine, llama_image: str) -> str:
    """``modserv-test/modserv:1`` in ``engine``, (re)built when what it holds changed; checked once per call."""
    files = files_to_copy()
    digest = _digest(files)
    have = engine.cli("image", "inspect", "--format", f'{{{{index .Config.Labels "{DIGEST_LABEL}"}}}}',
                      VALIDATION_IMAGE, check=False)
    if have.returncode != 0 or have.stdout.strip() != digest:
        box = f"modserv-build-{uuid.uuid4().hex[:8]}"
        engine.cli("create", "--name", box, "--network", "none", llama_image, "true")
        try:
            engine.cli("cp", "-", f"{box}:{di.SITE}", input=_tar(files), timeout=300)
            engine.cli("commit", "--change", f"LABEL {DIGEST_LABEL}={digest}", "--change",
                       'CMD ["python3", "-m", "modserv_shim.modelinfo", "--help"]', box, VALIDATION_IMAGE)
        finally:
            engine.cli("rm", "-f", box, check=False)
    r = engine.cli("run", "--rm", "--network", "none", VALIDATION_IMAGE, "python3", "-c",
                   "import modserv_shim.modelinfo.__main__; print('ok')", check=False, timeout=120)
    if r.returncode != 0 or r.stdout.strip() != "ok":
        raise DockerError(f"{VALIDATION_IMAGE} cannot import modserv_shim.modelinfo: {r.stderr[-2000:]}")
    return VALIDATION_IMAGE


@pytest.fixture(scope="session", name="validation_image")
def validation_image_fixture(docker_engine: DockerEngine, llama_image: str) -> str:
    """``modserv-test/modserv:1``: the llama image plus modserv_shim and gguf (see the module docstring)."""
    return build_validation_image(docker_engine, llama_image)
