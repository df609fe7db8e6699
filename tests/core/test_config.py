"""The TOML config loader: every problem reported at once, each with its key path."""

# The tables of cases below read best one case a line, even when that line is long.
# ruff: noqa: E501

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import attrs
import pytest

import trilb
from trilb.config import (
    Address,
    BackendConfig,
    Config,
    FrontendConfig,
    GlobalConfig,
    Limits,
    LogConfig,
    ServerConfig,
    Timeouts,
    load_config,
    loads_config,
    parse_config,
)
from trilb.errors import ConfigError, ConfigProblem

FULL = """
[global]
workers = 1
max_connections = 5000
pidfile = "run/trilb.pid"

[log]
target = "stderr"
format = "json"

[defaults]
timeout_connect = "2s"
timeout_client = "1m"
timeout_server = "45s"
timeout_http_request = "500ms"
timeout_keep_alive = "3s"
timeout_tunnel = "2h"
timeout_pool_idle = "20s"
retries = 3
max_request_body = "64m"
max_header_size = "16k"
max_uri_length = 4096
max_headers = 50
forwarded_for = true
pool_max_idle = 8

[frontends.web]
bind = ["*:80", ":81", "[::1]:8443", "127.0.0.1:9000-9002", "unix:/run/trilb/web.sock"]
mode = "http"
default_backend = "wordpress"
forwarded_for = false
timeout_client = "10s"
max_request_body = 1024

[frontends.api]
bind = "127.0.0.1:8080"
default_backend = "api"

[backends.wordpress]
mode = "http"
balance = "static-rr"
timeout_server = "1m"
retries = 0
servers = [
  { name = "wp1", address = "10.0.0.11:80", weight = 0 },
  { name = "wp2", address = "[2001:db8::1]:80" },
]

[backends.api]
pool_max_idle = 0

[[backends.api.servers]]
name = "api1"
address = "unix:/run/api.sock"
weight = 256
"""

# what [defaults] in FULL gives every frontend and backend that does not override it
INHERITED_TIMEOUTS = Timeouts(
    connect=2.0,
    client=60.0,
    server=45.0,
    http_request=0.5,
    keep_alive=3.0,
    tunnel=7200.0,
    pool_idle=20.0,
)
INHERITED_LIMITS = Limits(
    max_request_body=64 * 1024**2, max_header_size=16 * 1024, max_uri_length=4096, max_headers=50
)

EXPECTED_FULL = Config(
    global_=GlobalConfig(workers=1, max_connections=5000, pidfile="/etc/trilb/run/trilb.pid"),
    log=LogConfig(target="stderr", format="json"),
    frontends=[
        FrontendConfig(
            name="web",
            bind=[
                Address(host=None, port=80),
                Address(host=None, port=81),
                Address(host="::1", port=8443),
                Address(host="127.0.0.1", port=9000),
                Address(host="127.0.0.1", port=9001),
                Address(host="127.0.0.1", port=9002),
                Address(path="/run/trilb/web.sock"),
            ],
            default_backend="wordpress",
            forwarded_for=False,
            timeouts=attrs.evolve(INHERITED_TIMEOUTS, client=10.0),  # overridden
            limits=attrs.evolve(INHERITED_LIMITS, max_request_body=1024),
        ),
        FrontendConfig(
            name="api",
            bind=["127.0.0.1:8080"],
            default_backend="api",
            forwarded_for=True,
            timeouts=INHERITED_TIMEOUTS,
            limits=INHERITED_LIMITS,
        ),
    ],
    backends=[
        BackendConfig(
            name="wordpress",
            balance="static-rr",
            timeouts=attrs.evolve(INHERITED_TIMEOUTS, server=60.0),
            retries=0,
            pool_max_idle=8,
            servers=[
                ServerConfig(name="wp1", address="10.0.0.11:80", weight=0),
                ServerConfig(name="wp2", address="[2001:db8::1]:80", weight=100),
            ],
        ),
        BackendConfig(
            name="api",
            timeouts=INHERITED_TIMEOUTS,
            retries=3,
            pool_max_idle=0,
            servers=[ServerConfig(name="api1", address=Address(path="/run/api.sock"), weight=256)],
        ),
    ],
)


def test_full_config_loads_into_the_model() -> None:
    config = loads_config(FULL, base_dir=Path("/etc/trilb"))
    assert config == EXPECTED_FULL
    assert config.frontend("web").bind[0].host is None
    assert str(config.frontend("web").bind[2]) == "[::1]:8443"
    assert config.frontend("web").bind[-1].is_unix


MINIMAL: dict[str, Any] = {
    "frontends": {"web": {"bind": "127.0.0.1:0", "default_backend": "app"}},
    "backends": {"app": {"servers": [{"name": "s1", "address": "127.0.0.1:8080"}]}},
}


def test_minimal_config_equals_one_built_in_code() -> None:
    in_code = Config(
        frontends=[FrontendConfig(name="web", bind=["127.0.0.1:0"], default_backend="app")],
        backends=[
            BackendConfig(name="app", servers=[ServerConfig(name="s1", address="127.0.0.1:8080")])
        ],
    )
    assert parse_config(MINIMAL) == in_code
    # the model's defaults apply where the file says nothing
    assert in_code.global_ == GlobalConfig()
    assert in_code.backend("app").timeouts == Timeouts()
    assert in_code.frontend("web").limits == Limits()


def test_bad_reference_in_code_raises() -> None:
    with pytest.raises(ConfigError) as info:
        Config(
            frontends=[FrontendConfig(name="web", bind=["*:80"], default_backend="ap")],
            backends=[BackendConfig(name="app", servers=[ServerConfig(name="s", address="h:1")])],
        )
    assert info.value.problems == (
        ConfigProblem(
            "frontends.web.default_backend", "no backend named 'ap' (did you mean 'app'?)"
        ),
    )


