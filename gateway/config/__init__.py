"""The gateway's configuration: one TOML file, parsed once into frozen, typed objects.

- `model`: the typed result (`Config` and its parts), what the rest of the gateway reads;
- `checker`: the validation engine, which names file, key and problem for every error;
- `parse`: the file and its sections; `sources` and `store` parse their own tables (a
  source's scheme-specific keys are the scheme's, asked of `gateway.schemes`);
- `plugin_secrets`: guessing which plugin options are secrets written in the file.

IP allowlists are matched by `gateway.ipnet`.
"""

from __future__ import annotations

from gateway.config.model import (
    DEFAULT_MAX_BODY,
    DEFAULT_TOLERANCE,
    MAX_WORKERS,
    PLUGIN_NAME,
    SCOPES,
    SOURCE_NAME,
    ApiConfig,
    ClientConfig,
    Config,
    ConfigError,
    MetricsConfig,
    PluginConfig,
    ServerConfig,
    SourceConfig,
)
from gateway.config.parse import load_config, parse_config, permission_warning
from gateway.config.store import StoreConfig, Synchronous
from gateway.ipnet import IPNetwork, ip_allowed

__all__ = [
    "DEFAULT_MAX_BODY", "DEFAULT_TOLERANCE", "MAX_WORKERS", "PLUGIN_NAME", "SCOPES", "SOURCE_NAME", "ApiConfig",
    "ClientConfig", "Config", "ConfigError", "IPNetwork", "MetricsConfig", "PluginConfig", "ServerConfig",
    "SourceConfig", "StoreConfig", "Synchronous", "ip_allowed", "load_config", "parse_config", "permission_warning",
]
