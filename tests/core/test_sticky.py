"""Cookie stickiness: finding the server in a request, editing cookies both ways."""

from __future__ import annotations

import pytest

from trilb.config.model import CookieMode
from trilb.core.sticky import (
    StickTable,
    StickyCookie,
    default_cookie_value,
    request_cookie,
    response_cookies,
)

SERVERS = {b"s1id": 0, b"s2id": 1}


@pytest.mark.parametrize(
    ("mode", "cookie", "expected_server", "forwarded"),
    [
        ("insert", b"SRV=s2id", 1, []),
        ("insert", b"a=1; SRV=s2id; b=2", 1, [(b"Cookie", b"a=1; b=2")]),
        ("insert", b"SRV=unknown", None, []),
        ("insert", b"a=1", None, [(b"Cookie", b"a=1")]),
        ("rewrite", b"SRV=s1id; a=1", 0, [(b"Cookie", b"SRV=s1id; a=1")]),
        ("prefix", b"SRV=s2id~sess42; a=1", 1, [(b"Cookie", b"SRV=sess42; a=1")]),
        ("prefix", b"SRV=noprefix", None, [(b"Cookie", b"SRV=noprefix")]),
        ("insert", b"SRVX=s1id", None, [(b"Cookie", b"SRVX=s1id")]),
    ],
)
def test_request_cookie(
    mode: CookieMode,
    cookie: bytes,
    expected_server: int | None,
    forwarded: list[tuple[bytes, bytes]],
) -> None:
    config = StickyCookie(name="SRV", mode=mode)
    chosen, headers = request_cookie(config, [(b"Host", b"x"), (b"Cookie", cookie)], SERVERS)
    assert chosen == expected_server
    assert headers == [(b"Host", b"x"), *forwarded]


def test_insert_adds_a_cookie_with_attributes_unless_the_request_had_it() -> None:
    config = StickyCookie(
        name="SRV", httponly=True, secure=True, max_age=3600, domain="example.com", nocache=True
    )
    base = [(b"Content-Type", b"text/html"), (b"Cache-Control", b"max-age=60")]
    out = response_cookies(config, list(base), b"s1id", request_had_it=False)
    assert (
        b"Set-Cookie",
        b"SRV=s1id; Path=/; Max-Age=3600; Domain=example.com; HttpOnly; Secure",
    ) in out
    assert (b"Cache-Control", b'private, no-cache="set-cookie"') in out
    assert (b"Cache-Control", b"max-age=60") not in out
    assert response_cookies(config, list(base), b"s1id", request_had_it=True) == base


def test_rewrite_and_prefix_edit_the_applications_cookie_only() -> None:
    headers = [(b"Set-Cookie", b"SRV=abc; Path=/; HttpOnly"), (b"Set-Cookie", b"other=1")]
    rewrite = response_cookies(
        StickyCookie(name="SRV", mode="rewrite"), list(headers), b"s2id", request_had_it=False
    )
    assert rewrite == [(b"Set-Cookie", b"SRV=s2id; Path=/; HttpOnly"), (b"Set-Cookie", b"other=1")]
    prefix = response_cookies(
        StickyCookie(name="SRV", mode="prefix"), list(headers), b"s2id", request_had_it=False
    )
    assert prefix == [
        (b"Set-Cookie", b"SRV=s2id~abc; Path=/; HttpOnly"),
        (b"Set-Cookie", b"other=1"),
    ]


def test_default_cookie_value_is_opaque_and_stable() -> None:
    value = default_cookie_value("wordpress", "wp1")
    assert value == default_cookie_value("wordpress", "wp1")
    assert value != default_cookie_value("wordpress", "wp2")
    assert "wp1" not in value
    assert len(value) == 12


def test_stick_table_expires_and_stays_bounded() -> None:
    table = StickTable(size=2, expire=10.0)
    table.store("10.0.0.1", 0, now=0.0)
    table.store("10.0.0.2", 1, now=1.0)
    assert table.lookup("10.0.0.1", now=5.0) == 0
    assert table.lookup("10.0.0.1", now=10.5) is None  # expired
    table.store("10.0.0.3", 0, now=11.0)
    table.store("10.0.0.4", 1, now=12.0)  # full: the least recently stored goes
    assert len(table) == 2
    assert table.lookup("10.0.0.2", now=12.0) is None
    assert table.lookup("10.0.0.4", now=12.0) == 1
    table.store("10.0.0.3", 1, now=13.0)  # a client moved to another server
    assert table.lookup("10.0.0.3", now=13.0) == 1
