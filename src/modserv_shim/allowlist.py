"""What a deploy request may put into a process, a container or a manifest: allowlists, never blocklists.

A deploy request is written by an *operator*; the model server it starts runs with the
shim's own identity (a child process of the shim, a container the shim's credentials
create).  So every field that reaches a command line or an environment is checked
against what is known to be safe, and anything else is refused with a 422 naming it.
A blocklist cannot work here: interpreters and libraries read hundreds of variables
(``PYTHONWARNINGS`` + ``BROWSER`` ran a shell command through the standard library's
``webbrowser``; ``GCONV_PATH`` loads a shared object into anything using iconv), and
runtimes keep adding flags that load code or open the server up.

Three layers, each with its own owner:

* **runtimes** declare the environment variables and arguments they are known to need
  (:attr:`~modserv_shim.runtimes.base.Runtime.env_names`,
  :meth:`~modserv_shim.runtimes.base.Runtime.arg_rules`); each argument has a
  :class:`ArgRule` saying what its value may be;
* an **admin** adds names, prefixes and flags in the server's configuration
  (:class:`RequestPolicy`, from ``allowed_env``, ``allowed_runtime_args`` and
  ``model_roots``);
* the **flags the shim sets itself** (host, port, model path, served name, context
  length, tensor parallel size, ...) and those that change exposure, identity or code
  loading are refused with the reason, even if an admin lists them.

This module imports the standard library and our errors only, so the core, the
pipelines and the runtimes share it.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import PurePosixPath

from modserv_shim.errors import ValidationFailed

# Size caps of the request fields that reach a process (also enforced by spec.DeploySpec).
MAX_ENV_VARS = 64
MAX_ENV_NAME = 128
MAX_ENV_VALUE = 4096
MAX_ENV_BYTES = 32 * 1024
MAX_ARGS = 64
MAX_ARG_LENGTH = 512
MAX_PATH_LENGTH = 4096

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FLAG_RE = re.compile(r"^--[A-Za-z0-9][A-Za-z0-9_-]*$")
# A free-form value an admin-added flag (or a TOKEN rule) may carry: no spaces, no shell or path tricks.
TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+,@=-]{0,127}$")


def has_control_chars(text: str) -> bool:
    """Whether ``text`` holds a control character (NUL, newline, escape, ...)."""
    return any(unicodedata.category(c) == "Cc" for c in text)


class ArgKind(Enum):
    FLAG = "flag"  # no value
    INT = "int"
    FLOAT = "float"
    CHOICE = "choice"
    TOKEN = "token"  # a short word: letters, digits and . _ : + , @ = -


@dataclass(frozen=True)
class ArgRule:
    """What one runtime flag may carry.  ``low``/``high`` bound numbers; ``choices`` for CHOICE."""

    kind: ArgKind
    low: float | None = None
    high: float | None = None
    choices: frozenset[str] = frozenset()

    def check(self, value: str) -> str | None:
        """None when ``value`` is acceptable, else what is wrong with it (for a person)."""
        if self.kind is ArgKind.INT:
            if not re.fullmatch(r"-?\d{1,12}", value):
                return f"takes a whole number, not {value!r}"
            return self._bounds(int(value))
        if self.kind is ArgKind.FLOAT:
            try:
                number = float(value)
            except ValueError:
                return f"takes a number, not {value!r}"
            if not math.isfinite(number) or len(value) > 32:
                return f"takes a finite number, not {value!r}"
            return self._bounds(number)
        if self.kind is ArgKind.CHOICE:
            return None if value in self.choices else f"takes one of {', '.join(sorted(self.choices))}, not {value!r}"
        if self.kind is ArgKind.TOKEN:
            return None if TOKEN_RE.match(value) else (
                f"takes a short word (letters, digits and . _ : + , @ = -), not {value!r}")
        return "takes no value"

    def describe(self) -> str:
        if self.kind in (ArgKind.INT, ArgKind.FLOAT):
            noun = "a whole number" if self.kind is ArgKind.INT else "a number"
            if self.low is not None or self.high is not None:
                return f"{noun} from {_num(self.low)} to {_num(self.high)}"
            return noun
        if self.kind is ArgKind.CHOICE:
            return "one of " + ", ".join(sorted(self.choices))
        if self.kind is ArgKind.TOKEN:
            return "a short word"
        return "no value"

    def _bounds(self, number: float) -> str | None:
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            return f"takes a value from {_num(self.low)} to {_num(self.high)}, not {_num(number)}"
        return None


def _num(x: float | None) -> str:
    return "" if x is None else (str(int(x)) if float(x).is_integer() else str(x))


FLAG = ArgRule(ArgKind.FLAG)
TOKEN = ArgRule(ArgKind.TOKEN)


def integer(low: float | None = None, high: float | None = None) -> ArgRule:
    return ArgRule(ArgKind.INT, low, high)


def number(low: float | None = None, high: float | None = None) -> ArgRule:
    return ArgRule(ArgKind.FLOAT, low, high)


def choice(*values: str) -> ArgRule:
    return ArgRule(ArgKind.CHOICE, choices=frozenset(values))


@dataclass(frozen=True)
class RequestPolicy:
    """What an admin allows beyond the runtimes' own lists (server settings ``allowed_env``,
    ``allowed_runtime_args``, ``model_roots``).  The empty policy is the strict default."""

    env_names: frozenset[str] = frozenset()
    env_prefixes: tuple[str, ...] = ()
    runtime_args: Mapping[str, frozenset[str]] = field(default_factory=dict)
    model_roots: tuple[str, ...] = ()

    @classmethod
    def from_settings(
        cls, allowed_env: Iterable[str], allowed_runtime_args: Mapping[str, Iterable[str]],
        model_roots: Iterable[str | os.PathLike[str]],
    ) -> RequestPolicy:
        """Built from the server's settings; a malformed entry is a configuration error."""
        names: set[str] = set()
        prefixes: list[str] = []
        for entry in allowed_env:
            bare = entry[:-1] if entry.endswith("*") else entry
            if not bare or not ENV_NAME_RE.match(bare):
                raise ValidationFailed(f"allowed_env: {entry!r} is not a variable name or a prefix ending in '*'")
            if entry.endswith("*"):
                prefixes.append(bare)
            else:
                names.add(entry)
        args: dict[str, frozenset[str]] = {}
        for runtime, given in allowed_runtime_args.items():
            flags = list(given)
            bad = [f for f in flags if not FLAG_RE.match(f)]
            if bad:
                raise ValidationFailed(f"allowed_runtime_args.{runtime}: {bad[0]!r} is not a long flag such as"
                                       " '--n-predict'")
            args[runtime] = frozenset(flags)
        roots = []
        for root in model_roots:
            text = os.fspath(root)
            if not text.startswith("/"):
                raise ValidationFailed(f"model_roots: {text!r} is not an absolute path")
            roots.append(str(PurePosixPath(os.path.normpath(text))))
        return cls(frozenset(names), tuple(prefixes), args, tuple(roots))

    def env_allowed(self, name: str) -> bool:
        return name in self.env_names or any(name.startswith(p) for p in self.env_prefixes)

    def describe_env(self) -> str:
        items = sorted(self.env_names) + [f"{p}*" for p in sorted(self.env_prefixes)]
        return ", ".join(items)


