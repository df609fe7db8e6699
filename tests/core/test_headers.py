"""trilb.core.headers: hop-by-hop removal, X-Forwarded-* and Upgrade (sans-IO, table-driven)."""

from __future__ import annotations

import pytest

from trilb.core.headers import (
    Forwarded,
    request_headers_for_server,
    response_headers_for_client,
    upgrade_offer,
)

Headers = list[tuple[bytes, bytes]]

BASE: Headers = [(b"Host", b"example.com"), (b"Accept", b"*/*")]
FORWARDED = Forwarded(client_ip="10.0.0.7", proto="http", port=8080)

HOP_BY_HOP_REQUEST = [
    (b"Connection", b"keep-alive"),
    (b"Keep-Alive", b"timeout=5"),
    (b"TE", b"trailers"),
    (b"Trailer", b"X-Checksum"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Upgrade", b"websocket"),
    (b"Proxy-Authorization", b"Basic Zm9vOmJhcg=="),
    (b"Proxy-Connection", b"keep-alive"),
    (b"Proxy-Anything", b"1"),
    (b"KEEP-ALIVE", b"timeout=5"),
    (b"connection", b"close"),
    (b"te", b"gzip"),
]


@pytest.mark.parametrize(
    "header", HOP_BY_HOP_REQUEST, ids=[n.decode() + "-" + v.decode() for n, v in HOP_BY_HOP_REQUEST]
)
def test_request_hop_by_hop_header_is_removed(header: tuple[bytes, bytes]) -> None:
    out = request_headers_for_server([*BASE, header], chunked=False, forwarded=None)
    assert out == BASE


@pytest.mark.parametrize(
    "header", HOP_BY_HOP_REQUEST, ids=[n.decode() + "-" + v.decode() for n, v in HOP_BY_HOP_REQUEST]
)
def test_response_hop_by_hop_header_is_removed(header: tuple[bytes, bytes]) -> None:
    out = response_headers_for_client([(b"Content-Length", b"3"), header])
    expected = [] if header[0].lower() == b"transfer-encoding" else [(b"Content-Length", b"3")]
    assert out == expected


@pytest.mark.parametrize(
    ("connection_headers", "removed"),
    [
        pytest.param([(b"Connection", b"x-foo")], [b"X-Foo"], id="one-token"),
        pytest.param([(b"Connection", b"X-Foo, x-bar")], [b"x-foo", b"X-Bar"], id="two-tokens"),
        pytest.param(
            [(b"Connection", b"x-foo"), (b"connection", b"X-BAR")],
            [b"X-Foo", b"x-bar"],
            id="two-connection-headers",
        ),
        pytest.param([(b"Connection", b"  x-foo  ,,close")], [b"X-Foo"], id="odd-spacing"),
    ],
)
def test_headers_named_in_connection_are_removed(
    connection_headers: Headers, removed: list[bytes]
) -> None:
    named = [(name, b"1") for name in removed]
    kept = [(b"X-Other", b"2")]
    request = request_headers_for_server(
        [*BASE, *connection_headers, *named, *kept], chunked=False, forwarded=None
    )
    assert request == [*BASE, *kept]
    response = response_headers_for_client([*connection_headers, *named, *kept])
    assert response == kept


def test_request_headers_keep_case_order_and_host() -> None:
    headers: Headers = [
        (b"hOsT", b"Example.COM:8080"),
        (b"X-Mixed-Case", b"Value"),
        (b"accept", b"text/html"),
        (b"X-Mixed-Case", b"second"),
        (b"Cookie", b"a=1"),
    ]
    assert request_headers_for_server(headers, chunked=False, forwarded=None) == headers


def test_without_forwarded_client_x_forwarded_headers_pass_unchanged() -> None:
    headers: Headers = [
        *BASE,
        (b"X-Forwarded-For", b"1.2.3.4"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"evil"),
        (b"X-Forwarded-Port", b"1"),
    ]
    assert request_headers_for_server(headers, chunked=False, forwarded=None) == headers


@pytest.mark.parametrize(
    ("client_xff", "expected_xff"),
    [
        pytest.param([], b"10.0.0.7", id="none"),
        pytest.param([(b"X-Forwarded-For", b"1.2.3.4")], b"1.2.3.4, 10.0.0.7", id="one"),
        pytest.param(
            [(b"X-Forwarded-For", b"1.2.3.4"), (b"x-forwarded-for", b"5.6.7.8, 9.9.9.9")],
            b"1.2.3.4, 5.6.7.8, 9.9.9.9, 10.0.0.7",
            id="merged",
        ),
    ],
)
def test_forwarded_for_is_appended_and_merged(client_xff: Headers, expected_xff: bytes) -> None:
    headers: Headers = [
        *BASE,
        *client_xff,
        (b"X-Forwarded-Proto", b"https"),
        (b"x-forwarded-host", b"evil.example"),
        (b"X-Forwarded-Port", b"1"),
    ]
    out = request_headers_for_server(headers, chunked=False, forwarded=FORWARDED)
    assert out == [
        *BASE,
        (b"X-Forwarded-For", expected_xff),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"example.com"),
        (b"X-Forwarded-Port", b"8080"),
    ]


