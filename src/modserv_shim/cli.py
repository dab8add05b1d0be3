"""``model-serve-shim``: start the server (the brief's flags), print the version, write a plugin project,
or use a server as a client (:mod:`modserv_shim.client.cli`: deploy, status, list, logs, events, delete,
scale, retry, plugins).

    model-serve-shim --port=8080 --shimlet=k8s --pipeline=opensourcellm
    model-serve-shim --version
    model-serve-shim --host=0.0.0.0 --tokens-file=tokens.yaml --tls-certfile=cert.pem --tls-keyfile=key.pem
    model-serve-shim new-plugin shimlet docker [--dir DIR] [--package PKG]
    model-serve-shim new-plugin pipeline quantllm [--extends opensourcellm]

Without a command the server starts (the options above are the server's); ``new-plugin``
writes the skeleton of a plugin project (:mod:`modserv_shim.scaffold`); the client commands take
their own options after the command (``model-serve-shim status ID --server URL``).
``--install-completion`` / ``--show-completion`` set up shell completion.

Precedence: flags > ``MODSERV_*`` environment > ``--config`` YAML file > defaults.

A configuration the server cannot start with (a config or tokens file that is missing,
unreadable, not YAML or of the wrong shape; a bad value; an unknown shimlet or pipeline;
a token listed twice; only one of ``--tls-certfile``/``--tls-keyfile``, or a certificate
and key that cannot be loaded together; a non-loopback address without API tokens)
prints one line ``model-serve-shim: ...`` on stderr and exits with status 2.  With a
certificate and key the API is served over HTTPS only.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from modserv_shim import __version__
from modserv_shim.client.cli import register as register_client
from modserv_shim.config import Settings
from modserv_shim.errors import ShimError
from modserv_shim.server.auth import TokenTable, is_loopback

if TYPE_CHECKING:
    from modserv_shim.core.registry import Registry

app = typer.Typer(add_completion=True, rich_markup_mode=None,  # [default: ...] in a help text is text
                  help="ModelServeShim: deploy open-source LLMs as OpenAI-compatible services.")


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=2, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def version_text() -> str:
    return f"ModelServeShim v{__version__} (commit: {commit()})"


def _version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


def fail(message: str) -> typer.Exit:
    typer.echo(f"model-serve-shim: {' '.join(message.split())}", err=True)
    return typer.Exit(2)


def describe(exc: ValidationError) -> str:
    """pydantic's errors on one line, without the offending values (they may be secrets)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(part) for part in error["loc"])
        msg = error["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def listen_url(host: str, port: int, *, tls: bool = False) -> str:
    """The base URL of the API: an IPv6 address goes in brackets (``http://[::1]:8080``)."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        h = "[" + h.replace("%", "%25") + "]"
    return f"{'https' if tls else 'http'}://{h}:{port}"


@app.callback(invoke_without_command=True)
def main_command(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8080].")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [default: 127.0.0.1].")] = None,
    shimlet: Annotated[str | None, typer.Option(help="Default environment plugin [default: local].")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Default deploy flow [default: opensourcellm].")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the database, logs and plugins live.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file.")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in the data dir).")] = None,
    tokens_file: Annotated[Path | None, typer.Option(help="YAML file of API tokens.")] = None,
    plugin_dir: Annotated[Path | None, typer.Option(help="Directory plugin files may be loaded from.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    log_format: Annotated[str | None, typer.Option(help="console or json.")] = None,
    tls_certfile: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain): serve the API over HTTPS. Needs --tls-keyfile.")
    ] = None,
    tls_keyfile: Annotated[
        Path | None, typer.Option(help="PEM private key of --tls-certfile (unencrypted).")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Start the ModelServeShim server (without a command), or run a command."""
    flags = {"port": port, "host": host, "shimlet": shimlet, "pipeline": pipeline, "data_dir": data_dir,
             "database_url": database_url, "tokens_file": tokens_file, "plugin_dir": plugin_dir,
             "log_level": log_level, "log_format": log_format, "tls_certfile": tls_certfile,
             "tls_keyfile": tls_keyfile}
    if ctx.invoked_subcommand is not None:
        given = [f"--{key.replace('_', '-')}" for key, value in {"config": config, **flags}.items()
                 if value is not None]
        if given:
            raise fail(f"{', '.join(given)}: server options go without a command (not with {ctx.invoked_subcommand})")
        return
    run_server(config, flags)


def run_server(config: Path | None, flags: Mapping[str, object]) -> None:
    """Load the settings, check everything a start needs (each failure: one line, exit 2), then serve."""
    from modserv_shim import logs
    from modserv_shim.server.runner import build, serve

    settings = _settings(config, flags)
    logs.configure(settings.log_level, settings.log_format)
    registry = _registry(settings)
    tls = _check_access(settings)
    try:
        server = build(settings, registry)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise fail(f"cannot prepare the server's directories:{where}: {exc.strerror or exc}") from None
    typer.echo(f"{version_text()} listening on {listen_url(settings.host, settings.port, tls=tls)}"
               f" (shimlet={settings.shimlet}, pipeline={settings.pipeline}, data={settings.data_dir})", err=True)
    serve(server)


def _settings(config: Path | None, flags: Mapping[str, object]) -> Settings:
    try:
        return Settings.load(config, **flags)
    except ValidationError as exc:
        raise fail(f"bad configuration: {describe(exc)}") from None
    except (ValueError, OSError) as exc:  # ConfigFileError, pydantic-settings' SettingsError
        raise fail(f"bad configuration: {exc}") from None


def _registry(settings: Settings) -> Registry:
    from modserv_shim.server.runner import build_registry

    try:
        registry = build_registry(settings)
    except ShimError as exc:  # an allowed_env entry that is not a variable name, a step override naming no step
        raise fail(f"bad configuration: {exc}") from None
    for kind, name in (("shimlet", settings.shimlet), ("pipeline", settings.pipeline)):
        if not registry.has(kind, name):  # type: ignore[arg-type]
            available = ", ".join(registry.names(kind))  # type: ignore[arg-type]
            raise fail(f"unknown {kind} {name!r}; available: {available}")
    return registry


def _check_access(settings: Settings) -> bool:
    """API tokens (required off loopback) and TLS files; True when the API is served over HTTPS."""
    from modserv_shim.server.runner import TLSConfigError, check_tls

    try:
        tokens = TokenTable.load(settings.tokens_file, settings.tokens)
    except (ShimError, ValueError, OSError) as exc:
        raise fail(f"cannot read API tokens: {exc}") from None
    if len(tokens) == 0 and not is_loopback(settings.host):
        raise fail(
            f"refusing to listen on {settings.host} without API tokens: configure --tokens-file or"
            " MODSERV_TOKENS, or listen on 127.0.0.1"
        )
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        return False
    try:
        check_tls(settings.tls_certfile, settings.tls_keyfile)
    except TLSConfigError as exc:
        raise fail(str(exc)) from None
    return True


class PluginKind(StrEnum):
    shimlet = "shimlet"
    pipeline = "pipeline"


@app.command("new-plugin")
def new_plugin(
    kind: Annotated[PluginKind, typer.Argument(help="shimlet (an environment) or pipeline (a deploy flow).")],
    name: Annotated[str, typer.Argument(help="The plugin's name, as configs and requests name it (e.g. docker).")],
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where to write the project; new or empty [default: ./NAME].")
    ] = None,
    package: Annotated[
        str | None, typer.Option(help="Python package name [default: NAME_shimlet or NAME_pipeline].")
    ] = None,
    extends: Annotated[
        str | None, typer.Option(help="Pipelines: extend this built-in pipeline (opensourcellm) with one more step.")
    ] = None,
) -> None:
    """Write the skeleton of a plugin project: package, entry point, contract tests, docs page."""
    from modserv_shim.scaffold import ScaffoldError, generate, names_for, report

    target = directory if directory is not None else Path.cwd() / name
    try:
        names = names_for(kind.value, name, package, extends)
        written = generate(names.kind, name, target, package=names.package, extends=extends)
    except ScaffoldError as exc:
        raise fail(str(exc)) from None
    typer.echo(report(names, target, written))


register_client(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