# ------------------------------------------------------------------------------------------- checks


def refuse(field_name: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"invalid request: {field_name}: {message}",
                            details=[{"field": field_name, "problem": message, "type": "not_allowed"}])


def check_env(
    env: Mapping[str, str], *, allowed: frozenset[str], policy: RequestPolicy, who: str,
    reserved: Mapping[str, str] | None = None,
) -> None:
    """Every variable must be one ``who`` (e.g. "the llama.cpp runtime") is known to need, or one the admin allows.

    ``reserved`` are the variables the runtime sets itself (name -> value); a request cannot change them.
    """
    for name in sorted(env):
        if reserved and name in reserved:
            raise refuse(f"env.{name}", f"{name} is not allowed: the shim sets it for {who} ({reserved[name]})")
        if name in allowed or policy.env_allowed(name):
            continue
        known = ", ".join(sorted(allowed))
        extra = policy.describe_env()
        raise refuse(
            f"env.{name}",
            f"{name} is not allowed: it is not a variable {who} is known to use, and the server's allowed_env"
            f" setting does not list it. Allowed: {known or 'none'}"
            + (f"; allowed by the admin: {extra}" if extra else "")
            + ". An admin can allow more names (or prefixes ending in '*') with allowed_env.",
        )


def split_args(args: Sequence[str]) -> list[tuple[str, str | None, int]]:
    """``['--a', '1', '--b=2', '--c']`` -> ``[('--a', '1', 0), ('--b', '2', 2), ('--c', None, 3)]``.

    A value is the next item when it does not start with ``--`` (so ``-1`` is a value); an item
    that is neither a ``--flag`` nor a value right after one is returned with flag ``''``.
    """
    out: list[tuple[str, str | None, int]] = []
    i = 0
    while i < len(args):
        item = args[i]
        if item.startswith("--"):
            name, eq, value = item.partition("=")
            if eq:
                out.append((name, value, i))
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out.append((name, args[i + 1], i))
                i += 1
            else:
                out.append((name, None, i))
        else:
            out.append(("", item, i))
        i += 1
    return out


