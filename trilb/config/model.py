"""The configuration model: frozen, keyword-only attrs classes.

A :class:`Config` is a plain value. The TOML loader (:mod:`trilb.config.loader`) builds one from a
file; Python users build the same objects in code. Either way the cross-references are checked when
the :class:`Config` is created, so a ``Config`` that exists is one trilb can run.

Durations are float seconds here; the TOML strings ("250ms", "5s") are parsed by the loader.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Literal

import attrs

from ..errors import ConfigError, ConfigProblem
from .limits import RateLimit, rate_limit_problems
from .routes import HeaderRule, Match, Route, routes_tuple, rules_tuple
from .values import Address, parse_binds

__all__ = [
    "INTERMEDIATE_CIPHERS",
    "AdminConfig",
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
    "StatsConfig",
    "StickTableConfig",
    "TLSConfig",
    "Timeouts",
    "UpstreamTLS",
    "reference_problems",
]

#: "url_param:NAME" and "header:NAME" take a name after the colon
Balance = str
BALANCE_ALGORITHMS: tuple[str, ...] = (
    "roundrobin",
    "static-rr",
    "leastconn",
    "first",
    "source",
    "uri",
    "random",
)
BALANCE_WITH_NAME = ("url_param:", "header:")
HashType = Literal["map-based", "consistent"]
HASH_TYPES: tuple[HashType, ...] = ("map-based", "consistent")
#: "stdout" | "stderr" | "none" | "file:PATH" | "syslog:HOST:PORT" | "syslog:unix:PATH"
LogTarget = str
LOG_TARGETS: tuple[str, ...] = ("stdout", "stderr", "none")
SYSLOG_FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
    "local7",
)  # fmt: skip
LogFormat = Literal["haproxy", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("haproxy", "json")
Mode = Literal["http", "tcp"]
MODES: tuple[Mode, ...] = ("http", "tcp")
ProxyVersion = Literal["v1", "v2"]
PROXY_VERSIONS: tuple[ProxyVersion, ...] = ("v1", "v2")
#: balancing algorithms that look into HTTP requests: not for TCP mode
HTTP_ONLY_BALANCE = ("uri", "url_param:", "header:")
#: what a TCP-mode route may match on: no HTTP request to look into
TCP_MATCHERS = ("sni", "src")


@attrs.frozen(kw_only=True)
class Timeouts:
    """Every wait trilb does is bounded by one of these (seconds)."""

    #: establishing a TCP connection to a server
    connect: float = 5.0
    #: client inactivity: a read from or write to the client that makes no progress for this long
    client: float = 30.0
    #: server inactivity, likewise; also how long a server may take to start its response (then 504)
    server: float = 30.0
    #: the whole request head must arrive within this (slowloris protection; then 408)
    http_request: float = 10.0
    #: idle time allowed between two requests on a client connection
    keep_alive: float = 5.0
    #: idle time on an upgraded (WebSocket) or TCP tunnel once established (HAProxy's ``timeout
    #: tunnel``). None: not set, so a WebSocket gets :data:`DEFAULT_TUNNEL_TIMEOUT` and a TCP-mode
    #: connection keeps ``client`` / ``server`` as its idle timeouts, as in HAProxy
    tunnel: float | None = None
    #: how long an idle pooled server connection is kept for reuse
    pool_idle: float = 30.0
    #: a TLS handshake must complete within this (HAProxy's ``timeout client-hs``)
    handshake: float = 10.0
    #: a request may wait this long in a backend's queue for a server slot (then 503)
    queue: float = 5.0
    #: how long a ``rate_limit`` with ``action = "tarpit"`` holds a request over the limit before
    #: answering it. HAProxy's ``timeout tarpit`` falls back to ``timeout connect``; trilb's is
    #: its own, 5s (the default ``connect``): long enough to slow a script down to a crawl, short
    #: enough that a held connection costs little
    tarpit: float = 5.0

    def tunnel_or(self, fallback: float) -> float:
        """The idle timeout of an established tunnel: ``tunnel`` if set, else ``fallback``."""
        return fallback if self.tunnel is None else self.tunnel


#: a WebSocket's idle timeout when ``timeout_tunnel`` is not set
DEFAULT_TUNNEL_TIMEOUT = 3600.0


@attrs.frozen(kw_only=True)
class Limits:
    """Bounds on what a client may send; beyond them it gets the matching 4xx.

    The header-size default (32 KiB for the whole head) is twice h11's 16 KiB and above what real
    browsers send with large cookie jars; nginx allows 4 x 8 KiB lines, HAProxy a 16 KiB buffer.
    """

    max_header_size: int = 32 * 1024  # 431 beyond it
    max_uri_length: int = 8 * 1024  # 414 beyond it
    max_headers: int = 100  # 431 beyond it (HAProxy: tune.http.maxhdr = 101)
    #: 413 beyond it; None = unlimited (streamed, never buffered)
    max_request_body: int | None = None


#: Mozilla's "intermediate" TLS 1.2 cipher list (forward secret AEAD only); TLS 1.3 suites are
#: OpenSSL's defaults, which are all AEAD and forward secret (the stdlib cannot change them)
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)
TLSVersion = Literal["1.2", "1.3"]
TLS_VERSIONS: tuple[TLSVersion, ...] = ("1.2", "1.3")
VerifyClient = Literal["none", "optional", "required"]
VERIFY_CLIENT: tuple[VerifyClient, ...] = ("none", "optional", "required")
ALPN_PROTOCOLS = ("http/1.1",)


def _strings(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen(kw_only=True)
class TLSConfig:
    """TLS termination on a frontend."""

    #: PEM files (certificate chain and key, or a chain with a ``.key`` file beside it) and
    #: directories of them; SNI picks the best match, the first certificate is the default
    certificates: tuple[str, ...] = attrs.field(converter=_strings)
    alpn: tuple[str, ...] = attrs.field(default=("http/1.1",), converter=_strings)
    min_version: TLSVersion = "1.2"
    max_version: TLSVersion = "1.3"
    ciphers: str = INTERMEDIATE_CIPHERS
    #: CA certificates that client certificates are verified against
    client_ca: str | None = None
    verify_client: VerifyClient = "none"
    #: request header that carries a verified client certificate's subject to the servers
    client_cert_header: str = "X-Client-Cert-Subject"


@attrs.frozen(kw_only=True)
class RedirectHTTPS:
    """``redirect_https``: answer every request with a redirect to the same URL over HTTPS."""

    #: the HTTPS port; None = the port of the configuration's only TLS frontend (left out of
    #: the URL when it is 443)
    port: int | None = None
    #: None = 301 for GET and HEAD, 308 for other methods (which must stay what they are)
    code: int | None = None


REDIRECT_CODES = (301, 302, 303, 307, 308)


@attrs.frozen(kw_only=True)
class GlobalConfig:
    workers: int = 1
    #: concurrent client connections across all frontends; beyond it they wait in the kernel backlog
    max_connections: int = 20000
    pidfile: str | None = None
    #: after SIGTERM/SIGINT (``trilb serve``) or ``lb.drain()``, how long requests in flight and
    #: open tunnels may take to finish before they are cut: long enough for a slow download or
    #: upload to end, short enough for a deploy not to wait on one stuck client
    timeout_drain: float = 30.0
    #: ``trilb serve`` started as root becomes this user (a name or a uid) and group once every
    #: listener is bound; the group defaults to the user's
    user: str | int | None = None
    group: str | int | None = None


@attrs.frozen(kw_only=True)
class LogConfig:
    target: LogTarget = "stdout"
    format: LogFormat = "haproxy"
    #: a custom access-log line with %-variables (%ci %cp %ST %Ta %r ...); overrides format
    template: str | None = None
    #: the syslog facility (syslog targets)
    facility: str = "local0"
    #: lines waiting to be written at most; beyond, lines are dropped (and counted), never
    #: blocking the proxy
    queue: int = 10_000


@attrs.frozen(kw_only=True)
class StatsConfig:
    """``[stats]``: the dashboard (HTML at /), /stats.json and /metrics."""

    bind: tuple[Address, ...] = attrs.field(converter=parse_binds)
    #: HTTP basic authentication (user, password); None: open (bind it to a private address)
    auth: tuple[str, str] | None = None
    tls: TLSConfig | None = None
    #: the dashboard reloads itself this often
    refresh: float = 5.0


@attrs.frozen(kw_only=True)
class AdminConfig:
    """``[admin]``: the runtime API on a unix socket (``trilb ctl``)."""

    socket: str
    #: file mode of the socket: who may administer the balancer
    mode: int = 0o600


# Converters are named functions: mypy's attrs plugin cannot type a classmethod or a bare `tuple`
# converter, which would make `ServerConfig(address="...")` / `servers=[...]` fail `mypy --strict`.
def _server_address(value: str | Address) -> Address:
    return Address.for_server(value)


CookieMode = Literal["insert", "rewrite", "prefix"]
COOKIE_MODES: tuple[CookieMode, ...] = ("insert", "rewrite", "prefix")


@attrs.frozen(kw_only=True)
class CookieConfig:
    """Cookie stickiness (``backends.NAME.cookie``); see :mod:`trilb.core.sticky`."""

    name: str
    mode: CookieMode = "insert"
    #: responses that set the cookie become private to the client (no shared caching)
    nocache: bool = False
    httponly: bool = False
    secure: bool = False
    #: seconds; None: a session cookie
    max_age: int | None = None
    domain: str | None = None


@attrs.frozen(kw_only=True)
class StickTableConfig:
    """The table behind ``stick = "source"``: entries at most, and how long one lasts unused."""

    size: int = 100_000
    expire: float = 1800.0


HealthCheckType = Literal["tcp", "http", "tls", "send_expect", "redis", "mysql", "smtp"]
HEALTH_CHECK_TYPES: tuple[HealthCheckType, ...] = (
    "tcp",
    "http",
    "tls",
    "send_expect",
    "redis",
    "mysql",
    "smtp",
)


@attrs.frozen(kw_only=True)
class HealthCheck:
    """Active health checks of a backend's servers (HAProxy's ``check``, ``option httpchk``,
    ``tcp-check``, ``option redis-check`` / ``mysql-check`` / ``smtpchk``)."""

    type: HealthCheckType = "tcp"
    #: between checks while the server's state is settled
    interval: float = 2.0
    #: between checks while it is changing (some failures while UP, some successes while DOWN)
    fast_interval: float | None = None  # None: interval
    #: between checks while the server is DOWN
    down_interval: float | None = None  # None: interval
    #: one check may take this long
    timeout: float = 1.0
    #: consecutive failures that take an UP server DOWN, successes that bring it back
    fall: int = 3
    rise: int = 2
    #: check another port or address than the one traffic goes to
    port: int | None = None
    address: str | None = None
    # type = "http":
    method: str = "GET"
    path: str = "/"
    #: the Host header of the check; None: the server's address
    host: str | None = None
    #: acceptable status codes as inclusive ranges, e.g. ((200, 399),)
    expect_status: tuple[tuple[int, int], ...] = ((200, 399),)
    #: the body must contain this substring / match this regular expression
    expect_body: str | None = None
    expect_body_regex: str | None = None
    # type = "send_expect" (HAProxy's ``tcp-check send`` / ``expect``):
    #: sent once connected; None: send nothing (the server speaks first)
    send: bytes | None = None
    #: the answer must contain these bytes / match this regular expression (its UTF-8 encoding,
    #: matched against the answer's bytes); at least one of them is needed
    expect: bytes | None = None
    expect_regex: str | None = None
    # type = "mysql" (HAProxy's ``option mysql-check [user NAME [post-41]]``):
    #: log in as this password-less user; None: the server's greeting alone passes
    user: str | None = None
    #: log in with the protocol 4.1 packet (every server since MySQL 4.1); False: the older one
    post_41: bool = True
    # type = "smtp" (HAProxy's ``option smtpchk EHLO DOMAIN``):
    #: the name the check introduces itself with: ``EHLO DOMAIN``
    domain: str = "localhost"


@attrs.frozen(kw_only=True)
class UpstreamTLS:
    """TLS to a server (re-encryption)."""

    #: check the server's certificate (against ``ca``, else the system's trust store) and name
    verify: bool = True
    ca: str | None = None
    #: the server name sent (SNI) and verified; None = the host of the server's address
    sni: str | None = None


@attrs.frozen(kw_only=True)
class ServerConfig:
    name: str
    address: Address = attrs.field(converter=_server_address)
    #: share of new traffic relative to the other servers; 0 = no new traffic
    weight: int = 100
    tls: UpstreamTLS | None = None
    #: gets traffic only when no regular server is usable
    backup: bool = False
    #: requests in flight at most; more wait in the backend's queue (None: no limit)
    max_connections: int | None = None
    #: the server's id in stickiness cookies (None: an opaque hash of backend and server names)
    cookie_value: str | None = None
    #: after it comes back (UP again, or ready after maint), its weight ramps up over this long
    slow_start: float | None = None
    #: send a PROXY protocol header ("v1" text, "v2" binary) first on every connection to it, so
    #: the server learns the client's address (HAProxy's ``send-proxy`` / ``send-proxy-v2``)
    send_proxy: ProxyVersion | None = None


def _servers(value: Iterable[ServerConfig]) -> tuple[ServerConfig, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class BackendConfig:
    name: str
    servers: tuple[ServerConfig, ...] = attrs.field(converter=_servers)
    mode: Mode = "http"
    balance: Balance = "roundrobin"
    #: how hashing algorithms map keys to servers: "consistent" moves few keys when a server
    #: comes or goes, "map-based" spreads them exactly by weight
    hash_type: HashType = "map-based"
    #: ``balance = "uri"`` hashes the query too
    uri_whole: bool = False
    timeouts: Timeouts = Timeouts()
    #: extra connection attempts after a failed one; each goes to another server when there is one
    retries: int = 2
    #: idle keep-alive connections kept per server for reuse
    pool_max_idle: int = 64
    health_check: HealthCheck | None = None
    #: when backups take over, spread over all of them (else only the first usable one)
    all_backups: bool = False
    #: requests waiting for a server slot (max_connections) at most; beyond: 503
    max_queue: int = 1024
    cookie: CookieConfig | None = None
    #: passive checks: count errors of real traffic per server, "layer4" (connections) or
    #: "layer7" (also 5xx answers); ``error_limit`` in a row mark the server DOWN until its
    #: active health checks bring it back (so they need ``health_check``)
    observe: Literal["layer4", "layer7"] | None = None
    error_limit: int = 10
    #: "shutdown-sessions": when a server is marked DOWN, cut the requests it is serving
    on_marked_down: Literal["shutdown-sessions"] | None = None
    #: "source": keep a client address on the server it first got (a bounded, expiring table)
    stick: Literal["source"] | None = None
    stick_table: StickTableConfig = StickTableConfig()
    request_headers: tuple[HeaderRule, ...] = attrs.field(default=(), converter=rules_tuple)
    response_headers: tuple[HeaderRule, ...] = attrs.field(default=(), converter=rules_tuple)


@attrs.frozen(kw_only=True)
class FrontendConfig:
    name: str
    bind: tuple[Address, ...] = attrs.field(converter=parse_binds)
    mode: Mode = "http"
    default_backend: str | None = None
    #: append the client to X-Forwarded-For and set X-Forwarded-Proto/Host/Port
    forwarded_for: bool = False
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    tls: TLSConfig | None = None
    redirect_https: RedirectHTTPS | None = None
    #: Strict-Transport-Security value added to responses of a TLS frontend, e.g. "max-age=63072000"
    hsts: str | None = None
    #: content switching: the first route that matches decides, else ``default_backend``
    routes: tuple[Route, ...] = attrs.field(default=(), converter=routes_tuple)
    request_headers: tuple[HeaderRule, ...] = attrs.field(default=(), converter=rules_tuple)
    response_headers: tuple[HeaderRule, ...] = attrs.field(default=(), converter=rules_tuple)
    #: add a request id header (logged); keep a client's own only with ``trust_request_id``
    unique_id: bool = False
    unique_id_header: str = "X-Request-ID"
    trust_request_id: bool = False
    #: status -> HTML file served instead of trilb's own page
    error_pages: Mapping[int, str] = attrs.field(factory=dict)
    #: pass CONNECT requests on to the backend (a forward proxy behind trilb); a 2xx answer
    #: turns the connection into a tunnel, as a 101 does. Off: CONNECT gets 405.
    allow_connect: bool = False
    #: connections start with a PROXY protocol header (v1 or v2) from an L4 balancer in front;
    #: its client address is used everywhere (logs, X-Forwarded-For, ``src`` routes, hashing)
    accept_proxy: bool = False
    #: with ``accept_proxy``: only connections from these CIDRs carry a header (others are
    #: taken as direct clients); empty: every connection must carry one
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: client connections open at once on this frontend; beyond it new ones wait in the
    #: kernel's listen backlog (as with ``global.max_connections``). None: only the global cap
    max_connections: int | None = None
    #: the listen() backlog of each of its sockets: connections the kernel holds while trilb is
    #: at a cap (1024, trilb.net.BACKLOG; Linux caps it at net.core.somaxconn)
    backlog: int = 1024
    #: connections open at once from one client address; a new one over it is closed at once
    #: (HAProxy's ``tcp-request connection reject if { src_conn_cur ge N }``). None: no cap
    max_connections_per_src: int | None = None
    #: requests per period and client (``http_req_rate``); see :mod:`trilb.core.ratelimit`
    rate_limit: RateLimit | None = None


def _frontends(value: Iterable[FrontendConfig]) -> tuple[FrontendConfig, ...]:
    return tuple(value)


def _backends(value: Iterable[BackendConfig]) -> tuple[BackendConfig, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class Config:
    """A whole, consistent trilb configuration. Creating one checks its cross-references."""

    frontends: tuple[FrontendConfig, ...] = attrs.field(converter=_frontends)
    backends: tuple[BackendConfig, ...] = attrs.field(converter=_backends)
    global_: GlobalConfig = GlobalConfig()
    log: LogConfig = LogConfig()
    stats: StatsConfig | None = None
    admin: AdminConfig | None = None

    def __attrs_post_init__(self) -> None:
        problems = reference_problems(self)
        if problems:
            raise ConfigError(problems)

    def backend(self, name: str) -> BackendConfig:
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)

    def frontend(self, name: str) -> FrontendConfig:
        for frontend in self.frontends:
            if frontend.name == name:
                return frontend
        raise KeyError(name)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A " (did you mean 'x'?)" suffix for an unknown name, or "" when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _tls_problems(tls: TLSConfig, path: str) -> list[ConfigProblem]:
    problems = []
    if not tls.certificates:
        problems.append(ConfigProblem(f"{path}.certificates", "at least one is required"))
    if TLS_VERSIONS.index(tls.max_version) < TLS_VERSIONS.index(tls.min_version):
        problems.append(
            ConfigProblem(
                f"{path}.max_version",
                f"is below min_version ({tls.max_version} < {tls.min_version})",
            )
        )
    if tls.verify_client != "none" and tls.client_ca is None:
        problems.append(
            ConfigProblem(
                f"{path}.client_ca", f'required when verify_client is "{tls.verify_client}"'
            )
        )
    return problems


def _redirect_problems(config: Config, frontend: FrontendConfig, path: str) -> list[ConfigProblem]:
    problems = []
    if frontend.hsts is not None and frontend.tls is None:
        problems.append(
            ConfigProblem(f"{path}.hsts", "only for a TLS frontend (browsers ignore it over HTTP)")
        )
    redirect = frontend.redirect_https
    if redirect is None:
        return problems
    if frontend.tls is not None:
        problems.append(
            ConfigProblem(
                f"{path}.redirect_https", "is for a plain HTTP frontend, this one has tls"
            )
        )
    if redirect.code is not None and redirect.code not in REDIRECT_CODES:
        problems.append(
            ConfigProblem(f"{path}.redirect_https.code", f"must be one of {REDIRECT_CODES}")
        )
    if redirect.port is None:
        tls_frontends = [f.name for f in config.frontends if f.tls is not None]
        if len(tls_frontends) != 1:
            problems.append(
                ConfigProblem(
                    f"{path}.redirect_https",
                    f"the HTTPS port is ambiguous with {len(tls_frontends)} TLS frontends: "
                    "give it, as in redirect_https = { port = 8443 }",
                )
            )
    return problems


def _mode_mismatch(backend: str, backend_mode: str, frontend_mode: str) -> str:
    return (
        f"backend {backend!r} is in mode {backend_mode!r}, the frontend in mode {frontend_mode!r}"
    )


def _tcp_frontend_problems(frontend: FrontendConfig, path: str) -> list[ConfigProblem]:
    """What a TCP-mode frontend can't do: everything that reads or writes HTTP."""
    problems = []
    http_only = {
        "forwarded_for": frontend.forwarded_for,
        "redirect_https": frontend.redirect_https is not None,
        "hsts": frontend.hsts is not None,
        "request_headers": bool(frontend.request_headers),
        "response_headers": bool(frontend.response_headers),
        "unique_id": frontend.unique_id,
        "error_pages": bool(frontend.error_pages),
        "allow_connect": frontend.allow_connect,
        # requests are what it counts; a TCP frontend caps clients with max_connections_per_src
        "rate_limit": frontend.rate_limit is not None,
    }
    for key, given in http_only.items():
        if given:
            problems.append(ConfigProblem(f"{path}.{key}", 'is for mode "http" (this is "tcp")'))
    for index, route in enumerate(frontend.routes):
        route_path = f"{path}.routes[{index}]"
        if route.rate_limit is not None:
            problems.append(
                ConfigProblem(f"{route_path}.rate_limit", 'is for mode "http" (this is "tcp")')
            )
        if route.backend is None:
            problems.append(
                ConfigProblem(route_path, 'a "tcp" frontend\'s routes can only choose a backend')
            )
        match: Match | None = route.match
        while match is not None:
            for field in attrs.fields(Match):
                if field.name in TCP_MATCHERS or field.name == "not_":
                    continue
                if getattr(match, field.name) not in ((), None):
                    problems.append(
                        ConfigProblem(
                            f"{route_path}.{field.name}",
                            'looks into HTTP requests: a "tcp" frontend routes on sni and src',
                        )
                    )
            match = match.not_
    return problems


