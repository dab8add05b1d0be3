"""Pipelines as declarations: each step declared once, with its handler, timeout, retry and phase.

A pipeline built on :class:`DeclaredPipeline` lists no steps by hand and maps no names to
handlers: a method decorated with :func:`step` *is* the step, and the class derives the
:class:`~modserv_shim.plugins.Pipeline` Protocol's ``steps()`` and ``run_step()`` from the
declarations, in the order they appear::

    class MyOptions(PluginOptions):
        label: ClassVar[str] = "mine pipeline"
        greeting: str = "hello"

    COUNT: Output[int] = Output("count", "how many widgets were made", stored=int)

    class MyPipeline(DeclaredPipeline):
        name = "mine"
        Options = MyOptions

        @step("prepare", timeout=30, retry=RetryPolicy(attempts=3), writes=(COUNT,))
        async def prepare(self, ctx: StepContext) -> None:
            COUNT.set(ctx, 3)

        @step("deploy", phase=Phase.DEPLOYING, reads=(COUNT,))
        async def deploy(self, ctx: StepContext) -> None:
            ctx.log(f"{self.options.greeting}: {COUNT.get(ctx)} widgets")

Another pipeline extends it without re-listing its steps or overriding ``steps()`` /
``run_step()``: a decorated method placed ``before=`` / ``after=`` a named step is inserted
there, one with ``replaces=`` takes a step's place, and ``remove=`` drops steps::

    class Bigger(MyPipeline, remove=("deploy",)):
        name = "bigger"

        @step("count-again", after="prepare", reads=(COUNT,))
        async def count_again(self, ctx: StepContext) -> None: ...

The same without a class statement (the table form; handlers are ``(pipeline, ctx)``
functions)::

    Bigger = MyPipeline.extend("bigger", insert(Step("count-again", count_again), after="prepare"),
                               remove("deploy"))

Overriding a step's method in a subclass (same Python name, no decorator) changes what the
step does and keeps its declaration.

Declarations are checked when the class is created, so a mistake fails the import with a
:class:`PipelineDeclarationError` that names it: step names are unique and kebab-case,
phases never go backwards, ``before`` / ``after`` / ``replaces`` / ``remove`` name existing
steps, and every output a step ``reads`` is written by an earlier step.

**Outputs** are what later steps read.  An :class:`Output` is a typed key: ``set(ctx, value)``
stores the value's JSON form under the key (what ``ctx.set_output`` stored before, so records
written earlier still read), ``get(ctx)`` returns the typed value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar, overload

from modserv_shim.errors import PermanentStepError
from modserv_shim.kit.options import PluginOptions
from modserv_shim.plugins import PHASE_ORDER, Phase, PluginContext, RetryPolicy, StepContext, StepSpec

T = TypeVar("T")
D = TypeVar("D")
F = TypeVar("F", bound=Callable[..., Awaitable[None]])
Handler = Callable[[Any, StepContext], Awaitable[None]]
"""What runs a step: ``async def handler(pipeline, ctx)`` (an undecorated method has this form)."""

STEP_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class PipelineDeclarationError(TypeError):
    """A pipeline's declarations contradict each other; raised when its class is created."""


_MISSING: Any = object()


def _same(value: Any) -> Any:
    return value


def _json_form(value: Any) -> Any:
    """Tuples become lists, keys strings: what the store gives back."""
    return json.loads(json.dumps(value, default=str))


@dataclass(frozen=True, eq=False)
class Output(Generic[T]):
    """A step output as a typed key.

    ``stored`` is the JSON type kept in the service's outputs (``dict``, ``str``, ...);
    ``encode`` turns a value into it and ``decode`` back (both default to the value itself).
    """

    key: str
    doc: str
    stored: type | tuple[type, ...] = object
    encode: Callable[[T], Any] = _same
    decode: Callable[[Any], T] = _same

    @overload
    def get(self, ctx: StepContext) -> T: ...
    @overload
    def get(self, ctx: StepContext, default: D) -> T | D: ...

    def get(self, ctx: StepContext, default: Any = _MISSING) -> Any:
        """The value an earlier step set; ``default`` (or a permanent step error) when none did."""
        return self.read(ctx.outputs, default)

    @overload
    def read(self, outputs: Mapping[str, Any]) -> T: ...
    @overload
    def read(self, outputs: Mapping[str, Any], default: D) -> T | D: ...

    def read(self, outputs: Mapping[str, Any], default: Any = _MISSING) -> Any:
        """:meth:`get` from a service's stored outputs (e.g. ``check_scale``'s ``outputs``)."""
        if self.key not in outputs:
            if default is not _MISSING:
                return default
            raise PermanentStepError(f"no step has set the output {self.key!r} ({self.doc})")
        return self.decode(outputs[self.key])

    def set(self, ctx: StepContext, value: T) -> None:
        """Record ``value`` (in its JSON form) for the steps after this one."""
        ctx.set_output(self.key, self.encode(value))

    def check(self, stored: Any) -> None:
        """Raise ``TypeError`` unless ``stored`` is this output's JSON form (the contract suite uses it)."""
        if not isinstance(stored, self.stored):
            raise TypeError(f"output {self.key!r} must be stored as {_type_names(self.stored)},"
                            f" got {type(stored).__name__}")
        try:
            again = _json_form(self.encode(self.decode(stored)))
        except Exception as exc:
            raise TypeError(f"output {self.key!r} does not read back: {type(exc).__name__}: {exc}") from exc
        if again != _json_form(stored):
            raise TypeError(f"output {self.key!r} changes when read and written again")


