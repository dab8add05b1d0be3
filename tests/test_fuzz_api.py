"""Schemathesis against the served OpenAPI document of a real server.

The server runs in a child process on a loopback port, built as the CLI builds it, with tokens
configured and the test-double shimlet and pipeline registered as its defaults, so an accepted
deploy costs a few JSON writes.  Every operation of ``/openapi.json`` gets requests generated
from its parameters and body schemas (Hypothesis, derandomized: the same cases in every run); every
response must

* not be a 5xx,
* have a status code, a content type and a body the document declares for that operation,
* be the envelope: ``code``/``message``/``data`` (and ``details``), ``code`` 0 exactly when the
  status is below 400, ``data`` null on an error.

Most requests carry the admin token; one in ten carries none and one in ten the viewer's, so
the 401 and 403 answers are exercised too (Schemathesis's negative cases that drop the required
``Authorization`` header add more 401s).  A third of the requests on ``{service_id}`` paths name
a service that exists (one running, one failed), so that the success bodies are checked, not only
the 404s; ``DELETE`` gets a service of its own, so that it does not end the other two.

Schemathesis runs the coverage phase (boundary values, missing and malformed parameters,
undocumented methods: the explicit examples, not counted by ``max_examples``) and then the
fuzzing phase (positive and negative cases, ``max_examples`` per operation).

``MODSERV_FUZZ_CASES`` (default 1200) sets the budget: each operation may take up to an eighth of
it, and the run must reach at least 1000 cases in total.  ``MODSERV_FUZZ_CASES=20000`` is the
long mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import REPO, free_port
from tests.helpers.api_flows import DEPLOY
from tests.helpers.shim_process import stop_process

ADMIN = "fuzz-admin-token-0123456789"
VIEWER = "fuzz-viewer-token-0123456789"
BUDGET = int(os.environ.get("MODSERV_FUZZ_CASES", "1200"))
PER_OPERATION = max(BUDGET // 8, 10)
MINIMUM = min(BUDGET, 1000)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

CASES: Counter[str] = Counter()
STATUSES: Counter[tuple[str, int]] = Counter()
PHASES: Counter[str] = Counter()
STARTED: list[float] = []  # when the server was up and the fuzzing began


@dataclass
class FuzzServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    running: str  # a service that is running
    failed: str  # a service whose pipeline failed
    doomed: str  # a running service for DELETE, so that the other two survive it


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"server did not start:\n{log.read_text()[-3000:]}")


# The server process: the app the CLI builds, with the test doubles registered as the default plugins.
LAUNCH = """
import json, sys
from modserv_shim import logs
from modserv_shim.config import Settings
from modserv_shim.server.runner import build, build_registry, serve
from modserv_shim.testing.fake_pipeline import FakePipeline
from modserv_shim.testing.fake_shimlet import FakeShimlet

settings = Settings.load(None, **json.loads(sys.argv[1]))
logs.configure(settings.log_level, settings.log_format)
registry = build_registry(settings)
registry.register("shimlet", "fake", FakeShimlet, "test-double")
registry.register("pipeline", "fake", FakePipeline, "test-double")
serve(build(settings, registry))
"""


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    root = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    settings = {"data_dir": str(root / "data"), "port": port, "shimlet": "fake", "pipeline": "fake",
                "tokens": f"ada:admin:{ADMIN},vera:viewer:{VIEWER}", "allowed_env": ["FAKE_*"],
                "poll_interval": 0.05, "log_level": "warning", "log_format": "json"}
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH, json.dumps(settings)], stdout=out, stderr=out,
                                cwd=REPO)
    try:
        _wait_healthy(url, proc, log)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as admin:
            running = admin.post("/api/v1/modserv/deploy", json=DEPLOY).json()["data"]["serviceId"]
            failed = admin.post("/api/v1/modserv/deploy",
                                json={**DEPLOY, "env": {"FAKE_PERMANENT_PREPARE": "fails on purpose"}}
                                ).json()["data"]["serviceId"]
            doomed = admin.post("/api/v1/modserv/deploy", json=DEPLOY).json()["data"]["serviceId"]
            for sid, state in ((running, "running"), (failed, "failed"), (doomed, "running")):
                r = admin.get(f"/api/v1/modserv/{sid}", params={"waitFor": state, "timeout": 20})
                assert r.json()["data"]["state"] == state, r.text
        STARTED.append(time.monotonic())
        yield FuzzServer(url, proc, log, running, failed, doomed)
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def api_schema(fuzz_server: FuzzServer) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Schemathesis 4.32.5's lazy-schema runner (``schemathesis/pytest/lazy.py``, ``wrapped_test``)
    reads and rewrites ``request.node._nodeid``; pytest 9.2 nodes no longer have that attribute (the
    id is the structured ``_id``, ``nodeid`` a read-only property), so every ``from_fixture`` test
    dies with ``AttributeError`` before it generates a case.  Give the node the attribute it reads;
    writing it changes nothing in pytest, and each operation is still reported as a subtest under
    its own label.  A no-op on the pytest versions that have ``_nodeid``.
    """
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def _pick(case: Any) -> int:
    """A number in 0..29 fixed by the generated case (crc32: the same in every run, unlike hash();
    no repr with an address in it, so an absent body counts as None, not as the NOT_SET object)."""
    body = None if isinstance(case.body, NotSet) else case.body
    text = json.dumps([case.path_parameters, case.query, case.headers, case.cookies, body],
                      sort_keys=True, default=repr)
    return zlib.crc32(text.encode()) % 30


