"""Installing a plugin project offline, as tests/test_plugin_project.py and tests/test_new_plugin.py do."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re


def builds_offline() -> bool:
    """Can pip build the project with this virtualenv's setuptools (no download of a build backend)?"""
    if importlib.util.find_spec("setuptools") is None:
        return False
    version = tuple(int(p) for p in re.findall(r"\d+", importlib.metadata.version("setuptools"))[:2])
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None  # bdist_wheel is built in since 70.1
