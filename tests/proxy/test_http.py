"""HTTP/1.x reverse proxying, end to end in one process: real sockets, real clients.

Each test starts its own backends (h11 servers from conftest) and its own trilb on 127.0.0.1:0.
Exact-bytes checks go through :class:`RawClient`; ordinary requests through httpx.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import resource
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import pytest
import trio
from conftest import (
    WAIT,
    BackendRequest,
    BackendResponse,
    CollectingLog,
    Handler,
    Proxy,
    StartBackend,
    StartProxy,
    StartRawClient,
    generated_chunks,
    generated_sha256,
    make_config,
)

import trilb

MB = 1024 * 1024


def http_client(proxy: Proxy) -> httpx.AsyncClient:
    """An httpx client for the proxy (no proxies from the environment)."""
    return httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=WAIT)


def echoed(body: bytes) -> dict[str, Any]:
    """The echo handler's JSON answer."""
    data: dict[str, Any] = json.loads(body)
    return data


def echoed_header(body: bytes | dict[str, Any], name: str) -> list[str]:
    data = echoed(body) if isinstance(body, bytes) else body
    return [v for n, v in data["headers"] if n.lower() == name.lower()]


def fixed(status: int = 200, body: bytes = b"", *headers: tuple[str, str]) -> Handler:
    """A handler always answering the same."""

    async def handler(request: BackendRequest) -> BackendResponse:
        return BackendResponse(status=status, headers=list(headers), body=body)

    return handler


# -- plain requests and headers -------------------------------------------------------------------


async def test_get_returns_backend_body_and_host_unchanged(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend])
    async with http_client(proxy) as client:
        response = await client.get("/some/path?q=1", headers={"Host": "example.test:1234"})
    assert response.status_code == 200
    data = response.json()
    assert data["server"] == "s1"
    assert data["method"] == "GET"
    assert data["target"] == "/some/path?q=1"
    assert echoed_header(data, "host") == ["example.test:1234"]
    assert len(backend.requests) == 1


async def test_forwarded_for_headers(start_backend: StartBackend, start_proxy: StartProxy) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend], forwarded_for=True)
    async with http_client(proxy) as client:
        response = await client.get(
            "/",
            headers={
                "Host": "example.test",
                "X-Forwarded-For": "1.2.3.4",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.test",
                "X-Forwarded-Port": "1",
            },
        )
    data = response.json()
    assert echoed_header(data, "x-forwarded-for") == ["1.2.3.4, 127.0.0.1"]
    assert echoed_header(data, "x-forwarded-proto") == ["http"]
    assert echoed_header(data, "x-forwarded-host") == ["example.test"]
    assert echoed_header(data, "x-forwarded-port") == [str(proxy.port)]