def _tcp_backend_problems(backend: BackendConfig, path: str) -> list[ConfigProblem]:
    problems = []
    if backend.balance.startswith(HTTP_ONLY_BALANCE):
        problems.append(
            ConfigProblem(
                f"{path}.balance",
                f'"{backend.balance}" hashes HTTP requests: not for mode "tcp" '
                "(roundrobin, static-rr, leastconn, first, source and random are)",
            )
        )
    http_only = {
        "cookie": backend.cookie is not None,
        "request_headers": bool(backend.request_headers),
        "response_headers": bool(backend.response_headers),
        "observe": backend.observe == "layer7",
    }
    for key, given in http_only.items():
        if given:
            problems.append(ConfigProblem(f"{path}.{key}", 'is for mode "http" (this is "tcp")'))
    return problems


def _limit_problems(frontend: FrontendConfig, path: str) -> list[ConfigProblem]:
    """The connection caps and rate limits of a frontend built in code (the loader checks each
    value as it reads it)."""
    problems = []
    for key in ("max_connections", "max_connections_per_src", "backlog"):
        value = getattr(frontend, key)
        if value is not None and (isinstance(value, bool) or value < 1):
            problems.append(ConfigProblem(f"{path}.{key}", f"must be >= 1, got {value}"))
    if frontend.rate_limit is not None:
        problems.extend(rate_limit_problems(frontend.rate_limit, f"{path}.rate_limit"))
    for index, route in enumerate(frontend.routes):
        if route.rate_limit is not None:
            where = f"{path}.routes[{index}].rate_limit"
            problems.extend(rate_limit_problems(route.rate_limit, where))
    return problems


