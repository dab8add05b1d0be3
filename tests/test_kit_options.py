"""The options base every plugin declares its options with (modserv_shim.kit.options)."""

from __future__ import annotations

from typing import ClassVar, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from modserv_shim.errors import ValidationFailed
from modserv_shim.kit import PluginOptions


class Volume(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    type: Literal["hostPath", "pvc"] = "hostPath"
    claim_name: str | None = None


class ExampleOptions(PluginOptions):
    label: ClassVar[str] = "example shimlet"

    host: str = Field("127.0.0.1", description="where to listen")
    retries: int = Field(3, ge=0, description="attempts per call")
    timeout: float = Field(2.0, gt=0, description="seconds")
    verbose: bool = False
    images: dict[str, str] = Field(default_factory=dict, description="runtime -> image")
    volume: Volume = Field(default_factory=Volume)
    mode: Literal["proxy", "direct"] = "proxy"


def refusal(options: dict[str, object]) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        ExampleOptions.parse(options)
    return info.value


def test_defaults_and_coercion_a_user_expects() -> None:
    opts = ExampleOptions.parse(None)
    assert opts.host == "127.0.0.1" and opts.volume.type == "hostPath"
    opts = ExampleOptions.parse({"timeout": 3, "volume": {"type": "pvc", "claim_name": "models"}})
    assert opts.timeout == 3.0 and isinstance(opts.timeout, float)
    assert opts.volume.claim_name == "models"


def test_unknown_key_is_named_with_the_allowed_ones() -> None:
    exc = refusal({"hots": "x"})
    assert "unknown example shimlet option(s): hots" in exc.message
    assert "allowed: host, retries, timeout, verbose, images, volume, mode" in exc.message
    assert exc.details == [{"field": "hots", "problem": "unknown option", "type": "extra_forbidden"}]


@pytest.mark.parametrize(("options", "expected"), [
    ({"retries": "3"}, "example shimlet option retries must be an integer, got '3'"),
    ({"retries": True}, "retries must be an integer"),
    ({"verbose": 1}, "verbose must be true or false, got 1"),
    ({"images": {"vllm": 3}}, "images.vllm must be a string"),
    ({"images": ["x"]}, "images must be a mapping"),
    ({"timeout": 0}, "timeout must be > 0"),
    ({"retries": -1}, "retries must be >= 0"),
    ({"mode": "ingress"}, "mode must be one of 'proxy' or 'direct', got 'ingress'"),
    ({"volume": {"type": "nfs"}}, "volume.type must be one of"),
    ({"volume": {"claim": "x"}}, "volume.claim is not a known key"),
])
def test_wrong_types_and_values_read_as_sentences(options: dict[str, object], expected: str) -> None:
    assert expected in refusal(options).message


def test_every_problem_is_reported_at_once() -> None:
    exc = refusal({"retries": "x", "verbose": "yes", "typo": 1})
    assert [d["field"] for d in exc.details] == ["typo", "retries", "verbose"]


def test_docs_come_from_the_model() -> None:
    docs = {d.key: d for d in ExampleOptions.describe()}
    assert docs["retries"].type == "integer" and docs["retries"].default == "3"
    assert docs["images"].type == "mapping of string to string" and docs["images"].default == "{}"
    assert docs["mode"].type == 'one of "proxy", "direct"'
    assert docs["volume"].default == '{"type": "hostPath"}'
    table = ExampleOptions.markdown_table()
    assert "| `timeout` | number | `2.0` | seconds |" in table
    assert table.count("\n") == 2 + len(ExampleOptions.model_fields)


def test_options_are_frozen() -> None:
    opts = ExampleOptions.parse({})
    with pytest.raises(Exception, match="frozen"):
        opts.host = "0.0.0.0"  # type: ignore[misc]
