"""Templates every generated project has, whatever its kind: packaging, pytest, the typed marker."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modserv_shim.scaffold import Names

# options.py of a plugin of its own ($typing_names: what its option annotations use from typing).
OPTIONS_PY = '''\
"""Options of the $name $kind: ``${kind}s.$name.options`` in the server's config file.

One ``Field(..., description=...)`` per key.  ``docs/$name.md`` shows the table
``${options_cls}.markdown_table()`` renders (``tests/test_docs.py`` keeps the two the same).
Unknown keys and wrong types are refused with a sentence that names the key.
"""

from __future__ import annotations

from typing import $typing_names

from modserv_shim.kit import PluginOptions
from pydantic import Field


class ${options_cls}(PluginOptions):
    label: ClassVar[str] = "$label"

$option_lines
'''

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "$project"
version = "0.1.0"
description = "The $name $kind: a modserv-shim plugin"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["modserv-shim>=0.1"]

[project.optional-dependencies]
# modserv-shim's test kit (the contract suites, test doubles, fixtures) with pytest and pytest-asyncio.
test = ["modserv-shim[testing]>=0.1", "ruff>=0.5", "mypy>=1.10"]

# The server finds the $kind here at start-up, under the name "$name".
[project.entry-points."$group"]
"$name" = "$package:$cls"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
$package = ["py.typed"]

[tool.pytest.ini_options]
testpaths = ["tests"]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"

[tool.ruff]
line-length = 120
target-version = "py311"
src = ["src", "tests"]

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "ASYNC", "RUF", "SIM"]

[tool.mypy]
strict = true
python_version = "3.11"
files = ["src"]
plugins = ["pydantic.mypy"]
'''

CONFTEST = '''\
# modserv-shim's test kit as a pytest plugin: the plugin_context, fake_shimlet, fake_pipeline, openai_stub fixtures.
pytest_plugins = ["modserv_shim.testing.pytest_plugin"]
'''

GITIGNORE = '''\
__pycache__/
*.egg-info/
build/
dist/
.pytest_cache/
.mypy_cache/
.ruff_cache/
'''


def files(names: Names) -> dict[str, str]:
    return {
        "pyproject.toml": PYPROJECT,
        "conftest.py": CONFTEST,
        ".gitignore": GITIGNORE,
        "src/$package/py.typed": "",
    }
