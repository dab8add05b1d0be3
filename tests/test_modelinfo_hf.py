"""Hugging Face folder inspection: complete folders pass, broken ones are named precisely."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from modserv_shim.modelinfo import ModelInvalid, inspect_hf_folder, inspect_model
from tests.helpers.hf_fixtures import (
    LLAMA3_70B_CONFIG,
    SMALL_CONFIG,
    parameter_count,
    remove_shards,
    shard_name,
    write_hf_model,
    write_llama3_70b_like,
    write_missing_shard_model,
    write_small_hf_model,
)


@pytest.fixture(scope="module")
def llama70b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama3_70b_like(tmp_path_factory.mktemp("hf") / "Meta-Llama-3-70B-Instruct")


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("tokenizer", ["tokenizer.json", "tokenizer.model", "bpe"])
def test_small_folder_passes(tmp_path: Path, shards: int, tokenizer: str) -> None:
    folder = write_small_hf_model(tmp_path / "m", shards=shards, tokenizer=tokenizer)
    facts = inspect_model(folder)
    assert facts.format == "hf"
    assert facts.architecture == "LlamaForCausalLM"
    assert facts.name == "m"
    assert facts.parameter_count == parameter_count(SMALL_CONFIG)
    assert (facts.layers, facts.hidden_size, facts.heads, facts.kv_heads, facts.head_dim) == (2, 64, 4, 2, 16)
    assert facts.context_length == 2048
    assert facts.dtype == "bfloat16"
    assert facts.vocab_size == 300
    assert facts.bits_per_weight == pytest.approx(16, rel=0.05)


def test_llama3_70b_facts_without_using_disk(llama70b: Path) -> None:
    shards = sorted(llama70b.glob("*.safetensors"))
    assert len(shards) == 30
    apparent = sum(p.stat().st_size for p in shards)
    assert 140e9 < apparent < 142e9
    assert sum(p.stat().st_blocks * 512 for p in shards) < 10 * 1024 * 1024  # sparse: next to nothing on disk
    facts = inspect_hf_folder(llama70b)
    assert facts.name == "meta-llama/Meta-Llama-3-70B-Instruct"
    assert facts.parameter_count == parameter_count(LLAMA3_70B_CONFIG)
    assert 70.5e9 < facts.parameter_count < 70.6e9
    assert (facts.layers, facts.heads, facts.kv_heads, facts.head_dim) == (80, 64, 8, 128)
    assert facts.context_length == 8192
    total_size = json.loads((llama70b / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    assert facts.weights_bytes == total_size  # tensor data only: headers are not weights
    assert apparent - total_size < 30 * 64 * 1024


def test_missing_shards_are_named_and_counted(llama70b: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    for p in llama70b.iterdir():  # hard links: a cheap copy we can break
        os.link(p, folder / p.name)
    gone = remove_shards(folder, 7, 19, of=30)
    with pytest.raises(ModelInvalid) as err:
        inspect_model(folder)
    e = err.value
    assert e.problem == "missing_shards"
    assert str(e).startswith(
        "2 of 30 shards listed in model.safetensors.index.json are missing:"
        " model-00007-of-00030.safetensors, model-00019-of-00030.safetensors"
    )
    assert e.details["missing"] == gone


def test_many_missing_shards_are_abbreviated(tmp_path: Path) -> None:
    folder = write_missing_shard_model(tmp_path / "m", missing=(1, 2, 3, 4, 5, 6, 7), shards=8)
    with pytest.raises(
        ModelInvalid, match=r"^7 of 8 shards listed .* are missing: model-00001-of-00008\.safetensors, "
    ):
        inspect_model(folder)
    with pytest.raises(ModelInvalid, match=r", \.\.\. \(in "):
        inspect_model(folder)


def test_cut_short_shard_is_named_from_its_header(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m", shards=3)
    shard = folder / shard_name(2, 3)
    os.truncate(shard, shard.stat().st_size - 1000)
    with pytest.raises(ModelInvalid) as err:
        inspect_model(folder)
    assert err.value.problem == "short_shards"
    assert re.match(
        r"1 of 3 shards in .* are cut short: model-00002-of-00003\.safetensors \(has \d+ of \d+ bytes of tensor"
        r" data\) \(re-download them\)$",
        str(err.value),
    ), str(err.value)


def test_shard_cut_inside_its_header(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m", shards=3)
    os.truncate(folder / shard_name(1, 3), 100)
    with pytest.raises(ModelInvalid, match=r"model-00001-of-00003.safetensors \(ends inside its header"):
        inspect_model(folder)


def test_corrupt_header(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m", shards=3)
    with (folder / shard_name(3, 3)).open("r+b") as f:
        f.seek(8)
        f.write(b"not json")
    with pytest.raises(ModelInvalid, match=r"1 of 3 shards .* are corrupt: .*has a header that is not JSON") as err:
        inspect_model(folder)
    assert err.value.problem == "corrupt"


def _placeholder_shards(folder: Path, sizes: list[int], total_size: int) -> None:
    """Shards made by os.truncate alone (all zeros, header length 0): judged by size."""
    write_small_hf_model(folder, tokenizer="tokenizer.json")
    (folder / "model.safetensors").unlink()
    weight_map = {}
    for i, size in enumerate(sizes, start=1):
        name = shard_name(i, len(sizes))
        (folder / name).touch()
        os.truncate(folder / name, size)
        weight_map[f"t{i}"] = name
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_placeholder_shards_are_judged_by_total_size(tmp_path: Path) -> None:
    _placeholder_shards(tmp_path / "ok", [1000, 1000], total_size=2000)
    assert inspect_model(tmp_path / "ok").weights_bytes == 2000
    _placeholder_shards(tmp_path / "short", [1000, 600], total_size=2000)
    with pytest.raises(ModelInvalid, match=r"hold 1600 bytes but .* take 2000: 400 bytes are missing") as err:
        inspect_model(tmp_path / "short")
    assert err.value.problem == "short_shards"


def test_empty_shard(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m", shards=3)
    os.truncate(folder / shard_name(3, 3), 0)
    with pytest.raises(
        ModelInvalid, match=r"1 of 3 shards .* are cut short: model-00003-of-00003\.safetensors \(is only 0 bytes\)"
    ):
        inspect_model(folder)


def test_empty_single_file(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m")
    os.truncate(folder / "model.safetensors", 4)
    with pytest.raises(ModelInvalid, match=r"^model.safetensors in .* is cut short: it is only 4 bytes \(re-download"):
        inspect_model(folder)


def test_missing_tokenizer(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m", tokenizer=None)
    with pytest.raises(ModelInvalid) as err:
        inspect_model(folder)
    assert err.value.problem == "missing_tokenizer"
    assert "expected tokenizer.json, tokenizer.model, or vocab.json with merges.txt" in str(err.value)


def test_bpe_tokenizer_needs_both_files(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m", tokenizer="bpe")
    (folder / "merges.txt").unlink()
    with pytest.raises(ModelInvalid, match="no tokenizer"):
        inspect_model(folder)


def test_missing_config(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m")
    (folder / "config.json").unlink()
    with pytest.raises(ModelInvalid, match=r"^config.json is missing in .*: a Hugging Face model folder needs") as err:
        inspect_model(folder)
    assert err.value.problem == "missing_config"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"hidden_size": 64,', r"is not valid JSON \("),
        ("[1, 2]", "is not a JSON object"),
        (json.dumps({"hidden_size": 64}), "names no architecture"),
        (json.dumps({k: v for k, v in SMALL_CONFIG.items() if k != "num_hidden_layers"}), "has no num_hidden_layers"),
    ],
)
def test_bad_config(tmp_path: Path, content: str, message: str) -> None:
    folder = write_small_hf_model(tmp_path / "m")
    (folder / "config.json").write_text(content)
    with pytest.raises(ModelInvalid, match=message) as err:
        inspect_model(folder)
    assert err.value.problem == "bad_config"


def test_no_weights_mentions_pytorch_files(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"x" * 100)
    with pytest.raises(ModelInvalid, match=r"no weights in .*convert them to safetensors") as err:
        inspect_model(folder)
    assert err.value.problem == "missing_weights"


def test_index_cannot_point_outside_the_folder(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m", shards=3)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ModelInvalid, match="names a shard outside the folder"):
        inspect_model(folder)


def test_multimodal_config_uses_text_config(tmp_path: Path) -> None:
    text = {k: v for k, v in SMALL_CONFIG.items() if k not in ("architectures", "torch_dtype")}
    config = {"architectures": ["LlavaForConditionalGeneration"], "torch_dtype": "bfloat16", "text_config": text}
    folder = write_hf_model(tmp_path / "m", {**SMALL_CONFIG, **{}})
    (folder / "config.json").write_text(json.dumps(config))
    facts = inspect_model(folder)
    assert facts.architecture == "LlavaForConditionalGeneration"
    assert (facts.layers, facts.hidden_size, facts.kv_heads) == (2, 64, 2)


def test_quantized_checkpoint_counts_parameters_from_config(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m")
    config = {**SMALL_CONFIG, "torch_dtype": "float16", "quantization_config": {"quant_method": "awq", "bits": 4}}
    (folder / "config.json").write_text(json.dumps(config))
    facts = inspect_model(folder)
    assert facts.quantization == "awq"
    assert facts.parameter_count == parameter_count(SMALL_CONFIG)


def test_a_file_inside_a_folder_points_at_the_folder(tmp_path: Path) -> None:
    folder = write_small_hf_model(tmp_path / "m")
    with pytest.raises(ModelInvalid, match=r"is part of a Hugging Face model: set modelFile to the folder"):
        inspect_model(folder / "config.json")


def test_missing_folder() -> None:
    with pytest.raises(ModelInvalid, match=r"^model folder not found: /nonexistent/m \(the path must exist"):
        inspect_hf_folder("/nonexistent/m")
