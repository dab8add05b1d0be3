"""The plugin registry: built-ins, entry points, and plugins hot-loaded at run time.

A plugin is registered as a *factory* (``PluginContext -> plugin``) under a kind
(``shimlet`` / ``pipeline``) and a name.  Instances are made lazily, once per
name, and checked against the contract before anyone uses them, so a broken
plugin is refused with a clear error instead of failing a deploy later.

Run-time loading is deliberately narrow: a ``.py`` file must lie inside the
configured plugin directory (symlinks resolved), a module must match one of the
configured prefixes.  Who may load is decided by the REST layer (admins only).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

import structlog

from modserv_shim.allowlist import RequestPolicy
from modserv_shim.core.executor import resolve_overrides
from modserv_shim.errors import PluginLoadError, PluginNotFound
from modserv_shim.plugins import (
    PHASE_ORDER,
    Lifecycle,
    Pipeline,
    PluginContext,
    Shimlet,
    StepSpec,
    shimlet_capabilities,
)

log = structlog.get_logger("modserv_shim.registry")

Kind = Literal["shimlet", "pipeline"]
KINDS: tuple[Kind, ...] = ("shimlet", "pipeline")
ENTRY_POINT_GROUPS: dict[Kind, str] = {"shimlet": "modserv_shim.shimlets", "pipeline": "modserv_shim.pipelines"}
Factory = Callable[[PluginContext], Any]


@dataclass
class PluginEntry:
    kind: Kind
    name: str
    factory: Factory
    source: str  # "builtin", "entry-point:<value>", "file:<path>", "module:<name>"
    instance: Any = None
    built: Any = None  # made by check_step_overrides, not started yet: _start uses it
    starting: asyncio.Lock = field(default_factory=asyncio.Lock)  # two first uses at once start it once


@dataclass
class BrokenPlugin:
    kind: Kind
    name: str
    source: str
    error: str


@dataclass
class RegistryConfig:
    data_dir: Path
    plugin_dir: Path
    allowed_modules: tuple[str, ...] = ()
    options: Mapping[Kind, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    server_settings: Mapping[str, Any] = field(default_factory=dict)
    policy: RequestPolicy = field(default_factory=RequestPolicy)
    step_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Pipeline -> step -> override (config ``pipelines.<name>.steps``): a pipeline is refused when
    one names a step it does not have."""


