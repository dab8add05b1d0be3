"""The local shimlet's options: the model's rules and docs/local.md's table, which is generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from modserv_shim.errors import ValidationFailed
from modserv_shim.shimlets.local import LocalOptions

DOC = Path(__file__).resolve().parent.parent / "docs" / "local.md"


def test_the_docs_show_exactly_the_generated_table() -> None:
    """docs/local.md's option table is what the model generates: one block, nothing added."""
    text, table = DOC.read_text(), LocalOptions.markdown_table()
    assert text.count(table.splitlines()[0]) == 1
    assert f"\n\n{table}\n" in text or text.endswith(f"\n\n{table}")


@pytest.mark.parametrize(("options", "expected"), [
    ({"restart_backof": 1}, "unknown local shimlet option(s): restart_backof"),
    ({"stop_grace_period": "10s"}, "stop_grace_period must be a number"),
    ({"poll_interval": 1.0}, "poll_interval must be < 1"),
    ({"probe_interval": 0}, "probe_interval must be > 0"),
    ({"max_start_failures": 0}, "max_start_failures must be > 0"),
    ({"reason_log_lines": -1}, "reason_log_lines must be >= 0"),
    ({"advertise_host": 5}, "advertise_host must be a string"),
])
def test_bad_options_are_refused_in_words(options: dict[str, object], expected: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        LocalOptions.parse(options)
    assert expected in info.value.message


def test_hosts() -> None:
    assert LocalOptions.parse({}).endpoint_host == "127.0.0.1"
    assert LocalOptions.parse({"host": "::"}).probe_host == "::1"
    opts = LocalOptions.parse({"host": "0.0.0.0", "advertise_host": "gpu-1.lan", "restart_backoff": 2})
    assert (opts.probe_host, opts.endpoint_host, opts.restart_backoff) == ("127.0.0.1", "gpu-1.lan", 2.0)