DELETE = object()


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``change`` laid over it, table by table; DELETE removes a key."""
    result = copy.deepcopy(base)
    for key, value in change.items():
        if value is DELETE:
            del result[key]
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def problems_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return [(p.key_path, p.message) for p in info.value.problems]


def web(**keys: Any) -> dict[str, Any]:
    return {"frontends": {"web": keys}}


def app(**keys: Any) -> dict[str, Any]:
    return {"backends": {"app": keys}}


def server(**keys: Any) -> dict[str, Any]:
    return app(servers=[{"name": "s1", "address": "127.0.0.1:8080", **keys}])


PLANNED = "not supported yet in trilb 0.1 (planned)"
NAME_RULE = 'must be made of letters, digits, "-", "_", "." and ":"'

# (change to MINIMAL, the one problem's key path, a distinctive part of its message)
ONE_PROBLEM: list[tuple[str, dict[str, Any], str, str]] = [
    # tables of the wrong type
    ("global-not-table", {"global": 5}, "global", "must be a table, got 5"),
    ("log-not-table", {"log": "stdout"}, "log", 'must be a table, got "stdout"'),
    ("frontend-not-table", {"frontends": {"web": "x"}}, "frontends.web", 'table ([frontends.web]), got "x"'),
    ("backend-not-table", {"backends": {"app": [1]}}, "backends.app", "must be a table ([backends.app]), got [1]"),
    ("bad-frontend-name", {"frontends": {"web": DELETE, "my web": MINIMAL["frontends"]["web"]}}, "frontends.my web", f'the name {NAME_RULE}, got "my web"'),
    ("empty-backend-name", {"backends": {"": {"servers": []}}}, "backends.", "the name must be made of"),
    # [global]
    ("workers-zero", {"global": {"workers": 0}}, "global.workers", 'must be an integer >= 1 or "auto", got 0'),
    ("workers-bool", {"global": {"workers": True}}, "global.workers", 'must be an integer >= 1 or "auto", got true'),
    ("workers-word", {"global": {"workers": "all"}}, "global.workers", 'must be an integer >= 1 or "auto", got "all"'),
    ("workers-port-0", {"global": {"workers": 2}, "frontends": {"web": {"bind": ["127.0.0.1:0"]}}}, "frontends.web.bind[0]", "port 0 would give each worker a different port: it needs global.workers = 1"),
    ("workers-unix", {"global": {"workers": 2}, "frontends": {"web": {"bind": ["unix:/run/web.sock"]}}}, "frontends.web.bind[0]", "a unix socket can't be shared by several workers"),
    ("max-connections-bool", {"global": {"max_connections": True}}, "global.max_connections", "integer >= 1, got true"),
    ("max-connections-float", {"global": {"max_connections": 1.5}}, "global.max_connections", "integer >= 1, got 1.5"),
    ("pidfile-empty", {"global": {"pidfile": ""}}, "global.pidfile", 'must be a non-empty string, got ""'),
    # [log]
    ("log-syslog-address", {"log": {"target": "syslog:nowhere"}}, "log.target", "the syslog address must be"),
    ("log-target-typo", {"log": {"target": "stdot"}}, "log.target", 'must be "stdout", "stderr", "none", "file:PATH", "syslog:HOST:PORT" or "syslog:unix:PATH", got "stdot"'),
    ("log-facility", {"log": {"facility": "local9"}}, "log.facility", 'got "local9"'),
    ("log-queue", {"log": {"queue": 0}}, "log.queue", "must be an integer >= 1, got 0"),
    ("log-format-typo", {"log": {"format": "jsn"}}, "log.format", "(did you mean 'json'?)"),
    ("log-format-far", {"log": {"format": "xml"}}, "log.format", 'must be one of "haproxy", "json", got "xml"'),
    ("log-format-not-str", {"log": {"format": 1}}, "log.format", 'must be one of "haproxy", "json", got 1'),
    # [defaults]
    ("timeout-number", {"defaults": {"timeout_connect": 5}}, "defaults.timeout_connect", 'must be a duration string like "5s" or "250ms", got 5'),
    ("timeout-unit", {"defaults": {"timeout_client": "5 sec"}}, "defaults.timeout_client", 'must be a duration like "250ms", "5s", "2m" or "1h", got "5 sec"'),
    ("timeout-zero", {"defaults": {"timeout_tunnel": "0s"}}, "defaults.timeout_tunnel", 'must be longer than 0, got "0s"'),
    ("retries-high", {"defaults": {"retries": 101}}, "defaults.retries", "must be an integer 0-100, got 101"),
    ("retries-negative", {"defaults": {"retries": -1}}, "defaults.retries", "must be an integer 0-100, got -1"),
    ("pool-max-idle", {"defaults": {"pool_max_idle": -1}}, "defaults.pool_max_idle", "must be an integer >= 0, got -1"),
    ("forwarded-for-str", {"defaults": {"forwarded_for": "yes"}}, "defaults.forwarded_for", 'must be true or false, got "yes"'),
    ("forwarded-for-int", {"defaults": {"forwarded_for": 1}}, "defaults.forwarded_for", "must be true or false, got 1"),
    ("size-bool", {"defaults": {"max_request_body": True}}, "defaults.max_request_body", 'must be a byte count like 65536 or "64k", got true'),
    ("size-float", {"defaults": {"max_request_body": 1e6}}, "defaults.max_request_body", "byte count like 65536 or \"64k\", got 1000000.0"),
    ("size-unit", {"defaults": {"max_header_size": "64x"}}, "defaults.max_header_size", 'must be a byte count like 65536 or "64k", got "64x"'),
    ("size-negative", {"defaults": {"max_request_body": -5}}, "defaults.max_request_body", "must not be negative, got -5"),
    ("header-size-small", {"defaults": {"max_header_size": 1023}}, "defaults.max_header_size", "must be at least 1024 bytes, got 1023"),
    ("uri-small", {"defaults": {"max_uri_length": "63b"}}, "defaults.max_uri_length", 'must be at least 64 bytes, got "63b"'),
    ("max-headers-zero", {"defaults": {"max_headers": 0}}, "defaults.max_headers", "must be an integer >= 1, got 0"),
    ("defaults-unknown", {"defaults": {"timeout_conect": "5s"}}, "defaults.timeout_conect", "unknown key (did you mean 'timeout_connect'?)"),
    ("defaults-backend-key", {"defaults": {"balance": "roundrobin"}}, "defaults.balance", "unknown key"),
    # top level
    ("top-typo", {"frontend": {}}, "frontend", "unknown key (did you mean 'frontends'?)"),
    ("top-far", {"zzz": 1}, "zzz", "unknown key"),
    ("stats-bind", {"stats": {"refresh": "1s"}}, "stats.bind", "required"),
    ("stats-auth", {"stats": {"bind": "127.0.0.1:8404", "auth": {"user": "admin"}}}, "stats.auth.password", "required"),
    ("stats-typo", {"stats": {"bind": "127.0.0.1:8404", "refesh": "1s"}}, "stats.refesh", "unknown key (did you mean 'refresh'?)"),
    ("admin-socket", {"admin": {"mode": "0600"}}, "admin.socket", "required"),
    ("admin-mode", {"admin": {"socket": "/run/a.sock", "mode": "rw"}}, "admin.mode", 'must be a file mode like "0600", got "rw"'),
    # [frontends.NAME]
    ("bind-number", web(bind=80), "frontends.web.bind", 'must be an address or an array of addresses like ["*:80"], got 80'),
    ("bind-one-bad", web(bind="localhost"), "frontends.web.bind", 'must be "host:port", got "localhost" (no port)'),
    ("bind-entry-bad", web(bind=["127.0.0.1:1", "[::1:80"]), "frontends.web.bind[1]", 'an IPv6 address must look like "[::1]:8443", got "[::1:80"'),
    ("bind-entry-not-str", web(bind=["127.0.0.1:1", 80]), "frontends.web.bind[1]", 'must be an address string like "*:80", got 80'),
    ("bind-range-backwards", web(bind="*:90-80"), "frontends.web.bind", 'the port range is backwards in "*:90-80"'),
    ("bind-twice", web(bind=["127.0.0.1:80", "127.0.0.1:80"]), "frontends.web.bind[1]", '"127.0.0.1:80" is also bound by frontends.web.bind[0]'),
    ("bind-range-overlap", web(bind=["127.0.0.1:9000-9010", "127.0.0.1:9005-9006"]), "frontends.web.bind[1]", '"127.0.0.1:9005" is also bound by frontends.web.bind[0]'),
    ("bind-unix-twice", web(bind=["unix:/run/x.sock", "unix:/run/x.sock"]), "frontends.web.bind[1]", '"unix:/run/x.sock" is also bound by'),
    ("bind-port-high", web(bind="*:70000"), "frontends.web.bind", 'the port must be a number 0-65535, got "*:70000"'),
    ("bind-port-word", web(bind="*:http"), "frontends.web.bind", 'the port must be a number 0-65535, got "*:http"'),
    ("bind-range-wide", web(bind="*:1-2000"), "frontends.web.bind", 'a port range may span at most 1024 ports, got "*:1-2000"'),
    ("bind-range-zero", web(bind="*:0-5"), "frontends.web.bind", 'a port range cannot start at port 0, got "*:0-5"'),
    ("bind-bad-ip", web(bind="[zz]:80"), "frontends.web.bind", '"zz" is not a valid IP address in "[zz]:80"'),
    ("bind-unix-no-path", web(bind="unix:"), "frontends.web.bind", 'a unix socket address needs a path, like "unix:/run/x.sock", got "unix:"'),
    ("mode-tcp-http-backend", web(mode="tcp"), "frontends.web.default_backend", "backend 'app' is in mode 'http', the frontend in mode 'tcp'"),
    ("mode-other", web(mode="https"), "frontends.web.mode", 'must be one of "http", "tcp", got "https" (did you mean \'http\'?)'),
    ("accept-proxy-type", web(accept_proxy="yes"), "frontends.web.accept_proxy", 'must be true or false, got "yes"'),
    ("trusted-proxies-alone", web(trusted_proxies=["10.0.0.0/8"]), "frontends.web.trusted_proxies", "only with accept_proxy = true"),
    ("trusted-proxies-bad", web(accept_proxy=True, trusted_proxies=["10.0.0.0/33"]), "frontends.web.trusted_proxies", "'10.0.0.0/33' is not an IP address or CIDR range"),
    ("trusted-proxies-type", web(accept_proxy=True, trusted_proxies=[8]), "frontends.web.trusted_proxies", 'must be an array of CIDRs like ["10.0.0.0/8"], got [8]'),
    ("default-backend-type", web(default_backend=5), "frontends.web.default_backend", "must be a non-empty string, got 5"),
    ("frontend-timeout", web(timeout_keep_alive="soon"), "frontends.web.timeout_keep_alive", 'got "soon"'),
    ("frontend-limit", web(max_headers="many"), "frontends.web.max_headers", 'must be an integer >= 1, got "many"'),
    ("frontend-retries", web(retries=2), "frontends.web.retries", "unknown key"),
    ("frontend-typo", web(forwarded_fro=True), "frontends.web.forwarded_fro", "unknown key (did you mean 'forwarded_for'?)"),
    ("frontend-planned-typo", web(redirect_http=True), "frontends.web.redirect_http", "unknown key (did you mean 'redirect_https'?)"),
    ("redirect-https-no-tls-frontend", web(redirect_https=True), "frontends.web.redirect_https", "the HTTPS port is ambiguous with 0 TLS frontends"),
    ("redirect-https-type", web(redirect_https="yes"), "frontends.web.redirect_https", 'must be true, false or a table like { port = 8443 }, got "yes"'),
    ("redirect-https-code", web(redirect_https={"port": 8443, "code": 200}), "frontends.web.redirect_https.code", "must be one of 301, 302, 303, 307, 308, got 200"),
    ("redirect-https-port", web(redirect_https={"port": 0}), "frontends.web.redirect_https.port", "must be an integer 1-65535, got 0"),
    ("redirect-https-typo", web(redirect_https={"port": 8443, "cod": 301}), "frontends.web.redirect_https.cod", "unknown key (did you mean 'code'?)"),
    ("redirect-https-on-tls", web(redirect_https={"port": 8443}, tls={"certificates": "a.pem"}), "frontends.web.redirect_https", "is for a plain HTTP frontend"),
    ("allow-connect", web(allow_connect="yes"), "frontends.web.allow_connect", 'must be true or false, got "yes"'),
    ("hsts-without-tls", web(hsts="max-age=60"), "frontends.web.hsts", "only for a TLS frontend"),
    ("rate-limit-no-period", web(rate_limit={"requests": 100}), "frontends.web.rate_limit.period", "required"),
    ("tls-no-certificates", web(tls={}), "frontends.web.tls.certificates", "required"),
    ("tls-empty-certificates", web(tls={"certificates": []}), "frontends.web.tls.certificates", "at least one is required"),
    ("tls-certificates-type", web(tls={"certificates": [1]}), "frontends.web.tls.certificates", "must be a path or an array of paths, got [1]"),
    ("tls-alpn-h2", web(tls={"certificates": "a.pem", "alpn": ["h2", "http/1.1"]}), "frontends.web.tls.alpn", f'"h2" is {PLANNED}'),
    ("tls-alpn-type", web(tls={"certificates": "a.pem", "alpn": "http/1.1"}), "frontends.web.tls.alpn", 'must be an array like ["http/1.1"]'),
    ("tls-alpn-no-http11", web(tls={"certificates": "a.pem", "alpn": []}), "frontends.web.tls.alpn", 'must include "http/1.1"'),
    ("tls-min-version", web(tls={"certificates": "a.pem", "min_version": "1.1"}), "frontends.web.tls.min_version", 'must be one of "1.2", "1.3", got "1.1"'),
    ("tls-versions-backwards", web(tls={"certificates": "a.pem", "min_version": "1.3", "max_version": "1.2"}), "frontends.web.tls.max_version", "is below min_version (1.2 < 1.3)"),
    ("tls-verify-needs-ca", web(tls={"certificates": "a.pem", "verify_client": "required"}), "frontends.web.tls.client_ca", 'required when verify_client is "required"'),
    ("tls-verify-typo", web(tls={"certificates": "a.pem", "verify_client": "yes"}), "frontends.web.tls.verify_client", 'must be one of "none", "optional", "required", got "yes"'),
    ("tls-header-name", web(tls={"certificates": "a.pem", "client_cert_header": "X Bad"}), "frontends.web.tls.client_cert_header", "must be a header name"),
    ("tls-ciphersuites", web(tls={"certificates": "a.pem", "ciphersuites": "TLS_AES_128_GCM_SHA256"}), "frontends.web.tls.ciphersuites", "no API for TLS 1.3 cipher suites"),
    ("tls-typo", web(tls={"certificates": "a.pem", "min_verison": "1.2"}), "frontends.web.tls.min_verison", "unknown key (did you mean 'min_version'?)"),
    ("frontend-handshake-timeout", web(timeout_handshake="soon"), "frontends.web.timeout_handshake", 'got "soon"'),
    ("routes-type", web(routes={"backend": "app"}), "frontends.web.routes", "must be an array of tables ([[frontends.NAME.routes]])"),
    ("route-no-action", web(routes=[{"path_prefix": "/a"}]), "frontends.web.routes[0]", "needs exactly one action: backend, deny or redirect"),
    ("route-two-actions", web(routes=[{"backend": "app", "deny": 403}]), "frontends.web.routes[0]", "(has backend, deny)"),
    ("route-deny-status", web(routes=[{"deny": 200}]), "frontends.web.routes[0].deny", "must be an integer 400-499, got 200"),
    ("route-matcher-type", web(routes=[{"backend": "app", "path_prefix": 5}]), "frontends.web.routes[0].path_prefix", "must be a string or an array of strings"),
    ("route-typo", web(routes=[{"backend": "app", "path_prefx": "/a"}]), "frontends.web.routes[0].path_prefx", "unknown key (did you mean 'path_prefix'?)"),
    ("route-header-two", web(routes=[{"backend": "app", "header": {"name": "X", "value": "a", "regex": "b"}}]), "frontends.web.routes[0].header[0]", "give one of value, regex or present, not value and regex"),
    ("route-redirect-none", web(routes=[{"redirect": {"code": 301}}]), "frontends.web.routes[0].redirect", "needs exactly one of location, prefix or scheme"),
    ("route-redirect-code", web(routes=[{"redirect": {"location": "/x", "code": 200}}]), "frontends.web.routes[0].redirect.code", "must be one of 301, 302, 303, 307, 308, got 200"),
    ("route-not-typo", web(routes=[{"backend": "app", "not": {"hots": "a"}}]), "frontends.web.routes[0].not.hots", "unknown key (did you mean 'host'?)"),
    ("header-rule-shape", web(request_headers=[{"set": "X-A"}]), "frontends.web.request_headers[0].set", 'must be ["Name", "value"], got "X-A"'),
    ("header-rule-action", web(request_headers=[{"upsert": ["X-A", "1"]}]), "frontends.web.request_headers[0]", "must be one of { set = ... }"),
    ("error-page-status", web(error_pages={"200": "x.html"}), "frontends.web.error_pages.200", "the key must be a status code 400-599"),
    ("error-page-missing", web(error_pages={"503": "/nonexistent/503.html"}), "frontends.web.error_pages.503", "cannot read /nonexistent/503.html"),
    # [backends.NAME]
    ("balance-typo", app(balance="roundrobbin"), "backends.app.balance", 'got "roundrobbin" (did you mean \'roundrobin\'?)'),
    ("balance-unknown", app(balance="weighted"), "backends.app.balance", 'must be one of "roundrobin", "static-rr", "leastconn", "first", "source", "uri", "random", "url_param:NAME", "header:NAME", got "weighted"'),
    ("balance-url-param-no-name", app(balance="url_param:"), "backends.app.balance", 'needs a name after "url_param:"'),
    ("balance-header-bad-name", app(balance="header:X Y"), "backends.app.balance", 'needs a name after "header:"'),
    ("hash-type", app(hash_type="ring"), "backends.app.hash_type", 'must be one of "map-based", "consistent", got "ring"'),
    ("uri-whole", app(uri_whole="yes"), "backends.app.uri_whole", 'must be true or false, got "yes"'),
    ("backend-mode-tcp", app(mode="tcp"), "frontends.web.default_backend", "backend 'app' is in mode 'tcp', the frontend in mode 'http'"),
    ("backend-retries", app(retries=True), "backends.app.retries", "must be an integer 0-100, got true"),
    ("backend-pool", app(pool_max_idle="8"), "backends.app.pool_max_idle", 'must be an integer >= 0, got "8"'),
    ("backend-timeout", app(timeout_server=30), "backends.app.timeout_server", "got 30"),
    ("backend-limit", app(max_headers=10), "backends.app.max_headers", "unknown key"),
    ("cookie-name-required", app(cookie={"mode": "insert"}), "backends.app.cookie.name", "required"),
    ("cookie-mode", app(cookie={"name": "SRV", "mode": "inject"}), "backends.app.cookie.mode", 'must be one of "insert", "rewrite", "prefix", got "inject"'),
    ("cookie-max-age", app(cookie={"name": "SRV", "max_age": "forever"}), "backends.app.cookie.max_age", "must be a duration"),
    ("cookie-name", app(cookie={"name": "S R V"}), "backends.app.cookie.name", "must be a token"),
    ("cookie-value", server(cookie_value="a b"), "backends.app.servers[0].cookie_value", "must be a token"),
    ("health-check-type", app(health_check={"type": "icmp"}), "backends.app.health_check.type", 'must be one of "tcp", "http", "tls", "send_expect", "redis", "mysql", "smtp", got "icmp"'),
    ("health-check-status", app(health_check={"expect_status": "2xx"}), "backends.app.health_check.expect_status", 'must be status codes like "200-399" or "200,302", got "2xx"'),
    ("health-check-status-range", app(health_check={"expect_status": "99-200"}), "backends.app.health_check.expect_status", "within 100-599"),
    ("health-check-path", app(health_check={"path": "health"}), "backends.app.health_check.path", 'must be a path like "/health"'),
    ("health-check-regex", app(health_check={"expect_body_regex": "("}), "backends.app.health_check.expect_body_regex", "is not a valid regular expression"),
    ("health-check-fall", app(health_check={"fall": 0}), "backends.app.health_check.fall", "must be an integer 1-1000, got 0"),
    ("health-check-typo", app(health_check={"intervall": "1s"}), "backends.app.health_check.intervall", "unknown key (did you mean 'interval'?)"),
    ("health-check-method", app(health_check={"method": "GE T"}), "backends.app.health_check.method", "must be an HTTP method"),
    ("servers-not-array", app(servers={"name": "s1", "address": "h:1"}), "backends.app.servers", 'must be an array of tables like [{ name = "s1", address = "10.0.0.1:80" }], got { name = "s1", address = "h:1" }'),
    ("server-not-table", app(servers=[{"name": "s1", "address": "h:1"}, "h:2"]), "backends.app.servers[1]", 'must be a table like { name = "s1", address = "10.0.0.1:80" }, got "h:2"'),
    # servers
    ("weight-str", server(weight="heavy"), "backends.app.servers[0].weight", 'must be an integer 0-256, got "heavy"'),
    ("weight-high", server(weight=257), "backends.app.servers[0].weight", "must be an integer 0-256, got 257"),
    ("weight-bool", server(weight=False), "backends.app.servers[0].weight", "must be an integer 0-256, got false"),
    ("name-missing", app(servers=[{"address": "h:1"}]), "backends.app.servers[0].name", "required"),
    ("name-empty", server(name=""), "backends.app.servers[0].name", f'{NAME_RULE}, got ""'),
    ("name-space", server(name="web 1"), "backends.app.servers[0].name", f'{NAME_RULE}, got "web 1"'),
    ("name-number", server(name=1), "backends.app.servers[0].name", f"{NAME_RULE}, got 1"),
    ("address-missing", app(servers=[{"name": "s1"}]), "backends.app.servers[0].address", "required"),
    ("address-not-str", server(address=8080), "backends.app.servers[0].address", 'must be an address string like "10.0.0.1:80", got 8080'),
    ("address-any-host", server(address="*:80"), "backends.app.servers[0].address", 'a server address needs a host, got "*:80"'),
    ("address-range", server(address="h:80-81"), "backends.app.servers[0].address", "a port range is only allowed for bind addresses"),
    ("address-port-zero", server(address="h:0"), "backends.app.servers[0].address", 'needs a port 1-65535, got "h:0"'),
    ("address-v6-unbracketed", server(address="::1:80"), "backends.app.servers[0].address", "must be in brackets"),
    ("address-v4-in-brackets", server(address="[127.0.0.1]:80"), "backends.app.servers[0].address", '"127.0.0.1" is not an IPv6 address'),
    ("server-typo", server(wieght=3), "backends.app.servers[0].wieght", "unknown key (did you mean 'weight'?)"),
    ("backup-type", server(backup="yes"), "backends.app.servers[0].backup", 'must be true or false, got "yes"'),
    ("server-max-connections", server(max_connections=0), "backends.app.servers[0].max_connections", "must be an integer >= 1, got 0"),
    ("all-backups-type", app(all_backups=1), "backends.app.all_backups", "must be true or false, got 1"),
    ("max-queue", app(max_queue=-1), "backends.app.max_queue", "must be an integer >= 0, got -1"),
    ("timeout-queue", app(timeout_queue="never"), "backends.app.timeout_queue", 'got "never"'),
    ("slow-start", server(slow_start="soon"), "backends.app.servers[0].slow_start", 'got "soon"'),
    ("observe-needs-checks", app(observe="layer7"), "backends.app.observe", "needs health_check"),
    ("observe-layer", app(observe="layer5", health_check={}), "backends.app.observe", 'must be one of "layer4", "layer7", got "layer5"'),
    ("error-limit", app(error_limit=0), "backends.app.error_limit", "must be an integer 1-100000, got 0"),
    ("on-marked-down", app(on_marked_down="kill"), "backends.app.on_marked_down", 'must be one of "shutdown-sessions", got "kill"'),
    ("server-tls-type", server(tls="yes"), "backends.app.servers[0].tls", 'must be true, false or a table like { verify = true, ca = "ca.pem" }, got "yes"'),
    ("server-tls-verify", server(tls={"verify": "no"}), "backends.app.servers[0].tls.verify", 'must be true or false, got "no"'),
    ("server-tls-typo", server(tls={"snl": "a"}), "backends.app.servers[0].tls.snl", "unknown key (did you mean 'sni'?)"),
    ("send-proxy", server(send_proxy="v3"), "backends.app.servers[0].send_proxy", 'must be one of "v1", "v2", got "v3"'),
    # cross-references (model.reference_problems)
    ("default-backend-typo", web(default_backend="ap"), "frontends.web.default_backend", "no backend named 'ap' (did you mean 'app'?)"),
    ("default-backend-missing", web(default_backend=DELETE), "frontends.web.default_backend", "required: the backend that gets the traffic"),
    ("bind-missing", web(bind=DELETE), "frontends.web.bind", "at least one address is required"),
    ("bind-empty", web(bind=[]), "frontends.web.bind", "at least one address is required"),
    ("no-frontends", {"frontends": DELETE}, "frontends", "at least one frontend is required"),
    ("servers-empty", app(servers=[]), "backends.app.servers", "at least one server is required"),
    ("servers-missing", app(servers=DELETE), "backends.app.servers", "at least one server is required"),
    ("server-name-twice", app(servers=[{"name": "s", "address": "h:1"}, {"name": "s", "address": "h:2"}]), "backends.app.servers[1].name", "'s' is used twice"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "key_path", "message"),
    [pytest.param(change, path, message, id=id_) for id_, change, path, message in ONE_PROBLEM],
)
def test_one_problem(change: dict[str, Any], key_path: str, message: str) -> None:
    found = problems_of(merged(MINIMAL, change))
    assert len(found) == 1, found
    assert found[0][0] == key_path
    assert message in found[0][1]


def test_workers_auto_is_one_per_usable_cpu() -> None:
    config = loads_config('[global]\nworkers = "auto"\n' + MINIMAL_TOML.replace(":0", ":8080"))
    assert config.global_.workers == len(os.sched_getaffinity(0))


def test_several_workers_take_fixed_ports() -> None:
    config = loads_config("[global]\nworkers = 3\n" + MINIMAL_TOML.replace(":0", ":8080"))
    assert config.global_.workers == 3


def test_every_problem_is_reported_together() -> None:
    text = """
    [global]
    workers = "many"
    [defaults]
    timeout_conect = "5s"
    [frontends.web]
    bind = ["*:80", "nonsense"]
    default_backend = "wordpres"
    rate_limit = { requests = 100 }
    [backends.wordpress]
    servers = [
      { name = "wp1", address = "10.0.0.11:80", weight = 100 },
      { name = "wp1", address = "10.0.0.12:80", weight = "heavy" },
    ]
    """
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    assert [str(p) for p in info.value.problems] == [
        'global.workers: must be an integer >= 1 or "auto", got "many"',
        "defaults.timeout_conect: unknown key (did you mean 'timeout_connect'?)",
        'frontends.web.bind[1]: must be "host:port", got "nonsense" (no port)',
        "frontends.web.rate_limit.period: required",
        'backends.wordpress.servers[1].weight: must be an integer 0-256, got "heavy"',
        "frontends.web.default_backend: no backend named 'wordpres' (did you mean 'wordpress'?)",
        "backends.wordpress.servers[1].name: 'wp1' is used twice",
    ]
    assert str(info.value).count("\n") == 6  # one line a problem


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # a broken backend still answers to its name: no "no backend named 'app'" on top
        pytest.param({"backends": {"app": 5}}, ["backends.app"], id="broken-backend"),
        # a broken server keeps its place: the duplicate check does not shift indexes
        pytest.param(
            app(servers=[5, {"address": "h:1"}, {"name": "s1", "address": "h:2"}]),
            ["backends.app.servers[0]", "backends.app.servers[1].name"],
            id="broken-servers",
        ),
        # with no usable [frontends] or [backends] table, references mean nothing
        pytest.param({"frontends": 5}, ["frontends"], id="frontends-not-table"),
        pytest.param({"backends": "app"}, ["backends"], id="backends-not-table"),
        # the frontend that is not a table is not also "missing"
        pytest.param({"frontends": {"web": 1}}, ["frontends.web"], id="only-frontend-broken"),
    ],
)
def test_reference_problems_do_not_echo_structural_ones(
    change: dict[str, Any], expected: list[str]
) -> None:
    assert [path for path, _ in problems_of(merged(MINIMAL, change))] == expected


def test_structural_and_reference_problems_on_different_keys_both_show() -> None:
    found = problems_of(merged(MINIMAL, web(default_backend="nope", bind=["*:80", "*:x"])))
    assert [path for path, _ in found] == [
        "frontends.web.bind[1]",
        "frontends.web.default_backend",
    ]


def test_bound_twice_across_frontends_and_port_zero_is_never_a_collision() -> None:
    data = merged(MINIMAL, {"frontends": {"api": {"bind": ["127.0.0.1:0", "127.0.0.1:8000"]}}})
    data = merged(data, web(bind=["127.0.0.1:0", "127.0.0.1:8000-8001", "*:8000"]))
    data["frontends"]["api"]["default_backend"] = "app"
    assert problems_of(data) == [
        ("frontends.api.bind[1]", '"127.0.0.1:8000" is also bound by frontends.web.bind[1]')
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(
            {"a": [1, 2.5], "b": {"c": True}}, "{ a = [1, 2.5], b = { c = true } }", id="nested"
        ),
        pytest.param("x" * 100, '"' + "x" * 56 + "...", id="long-string-cut"),
        pytest.param('say "hi"', r'"say \"hi\""', id="escaped"),
    ],
)
def test_values_in_messages_are_shown_as_toml_writes_them(value: object, shown: str) -> None:
    assert problems_of(merged(MINIMAL, web(forwarded_for=value))) == [
        ("frontends.web.forwarded_for", f"must be true or false, got {shown}")
    ]


def test_dates_are_shown_as_toml_writes_them() -> None:
    with pytest.raises(ConfigError, match=r"must be a non-empty string, got 1979-05-27$"):
        loads_config(f"[global]\npidfile = 1979-05-27\n{MINIMAL_TOML}")


MINIMAL_TOML = """
[frontends.web]
bind = "127.0.0.1:0"
default_backend = "app"