def _summary(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def check_shimlet(obj: Any, name: str) -> None:
    if not isinstance(obj, Shimlet):
        missing = [m for m in ("name", "create", "status", "delete") if not hasattr(obj, m)]
        raise PluginLoadError(
            f"shimlet {name!r} does not implement the Shimlet interface: missing {', '.join(missing)}"
        )
    for m in ("create", "status", "delete"):
        if not inspect.iscoroutinefunction(getattr(obj, m)):
            raise PluginLoadError(f"shimlet {name!r}: {m}() must be 'async def'")


def check_pipeline(obj: Any, name: str) -> list[StepSpec]:
    if not isinstance(obj, Pipeline):
        missing = [m for m in ("name", "steps", "run_step") if not hasattr(obj, m)]
        raise PluginLoadError(
            f"pipeline {name!r} does not implement the Pipeline interface: missing {', '.join(missing)}"
        )
    if not inspect.iscoroutinefunction(obj.run_step):
        raise PluginLoadError(f"pipeline {name!r}: run_step() must be 'async def'")
    try:
        steps = list(obj.steps())
    except Exception as exc:
        raise PluginLoadError(f"pipeline {name!r}: steps() raised {_summary(exc)}") from exc
    if not steps:
        raise PluginLoadError(f"pipeline {name!r} declares no steps")
    bad = [s for s in steps if not isinstance(s, StepSpec)]
    if bad:
        raise PluginLoadError(f"pipeline {name!r}: steps() must return StepSpec objects, got {type(bad[0]).__name__}")
    names = [s.name for s in steps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PluginLoadError(f"pipeline {name!r} has duplicate step names: {', '.join(dupes)}")
    order = [PHASE_ORDER.index(s.phase) for s in steps]
    if order != sorted(order):
        raise PluginLoadError(
            f"pipeline {name!r}: step phases must not go backwards"
            f" (got {' -> '.join(s.phase.value for s in steps)})"
        )
    return steps


class Registry:
    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        self._entries: dict[Kind, dict[str, PluginEntry]] = {k: {} for k in KINDS}
        self.broken: list[BrokenPlugin] = []

    # ------------------------------------------------------------ registration

    def register(self, kind: Kind, name: str, factory: Factory, source: str = "builtin") -> None:
        if name in self._entries[kind]:
            raise PluginLoadError(
                f"a {kind} named {name!r} is already registered (from {self._entries[kind][name].source})"
            )
        self._entries[kind][name] = PluginEntry(kind, name, factory, source)

    def register_builtins(self, builtins: Mapping[Kind, Mapping[str, Factory]]) -> None:
        for kind, items in builtins.items():
            for name, factory in items.items():
                self.register(kind, name, factory, "builtin")

    def discover_entry_points(self) -> None:
        """Register third-party plugins; a broken one is recorded, never fatal."""
        for kind, group in ENTRY_POINT_GROUPS.items():
            for ep in entry_points(group=group):
                source = f"entry-point:{ep.value}"
                if ep.name in self._entries[kind]:
                    if self._entries[kind][ep.name].source != source:
                        self._broken(kind, ep.name, source, f"name {ep.name!r} is taken by a built-in {kind}")
                    continue
                try:
                    factory = ep.load()
                except Exception as exc:
                    self._broken(kind, ep.name, source, _summary(exc))
                    continue
                self.register(kind, ep.name, factory, source)

    def _broken(self, kind: Kind, name: str, source: str, error: str) -> None:
        log.warning("plugin refused", kind=kind, name=name, source=source, error=error)
        self.broken.append(BrokenPlugin(kind, name, source, error))

    # ------------------------------------------------------------- run-time load

    def resolve_plugin_file(self, file: str) -> Path:
        root = self.config.plugin_dir.resolve()
        candidate = Path(file)
        try:
            path = (candidate if candidate.is_absolute() else root / candidate).resolve()
        except (ValueError, OSError) as exc:
            raise PluginLoadError(f"not a usable plugin file name: {file!r} ({exc})") from None
        if not path.is_relative_to(root):
            raise PluginLoadError(f"plugin files must be inside the plugin directory {root}; {file!r} is not")
        if path.suffix != ".py":
            raise PluginLoadError(f"plugin file must be a .py file: {file!r}")
        try:
            is_file = path.is_file()
        except OSError as exc:  # a name too long, a loop of links, a parent we may not read
            raise PluginLoadError(f"not a usable plugin file name: {file!r} ({exc.strerror or exc})") from None
        if not is_file:
            raise PluginLoadError(f"plugin file not found: {path}")
        return path

    def check_module_allowed(self, module: str) -> None:
        allowed = self.config.allowed_modules
        if not any(module == p or module.startswith(p.rstrip(".") + ".") for p in allowed):
            hint = ", ".join(allowed) if allowed else "none are configured (setting: allowed_plugin_modules)"
            raise PluginLoadError(f"module {module!r} is not in an allowed plugin package; allowed: {hint}")

    async def load(
        self, kind: Kind, name: str, *, file: str | None = None, module: str | None = None, attr: str
    ) -> PluginEntry:
        """Import a plugin from a file in the plugin dir or an allowed module, check it, register it."""
        if (file is None) == (module is None):
            raise PluginLoadError("give exactly one of 'file' or 'module'")
        if name in self._entries[kind]:
            source = self._entries[kind][name].source
            raise PluginLoadError(f"a {kind} named {name!r} is already loaded (from {source})")
        if file is not None:
            path = self.resolve_plugin_file(file)
            mod = self._import_file(kind, name, path)
            source = f"file:{path}"
        else:
            assert module is not None
            self.check_module_allowed(module)
            try:
                mod = importlib.import_module(module)
            except Exception as exc:
                raise PluginLoadError(f"cannot import module {module!r}: {_summary(exc)}") from exc
            source = f"module:{module}"
        factory = getattr(mod, attr, None)
        if factory is None or not callable(factory):
            raise PluginLoadError(f"{source} has no callable {attr!r}")
        entry = PluginEntry(kind, name, factory, source)
        await self._instantiate(entry)
        self._entries[kind][name] = entry
        log.info("plugin loaded", kind=kind, name=name, source=source)
        return entry

    @staticmethod
    def _import_file(kind: Kind, name: str, path: Path) -> Any:
        mod_name = f"modserv_shim_plugin_{kind}_{name.replace('-', '_').replace('.', '_')}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise PluginLoadError(f"cannot import {path}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException as exc:
            sys.modules.pop(mod_name, None)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise PluginLoadError(f"plugin file {path.name} tried to exit while importing") from None
            raise PluginLoadError(f"plugin file {path.name} failed to import: {_summary(exc)}") from exc
        return mod

    # ------------------------------------------------------------------- access

    def names(self, kind: Kind) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: Kind) -> Iterable[PluginEntry]:
        return [self._entries[kind][n] for n in self.names(kind)]

    def has(self, kind: Kind, name: str) -> bool:
        return name in self._entries[kind]

    def entry(self, kind: Kind, name: str) -> PluginEntry:
        try:
            return self._entries[kind][name]
        except KeyError:
            raise PluginNotFound(
                f"no {kind} named {name!r}; available: {', '.join(self.names(kind)) or 'none'}"
            ) from None

    async def _instantiate(self, entry: PluginEntry) -> Any:
        if entry.instance is not None:
            return entry.instance
        async with entry.starting:
            if entry.instance is None:
                entry.instance = await self._start(entry)
        return entry.instance

    def _build(self, entry: PluginEntry) -> Any:
        opts = self.config.options.get(entry.kind, {}).get(entry.name, {})
        ctx = PluginContext(entry.name, self.config.data_dir, dict(opts), dict(self.config.server_settings),
                            self.config.policy)
        try:
            return entry.factory(ctx)
        except Exception as exc:
            raise PluginLoadError(f"{entry.kind} {entry.name!r} failed to start: {_summary(exc)}") from exc

    async def _start(self, entry: PluginEntry) -> Any:
        obj = entry.built if entry.built is not None else self._build(entry)
        entry.built = None
        if entry.kind == "shimlet":
            check_shimlet(obj, entry.name)
        else:
            steps = check_pipeline(obj, entry.name)
            resolve_overrides(steps, self.config.step_overrides.get(entry.name, {}), entry.name)
        if isinstance(obj, Lifecycle):
            try:
                await obj.start()
            except Exception as exc:
                raise PluginLoadError(f"{entry.kind} {entry.name!r} failed to start: {_summary(exc)}") from exc
        return obj

    def check_step_overrides(self) -> None:
        """Refuse now a configured step override that names no step of its pipeline.

        Raises :class:`~modserv_shim.core.executor.UnknownStepOverride` (a :class:`PluginLoadError`)
        naming the step and the pipeline's steps.  Call it once the plugins are registered, before
        serving (it needs no event loop): every registered pipeline the configuration overrides
        steps of is built (not started; that happens at its first use, as always).  Pipelines not
        registered yet (hot-loaded later) are checked when they are loaded.
        """
        for name, overrides in self.config.step_overrides.items():
            if not overrides:
                continue
            if not self.has("pipeline", name):
                log.warning("step overrides for a pipeline that is not registered; checked when it is loaded",
                            pipeline=name, steps=sorted(overrides))
                continue
            entry = self.entry("pipeline", name)
            if entry.instance is None and entry.built is None:
                entry.built = self._build(entry)
            steps = check_pipeline(entry.instance or entry.built, name)
            resolve_overrides(steps, overrides, name)

    async def shimlet(self, name: str) -> Shimlet:
        obj: Shimlet = await self._instantiate(self.entry("shimlet", name))
        return obj

    async def pipeline(self, name: str) -> Pipeline:
        obj: Pipeline = await self._instantiate(self.entry("pipeline", name))
        return obj

    def describe(self, kind: Kind, name: str) -> dict[str, Any]:
        e = self.entry(kind, name)
        d: dict[str, Any] = {"name": name, "source": e.source, "loaded": e.instance is not None}
        if kind == "shimlet" and e.instance is not None:
            d["capabilities"] = shimlet_capabilities(e.instance)
        if kind == "pipeline" and e.instance is not None:
            d["steps"] = [
                {"name": s.name, "phase": s.phase.value, "timeout": s.timeout, "retry": vars(s.retry).copy()}
                for s in e.instance.steps()
            ]
        return d

    async def close(self) -> None:
        for kind in KINDS:
            for e in self._entries[kind].values():
                if isinstance(e.instance, Lifecycle):
                    try:
                        await e.instance.close()
                    except Exception as exc:  # closing must not stop the others from closing
                        log.warning("plugin close failed", kind=kind, name=e.name, error=_summary(exc))
