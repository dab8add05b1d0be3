'''Templates of a generated shimlet project: the four files every shimlet has, tests, docs.'''

from __future__ import annotations

from typing import TYPE_CHECKING

from modserv_shim.scaffold import OptionSpec, _common, options_table

if TYPE_CHECKING:
    from modserv_shim.scaffold import Names

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("poll_interval", "float", float, 2.0,
               "seconds between two looks at the workloads; status() answers from the last look",
               (("gt", 0),)),
)

INIT = '''\
"""The $name shimlet for modserv-shim.

Files (the layout every shimlet shares): ``options`` (every option with its type, default and
meaning), ``render`` (what a workload looks like, before anything is created), ``status`` (what
the environment reports -> one ResourceStatus), ``shimlet`` (the plugin and its contracts).
"""

from $package.options import ${options_cls}
from $package.shimlet import ${cls}

__all__ = ["${options_cls}", "${cls}"]
'''


RENDER_PY = '''\
"""What a $name workload looks like, without creating anything.

``create`` applies what :func:`workload` returns and ``render`` (a dry run) shows it, so the
two never differ.  Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from modserv_shim.plugins import DeployContext

from $package.options import ${options_cls}

LABEL = "modserv-shim/shimlet"
"""Set on every workload this shimlet creates, so that it finds them again after a restart."""


def workload(ctx: DeployContext, options: ${options_cls}) -> dict[str, Any]:
    """The workload of one service: ``ctx.replicas`` replicas serving ``ctx.launch``.

    Adapt it to what your environment applies (a container spec, a job, a VM).  ``ctx.launch`` is
    environment-neutral: a container runs ``launch.image`` with ``launch.container_command`` and
    ``launch.args``, and listens on ``launch.container_port``; ``{host}`` and ``{port}`` in the
    arguments are filled in here.
    """
    launch = ctx.launch
    port = str(launch.container_port)
    args = [a.replace("{host}", "0.0.0.0").replace("{port}", port) for a in launch.args]
    return {
        "kind": "$name-workload",
        "name": ctx.service_id,
        "labels": {**ctx.labels, LABEL: "$name"},
        "replicas": ctx.replicas,
        "image": launch.image,
        "command": [*launch.container_command, *args],
        "port": launch.container_port,
        "env": dict(launch.env),
        "readyPath": launch.ready_path,
        "startupTimeout": launch.startup_timeout,
    }
'''

STATUS_PY = '''\
"""How what the environment reports about a workload adds up to one ResourceStatus.  Pure: no I/O.

* NOT_FOUND -- nothing exists under the resource id;
* FAILED    -- it will not become ready without a change (``Observed.failure`` says why);
* READY     -- every desired replica is ready;
* DEGRADED  -- it was READY once, and now some replicas are not;
* PENDING   -- anything else: starting, or new replicas after a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modserv_shim.plugins import ResourcePhase, ResourceStatus


@dataclass(frozen=True)
class Observed:
    """What one look at the environment saw of a workload (what ``${cls}._observe`` returns)."""

    desired: int
    ready: int
    endpoint: str | None = None
    """The OpenAI base URL (``http://host:port``) of the service, once it has one."""
    failure: str | None = None
    """Why the workload will not become ready without a change (a bad image, a crash loop); None if it may."""
    waiting: str | None = None
    """What a workload that is not ready waits for (becomes the status' reason)."""
    detail: dict[str, Any] = field(default_factory=dict)


def summarize(observed: Observed | None, *, was_ready: bool) -> ResourceStatus:
    """The status of a workload from one look at it; ``was_ready``: it has been READY before."""
    if observed is None:
        return ResourceStatus(ResourcePhase.NOT_FOUND, reason="no such workload")
    ready, desired = observed.ready, observed.desired
    if observed.failure:
        phase, reason = ResourcePhase.FAILED, observed.failure
    elif ready >= desired:
        phase, reason = ResourcePhase.READY, None
    else:
        phase = ResourcePhase.DEGRADED if was_ready else ResourcePhase.PENDING
        reason = observed.waiting or f"{ready} of {desired} replicas ready"
    return ResourceStatus(phase, ready, desired, observed.endpoint, reason, dict(observed.detail))
'''

