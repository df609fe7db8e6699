"""Build a :class:`~trilb.config.model.Config` from TOML, reporting every problem at once.

Theory of operation: the TOML document is walked once, table by table, through :class:`_Table`,
whose typed getters never raise. A bad value becomes a :class:`ConfigProblem` carrying its full key
path, and the getter hands back the model's default so reading can go on. When a table has been
read, every key nobody asked for is reported: "not supported yet" for keys of the contract
(``CONFIG-CONTRACT.md``) that are planned, "unknown key" with a suggestion for everything else.

The model objects are then built anyway (with placeholders where a part was unusable), so the
cross-reference checks of :func:`~trilb.config.model.reference_problems` run too and the user sees
structural and reference problems in one go. A reference problem that only echoes a structural one
(an empty ``bind`` because its one address was bad) is dropped.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from ..errors import ConfigError, ConfigProblem
from .health_keys import bytes_regex, check_type_keys, ehlo_domain, mysql_user, read_bytes
from .limit_keys import read_rate_limit
from .model import (
    ALPN_PROTOCOLS,
    BALANCE_ALGORITHMS,
    BALANCE_WITH_NAME,
    COOKIE_MODES,
    HASH_TYPES,
    HEALTH_CHECK_TYPES,
    LOG_FORMATS,
    LOG_TARGETS,
    MODES,
    PROXY_VERSIONS,
    SYSLOG_FACILITIES,
    TLS_VERSIONS,
    VERIFY_CLIENT,
    AdminConfig,
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
    StatsConfig,
    StickTableConfig,
    Timeouts,
    TLSConfig,
    UpstreamTLS,
    did_you_mean,
)
from .reader import (
    _TOKEN,
    _bool,
    _check_path,
    _choice,
    _duration,
    _header_name,
    _int,
    _method,
    _name,
    _redirect_code,
    _regex,
    _seconds,
    _show,
    _size,
    _status_ranges,
    _str,
    _Table,
    _token,
)
from .route_loader import read_error_pages, read_header_rules, read_routes
from .values import Address, parse_address

__all__ = ["load_config", "loads_config", "parse_config"]

# Keys of the contract that a later version implements: named, so they are neither ignored nor
# mistaken for typos.
_PLANNED_TOP: tuple[str, ...] = ()
_PLANNED_FRONTEND: tuple[str, ...] = ()
_PLANNED_BACKEND: tuple[str, ...] = ()
_PLANNED_SERVER: tuple[str, ...] = ()


# The model's own defaults, read from instances so the loader never restates them.
_GLOBAL = GlobalConfig()
_BACKEND = BackendConfig(name="", servers=())
_FRONTEND = FrontendConfig(name="", bind=())
_SERVER = ServerConfig(name="", address=Address())
_TLS = TLSConfig(certificates=())
_HEALTH = HealthCheck()
_NO_PATHS: tuple[str, ...] = ()

_SERVER_SHAPE = '{ name = "s1", address = "10.0.0.1:80" }'


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check a TOML config file; relative paths in it resolve against its folder.

    Raises :class:`ConfigError` listing every problem: unreadable file, TOML syntax, bad values.
    """
    name = os.fspath(path)
    try:
        raw = Path(name).read_bytes()
    except OSError as exc:
        raise ConfigError.single("", f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        # decoded here, not by tomllib.load, whose UnicodeDecodeError would escape as a traceback
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError.single("", f"{name}: not UTF-8 text (at line {line})") from None
    return loads_config(text, base_dir=Path(name).absolute().parent, source=name)


def loads_config(text: str, *, base_dir: Path | None = None, source: str = "<string>") -> Config:
    """Check a config given as TOML text. ``source`` names it in syntax errors.

    Relative paths resolve against ``base_dir``; without one they stay relative (to the working
    directory at the time they are used).
    """
    try:
        # a byte-order mark is what some Windows editors put first; it is not part of the document
        data = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)": keep it
        raise ConfigError.single("", f"{source}: invalid TOML: {exc}") from None
    return parse_config(data, base_dir=base_dir)


def parse_config(data: Mapping[str, Any], *, base_dir: Path | None = None) -> Config:
    """Check a parsed TOML document (the dict :mod:`tomllib` returns) and build the model."""
    return _Loader(base_dir).config(data)


