"""Model validation never reads a file whole: caps, non-regular files, hostile lengths (issue 8).

Every case uses real files in ``tmp_path``: large ones are sparse (``truncate``), so a
"1 GiB config.json" costs no disk; FIFOs are real named pipes.  Memory is measured with
``tracemalloc`` around the one call (a refusal must not allocate what the file claims);
how long each case takes is measured by ``bench/modelinfo_limits.py``, not asserted here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.modelinfo import ModelInvalid, inspect_model
from modserv_shim.modelinfo.limits import (
    CONFIG_MAX_BYTES,
    GGUF_ARRAY_MAX_DEPTH,
    GGUF_HEADER_MAX_BYTES,
    GGUF_TEXT_MAX_BYTES,
    INDEX_MAX_BYTES,
    SAFETENSORS_HEADER_MAX_BYTES,
    FileRefused,
    read_capped,
)
from tests.conftest import Live, fake_settings
from tests.helpers.hf_fixtures import SMALL_CONFIG, shard_name, write_small_hf_model
from tests.helpers.tiny_gguf import write_tiny_llama_gguf

GIB = 1024**3
MIB = 1024**2
SMALL_PEAK = 50 * MIB  # what a refusal may allocate at most (it should be ~nothing)


def refused(path: Path) -> tuple[ModelInvalid, int]:
    """Inspect ``path``, expecting a refusal; also the peak of Python allocations during the call."""
    tracemalloc.start()
    try:
        with pytest.raises(ModelInvalid) as err:
            inspect_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return err.value, peak


def sparse_config(folder: Path, size: int) -> Path:
    """A valid-looking config.json (the real keys, then an unterminated string) made ``size`` bytes long."""
    cfg = folder / "config.json"
    with cfg.open("wb") as f:
        f.write(json.dumps(SMALL_CONFIG).encode()[:-1] + b', "padding": "')
        f.truncate(size)
    return cfg


# --------------------------------------------------------------------- config.json, index


def test_a_1_gib_config_json_is_refused_unread(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m")
    sparse_config(folder, GIB)
    err, peak = refused(folder)
    assert err.problem == "too_large"
    assert str(err) == (
        f"config.json in {folder} is 1.0 GiB; files over 16.0 MiB are not read: a model's config.json is a few"
        " KiB, so this file is probably not the model's config.json (put the right file there)"
    )
    assert err.details["file_bytes"] == GIB and err.details["limit_bytes"] == CONFIG_MAX_BYTES
    assert peak < SMALL_PEAK, f"{peak / MIB:.1f} MiB allocated to refuse it"


def test_config_json_at_the_cap_is_read_and_one_byte_more_is_not(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m")
    raw = json.dumps(SMALL_CONFIG).encode()
    (folder / "config.json").write_bytes(raw + b" " * (CONFIG_MAX_BYTES - len(raw)))  # whitespace is valid JSON
    assert inspect_model(folder).architecture == "LlamaForCausalLM"
    with (folder / "config.json").open("ab") as f:
        f.write(b" ")
    err, _ = refused(folder)
    assert err.problem == "too_large" and "16.0 MiB; files over 16.0 MiB are not read" in str(err)


def test_a_huge_index_is_refused_unread(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m", shards=2)
    with (folder / "model.safetensors.index.json").open("r+b") as f:
        f.truncate(INDEX_MAX_BYTES + 1)
    err, peak = refused(folder)
    assert err.problem == "too_large"
    assert str(err).startswith(
        f"model.safetensors.index.json in {folder} is 64.0 MiB; files over 64.0 MiB are not read: a safetensors"
        " index is ~100 bytes a tensor"
    )
    assert peak < SMALL_PEAK


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json"])
def test_json_nested_too_deeply_is_refused_in_words(tmp_path: Path, name: str) -> None:
    folder = write_small_hf_model(tmp_path / "m", shards=2)
    (folder / name).write_bytes(b"[" * 100_000)
    err, _ = refused(folder)
    assert err.problem == "bad_config"
    assert str(err) == (
        f"{name} in {folder} nests lists or objects too deeply to be read (hundreds of levels; a real {name}"
        f" nests a few), so the file is damaged or is not the model's {name}"
    )


def test_an_architecture_name_of_a_megabyte_is_not_a_name(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({**SMALL_CONFIG, "architectures": ["L" * MIB]}))
    err, _ = refused(folder)
    assert err.problem == "bad_config" and "names an architecture of 1048576 characters" in str(err)
    assert len(str(err)) < 500


# --------------------------------------------------------------------------- FIFOs


@pytest.fixture
def fifos() -> Iterator[list[Path]]:
    """FIFOs made by a test; any still blocking a reader at the end is opened for writing, which frees it."""
    made: list[Path] = []
    yield made
    for p in made:
        with contextlib.suppress(OSError):  # ENXIO: no reader waiting, nothing to free
            os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))


def make_fifo(path: Path, fifos: list[Path]) -> Path:
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    fifos.append(path)
    return path


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()`` in a thread; fail (instead of hanging the suite) when it has not returned in time."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:  # handed to the test
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds} s (reading a FIFO?)"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _hf_fifo(tmp_path: Path, fifos: list[Path], name: str, shards: int) -> tuple[Path, Path]:
    folder = write_small_hf_model(tmp_path / "m", shards=shards)
    return folder, make_fifo(folder / name, fifos)


@pytest.mark.parametrize(
    ("name", "shards", "problem", "message"),
    [
        (
            "config.json",
            1,
            "not_a_file",
            r"^config.json in .* is not a regular file but a named pipe \(FIFO\); model"
            r" validation reads only regular files \(put the model's config.json there as a plain file\)$",
        ),
        (
            "model.safetensors.index.json",
            2,
            "not_a_file",
            r"^model.safetensors.index.json in .* is not a regular"
            r" file but a named pipe \(FIFO\)",
        ),
        (
            "model.safetensors",
            1,
            "not_a_file",
            r"^model.safetensors in .* is not a regular file: it is a named pipe"
            r" \(FIFO\) \(re-download it\)$",
        ),
        (
            shard_name(2, 3),
            3,
            "not_a_file",
            r"^1 of 3 shards in .* are not regular files: model-00002-of-00003"
            r"\.safetensors \(is a named pipe \(FIFO\)\)",
        ),
    ],
)
def test_a_fifo_in_a_hf_folder_is_refused_without_waiting(
    tmp_path: Path, fifos: list[Path], name: str, shards: int, problem: str, message: str
) -> None:
    folder, _ = _hf_fifo(tmp_path, fifos, name, shards)
    with pytest.raises(ModelInvalid, match=message) as err:
        within(10, lambda: inspect_model(folder))
    assert err.value.problem == problem


@pytest.mark.parametrize("name", ["model.gguf", "model.bin"])
def test_a_fifo_as_the_model_file_is_refused_without_waiting(tmp_path: Path, fifos: list[Path], name: str) -> None:
    fifo = make_fifo(tmp_path / name, fifos)
    with pytest.raises(ModelInvalid, match=r"is not a regular file but a named pipe \(FIFO\)") as err:
        within(10, lambda: inspect_model(fifo))
    assert err.value.problem == "not_a_file"


# --------------------------------------------------------------------- the bounded reader


def test_read_capped_reads_proc_files_whose_size_reads_as_zero() -> None:
    assert Path("/proc/meminfo").stat().st_size == 0
    assert b"MemTotal:" in read_capped(Path("/proc/meminfo"), MIB)


def test_read_capped_notices_a_file_longer_than_stat_said() -> None:
    # /proc/self/status says 0 bytes and holds ~1.5 KiB: the same path as a file that grows while read.
    with pytest.raises(FileRefused, match=r"^grew past 0\.0 MiB while it was read") as err:
        read_capped(Path("/proc/self/status"), 100)
    assert err.value.problem == "too_large"


def test_read_capped_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(FileRefused, match="is not a regular file but a directory") as err:
        read_capped(tmp_path, MIB)
    assert err.value.problem == "not_a_file" and err.value.kind == "a directory"


# ------------------------------------------------------------------------ safetensors


def test_a_safetensors_header_length_of_2_pow_60_is_refused(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m")
    with (folder / "model.safetensors").open("r+b") as f:
        f.write(struct.pack("<Q", 2**60))
    err, peak = refused(folder)
    assert err.problem == "corrupt"
    assert str(err) == (
        f"model.safetensors in {folder} is corrupt: it claims a header of {2**60} bytes, more than the"
        f" {SAFETENSORS_HEADER_MAX_BYTES} the safetensors format allows (re-download it)"
    )
    assert peak < SMALL_PEAK


def test_a_safetensors_header_nested_too_deeply_is_corrupt(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m")
    depth = 100_000
    with (folder / "model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", depth) + b"[" * depth)
    err, _ = refused(folder)
    assert err.problem == "corrupt" and "has a header nested too deeply to be a safetensors header" in str(err)


# -------------------------------------------------------------------------------- GGUF
# Headers written by hand, so that any field can say anything.

STRING, ARRAY, UINT32, UINT64 = 8, 9, 4, 10


def _s(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def kv_u32(key: str, value: int) -> bytes:
    return _s(key.encode()) + struct.pack("<II", UINT32, value)


def kv_str(key: str, value: bytes, *, claimed: int | None = None) -> bytes:
    length = len(value) if claimed is None else claimed
    return _s(key.encode()) + struct.pack("<IQ", STRING, length) + value


def kv_str_array(key: str, items: list[bytes], *, claimed: int | None = None) -> bytes:
    count = len(items) if claimed is None else claimed
    return _s(key.encode()) + struct.pack("<IIQ", ARRAY, STRING, count) + b"".join(_s(i) for i in items)


def kv_u64_array(key: str, claimed: int) -> bytes:
    """An array header claiming ``claimed`` 8-byte items; the items themselves are whatever follows."""
    return _s(key.encode()) + struct.pack("<IIQ", ARRAY, UINT64, claimed)


LLAMA = [
    kv_str("general.architecture", b"llama"),
    kv_u32("llama.context_length", 4096),
    kv_u32("llama.block_count", 2),
    kv_u32("llama.embedding_length", 64),
]


def write_gguf(path: Path, kvs: list[bytes], *, kv_count: int | None = None, tensors: int = 0, size: int = 0) -> Path:
    """A GGUF v3 file with these metadata entries (and ``tensors`` claimed), made ``size`` bytes long if larger."""
    count = len(kvs) if kv_count is None else kv_count
    with path.open("wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, tensors, count) + b"".join(kvs))
        if size > f.tell():
            f.truncate(size)
    return path


def test_a_handmade_header_is_valid(tmp_path: Path) -> None:
    facts = inspect_model(write_gguf(tmp_path / "ok.gguf", LLAMA))
    assert (facts.architecture, facts.context_length, facts.tensor_count) == ("llama", 4096, 0)


def test_a_real_sized_vocabulary_passes(tmp_path: Path) -> None:
    """Gemma 3's 262,144 tokens and ~500k BPE merges (more than any real file has together)."""
    tokens = [b"<tok%d>" % i for i in range(262_144)]
    merges = [b"a%d b%d" % (i, i) for i in range(500_000)]
    path = write_gguf(
        tmp_path / "vocab.gguf",
        [*LLAMA, kv_str_array("tokenizer.ggml.tokens", tokens), kv_str_array("tokenizer.ggml.merges", merges)],
    )
    assert inspect_model(path).vocab_size == 262_144