def _worker_bind_problems(frontend: FrontendConfig, path: str) -> list[ConfigProblem]:
    """With several workers, each binds every address itself (SO_REUSEPORT): a port chosen by
    the system would differ from worker to worker, and a unix socket can't be shared that way."""
    problems = []
    for index, address in enumerate(frontend.bind):
        if address.path is not None:
            why = "a unix socket can't be shared by several workers"
        elif address.port == 0:
            why = "port 0 would give each worker a different port"
        else:
            continue
        problems.append(
            ConfigProblem(f"{path}.bind[{index}]", f"{why}: it needs global.workers = 1")
        )
    return problems


def reference_problems(config: Config) -> list[ConfigProblem]:
    """What is inconsistent across sections: names, references, modes. Empty when all is well."""
    problems: list[ConfigProblem] = []
    if not config.frontends:
        problems.append(ConfigProblem("frontends", "at least one frontend is required"))
    backend_names = [b.name for b in config.backends]
    frontend_names = [f.name for f in config.frontends]
    for kind, names in (("frontends", frontend_names), ("backends", backend_names)):
        seen: set[str] = set()
        for name in names:
            if name in seen:
                problems.append(ConfigProblem(f"{kind}.{name}", "the name is used twice"))
            seen.add(name)
    # typed str, not Mode: with only one mode today mypy would call the mismatch check unreachable
    modes: dict[str, str] = {b.name: b.mode for b in config.backends}
    for frontend in config.frontends:
        path = f"frontends.{frontend.name}"
        if frontend.tls is not None:
            problems.extend(_tls_problems(frontend.tls, f"{path}.tls"))
            if frontend.mode == "http" and "http/1.1" not in frontend.tls.alpn:
                problems.append(ConfigProblem(f"{path}.tls.alpn", 'must include "http/1.1"'))
        if frontend.mode == "tcp":
            problems.extend(_tcp_frontend_problems(frontend, path))
        if frontend.trusted_proxies and not frontend.accept_proxy:
            problems.append(
                ConfigProblem(f"{path}.trusted_proxies", "only with accept_proxy = true")
            )
        if not frontend.bind:
            problems.append(ConfigProblem(f"{path}.bind", "at least one address is required"))
        if config.global_.workers > 1:
            problems.extend(_worker_bind_problems(frontend, path))
        problems.extend(_redirect_problems(config, frontend, path))
        problems.extend(_limit_problems(frontend, path))
        for index, route in enumerate(frontend.routes):
            if route.backend is not None and route.backend not in modes:
                hint = did_you_mean(route.backend, backend_names)
                problems.append(
                    ConfigProblem(
                        f"{path}.routes[{index}].backend",
                        f"no backend named {route.backend!r}{hint}",
                    )
                )
            elif route.backend is not None and modes[route.backend] != frontend.mode:
                problems.append(
                    ConfigProblem(
                        f"{path}.routes[{index}].backend",
                        _mode_mismatch(route.backend, modes[route.backend], frontend.mode),
                    )
                )
        if frontend.default_backend is None:
            if frontend.redirect_https is None:  # a redirecting frontend needs no backend
                message = "required: the backend that gets the traffic"
                problems.append(ConfigProblem(f"{path}.default_backend", message))
        elif frontend.default_backend not in modes:
            hint = did_you_mean(frontend.default_backend, backend_names)
            problems.append(
                ConfigProblem(
                    f"{path}.default_backend",
                    f"no backend named {frontend.default_backend!r}{hint}",
                )
            )
        elif modes[frontend.default_backend] != frontend.mode:
            mode = modes[frontend.default_backend]
            message = _mode_mismatch(frontend.default_backend, mode, frontend.mode)
            problems.append(ConfigProblem(f"{path}.default_backend", message))
    for backend in config.backends:
        path = f"backends.{backend.name}"
        if backend.observe is not None and backend.health_check is None:
            problems.append(
                ConfigProblem(
                    f"{path}.observe",
                    "needs health_check: active checks bring a server back after passive "
                    "checks took it out",
                )
            )
        if not backend.servers:
            problems.append(ConfigProblem(f"{path}.servers", "at least one server is required"))
        if backend.mode == "tcp":
            problems.extend(_tcp_backend_problems(backend, path))
        seen = set()
        for index, server in enumerate(backend.servers):
            if server.name in seen:
                problems.append(
                    ConfigProblem(f"{path}.servers[{index}].name", f"{server.name!r} is used twice")
                )
            seen.add(server.name)
    return problems
