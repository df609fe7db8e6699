"""The TOML loader and TCP mode (``mode = "tcp"``), the PROXY protocol keys (``accept_proxy``,
``trusted_proxies``, ``send_proxy``) and what a TCP frontend or backend may not have."""

# The tables of cases below read best one case a line, even when that line is long.
# ruff: noqa: E501

from __future__ import annotations

from pathlib import Path

import pytest

from trilb.config import (
    Address,
    Match,
    Route,
    ServerConfig,
    loads_config,
)
from trilb.errors import ConfigError

FULL_TCP = """
[defaults]
timeout_client = "40s"
timeout_server = "50s"

[frontends.db]
bind = "127.0.0.1:3306"
mode = "tcp"
default_backend = "mysql"
accept_proxy = true
trusted_proxies = ["10.0.0.0/8", "::1", "192.168.1.7"]
timeout_tunnel = "2h"
routes = [
  { sni = ["a.example", "*.b.example"], backend = "mysql" },
  { src = "192.168.0.0/16", backend = "replicas" },
  { name = "not-a", not = { sni = "a.example" }, backend = "replicas" },
]

[frontends.tls_db]
bind = "127.0.0.1:3307"
mode = "tcp"
default_backend = "replicas"
tls = { certificates = "certs/db.pem", alpn = [] }

[frontends.web]
bind = "127.0.0.1:8080"
default_backend = "http_app"
accept_proxy = true

[backends.mysql]
mode = "tcp"
balance = "leastconn"
servers = [
  { name = "m1", address = "10.0.0.1:3306", send_proxy = "v1" },
  { name = "m2", address = "10.0.0.2:3306", send_proxy = "v2", max_connections = 10 },
]

[backends.replicas]
mode = "tcp"
balance = "source"
servers = [{ name = "r1", address = "10.0.1.1:3306" }]

[backends.http_app]
servers = [{ name = "h1", address = "10.0.2.1:80", send_proxy = "v2" }]
"""


def test_full_tcp_config_loads() -> None:
    config = loads_config(FULL_TCP, base_dir=Path("/etc/trilb"))

    db = config.frontend("db")
    assert db.mode == "tcp"
    assert db.accept_proxy is True
    assert db.trusted_proxies == ("10.0.0.0/8", "::1", "192.168.1.7")
    assert db.timeouts.tunnel == 7200.0
    assert db.timeouts.tunnel_or(db.timeouts.client) == 7200.0
    assert db.tls is None
    assert db.routes == (
        Route(name="#0", match=Match(sni=("a.example", "*.b.example")), backend="mysql"),
        Route(name="#1", match=Match(src=("192.168.0.0/16",)), backend="replicas"),
        Route(name="not-a", match=Match(not_=Match(sni=("a.example",))), backend="replicas"),
    )

    tls_db = config.frontend("tls_db")
    assert tls_db.mode == "tcp"
    assert tls_db.tls is not None
    assert tls_db.tls.alpn == ()  # no "http/1.1" needed in TCP mode
    assert tls_db.tls.certificates == ("/etc/trilb/certs/db.pem",)
    assert tls_db.accept_proxy is False
    assert tls_db.trusted_proxies == ()

    web = config.frontend("web")
    assert (web.mode, web.accept_proxy, web.trusted_proxies) == ("http", True, ())

    mysql = config.backend("mysql")
    assert (mysql.mode, mysql.balance) == ("tcp", "leastconn")
    assert mysql.servers == (
        ServerConfig(name="m1", address=Address(host="10.0.0.1", port=3306), send_proxy="v1"),
        ServerConfig(
            name="m2",
            address=Address(host="10.0.0.2", port=3306),
            send_proxy="v2",
            max_connections=10,
        ),
    )
    assert config.backend("replicas").balance == "source"
    assert config.backend("replicas").servers[0].send_proxy is None
    assert config.backend("http_app").servers[0].send_proxy == "v2"
    assert config.backend("http_app").mode == "http"


def test_timeout_tunnel_unset_is_none() -> None:
    config = loads_config(FULL_TCP)
    tls_db = config.frontend("tls_db")
    assert tls_db.timeouts.tunnel is None
    # a TCP connection then idles out by timeout_client / timeout_server, as in HAProxy
    assert tls_db.timeouts.tunnel_or(tls_db.timeouts.client) == 40.0
    mysql = config.backend("mysql")
    assert mysql.timeouts.tunnel is None
    assert mysql.timeouts.tunnel_or(mysql.timeouts.server) == 50.0


def test_timeout_tunnel_from_defaults_reaches_tcp_sections() -> None:
    config = loads_config(FULL_TCP.replace('timeout_server = "50s"', 'timeout_tunnel = "90s"'))
    assert config.frontend("tls_db").timeouts.tunnel == 90.0
    assert config.backend("mysql").timeouts.tunnel == 90.0


# -- one problem at a time ------------------------------------------------------------------------

