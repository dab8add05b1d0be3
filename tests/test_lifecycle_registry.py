"""The transition table, and plugins discovered through real entry points (an installed dist-info)."""

from __future__ import annotations

import itertools
import sys
import textwrap
from pathlib import Path

import pytest

from modserv_shim.core.lifecycle import TRANSITIONS, State, can_transition, check_transition
from modserv_shim.core.registry import Registry, RegistryConfig
from modserv_shim.errors import InternalError


def test_happy_path_and_failures_are_allowed() -> None:
    path = [State.INITIALIZING, State.PIPELINE_RUNNING, State.DEPLOYING, State.HEALTH_CHECKING, State.RUNNING]
    for a, b in itertools.pairwise(path):
        check_transition(a, b)
    for s in path[:-1]:
        assert can_transition(s, State.FAILED) and can_transition(s, State.TERMINATING)
    assert can_transition(State.RUNNING, State.DEGRADED) and can_transition(State.DEGRADED, State.RUNNING)


@pytest.mark.parametrize(("src", "dst"), [
    (State.TERMINATED, State.RUNNING),
    (State.RUNNING, State.PIPELINE_RUNNING),
    (State.HEALTH_CHECKING, State.DEPLOYING),
    (State.TERMINATING, State.RUNNING),
    (State.INITIALIZING, State.RUNNING),
])
def test_illegal_transitions_raise(src: State, dst: State) -> None:
    with pytest.raises(InternalError, match=f"illegal lifecycle transition {src.value} -> {dst.value}"):
        check_transition(src, dst)


def test_every_state_is_reachable_and_only_terminated_is_final() -> None:
    seen, todo = {State.INITIALIZING}, [State.INITIALIZING]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(State)
    assert [s for s in State if not TRANSITIONS[s]] == [State.TERMINATED]


def install_fake_distribution(site: Path, entry_points: str, module: str, code: str) -> None:
    """Writes what pip would: a module and a dist-info with entry_points.txt."""
    (site / f"{module}.py").write_text(textwrap.dedent(code))
    info = site / "acme_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


async def test_entry_point_plugins_are_registered_and_broken_ones_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    install_fake_distribution(site, """
        [modserv_shim.shimlets]
        acme = acme_plugins:AcmeShimlet
        broken = acme_plugins_missing:Nope
        local = acme_plugins:AcmeShimlet
    """, "acme_plugins", """
        from modserv_shim.plugins import ResourcePhase, ResourceStatus

        class AcmeShimlet:
            name = "acme"
            def __init__(self, ctx):
                self.options = ctx.options
            async def create(self, ctx):
                return ctx.service_id
            async def status(self, rid):
                return ResourceStatus(ResourcePhase.NOT_FOUND)
            async def delete(self, rid):
                return None
    """)
    monkeypatch.syspath_prepend(str(site))
    reg = Registry(RegistryConfig(tmp_path, tmp_path / "plugins", options={"shimlet": {"acme": {"zone": "a"}}}))
    reg.register("shimlet", "local", lambda ctx: None, "builtin")
    reg.discover_entry_points()
    assert reg.entry("shimlet", "acme").source == "entry-point:acme_plugins:AcmeShimlet"
    acme = await reg.shimlet("acme")
    assert acme.options == {"zone": "a"}  # type: ignore[attr-defined]
    refused = {b.name: b.error for b in reg.broken}
    assert "No module named 'acme_plugins_missing'" in refused["broken"]
    assert refused["local"] == "name 'local' is taken by a built-in shimlet"
    assert reg.entry("shimlet", "local").source == "builtin"
    sys.modules.pop("acme_plugins", None)


async def test_two_first_uses_at_once_start_one_instance(tmp_path: Path) -> None:
    """Two deploys arriving together on a fresh server must share one shimlet, not start two."""
    import asyncio

    from modserv_shim.testing.fake_shimlet import FakeShimlet

    started: list[object] = []

    class SlowStart(FakeShimlet):  # TEST DOUBLE: a start() that takes a while (a cluster connection)
        async def start(self) -> None:
            await asyncio.sleep(0.05)
            started.append(self)

        async def close(self) -> None:
            return None

    reg = Registry(RegistryConfig(tmp_path, tmp_path / "plugins"))
    reg.register("shimlet", "slow", SlowStart, "builtin")
    a, b = await asyncio.gather(reg.shimlet("slow"), reg.shimlet("slow"))
    assert a is b and started == [a]


# --- step overrides in the configuration must name steps the pipeline has


def overriding_registry(tmp_path: Path, steps: dict[str, object]) -> Registry:
    from modserv_shim.builtins import BUILTINS
    from modserv_shim.core.executor import StepOverride

    overrides = {name: StepOverride(timeout=5) for name in steps}
    reg = Registry(RegistryConfig(tmp_path, tmp_path / "plugins", step_overrides={"opensourcellm": overrides}))
    reg.register_builtins(BUILTINS)
    return reg


def test_an_override_naming_no_step_is_refused_before_serving(tmp_path: Path) -> None:
    from modserv_shim.core.executor import UnknownStepOverride
    from modserv_shim.errors import PluginLoadError

    reg = overriding_registry(tmp_path, {"health-check": 1, "model_validaton": 1})
    with pytest.raises(UnknownStepOverride) as info:
        reg.check_step_overrides()
    assert isinstance(info.value, PluginLoadError)
    assert info.value.message == (
        "the configuration (pipelines.opensourcellm.steps) overrides 'model_validaton', which pipeline"
        " 'opensourcellm' does not have; its steps: model-validation, config-rendering, resource-deployment,"
        " health-check")


async def test_an_override_naming_no_step_is_refused_when_the_pipeline_is_built(tmp_path: Path) -> None:
    from modserv_shim.errors import PluginLoadError

    reg = overriding_registry(tmp_path, {"healthcheck": 1})
    with pytest.raises(PluginLoadError, match="overrides 'healthcheck', which pipeline 'opensourcellm' does not"):
        await reg.pipeline("opensourcellm")


async def test_checked_overrides_build_the_pipeline_once(tmp_path: Path) -> None:
    reg = overriding_registry(tmp_path, {"health_check": 1, "config-rendering": 1})
    reg.check_step_overrides()
    built = reg.entry("pipeline", "opensourcellm").built
    assert built is not None
    pipeline = await reg.pipeline("opensourcellm")
    try:
        assert pipeline is built and reg.entry("pipeline", "opensourcellm").built is None
        reg.check_step_overrides()  # again, on the started instance: still fine
    finally:
        await reg.close()
