"""TEST DOUBLE: a three-step pipeline whose behaviour the test chooses through ``spec.env``.

Steps: ``prepare`` (pipeline_running), ``deploy`` (deploying: ``shimlet.create``),
``verify`` (health_checking: waits for the shimlet to say ready).  Test-only keys
(``STEP`` is the upper-case step name):

* ``FAKE_FAIL_<STEP>=n``      the first n attempts (counted across retries) fail, temporarily
* ``FAKE_PERMANENT_<STEP>=m`` the step fails permanently with message m
* ``FAKE_SLEEP_<STEP>=s``     the step sleeps s seconds
* ``FAKE_GATE_<STEP>=path``   the step waits until that file exists

A server only passes these keys to a pipeline when its ``allowed_env`` allows them
(``allowed_env: ["FAKE_*"]``).  Like :mod:`modserv_shim.testing.fake_shimlet`, this file
imports only the plugin API, so it can be copied into a plugin directory and hot-loaded.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from modserv_shim.errors import PermanentStepError, StepError
from modserv_shim.plugins import (
    DeployContext,
    LaunchSpec,
    Phase,
    PluginContext,
    ResourcePhase,
    RetryPolicy,
    StepContext,
    StepSpec,
)

FAST_RETRY = RetryPolicy(attempts=3, backoff=0.01, multiplier=2, max_delay=0.05)


class FakePipeline:
    name = "fake"

    def __init__(self, ctx: PluginContext) -> None:
        self.options = dict(ctx.options)
        self.tries: dict[tuple[str, str], int] = {}

    def steps(self) -> Sequence[StepSpec]:
        return [
            StepSpec("prepare", Phase.PIPELINE, timeout=30, retry=FAST_RETRY),
            StepSpec("deploy", Phase.DEPLOYING, timeout=30, retry=FAST_RETRY),
            StepSpec("verify", Phase.HEALTH_CHECKING, timeout=30, retry=FAST_RETRY),
        ]

    async def run_step(self, step: StepSpec, ctx: StepContext) -> None:
        key = step.name.upper()
        env = ctx.spec.env
        ctx.log(f"{step.name} attempt {ctx.attempt}", step_param=key)
        ctx.set_params(model=ctx.spec.modelFile)
        if f"FAKE_GATE_{key}" in env:
            gate = env[f"FAKE_GATE_{key}"]
            ctx.log("waiting for the gate", gate=gate)
            while not os.path.exists(gate):  # noqa: ASYNC240 - a test gate, polled briefly
                await asyncio.sleep(0.05)
        if f"FAKE_SLEEP_{key}" in env:
            await asyncio.sleep(float(env[f"FAKE_SLEEP_{key}"]))
        if f"FAKE_PERMANENT_{key}" in env:
            raise PermanentStepError(env[f"FAKE_PERMANENT_{key}"])
        tries = self.tries[(ctx.service_id, step.name)] = self.tries.get((ctx.service_id, step.name), 0) + 1
        if tries <= int(env.get(f"FAKE_FAIL_{key}", "0")):
            raise StepError(f"simulated temporary failure {tries}")
        if step.name == "prepare":
            ctx.set_output("rendered", {"argv": ["fake-server", ctx.spec.modelFile]})
        elif step.name == "deploy":
            launch = LaunchSpec("fake", ctx.spec.modelName, ctx.spec.modelFile, ("fake",), ())
            rid = await ctx.shimlet.create(DeployContext(ctx.service_id, ctx.spec, launch, ctx.spec.replicaCount))
            await ctx.set_resource(rid)
        elif step.name == "verify":
            assert ctx.resource_id is not None
            while True:
                st = await ctx.shimlet.status(ctx.resource_id)
                if st.phase is ResourcePhase.READY:
                    return
                if st.phase is ResourcePhase.FAILED:
                    raise PermanentStepError(st.reason or "failed")
                await asyncio.sleep(0.02)