def _type_names(t: type | tuple[type, ...]) -> str:
    types = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in types)


def outputs_table(outputs: Iterable[Output[Any]]) -> str:
    """The outputs as a Markdown table (key, stored JSON type, meaning), for docs."""
    rows = ["| output | stored as | meaning |", "|---|---|---|"]
    rows += [f"| `{o.key}` | {_type_names(o.stored)} | {o.doc} |" for o in outputs]
    return "\n".join(rows) + "\n"


@dataclass(frozen=True)
class Step:
    """One step's declaration: its :class:`StepSpec` fields, its handler, what it reads and writes.

    ``reads`` are outputs the step needs (an earlier step must write each); ``writes`` are the
    outputs it may set.  ``method`` names the pipeline method that runs it (decorator form), so
    a subclass overriding that method changes the step's behaviour; else ``handler`` runs it.
    """

    name: str
    handler: Handler | None = None
    phase: Phase = Phase.PIPELINE
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    permanent: tuple[type[BaseException], ...] = ()
    description: str = ""
    reads: tuple[Output[Any], ...] = ()
    writes: tuple[Output[Any], ...] = ()
    method: str | None = None

    @property
    def spec(self) -> StepSpec:
        return StepSpec(self.name, self.phase, timeout=self.timeout, retry=self.retry,
                        permanent=self.permanent, description=self.description)

    async def run(self, pipeline: Any, ctx: StepContext) -> None:
        if self.method is not None:
            await getattr(pipeline, self.method)(ctx)
        elif self.handler is not None:
            await self.handler(pipeline, ctx)
        else:
            raise PermanentStepError(f"step {self.name!r} has no handler")


@dataclass(frozen=True)
class Change:
    """One edit of an inherited step list: insert (``before`` / ``after`` / at the end), replace or remove."""

    op: str  # "insert", "replace", "remove"
    target: str | None = None  # the step named by before/after/replaces/remove
    where: str = "end"  # for inserts: "before", "after", "end"
    step: Step | None = None


def insert(new: Step, *, before: str | None = None, after: str | None = None) -> Change:
    """Put ``new`` before or after a named step (at the end when neither is given)."""
    if before is not None and after is not None:
        raise PipelineDeclarationError(f"step {new.name!r}: give before= or after=, not both")
    if before is not None:
        return Change("insert", before, "before", new)
    return Change("insert", after, "after", new) if after is not None else Change("insert", step=new)


def replace_step(name: str, new: Step) -> Change:
    """Put ``new`` in place of the step ``name`` (it may keep the name)."""
    return Change("replace", name, step=new)


def remove(name: str) -> Change:
    """Drop the step ``name``."""
    return Change("remove", name)


def step(
    name: str,
    *,
    phase: Phase = Phase.PIPELINE,
    timeout: float = 60.0,
    retry: RetryPolicy | None = None,
    permanent: tuple[type[BaseException], ...] = (),
    description: str = "",
    reads: Sequence[Output[Any]] = (),
    writes: Sequence[Output[Any]] = (),
    before: str | None = None,
    after: str | None = None,
    replaces: str | None = None,
) -> Callable[[F], F]:
    """Declare the decorated ``async def method(self, ctx)`` as the step ``name``.

    Without ``before`` / ``after`` / ``replaces`` the step goes after the steps declared so far
    (the base class's, then this class's in the order of the class body).
    """

    def mark(fn: F) -> F:
        decl = Step(name, None, phase, timeout, retry or RetryPolicy(), permanent, description,
                    tuple(reads), tuple(writes), method=fn.__name__)
        if replaces is not None:
            if before is not None or after is not None:
                raise PipelineDeclarationError(f"step {name!r}: replaces= cannot be combined with before=/after=")
            change = replace_step(replaces, decl)
        else:
            change = insert(decl, before=before, after=after)
        fn.__pipeline_change__ = change  # type: ignore[attr-defined]
        return fn

    return mark


