"""The TOML loader and the limits: ``max_connections``, ``backlog``, ``max_connections_per_src``,
``rate_limit`` (on frontends and routes) and ``timeout_tarpit``."""

# The tables of cases below read best one case a line, even when that line is long.
# ruff: noqa: E501

from __future__ import annotations

import copy
from typing import Any

import pytest

import trilb
from trilb.config import (
    BackendConfig,
    Config,
    FrontendConfig,
    RateLimit,
    Route,
    ServerConfig,
    Timeouts,
    loads_config,
    parse_config,
)
from trilb.errors import ConfigError
from trilb.net import BACKLOG

FULL = """
[defaults]
timeout_tarpit = "2s"

[frontends.web]
bind = "127.0.0.1:8080"
default_backend = "app"
max_connections = 500
backlog = 4096
max_connections_per_src = 20
rate_limit = { requests = 100, period = "10s", key = "src", action = "deny", status = 429 }

[[frontends.web.routes]]
name = "login"
path_prefix = "/login"
backend = "app"
rate_limit = { requests = 5, period = "1m", key = "cookie:session", action = "tarpit", status = 503, size = 1000 }

[frontends.api]
bind = "127.0.0.1:8081"
default_backend = "app"
timeout_tarpit = "300ms"
rate_limit = { requests = 10, period = "1s", key = "header:X-Api-Key" }

[backends.app]
servers = [{ name = "a", address = "127.0.0.1:9000" }]
"""


def test_the_keys_load_into_the_model() -> None:
    config = loads_config(FULL)
    web = config.frontend("web")
    assert (web.max_connections, web.backlog, web.max_connections_per_src) == (500, 4096, 20)
    assert web.rate_limit == RateLimit(
        requests=100, period=10.0, key="src", action="deny", status=429
    )
    assert web.timeouts.tarpit == 2.0  # from [defaults]
    assert web.routes[0].rate_limit == RateLimit(
        requests=5, period=60.0, key="cookie:session", action="tarpit", status=503, size=1000
    )
    api = config.frontend("api")
    assert api.rate_limit == RateLimit(requests=10, period=1.0, key="header:X-Api-Key")
    assert api.timeouts.tarpit == 0.3
    assert (api.max_connections, api.backlog, api.max_connections_per_src) == (None, BACKLOG, None)


def test_defaults() -> None:
    frontend = FrontendConfig(name="f", bind="127.0.0.1:0")
    assert frontend.max_connections is None
    assert frontend.max_connections_per_src is None
    assert frontend.rate_limit is None
    assert frontend.backlog == BACKLOG == 1024
    assert Timeouts().tarpit == 5.0
    limit = RateLimit(requests=1, period=1.0)
    assert (limit.key, limit.action, limit.status, limit.size) == ("src", "deny", 429, 100_000)
    assert Route(name="r").rate_limit is None
    assert trilb.RateLimit is RateLimit


MINIMAL: dict[str, Any] = {
    "frontends": {"web": {"bind": "127.0.0.1:8080", "default_backend": "app"}},
    "backends": {"app": {"servers": [{"name": "a", "address": "127.0.0.1:9000"}]}},
}


