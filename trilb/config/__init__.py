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
from .routes import (
    CookieMatch,
    HeaderMatch,
    HeaderRule,
    Match,
    QueryMatch,
    RedirectRule,
    Route,
)
from .values import Address, parse_duration, parse_size

__all__ = [
    "Address",
    "BackendConfig",
    "Config",
    "CookieConfig",
    "CookieMatch",
    "FrontendConfig",
    "GlobalConfig",
    "HeaderMatch",
    "HeaderRule",
    "HealthCheck",
    "Limits",
    "LogConfig",
    "Match",
    "QueryMatch",
    "RedirectHTTPS",
    "RedirectRule",
    "Route",
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
