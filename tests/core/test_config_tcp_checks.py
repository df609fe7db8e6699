"""``health_check`` keys of the protocol-aware TCP checks (send_expect, redis, mysql, smtp): read
into the model, and every problem reported with its key path -- keys of another type included."""

# The tables of cases below read best one case a line, even when that line is long.
# ruff: noqa: E501

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trilb.cli import main
from trilb.config import HealthCheck, loads_config, parse_config
from trilb.errors import ConfigError

HEAD = """
[frontends.web]
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "db"

[backends.db]
mode = "tcp"
servers = [{ name = "s1", address = "127.0.0.1:3306" }]
"""


def check_of(toml: str) -> HealthCheck:
    """The health check of backend ``db`` given ``health_check = ...`` as TOML."""
    check = loads_config(HEAD + f"health_check = {toml}\n").backends[0].health_check
    assert check is not None
    return check


def problems_of(health_check: dict[str, Any]) -> list[tuple[str, str]]:
    data = {
        "frontends": {"web": {"bind": "127.0.0.1:0", "default_backend": "db"}},
        "backends": {
            "db": {
                "servers": [{"name": "s1", "address": "127.0.0.1:3306"}],
                "health_check": health_check,
            }
        },
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return [(p.key_path, p.message) for p in info.value.problems]


KEY = "backends.db.health_check"


# -- what loads -----------------------------------------------------------------------------------


def test_send_expect_keys_load() -> None:
    check = check_of(
        r'{ type = "send_expect", send = "PING\r\n", expect = "+PONG", timeout = "2s" }'
    )
    assert (check.type, check.send, check.expect, check.expect_regex) == (
        "send_expect",
        b"PING\r\n",
        b"+PONG",
        None,
    )
    assert check.timeout == 2.0
    # binary, both ways
    check = check_of(r'{ type = "send_expect", send_hex = "00 01 ff", expect_hex = "DEADbeef" }')
    assert (check.send, check.expect) == (b"\x00\x01\xff", b"\xde\xad\xbe\xef")
    # a server that speaks first: nothing to send; a regular expression (TOML literal string)
    check = check_of(r"""{ type = "send_expect", expect_regex = '^SSH-2\.0-' }""")
    assert (check.send, check.expect, check.expect_regex) == (None, None, r"^SSH-2\.0-")
    # non-ASCII text is sent and expected as UTF-8
    check = check_of('{ type = "send_expect", send = "é", expect = "ü" }')
    assert (check.send, check.expect) == ("é".encode(), "ü".encode())


def test_redis_smtp_mysql_keys_load() -> None:
    assert check_of('{ type = "redis" }') == HealthCheck(type="redis")
    assert check_of('{ type = "smtp" }').domain == "localhost"
    assert check_of('{ type = "smtp", domain = "lb1.example.com" }').domain == "lb1.example.com"
    assert check_of('{ type = "smtp", domain = "[10.0.0.5]" }').domain == "[10.0.0.5]"
    check = check_of('{ type = "mysql" }')
    assert (check.user, check.post_41) == (None, True)
    check = check_of('{ type = "mysql", user = "haproxy_check" }')
    assert (check.user, check.post_41) == ("haproxy_check", True)
    check = check_of('{ type = "mysql", user = "haproxy_check", post_41 = false }')
    assert (check.user, check.post_41) == ("haproxy_check", False)


def test_tls_check_in_a_tcp_backend_loads() -> None:
    assert check_of('{ type = "tls", interval = "1s" }').type == "tls"


# -- problems -------------------------------------------------------------------------------------

# (health_check, the one problem's key path under backends.db.health_check, its message)
ONE_PROBLEM: list[tuple[str, dict[str, Any], str, str]] = [
    ("type", {"type": "postgres"}, "type", 'must be one of "tcp", "http", "tls", "send_expect", "redis", "mysql", "smtp", got "postgres"'),
    ("type-typo", {"type": "reddis"}, "type", "(did you mean 'redis'?)"),
    ("expect-required", {"type": "send_expect", "send": "PING\r\n"}, "expect", 'required for type "send_expect" (or expect_hex, expect_regex)'),
    ("send-twice", {"type": "send_expect", "send": "a", "send_hex": "61", "expect": "b"}, "send_hex", "give send or send_hex, not both"),
    ("expect-twice", {"type": "send_expect", "expect": "a", "expect_hex": "61"}, "expect_hex", "give expect or expect_hex, not both"),
    ("send-empty", {"type": "send_expect", "send": "", "expect": "b"}, "send", 'must be a non-empty string, got ""'),
    ("send-number", {"type": "send_expect", "send": 1, "expect": "b"}, "send", "must be a non-empty string, got 1"),
    ("send-hex-odd", {"type": "send_expect", "send_hex": "abc", "expect": "b"}, "send_hex", 'must be bytes in hex like "0d0a" or "50 49 4e 47", got "abc"'),
    ("send-hex-not-hex", {"type": "send_expect", "send_hex": "zz", "expect": "b"}, "send_hex", 'must be bytes in hex like "0d0a" or "50 49 4e 47", got "zz"'),
    ("send-hex-empty", {"type": "send_expect", "send_hex": " ", "expect": "b"}, "send_hex", "must be bytes in hex"),
    ("expect-hex-array", {"type": "send_expect", "expect_hex": [1]}, "expect_hex", "must be bytes in hex"),
    ("expect-regex", {"type": "send_expect", "expect_regex": "("}, "expect_regex", "is not a valid regular expression (missing ), unterminated subpattern at position 0)"),
    # valid for a str pattern, not for bytes: the answer is matched as bytes
    ("expect-regex-bytes", {"type": "send_expect", "expect_regex": r"\u00e9"}, "expect_regex", r"is not a valid regular expression (bad escape \u at position 0)"),
    ("user-empty", {"type": "mysql", "user": ""}, "user", 'must be a non-empty string, got ""'),
    ("user-nul", {"type": "mysql", "user": "a\x00b"}, "user", "must be a MySQL user name (1-80 characters, no NUL)"),
    ("user-long", {"type": "mysql", "user": "u" * 81}, "user", "must be a MySQL user name (1-80 characters, no NUL)"),
    ("post-41-type", {"type": "mysql", "user": "u", "post_41": "yes"}, "post_41", 'must be true or false, got "yes"'),
    ("post-41-alone", {"type": "mysql", "post_41": False}, "post_41", "only with user: it chooses the login packet"),
    ("domain-space", {"type": "smtp", "domain": "lb 1"}, "domain", 'must be a domain or an address literal like "lb1.example.com" or "[10.0.0.5]", got "lb 1"'),
    ("domain-crlf", {"type": "smtp", "domain": "x\r\nRCPT TO:<a@b>"}, "domain", "must be a domain or an address literal"),
    ("domain-empty", {"type": "smtp", "domain": ""}, "domain", "must be a domain or an address literal"),
    # keys of another type
    ("path-redis", {"type": "redis", "path": "/health"}, "path", 'is for type "http" (this is "redis")'),
    ("user-http", {"type": "http", "user": "haproxy_check"}, "user", 'is for type "mysql" (this is "http")'),
    ("domain-mysql", {"type": "mysql", "domain": "x"}, "domain", 'is for type "smtp" (this is "mysql")'),
    ("expect-smtp", {"type": "smtp", "expect": "250"}, "expect", 'is for type "send_expect" (this is "smtp")'),
    ("expect-status-tls", {"type": "tls", "expect_status": "200"}, "expect_status", 'is for type "http" (this is "tls")'),
    ("send-default-type", {"send": "PING"}, "send", 'is for type "send_expect" (this is "tcp", the default)'),
    ("expect-body-send-expect", {"type": "send_expect", "expect": "x", "expect_body": "x"}, "expect_body", 'is for type "http" (this is "send_expect")'),
    # one problem at a time: a bad value of a key of another type, or a bad type
    ("bad-value-other-type", {"type": "redis", "path": "health"}, "path", 'must be a path like "/health"'),
    ("bad-type-other-keys", {"type": "pgsql", "user": "u", "path": "/"}, "type", 'must be one of "tcp"'),
    ("typo", {"type": "mysql", "usr": "u"}, "usr", "unknown key (did you mean 'user'?)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("health_check", "key", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in ONE_PROBLEM],
)
def test_one_problem(health_check: dict[str, Any], key: str, message: str) -> None:
    found = problems_of(health_check)
    assert len(found) == 1, found
    assert found[0][0] == f"{KEY}.{key}"
    assert message in found[0][1]


def test_every_problem_at_once() -> None:
    found = problems_of(
        {"type": "send_expect", "send_hex": "x", "path": "/", "user": "u", "domain": "a b"}
    )
    assert found == [
        (f"{KEY}.send_hex", 'must be bytes in hex like "0d0a" or "50 49 4e 47", got "x"'),
        (f"{KEY}.domain", 'must be a domain or an address literal like "lb1.example.com" or "[10.0.0.5]", got "a b"'),
        (f"{KEY}.path", 'is for type "http" (this is "send_expect")'),
        (f"{KEY}.user", 'is for type "mysql" (this is "send_expect")'),
        (f"{KEY}.expect", 'required for type "send_expect" (or expect_hex, expect_regex)'),
    ]  # fmt: skip


def test_trilb_check_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trilb.toml"
    path.write_text(HEAD + 'health_check = { type = "redis", user = "haproxy_check" }\n')
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert 'backends.db.health_check.user: is for type "mysql" (this is "redis")' in err
    path.write_text(HEAD + 'health_check = { type = "mysql", user = "haproxy_check" }\n')
    assert main(["check", str(path)]) == 0
