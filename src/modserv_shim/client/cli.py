"""The client commands of ``model-serve-shim``: deploy, status, list, logs, events, delete, scale, retry, plugins.

    model-serve-shim deploy -f smollm2.yaml --wait
    model-serve-shim deploy --model-name smollm2-135m --model-file /models/smollm2.gguf --cpu 2 --memory 2Gi --wait
    model-serve-shim list --state running
    model-serve-shim status SERVICE_ID [--wait]
    model-serve-shim logs SERVICE_ID [--runtime] [--follow]
    model-serve-shim events SERVICE_ID [--follow]
    model-serve-shim scale SERVICE_ID 2
    model-serve-shim retry SERVICE_ID --wait
    model-serve-shim delete SERVICE_ID
    model-serve-shim plugins list
    model-serve-shim plugins load shimlet docker2 --file docker2.py --attr Docker2Shimlet

Every command takes ``--server`` (``MODSERV_SERVER``, default http://127.0.0.1:8080), ``--token``
(``MODSERV_TOKEN``; sent as ``Authorization: Bearer``, never shown), ``--cacert`` (``MODSERV_CACERT``)
and ``--output table|json`` (json: the envelope's ``data``).  Exit status: 0 done; 1 the server refused
(its message and code on stderr), the server could not be reached, or a waited-for deploy failed (its
reason on stderr); 2 a usage error; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.live import Live

from modserv_shim.client import render
from modserv_shim.client.api import DEFAULT_SERVER, ApiClient, ApiError, ClientError, dumps
from modserv_shim.client.follow import (
    SETTLED,
    Cursor,
    FollowTimeout,
    LogLine,
    Snapshot,
    StateChange,
    StepUpdate,
    Update,
    follow,
    parse_ts,
)

PROG = "model-serve-shim"


class Output(StrEnum):
    table = "table"
    json = "json"


class Kind(StrEnum):
    shimlet = "shimlet"
    pipeline = "pipeline"


# ------------------------------------------------------------------------------- common options

ServerOpt = Annotated[str, typer.Option(
    "--server", envvar="MODSERV_SERVER", help="The server's URL.", show_envvar=True)]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", envvar="MODSERV_TOKEN", show_default=False, show_envvar=True,
    help="API token (sent as 'Authorization: Bearer'; never shown).")]
CacertOpt = Annotated[Path | None, typer.Option(
    "--cacert", envvar="MODSERV_CACERT", show_envvar=True, help="PEM CA certificate(s) to trust for an https server.")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table for people, json for scripts.")]
ServiceArg = Annotated[str, typer.Argument(help="The service id (as deploy and list show it).")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=0, help="With --wait: give up after this many seconds (0: no limit).")]


@dataclass(frozen=True)
class Conn:
    server: str
    token: str | None
    cacert: Path | None
    output: Output

    @property
    def json(self) -> bool:
        return self.output is Output.json


def conn(server: str, token: str | None, cacert: Path | None, output: Output = Output.table) -> Conn:
    url = server.strip()
    if not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
        raise usage(f"--server must be a URL such as {DEFAULT_SERVER}, not {url!r}")
    if cacert is not None and not cacert.is_file():
        raise usage(f"--cacert {cacert}: no such file")
    return Conn(url, token.strip() if token and token.strip() else None, cacert, output)


def usage(message: str) -> typer.Exit:
    typer.echo(f"{PROG}: {message}", err=True)
    return typer.Exit(2)


def failed(message: str) -> typer.Exit:
    typer.echo(f"{PROG}: {' '.join(message.split())}", err=True)
    return typer.Exit(1)


@contextlib.contextmanager
def session(c: Conn) -> Iterator[ApiClient]:
    """A client for the command; an API error, an unreachable server or Ctrl-C ends the command."""
    try:
        with ApiClient(c.server, c.token, cacert=str(c.cacert) if c.cacert else None) as client:
            yield client
    except ApiError as exc:
        hint = ""
        if exc.status == 401:
            hint = "; give a valid token with --token or MODSERV_TOKEN"
        raise failed(f"{exc}{hint}") from None
    except ClientError as exc:
        raise failed(str(exc)) from None
    except KeyboardInterrupt:
        typer.echo(f"{PROG}: interrupted", err=True)
        raise typer.Exit(130) from None


def emit(c: Conn, data: Any, human: Any = None) -> None:
    """``data`` as JSON with ``--output json``; else ``human`` (a rich renderable or text)."""
    if c.json:
        typer.echo(dumps(data))
    elif human is not None:
        render.console().print(human)


# ------------------------------------------------------------------------------- deploy

def read_spec(path: str) -> dict[str, Any]:
    """A deploy request from a YAML or JSON file (``-``: standard input); any problem is a usage error."""
    name = "standard input" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise usage(f"cannot read the spec file {name}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        raise usage(f"the spec file {name} is not valid {'JSON' if path.endswith('.json') else 'YAML'}"
                    f"{where}") from None
    if not isinstance(data, dict):
        raise usage(f"the spec file {name} must hold a mapping (the deploy request's fields), not"
                    f" {type(data).__name__}")
    return data


def key_values(pairs: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise usage(f"{flag} takes KEY=VALUE, not {pair!r}")
        out[key] = value
    return out


def build_spec(file: str | None, flags: dict[str, Any], resources: dict[str, Any], env: dict[str, str],
               runtime_args: list[str]) -> dict[str, Any]:
    """The file's request with the flags on top (resources and env merged key by key)."""
    spec = read_spec(file) if file else {}
    spec.update({k: v for k, v in flags.items() if v is not None})
    given = {k: v for k, v in resources.items() if v is not None}
    if given:
        base = spec.get("resourceRequirements")
        spec["resourceRequirements"] = {**(base if isinstance(base, dict) else {}), **given}
    if env:
        base = spec.get("env")
        spec["env"] = {**(base if isinstance(base, dict) else {}), **env}
    if runtime_args:
        spec["runtimeArgs"] = runtime_args
    if not spec:
        raise usage("nothing to deploy: give a spec file (-f spec.yaml) or at least --model-name and --model-file")
    return spec


