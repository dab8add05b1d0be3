"""Server settings: defaults < YAML config file < ``MODSERV_*`` environment < command-line flags.

Example ``modserv.yaml``::

    port: 8080
    shimlet: local
    pipeline: opensourcellm
    data_dir: /var/lib/modserv-shim
    tokens_file: /etc/modserv-shim/tokens.yaml
    allowed_plugin_modules: [acme_plugins]
    shimlets:
      local: {restart_backoff_max: 30}
    pipelines:
      opensourcellm:
        steps:
          health-check: {timeout: 1800}
          model-validation: {retry: {attempts: 2}}

Flat values come from the environment (``MODSERV_PORT``, ``MODSERV_DATA_DIR``); lists and
maps as JSON (``MODSERV_ALLOWED_ENV='["HF_TOKEN", "ACME_*"]'``).  Nested values use ``__``
between levels.  In step names ``_`` stands for ``-`` (no variable name can hold ``-``), so
``MODSERV_PIPELINES__OPENSOURCELLM__STEPS__HEALTH_CHECK__TIMEOUT=1800`` sets the timeout of
the step ``health-check``.  A step override that names no step of its pipeline is refused
when the pipeline is built, naming the step and the pipeline's steps.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource


class ConfigFileError(ValueError):
    """A YAML configuration file (``--config``, ``--tokens-file``) that cannot be used; the message names it."""


def read_config_file(path: Path, what: str) -> bytes:
    """The bytes of a file the configuration names (``what``: "config file", "TLS certificate file"),
    or a one-line :class:`ConfigFileError` saying why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigFileError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigFileError(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is an empty mapping), or a one-line
    :class:`ConfigFileError` naming the file, and the line and column of a YAML syntax error.
    Messages never quote the file's content (a tokens file holds secrets)."""
    try:
        text = read_config_file(path, what).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{what} {path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = "; ".join(p for p in (exc.context, exc.problem) if p) or "syntax error"
        raise ConfigFileError(f"{what} {path}{at}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{what} {path}: invalid YAML: {type(exc).__name__}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a single {type(data).__name__} value"
        raise ConfigFileError(f"{what} {path} must be a YAML mapping (key: value lines), not {kind}")
    return data


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "modserv-shim"


class RetryOverride(BaseModel):
    attempts: int | None = Field(default=None, ge=1, le=100)
    backoff: float | None = Field(default=None, ge=0)
    multiplier: float | None = Field(default=None, ge=1)
    max_delay: float | None = Field(default=None, ge=0)


class StepSettings(BaseModel):
    timeout: float | None = Field(default=None, gt=0)
    retry: RetryOverride | None = None


class PipelineSettings(BaseModel):
    steps: dict[str, StepSettings] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("steps")
    @classmethod
    def _dashes(cls, steps: dict[str, StepSettings]) -> dict[str, StepSettings]:
        """Step names with ``-``: ``health_check`` (all an environment variable can say) is ``health-check``.

        When both spellings are given (the file says ``health-check``, the environment ``HEALTH_CHECK``),
        the ``_`` spelling's fields win, as the environment wins over the file."""
        out: dict[str, StepSettings] = {}
        for name in sorted(steps, key=lambda n: "_" in n):  # the "-" spellings first
            key, value = name.replace("_", "-"), steps[name]
            if key in out:
                given = value.model_dump(exclude_unset=True)
                value = out[key].model_copy(update={k: getattr(value, k) for k in given})
            out[key] = value
        return out


class SourceSecret(BaseModel):
    """One entry of ``secrets``: how the shim reaches a private model source (``modelSource.secret`` names it).

    The token is held as a ``SecretStr`` (shown as ``**********``) and reaches only the fetch's
    ``Authorization`` header."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr | None = Field(default=None, description="bearer token sent to the source")
    token_file: Path | None = Field(default=None, description="a file holding the bearer token (read at each"
                                    " fetch, so it can be rotated without a restart)")
    ca_file: Path | None = Field(default=None, description="PEM CA certificate(s) to trust for this source"
                                 " (instead of the system's)")
    public_key_file: Path | None = Field(default=None, description="PEM Ed25519 public key that signs the"
                                         " source's manifest.json (manifest.json.sig next to it)")
    groups: list[str] = Field(default_factory=list, max_length=100,
                              description="groups (of the tokens file) whose operators may deploy models through"
                              " this secret; none: admins only")

    @model_validator(mode="after")
    def _one_token(self) -> SourceSecret:
        if self.token is not None and self.token_file is not None:
            raise ValueError("a secret takes token or token_file, not both")
        return self

    def plain(self) -> dict[str, str | list[str] | None]:
        """The form handed to plugins (``PluginContext.server_settings["secrets"]``): strings, token revealed."""
        return {"token": self.token.get_secret_value() if self.token is not None else None,
                "token_file": None if self.token_file is None else str(self.token_file),
                "ca_file": None if self.ca_file is None else str(self.ca_file),
                "public_key_file": None if self.public_key_file is None else str(self.public_key_file),
                "groups": list(self.groups)}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODSERV_", env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    shimlet: str = "local"
    pipeline: str = "opensourcellm"
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    tokens_file: Path | None = None
    tokens: str | None = Field(default=None, description="name:role:token[,name:role:token...]")
    plugin_dir: Path | None = None
    allowed_plugin_modules: list[str] = Field(default_factory=list)
    shimlets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    pipelines: dict[str, PipelineSettings] = Field(default_factory=dict)
    poll_interval: float = Field(default=2.0, gt=0)
    capacity_interval: float = Field(default=30.0, gt=0)  # seconds between capacity readings (metrics)
    delete_wait: float = Field(default=30.0, ge=0)
    log_level: str = "info"
    log_format: str = Field(default="console", pattern="^(console|json)$")
    # --- what a request may put into a process, container or manifest (docs/SECURITY.md)
    allowed_env: list[str] = Field(
        default_factory=list,
        description="Extra environment variables a deploy may set, beyond those its runtime is known to need:"
        " exact names (HF_HUB_OFFLINE) or prefixes ending in '*' (ACME_*).",
    )
    allowed_runtime_args: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Extra runtime flags a deploy may pass, per runtime name (llama.cpp, vllm, sglang).",
    )
    model_roots: list[Path] = Field(
        default_factory=list,
        description="Folders modelFile must lie under; empty: any absolute path.",
    )
    max_body_bytes: int = Field(default=65536, ge=1024, le=64 * 1024 * 1024,
                                description="Largest request body accepted (bytes).")
    # --- private model sources (modelSource.secret names one; docs/pipelines.md#privatellm)
    secrets: dict[str, SourceSecret] = Field(
        default_factory=dict,
        description="Named credentials of model sources: token or token_file, ca_file, public_key_file.")
    # --- TLS for the API: both or neither
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @field_validator("host")
    @classmethod
    def _unbracket_host(cls, value: str) -> str:
        """``[::1]`` (the URL form of an IPv6 address) is the address ``::1``."""
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        return value

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, secrets: dict[str, SourceSecret]) -> dict[str, SourceSecret]:
        for name in secrets:
            if not re.match(r"^[a-z][a-z0-9_.-]{0,62}$", name):
                raise ValueError(f"secret name {name!r} must be a lower-case letter, then up to 62 lower-case"
                                 " letters, digits, '_', '.' or '-'")
        return secrets

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            given, missing = ("certfile", "keyfile") if self.tls_keyfile is None else ("keyfile", "certfile")
            raise ValueError(f"tls_{given} is set but tls_{missing} is not: TLS needs both a certificate"
                             " (--tls-certfile) and its private key (--tls-keyfile), or neither")
        return self

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> Settings:
        """Build settings from a YAML file, the environment and explicit flags (None = not given).

        A config file that is missing, unreadable, not YAML or not a mapping raises
        :class:`ConfigFileError` (a ``ValueError``); bad values raise pydantic's ``ValidationError``."""
        config = SettingsConfigDict(**{**cls.model_config, "yaml_file": config_file})
        if config_file is not None:
            read_yaml_mapping(config_file, "config file")  # clear errors before pydantic-settings reads it
            config["yaml_file_encoding"] = "utf-8"
        given = {k: v for k, v in flags.items() if v is not None}
        bound = type("Settings", (cls,), {"model_config": config})
        settings: Settings = bound(**given)
        return settings

    @property
    def resolved_plugin_dir(self) -> Path:
        return self.plugin_dir or self.data_dir / "plugins"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir.resolve() / 'modserv.db'}"