def test_forwarded_https_and_no_host() -> None:
    forwarded = Forwarded(client_ip="::1", proto="https", port=443)
    out = request_headers_for_server([(b"Accept", b"*/*")], chunked=False, forwarded=forwarded)
    assert out == [
        (b"Accept", b"*/*"),
        (b"X-Forwarded-For", b"::1"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Port", b"443"),
    ]


@pytest.mark.parametrize(
    ("headers", "chunked", "expected"),
    [
        pytest.param(
            [*BASE, (b"Transfer-Encoding", b"chunked")],
            True,
            [*BASE, (b"Transfer-Encoding", b"chunked")],
            id="chunked-request-rechunked-once",
        ),
        pytest.param(
            [*BASE, (b"transfer-encoding", b"CHUNKED")],
            True,
            [*BASE, (b"Transfer-Encoding", b"chunked")],
            id="client-spelling-replaced",
        ),
        pytest.param(BASE, True, [*BASE, (b"Transfer-Encoding", b"chunked")], id="flag-only"),
        pytest.param(
            [*BASE, (b"Content-Length", b"10")],
            False,
            [*BASE, (b"Content-Length", b"10")],
            id="content-length-kept",
        ),
    ],
)
def test_request_chunked_flag(headers: Headers, chunked: bool, expected: Headers) -> None:
    assert request_headers_for_server(headers, chunked=chunked, forwarded=None) == expected


def test_chunked_comes_before_forwarded_headers() -> None:
    out = request_headers_for_server(BASE, chunked=True, forwarded=FORWARDED)
    assert [name for name, _ in out] == [
        b"Host",
        b"Accept",
        b"Transfer-Encoding",
        b"X-Forwarded-For",
        b"X-Forwarded-Proto",
        b"X-Forwarded-Host",
        b"X-Forwarded-Port",
    ]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")],
            [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")],
            id="length-kept",
        ),
        pytest.param(
            [(b"Transfer-Encoding", b"chunked"), (b"Content-Type", b"text/plain")],
            [(b"Content-Type", b"text/plain")],
            id="chunked-dropped",
        ),
        pytest.param(
            [
                (b"Content-Length", b"5"),
                (b"Transfer-Encoding", b"chunked"),
                (b"ETag", b'"x"'),
            ],
            [(b"ETag", b'"x"')],
            id="chunked-drops-content-length",
        ),
        pytest.param(
            [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")],
            [],
            id="chunked-drops-content-length-any-case",
        ),
        pytest.param(
            [(b"Connection", b"close, x-bar"), (b"X-Bar", b"1"), (b"X-Baz", b"2")],
            [(b"X-Baz", b"2")],
            id="connection-named",
        ),
        pytest.param(
            [(b"sEt-CoOkIe", b"a=1"), (b"Set-Cookie", b"b=2"), (b"X-Server", b"s1")],
            [(b"sEt-CoOkIe", b"a=1"), (b"Set-Cookie", b"b=2"), (b"X-Server", b"s1")],
            id="case-and-order-preserved",
        ),
        pytest.param([], [], id="empty"),
    ],
)
def test_response_headers_for_client(headers: Headers, expected: Headers) -> None:
    assert response_headers_for_client(headers) == expected


# -- protocol switches (Upgrade) ------------------------------------------------------------------

