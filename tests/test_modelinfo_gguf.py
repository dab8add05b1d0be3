"""GGUF inspection: facts of real files, and plain-word errors for broken ones."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest
from gguf import GGUFReader

from modserv_shim.errors import PermanentStepError
from modserv_shim.modelinfo import ModelFacts, ModelInvalid, inspect_gguf, inspect_model
from modserv_shim.modelinfo.__main__ import main as modelinfo_main
from tests.helpers.tiny_gguf import (
    BLOCKS,
    EMBED,
    HEAD_DIM,
    HEADS,
    KV_HEADS,
    expected_parameter_count,
    vocabulary,
    write_tiny_llama_gguf,
    write_truncated_copy,
)

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = Path(os.environ.get("MODSERV_TEST_SMOLLM2", REPO / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
needs_smollm2 = pytest.mark.skipif(not SMOLLM2.is_file(), reason=f"{SMOLLM2} not extracted")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", n_ctx=1024)


def test_tiny_model_is_small(tiny: Path) -> None:
    assert tiny.stat().st_size < 1024 * 1024


def test_tiny_model_facts(tiny: Path) -> None:
    facts = inspect_gguf(tiny)
    assert facts.format == "gguf"
    assert facts.path == str(tiny)
    assert facts.architecture == "llama"
    assert facts.name == "tiny-llama"
    assert facts.context_length == 1024
    assert (facts.layers, facts.hidden_size, facts.heads, facts.kv_heads, facts.head_dim) == (
        BLOCKS,
        EMBED,
        HEADS,
        KV_HEADS,
        HEAD_DIM,
    )
    assert facts.dtype == "F16"
    assert facts.quantization is None
    assert facts.vocab_size == len(vocabulary()[0])
    assert facts.parameter_count == expected_parameter_count()
    assert facts.tensor_count == 3 + 9 * BLOCKS
    assert facts.bytes_per_kv_element == 2
    # the data section is almost the whole file
    assert 0.9 * tiny.stat().st_size < facts.weights_bytes < tiny.stat().st_size


def test_facts_agree_with_the_reference_reader(tiny: Path) -> None:
    facts = inspect_gguf(tiny)
    reader = GGUFReader(tiny)
    assert facts.tensor_count == len(reader.tensors)
    assert facts.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    assert facts.weights_bytes == max(t.data_offset + t.n_bytes for t in reader.tensors) - reader.data_offset
    assert facts.context_length == reader.fields["llama.context_length"].contents()


def test_facts_round_trip_through_json(tiny: Path) -> None:
    facts = inspect_model(tiny)
    data = json.loads(json.dumps(facts.to_dict()))
    assert data["bits_per_weight"] == pytest.approx(16, rel=0.1)
    assert ModelFacts.from_dict(data) == facts


def test_dispatch_by_magic_without_suffix(tiny: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(tiny.read_bytes())
    assert inspect_model(renamed).architecture == "llama"


@needs_smollm2
def test_smollm2_facts() -> None:
    started = time.monotonic()
    facts = inspect_model(SMOLLM2)
    assert time.monotonic() - started < 2, "the header walk must not read the tensors"
    assert facts.architecture == "llama"
    assert facts.dtype == "Q4_1"
    assert facts.quantization == "Q4_1"
    assert 130e6 < facts.parameter_count < 140e6
    assert facts.context_length == 8192
    assert facts.layers == 30
    assert facts.kv_heads == 3
    assert facts.vocab_size == 49152
    assert 4.5 < facts.bits_per_weight < 6.5


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_tensor_data_is_reported_with_numbers(tiny: Path, tmp_path: Path, keep: float) -> None:
    cut = write_truncated_copy(tiny, tmp_path / "cut.gguf", keep)
    with pytest.raises(ModelInvalid) as err:
        inspect_model(cut)
    e = err.value
    assert e.problem == "truncated"
    expected, found = e.details["expected_data_bytes"], e.details["found_data_bytes"]
    assert found < expected
    assert str(e) == (
        f"model file {cut} is truncated: expected at least {expected} bytes of tensor data,"
        f" found {found} (re-download or re-copy it)"
    )
    assert isinstance(e, PermanentStepError)


def test_truncated_inside_header(tiny: Path, tmp_path: Path) -> None:
    cut = write_truncated_copy(tiny, tmp_path / "cut.gguf", 0.005)  # ~2.7 KB: inside the vocabulary
    with pytest.raises(ModelInvalid, match=r"is truncated: the file ends after \d+ bytes, inside its header") as err:
        inspect_model(cut)
    assert err.value.problem == "truncated"


def test_not_a_gguf_file(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_text("<html>404 Not Found</html>")
    with pytest.raises(ModelInvalid, match=r"is not a GGUF file \(it does not start with the bytes 'GGUF'\)") as err:
        inspect_model(f)
    assert err.value.problem == "not_gguf"


def test_git_lfs_pointer(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 98362432\n")
    with pytest.raises(ModelInvalid, match="Git LFS pointer"):
        inspect_model(f)


def test_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.touch()
    with pytest.raises(ModelInvalid, match=r"is empty \(0 bytes\)"):
        inspect_model(f)


def test_missing_path() -> None:
    with pytest.raises(ModelInvalid) as err:
        inspect_model("/nonexistent/x.gguf")
    assert str(err.value) == (
        "model file not found: /nonexistent/x.gguf (the path must exist on this machine for the local shimlet)"
    )
    assert err.value.problem == "not_found"


def test_directory_given_to_gguf(tmp_path: Path) -> None:
    with pytest.raises(ModelInvalid, match="is not a regular file"):
        inspect_gguf(tmp_path)


def test_unrelated_file(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(ModelInvalid, match="neither a GGUF file nor a Hugging Face model folder"):
        inspect_model(f)


def _patched(tiny: Path, tmp_path: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(tiny.read_bytes())
    raw[offset : offset + len(data)] = data
    out = tmp_path / "patched.gguf"
    out.write_bytes(bytes(raw))
    return out


def test_unsupported_version(tiny: Path, tmp_path: Path) -> None:
    f = _patched(tiny, tmp_path, 4, struct.pack("<I", 1))
    with pytest.raises(ModelInvalid, match=r"uses GGUF version 1, which this shim cannot read \(supported: 2, 3\)"):
        inspect_model(f)


def test_big_endian_file(tiny: Path, tmp_path: Path) -> None:
    f = _patched(tiny, tmp_path, 4, struct.pack(">I", 3))
    with pytest.raises(ModelInvalid, match="big-endian"):
        inspect_model(f)


def test_absurd_counts_fail_fast(tiny: Path, tmp_path: Path) -> None:
    """A corrupt kv count must not send the walker into a near-endless loop."""
    f = _patched(tiny, tmp_path, 16, struct.pack("<Q", 2**62))
    started = time.monotonic()
    with pytest.raises(ModelInvalid) as err:
        inspect_model(f)
    assert time.monotonic() - started < 2
    assert err.value.problem in ("truncated", "corrupt")


def test_missing_required_metadata(tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "partial.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelInvalid, match=r"lacks llama.context_length in its metadata") as err:
        inspect_model(path)
    assert err.value.problem == "bad_metadata"


# ------------------------------------------------------------------------ CLI


def test_cli_reports_facts_and_failures(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "termination-log"
    assert modelinfo_main([str(tiny), "--termination-log", str(log)]) == 0
    ok = json.loads(capsys.readouterr().out)
    assert ok["ok"] is True and ok["facts"]["architecture"] == "llama"
    assert json.loads(log.read_text()) == ok

    cut = write_truncated_copy(tiny, tmp_path / "cut.gguf", 0.5)
    assert modelinfo_main([str(cut)]) == 2
    bad = json.loads(capsys.readouterr().out)
    assert bad["ok"] is False and bad["problem"] == "truncated" and "re-download" in bad["message"]


def test_unreadable_file_is_reported_in_words(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(ModelInvalid, match=r"^cannot read the model at .*: permission denied") as err:
        inspect_model(tiny)
    assert err.value.problem == "unreadable"