SHIMLET_PY = '''\
"""The ``$name`` shimlet: deploys each service as one workload of its environment.

How it works (all of it but the four methods marked TODO is environment-neutral):

* ``create`` applies the workload :func:`~$package.render.workload` describes, named by the
  service id, and remembers the service; a second ``create`` of the same service returns the
  same resource id and applies nothing.
* A background task looks at every workload every ``poll_interval`` seconds (``_observe``) and
  turns what it sees into a status (:func:`~$package.status.summarize`); ``status`` answers from
  the last look and never waits, and every change is published to ``watch`` streams.
* ``delete`` removes the workload; deleting a missing one succeeds, and the resource id is the
  service id, so a delete by service id (after a crash between create and its record) works.
* After a restart of the shim, the workloads found by ``_list_workloads`` are adopted (UNKNOWN
  until the first look), not created again.

The kit provides the rest: :class:`~modserv_shim.kit.ShimletBase` (start once, auto-start,
refuse after close) and :class:`~modserv_shim.kit.WatchHub` (one status stream, fanned out).
Optional capabilities (``scale``, ``logs``, ``inspect_model``, ``request``) are methods of the
same names; see :mod:`modserv_shim.plugins`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

from modserv_shim.kit import Event, ShimletBase, WatchHub
from modserv_shim.plugins import DeployContext, PluginContext, ResourcePhase, ResourceStatus

from $package.options import ${options_cls}
from $package.render import workload
from $package.status import Observed, summarize


class ${cls}(ShimletBase):
    """The $name shimlet; options: :class:`~$package.options.${options_cls}`."""

    name = "$name"
    launch_target = "container"
    """``"container"``: workloads run ``launch.image``; ``"local"``: ``launch.local_command`` on this machine."""

    def __init__(self, ctx: PluginContext) -> None:
        super().__init__()
        self.options = ${options_cls}.parse(ctx.options)
        self.data_dir = ctx.data_dir  # yours: keep files here (it survives a restart of the shim)
        self._hub = WatchHub()
        self._replicas: dict[str, int] = {}  # resource id -> desired replicas, of every workload kept
        self._statuses: dict[str, ResourceStatus] = {}  # what the last look saw; status() answers from it
        self._was_ready: set[str] = set()
        self._create_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle (ShimletBase)

    async def _open(self) -> None:
        for resource_id, replicas in (await self._list_workloads()).items():  # adopt what an earlier run left
            self._replicas[resource_id] = replicas
            self._set(resource_id, ResourceStatus(ResourcePhase.UNKNOWN, 0, replicas,
                                                  reason="found after a restart of the shim; not looked at yet"))
        self._poller = asyncio.create_task(self._poll_forever(), name="$name-shimlet-poller")

    async def _shut(self) -> None:  # the workloads keep running
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        self._hub.close()

    # ------------------------------------------------------------ the Shimlet contract

    async def create(self, ctx: DeployContext) -> str:
        await self._ensure_started()
        resource_id = ctx.service_id
        async with self._create_lock:
            if resource_id not in self._replicas:
                await self._apply(ctx, workload(ctx, self.options))
                self._replicas[resource_id] = ctx.replicas
                self._set(resource_id, ResourceStatus(ResourcePhase.PENDING, 0, ctx.replicas, reason="created"))
                self._wake.set()  # look at it now, not at the next interval
        return resource_id

    async def status(self, resource_id: str) -> ResourceStatus:
        await self._ensure_started()
        known = self._statuses.get(resource_id)
        return known or ResourceStatus(ResourcePhase.NOT_FOUND, reason=f"no $name workload {resource_id!r}")

    async def delete(self, resource_id: str) -> None:
        await self._ensure_started()
        await self._remove(resource_id)
        self._replicas.pop(resource_id, None)
        self._statuses.pop(resource_id, None)
        self._was_ready.discard(resource_id)
        self._hub.gone(resource_id)

    # ------------------------------------------------------------ capabilities: watch, render

    def watch(self) -> AsyncIterator[Event]:
        return self._hub.watch()

    def render(self, ctx: DeployContext) -> Mapping[str, Any]:
        return workload(ctx, self.options)

    # ------------------------------------------------------------ statuses, one look at a time

    def _set(self, resource_id: str, status: ResourceStatus) -> None:
        self._statuses[resource_id] = status
        if status.phase is ResourcePhase.READY:
            self._was_ready.add(resource_id)
        self._hub.publish(resource_id, status)

    async def _look(self, resource_id: str) -> None:
        try:
            observed = await self._observe(resource_id)
        except Exception as exc:  # the environment did not answer: keep the phase, say why
            last = self._statuses.get(resource_id)
            if last is not None and resource_id in self._replicas:
                self._set(resource_id, dataclasses.replace(last, reason=f"cannot look at the workload: {exc}"))
            return
        if resource_id in self._replicas:  # not deleted while we looked
            self._set(resource_id, summarize(observed, was_ready=resource_id in self._was_ready))

    async def _poll_forever(self) -> None:
        while True:
            self._wake.clear()
            await asyncio.gather(*(self._look(resource_id) for resource_id in list(self._replicas)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.poll_interval):
                    await self._wake.wait()

    # ------------------------------------------------------------ the environment: yours to write

    async def _list_workloads(self) -> dict[str, int]:
        """The workloads this shimlet created before (resource id -> desired replicas), adopted at start.

        Find them by the label :data:`$package.render.LABEL` (or a name prefix only this shimlet uses).
        """
        raise NotImplementedError("TODO: list the workloads this shimlet created earlier (resource id -> replicas)")

    async def _apply(self, ctx: DeployContext, manifest: Mapping[str, Any]) -> None:
        """Create ``manifest`` (what :func:`~$package.render.workload` returned), named ``ctx.service_id``.

        Idempotent: when that workload exists already (a retry, a create after a crash), leave it as it
        is.  Raise ``modserv_shim.errors.BackendUnavailable`` when the environment does not answer (the
        step is retried), ``PermanentStepError`` when retrying cannot help (a quota, a bad image).
        """
        raise NotImplementedError("TODO: create the workload in your environment unless ctx.service_id exists")

    async def _observe(self, resource_id: str) -> Observed | None:
        """One look at the workload ``resource_id``: None when nothing exists under it, else what is seen.

        Runs in the background every ``poll_interval`` seconds; ``status`` never waits for it.
        """
        raise NotImplementedError("TODO: ask your environment how workload resource_id is doing (None: no such)")

    async def _remove(self, resource_id: str) -> None:
        """Delete the workload ``resource_id`` and its replicas; a workload that does not exist is no error."""
        raise NotImplementedError("TODO: delete the workload resource_id in your environment (missing: no error)")
'''