def check_envelope(status: int, content: bytes, path: str, request: str) -> None:
    if path == "/metrics" and status == 200:
        return  # Prometheus text, documented as such
    body = json.loads(content)
    assert isinstance(body, dict), (request, status, body)
    assert {"code", "message", "data"} <= set(body) <= {"code", "message", "data", "details"}, (request, status, body)
    assert isinstance(body["code"], int) and isinstance(body["message"], str), (request, status, body)
    assert (body["code"] == 0) == (status < 400), (request, status, body)
    if status >= 400:
        assert body["data"] is None, (request, status, body)


@schema.parametrize()
@pytest.mark.timeout(max(300, BUDGET // 10))  # every operation runs inside this one pytest test
@settings(max_examples=PER_OPERATION, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
def test_api_answers_as_documented(case: Any, fuzz_server: FuzzServer) -> None:
    pick = _pick(case)
    if "service_id" in (case.path_parameters or {}) and pick < 10:
        if case.method.upper() == "DELETE":
            case.path_parameters["service_id"] = fuzz_server.doomed
        else:
            case.path_parameters["service_id"] = fuzz_server.running if pick < 6 else fuzz_server.failed
    token = None if pick % 10 == 3 else VIEWER if pick % 10 == 7 else ADMIN
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if case.headers is not None:  # a generated Authorization header would override ours
        for name in [k for k in case.headers if k.lower() == "authorization"]:
            del case.headers[name]
        case.headers.update(headers)
    response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
    request = f"{response.request.method} {response.request.url}"
    check_envelope(response.status_code, response.content, case.path, request)
    CASES[f"{case.method} {case.path}"] += 1
    STATUSES[(f"{case.method} {case.path}", response.status_code)] += 1
    if case.meta is not None:  # e.g. "coverage/negative", "fuzzing/positive"
        PHASES[f"{case.meta.phase.name.value}/{case.meta.generation.mode.value}"] += 1


def test_fuzzing_reached_its_budget(fuzz_server: FuzzServer) -> None:
    """Runs after the generated tests (pytest keeps the file's order); fails, not skips, when they did not run."""
    assert CASES, "no generated case ran: test_api_answers_as_documented failed to start or was deselected"
    total = sum(CASES.values())
    report = "\n".join(f"  {op}: {n} cases, statuses "
                       + ", ".join(f"{s}x{c}" for (o, s), c in sorted(STATUSES.items()) if o == op)
                       for op, n in sorted(CASES.items()))
    phases = ", ".join(f"{name} {n}" for name, n in sorted(PHASES.items()))
    print(f"\nfuzzing: {total} cases ({phases}) over {len(CASES)} method/path pairs, {len(STATUSES)} "
          f"method/path/status triples, in {time.monotonic() - STARTED[0]:.0f} s\n{report}")
    assert total >= MINIMUM, f"only {total} generated cases (want {MINIMUM}):\n{report}"
    document = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=5).json()
    documented = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
                  if method in {"get", "put", "post", "delete", "options", "head", "patch", "trace"}}
    assert documented and documented <= set(CASES), f"operations without a case: {sorted(documented - set(CASES))}"
    assert fuzz_server.proc.poll() is None, "the server died during fuzzing"
    assert httpx.get(f"{fuzz_server.url}/healthz", timeout=5).status_code == 200
