"""One way for every plugin to declare its options: a pydantic model.

A plugin's options come from the server's configuration (``shimlets.<name>.options`` or
``pipelines.<name>.options``) as a plain mapping.  A plugin declares them once, as a
subclass of :class:`PluginOptions`, and parses them with :meth:`PluginOptions.parse`::

    class DockerOptions(PluginOptions):
        label: ClassVar[str] = "docker shimlet"

        host: str = Field("unix:///var/run/docker.sock", description="Engine address")
        pull: Literal["missing", "always", "never"] = Field("missing", description="image pull policy")
        stop_grace_period: float = Field(10.0, gt=0, description="seconds from SIGTERM to SIGKILL")

    options = DockerOptions.parse(ctx.options)

What every plugin gets from it:

* **unknown keys are refused**, naming the key and the allowed ones (a typo in the config
  file is reported, not silently ignored);
* **types are checked strictly**: ``"3"`` is not an integer, ``1`` is not ``true``; an
  integer is accepted where a number is expected;
* errors are :class:`~modserv_shim.errors.ValidationFailed` with a sentence a person
  understands (``k8s shimlet option api_retries must be an integer, got '3'``) and one
  ``details`` entry per problem;
* **documentation from the model**: :meth:`PluginOptions.describe` lists every key with
  its type, default and description, and :meth:`PluginOptions.markdown_table` renders
  them for a docs page.
"""

from __future__ import annotations

import collections.abc
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import ErrorDetails, PydanticUndefined

from modserv_shim.errors import ValidationFailed

# How a pydantic error type reads in a sentence ("... must be an integer").
_PHRASES: dict[str, str] = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "mapping_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dataclass_type": "must be a mapping",
    "missing": "is required",
    "finite_number": "must be a finite number",
}


def _limit(ctx: Mapping[str, Any] | None, key: str) -> str:
    return str((ctx or {}).get(key, ""))


