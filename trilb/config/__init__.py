"""trilb's configuration: the frozen model and the TOML loader that builds it."""

from .loader import load_config, loads_config, parse_config
from .model import (
    BackendConfig,
    Config,
    CookieConfig,
    FrontendConfig,
    GlobalConfig,
    HealthCheck,
    Limits,
    LogConfig,
    RedirectHTTPS,
    ServerConfig,
    StickTableConfig,
    Timeouts,
    TLSConfig,
    UpstreamTLS,
)
from .values import Address, parse_duration, parse_size

__all__ = [
    "Address",
    "BackendConfig",
    "Config",
    "CookieConfig",
    "FrontendConfig",
    "GlobalConfig",
    "HealthCheck",
    "Limits",
    "LogConfig",
    "RedirectHTTPS",
    "ServerConfig",
    "StickTableConfig",
    "TLSConfig",
    "Timeouts",
    "UpstreamTLS",
    "load_config",
    "loads_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]