def with_web(**keys: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    data["frontends"]["web"].update(keys)
    return data


def limit(**keys: Any) -> dict[str, Any]:
    return with_web(rate_limit={"requests": 10, "period": "1s", **keys})


def route(**keys: Any) -> dict[str, Any]:
    return with_web(routes=[{"backend": "app", **keys}])


def problems_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return [(p.key_path, p.message) for p in info.value.problems]


# (the config, the one problem's key path, a distinctive part of its message)
ONE_PROBLEM: list[tuple[str, dict[str, Any], str, str]] = [
    ("max-connections-zero", with_web(max_connections=0), "frontends.web.max_connections", "must be an integer >= 1, got 0"),
    ("max-connections-string", with_web(max_connections="10"), "frontends.web.max_connections", 'must be an integer >= 1, got "10"'),
    ("backlog-zero", with_web(backlog=0), "frontends.web.backlog", "must be an integer 1-65535, got 0"),
    ("backlog-huge", with_web(backlog=70000), "frontends.web.backlog", "must be an integer 1-65535, got 70000"),
    ("per-src-bool", with_web(max_connections_per_src=True), "frontends.web.max_connections_per_src", "must be an integer >= 1, got true"),
    ("per-src-typo", with_web(max_connection_per_src=2), "frontends.web.max_connection_per_src", "unknown key (did you mean 'max_connections_per_src'?)"),
    ("tarpit-number", with_web(timeout_tarpit=5), "frontends.web.timeout_tarpit", 'must be a duration string like "5s"'),
    ("tarpit-zero", with_web(timeout_tarpit="0s"), "frontends.web.timeout_tarpit", 'must be longer than 0, got "0s"'),
    ("not-a-table", with_web(rate_limit=100), "frontends.web.rate_limit", 'must be a table like { requests = 100, period = "10s" }, got 100'),
    ("no-requests", with_web(rate_limit={"period": "1s"}), "frontends.web.rate_limit.requests", "required"),
    ("no-period", with_web(rate_limit={"requests": 1}), "frontends.web.rate_limit.period", "required"),
    ("requests-zero", limit(requests=0), "frontends.web.rate_limit.requests", "must be an integer >= 1, got 0"),
    ("requests-float", limit(requests=1.5), "frontends.web.rate_limit.requests", "must be an integer >= 1, got 1.5"),
    ("period-number", limit(period=10), "frontends.web.rate_limit.period", 'must be a duration string like "5s" or "250ms", got 10'),
    ("period-zero", limit(period="0s"), "frontends.web.rate_limit.period", 'must be longer than 0, got "0s"'),
    ("period-bad", limit(period="10 parsecs"), "frontends.web.rate_limit.period", 'must be a duration like "250ms"'),
    ("key-unknown", limit(key="ip"), "frontends.web.rate_limit.key", 'must be "src", "header:NAME" or "cookie:NAME", got "ip"'),
    ("key-no-name", limit(key="header:"), "frontends.web.rate_limit.key", 'needs a header name after "header:", got "header:"'),
    ("key-bad-name", limit(key="cookie:a b"), "frontends.web.rate_limit.key", 'needs a cookie name after "cookie:", got "cookie:a b"'),
    ("key-number", limit(key=1), "frontends.web.rate_limit.key", 'must be "src", "header:NAME" or "cookie:NAME", got 1'),
    ("action-unknown", limit(action="drop"), "frontends.web.rate_limit.action", 'must be one of "deny", "tarpit", got "drop"'),
    ("action-typo", limit(action="tarpitt"), "frontends.web.rate_limit.action", "(did you mean 'tarpit'?)"),
    ("status-2xx", limit(status=200), "frontends.web.rate_limit.status", "must be a 4xx or 5xx status like 429 or 503, got 200"),
    ("status-unknown", limit(status=499), "frontends.web.rate_limit.status", "got 499"),
    ("status-string", limit(status="429"), "frontends.web.rate_limit.status", 'got "429"'),
    ("size-zero", limit(size=0), "frontends.web.rate_limit.size", "must be an integer >= 1, got 0"),
    ("limit-typo", limit(requets=5), "frontends.web.rate_limit.requets", "unknown key (did you mean 'requests'?)"),
    ("route-limit", route(rate_limit={"requests": 0, "period": "1s"}), "frontends.web.routes[0].rate_limit.requests", "must be an integer >= 1, got 0"),
    ("route-limit-type", route(rate_limit="5/s"), "frontends.web.routes[0].rate_limit", "must be a table like"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "key_path", "message"),
    [pytest.param(data, path, message, id=id_) for id_, data, path, message in ONE_PROBLEM],
)
def test_one_problem(data: dict[str, Any], key_path: str, message: str) -> None:
    found = problems_of(data)
    assert len(found) == 1, found
    assert found[0][0] == key_path
    assert message in found[0][1]


def test_every_problem_of_a_rate_limit_together() -> None:
    found = problems_of(
        limit(requests=-1, period=3, key="x", action=1, status=600, size=False, extra=1)
    )
    assert [path for path, _ in found] == [
        f"frontends.web.rate_limit.{key}"
        for key in ("requests", "period", "key", "action", "status", "size", "extra")
    ]


def test_tcp_mode_has_no_rate_limit() -> None:
    """A TCP frontend has no requests to count: it caps clients with max_connections_per_src."""
    data = with_web(
        mode="tcp",
        rate_limit={"requests": 1, "period": "1s"},
        max_connections_per_src=2,
        max_connections=10,
        routes=[
            {"src": "10.0.0.0/8", "backend": "app", "rate_limit": {"requests": 1, "period": "1s"}}
        ],
    )
    data["backends"]["app"]["mode"] = "tcp"
    assert problems_of(data) == [
        ("frontends.web.rate_limit", 'is for mode "http" (this is "tcp")'),
        ("frontends.web.routes[0].rate_limit", 'is for mode "http" (this is "tcp")'),
    ]
    del data["frontends"]["web"]["rate_limit"]
    del data["frontends"]["web"]["routes"]
    frontend = parse_config(data).frontend("web")
    assert (frontend.max_connections_per_src, frontend.max_connections) == (2, 10)


def test_limits_built_in_code_are_checked() -> None:
    bad = RateLimit(requests=0, period=0.0, key="header", action="drop", status=200, size=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        Config(
            frontends=[
                FrontendConfig(
                    name="web",
                    bind="127.0.0.1:0",
                    default_backend="app",
                    max_connections=0,
                    backlog=0,
                    max_connections_per_src=-1,
                    rate_limit=bad,
                    routes=[
                        Route(
                            name="r",
                            backend="app",
                            rate_limit=RateLimit(requests=1, period=1.0, key="cookie:"),
                        )
                    ],
                )
            ],
            backends=[
                BackendConfig(name="app", servers=[ServerConfig(name="a", address="127.0.0.1:1")])
            ],
        )
    assert [p.key_path for p in info.value.problems] == [
        "frontends.web.max_connections",
        "frontends.web.max_connections_per_src",
        "frontends.web.backlog",
        *(
            f"frontends.web.rate_limit.{key}"
            for key in ("requests", "period", "key", "action", "status", "size")
        ),
        "frontends.web.routes[0].rate_limit.key",
    ]