def _related(a: str, b: str) -> bool:
    """Whether one key path is the other or lies inside it."""
    if len(a) < len(b):
        a, b = b, a
    return a == b or a.startswith((b + ".", b + "["))


def _file_mode(value: object) -> int:
    """ "0600" (octal text) or 0o600."""
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            mode = -1
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise ValueError(f'must be a file mode like "0600", got {_show(value)}')
    return mode


def _workers(value: object) -> int:
    """``global.workers``: a count, or "auto": one per CPU this process may run on (which
    ``taskset`` and cgroup cpusets restrict, unlike os.cpu_count)."""
    if value == "auto":
        return len(os.sched_getaffinity(0))
    try:
        return _int(1)(value)
    except ValueError:
        raise ValueError(f'must be an integer >= 1 or "auto", got {_show(value)}') from None


def _account(value: object) -> str | int:
    """``global.user`` / ``global.group``: a name, or a numeric id (whether the system knows
    it is checked when trilb starts, as certificate files are)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value and not any(c.isspace() for c in value):
        return value
    raise ValueError(f'must be a name like "trilb" or a numeric id, got {_show(value)}')


def _networks(value: object) -> tuple[str, ...]:
    """CIDRs like ["10.0.0.0/8", "::1"]: each checked here, kept as written."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f'must be an array of CIDRs like ["10.0.0.0/8"], got {_show(value)}')
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR range") from None
    return tuple(items)


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of tables like [{_SERVER_SHAPE}], got {_show(value)}")
    return value


def _binds(value: object) -> list[tuple[str, object]]:
    """One address or a list of them, each with the suffix that completes its key path."""
    if isinstance(value, str):
        return [("", value)]
    if isinstance(value, list):
        return [(f"[{index}]", item) for index, item in enumerate(value)]
    raise ValueError(
        f'must be an address or an array of addresses like ["*:80"], got {_show(value)}'
    )


def _server_address(value: object) -> Address:
    if not isinstance(value, str):
        raise ValueError(f'must be an address string like "10.0.0.1:80", got {_show(value)}')
    (address,) = parse_address(value, bind=False)
    return address


_RETRIES = _int(0, 100)
_ALPN = _choice(ALPN_PROTOCOLS, planned=("h2",))
_TLS_VERSION = _choice(TLS_VERSIONS, planned=())
_VERIFY_CLIENT = _choice(VERIFY_CLIENT)
_POOL_MAX_IDLE = _int(0)
_MODE = _choice(MODES)
_SEND_PROXY = _choice(PROXY_VERSIONS)


def _balance(value: object) -> str:
    """An algorithm name, or "url_param:NAME" / "header:NAME"."""
    if isinstance(value, str):
        if value in BALANCE_ALGORITHMS:
            return value
        prefix, _, name = value.partition(":")
        if f"{prefix}:" in BALANCE_WITH_NAME:
            if not name or not _TOKEN.fullmatch(name):
                raise ValueError(f'needs a name after "{prefix}:", got {_show(value)}')
            return value
    supported = ", ".join(_show(c) for c in (*BALANCE_ALGORITHMS, "url_param:NAME", "header:NAME"))
    hint = did_you_mean(value, BALANCE_ALGORITHMS) if isinstance(value, str) else ""
    raise ValueError(f"must be one of {supported}, got {_show(value)}{hint}")


_BALANCE = _balance
_STICK_ON: tuple[Literal["source"], ...] = ("source",)
_STICK = _choice(_STICK_ON)
_OBSERVE_LAYERS: tuple[Literal["layer4", "layer7"], ...] = ("layer4", "layer7")
_OBSERVE = _choice(_OBSERVE_LAYERS)
_ON_MARKED_DOWN_ACTIONS: tuple[Literal["shutdown-sessions"], ...] = ("shutdown-sessions",)
_ON_MARKED_DOWN = _choice(_ON_MARKED_DOWN_ACTIONS)
_TIMEOUT_FIELDS = tuple(field.name for field in attrs.fields(Timeouts))


@attrs.frozen(kw_only=True)
class _Defaults:
    """The ``[defaults]`` table: what every frontend and backend starts from."""

    timeouts: Timeouts
    limits: Limits
    forwarded_for: bool
    retries: int
    pool_max_idle: int


