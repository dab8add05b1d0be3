"""docs/SECURITY.md lists exactly what the code allows: every variable and every flag, accepted or refused."""

from __future__ import annotations

import re

import pytest

from modserv_shim.runtimes import LlamaCppRuntime, SglangRuntime, VllmRuntime
from modserv_shim.runtimes.base import COMMON_ENV
from modserv_shim.runtimes.llamacpp import (
    LLAMA_SERVER_ARGS,
    LLAMA_SERVER_REFUSED,
    PYTHON_SERVER_ARGS,
    PYTHON_SERVER_REFUSED,
)
from modserv_shim.runtimes.sglang import SGLANG_ARGS, SGLANG_REFUSED
from modserv_shim.runtimes.vllm import VLLM_ARGS, VLLM_REFUSED
from tests.conftest import REPO

DOC = (REPO / "docs" / "SECURITY.md").read_text()


def paragraph(program: str) -> str:
    """The '**program** accepts ...; refuses ...' paragraph."""
    m = re.search(rf"^\*\*{re.escape(program)}\*\* accepts (.*?)\n\n", DOC, re.S | re.M)
    assert m, f"docs/SECURITY.md has no paragraph for {program}"
    return m.group(1)


@pytest.mark.parametrize(("program", "accepted", "refused"), [
    ("llama-server", LLAMA_SERVER_ARGS, LLAMA_SERVER_REFUSED),
    ("llama-cpp-python", PYTHON_SERVER_ARGS, PYTHON_SERVER_REFUSED),
    ("vllm", VLLM_ARGS, VLLM_REFUSED),
    ("sglang", SGLANG_ARGS, SGLANG_REFUSED),
])
def test_every_flag_is_documented_on_the_right_side(program: str, accepted: dict[str, object],
                                                     refused: dict[str, str]) -> None:
    text = paragraph(program)
    said_accepted, _, said_refused = text.partition("; refuses ")
    assert set(re.findall(r"`(--[\w-]+)`", said_accepted)) == set(accepted)
    assert set(re.findall(r"`(--[\w-]+)`", said_refused)) == set(refused)


def test_every_allowed_variable_is_documented() -> None:
    rows = {m.group(1): set(re.findall(r"`([A-Z0-9_]+)`", m.group(2).split("(not ")[0]))
            for m in re.finditer(r"^\| (every runtime|llama\.cpp|vllm|sglang) \| (.*) \|$", DOC, re.M)}
    assert rows["every runtime"] == set(COMMON_ENV)
    for runtime in (LlamaCppRuntime, VllmRuntime, SglangRuntime):
        assert rows[runtime.name] == set(runtime.env_names), runtime.name