def test_the_real_tiny_model_passes(tmp_path: Path) -> None:
    assert inspect_model(write_tiny_llama_gguf(tmp_path / "tiny.gguf")).architecture == "llama"


@pytest.mark.parametrize(
    ("kvs", "message"),
    [
        (
            [kv_str("general.architecture", b"llama", claimed=2**62)],
            rf"the value of metadata 'general.architecture' claims {2**62} bytes, more than any real GGUF file"
            rf" has there \(limit {GGUF_TEXT_MAX_BYTES}\)",
        ),
        (
            [*LLAMA, kv_str_array("tokenizer.ggml.tokens", [b"a", b"b"], claimed=2**62)],
            rf"metadata 'tokenizer.ggml.tokens' claims an array of {2**62} items, more than any real model has",
        ),
        (
            [*LLAMA, _s(b"tokenizer.ggml.tokens") + struct.pack("<IIQQ", ARRAY, STRING, 2, 2**62) + b"a" * 64],
            rf"item 0 of metadata 'tokenizer.ggml.tokens' claims a string of {2**62} bytes",
        ),
        ([struct.pack("<Q", 2**62) + b"general.architecture"], rf"a metadata key claims {2**62} bytes"),
        (
            [
                *LLAMA,
                _s(b"nested")
                + struct.pack("<II", ARRAY, ARRAY)
                + struct.pack("<Q", 1)
                + struct.pack("<IQ", ARRAY, 1) * GGUF_ARRAY_MAX_DEPTH
                + struct.pack("<IQ", UINT32, 0),
            ],
            rf"metadata 'nested' nests arrays more than {GGUF_ARRAY_MAX_DEPTH} deep",
        ),
    ],
    ids=["string-length", "array-count", "vocab-string-length", "key-length", "array-depth"],
)
def test_hostile_gguf_lengths_are_corrupt_not_allocated(tmp_path: Path, kvs: list[bytes], message: str) -> None:
    err, peak = refused(write_gguf(tmp_path / "bad.gguf", kvs, size=4096))
    assert err.problem == "corrupt", str(err)
    assert err.message.startswith("model file ") and "is corrupt: " in err.message
    assert err.message.endswith("(re-download or re-convert it)")
    assert re.search(message, err.message), err.message
    assert peak < SMALL_PEAK