TEST_CONTRACT = '''\
"""The $name shimlet keeps modserv-shim's shimlet contract, and the server finds it."""

from collections.abc import Mapping
from typing import Any, ClassVar

from modserv_shim.testing import ShimletContract, discover_plugin

from $package import ${cls}


class Test${cls}(ShimletContract):
    factory = ${cls}
    options: ClassVar[Mapping[str, Any]] = {"poll_interval": 0.05}  # look often: the contract waits for changes
    ready_timeout = 30.0
    # The contract deploys modserv-shim's OpenAI stub: make_deploy_context(), whose launch is
    # stub_launch() (a local command, no image).  A container environment needs an image it can
    # pull: override the make_context fixture to return
    # make_deploy_context(service_id, replicas, launch=stub_launch(image="...")).
    # Set endpoint_serves_http = True when the tests can reach the endpoint: /v1/models is checked too.


def test_the_server_finds_the_shimlet_through_its_entry_point() -> None:
    assert discover_plugin("shimlet", "$name") is ${cls}
'''

TEST_DOCS = '''\
"""docs/$name.md shows the options table the code generates; unknown options are refused."""

from pathlib import Path

import pytest
from modserv_shim.errors import ValidationFailed

from $package.options import ${options_cls}

DOC = Path(__file__).resolve().parent.parent / "docs" / "$name.md"


def test_the_docs_show_the_options_table() -> None:
    assert ${options_cls}.markdown_table() in DOC.read_text(), f"paste ${options_cls}.markdown_table() into {DOC}"


def test_unknown_options_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="unknown $label option"):
        ${options_cls}.parse({"no_such_option": 1})
'''