async def test_forwarded_for_disabled_adds_nothing(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend], forwarded_for=False)
    async with http_client(proxy) as client:
        response = await client.get("/")
    names = {n.lower() for n, _ in response.json()["headers"]}
    assert not names & {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
    assert "x-forwarded-port" not in names


async def test_hop_by_hop_headers_do_not_cross(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    async def handler(request: BackendRequest) -> BackendResponse:
        return BackendResponse(
            headers=[
                ("Connection", "close, x-bar"),
                ("X-Bar", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authenticate", "Basic"),
                ("X-Kept", "yes"),
            ],
            body=json.dumps([[n, v] for n, v in request.headers]).encode(),
        )

    backend = await start_backend(handler)
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    await client.send(
        b"GET /first HTTP/1.1\r\n"
        b"Host: a\r\n"
        b"Connection: keep-alive, x-foo\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: websocket\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"X-Foo: secret\r\n"
        b"X-Keep: yes\r\n"
        b"\r\n"
    )
    response = await client.read_response()
    assert response.status == 200
    seen = {n.lower() for n, _ in json.loads(response.body)}
    assert seen == {"host", "x-keep"}
    assert response.header("x-bar") == []
    assert response.header("keep-alive") == []
    assert response.header("proxy-authenticate") == []
    assert response.header("x-kept") == ["yes"]
    assert "close" not in ",".join(response.header("connection")).lower()
    # The server closed its connection; the client's stays usable.
    await client.send(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
    second = await client.read_response()
    assert second.status == 200
    assert second.header("x-kept") == ["yes"]
    assert backend.connections == 2


# -- connection handling --------------------------------------------------------------------------


async def test_keep_alive_reuses_client_and_server_connections(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    for index in range(5):
        await client.send(f"GET /{index} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        response = await client.read_response()
        assert response.status == 200
        assert echoed(response.body)["target"] == f"/{index}"
    assert len(backend.requests) == 5
    assert backend.connections == 1  # pooled: one server connection for all five


async def test_pipelined_requests_are_answered_in_order(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    await client.send(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    answers = [await client.read_response() for _ in range(4)]
    bodies = [echoed(a.body) for a in answers]
    assert [b["target"] for b in bodies] == ["/1", "/2", "/3", "/4"]
    assert [b["method"] for b in bodies] == ["GET", "POST", "POST", "GET"]
    assert [r.body for r in backend.requests] == [b"", b"abc", b"de", b""]
    assert "close" in ",".join(answers[3].header("connection")).lower()
    assert await client.wait_closed() == b""


async def test_http10_without_keep_alive_is_closed(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    await client.send(b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n")
    response = await client.read_response()
    assert response.status == 200
    assert echoed(response.body)["target"] == "/old"
    assert "close" in ",".join(response.header("connection")).lower()
    assert await client.wait_closed() == b""


async def test_http10_keep_alive_stays_open(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    for target in ("/a", "/b"):
        await client.send(
            f"GET {target} HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n".encode()
        )
        response = await client.read_response()
        assert response.status == 200
        assert echoed(response.body)["target"] == target
        assert [v.lower() for v in response.header("connection")] == ["keep-alive"]
        assert response.header("content-length")
    assert not client.eof


async def test_http10_request_without_host_is_served(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    """HTTP/1.0 makes Host optional; trilb speaks HTTP/1.1 to the server, where it is
    mandatory, so the request must still reach the server with a Host header."""
    backend = await start_backend()
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    await client.send(b"GET /nohost HTTP/1.0\r\n\r\n")
    response = await client.read_response()
    assert response.status == 200
    assert echoed(response.body)["target"] == "/nohost"
    assert backend.requests[0].has_header("host")


# -- bodies ---------------------------------------------------------------------------------------


async def test_post_content_length_body(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backend = await start_backend(keep_body=False)
    proxy = await start_proxy([backend])
    body = random.Random(1).randbytes(6 * MB + 123)
    async with http_client(proxy) as client:
        response = await client.post("/upload", content=body)
    assert response.status_code == 200
    data = response.json()
    assert data["body_length"] == len(body)
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echoed_header(data, "content-length") == [str(len(body))]


async def test_post_chunked_body(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend])
    pieces = [b"hello", b" ", b"x" * 5000, random.Random(2).randbytes(70000), b"!"]
    wire = b"".join(b"%x;ext=1\r\n" % len(p) + p + b"\r\n" for p in pieces)
    client = await raw_client(proxy.port)
    await client.send(
        b"POST /chunks HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + wire
        + b"0\r\nX-Trailer: 1\r\n\r\n"
    )
    response = await client.read_response()
    assert response.status == 200
    (request,) = backend.requests
    assert request.body == b"".join(pieces)
    assert request.header("transfer-encoding") == ["chunked"]
    assert not request.has_header("content-length")
    # the connection is still in a clean state
    await client.send(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await client.read_response()).status == 200


def chunked_response_handler(pieces: list[bytes]) -> Handler:
    """A handler streaming ``pieces`` without a Content-Length: h11 sends them chunked."""

    async def handler(request: BackendRequest) -> BackendResponse:
        async def body() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        return BackendResponse(headers=[("Content-Type", "text/plain")], body=body)

    return handler


PIECES = [b"first ", b"second " * 1000, random.Random(3).randbytes(300_000), b" end"]


async def test_chunked_response_to_http11_client(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend(chunked_response_handler(PIECES))
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    for _ in range(2):  # twice: the client connection survives a chunked response
        await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        response = await client.read_response()
        assert response.status == 200
        assert response.header("transfer-encoding") == ["chunked"]
        assert response.header("content-length") == []
        assert response.body == b"".join(PIECES)


async def test_chunked_response_to_http10_client(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend(chunked_response_handler(PIECES))
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    await client.send(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
    response = await client.read_response()  # no length, no chunks: read until close
    assert response.status == 200
    assert response.header("transfer-encoding") == []
    assert response.header("content-length") == []
    assert response.body == b"".join(PIECES)
    assert client.eof


async def test_head_response_keeps_content_length_without_body(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend(fixed(200, b"", ("Content-Length", "1234")))
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    await client.send(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
    response = await client.read_response(head_request=True)
    assert response.status == 200
    assert response.header("content-length") == ["1234"]
    # Had a body followed, it would be read as the next response's head.
    await client.send(b"HEAD /y HTTP/1.1\r\nHost: a\r\n\r\n")
    second = await client.read_response(head_request=True)
    assert second.status == 200
    assert backend.requests[1].method == "HEAD"


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses(
    status: int, start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend(fixed(status, b"", ("ETag", '"v1"')))
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    for _ in range(2):
        await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        response = await client.read_response()
        assert response.status == status
        assert response.header("etag") == ['"v1"']
        assert response.header("transfer-encoding") == []
    assert not client.buffer


async def test_expect_100_continue(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    await client.send(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await client.read_head()
    assert interim.status == 100
    assert interim.raw_head.startswith(b"HTTP/1.1 100")
    assert backend.requests == []  # the body has not been sent yet
    await client.send(b"hello")
    response = await client.read_response()
    assert response.status == 200
    assert backend.requests[0].body == b"hello"


# -- large transfers in bounded memory ------------------------------------------------------------

BIG = 200 * MB
#: the test process hosts the backend, trilb and the client: all three must stream
RSS_BUDGET_KB = 64 * 1024


class RssWatch:
    """Peak growth of this process's resident memory, sampled while a transfer runs.

    (``ru_maxrss`` is a peak since the process started, so earlier tests could hide growth.)"""

    def __init__(self) -> None:
        self.start = self.peak = self.rss_kb()

    @staticmethod
    def rss_kb() -> int:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize() // 1024

    def sample(self) -> None:
        self.peak = max(self.peak, self.rss_kb())

    @property
    def growth_kb(self) -> int:
        self.sample()
        return self.peak - self.start


async def test_large_download_streams(start_backend: StartBackend, start_proxy: StartProxy) -> None:
    async def handler(request: BackendRequest) -> BackendResponse:
        return BackendResponse(
            headers=[("Content-Length", str(BIG))],
            body=functools.partial(generated_chunks, BIG),
        )

    backend = await start_backend(handler)
    proxy = await start_proxy([backend])
    expected = generated_sha256(BIG)
    rss = RssWatch()
    digest = hashlib.sha256()
    received = 0
    async with http_client(proxy) as client, client.stream("GET", "/big") as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(BIG)
        async for piece in response.aiter_raw():
            digest.update(piece)
            received += len(piece)
            if received % (4 * MB) < len(piece):
                rss.sample()
    assert received == BIG
    assert digest.hexdigest() == expected
    assert rss.growth_kb < RSS_BUDGET_KB


async def test_large_upload_streams(start_backend: StartBackend, start_proxy: StartProxy) -> None:
    backend = await start_backend(keep_body=False)
    proxy = await start_proxy([backend])
    expected = generated_sha256(BIG)
    rss = RssWatch()

    async def body() -> AsyncIterator[bytes]:
        sent = 0
        async for piece in generated_chunks(BIG):
            sent += len(piece)
            if sent % (4 * MB) < len(piece):
                rss.sample()
            yield piece

    async with http_client(proxy) as client:
        response = await client.post("/big", content=body(), headers={"Content-Length": str(BIG)})
    assert response.status_code == 200
    data = response.json()
    assert data["body_length"] == BIG
    assert data["body_sha256"] == expected
    assert echoed_header(data, "content-length") == [str(BIG)]
    assert rss.growth_kb < RSS_BUDGET_KB


# -- strictness and smuggling ---------------------------------------------------------------------

STRICT_LIMITS = trilb.Limits(max_request_body=1000)

BAD_REQUESTS = [
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
        id="content-length-and-transfer-encoding",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
        400,
        id="transfer-encoding-and-content-length",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        400,
        id="two-equal-content-lengths",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
        id="two-different-content-lengths",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
        400,
        id="list-content-length",
    ),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  continued\r\n\r\n", 400, id="obs-fold"),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
        id="transfer-encoding-gzip-chunked",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
        400,
        id="transfer-encoding-identity",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
        + b"\r\n",
        431,
        id="too-many-headers",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 40000 + b"\r\n\r\n",
        431,
        id="header-block-too-large",
    ),
    pytest.param(
        b"GET /" + b"u" * (8 * 1024 + 1) + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, id="uri-too-long"
    ),
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="garbage-request-line"),
    pytest.param(b"GET / HTTP/9.9 extra\r\nHost: a\r\n\r\n", 400, id="bad-request-line"),
    pytest.param(b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", 400, id="missing-host"),
    pytest.param(b"GET / HTTP/1.1\r\nBad Header: x\r\nHost: a\r\n\r\n", 400, id="bad-header-name"),
    pytest.param(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405, id="connect"
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001,
        413,
        id="content-length-over-max-request-body",
    ),
]


@pytest.mark.parametrize(("request_bytes", "status"), BAD_REQUESTS)
async def test_bad_request_is_refused_and_not_forwarded(
    request_bytes: bytes,
    status: int,
    start_backend: StartBackend,
    start_proxy: StartProxy,
    raw_client: StartRawClient,
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend], limits=STRICT_LIMITS)
    client = await raw_client(proxy.port)
    await client.send(request_bytes)
    response = await client.read_response()
    assert response.status == status
    assert "close" in ",".join(response.header("connection")).lower()
    assert await client.wait_closed() == b""
    assert backend.connections == 0
    assert backend.heads == []
    await proxy.log.wait_access_lines(1)
    assert f" {status} " in proxy.log.access_lines[0]


async def test_huge_header_block_in_one_send_gets_431(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    huge = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * MB + b"\r\n\r\n"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send, huge)  # while the answer is read
        response = await client.read_response()
    assert response.status == 431
    assert await client.wait_closed() == b""
    assert backend.connections == 0


async def test_bad_chunk_size_cuts_the_request(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    await client.send(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nZZ\r\nworld\r\n0\r\n\r\n"
    )
    rest = await client.wait_closed()
    assert not rest.startswith(b"HTTP/1.1 2")
    await backend.wait_all_closed()
    assert backend.requests == []


async def test_chunked_body_over_max_request_body_is_cut(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend], limits=STRICT_LIMITS)
    client = await raw_client(proxy.port)
    await client.send(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"1f4\r\n"
        + b"a" * 500
        + b"\r\n1f4\r\n"
        + b"b" * 500
        + b"\r\n1\r\nc\r\n0\r\n\r\n"
    )
    rest = await client.wait_closed()
    assert not rest.startswith(b"HTTP/1.1 2")
    await backend.wait_all_closed()
    assert backend.requests == []


async def test_body_within_max_request_body_passes(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend], limits=STRICT_LIMITS)
    client = await raw_client(proxy.port)
    await client.send(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n"
        + b"a" * 1000
        + b"\r\n0\r\n\r\n"
    )
    assert (await client.read_response()).status == 200
    await client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"b" * 1000)
    assert (await client.read_response()).status == 200
    assert [r.body_length for r in backend.requests] == [1000, 1000]


# -- balancing ------------------------------------------------------------------------------------


async def servers_hit(proxy: Proxy, count: int) -> Counter[str]:
    hits: Counter[str] = Counter()
    async with http_client(proxy) as client:
        for _ in range(count):
            response = await client.get("/")
            assert response.status_code == 200
            hits[response.json()["server"]] += 1
    return hits


@pytest.mark.parametrize("balance", ["roundrobin", "static-rr"])
async def test_weighted_round_robin_split_is_exact(
    balance: str, start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backends = [await start_backend(), await start_backend()]
    proxy = await start_proxy(backends, balance=balance, weights=[3, 1])
    assert await servers_hit(proxy, 400) == {"s1": 300, "s2": 100}


@pytest.mark.parametrize("balance", ["roundrobin", "static-rr"])
async def test_weight_zero_gets_nothing(
    balance: str, start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backends = [await start_backend() for _ in range(3)]
    proxy = await start_proxy(backends, balance=balance, weights=[1, 1, 0])
    assert await servers_hit(proxy, 60) == {"s1": 30, "s2": 30}
    assert backends[2].connections == 0


async def test_set_weight_shifts_traffic(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backends = [await start_backend(), await start_backend()]
    proxy = await start_proxy(backends, weights=[1, 1])
    assert await servers_hit(proxy, 100) == {"s1": 50, "s2": 50}
    proxy.lb.set_weight("backend", "s2", 0)
    assert await servers_hit(proxy, 100) == {"s1": 100}
    proxy.lb.set_weight("backend", "s2", 3)
    hits = await servers_hit(proxy, 100)
    assert abs(hits["s2"] - 75) <= 1
    assert hits["s1"] + hits["s2"] == 100
    assert proxy.lb.statistics().backend("backend").server("s2").weight == 3
    with pytest.raises(ValueError, match="0-256"):
        proxy.lb.set_weight("backend", "s2", 257)


# -- statistics and logging -----------------------------------------------------------------------


async def test_statistics_count_requests_and_bytes(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backends = [await start_backend(), await start_backend()]
    proxy = await start_proxy(backends)
    await servers_hit(proxy, 10)
    await proxy.log.wait_access_lines(10)
    stats = proxy.lb.statistics()
    frontend = stats.frontend("frontend").traffic
    assert frontend.total_requests == 10
    assert frontend.responses_2xx == 10
    assert frontend.responses_4xx == frontend.responses_5xx == 0
    assert frontend.total_connections == 1
    assert frontend.bytes_in > 0
    assert frontend.bytes_out > 0
    backend = stats.backend("backend")
    assert backend.traffic.total_requests == 10
    assert backend.traffic.responses_2xx == 10
    for name in ("s1", "s2"):
        server = backend.server(name).traffic
        assert server.total_requests == 5
        assert server.responses_2xx == 5
        assert server.total_connections == 1
        assert server.bytes_in > 0
        assert server.bytes_out > 0
    # a snapshot is a value: frozen, and unchanged by later traffic
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        frontend.total_requests = 0  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.frontends = ()  # type: ignore[misc]
    await servers_hit(proxy, 1)
    assert frontend.total_requests == 10
    await proxy.log.wait_access_lines(11)
    assert proxy.lb.statistics().frontend("frontend").traffic.total_requests == 11


async def test_access_log_line_per_request(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    async def handler(request: BackendRequest) -> BackendResponse:
        return BackendResponse(status=404 if request.target == "/missing" else 200, body=b"x")

    backend = await start_backend(handler)
    proxy = await start_proxy([backend])
    client = await raw_client(proxy.port)
    client_port = client.stream.socket.getsockname()[1]
    await client.send(b"GET /found?a=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    await client.read_response()
    await client.send(b"GET /missing HTTP/1.1\r\nHost: a\r\n\r\n")
    await client.read_response()
    await client.send(b"GET / HTTP/1.1\r\n\r\n")  # no Host: refused by trilb
    await client.read_response()
    await proxy.log.wait_access_lines(3)
    assert len(proxy.log.access_lines) == 3
    prefix = re.escape(f"127.0.0.1:{client_port} [")
    first, second, third = proxy.log.access_lines
    assert re.match(
        prefix + r".*\] frontend backend/s1 \S+ 200 \d+ .*\"GET /found\?a=1 HTTP/1.1\"$", first
    )
    assert re.match(
        prefix + r".*\] frontend backend/s1 \S+ 404 \d+ .*\"GET /missing HTTP/1.1\"$", second
    )
    assert re.match(prefix + r".*\] frontend \S+ \S+ 400 ", third)


async def assert_not_listening(port: int) -> None:
    with pytest.raises(OSError, match="all attempts to connect"):
        await trio.open_tcp_stream("127.0.0.1", port)


# -- several balancers, open_balancer, drain ------------------------------------------------------


async def test_two_balancers_do_not_interfere(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backend_a = await start_backend(fixed(200, b"A"), name="a")
    backend_b = await start_backend(fixed(200, b"B"), name="b")
    proxy_a = await start_proxy([backend_a])
    proxy_b = await start_proxy([backend_b], forwarded_for=True)
    assert proxy_a.port != proxy_b.port
    async with http_client(proxy_a) as client_a, http_client(proxy_b) as client_b:
        for _ in range(3):
            assert (await client_a.get("/")).content == b"A"
        assert (await client_b.get("/")).content == b"B"
    await proxy_a.log.wait_access_lines(3)
    await proxy_b.log.wait_access_lines(1)
    assert proxy_a.lb.statistics().frontend("frontend").traffic.total_requests == 3
    assert proxy_b.lb.statistics().frontend("frontend").traffic.total_requests == 1
    assert proxy_a.lb.statistics().backend("backend").server("a").traffic.total_requests == 3
    assert proxy_b.lb.statistics().backend("backend").server("b").traffic.total_requests == 1
    assert len(proxy_a.log.access_lines) == 3
    assert len(proxy_b.log.access_lines) == 1


async def test_open_balancer_context_manager(start_backend: StartBackend) -> None:
    backend = await start_backend()
    log = CollectingLog()
    with trio.fail_after(WAIT):
        async with trilb.open_balancer(make_config([backend]), log=log) as lb:
            port = lb.addresses["frontend"][0].port
            async with httpx.AsyncClient(trust_env=False) as client:
                response = await client.get(f"http://127.0.0.1:{port}/x")
            assert response.json()["target"] == "/x"
            await lb.drain(5)
            assert lb.draining
    await assert_not_listening(port)


async def test_drain_closes_idle_keep_alive_connection(
    start_backend: StartBackend, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    log = CollectingLog()
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            lb: trilb.Balancer = await nursery.start(
                functools.partial(trilb.serve, make_config([backend]), log=log)
            )
            port = lb.addresses["frontend"][0].port
            client = await raw_client(port)
            await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await client.read_response()).status == 200
            await lb.drain(grace=WAIT)
            assert await client.wait_closed() == b""
        # the nursery exited: serve returned
    await assert_not_listening(port)


async def test_drain_lets_a_slow_request_finish(
    start_backend: StartBackend, raw_client: StartRawClient
) -> None:
    release = trio.Event()

    async def slow(request: BackendRequest) -> BackendResponse:
        await release.wait()
        return BackendResponse(body=b"finished")

    backend = await start_backend(slow)
    log = CollectingLog()
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            lb: trilb.Balancer = await nursery.start(
                functools.partial(trilb.serve, make_config([backend]), log=log)
            )
            client = await raw_client(lb.addresses["frontend"][0].port)
            await client.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            await backend.wait_requests(1)
            drained = trio.Event()
            drain_started = trio.Event()

            async def drain() -> None:
                drain_started.set()
                await lb.drain(grace=WAIT)  # sets the drain flag before its first checkpoint
                drained.set()

            nursery.start_soon(drain)
            await drain_started.wait()
            assert lb.draining
            assert not drained.is_set()
            release.set()
            response = await client.read_response()
            assert response.status == 200
            assert response.body == b"finished"
            assert "close" in ",".join(response.header("connection")).lower()
            assert await client.wait_closed() == b""
            await drained.wait()