@pytest.mark.parametrize(("offset", "what"), [(8, "tensors"), (16, "metadata entries")])
def test_absurd_gguf_counts_are_corrupt(tmp_path: Path, offset: int, what: str) -> None:
    path = write_gguf(tmp_path / "bad.gguf", LLAMA, size=4096)
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(struct.pack("<Q", 2**62))
    err, peak = refused(path)
    assert err.problem == "corrupt"
    assert f"its header claims {2**62} {what}, more than any real model has" in err.message
    assert peak < SMALL_PEAK


def test_a_900_mib_string_inside_a_1_gib_gguf_is_not_read(tmp_path: Path) -> None:
    """The length fits in the file, so only the cap stops it (this once cost 3.6 GiB)."""
    path = write_gguf(tmp_path / "long.gguf", [kv_str("general.architecture", b"llama", claimed=900 * MIB)], size=GIB)
    err, peak = refused(path)
    assert err.problem == "corrupt" and f"claims {900 * MIB} bytes" in err.message
    assert peak < SMALL_PEAK


def test_a_gguf_header_past_its_cap_is_too_large(tmp_path: Path) -> None:
    """Three numeric arrays of 2**24 u64 items (128 MiB each, skipped unread) carry the header past 256 MiB."""
    big = kv_u64_array("a", 2**24)
    # the arrays' items are the sparse zeros after the header: each array's bytes follow its own header
    path = tmp_path / "long-header.gguf"
    with path.open("wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(LLAMA) + 3) + b"".join(LLAMA))
        for _ in range(3):
            f.write(big)
            f.seek(2**24 * 8, os.SEEK_CUR)
        f.truncate(f.tell() + MIB)
    err, peak = refused(path)
    assert err.problem == "too_large"
    assert err.message == (
        f"model file {path} is not read: its header goes on past {GGUF_HEADER_MAX_BYTES // MIB}.0 MiB, far more"
        " than the metadata of any real model (a vocabulary of 262k tokens takes ~10 MiB), so the file is"
        " damaged or not a model"
    )
    assert peak < SMALL_PEAK


def test_the_decoded_text_of_a_gguf_header_has_a_cap(tmp_path: Path) -> None:
    """Strings that are decoded (not the vocabulary) add up against 64 MiB: three of 30 MiB do not fit."""
    chunk = 30 * MIB
    path = tmp_path / "text.gguf"
    with path.open("wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(LLAMA) + 3) + b"".join(LLAMA))
        for i in range(3):
            f.write(kv_str(f"blob.{i}", b"", claimed=chunk))
            f.seek(chunk, os.SEEK_CUR)
        f.truncate(f.tell() + MIB)
    err, _ = refused(path)
    assert err.problem == "too_large"
    assert "the text of its metadata and tensor names adds up to more than 64.0 MiB" in err.message


def test_an_architecture_name_of_a_megabyte_in_gguf_is_not_a_name(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "arch.gguf", [kv_str("general.architecture", b"x" * MIB), *LLAMA[1:]])
    err, _ = refused(path)
    assert err.problem == "bad_metadata" and "(1048576 characters), which is not an architecture name" in err.message
    assert len(err.message) < 500


# ------------------------------------------------------------------------ through the API


async def test_a_dry_run_on_a_1_gib_config_answers_422_with_the_reason(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = write_small_hf_model(tmp_path / "huge-config")
    sparse_config(folder, GIB)
    live: Live = await start_server(fake_settings(tmp_path, shimlet="local", pipeline="opensourcellm"))
    body = {
        "modelName": "huge-config",
        "modelFile": str(folder),
        "pipeline": "opensourcellm",
        "shimlet": "local",
        "resourceRequirements": {"cpu": "1", "memory": "2Gi"},
        "replicaCount": 1,
        "dryRun": True,
    }
    answer = await live.call("POST", "/api/v1/modserv/deploy", json=body, expect=422)
    assert f"config.json in {folder} is 1.0 GiB; files over 16.0 MiB are not read" in answer["message"]
    assert (await live.call("GET", "/api/v1/modserv"))["data"] == []