def deploy(
    file: Annotated[str | None, typer.Option(
        "--file", "-f", help="The deploy request as YAML or JSON (- for standard input); flags override it.")] = None,
    model_name: Annotated[str | None, typer.Option("--model-name", "-n", help="modelName.")] = None,
    model_file: Annotated[str | None, typer.Option("--model-file", "-m", help="modelFile (server-side path).")] = None,
    cpu: Annotated[str | None, typer.Option(help="resourceRequirements.cpu, e.g. 2.")] = None,
    memory: Annotated[str | None, typer.Option(help="resourceRequirements.memory, e.g. 2Gi.")] = None,
    accelerator_type: Annotated[str | None, typer.Option(help="resourceRequirements.acceleratorType.")] = None,
    accelerator_count: Annotated[int | None, typer.Option(help="resourceRequirements.acceleratorCount.")] = None,
    replicas: Annotated[int | None, typer.Option(help="replicaCount.")] = None,
    shimlet: Annotated[str | None, typer.Option(help="The environment (default: the server's).")] = None,
    pipeline: Annotated[str | None, typer.Option(help="The deploy flow (default: the server's).")] = None,
    runtime: Annotated[str | None, typer.Option(help="auto, llama.cpp, vllm or sglang.")] = None,
    runtime_arg: Annotated[list[str] | None, typer.Option(
        "--runtime-arg", help="One runtime argument (repeat it); replaces the file's runtimeArgs.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE for the model server (repeat).")
                   ] = None,
    context_length: Annotated[int | None, typer.Option(help="contextLength.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and render only; nothing is deployed.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", "-w", help="Show the lifecycle and each step live; end when the service runs or fails.")] = False,
    timeout: TimeoutOpt = 0,
    idempotency_key: Annotated[str | None, typer.Option(
        help="Makes a retried deploy safe: the same key and body answer with the first deploy's service.")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    cacert: CacertOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Deploy a model (a spec file and/or flags); --wait follows it until it runs, and prints a curl to try it."""
    c = conn(server, token, cacert, output)
    flags = {"modelName": model_name, "modelFile": model_file, "replicaCount": replicas, "shimlet": shimlet,
             "pipeline": pipeline, "runtime": runtime, "contextLength": context_length,
             "dryRun": True if dry_run else None}
    resources = {"cpu": cpu, "memory": memory, "acceleratorType": accelerator_type,
                 "acceleratorCount": accelerator_count}
    spec = build_spec(file, flags, resources, key_values(env or [], "--env"), runtime_arg or [])
    with session(c) as client:
        accepted = client.deploy(spec, idempotency_key)
        if spec.get("dryRun"):
            emit(c, accepted, dry_run_text(accepted))
            return
        sid = str(accepted["serviceId"])
        if not wait:
            emit(c, accepted, f"deploy accepted: {sid} ({accepted.get('state')})\n"
                              f"steps: {' -> '.join(accepted.get('totalSteps') or [])}\n"
                              f"follow it: {PROG} status {sid} --wait")
            return
        final = watch(c, client, sid, list(accepted.get("totalSteps") or []), timeout, Cursor())
        conclude(c, client, final, "deploy")


def dry_run_text(data: dict[str, Any]) -> str:
    lines = [f"dry run of {data.get('serviceId')}: nothing was deployed"]
    lines += ["  " + render.run_text(r) for r in data.get("stepsRun", [])]
    lines += ["  " + render.log_text(x) for x in data.get("logs", [])]
    lines.append("rendered:\n" + dumps(data.get("rendered")))
    return "\n".join(lines)


def watch(c: Conn, client: ApiClient, sid: str, steps: list[str], timeout: float, cursor: Cursor) -> dict[str, Any]:
    """Follow ``sid`` until it settles, drawn live on a terminal, line by line elsewhere, silent with
    ``--output json``; the service as it ended."""
    progress = render.DeployProgress(sid, steps)
    final: dict[str, Any] = {}
    updates = follow(client, sid, until=SETTLED, cursor=cursor, timeout=timeout or None)
    out = render.console()
    try:
        if c.json:
            for update in updates:
                final = _final(update, final)
        elif out.is_terminal:
            with Live(progress, console=out, refresh_per_second=8, transient=False):
                for update in updates:
                    progress.apply(update)
                    final = _final(update, final)
        else:
            for update in updates:
                line = progress.apply(update)
                if line:
                    typer.echo(line)
                final = _final(update, final)
    except FollowTimeout as exc:
        raise failed(f"{exc}; follow it with: {PROG} status {sid} --wait") from None
    except KeyboardInterrupt:
        typer.echo(f"{PROG}: stopped following; {sid} goes on (see: {PROG} status {sid})", err=True)
        raise typer.Exit(130) from None
    return final


def _final(update: Update, final: dict[str, Any]) -> dict[str, Any]:
    return update.service if isinstance(update, Snapshot) else final


def conclude(c: Conn, client: ApiClient, svc: dict[str, Any], what: str) -> None:
    """The end of a wait: the steps, the endpoint and a curl (exit 0), or the reason it failed (exit 1)."""
    sid, state = svc.get("serviceId"), svc.get("state")
    ok = state in ("running", "degraded")
    if c.json:
        typer.echo(dumps(svc))
    else:
        out = render.console()
        pipe = client.pipeline(str(sid))
        out.print(render.steps_table(pipe.get("steps", [])))
        if ok:
            out.print(f"{sid} is {state}" + (f" ({svc['reason']})" if svc.get("reason") else ""), markup=False)
            endpoint = svc.get("endpoint")
            if endpoint:
                out.print(f"endpoint: {render.endpoint_base(endpoint)}/v1", markup=False)
                out.print("try it:\n  " + render.curl_command(endpoint, str(svc.get("modelName"))), markup=False,
                          soft_wrap=True)
    if not ok:
        why = svc.get("reason") or "no reason given"
        if state == "terminated":
            raise failed(f"{what} of {sid} ended: it was deleted ({why})")
        raise failed(f"{what} of {sid} failed: {why}; see {PROG} logs {sid}; retry with {PROG} retry {sid} --wait")


# ------------------------------------------------------------------------------- reads

def list_services(
    state: Annotated[str | None, typer.Option(help="Only services in this state, e.g. running.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many (server default 1000).")] = None,
    offset: Annotated[int | None, typer.Option(min=0, help="Skip this many (paging).")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    cacert: CacertOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """List services, oldest first."""
    c = conn(server, token, cacert, output)
    with session(c) as client:
        services = client.services(state, limit, offset)
        emit(c, services, render.services_table(services) if services else "no services")


def status(
    service_id: ServiceArg,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Follow it live until it runs or fails.")] = False,
    timeout: TimeoutOpt = 0,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    cacert: CacertOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """A service's state, reason, endpoint, replicas and pipeline steps."""
    c = conn(server, token, cacert, output)
    with session(c) as client:
        svc = client.service(service_id)
        if wait:
            final = watch(c, client, service_id, list(svc.get("totalSteps") or []), timeout, Cursor())
            conclude(c, client, final, "deploy")
            return
        pipe = None if c.json else client.pipeline(service_id)
        emit(c, svc, render.service_view(svc, pipe))


def events(
    service_id: ServiceArg,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep showing new ones until it settles.")] = False,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    cacert: CacertOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Every state change of a service, with its reason and operator."""
    c = conn(server, token, cacert, output)
    with session(c) as client:
        if follow_:
            stream(c, client, service_id, lambda u: isinstance(u, StateChange))
            return
        evs = client.events(service_id)
        emit(c, evs, render.events_table(evs))


def logs(
    service_id: ServiceArg,
    runtime: Annotated[bool, typer.Option(
        "--runtime", help="The model server's own output instead of the pipeline's log.")] = False,
    step: Annotated[str | None, typer.Option(help="Pipeline log: only this step.")] = None,
    tail: Annotated[int, typer.Option(min=1, max=10000, help="Runtime log: the last N lines.")] = 100,
    follow_: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing new lines (pipeline: until it settles; runtime: until deleted).")
    ] = False,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    cacert: CacertOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The pipeline's log (every attempt and log line) or, with --runtime, the model server's output."""
    c = conn(server, token, cacert, output)
    with session(c) as client:
        if runtime:
            runtime_logs(c, client, service_id, tail, follow_)
            return
        if follow_:
            stream(c, client, service_id,
                   lambda u: isinstance(u, LogLine | StepUpdate) and (step is None or u.step == step))
            return
        data = client.pipeline_logs(service_id, step, 10000)
        items = [(r.get("finishedAt") or r.get("startedAt") or "", 1, render.run_text(r))
                 for r in data.get("runs", []) if r.get("status") != "running"]
        items += [(x.get("ts", ""), 0, render.log_text(x)) for x in data.get("logs", [])]
        items.sort(key=lambda i: (parse_ts(i[0]), i[1]))
        emit(c, data, "\n".join(text for _, _, text in items) or "no pipeline log lines")


def runtime_logs(c: Conn, client: ApiClient, sid: str, tail: int, follow_: bool) -> None:
    lines = client.runtime_logs(sid, tail)
    if not follow_:
        if c.json:
            typer.echo(dumps({"serviceId": sid, "lines": lines}))
        else:
            for line in lines:
                typer.echo(line)
        return
    printed: list[str] = []
    while True:
        new = new_lines(printed, lines)
        for line in new:
            typer.echo(json.dumps({"line": line}) if c.json else line)
        printed = (printed + new)[-10000:]
        if client.service(sid).get("state") in ("terminating", "terminated"):
            return
        time.sleep(1.0)
        lines = client.runtime_logs(sid, 10000)


def new_lines(seen: list[str], lines: list[str]) -> list[str]:
    """The lines of a fresh tail that come after what was printed: the tail's longest prefix that ends
    what was printed is skipped (no overlap at all: everything is new)."""
    for k in range(min(len(seen), len(lines)), 0, -1):
        if seen[-k:] == lines[:k]:
            return lines[k:]
    return lines


def stream(c: Conn, client: ApiClient, sid: str, keep: Any) -> None:
    """Print the updates ``keep`` accepts, from the start, until the service settles (json: one object a line)."""
    start = parse_ts(client.service(sid).get("createdAt"))
    progress = render.DeployProgress(sid, [], start)
    try:
        for update in follow(client, sid, until=SETTLED, cursor=Cursor()):
            line = progress.apply(update)
            if isinstance(update, Snapshot) or not keep(update):
                continue
            if c.json:
                typer.echo(json.dumps(update_json(update), ensure_ascii=False))
            elif line:
                typer.echo(line)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def update_json(u: Update) -> dict[str, Any]:
    if isinstance(u, StateChange):
        return {"type": "state", "ts": u.ts.isoformat(), "from": u.from_state, "to": u.to, "reason": u.reason,
                "operator": u.operator}
    if isinstance(u, StepUpdate):
        return {"type": "step", "ts": u.ts.isoformat(), "step": u.step, "attempt": u.attempt, "status": u.status,
                "durationMs": u.duration_ms, "error": u.error}
    if isinstance(u, LogLine):
        return {"type": "log", "ts": u.ts.isoformat(), "step": u.step, "attempt": u.attempt, "level": u.level,
                "message": u.message}
    return {"type": "service", **u.service}


# ------------------------------------------------------------------------------- changes

def delete(
    service_id: ServiceArg,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    cacert: CacertOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Cancel the pipeline, remove the workload; the service ends terminated."""
    c = conn(server, token, cacert, output)
    with session(c) as client:
        svc = client.delete(service_id)
        done = svc.get("state") == "terminated"
        emit(c, svc, f"{'deleted' if done else 'deleting'} {service_id} ({svc.get('state')})")


def scale(
    service_id: ServiceArg,
    replicas: Annotated[int, typer.Argument(min=1, max=64, help="The number of replicas wanted.")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    cacert: CacertOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Change the number of replicas (shimlets that can scale)."""
    c = conn(server, token, cacert, output)
    with session(c) as client:
        svc = client.scale(service_id, replicas)
        rep = svc.get("replicas") or {}
        emit(c, svc, f"scaling {service_id} to {replicas} replicas ({rep.get('ready', 0)}/{rep.get('desired', 0)}"
                     f" ready, {svc.get('state')})")


def retry(
    service_id: ServiceArg,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Follow the retry live until it runs or fails.")] = False,
    timeout: TimeoutOpt = 0,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    cacert: CacertOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Run a failed service's pipeline again from the step that failed."""
    c = conn(server, token, cacert, output)
    with session(c) as client:
        cursor = Cursor.now(client, service_id) if wait else None
        accepted = client.retry(service_id)
        if not wait or cursor is None:
            emit(c, accepted, f"retrying {service_id} from {accepted.get('currentStep')} ({accepted.get('state')})")
            return
        final = watch(c, client, service_id, list(accepted.get("totalSteps") or []), timeout, cursor)
        conclude(c, client, final, "retry")


# ------------------------------------------------------------------------------- plugins

plugins_app = typer.Typer(help="List or hot-load shimlets and pipelines.", no_args_is_help=True,
                          rich_markup_mode=None)


@plugins_app.command("list")
def plugins_list(
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    cacert: CacertOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Shimlets (with capabilities), pipelines (with steps) and refused plugins."""
    c = conn(server, token, cacert, output)
    with session(c) as client:
        data = client.plugins()
        emit(c, data, render.plugins_table(data))


@plugins_app.command("load")
def plugins_load(
    kind: Annotated[Kind, typer.Argument(help="shimlet or pipeline.")],
    name: Annotated[str, typer.Argument(help="The name requests and configs use.")],
    attr: Annotated[str, typer.Option(help="The factory: a class or function.")],
    file: Annotated[str | None, typer.Option(help="A .py file inside the server's plugin directory.")] = None,
    module: Annotated[str | None, typer.Option(help="An importable module inside an allowed package.")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    cacert: CacertOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Hot-load a plugin into the running server (admin role)."""
    c = conn(server, token, cacert, output)
    if (file is None) == (module is None):
        raise usage("plugins load takes --file or --module (one of them)")
    with session(c) as client:
        data = client.load_plugin({"kind": kind.value, "name": name, "file": file, "module": module, "attr": attr})
        details = data.get("capabilities") or [s.get("name") for s in data.get("steps") or []]
        emit(c, data, f"{kind.value} {name!r} loaded from {data.get('source')}"
                      + (f": {', '.join(map(str, details))}" if details else ""))


def register(app: typer.Typer) -> None:
    """Add the client commands to ``model-serve-shim``."""
    for fn, name in ((deploy, "deploy"), (status, "status"), (list_services, "list"), (logs, "logs"),
                     (events, "events"), (delete, "delete"), (scale, "scale"), (retry, "retry")):
        app.command(name)(fn)
    app.add_typer(plugins_app, name="plugins")