def check_args(
    args: Sequence[str], *, rules: Mapping[str, ArgRule], refused: Mapping[str, str],
    admin_flags: frozenset[str], runtime: str,
) -> None:
    """Each argument must be a flag in ``rules`` with an acceptable value, or an admin-allowed flag.

    ``refused`` names flags with the reason they are never accepted (the shim sets them, or they
    change exposure, identity or what code is loaded); that wins over the admin's list.
    """
    for name, value, index in split_args(args):
        where = f"runtimeArgs[{index}]"
        if not name:
            raise refuse(where, f"{value!r} is not a flag: give runtime arguments as '--flag value' or"
                         " '--flag=value' (positional arguments and short flags such as '-c' are not accepted)")
        if name in refused:
            raise refuse(where, f"{name} is not accepted: {refused[name]}")
        rule = rules.get(name)
        if rule is None:
            if name in admin_flags:
                negative = value is not None and re.fullmatch(r"-\d+(\.\d+)?", value) is not None
                if value is not None and (len(value) > MAX_ARG_LENGTH or has_control_chars(value)
                                          or (value.startswith("-") and not negative)):
                    raise refuse(where, f"the value of {name} is not acceptable")
                continue
            allowed = ", ".join(sorted(rules))
            raise refuse(where, f"{name} is not an argument the shim accepts for {runtime}. Accepted: {allowed}."
                         " An admin can allow more flags with allowed_runtime_args.")
        if rule.kind is ArgKind.FLAG:
            if value is not None:
                raise refuse(where, f"{name} takes no value (got {value!r})")
            continue
        if value is None:
            raise refuse(where, f"{name} needs a value: {rule.describe()}")
        problem = rule.check(value)
        if problem:
            raise refuse(where, f"{name} {problem}")


def check_model_path(path: str, roots: Sequence[str]) -> None:
    """``modelFile`` must lie under one of the admin's ``model_roots`` (when any are set)."""
    if not roots:
        return
    normal = os.path.normpath(path)
    for root in roots:
        if normal == root or normal.startswith(root.rstrip("/") + "/"):
            return
    raise refuse("modelFile", f"{path} is outside the folders this server may serve models from"
                 f" ({', '.join(roots)}; the model_roots setting)")