def apply_changes(steps: Sequence[Step], changes: Iterable[Change], pipeline: str) -> tuple[Step, ...]:
    """The step list after ``changes``, in order; an unknown step name is a clear error."""
    out = list(steps)
    for ch in changes:
        names = [s.name for s in out]
        if ch.target is not None and ch.target not in names:
            raise PipelineDeclarationError(
                f"pipeline {pipeline!r}: {_verb(ch)} names no step {ch.target!r};"
                f" its steps: {', '.join(names) or '(none)'}")
        at = names.index(ch.target) if ch.target is not None else len(out)
        if ch.op == "remove":
            del out[at]
        elif ch.op == "replace":
            assert ch.step is not None
            out[at] = ch.step
        else:
            assert ch.step is not None
            out.insert(at + 1 if ch.where == "after" else at, ch.step)
    return tuple(out)


def _verb(ch: Change) -> str:
    if ch.op == "insert" and ch.step is not None:
        return f"step {ch.step.name!r} ({ch.where}=)"
    if ch.op == "replace" and ch.step is not None:
        return f"step {ch.step.name!r} (replaces=)"
    return "remove"


def check_steps(steps: Sequence[Step], pipeline: str) -> None:
    """Unique kebab-case names, phases in order, every read written by an earlier step."""
    seen: set[str] = set()
    written: set[str] = set()
    for s in steps:
        if not STEP_NAME.match(s.name):
            raise PipelineDeclarationError(f"pipeline {pipeline!r}: step name {s.name!r} must be lower-case"
                                           " words joined by '-' (like 'model-validation')")
        if s.name in seen:
            raise PipelineDeclarationError(f"pipeline {pipeline!r} declares the step {s.name!r} twice")
        seen.add(s.name)
        missing = [o.key for o in s.reads if o.key not in written]
        if missing:
            raise PipelineDeclarationError(f"pipeline {pipeline!r}: step {s.name!r} reads {', '.join(missing)},"
                                           " which no earlier step writes")
        written.update(o.key for o in s.writes)
    order = [PHASE_ORDER.index(s.phase) for s in steps]
    if order != sorted(order):
        raise PipelineDeclarationError(f"pipeline {pipeline!r}: step phases must not go backwards"
                                       f" (got {' -> '.join(f'{s.name} ({s.phase.value})' for s in steps)})")


class DeclaredPipeline:
    """Base of a pipeline declared with :func:`step` (see the module docstring).

    Class attributes: ``name`` (the pipeline's name), ``Options`` (a :class:`PluginOptions`
    model for ``pipelines.<name>.options``; unknown keys are refused).  An instance has
    ``options`` (parsed), ``context`` (its :class:`PluginContext`) and ``policy``.
    """

    name: str = "declared"
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    declared: ClassVar[tuple[Step, ...]] = ()
    """The steps in order, after this class's and its bases' declarations."""

    def __init_subclass__(cls, *, remove: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        changes = [fn.__pipeline_change__ for fn in vars(cls).values() if hasattr(fn, "__pipeline_change__")]
        changes += [Change("remove", n) for n in remove]
        cls.declared = apply_changes(cls.declared, changes, cls.name)
        check_steps(cls.declared, cls.name)

    def __init__(self, ctx: PluginContext) -> None:
        if not self.declared:
            raise PipelineDeclarationError(f"pipeline {self.name!r} declares no steps")
        self.context = ctx
        self.policy = ctx.policy
        self.options = self.Options.parse(ctx.options)

    @classmethod
    def extend(cls, name: str, *changes: Change) -> type[Self]:
        """A new pipeline class named ``name``: this one's steps after ``changes`` (the table form)."""
        body: dict[str, Any] = {"name": name, "declared": apply_changes(cls.declared, changes, name),
                                "__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}[{name}]"}
        return type(f"{cls.__name__}_{name.replace('-', '_')}", (cls,), body)

    @classmethod
    def step_specs(cls) -> list[StepSpec]:
        """The steps as the core sees them; known without an instance."""
        return [s.spec for s in cls.declared]

    @classmethod
    def declaration(cls, name: str) -> Step:
        for s in cls.declared:
            if s.name == name:
                return s
        raise KeyError(name)

    def steps(self) -> Sequence[StepSpec]:
        return self.step_specs()

    async def run_step(self, step: StepSpec, ctx: StepContext) -> None:
        try:
            decl = self.declaration(step.name)
        except KeyError:
            raise PermanentStepError(f"the {self.name} pipeline has no step {step.name!r}") from None
        await decl.run(self, ctx)
