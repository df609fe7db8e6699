"""trilb.core.http1: response framing, persistence and the bytes the proxy writes."""

from __future__ import annotations

import pytest

from trilb.core.http1 import (
    LAST_CHUNK,
    Framing,
    client_keeps_alive,
    encode_chunk,
    request_head,
    response_framing,
    response_head,
)

Headers = list[tuple[bytes, bytes]]

CL5: Headers = [(b"content-length", b"5")]
CHUNKED: Headers = [(b"transfer-encoding", b"chunked")]


@pytest.mark.parametrize(
    ("method", "status", "headers", "expected"),
    [
        pytest.param(b"HEAD", 200, CL5, (Framing.NONE, 0), id="head-with-length"),
        pytest.param(b"HEAD", 200, CHUNKED, (Framing.NONE, 0), id="head-chunked"),
        pytest.param(b"HEAD", 404, [], (Framing.NONE, 0), id="head-404"),
        pytest.param(b"GET", 100, [], (Framing.NONE, 0), id="100"),
        pytest.param(b"GET", 101, [], (Framing.NONE, 0), id="101"),
        pytest.param(b"GET", 199, CL5, (Framing.NONE, 0), id="199"),
        pytest.param(b"GET", 204, CL5, (Framing.NONE, 0), id="204"),
        pytest.param(b"GET", 304, CL5, (Framing.NONE, 0), id="304"),
        pytest.param(b"GET", 200, CHUNKED, (Framing.CHUNKED, 0), id="chunked"),
        pytest.param(
            b"POST", 200, [*CL5, *CHUNKED], (Framing.CHUNKED, 0), id="chunked-wins-after-length"
        ),
        pytest.param(
            b"GET", 200, [*CHUNKED, *CL5], (Framing.CHUNKED, 0), id="chunked-wins-before-length"
        ),
        pytest.param(b"GET", 200, CL5, (Framing.LENGTH, 5), id="length"),
        pytest.param(b"GET", 200, [(b"content-length", b"0")], (Framing.LENGTH, 0), id="zero"),
        pytest.param(b"POST", 500, CL5, (Framing.LENGTH, 5), id="post-500"),
        pytest.param(b"GET", 200, [], (Framing.UNTIL_CLOSE, 0), id="until-close"),
        pytest.param(
            b"GET", 200, [(b"content-type", b"x")], (Framing.UNTIL_CLOSE, 0), id="until-close-2"
        ),
        pytest.param(b"GET", 205, [], (Framing.UNTIL_CLOSE, 0), id="205-until-close"),
    ],
)
def test_response_framing(
    method: bytes, status: int, headers: Headers, expected: tuple[Framing, int]
) -> None:
    assert response_framing(method, status, headers) == expected


@pytest.mark.parametrize(
    ("version", "headers", "expected"),
    [
        pytest.param(b"1.1", [], True, id="1.1-default"),
        pytest.param(b"1.1", [(b"connection", b"close")], False, id="1.1-close"),
        pytest.param(b"1.1", [(b"connection", b"Close")], False, id="1.1-Close"),
        pytest.param(b"1.1", [(b"connection", b"keep-alive")], True, id="1.1-keep-alive"),
        pytest.param(b"1.1", [(b"connection", b"x-foo, CLOSE")], False, id="1.1-token-list"),
        pytest.param(
            b"1.1",
            [(b"connection", b"x-foo"), (b"connection", b" close ")],
            False,
            id="1.1-two-headers",
        ),
        pytest.param(b"1.0", [], False, id="1.0-default"),
        pytest.param(b"1.0", [(b"connection", b"keep-alive")], True, id="1.0-keep-alive"),
        pytest.param(b"1.0", [(b"connection", b"Keep-Alive")], True, id="1.0-Keep-Alive"),
        pytest.param(b"1.0", [(b"connection", b"x-foo,KEEP-ALIVE")], True, id="1.0-token-list"),
        pytest.param(b"1.0", [(b"connection", b"keep-alive, close")], False, id="1.0-close-wins"),
        pytest.param(b"1.0", [(b"keep-alive", b"timeout=5")], False, id="1.0-only-keep-alive-hdr"),
    ],
)
def test_client_keeps_alive(version: bytes, headers: Headers, expected: bool) -> None:
    assert client_keeps_alive(version, headers) is expected


def test_request_head_bytes() -> None:
    head = request_head(b"POST", b"/a?b=c", [(b"Host", b"example.com"), (b"X-Mixed-Case", b"v 1")])
    assert head == b"POST /a?b=c HTTP/1.1\r\nHost: example.com\r\nX-Mixed-Case: v 1\r\n\r\n"


def test_request_head_without_headers() -> None:
    assert request_head(b"GET", b"*", []) == b"GET * HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(
    ("status", "reason", "status_line"),
    [
        pytest.param(200, b"OK", b"HTTP/1.1 200 OK\r\n", id="200"),
        pytest.param(200, b"", b"HTTP/1.1 200 OK\r\n", id="empty-reason-200"),
        pytest.param(404, b"", b"HTTP/1.1 404 Not Found\r\n", id="empty-reason-404"),
        pytest.param(503, b"", b"HTTP/1.1 503 Service Unavailable\r\n", id="empty-reason-503"),
        pytest.param(100, b"", b"HTTP/1.1 100 Continue\r\n", id="empty-reason-100"),
        pytest.param(200, b"Fine Thanks", b"HTTP/1.1 200 Fine Thanks\r\n", id="custom"),
        pytest.param(599, b"", b"HTTP/1.1 599 \r\n", id="unknown-status"),
        pytest.param(599, b"Odd", b"HTTP/1.1 599 Odd\r\n", id="unknown-status-reason"),
    ],
)
def test_response_head_status_line(status: int, reason: bytes, status_line: bytes) -> None:
    assert response_head(status, reason, []) == status_line + b"\r\n"


def test_response_head_bytes() -> None:
    head = response_head(
        201, b"", [(b"Content-Length", b"0"), (b"lOcAtIoN", b"/x"), (b"Set-Cookie", b"a=1")]
    )
    assert head == (
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nlOcAtIoN: /x\r\nSet-Cookie: a=1\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("data", "encoded"),
    [
        pytest.param(b"", b"", id="empty-is-not-a-last-chunk"),
        pytest.param(b"hello", b"5\r\nhello\r\n", id="hello"),
        pytest.param(b"x" * 10, b"a\r\n" + b"x" * 10 + b"\r\n", id="hex-lower"),
        pytest.param(b"y" * 256, b"100\r\n" + b"y" * 256 + b"\r\n", id="256"),
        pytest.param(b"\r\n0\r\n\r\n", b"7\r\n\r\n0\r\n\r\n\r\n", id="binary-safe"),
    ],
)
def test_encode_chunk(data: bytes, encoded: bytes) -> None:
    assert encode_chunk(data) == encoded


def test_last_chunk() -> None:
    assert LAST_CHUNK == b"0\r\n\r\n"