DOC = '''\
# The `$name` shimlet

_TODO: say which environment this shimlet deploys into and what a workload is there (a container,
a job, a VM), and what it needs (credentials, a network the shim can reach)._

## Configuration

Install the package next to modserv-shim; the server finds the shimlet at start-up (entry point
`$name` in the group `modserv_shim.shimlets`). Its options go in the server's config file:

```yaml
shimlets:
  $name:
    options:
      poll_interval: 2.0
```

Deploy with `"shimlet": "$name"` in the request, or make it the default:
`model-serve-shim --shimlet=$name`.

## Options

$options_table
## Statuses

| status | when |
|---|---|
| `pending` | created, not all replicas ready yet |
| `ready` | every desired replica is ready; the endpoint is set |
| `degraded` | it was ready, and now some replicas are not |
| `failed` | it will not become ready without a change; the reason says why |
| `not_found` | no workload under this id |
| `unknown` | found after a restart of the shim, not looked at yet |

## Capabilities

`watch` (every status change is pushed to the server) and `render` (a dry run shows the workload
`create` would apply). _TODO: list `scale`, `logs`, `inspect-model` or `probe` if you add them._

## Testing

```sh
pip install -e '.[test]'
pytest                 # the shimlet contract (tests/test_contract.py) and the docs check
ruff check src tests && mypy
```
'''

README = '''\
# $project

The `$name` shimlet for modserv-shim: it deploys each model service as a
workload of _TODO: your environment_. Documentation: [docs/$name.md](docs/$name.md).

```sh
pip install -e '.[test]'      # modserv-shim[testing] brings pytest and pytest-asyncio
pytest                        # the shimlet contract and the docs check
```

## Layout

| file | role |
|---|---|
| `src/$package/options.py` | the options model (`${options_cls}`): types, defaults, descriptions |
| `src/$package/render.py` | what a workload looks like, without creating anything (also the dry run) |
| `src/$package/status.py` | what the environment reports -> one `ResourceStatus` (pure) |
| `src/$package/shimlet.py` | the plugin (`${cls}`) and its contracts |
| `tests/test_contract.py` | modserv-shim's shimlet contract, and the entry point |
| `tests/test_docs.py` | the docs page shows the options table the code generates |
| `pyproject.toml` | the entry point `$name` in `modserv_shim.shimlets` |

## What is left to write

`grep -rn 'TODO:' src tests docs`. In `shimlet.py` four methods talk to the environment:
`_list_workloads` (adopt after a restart), `_apply` (create, idempotently), `_observe` (one
look at a workload) and `_remove` (delete, idempotently). Everything else works as generated;
`pytest` says what is still missing.
'''


def files(names: Names) -> dict[str, str]:
    return {
        "src/$package/__init__.py": INIT,
        "src/$package/options.py": _common.OPTIONS_PY,
        "src/$package/render.py": RENDER_PY,
        "src/$package/status.py": STATUS_PY,
        "src/$package/shimlet.py": SHIMLET_PY,
        "tests/test_contract.py": TEST_CONTRACT,
        "tests/test_docs.py": TEST_DOCS,
        "docs/$name.md": DOC,
        "README.md": README,
    }


def values(names: Names) -> dict[str, str]:
    return {"option_lines": "\n".join(o.source() for o in OPTIONS),
            "options_table": options_table(OPTIONS), "typing_names": "ClassVar"}
