"""The CLI client: each command run as a real process against a live server (fake shimlet and pipeline).

The server runs on this test's event loop, so the CLI is started with asyncio's subprocess API
(a blocking ``subprocess.run`` would stop the server from answering).
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import shutil
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modserv_shim.client.api import ApiClient
from modserv_shim.client.cli import new_lines
from modserv_shim.client.follow import Cursor, LogLine, Snapshot, StepUpdate, follow, parse_sse
from modserv_shim.testing import fake_shimlet
from tests.conftest import Live, fake_settings, free_port

CLI = [sys.executable, "-m", "modserv_shim.cli"]
SCRIPT = [str(Path(sys.executable).parent / "model-serve-shim")]  # the console script: completion uses its name
TOKEN_ADMIN = "admin-token-0123456789abcdef"
TOKEN_VIEW = "viewer-token-0123456789abcdef"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def cli(server: str, *args: str, token: str | None = None, env: dict[str, str] | None = None,
              timeout: float = 60, exe: list[str] = CLI) -> Result:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MODSERV_")}
    environ["MODSERV_SERVER"] = server
    if token is not None:
        environ["MODSERV_TOKEN"] = token
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(*exe, *args, env=environ, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def deploy_args(name: str = "m1", *env: str) -> list[str]:
    args = ["deploy", "--model-name", name, "--model-file", f"/models/{name}", "--cpu", "1", "--memory", "1Gi"]
    for item in env:
        args += ["--env", item]
    return args


async def test_deploy_wait_draws_the_lifecycle_and_prints_endpoint_and_curl(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    r = await cli(live.url, *deploy_args("m1", "FAKE_FAIL_DEPLOY=1"), "--wait")
    assert r.rc == 0, r
    lines = r.out.splitlines()
    states = [line.split("state: ")[1].split()[0] for line in lines if "state: " in line]
    assert states == ["initializing", "pipeline_running", "deploying", "health_checking", "running"]
    # each step with its attempts: deploy failed once (temporary) then succeeded on attempt 2
    assert any(re.search(r"deploy\s+attempt 1 failed in .*simulated temporary failure 1", x) for x in lines), r.out
    assert any(re.search(r"deploy\s+attempt 2 succeeded in [\d.]+ (ms|s)$", x) for x in lines), r.out
    assert any(re.search(r"prepare\s+prepare attempt 1", x) for x in lines), r.out  # a step's log line
    sid = next(s["serviceId"] for s in (await live.call("GET", "/api/v1/modserv"))["data"])
    assert f"{sid} is running" in r.out
    assert f"endpoint: http://fake/fake-{sid}/v1" in r.out
    curl = next(x.strip() for x in lines if x.strip().startswith("curl "))
    assert curl.startswith(f"curl http://fake/fake-{sid}/v1/chat/completions -H 'Content-Type: application/json' -d '")
    body = json.loads(curl.split(" -d ", 1)[1].strip("'"))
    assert body["model"] == "m1" and body["messages"][0]["role"] == "user"
    assert r.err == ""


async def test_deploy_wait_of_a_failing_model_exits_1_with_the_reason(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    r = await cli(live.url, *deploy_args("bad", "FAKE_PERMANENT_PREPARE=the model file is truncated"), "--wait")
    assert r.rc == 1, r
    assert "state: failed" in r.out
    assert re.search(r"prepare\s+attempt 1 failed in .*the model file is truncated", r.out), r.out
    assert "deploy of bad-" in r.err and "failed:" in r.err and "the model file is truncated" in r.err
    assert "retry bad-" in r.err
    assert "curl" not in r.out

    # the same with --output json: the service as it ended, and the exit status
    r = await cli(live.url, *deploy_args("bad2", "FAKE_PERMANENT_VERIFY=no replica answered"), "--wait", "-o", "json")
    assert r.rc == 1
    svc = r.json()
    assert svc["state"] == "failed" and "no replica answered" in svc["reason"]
    assert "no replica answered" in r.err


async def test_deploy_from_a_spec_file_without_wait_and_json(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    spec = tmp_path / "spec.yaml"
    spec.write_text("modelName: fromfile\nmodelFile: /models/fromfile\nresourceRequirements: {cpu: '1'}\n"
                    "replicaCount: 1\n")
    r = await cli(live.url, "deploy", "-f", str(spec), "--replicas", "2", "-o", "json")
    assert r.rc == 0, r
    accepted = r.json()
    assert accepted["serviceId"].startswith("fromfile-") and accepted["totalSteps"] == ["prepare", "deploy", "verify"]
    svc = await live.wait_state(accepted["serviceId"], "running")
    assert svc["replicas"]["desired"] == 2 and svc["spec"]["resourceRequirements"]["cpu"] == "1"

    r = await cli(live.url, "deploy", "-f", str(spec))
    assert r.rc == 0 and "deploy accepted: fromfile-" in r.out and "prepare -> deploy -> verify" in r.out

    as_json = tmp_path / "spec.json"
    as_json.write_text(json.dumps({"modelName": "j", "modelFile": "/models/j", "dryRun": True}))
    r = await cli(live.url, "deploy", "-f", str(as_json))
    assert r.rc == 0 and "dry run of j-" in r.out and "nothing was deployed" in r.out

    # usage errors: exit 2, one line
    (tmp_path / "broken.yaml").write_text("modelName: [unclosed\n")
    r = await cli(live.url, "deploy", "-f", str(tmp_path / "broken.yaml"))
    assert r.rc == 2 and "is not valid YAML (line" in r.err
    r = await cli(live.url, "deploy", "-f", str(tmp_path / "missing.yaml"))
    assert r.rc == 2 and "cannot read the spec file" in r.err
    r = await cli(live.url, "deploy")
    assert r.rc == 2 and "nothing to deploy" in r.err
    r = await cli(live.url, *deploy_args(), "--env", "NOEQUALS")
    assert r.rc == 2 and "--env takes KEY=VALUE" in r.err
    # the server refuses: its message and code, exit 1
    r = await cli(live.url, "deploy", "--model-name", "x", "--model-file", "/m", "--runtime-arg=--host=0.0.0.0")
    assert r.rc == 1 and "invalid request: runtimeArgs" in r.err and "(code 1001, HTTP 422)" in r.err


async def test_list_status_events_logs(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    r = await cli(live.url, "list")
    assert r.rc == 0 and r.out.strip() == "no services"
    assert (await cli(live.url, "list", "-o", "json")).json() == []
    sid = (await cli(live.url, *deploy_args("m2", "FAKE_FAIL_PREPARE=1"), "-o", "json")).json()["serviceId"]
    await live.wait_state(sid, "running")

    r = await cli(live.url, "list")
    assert r.rc == 0
    row = next(x for x in r.out.splitlines() if sid in x)
    assert row.split()[1:5] == ["m2", "running", "1/1", "fake"], row
    assert [s["serviceId"] for s in (await cli(live.url, "list", "--state", "running", "-o", "json")).json()] == [sid]
    assert (await cli(live.url, "list", "--state", "failed", "-o", "json")).json() == []

    r = await cli(live.url, "status", sid)
    assert r.rc == 0
    assert re.search(r"state\s+running", r.out) and re.search(rf"endpoint\s+http://fake/fake-{sid}", r.out)
    assert re.search(r"prepare\s+succeeded\s+2\s", r.out), r.out  # two attempts of prepare
    data = (await cli(live.url, "status", sid, "-o", "json")).json()
    assert data["serviceId"] == sid and data["state"] == "running"

    r = await cli(live.url, "status", sid, "--wait")  # already running: the history, the endpoint, the curl
    assert r.rc == 0 and "state: running" in r.out and "curl " in r.out

    r = await cli(live.url, "events", sid)
    assert r.rc == 0
    for state in ("initializing", "pipeline_running", "deploying", "health_checking", "running"):
        assert state in r.out
    evs = (await cli(live.url, "events", sid, "-o", "json")).json()
    assert [e["to"] for e in evs][-1] == "running"

    r = await cli(live.url, "logs", sid)
    assert r.rc == 0
    assert "prepare attempt 1" in r.out and "prepare attempt 2" in r.out
    assert re.search(r"prepare\s+#1 failed .*: simulated temporary failure 1", r.out), r.out
    logs = (await cli(live.url, "logs", sid, "--step", "deploy", "-o", "json")).json()
    assert {x["step"] for x in logs["logs"]} == {"deploy"} and logs["runs"]

    r = await cli(live.url, "logs", sid, "--runtime", "--tail", "2")
    assert r.rc == 0 and r.out.splitlines() == [f"fake log line {i} of fake-{sid}" for i in (1, 2)]
    r = await cli(live.url, "logs", sid, "--runtime", "-o", "json")
    assert r.json()["lines"][0] == f"fake log line 0 of fake-{sid}"

    # --follow of a settled service prints its history and ends
    r = await cli(live.url, "logs", sid, "--follow")
    assert r.rc == 0 and "verify attempt 1" in r.out
    r = await cli(live.url, "events", sid, "--follow", "-o", "json")
    assert [json.loads(x)["to"] for x in r.out.splitlines()][-1] == "running"

    # unknown service: the server's 404, exit 1
    r = await cli(live.url, "status", "nope-123")
    assert r.rc == 1 and "nope-123" in r.err and "HTTP 404" in r.err


async def test_logs_follow_runs_until_the_pipeline_settles(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    gate = tmp_path / "gate"
    sid = (await cli(live.url, *deploy_args("slow", f"FAKE_GATE_DEPLOY={gate}"), "-o", "json")).json()["serviceId"]
    task = asyncio.create_task(cli(live.url, "logs", sid, "--follow"))
    await live.wait_state(sid, "deploying")
    await asyncio.sleep(0.5)
    assert not task.done()
    gate.touch()
    r = await task
    assert r.rc == 0, r
    assert "waiting for the gate" in r.out and "verify attempt 1" in r.out


async def test_scale_retry_delete(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    sid = (await cli(live.url, *deploy_args("m3"), "-o", "json")).json()["serviceId"]
    await live.wait_state(sid, "running")
    r = await cli(live.url, "scale", sid, "3")
    assert r.rc == 0 and f"scaling {sid} to 3 replicas" in r.out
    assert (await cli(live.url, "scale", sid, "2", "-o", "json")).json()["replicas"]["desired"] == 2
    r = await cli(live.url, "scale", sid, "0")
    assert r.rc == 2  # usage: at least 1

    r = await cli(live.url, "retry", sid)
    assert r.rc == 1 and "only a failed service can be retried" in r.err and "HTTP 409" in r.err

    r = await cli(live.url, "delete", sid)
    assert r.rc == 0 and re.match(rf"(deleted|deleting) {sid} \((terminated|terminating)\)", r.out), r.out
    await live.wait_state(sid, "terminated")
    r = await cli(live.url, "delete", "nope-1", "-o", "json")
    assert r.rc == 1 and r.out == "" and "HTTP 404" in r.err


async def test_retry_wait_follows_only_the_retry(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    # verify fails 3 times (all attempts of the first run), then succeeds on the retry
    r = await cli(live.url, *deploy_args("flaky", "FAKE_FAIL_VERIFY=3"), "--wait")
    assert r.rc == 1 and "simulated temporary failure 3" in r.err
    sid = r.err.split("deploy of ")[1].split()[0]
    r = await cli(live.url, "retry", sid, "--wait")
    assert r.rc == 0, r
    states = [line.split("state: ")[1].split()[0] for line in r.out.splitlines() if "state: " in line]
    assert states == ["health_checking", "running"]
    # the retry only: its own attempt (numbered from 1 again), none of the three that failed before
    assert "simulated temporary failure" not in r.out
    assert len(re.findall(r"verify\s+verify attempt 1", r.out)) == 1, r.out
    assert len(re.findall(r"verify\s+attempt 1 succeeded", r.out)) == 1, r.out
    assert f"{sid} is running" in r.out and "curl " in r.out


async def test_plugins_list_and_load(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    r = await cli(live.url, "plugins", "list")
    assert r.rc == 0
    assert re.search(r"shimlet\s+fake\b", r.out) and re.search(r"pipeline\s+fake\b", r.out)
    assert "steps: prepare -> deploy -> verify" in r.out
    shutil.copy(fake_shimlet.__file__, live.server.settings.resolved_plugin_dir / "fake2.py")
    r = await cli(live.url, "plugins", "load", "shimlet", "fake2", "--file", "fake2.py", "--attr", "FakeShimlet")
    assert r.rc == 0 and "shimlet 'fake2' loaded" in r.out, r
    names = [p["name"] for p in (await cli(live.url, "plugins", "list", "-o", "json")).json()["shimlets"]]
    assert "fake2" in names
    r = await cli(live.url, "plugins", "load", "shimlet", "x", "--attr", "X")
    assert r.rc == 2 and "--file or --module" in r.err
    r = await cli(live.url, "plugins", "load", "shimlet", "x", "--file", "missing.py", "--attr", "X")
    assert r.rc == 1 and "HTTP" in r.err


async def test_tokens_wrong_token_and_roles(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = fake_settings(tmp_path, tokens=f"ada:admin:{TOKEN_ADMIN},vic:viewer:{TOKEN_VIEW}")
    live: Live = await start_server(settings)
    r = await cli(live.url, "list")
    assert r.rc == 1 and "needs an API token" in r.err and "--token or MODSERV_TOKEN" in r.err
    r = await cli(live.url, "list", token="wrong-token-0123456789abcdef")
    assert r.rc == 1 and "unknown API token (code" in r.err and "HTTP 401" in r.err
    assert "wrong-token" not in r.err + r.out
    r = await cli(live.url, "list", "--token", TOKEN_VIEW)
    assert r.rc == 0
    r = await cli(live.url, *deploy_args(), token=TOKEN_VIEW)
    assert r.rc == 1 and "deploying needs the operator role; vic has viewer" in r.err and "HTTP 403" in r.err
    assert TOKEN_VIEW not in r.err + r.out
    r = await cli(live.url, *deploy_args("ok"), "--wait", token=TOKEN_ADMIN)
    assert r.rc == 0 and "is running" in r.out
    assert TOKEN_ADMIN not in r.err + r.out


async def test_unreachable_server_and_bad_server_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = await cli(url, "list")
    assert r.rc == 1
    assert r.err.strip() == f"model-serve-shim: cannot reach the server at {url}: connection refused"
    r = await cli("localhost:8080", "status", "x")
    assert r.rc == 2 and "--server must be a URL" in r.err
    r = await cli(url, "list", "--output", "yaml")
    assert r.rc == 2


async def test_a_server_url_with_a_wrong_path(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    r = await cli(live.url + "/nothing", "list")
    assert r.rc == 1 and "no such endpoint: GET /nothing/api/v1/modserv (code" in r.err and "HTTP 404" in r.err


async def test_completion_and_server_flags_unchanged(tmp_path: Path) -> None:
    r = await cli("http://127.0.0.1:1", "--show-completion", "bash", exe=SCRIPT)
    assert r.rc == 0 and "_MODEL_SERVE_SHIM_COMPLETE=complete_bash" in r.out, r
    r = await cli("http://127.0.0.1:1", "--port=0", "--shimlet=nope", f"--data-dir={tmp_path}")
    assert r.rc == 2 and "unknown shimlet 'nope'" in r.err  # no command: still the server
    r = await cli("http://127.0.0.1:1", "--port=1", "list")
    assert r.rc == 2 and "server options go without a command" in r.err
    # completion of a command name through the shell-completion protocol
    r = await cli("http://127.0.0.1:1", env={"_MODEL_SERVE_SHIM_COMPLETE": "complete_bash", "COMP_WORDS":
                                            "model-serve-shim de", "COMP_CWORD": "1"}, exe=SCRIPT)
    assert r.rc == 0 and "deploy" in r.out and "delete" in r.out


# ------------------------------------------------------------------------------ units


def test_parse_sse_fields_ids_and_multiline_data() -> None:
    lines = [": keep-alive", "retry: 2500", "id: 7", "event: state", 'data: {"to": "deploying",', 'data: "from": null}',
             "", "data: plain", "", "id: 8", "data:x", ""]
    events = list(parse_sse(lines))
    assert [(e.event, e.id) for e in events] == [("state", "7"), ("message", "7"), ("message", "8")]
    assert json.loads(events[0].data) == {"to": "deploying", "from": None}
    assert events[0].retry == 2500 and events[1].data == "plain" and events[2].data == "x"


def test_new_lines_of_a_fresh_tail() -> None:
    assert new_lines([], ["a", "b"]) == ["a", "b"]
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert new_lines(["a", "b"], ["a", "b"]) == []
    assert new_lines(["x"], ["y", "z"]) == ["y", "z"]


def test_cursor_defaults() -> None:
    assert Cursor().events == 0 and Cursor().runs == {}


@pytest.mark.parametrize("endpoint", ["http://h:1", "http://h:1/", "http://h:1/v1"])
def test_curl_uses_the_openai_path(endpoint: str) -> None:
    from modserv_shim.client.render import curl_command

    assert curl_command(endpoint, "m").startswith("curl http://h:1/v1/chat/completions -H ")


class _SseServer(ThreadingHTTPServer):
    """A stand-in for a server with the event stream: the first connection sends two events and drops,
    the second (with ``Last-Event-ID``) sends the rest."""

    daemon_threads = True
    seen_last_ids: list[str | None]


class _SseHandler(BaseHTTPRequestHandler):
    server: _SseServer

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, data: Any) -> None:
        body = json.dumps({"code": 0, "message": "ok", "data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/api/v1/modserv/s1/events":
            assert "text/event-stream" in self.headers["Accept"]
            last = self.headers.get("Last-Event-ID")
            self.server.seen_last_ids.append(last)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            if last is None:
                self.wfile.write(b"retry: 10\n\n: hello\n\n"
                                 b'id: 1\nevent: state\ndata: {"ts": "2026-01-01T00:00:00Z", "from": null,'
                                 b' "to": "initializing", "reason": null, "operator": "ada"}\n\n'
                                 b'id: 2\nevent: log\ndata: {"ts": "2026-01-01T00:00:01Z", "step": "prepare",'
                                 b' "attempt": 1, "level": "info", "message": "hello from prepare"}\n\n')
            else:
                assert last == "2"
                self.wfile.write(b'id: 3\nevent: step\ndata: {"startedAt": "2026-01-01T00:00:01Z",'
                                 b' "finishedAt": "2026-01-01T00:00:02Z", "step": "prepare", "attempt": 1,'
                                 b' "status": "succeeded", "durationMs": 5.0, "error": null}\n\n'
                                 b'id: 4\ndata: {"ts": "2026-01-01T00:00:03Z", "from": "initializing",'
                                 b' "to": "running", "reason": null, "operator": "ada"}\n\n')
            self.wfile.flush()
        elif self.path == "/api/v1/modserv/s1":
            state = "running" if len(self.server.seen_last_ids) > 1 else "pipeline_running"
            self._json({"serviceId": "s1", "state": state, "endpoint": "http://x:1"})
        else:
            self.send_error(404)


def test_follow_reads_the_event_stream_and_reconnects_with_last_event_id() -> None:
    httpd = _SseServer(("127.0.0.1", 0), _SseHandler)
    httpd.seen_last_ids = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with ApiClient(f"http://127.0.0.1:{httpd.server_address[1]}") as client:
            updates = list(follow(client, "s1", timeout=10))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert httpd.seen_last_ids == [None, "2"]
    assert [type(u).__name__ for u in updates] == ["StateChange", "LogLine", "StepUpdate", "StateChange", "Snapshot"]
    assert isinstance(updates[1], LogLine) and updates[1].message == "hello from prepare"
    assert isinstance(updates[2], StepUpdate) and (updates[2].status, updates[2].duration_ms) == ("succeeded", 5.0)
    assert isinstance(updates[-1], Snapshot) and updates[-1].service["state"] == "running"


async def test_deploy_wait_on_a_terminal_draws_a_live_display(start_server) -> None:  # type: ignore[no-untyped-def]
    live: Live = await start_server()
    master, slave = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MODSERV_")}
    environ.update({"MODSERV_SERVER": live.url, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"})
    proc = await asyncio.create_subprocess_exec(*CLI, *deploy_args("tty", "FAKE_SLEEP_DEPLOY=0.5"), "--wait",
                                                env=environ, stdout=slave, stderr=slave,
                                                stdin=asyncio.subprocess.DEVNULL)
    os.close(slave)
    chunks: list[bytes] = []

    def read_all() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = asyncio.get_running_loop().run_in_executor(None, read_all)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    await asyncio.wait_for(reader, 10)
    os.close(master)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    assert "initializing ✓ → pipeline_running ✓ → deploying ✓ → health_checking ✓ → running ✓" in screen, screen
    assert re.search(r"deploy\s+succeeded\s+1\s+[\d.]+ (ms|s)", screen), screen
    assert "curl http://fake/" in screen and "/v1/chat/completions" in screen
