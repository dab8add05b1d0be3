"""``model-serve-shim new-plugin``: write the skeleton of a plugin project.

::

    model-serve-shim new-plugin shimlet docker                 # ./docker, package docker_shimlet
    model-serve-shim new-plugin pipeline quantllm --extends opensourcellm --dir ~/src/quantllm

The project has what a built-in plugin has, in the same places (see
:mod:`modserv_shim.shimlets` for a shimlet's four files), plus what a package needs:

* ``pyproject.toml`` -- the entry point (group ``modserv_shim.shimlets`` or
  ``modserv_shim.pipelines``) under which the server finds the plugin, the ``test`` extra
  (``modserv-shim[testing]``), ruff, mypy (strict) and pytest settings;
* ``src/<package>/`` -- shimlet: ``options.py``, ``render.py``, ``status.py``, ``shimlet.py``;
  pipeline: ``options.py``, ``outputs.py``, ``pipeline.py``;
* ``tests/test_contract.py`` (the contract suite and the entry point) and ``tests/test_docs.py``
  (the docs page shows the tables the code generates);
* ``docs/<name>.md`` and ``README.md``.

What only the author can write (how to talk to the environment, what a step does) is a
method whose body is ``raise NotImplementedError("TODO: ...")`` with a sentence saying what
belongs there; everything else is working code.  The generated code passes ruff and
``mypy --strict`` as generated, and the contract suite once the TODOs are filled.

The templates are the string constants of :mod:`._shimlet`, :mod:`._pipeline` and
:mod:`._common` (``string.Template``, ``$name`` placeholders).  The options and outputs
tables of the docs page are rendered with the kit (:meth:`PluginOptions.markdown_table`,
:func:`outputs_table`) from the same declarations the templates write, so they match.
"""

from __future__ import annotations

import keyword
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Literal

from modserv_shim.spec import PLUGIN_NAME_RE

Kind = Literal["shimlet", "pipeline"]
KINDS: tuple[Kind, ...] = ("shimlet", "pipeline")
EXTENDABLE = ("opensourcellm",)
"""The built-in pipelines a generated pipeline may extend (``--extends``)."""


class ScaffoldError(ValueError):
    """A request the generator refuses (a bad name, a directory that is not empty); the message says why."""


@dataclass(frozen=True)
class OptionSpec:
    """One option of a generated options model: written into ``options.py`` and into the docs table."""

    key: str
    annotation: str  # as options.py spells it
    python_type: Any  # the same type, for the docs table
    default: Any
    description: str
    constraints: tuple[tuple[str, Any], ...] = ()

    def source(self) -> str:
        args = [_py(self.default), *(f"{k}={_py(v)}" for k, v in self.constraints),
                f"description={_py(self.description)}"]
        return f"    {self.key}: {self.annotation} = Field(\n        {', '.join(args)})"


@dataclass(frozen=True)
class OutputSpec:
    """One typed output of a generated pipeline (for the docs table; ``outputs.py`` is a template)."""

    key: str
    doc: str
    stored: type | tuple[type, ...]


@dataclass(frozen=True)
class Names:
    """Everything the templates are filled with."""

    kind: Kind
    name: str
    package: str
    project: str
    prefix: str  # CamelCase of the name: "acme-gpu" -> "AcmeGpu"
    extends: str | None

    @property
    def cls(self) -> str:
        return f"{self.prefix}{self.kind.capitalize()}"

    def values(self) -> dict[str, str]:
        return {"name": self.name, "package": self.package, "project": self.project, "prefix": self.prefix,
                "kind": self.kind, "cls": self.cls, "options_cls": f"{self.prefix}Options",
                "label": f"{self.name} {self.kind}", "group": f"modserv_shim.{self.kind}s"}


