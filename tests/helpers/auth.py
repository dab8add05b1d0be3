"""API tokens for the auth tests: one viewer, one operator (stored as a SHA-256), one admin, and the header."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conftest import fake_settings

VIEW = "viewer-token-0123456789"
OPER = "operator-token-0123456789"
ADMIN = "admin-token-0123456789"


def token_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    f = tmp_path / "tokens.yaml"
    f.write_text(
        "tokens:\n"
        f"  - {{name: vera, role: viewer, token: {VIEW}}}\n"
        f"  - {{name: otto, role: operator, token_sha256: {hashlib.sha256(OPER.encode()).hexdigest()}}}\n"
    )
    return fake_settings(tmp_path, tokens_file=f, tokens=f"ada:admin:{ADMIN}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
