"""trilb: a load balancer and reverse proxy in the spirit of HAProxy, built on Trio.

Embed it in a Trio program::

    lb = await nursery.start(trilb.serve, trilb.load_config("trilb.toml"))
    print(lb.addresses, lb.statistics())
    await lb.drain()
"""

from ._version import __version__
from .balancer import Balancer, open_balancer, serve
from .config import (
    Address,
    AdminConfig,
    BackendConfig,
    Config,
    CookieConfig,
    CookieMatch,
    FrontendConfig,
    GlobalConfig,
    HeaderMatch,
    HeaderRule,
    HealthCheck,
    Limits,
    LogConfig,
    Match,
    QueryMatch,
    RateLimit,
    RedirectHTTPS,
    RedirectRule,
    Route,
    ServerConfig,
    StatsConfig,
    StickTableConfig,
    Timeouts,
    TLSConfig,
    UpstreamTLS,
    load_config,
    loads_config,
)
from .errors import ConfigError, ConfigProblem, StartupError, TrilbError
from .logsink import LogSink
from .stats import (
    BackendStatistics,
    FrontendStatistics,
    ServerStatistics,
    Statistics,
    TrafficStatistics,
)

__all__ = [
    "Address",
    "AdminConfig",
    "BackendConfig",
    "BackendStatistics",
    "Balancer",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "CookieConfig",
    "CookieMatch",
    "FrontendConfig",
    "FrontendStatistics",
    "GlobalConfig",
    "HeaderMatch",
    "HeaderRule",
    "HealthCheck",
    "Limits",
    "LogConfig",
    "LogSink",
    "Match",
    "QueryMatch",
    "RateLimit",
    "RedirectHTTPS",
    "RedirectRule",
    "Route",
    "ServerConfig",
    "ServerStatistics",
    "StartupError",
    "Statistics",
    "StatsConfig",
    "StickTableConfig",
    "TLSConfig",
    "Timeouts",
    "TrafficStatistics",
    "TrilbError",
    "UpstreamTLS",
    "__version__",
    "load_config",
    "loads_config",
    "open_balancer",
    "serve",
]
