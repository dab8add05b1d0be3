"""The pipeline contract, as tests any pipeline can run (with pytest and pytest-asyncio).

A pipeline's test module subclasses :class:`PipelineContract`, names the factory and gives a
request the pipeline deploys successfully; every test below then runs against them::

    class TestMyPipelineContract(PipelineContract):
        factory = MyPipeline                         # built on a fresh data dir, started, closed
        options = {"cache_dir": "/tmp/x"}            # its options, as the config file would give them

        @pytest.fixture
        def deploy_spec(self, tmp_path):
            return DeploySpec(modelName="tiny", modelFile=str(tiny_model))

The steps create workloads on a :class:`~modserv_shim.testing.fake_shimlet.ProbedFakeShimlet`
(override the ``shimlet`` fixture for another, and ``resources(shimlet)`` to say which
workloads the environment holds); ``plugin_options`` and ``server_settings`` are fixtures too,
for values that depend on other fixtures, and ``pipeline`` can be overridden whole.

What is checked is what the core relies on:

* the steps are well formed: at least one, unique names, phases never go backwards;
* every step run twice (as after a crash, with what the first run recorded) gives the same
  outputs and the same resource, and creates no second workload;
* outputs are JSON, and for a :class:`~modserv_shim.kit.pipeline.DeclaredPipeline` each one a
  step sets is among the outputs it declares (``writes``) and matches that declaration;
* a step cancelled at any moment (a delete) leaves nothing behind: the outputs it was given
  are unchanged, and any workload that exists afterwards was recorded (``set_resource``),
  so the delete that follows finds it.

Steps run in a :class:`ContractContext` (not the server's executor), one after another as
the executor runs them, each within ``step_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio

from modserv_shim.kit.pipeline import DeclaredPipeline
from modserv_shim.plugins import PHASE_ORDER, Pipeline, PluginContext, Shimlet, StepSpec
from modserv_shim.spec import DeploySpec
from modserv_shim.testing.contexts import make_plugin_context, running_plugin
from modserv_shim.testing.fake_shimlet import FakeShimlet, ProbedFakeShimlet

PipelineFactory = Callable[[PluginContext], Any]
"""A plugin factory: called with a :class:`PluginContext`, returns the pipeline (usually its class)."""


@dataclass
class ServiceState:
    """What the core keeps of a service between steps: its outputs and resource id."""

    service_id: str
    outputs: dict[str, Any] = field(default_factory=dict)
    resource_id: str | None = None

    def copy(self) -> ServiceState:
        return ServiceState(self.service_id, copy.deepcopy(self.outputs), self.resource_id)


class ContractContext:
    """A :class:`~modserv_shim.plugins.StepContext` that keeps everything a step does, for checks."""

    def __init__(self, state: ServiceState, spec: DeploySpec, shimlet: Shimlet, data_dir: Path,
                 *, attempt: int = 1, dry_run: bool = False, operator: str = "contract") -> None:
        self.state = state
        self._given = copy.deepcopy(state.outputs)  # the step reads a copy: changing it in place shows
        self._spec, self._shimlet, self._data_dir = spec, shimlet, data_dir
        self._attempt, self._dry_run, self._operator = attempt, dry_run, operator
        self.new_outputs: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        self.lines: list[tuple[str, str]] = []
        self.timeouts: list[tuple[float, bool]] = []

    service_id = property(lambda self: self.state.service_id)
    spec = property(lambda self: self._spec)
    operator = property(lambda self: self._operator)
    attempt = property(lambda self: self._attempt)
    dry_run = property(lambda self: self._dry_run)
    shimlet = property(lambda self: self._shimlet)
    data_dir = property(lambda self: self._data_dir)
    resource_id = property(lambda self: self.state.resource_id)

    @property
    def outputs(self) -> Mapping[str, Any]:
        return {**self._given, **self.new_outputs}

    def log(self, message: str, level: str = "info", **fields: Any) -> None:
        self.lines.append((level, message))

    def set_output(self, key: str, value: Any) -> None:
        try:
            self.new_outputs[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"output {key!r} is not JSON: {exc}") from exc

    def set_params(self, **params: Any) -> None:
        self.params.update(params)

    async def set_resource(self, resource_id: str) -> None:
        self.state.resource_id = resource_id  # persisted at once, as the executor does

    def set_timeout(self, seconds: float, *, force: bool = False) -> None:
        self.timeouts.append((seconds, force))

    def given_unchanged(self) -> bool:
        return self._given == self.state.outputs


class PipelineContract:
    step_timeout: ClassVar[float] = 60.0
    cancel_points: ClassVar[int] = 30
    """How many moments each step is cancelled at (the first loop turns, then growing delays)."""

    factory: ClassVar[PipelineFactory | None] = None
    """The plugin factory (usually the pipeline class); used by the default ``pipeline`` fixture."""
    options: ClassVar[Mapping[str, Any]] = {}
    """The pipeline's options for the default ``plugin_options`` fixture."""
    plugin_name: ClassVar[str | None] = None
    """The name the pipeline is registered under; default: the factory's ``name``."""

    # ------------------------------------------ fixtures a subclass may override

    @pytest.fixture
    def plugin_options(self) -> Mapping[str, Any]:
        return dict(self.options)

    @pytest.fixture
    def server_settings(self) -> Mapping[str, Any]:
        """``PluginContext.server_settings`` of the default ``pipeline`` fixture (e.g. ``secrets``)."""
        return {}

    @pytest_asyncio.fixture
    async def pipeline(self, tmp_path: Path, plugin_options: Mapping[str, Any],
                       server_settings: Mapping[str, Any]) -> AsyncIterator[Any]:
        """``factory`` built on a fresh data dir, started, and closed afterwards."""
        factory = type(self).factory
        if factory is None:
            raise NotImplementedError(
                f"{type(self).__name__}: set 'factory = YourPipeline' or override the 'pipeline' fixture")
        name = self.plugin_name or str(getattr(factory, "name", "pipeline"))
        ctx = make_plugin_context(tmp_path / "data", name, plugin_options, server_settings=server_settings)
        async with running_plugin(factory, ctx) as obj:
            yield obj

    @pytest.fixture
    def shimlet(self, tmp_path: Path) -> Shimlet:
        """Where the steps create workloads: a :class:`ProbedFakeShimlet` (it answers the health check)."""
        return ProbedFakeShimlet(make_plugin_context(tmp_path / "fake-shimlet", "fake"))

    @pytest.fixture
    def deploy_spec(self) -> DeploySpec:
        raise NotImplementedError("a PipelineContract subclass must provide the 'deploy_spec' fixture")

    def resources(self, shimlet: Shimlet) -> set[str] | None:
        """The resource ids the environment holds now (the fake shimlet's records); None: not checked."""
        return set(shimlet.resources()) if isinstance(shimlet, FakeShimlet) else None

    @pytest.fixture
    async def services(self, shimlet: Shimlet) -> AsyncIterator[Callable[[], ServiceState]]:
        """New services for a test; their workloads are deleted afterwards, pass or fail."""
        made: list[ServiceState] = []

        def new() -> ServiceState:
            made.append(ServiceState(f"contract-{uuid.uuid4().hex[:10]}"))
            return made[-1]

        try:
            yield new
        finally:
            for state in made:
                await shimlet.delete(state.resource_id or state.service_id)

    # ----------------------------------------------------------------- helpers

    async def run(self, pipeline: Pipeline, step: StepSpec, state: ServiceState, spec: DeploySpec,
                  shimlet: Shimlet, data_dir: Path, attempt: int = 1) -> ContractContext:
        """Run one step; on success its outputs join ``state`` (as the executor stores them)."""
        ctx = ContractContext(state, spec, shimlet, data_dir, attempt=attempt)
        async with asyncio.timeout(self.step_timeout):
            await pipeline.run_step(step, ctx)
        state.outputs.update(ctx.new_outputs)
        return ctx

    async def cancel_at(self, point: int, work: Awaitable[None]) -> bool:
        """Run ``work``, cancel it at the ``point``-th moment; False when it finished before."""
        task = asyncio.ensure_future(work)
        if point < 10:
            for _ in range(point):
                await asyncio.sleep(0)
        else:
            await asyncio.wait([task], timeout=0.001 * 1.5 ** (point - 10))
        if task.done():
            task.result()
            return False
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        raise AssertionError("the step swallowed its cancellation (a delete could not stop it)")

    # ----------------------------------------------------------- the contract

    def test_steps_are_well_formed(self, pipeline: Pipeline) -> None:
        steps = list(pipeline.steps())
        assert steps, "a pipeline needs at least one step"
        assert all(isinstance(s, StepSpec) for s in steps)
        names = [s.name for s in steps]
        assert len(set(names)) == len(names), f"step names repeat: {names}"
        order = [PHASE_ORDER.index(s.phase) for s in steps]
        assert order == sorted(order), f"phases go backwards: {[s.phase.value for s in steps]}"
        assert inspect.iscoroutinefunction(pipeline.run_step)

    async def test_each_step_run_twice_gives_the_same_outputs(
        self, pipeline: Pipeline, shimlet: Shimlet, deploy_spec: DeploySpec,
        services: Callable[[], ServiceState], tmp_path: Path,
    ) -> None:
        state = services()
        for step in pipeline.steps():
            done = state.copy()
            first = await self.run(pipeline, step, done, deploy_spec, shimlet, tmp_path)
            held = self.resources(shimlet)
            again = state.copy()
            again.resource_id = done.resource_id  # recorded at once: a run after a crash sees it
            second = await self.run(pipeline, step, again, deploy_spec, shimlet, tmp_path, attempt=2)
            assert second.new_outputs == first.new_outputs, f"step {step.name}: a second run changed its outputs"
            assert again.resource_id == done.resource_id, f"step {step.name}: a second run recorded another resource"
            assert self.resources(shimlet) == held, f"step {step.name}: a second run created another workload"
            state.outputs, state.resource_id = done.outputs, done.resource_id

    async def test_outputs_match_their_declarations(
        self, pipeline: Pipeline, shimlet: Shimlet, deploy_spec: DeploySpec,
        services: Callable[[], ServiceState], tmp_path: Path,
    ) -> None:
        state = services()
        for step in pipeline.steps():
            ctx = await self.run(pipeline, step, state, deploy_spec, shimlet, tmp_path)
            if not isinstance(pipeline, DeclaredPipeline):
                continue  # outputs of a hand-written pipeline are only checked to be JSON
            declared = {o.key: o for o in pipeline.declaration(step.name).writes}
            undeclared = sorted(set(ctx.new_outputs) - set(declared))
            assert not undeclared, f"step {step.name} sets outputs it does not declare (writes=): {undeclared}"
            for key, value in ctx.new_outputs.items():
                declared[key].check(value)

    async def test_a_cancelled_step_leaves_nothing_behind(
        self, pipeline: Pipeline, shimlet: Shimlet, deploy_spec: DeploySpec,
        services: Callable[[], ServiceState], tmp_path: Path,
    ) -> None:
        state = services()
        for step in pipeline.steps():
            for point in range(self.cancel_points):
                trial = state.copy()
                held = self.resources(shimlet)
                ctx = ContractContext(trial, deploy_spec, shimlet, tmp_path)
                cancelled = await self.cancel_at(point, pipeline.run_step(step, ctx))
                assert ctx.given_unchanged(), f"step {step.name} changed the outputs it was given"
                now = self.resources(shimlet)
                if held is not None and now is not None:
                    left = now - held - {trial.resource_id}
                    assert not left, f"step {step.name} cancelled at moment {point} left {left} unrecorded"
                if not cancelled:
                    break
                if trial.resource_id != state.resource_id and trial.resource_id is not None:
                    await shimlet.delete(trial.resource_id)  # a delete after the cancel, as the core does
            await self.run(pipeline, step, state, deploy_spec, shimlet, tmp_path)