[backends.app]
servers = [{ name = "s1", address = "127.0.0.1:8080" }]
"""


@pytest.mark.parametrize(
    ("pidfile", "base_dir", "expected"),
    [
        pytest.param("trilb.pid", Path("/etc/trilb"), "/etc/trilb/trilb.pid", id="relative"),
        pytest.param("/run/trilb.pid", Path("/etc/trilb"), "/run/trilb.pid", id="absolute"),
        pytest.param("trilb.pid", None, "trilb.pid", id="no-base-dir"),
    ],
)
def test_pidfile_resolves_against_base_dir(
    pidfile: str, base_dir: Path | None, expected: str
) -> None:
    text = f'[global]\npidfile = "{pidfile}"\n{MINIMAL_TOML}'
    assert loads_config(text, base_dir=base_dir).global_.pidfile == expected


def test_load_config_reads_a_file_relative_to_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "trilb.toml"
    path.write_text(f'[global]\npidfile = "trilb.pid"\n{MINIMAL_TOML}', encoding="utf-8")
    config = load_config(str(path))
    assert config.global_.pidfile == str(tmp_path / "trilb.pid")
    assert config == parse_config(
        merged(MINIMAL, {"global": {"pidfile": str(tmp_path / "trilb.pid")}})
    )


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (
        ConfigProblem("", f"cannot read {path}: No such file or directory"),
    )


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*: Is a directory"):
        load_config(tmp_path)


def test_load_config_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[global]\nworkers = 1\npidfile = "x\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.key_path == ""
    assert problem.message.startswith(f"{path}: invalid TOML: ")
    assert "(at line 3, column 13)" in problem.message
    assert info.value.__suppress_context__  # no chained tomllib traceback


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[global]\n# caf\xe9\npidfile = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (ConfigProblem("", f"{path}: not UTF-8 text (at line 2)"),)


def test_loads_config_syntax_error_names_source() -> None:
    with pytest.raises(ConfigError, match=r"^<string>: invalid TOML: .*\(at line 2, column 1\)"):
        loads_config("[global]\n= 1\n")
    with pytest.raises(ConfigError, match=r"^conf\.d/x\.toml: invalid TOML: "):
        loads_config("[global", source="conf.d/x.toml")


def test_loads_config_ignores_a_byte_order_mark() -> None:
    assert loads_config("\ufeff" + MINIMAL_TOML) == parse_config(MINIMAL)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("64k", 64 * 1024),
        ("64K", 64 * 1024),
        ("64kb", 64 * 1024),
        ("64KiB", 64 * 1024),
        ("2m", 2 * 1024**2),
        ("1g", 1024**3),
        ("512b", 512),
        ("512 B", 512),
    ],
)
def test_sizes(text: str, size: int) -> None:
    loaded = parse_config(merged(MINIMAL, web(max_request_body=text)))
    assert loaded.frontend("web").limits.max_request_body == size


@pytest.mark.parametrize("text", ["64i", "64ib", "64kk", "k", "-1", "1.5k"])
def test_bad_sizes(text: str) -> None:
    assert problems_of(merged(MINIMAL, web(max_request_body=text))) == [
        (
            "frontends.web.max_request_body",
            f'must be a byte count like 65536 or "64k", got "{text}"',
        )
    ]


def test_model_lookups_and_names_checked_in_code() -> None:
    config = parse_config(MINIMAL)
    with pytest.raises(KeyError):
        config.frontend("nope")
    with pytest.raises(KeyError):
        config.backend("nope")
    with pytest.raises(ConfigError) as info:
        Config(frontends=config.frontends * 2, backends=config.backends * 2)
    assert [p.key_path for p in info.value.problems] == ["frontends.web", "backends.app"]


@pytest.mark.parametrize(
    ("make", "key_path", "message"),
    [
        (lambda: ServerConfig(name="s", address="h"), "address", 'must be "host:port"'),
        (lambda: FrontendConfig(name="f", bind=["*:80", "h"]), "bind[1]", 'must be "host:port"'),
    ],
)
def test_model_converters_raise_config_error(make: Any, key_path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    (problem,) = info.value.problems
    assert problem.key_path == key_path
    assert message in problem.message


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address(host=None, port=80), "*:80"),
        (Address(host="10.0.0.1", port=80), "10.0.0.1:80"),
        (Address(host="::1", port=8443), "[::1]:8443"),
        (Address(path="/run/x.sock"), "unix:/run/x.sock"),
    ],
)
def test_address_str_round_trips(address: Address, text: str) -> None:
    assert str(address) == text
    assert FrontendConfig(name="f", bind=[text, address]).bind == (address, address)


def test_tls_table_loads_with_defaults_and_resolves_paths(tmp_path: Path) -> None:
    path = tmp_path / "trilb.toml"
    path.write_text(
        """
        [frontends.web]
        bind = "127.0.0.1:8443"
        default_backend = "app"
        timeout_handshake = "3s"
        tls = { certificates = ["certs/site.pem", "/abs/dir"], client_ca = "ca.pem", verify_client = "optional" }
        [backends.app]
        servers = [{ name = "a", address = "127.0.0.1:9000" }]
        """
    )
    frontend = load_config(path).frontend("web")
    assert frontend.timeouts.handshake == 3.0
    tls = frontend.tls
    assert tls is not None
    assert tls.certificates == (str(tmp_path / "certs/site.pem"), "/abs/dir")
    assert tls.client_ca == str(tmp_path / "ca.pem")
    assert tls.verify_client == "optional"
    assert (tls.alpn, tls.min_version, tls.max_version) == (("http/1.1",), "1.2", "1.3")
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in tls.ciphers
    assert tls.client_cert_header == "X-Client-Cert-Subject"
    assert load_config(path) == load_config(path)
    assert trilb.TLSConfig(certificates="a.pem").certificates == ("a.pem",)


def test_stickiness_and_queue_keys_load() -> None:
    config = loads_config(
        """
        [frontends.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        [backends.app]
        balance = "header:X-User"
        hash_type = "consistent"
        stick = "source"
        stick_table = { size = 10, expire = "5m" }
        cookie = { name = "SRV", mode = "prefix", max_age = "1h", secure = true }
        all_backups = true
        max_queue = 5
        timeout_queue = "2s"
        servers = [
          { name = "a", address = "127.0.0.1:9000", max_connections = 3, cookie_value = "x1" },
          { name = "b", address = "127.0.0.1:9001", backup = true },
        ]
        """
    )
    backend = config.backend("app")
    assert (backend.balance, backend.hash_type, backend.stick) == (
        "header:X-User",
        "consistent",
        "source",
    )
    assert (backend.stick_table.size, backend.stick_table.expire) == (10, 300.0)
    assert backend.cookie == trilb.CookieConfig(
        name="SRV", mode="prefix", max_age=3600, secure=True
    )
    assert (backend.all_backups, backend.max_queue, backend.timeouts.queue) == (True, 5, 2.0)
    assert backend.servers[0].max_connections == 3
    assert backend.servers[0].cookie_value == "x1"
    assert backend.servers[1].backup


def test_routes_and_header_rules_load(tmp_path: Path) -> None:
    (tmp_path / "503.html").write_text("<h1>back soon</h1>")
    path = tmp_path / "trilb.toml"
    path.write_text(
        """
        [frontends.web]
        bind = "127.0.0.1:0"
        default_backend = "app"
        unique_id = true
        error_pages = { 503 = "503.html" }
        request_headers = [{ set = ["X-Src", "%[src]"] }, { delete = "X-Debug" }]
        response_headers = [{ replace = ["Server", "nginx.*", "web"] }]
        [[frontends.web.routes]]
        name = "admin"
        backend = "admin"
        path_prefix = ["/wp-admin", "/wp-login.php"]
        header = { name = "X-Internal", present = true }
        cookie = ["session", { name = "role", value = "admin" }]
        not = { src = "10.0.0.0/8" }
        [[frontends.web.routes]]
        deny = 403
        method = "TRACE"
        [[frontends.web.routes]]
        redirect = { prefix = "https://www.example.com", code = 301, drop_query = true }
        host = "example.com"
        [backends.app]
        servers = [{ name = "a", address = "127.0.0.1:9000" }]
        [backends.admin]
        servers = [{ name = "b", address = "127.0.0.1:9001" }]
        request_headers = [{ add = ["X-Admin", "1"] }]
        """
    )
    config = load_config(path)
    web = config.frontend("web")
    admin, deny, redirect = web.routes
    assert admin.name == "admin"
    assert admin.backend == "admin"
    assert admin.match.path_prefix == ("/wp-admin", "/wp-login.php")
    assert admin.match.header == (trilb.HeaderMatch(name="X-Internal", present=True),)
    assert admin.match.cookie == (
        trilb.CookieMatch(name="session"),
        trilb.CookieMatch(name="role", value="admin"),
    )
    assert admin.match.not_ == trilb.Match(src=("10.0.0.0/8",))
    assert (deny.name, deny.deny, deny.match.method) == ("#1", 403, ("TRACE",))
    assert redirect.redirect == trilb.RedirectRule(
        prefix="https://www.example.com", code=301, drop_query=True
    )
    assert web.request_headers == (
        trilb.HeaderRule(action="set", name="X-Src", value="%[src]"),
        trilb.HeaderRule(action="delete", name="X-Debug"),
    )
    assert web.response_headers == (
        trilb.HeaderRule(action="replace", name="Server", regex="nginx.*", replacement="web"),
    )
    assert web.error_pages == {503: str(tmp_path / "503.html")}
    assert web.unique_id
    assert config.backend("admin").request_headers == (
        trilb.HeaderRule(action="add", name="X-Admin", value="1"),
    )


def test_a_route_to_a_missing_backend_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(
            """
            [frontends.web]
            bind = "127.0.0.1:0"
            default_backend = "app"
            routes = [{ backend = "admn", path_prefix = "/admin" }]
            [backends.app]
            servers = [{ name = "a", address = "127.0.0.1:9000" }]
            [backends.admin]
            servers = [{ name = "b", address = "127.0.0.1:9001" }]
            """
        )
    assert [str(p) for p in info.value.problems] == [
        "frontends.web.routes[0].backend: no backend named 'admn' (did you mean 'admin'?)"
    ]