WS_KEY: Headers = [
    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"Sec-WebSocket-Version", b"13"),
]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], b"websocket", id="websocket"
        ),
        pytest.param(
            [(b"upgrade", b"WebSocket"), (b"CONNECTION", b"keep-alive, UPGRADE")],
            b"WebSocket",
            id="any-case-any-order",
        ),
        pytest.param(
            [(b"Connection", b"keep-alive"), (b"Connection", b"upgrade"), (b"Upgrade", b"foo/2")],
            b"foo/2",
            id="token-in-second-connection-header",
        ),
        pytest.param(
            [(b"Connection", b"upgrade"), (b"Upgrade", b"a/1, ,b"), (b"Upgrade", b" c ")],
            b"a/1, b, c",
            id="several-values-merged",
        ),
        pytest.param([(b"Upgrade", b"websocket")], None, id="not-named-in-connection"),
        pytest.param(
            [(b"Connection", b"keep-alive, x-upgrade"), (b"Upgrade", b"websocket")],
            None,
            id="other-connection-tokens-only",
        ),
        pytest.param([(b"Connection", b"Upgrade")], None, id="connection-without-upgrade-field"),
        pytest.param([(b"Connection", b"Upgrade"), (b"Upgrade", b"")], None, id="empty-upgrade"),
        pytest.param(
            [(b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c")],
            None,
            id="h2c-refused",
        ),
        pytest.param(
            [(b"Connection", b"Upgrade"), (b"Upgrade", b"H2C, websocket, HTTP/2.0, h2")],
            b"websocket",
            id="http-versions-left-out",
        ),
        pytest.param(BASE, None, id="no-upgrade"),
    ],
)
def test_upgrade_offer(headers: Headers, expected: bytes | None) -> None:
    assert upgrade_offer([*BASE, *headers]) == expected


@pytest.mark.parametrize(
    ("headers", "upgrade", "expected"),
    [
        pytest.param(
            [*BASE, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), *WS_KEY],
            b"websocket",
            [*BASE, *WS_KEY, (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")],
            id="websocket",
        ),
        pytest.param(
            [
                *BASE,
                (b"Connection", b"keep-alive, Upgrade, X-Hop, HTTP2-Settings"),
                (b"X-Hop", b"1"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Upgrade", b"h2c, websocket"),
                (b"HTTP2-Settings", b"AAMAAABkAAQAAP__"),
                (b"Proxy-Connection", b"keep-alive"),
            ],
            b"websocket",
            [*BASE, (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")],
            id="only-the-upgrade-token-survives",
        ),
        pytest.param(
            [*BASE, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")],
            None,
            BASE,
            id="no-offer-everything-hop-by-hop-removed",
        ),
    ],
)
def test_request_headers_with_upgrade(
    headers: Headers, upgrade: bytes | None, expected: Headers
) -> None:
    out = request_headers_for_server(headers, chunked=False, forwarded=None, upgrade=upgrade)
    assert out == expected


def test_request_upgrade_comes_before_forwarded_headers() -> None:
    headers = [*BASE, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    out = request_headers_for_server(
        headers, chunked=False, forwarded=FORWARDED, upgrade=b"websocket"
    )
    assert [name for name, _ in out] == [
        b"Host",
        b"Accept",
        b"Upgrade",
        b"Connection",
        b"X-Forwarded-For",
        b"X-Forwarded-Proto",
        b"X-Forwarded-Host",
        b"X-Forwarded-Port",
    ]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            [
                (b"Upgrade", b"websocket"),
                (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ],
            [
                (b"Upgrade", b"websocket"),
                (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                (b"Connection", b"Upgrade"),
            ],
            id="websocket",
        ),
        pytest.param(
            [
                (b"connection", b"upgrade, x-hop, keep-alive"),
                (b"X-Hop", b"1"),
                (b"Keep-Alive", b"timeout=5"),
                (b"UPGRADE", b"WebSocket"),
                (b"Transfer-Encoding", b"chunked"),
                (b"X-End", b"2"),
            ],
            [(b"UPGRADE", b"WebSocket"), (b"X-End", b"2"), (b"Connection", b"Upgrade")],
            id="other-hop-by-hop-still-removed",
        ),
        pytest.param([], [(b"Connection", b"Upgrade")], id="server-sent-no-upgrade-field"),
    ],
)
def test_response_headers_for_a_switch(headers: Headers, expected: Headers) -> None:
    assert response_headers_for_client(headers, upgrade=True) == expected


def test_response_upgrade_removed_without_a_switch() -> None:
    headers = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"X-End", b"1")]
    assert response_headers_for_client(headers) == [(b"X-End", b"1")]