def _timeouts(table: _Table, base: Timeouts) -> Timeouts:
    return Timeouts(
        **{
            name: table.get(f"timeout_{name}", _duration, getattr(base, name))
            for name in _TIMEOUT_FIELDS
        }
    )


def _limits(table: _Table, base: Limits) -> Limits:
    return Limits(
        max_request_body=table.get("max_request_body", _size(0), base.max_request_body),
        max_header_size=table.get("max_header_size", _size(1024), base.max_header_size),
        max_uri_length=table.get("max_uri_length", _size(64), base.max_uri_length),
        max_headers=table.get("max_headers", _int(1), base.max_headers),
    )


class _Loader:
    """One reading of one document: the problems found so far and what spans sections."""

    def __init__(self, base_dir: Path | None) -> None:
        self.base_dir = base_dir
        self.problems: list[ConfigProblem] = []
        #: every listening address so far, with where it was given, to catch one bound twice
        self.binds: dict[Address, str] = {}

    def config(self, data: Mapping[str, Any]) -> Config:
        root = _Table(data, "", self.problems, _PLANNED_TOP)
        global_ = self.global_(root.table("global"))
        log = self.log(root.table("log"))
        stats = self.stats(root.table("stats"))
        admin = self.admin(root.table("admin"))
        defaults = self.defaults(root.table("defaults"))
        frontends = [
            self.frontend(name, table, defaults)
            for name, table in root.named("frontends", _PLANNED_FRONTEND)
            if table is not None
        ]
        backends = [
            # a broken backend still has its name, so references to it are not reported too
            self.backend(name, table, defaults)
            if table is not None
            else BackendConfig(name=name, servers=())
            for name, table in root.named("backends", _PLANNED_BACKEND)
        ]
        root.finish()
        structural = self.problems
        try:
            config = Config(
                frontends=frontends,
                backends=backends,
                global_=global_,
                log=log,
                stats=stats,
                admin=admin,
            )
        except ConfigError as exc:
            if any(p.key_path in ("frontends", "backends") for p in structural):
                references: list[ConfigProblem] = []  # too broken for references to mean anything
            else:
                references = [
                    ref
                    for ref in exc.problems
                    if not any(_related(ref.key_path, p.key_path) for p in structural)
                ]
            raise ConfigError([*structural, *references]) from None
        if structural:
            raise ConfigError(structural)
        return config

    def global_(self, table: _Table) -> GlobalConfig:
        workers = table.get("workers", _workers, _GLOBAL.workers)
        max_connections = table.get("max_connections", _int(1), _GLOBAL.max_connections)
        pidfile = table.get("pidfile", _str, _GLOBAL.pidfile)
        if pidfile is not None and self.base_dir is not None:
            pidfile = str(self.base_dir / pidfile)  # an absolute pidfile stays as it is
        timeout_drain = table.get("timeout_drain", _duration, _GLOBAL.timeout_drain)
        user = table.get("user", _account, _GLOBAL.user)
        group = table.get("group", _account, _GLOBAL.group)
        table.finish()
        return GlobalConfig(
            workers=workers,
            max_connections=max_connections,
            pidfile=pidfile,
            timeout_drain=timeout_drain,
            user=user,
            group=group,
        )

    def log(self, table: _Table) -> LogConfig:
        default = LogConfig()
        result = LogConfig(
            target=table.get("target", self.log_target, default.target),
            format=table.get("format", _choice(LOG_FORMATS), default.format),
            template=table.get("template", _str, None),
            facility=table.get("facility", _choice(SYSLOG_FACILITIES), default.facility),
            queue=table.get("queue", _int(1), default.queue),
        )
        table.finish()
        return result

    def log_target(self, value: object) -> str:
        """stdout, stderr, none, file:PATH (relative to the config), syslog:HOST:PORT,
        syslog:unix:PATH."""
        if value in LOG_TARGETS:
            assert isinstance(value, str)
            return value
        if isinstance(value, str) and value.startswith("file:") and len(value) > 5:
            return "file:" + self.resolve(value[5:])
        if isinstance(value, str) and value.startswith("syslog:unix:") and len(value) > 12:
            return value
        if isinstance(value, str) and value.startswith("syslog:"):
            try:
                parse_address(value[len("syslog:") :], bind=False)
            except ValueError as exc:
                raise ValueError(f"the syslog address {exc}") from None
            return value
        raise ValueError(
            'must be "stdout", "stderr", "none", "file:PATH", "syslog:HOST:PORT" or '
            f'"syslog:unix:PATH", got {_show(value)}'
        )

    def stats(self, table: _Table) -> StatsConfig | None:
        if not table.data:
            return None
        binds: list[Address] = []
        no_binds: list[tuple[str, object]] = []
        for suffix, item in table.get("bind", _binds, no_binds, required=True):
            try:
                if not isinstance(item, str):
                    raise ValueError(
                        f'must be an address string like "127.0.0.1:8404", got {_show(item)}'
                    )
                binds.extend(parse_address(item, bind=True))
            except ValueError as exc:
                table.problem(table.key_path("bind") + suffix, str(exc))
        auth = None
        if "auth" in table.data:
            sub = table.table("auth")
            auth = (
                sub.get("user", _str, "", required=True),
                sub.get("password", _str, "", required=True),
            )
            sub.finish()
        result = StatsConfig(
            bind=binds,
            auth=auth,
            tls=self.tls(table.table("tls")) if "tls" in table.data else None,
            refresh=table.get("refresh", _duration, 5.0),
        )
        table.finish()
        return result

    def admin(self, table: _Table) -> AdminConfig | None:
        if not table.data:
            return None
        socket_path = table.get("socket", _str, "", required=True)
        if socket_path.startswith("unix:"):
            socket_path = socket_path[len("unix:") :]
        mode = table.get("mode", _file_mode, 0o600)
        table.finish()
        return AdminConfig(socket=self.resolve(socket_path) if socket_path else "", mode=mode)

    def defaults(self, table: _Table) -> _Defaults:
        result = _Defaults(
            timeouts=_timeouts(table, _BACKEND.timeouts),
            limits=_limits(table, _FRONTEND.limits),
            forwarded_for=table.get("forwarded_for", _bool, _FRONTEND.forwarded_for),
            retries=table.get("retries", _RETRIES, _BACKEND.retries),
            pool_max_idle=table.get("pool_max_idle", _POOL_MAX_IDLE, _BACKEND.pool_max_idle),
        )
        table.finish()
        return result

    def frontend(self, name: str, table: _Table, defaults: _Defaults) -> FrontendConfig:
        binds: list[Address] = []
        no_binds: list[tuple[str, object]] = []
        for suffix, item in table.get("bind", _binds, no_binds):
            path = table.key_path("bind") + suffix
            try:
                if not isinstance(item, str):
                    raise ValueError(f'must be an address string like "*:80", got {_show(item)}')
                addresses = parse_address(item, bind=True)
            except ValueError as exc:
                table.problem(path, str(exc))
                continue
            self.check_bound_once(addresses, path)
            binds.extend(addresses)
        result = FrontendConfig(
            name=name,
            bind=binds,
            mode=table.get("mode", _MODE, _FRONTEND.mode),
            default_backend=table.get("default_backend", _str, None),
            forwarded_for=table.get("forwarded_for", _bool, defaults.forwarded_for),
            timeouts=_timeouts(table, defaults.timeouts),
            limits=_limits(table, defaults.limits),
            tls=self.tls(table.table("tls")) if "tls" in table.data else None,
            redirect_https=self.redirect_https(table),
            hsts=table.get("hsts", _str, None),
            routes=read_routes(table),
            request_headers=read_header_rules(table, "request_headers"),
            response_headers=read_header_rules(table, "response_headers"),
            unique_id=table.get("unique_id", _bool, False),
            unique_id_header=table.get("unique_id_header", _token, _FRONTEND.unique_id_header),
            trust_request_id=table.get("trust_request_id", _bool, False),
            allow_connect=table.get("allow_connect", _bool, False),
            error_pages=read_error_pages(table, self.resolve),
            accept_proxy=table.get("accept_proxy", _bool, False),
            trusted_proxies=table.get("trusted_proxies", _networks, _NO_PATHS),
            max_connections=table.get("max_connections", _int(1), None),
            backlog=table.get("backlog", _int(1, 65535), _FRONTEND.backlog),
            max_connections_per_src=table.get("max_connections_per_src", _int(1), None),
            rate_limit=read_rate_limit(table),
        )
        table.finish()
        return result

    def tls(self, table: _Table) -> TLSConfig:
        def paths(value: object) -> tuple[str, ...]:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
                raise ValueError(f"must be a path or an array of paths, got {_show(value)}")
            return tuple(self.resolve(item) for item in items)

        def alpn(value: object) -> tuple[str, ...]:
            if not isinstance(value, list):
                raise ValueError(f'must be an array like ["http/1.1"], got {_show(value)}')
            return tuple(_ALPN(item) for item in value)

        result = TLSConfig(
            certificates=table.get("certificates", paths, _NO_PATHS, required=True),
            alpn=table.get("alpn", alpn, _TLS.alpn),
            min_version=table.get("min_version", _TLS_VERSION, _TLS.min_version),
            max_version=table.get("max_version", _TLS_VERSION, _TLS.max_version),
            ciphers=table.get("ciphers", _str, _TLS.ciphers),
            client_ca=table.get("client_ca", lambda v: self.resolve(_str(v)), None),
            verify_client=table.get("verify_client", _VERIFY_CLIENT, _TLS.verify_client),
            client_cert_header=table.get(
                "client_cert_header", _header_name, _TLS.client_cert_header
            ),
        )
        if "ciphersuites" in table.data:
            table.known.append("ciphersuites")
            table.problem(
                table.key_path("ciphersuites"),
                "cannot be set: Python's ssl module has no API for TLS 1.3 cipher suites "
                "(OpenSSL's defaults are used: all AEAD and forward secret)",
            )
        table.finish()
        return result

    def stick_table(self, table: _Table) -> StickTableConfig:
        default = StickTableConfig()
        if "stick_table" not in table.data:
            table.known.append("stick_table")
            return default
        sub = table.table("stick_table")
        result = StickTableConfig(
            size=sub.get("size", _int(1), default.size),
            expire=sub.get("expire", _duration, default.expire),
        )
        sub.finish()
        return result

    def cookie(self, table: _Table) -> CookieConfig:
        sub = table.table("cookie")
        result = CookieConfig(
            name=sub.get("name", _token, "SERVERID", required=True),
            mode=sub.get("mode", _choice(COOKIE_MODES), "insert"),
            nocache=sub.get("nocache", _bool, False),
            httponly=sub.get("httponly", _bool, False),
            secure=sub.get("secure", _bool, False),
            max_age=sub.get("max_age", _seconds, None),
            domain=sub.get("domain", _str, None),
        )
        sub.finish()
        return result

    def health_check(self, table: _Table) -> HealthCheck:
        sub = table.table("health_check")
        default = _HEALTH
        result = HealthCheck(
            type=sub.get("type", _choice(HEALTH_CHECK_TYPES), default.type),
            interval=sub.get("interval", _duration, default.interval),
            fast_interval=sub.get("fast_interval", _duration, default.fast_interval),
            down_interval=sub.get("down_interval", _duration, default.down_interval),
            timeout=sub.get("timeout", _duration, default.timeout),
            fall=sub.get("fall", _int(1, 1000), default.fall),
            rise=sub.get("rise", _int(1, 1000), default.rise),
            port=sub.get("port", _int(1, 65535), default.port),
            address=sub.get("address", _str, default.address),
            method=sub.get("method", _method, default.method),
            path=sub.get("path", _check_path, default.path),
            host=sub.get("host", _str, default.host),
            expect_status=sub.get("expect_status", _status_ranges, default.expect_status),
            expect_body=sub.get("expect_body", _str, default.expect_body),
            expect_body_regex=sub.get("expect_body_regex", _regex, default.expect_body_regex),
            send=read_bytes(sub, "send", "send_hex"),
            expect=read_bytes(sub, "expect", "expect_hex"),
            expect_regex=sub.get("expect_regex", bytes_regex, default.expect_regex),
            user=sub.get("user", mysql_user, default.user),
            post_41=sub.get("post_41", _bool, default.post_41),
            domain=sub.get("domain", ehlo_domain, default.domain),
        )
        check_type_keys(sub, result)
        sub.finish()
        return result

    def redirect_https(self, table: _Table) -> RedirectHTTPS | None:
        """``redirect_https = true`` or ``{ port = 8443, code = 301 }``."""
        sub = table.flag_or_table("redirect_https", "{ port = 8443 }")
        if isinstance(sub, bool):
            return RedirectHTTPS() if sub else None
        result = RedirectHTTPS(
            port=sub.get("port", _int(1, 65535), None),
            code=sub.get("code", _redirect_code, None),
        )
        sub.finish()
        return result

    def upstream_tls(self, table: _Table) -> UpstreamTLS | None:
        """A server's ``tls = true`` or ``{ verify = true, ca = "...", sni = "..." }``."""
        sub = table.flag_or_table("tls", '{ verify = true, ca = "ca.pem" }')
        if isinstance(sub, bool):
            return UpstreamTLS() if sub else None
        result = UpstreamTLS(
            verify=sub.get("verify", _bool, True),
            ca=sub.get("ca", lambda v: self.resolve(_str(v)), None),
            sni=sub.get("sni", _str, None),
        )
        sub.finish()
        return result

    def resolve(self, path: str) -> str:
        """Relative file paths are relative to the config file's folder."""
        return str(self.base_dir / path) if self.base_dir is not None else path

    def check_bound_once(self, addresses: list[Address], path: str) -> None:
        """An address given twice would fail at startup (or, with SO_REUSEPORT, be shared)."""
        for address in addresses:
            if address.port == 0 and not address.is_unix:
                continue  # any free port: never a collision
            other = self.binds.setdefault(address, path)
            if other != path:
                message = f'"{address}" is also bound by {other}'
                self.problems.append(ConfigProblem(path, message))
                return

    def backend(self, name: str, table: _Table, defaults: _Defaults) -> BackendConfig:
        result = BackendConfig(  # keyword arguments are read in order: the usual order of a file
            name=name,
            mode=table.get("mode", _MODE, _BACKEND.mode),
            balance=table.get("balance", _BALANCE, _BACKEND.balance),
            hash_type=table.get("hash_type", _choice(HASH_TYPES), _BACKEND.hash_type),
            uri_whole=table.get("uri_whole", _bool, _BACKEND.uri_whole),
            timeouts=_timeouts(table, defaults.timeouts),
            retries=table.get("retries", _RETRIES, defaults.retries),
            pool_max_idle=table.get("pool_max_idle", _POOL_MAX_IDLE, defaults.pool_max_idle),
            servers=self.servers(table),
            health_check=self.health_check(table) if "health_check" in table.data else None,
            all_backups=table.get("all_backups", _bool, _BACKEND.all_backups),
            cookie=self.cookie(table) if "cookie" in table.data else None,
            stick=table.get("stick", _STICK, None),
            observe=table.get("observe", _OBSERVE, None),
            error_limit=table.get("error_limit", _int(1, 100_000), _BACKEND.error_limit),
            on_marked_down=table.get("on_marked_down", _ON_MARKED_DOWN, None),
            stick_table=self.stick_table(table),
            max_queue=table.get("max_queue", _int(0), _BACKEND.max_queue),
            request_headers=read_header_rules(table, "request_headers"),
            response_headers=read_header_rules(table, "response_headers"),
        )
        table.finish()
        return result

    def servers(self, table: _Table) -> list[ServerConfig]:
        servers: list[ServerConfig] = []
        no_servers: list[Any] = []
        for index, item in enumerate(table.get("servers", _list, no_servers)):
            path = f"{table.key_path('servers')}[{index}]"
            if isinstance(item, Mapping):
                servers.append(self.server(_Table(item, path, self.problems, _PLANNED_SERVER)))
            else:
                table.problem(path, f"must be a table like {_SERVER_SHAPE}, got {_show(item)}")
                servers.append(ServerConfig(name=f"#{index}", address=Address()))  # placeholder
        return servers

    def server(self, table: _Table) -> ServerConfig:
        # placeholders for a missing name or address keep the server's place for later checks
        result = ServerConfig(
            name=table.get("name", _name, f"#{table.path}", required=True),
            address=table.get("address", _server_address, Address(), required=True),
            weight=table.get("weight", _int(0, 256), _SERVER.weight),
            tls=self.upstream_tls(table),
            backup=table.get("backup", _bool, _SERVER.backup),
            max_connections=table.get("max_connections", _int(1), _SERVER.max_connections),
            cookie_value=table.get("cookie_value", _token, _SERVER.cookie_value),
            slow_start=table.get("slow_start", _duration, _SERVER.slow_start),
            send_proxy=table.get("send_proxy", _SEND_PROXY, None),
        )
        table.finish()
        return result
