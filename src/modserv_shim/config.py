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

Nested values can come from the environment with ``__`` between levels, e.g.
``MODSERV_PIPELINES__OPENSOURCELLM__STEPS__HEALTH_CHECK__TIMEOUT`` is awkward, so
prefer the file for those; flat ones such as ``MODSERV_PORT`` are the common case.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource


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

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> Settings:
        """Build settings from a YAML file, the environment and explicit flags (None = not given)."""
        if config_file is not None and not config_file.is_file():
            raise FileNotFoundError(f"config file not found: {config_file}")
        given = {k: v for k, v in flags.items() if v is not None}
        config = SettingsConfigDict(**{**cls.model_config, "yaml_file": config_file})
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