def _phrase(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx")
    if kind in _PHRASES:
        return _PHRASES[kind]
    if kind == "greater_than":
        return f"must be > {_limit(ctx, 'gt')}"
    if kind == "greater_than_equal":
        return f"must be >= {_limit(ctx, 'ge')}"
    if kind == "less_than":
        return f"must be < {_limit(ctx, 'lt')}"
    if kind == "less_than_equal":
        return f"must be <= {_limit(ctx, 'le')}"
    if kind == "literal_error":
        return f"must be one of {_limit(ctx, 'expected')}"
    if kind == "enum":
        return f"must be one of {_limit(ctx, 'expected')}"
    if kind in ("string_too_long", "too_long"):
        return f"is too long (at most {_limit(ctx, 'max_length')})"
    if kind in ("string_too_short", "too_short"):
        return f"is too short (at least {_limit(ctx, 'min_length')})"
    if kind == "string_pattern_mismatch":
        return f"must match {_limit(ctx, 'pattern')}"
    if kind in ("value_error", "assertion_error"):
        # A model's own validator raised ValueError("..."): its words are the message.
        cause = (ctx or {}).get("error")
        return str(cause) if cause is not None else error["msg"]
    return str(error["msg"]).lower()


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class OptionDoc:
    """One option as documented: key, type, default (as JSON, or "(required)") and meaning."""

    key: str
    type: str
    default: str
    description: str


class PluginOptions(BaseModel):
    """Base of every plugin's options model.  See the module docstring."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=False)

    label: ClassVar[str] = "plugin"
    """Who the options belong to, as a sentence starts: ``"k8s shimlet"``, ``"opensourcellm pipeline"``."""

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None) -> Self:
        """Validate a mapping from the configuration; :class:`ValidationFailed` naming every problem."""
        data = dict(options or {})
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise cls._refusal(exc, data) from None

    @classmethod
    def _refusal(cls, exc: pydantic.ValidationError, data: Mapping[str, Any]) -> ValidationFailed:
        details: list[dict[str, Any]] = []
        sentences: list[str] = []
        unknown = [str(e["loc"][-1]) for e in exc.errors() if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
        if unknown:
            allowed = ", ".join(cls.model_fields) or "(none)"
            sentences.append(f"unknown {cls.label} option(s): {', '.join(sorted(unknown))}; allowed: {allowed}")
            details += [{"field": k, "problem": "unknown option", "type": "extra_forbidden"} for k in unknown]
        for error in exc.errors():
            if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
                continue
            where = ".".join(str(part) for part in error["loc"]) or "(options)"
            problem = _phrase(error)
            if error["type"] == "extra_forbidden":
                problem = "is not a known key"
            sentence = f"{cls.label} option {where} {problem}"
            if error["type"] not in ("missing", "extra_forbidden", "value_error", "assertion_error"):
                sentence += f", got {_shown(error.get('input'))}"
            sentences.append(sentence)
            details.append({"field": where, "problem": problem, "type": error["type"]})
        return ValidationFailed("; ".join(sentences), details=details)

    @classmethod
    def describe(cls) -> list[OptionDoc]:
        """Every option with its type, default and description, in declaration order."""
        docs = []
        for key, info in cls.model_fields.items():
            if info.default is PydanticUndefined and info.default_factory is None:
                default = "(required)"
            else:
                value = info.get_default(call_default_factory=True)
                default = _json_default(value)
            docs.append(OptionDoc(key, _type_name(info.annotation), default, info.description or ""))
        return docs

    @classmethod
    def markdown_table(cls) -> str:
        """The options as a Markdown table (key, type, default, meaning), for a plugin's docs page."""
        rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
        for doc in cls.describe():
            meaning = doc.description.replace("|", "\\|").replace("\n", " ")
            rows.append(f"| `{doc.key}` | {doc.type} | `{doc.default}` | {meaning} |")
        return "\n".join(rows) + "\n"


def _json_default(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_none=True)
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _type_name(annotation: Any) -> str:
    """A reader's name for a field type: ``integer``, ``one of "a", "b"``, ``mapping of string to string``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (types.UnionType, typing.Union):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (dict, Mapping, collections.abc.Mapping):
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}" if args else "mapping"
    if origin in (list, tuple, Sequence, collections.abc.Sequence):
        return f"list of {_type_name(args[0])}" if args else "list"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "mapping"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def option_keys(model: type[PluginOptions]) -> Sequence[str]:
    """The keys a plugin accepts (for error messages and generated docs)."""
    return list(model.model_fields)


class RestartRuleOptions(PluginOptions):
    """The shim's restart rule, for shimlets that restart dead replicas themselves (local processes, containers).

    A replica that dies is started again after :meth:`restart_delay`; ``max_start_failures`` exits in
    a row before it was ever ready make the service FAILED (no more restarts); a replica that was
    ready for ``stable_after`` seconds before it died starts the back-off over.  A subclass adds its
    own keys after these.
    """

    max_start_failures: int = Field(
        3, gt=0, description="exits before ever being ready, in a row, before the service fails (no more restarts)")
    restart_backoff: float = Field(
        1.0, ge=0, description="seconds before a dead replica is started again; doubles per exit in a row")
    restart_backoff_max: float = Field(60.0, ge=0, description="cap of the restart delay, in seconds")
    stop_grace_period: float = Field(
        10.0, ge=0, description="seconds from SIGTERM to SIGKILL on delete and scale-down")
    reason_log_lines: int = Field(10, ge=0, description="log lines quoted in failed and degraded reasons")
    stable_after: float = Field(
        60.0, ge=0, description="seconds ready after which the restart delay starts over (the back-off resets)")

    def restart_delay(self, streak: int) -> float:
        """Seconds to wait before restarting after the ``streak``-th exit in a row (1-based)."""
        return float(min(self.restart_backoff * 2.0 ** (max(streak, 1) - 1), self.restart_backoff_max))