def _py(value: Any) -> str:
    """A Python literal for ``value``, strings in double quotes (as the rest of the generated code)."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def check_name(name: str) -> str:
    """``name`` if the registry would accept it as a plugin name, else :class:`ScaffoldError`."""
    if not PLUGIN_NAME_RE.match(name):
        raise ScaffoldError(f"{name!r} is not a plugin name: it must be a lower-case letter followed by up to 62"
                            " lower-case letters, digits, '_', '.' or '-' (like 'docker' or 'acme-quant')")
    return name


def default_package(kind: Kind, name: str) -> str:
    """The package for a plugin named ``name``: ``docker`` -> ``docker_shimlet``."""
    stem = re.sub(r"_+", "_", re.sub(r"[^a-z0-9]", "_", name)).strip("_")
    return f"{stem}_{kind}"


def check_package(package: str) -> str:
    if not package.isidentifier() or not package.isascii() or keyword.iskeyword(package):
        raise ScaffoldError(f"{package!r} is not a Python package name (letters, digits and '_', not a keyword)")
    if package == "modserv_shim" or package in sys.stdlib_module_names:
        raise ScaffoldError(f"the package name {package!r} is taken (by modserv-shim or the standard library);"
                            " choose another with --package")
    return package


def names_for(kind: Kind, name: str, package: str | None = None, extends: str | None = None) -> Names:
    if kind not in KINDS:
        raise ScaffoldError(f"a plugin is a shimlet or a pipeline, not {kind!r}")
    check_name(name)
    from modserv_shim.builtins import BUILTINS

    if name in BUILTINS[kind]:
        raise ScaffoldError(f"{name!r} is the name of a built-in {kind}; the server would refuse a plugin that"
                            " takes it: choose another name")
    if extends is not None:
        if kind != "pipeline":
            raise ScaffoldError("--extends is for pipelines: a shimlet starts from the kit's ShimletBase")
        if extends not in EXTENDABLE:
            raise ScaffoldError(f"a generated pipeline can extend {', '.join(EXTENDABLE)}, not {extends!r}")
        if extends == name:
            raise ScaffoldError(f"the pipeline that extends {extends} needs a name of its own")
    pkg = check_package(package if package is not None else default_package(kind, name))
    parts = [p for p in re.split(r"[^a-z0-9]+", name) if p]
    prefix = "".join(p[:1].upper() + p[1:] for p in parts)
    project = re.sub(r"[^a-z0-9]+", "-", f"{name}-{kind}")
    return Names(kind, name, pkg, project, prefix, extends)


def options_table(specs: Sequence[OptionSpec], extends: str | None = None) -> str:
    """The docs table of a generated options model: built from the same declarations, by the kit."""
    from pydantic import Field, create_model

    from modserv_shim.kit.options import PluginOptions

    base: type[PluginOptions] = PluginOptions
    if extends == "opensourcellm":
        from modserv_shim.pipelines.opensourcellm import OpenSourceLLMOptions

        base = OpenSourceLLMOptions
    fields: dict[str, Any] = {
        s.key: (s.python_type, Field(s.default, description=s.description, **dict(s.constraints))) for s in specs}
    model: type[PluginOptions] = create_model("GeneratedOptions", __base__=base, **fields)
    return model.markdown_table()


def outputs_table(specs: Sequence[OutputSpec]) -> str:
    from modserv_shim.kit.pipeline import Output
    from modserv_shim.kit.pipeline import outputs_table as table

    return table([Output(s.key, s.doc, stored=s.stored) for s in specs])


def render_files(names: Names) -> dict[str, str]:
    """The project's files: relative path -> text."""
    from modserv_shim.scaffold import _common, _pipeline, _shimlet

    values = names.values()
    if names.kind == "shimlet":
        files, extra = _shimlet.files(names), _shimlet.values(names)
    else:
        files, extra = _pipeline.files(names), _pipeline.values(names)
    values.update(extra)
    files = {**_common.files(names), **files}
    out: dict[str, str] = {}
    for path, template in files.items():
        where = Template(path).substitute(values)
        out[where] = Template(template).substitute(values)
    return out


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def generate(kind: Kind, name: str, directory: Path | None = None, *, package: str | None = None,
             extends: str | None = None) -> list[Path]:
    """Write the project for a plugin ``name`` into ``directory`` (default ``./name``); the files written.

    Refuses (:class:`ScaffoldError`) a bad name or package, and a directory that exists and
    is not empty: nothing is overwritten.
    """
    names = names_for(kind, name, package, extends)
    target = Path(directory) if directory is not None else Path.cwd() / name
    if target.exists() and not is_empty_dir(target):
        what = "a file" if not target.is_dir() else "a directory that is not empty"
        raise ScaffoldError(f"{target} is {what}; new-plugin writes only into a new or empty directory")
    files = render_files(names)
    written: list[Path] = []
    try:
        for rel, text in files.items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    except OSError as exc:
        raise ScaffoldError(f"cannot write {exc.filename or target}: {exc.strerror or exc}") from None
    return written


def report(names: Names, directory: Path, written: Sequence[Path]) -> str:
    """What the CLI prints after writing the project: where, which files, what next."""
    todo_files = {"shimlet": "shimlet.py", "pipeline": "pipeline.py"}[names.kind]
    return "\n".join([
        f"wrote the {names.name} {names.kind} project to {directory}",
        *(f"  {path.relative_to(directory)}" for path in written),
        "next:",
        f"  cd {directory}",
        "  pip install -e '.[test]'",
        f"  grep -rn 'TODO:' src tests        # fill these in (src/{names.package}/{todo_files} first)",
        "  pytest                             # the contract suite tells you what is still missing",
    ])


__all__ = ["EXTENDABLE", "KINDS", "Kind", "Names", "OptionSpec", "OutputSpec", "ScaffoldError", "check_name",
           "default_package", "generate", "names_for", "render_files", "report"]