#: one TCP frontend ("db") and one TCP backend ("pg"), valid as they are
TCP_BASE = """
[frontends.db]
bind = "127.0.0.1:5432"
mode = "tcp"
default_backend = "pg"
{frontend}

[backends.pg]
mode = "tcp"
servers = [{{ name = "p1", address = "127.0.0.1:5433" }}]
{backend}
"""

HTTP_ONLY = 'is for mode "http" (this is "tcp")'


def problems(frontend: str = "", backend: str = "", extra: str = "") -> list[tuple[str, str]]:
    text = TCP_BASE.format(frontend=frontend, backend=backend) + extra
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    return [(p.key_path, p.message) for p in info.value.problems]


def test_the_base_is_valid() -> None:
    config = loads_config(TCP_BASE.format(frontend="", backend=""))
    assert config.frontend("db").mode == "tcp"
    assert config.backend("pg").balance == "roundrobin"


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("forwarded_for = true", "forwarded_for"),
        ("redirect_https = { port = 443 }", "redirect_https"),
        ('request_headers = [{ set = ["X-A", "1"] }]', "request_headers"),
        ('response_headers = [{ delete = "Server" }]', "response_headers"),
        ("unique_id = true", "unique_id"),
        ("allow_connect = true", "allow_connect"),
    ],
)
def test_tcp_frontend_refuses_http_keys(line: str, key: str) -> None:
    assert problems(frontend=line) == [(f"frontends.db.{key}", HTTP_ONLY)]


def test_tcp_frontend_refuses_http_defaults() -> None:
    """``forwarded_for`` in [defaults] is inherited like any key, so a TCP frontend that gets it
    is reported (on its own key path: the defaults themselves are fine)."""
    text = "[defaults]\nforwarded_for = true\n" + TCP_BASE.format(frontend="", backend="")
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    assert [(p.key_path, p.message) for p in info.value.problems] == [
        ("frontends.db.forwarded_for", HTTP_ONLY)
    ]


def test_tcp_route_with_path_prefix() -> None:
    found = problems(frontend='routes = [{ path_prefix = "/api", backend = "pg" }]')
    assert found == [
        (
            "frontends.db.routes[0].path_prefix",
            'looks into HTTP requests: a "tcp" frontend routes on sni and src',
        )
    ]


@pytest.mark.parametrize("matcher", ['host = "a.example"', 'method = "GET"', 'cookie = "SID"'])
def test_tcp_route_with_other_http_matchers(matcher: str) -> None:
    key = matcher.split(" ")[0]
    found = problems(frontend=f'routes = [{{ sni = "x.example", {matcher}, backend = "pg" }}]')
    assert found == [
        (
            f"frontends.db.routes[0].{key}",
            'looks into HTTP requests: a "tcp" frontend routes on sni and src',
        )
    ]


def test_tcp_route_with_http_matcher_inside_not() -> None:
    found = problems(frontend='routes = [{ not = { path_exact = "/" }, backend = "pg" }]')
    assert [path for path, _ in found] == ["frontends.db.routes[0].path_exact"]


def test_tcp_route_with_deny() -> None:
    found = problems(frontend='routes = [{ sni = "x.example", deny = 403 }]')
    assert found == [
        ("frontends.db.routes[0]", 'a "tcp" frontend\'s routes can only choose a backend')
    ]


def test_tcp_route_with_redirect() -> None:
    found = problems(frontend='routes = [{ sni = "x.example", redirect = { scheme = "https" } }]')
    assert found == [
        ("frontends.db.routes[0]", 'a "tcp" frontend\'s routes can only choose a backend')
    ]


def test_tcp_route_to_an_http_backend() -> None:
    extra = '\n[backends.web]\nservers = [{ name = "w1", address = "127.0.0.1:80" }]\n'
    found = problems(frontend='routes = [{ sni = "x.example", backend = "web" }]', extra=extra)
    assert found == [
        (
            "frontends.db.routes[0].backend",
            "backend 'web' is in mode 'http', the frontend in mode 'tcp'",
        )
    ]


@pytest.mark.parametrize("balance", ["uri", "url_param:id", "header:Host"])
def test_tcp_backend_refuses_http_balance(balance: str) -> None:
    found = problems(backend=f'balance = "{balance}"')
    assert len(found) == 1, found
    path, message = found[0]
    assert path == "backends.pg.balance"
    assert message.startswith(f'"{balance}" hashes HTTP requests: not for mode "tcp"')
    assert "source" in message


@pytest.mark.parametrize(
    "balance", ["roundrobin", "static-rr", "leastconn", "first", "source", "random"]
)
def test_tcp_backend_takes_l4_balance(balance: str) -> None:
    config = loads_config(TCP_BASE.format(frontend="", backend=f'balance = "{balance}"'))
    assert config.backend("pg").balance == balance


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('cookie = { name = "SRV" }', "cookie"),
        ('request_headers = [{ set = ["X-A", "1"] }]', "request_headers"),
        ('response_headers = [{ delete = "Server" }]', "response_headers"),
    ],
)
def test_tcp_backend_refuses_http_keys(line: str, key: str) -> None:
    assert problems(backend=line) == [(f"backends.pg.{key}", HTTP_ONLY)]


def test_http_frontend_route_to_a_tcp_backend() -> None:
    extra = """
[frontends.web]
bind = "127.0.0.1:8080"
default_backend = "app"
routes = [{ path_prefix = "/db", backend = "pg" }]

[backends.app]
servers = [{ name = "a1", address = "127.0.0.1:81" }]
"""
    found = problems(extra=extra)
    assert found == [
        (
            "frontends.web.routes[0].backend",
            "backend 'pg' is in mode 'tcp', the frontend in mode 'http'",
        )
    ]


def test_http_frontend_default_backend_in_tcp_mode() -> None:
    extra = '\n[frontends.web]\nbind = "127.0.0.1:8080"\ndefault_backend = "pg"\n'
    assert problems(extra=extra) == [
        (
            "frontends.web.default_backend",
            "backend 'pg' is in mode 'tcp', the frontend in mode 'http'",
        )
    ]


def test_tcp_frontend_to_an_http_backend() -> None:
    text = TCP_BASE.format(frontend="", backend="").replace('mode = "tcp"\nservers', "servers")
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    assert [(p.key_path, p.message) for p in info.value.problems] == [
        (
            "frontends.db.default_backend",
            "backend 'pg' is in mode 'http', the frontend in mode 'tcp'",
        )
    ]


def test_http_frontend_tls_still_needs_http11_alpn_tcp_does_not() -> None:
    extra = """
[frontends.web]
bind = "127.0.0.1:8443"
default_backend = "app"
tls = { certificates = "x.pem", alpn = [] }

[backends.app]
servers = [{ name = "a1", address = "127.0.0.1:81" }]
"""
    found = problems(frontend='tls = { certificates = "x.pem", alpn = [] }', extra=extra)
    assert found == [("frontends.web.tls.alpn", 'must include "http/1.1"')]


@pytest.mark.parametrize(
    ("line", "key_path", "message"),
    [
        ('send_proxy = "v3"', "backends.pg.servers[0].send_proxy", 'must be one of "v1", "v2", got "v3"'),
        ("send_proxy = 2", "backends.pg.servers[0].send_proxy", 'must be one of "v1", "v2", got 2'),
        ("send_proxy = true", "backends.pg.servers[0].send_proxy", 'must be one of "v1", "v2", got true'),
    ],
)  # fmt: skip
def test_send_proxy_values(line: str, key_path: str, message: str) -> None:
    text = TCP_BASE.format(frontend="", backend="").replace(
        'address = "127.0.0.1:5433" }', f'address = "127.0.0.1:5433", {line} }}'
    )
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    found = [(p.key_path, p.message) for p in info.value.problems]
    assert len(found) == 1, found
    assert found[0][0] == key_path
    assert message in found[0][1]


@pytest.mark.parametrize(
    ("lines", "key_path", "message"),
    [
        ('accept_proxy = "yes"', "frontends.db.accept_proxy", 'must be true or false, got "yes"'),
        ('trusted_proxies = ["127.0.0.1"]', "frontends.db.trusted_proxies", "only with accept_proxy = true"),
        ('accept_proxy = true\ntrusted_proxies = ["localhost"]', "frontends.db.trusted_proxies", "'localhost' is not an IP address or CIDR range"),
        ('accept_proxy = true\ntrusted_proxies = "10.0.0.0/8x"', "frontends.db.trusted_proxies", "'10.0.0.0/8x' is not an IP address or CIDR range"),
    ],
)  # fmt: skip
def test_proxy_protocol_frontend_keys(lines: str, key_path: str, message: str) -> None:
    found = problems(frontend=lines)
    assert len(found) == 1, found
    assert found[0][0] == key_path
    assert message in found[0][1]


def test_trusted_proxies_as_one_string() -> None:
    config = loads_config(
        TCP_BASE.format(frontend='accept_proxy = true\ntrusted_proxies = "10.1.0.0/16"', backend="")
    )
    assert config.frontend("db").trusted_proxies == ("10.1.0.0/16",)


def test_every_tcp_problem_is_reported_together() -> None:
    found = problems(
        frontend='forwarded_for = true\nroutes = [{ path_prefix = "/a", backend = "pg" }, '
        '{ sni = "x.example", deny = 400 }]',
        backend='balance = "uri"\ncookie = { name = "S" }',
    )
    assert [path for path, _ in found] == [
        "frontends.db.forwarded_for",
        "frontends.db.routes[0].path_prefix",
        "frontends.db.routes[1]",
        "backends.pg.balance",
        "backends.pg.cookie",
    ]
