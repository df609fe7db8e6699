"""What an operator expects when things break: exact statuses, log lines, nothing leaked.

Each scenario ends with :func:`settled`: once the clients are gone the balancer's counters of
connections and requests in progress are back to 0. The drain tests run trilb in a nursery of their
own, so that leaving it proves ``serve()`` returned. After every test the conftest's autouse check
finds no file descriptor left open.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio
from conftest import (
    Backend,
    BackendRequest,
    BackendResponse,
    CollectingLog,
    MisbehavingBackends,
    Proxy,
    RawBackend,
    StartBackend,
    StartProxy,
    StartRawClient,
    make_config,
)

import trilb

#: upper bound for every wait in these tests; timeouts under test are 0.5 s
WAIT = 10.0

#: the fields of a haproxy-format access log line that these tests look at
ACCESS_LINE = re.compile(
    r"^\S+ \[[^\]]+\] (?P<frontend>\S+) (?P<backend>\S+)/(?P<server>\S+) "
    r"(?P<timers>\S+) (?P<status>-?\d+) (?P<bytes>\d+) - - (?P<termination>\S\S)-- "
    r"\d+/\d+/\d+/\d+/(?P<retries>\d+) \d+/\d+ (?P<request>\".*\")$"
)


def access(line: str) -> re.Match[str]:
    match = ACCESS_LINE.match(line)
    assert match is not None, line
    return match


def client(proxy: Proxy) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=WAIT)


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (for state no event announces, like counters) under a deadline."""
    with trio.fail_after(WAIT):
        while not condition():
            await trio.sleep(0.005)


async def settled(proxy: Proxy) -> None:
    """Wait until the balancer has no connection or request in progress, anywhere."""

    def idle() -> bool:
        stats = proxy.lb.statistics()
        traffic = [stats.frontend("frontend").traffic, stats.backend("backend").traffic]
        traffic += [s.traffic for s in stats.backend("backend").servers]
        return all(t.current_connections == 0 and t.current_requests == 0 for t in traffic)

    await eventually(idle)


def warnings(log: CollectingLog) -> list[str]:
    return [m for m in log.messages if m.startswith("trilb warning:")]


# -- servers that can't be reached -----------------------------------------------------------------


async def test_refused_server_is_retried_on_another(
    start_backend: StartBackend, start_proxy: StartProxy, misbehaving: MisbehavingBackends
) -> None:
    healthy = await start_backend(name="healthy")
    proxy = await start_proxy([misbehaving.refuse(), healthy])  # s1 refuses, and is picked first
    async with client(proxy) as http:
        response = await http.get("/x")
    assert response.status_code == 200
    assert response.json()["server"] == "healthy"
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert (line["server"], line["status"], line["termination"]) == ("healthy", "200", "--")
    assert line["retries"] == "1"
    (warning,) = warnings(proxy.log)
    assert "backend/s1" in warning
    assert "connect failed" in warning
    stats = proxy.lb.statistics().backend("backend")
    assert stats.server("s1").traffic.connect_errors == 1
    assert stats.server("healthy").traffic.responses_2xx == 1
    await settled(proxy)


async def test_all_servers_refusing_gives_503(
    start_proxy: StartProxy, misbehaving: MisbehavingBackends
) -> None:
    proxy = await start_proxy([misbehaving.refuse(), misbehaving.refuse()], retries=2)
    async with client(proxy) as http:
        response = await http.get("/x")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("text/html")
        assert "503 Service Unavailable" in response.text
        # the request was read whole: the connection goes on
        assert (await http.get("/y")).status_code == 503
    await proxy.log.wait_access_lines(2)
    assert len(proxy.log.access_lines) == 2
    line = access(proxy.log.access_lines[0])
    assert (line["status"], line["termination"]) == ("503", "SC")
    assert line["request"] == '"GET /x HTTP/1.1"'
    # retries = 2: three attempts per request, the second one redispatched to the other server
    connect_failures = [w for w in warnings(proxy.log) if "connect failed" in w]
    assert len(connect_failures) == 6
    assert [("backend/s1" in w, "backend/s2" in w) for w in connect_failures[:2]] == [
        (True, False),
        (False, True),
    ]
    assert "(attempt 3 of 3)" in connect_failures[2]
    stats = proxy.lb.statistics().backend("backend")
    assert stats.traffic.responses_5xx == 2
    assert (
        stats.server("s1").traffic.connect_errors + stats.server("s2").traffic.connect_errors == 6
    )
    await settled(proxy)


@pytest.mark.parametrize(
    ("refusing", "retries", "attempts", "status"),
    [
        (1, 0, 1, 503),  # no retry: the healthy second server is never tried
        (1, 1, 1, 200),
        (2, 1, 2, 503),  # two attempts, both refused
        (2, 2, 2, 200),  # the last retry is redispatched to the third server
        (3, 5, 6, 503),  # every server refuses: retries go round them again
    ],
)
async def test_retries_count(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    misbehaving: MisbehavingBackends,
    refusing: int,
    retries: int,
    attempts: int,
    status: int,
) -> None:
    servers: list[trilb.Address | Backend] = [misbehaving.refuse() for _ in range(refusing)]
    if refusing < 3:
        servers.append(await start_backend(name="healthy"))
    proxy = await start_proxy(servers, retries=retries)
    async with client(proxy) as http:
        response = await http.get("/")
    assert response.status_code == status
    assert len([w for w in warnings(proxy.log) if "connect failed" in w]) == attempts
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert line["termination"] == ("--" if status == 200 else "SC")
    await settled(proxy)


# -- servers that break the exchange ---------------------------------------------------------------


async def _close_after_partial_body(backend: RawBackend, stream: trio.SocketStream) -> None:
    """Content-Length: 1000, 10 bytes, then a clean close (FIN)."""
    await backend.read_head(stream)
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
    await stream.aclose()


async def _cut_chunked_body(backend: RawBackend, stream: trio.SocketStream) -> None:
    """A chunked body without its last chunk, then a clean close."""
    await backend.read_head(stream)
    await stream.send_all(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n"
    )
    await stream.aclose()


async def _server_for(kind: str, misbehaving: MisbehavingBackends) -> trilb.Address:
    if kind == "reset":
        return await misbehaving.reset_mid_body()
    if kind == "close":
        return (await misbehaving.start(kind, _close_after_partial_body)).address
    return (await misbehaving.start(kind, _cut_chunked_body)).address


@pytest.mark.parametrize("kind", ["reset", "close"])
async def test_body_cut_short_cuts_the_client_raw(
    start_proxy: StartProxy,
    misbehaving: MisbehavingBackends,
    raw_client: StartRawClient,
    kind: str,
) -> None:
    proxy = await start_proxy([await _server_for(kind, misbehaving)])
    raw = await raw_client(proxy.port)
    await raw.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await raw.read_head()
    assert head.status == 200
    assert head.header("content-length") == ["1000"]
    body = await raw.read_until_closed()  # never a complete-looking response: EOF before 1000
    assert len(body) < 1000
    assert body == b"0123456789"[: len(body)]
    await raw.aclose()
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert line["status"] == "200"
    assert line["termination"].startswith("S")
    assert any("response cut short" in w for w in warnings(proxy.log))
    await settled(proxy)


@pytest.mark.parametrize("kind", ["reset", "close", "chunked"])
async def test_body_cut_short_is_an_error_for_httpx(
    start_proxy: StartProxy, misbehaving: MisbehavingBackends, kind: str
) -> None:
    proxy = await start_proxy([await _server_for(kind, misbehaving)])
    async with client(proxy) as http:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await http.get("/big")
    await proxy.log.wait_access_lines(1)
    assert access(proxy.log.access_lines[0])["termination"] == "SD"
    await settled(proxy)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("garbage", "invalid response"), ("close_without_answer", "closed before answering")],
)
async def test_bad_answer_gives_502(
    start_proxy: StartProxy, misbehaving: MisbehavingBackends, kind: str, reason: str
) -> None:
    address = await getattr(misbehaving, kind)()
    proxy = await start_proxy([address])
    async with client(proxy) as http:
        response = await http.get("/x")
    assert response.status_code == 502
    assert "502 Bad Gateway" in response.text
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert (line["server"], line["status"], line["termination"]) == ("s1", "502", "SH")
    (warning,) = warnings(proxy.log)
    assert "backend/s1" in warning
    assert reason in warning
    # a fresh connection that failed is not retried: the request may have been processed
    assert misbehaving.started[kind][0].connections == 1
    await settled(proxy)


async def test_hanging_server_gives_504(
    start_proxy: StartProxy, misbehaving: MisbehavingBackends
) -> None:
    proxy = await start_proxy([await misbehaving.hang()], timeouts=trilb.Timeouts(server=0.5))
    async with client(proxy) as http:
        with trio.fail_after(WAIT):
            response = await http.get("/slow")
        assert response.status_code == 504
        assert "504 Gateway Timeout" in response.text
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert (line["status"], line["termination"]) == ("504", "sH")
    assert misbehaving.started["hang"][0].received.startswith(b"GET /slow HTTP/1.1\r\n")
    await settled(proxy)


# -- stale pooled connections ----------------------------------------------------------------------


class OneShotServer:
    """Answers the first request of each connection (keep-alive, no ``Connection: close``), then
    closes: at once (``close_when="idle"``) or when the next request arrives, unanswered
    (``close_when="next"``, the keep-alive race where the request is already on the wire)."""

    def __init__(self, close_when: str) -> None:
        self.close_when = close_when
        self.backend: RawBackend | None = None
        self.closed = 0
        self._changed = trio.Event()

    async def start(self, misbehaving: MisbehavingBackends) -> trilb.Address:
        self.backend = await misbehaving.start("one-shot", self.handle)
        return self.backend.address

    async def handle(self, backend: RawBackend, stream: trio.SocketStream) -> None:
        head = await backend.read_head(stream)
        body = f"connection {backend.connections}".encode()
        response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        await stream.send_all(response if head.startswith(b"HEAD ") else response + body)
        if self.close_when == "next":
            await backend.read_head(stream)
        await stream.aclose()
        self.closed += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_closed(self, count: int) -> None:
        with trio.fail_after(WAIT):
            while self.closed < count:
                await self._changed.wait()


async def test_stale_pooled_connection_get_is_retried(
    start_proxy: StartProxy, misbehaving: MisbehavingBackends
) -> None:
    server = OneShotServer("idle")
    proxy = await start_proxy([await server.start(misbehaving)])
    async with client(proxy) as http:
        assert (await http.get("/1")).text == "connection 1"
    await server.wait_closed(1)  # the pooled connection is now dead
    async with client(proxy) as http:  # a fresh client connection
        response = await http.get("/2")
    assert response.status_code == 200
    assert response.text == "connection 2"
    await proxy.log.wait_access_lines(2)
    assert [access(line)["status"] for line in proxy.log.access_lines] == ["200", "200"]
    await settled(proxy)


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
async def test_idempotent_request_on_connection_closed_by_server_is_replayed(
    start_proxy: StartProxy, misbehaving: MisbehavingBackends, method: str
) -> None:
    server = OneShotServer("next")
    proxy = await start_proxy([await server.start(misbehaving)])
    async with client(proxy) as http:
        assert (await http.get("/1")).text == "connection 1"
    async with client(proxy) as http:
        response = await http.request(method, "/2")
    assert response.status_code == 200
    if method != "HEAD":
        assert response.text == "connection 2"
    assert server.backend is not None
    assert server.backend.received.count(f"{method} /2 ".encode()) == 2  # sent, then replayed
    await proxy.log.wait_access_lines(2)
    assert access(proxy.log.access_lines[-1])["status"] == "200"
    await settled(proxy)


@pytest.mark.parametrize(
    ("method", "body"), [("POST", b"pay once"), ("PATCH", b"x"), ("POST", b"")]
)
async def test_non_idempotent_request_on_connection_closed_by_server_is_not_replayed(
    start_proxy: StartProxy, misbehaving: MisbehavingBackends, method: str, body: bytes
) -> None:
    server = OneShotServer("next")
    proxy = await start_proxy([await server.start(misbehaving)])
    async with client(proxy) as http:
        assert (await http.get("/1")).text == "connection 1"
    async with client(proxy) as http:
        response = await http.request(method, "/pay", content=body)
    assert response.status_code == 502
    assert server.backend is not None
    assert server.backend.received.count(f"{method} /pay ".encode()) == 1  # never sent twice
    assert server.backend.connections == 1
    await proxy.log.wait_access_lines(2)
    line = access(proxy.log.access_lines[1])
    assert (line["status"], line["termination"]) == ("502", "SH")
    await settled(proxy)


# -- client timeouts -------------------------------------------------------------------------------


async def test_incomplete_request_head_gets_408(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy(
        [backend], timeouts=trilb.Timeouts(http_request=0.5, keep_alive=30, client=30)
    )
    raw = await raw_client(proxy.port)
    await raw.send(b"GET /slowloris HTTP/1.1\r\nHost: x\r\nX-Half: ")
    with trio.fail_after(WAIT):
        response = await raw.read_response()
        assert response.status == 408
        assert response.header("connection") == ["close"]
        assert await raw.wait_closed() == b""
    await raw.aclose()
    assert backend.connections == 0
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert (line["status"], line["termination"], line["server"]) == ("408", "cR", "<NOSRV>")
    await settled(proxy)


async def test_idle_keep_alive_client_is_closed(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    proxy = await start_proxy(
        [await start_backend()], timeouts=trilb.Timeouts(keep_alive=0.5, http_request=30)
    )
    raw = await raw_client(proxy.port)
    await raw.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await raw.read_response()).status == 200
    with trio.fail_after(WAIT):
        assert await raw.wait_closed() == b""  # closed, without a word
    await raw.aclose()
    await settled(proxy)
    assert len(proxy.log.access_lines) == 1


async def test_silent_client_is_closed_without_a_response(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend], timeouts=trilb.Timeouts(http_request=0.5, keep_alive=30))
    raw = await raw_client(proxy.port)
    with trio.fail_after(WAIT):
        assert await raw.wait_closed() == b""
    await raw.aclose()
    await settled(proxy)
    assert proxy.log.access_lines == []
    assert backend.connections == 0


# -- clients that go away -------------------------------------------------------------------------


class BodySink:
    """A raw server that reads a request until EOF without answering, and says when it saw EOF."""

    def __init__(self) -> None:
        self.eof = trio.Event()
        self.backend: RawBackend | None = None

    async def start(self, misbehaving: MisbehavingBackends) -> trilb.Address:
        self.backend = await misbehaving.start("sink", self.handle)
        return self.backend.address

    async def handle(self, backend: RawBackend, stream: trio.SocketStream) -> None:
        try:
            while chunk := await stream.receive_some(65536):
                backend.received += chunk
        finally:
            self.eof.set()


async def test_client_abort_mid_upload_closes_the_server_connection(
    start_proxy: StartProxy, misbehaving: MisbehavingBackends, raw_client: StartRawClient
) -> None:
    sink = BodySink()
    proxy = await start_proxy([await sink.start(misbehaving)])
    raw = await raw_client(proxy.port)
    await raw.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n")
    await raw.send(b"u" * 10240)
    assert sink.backend is not None
    await sink.backend.wait_connections(1)
    await raw.aclose()
    with trio.fail_after(WAIT):
        await sink.eof.wait()  # trilb closed the server connection too
    received = bytes(sink.backend.received)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /upload HTTP/1.1\r\n")
    assert body == b"u" * len(body)
    assert len(body) <= 10240
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert line["termination"].startswith("C"), line.group(0)
    await settled(proxy)


class CountingBody:
    """``total`` bytes in 64 KiB chunks, counting what the backend took. (An iterator class, not
    an async generator: the backend abandons it mid-way when trilb cuts the connection.)"""

    def __init__(self, total: int) -> None:
        self.total = total
        self.produced = 0
        self._block = os.urandom(65536)

    def __aiter__(self) -> CountingBody:
        return self

    async def __anext__(self) -> bytes:
        if self.produced >= self.total:
            raise StopAsyncIteration
        chunk = self._block[: self.total - self.produced]
        self.produced += len(chunk)
        return chunk


async def test_slow_reader_is_cut_in_bounded_memory(
    start_backend: StartBackend, start_proxy: StartProxy, nursery: trio.Nursery
) -> None:
    total = 256 * 1024 * 1024
    body = CountingBody(total)

    async def download(request: BackendRequest) -> BackendResponse:
        return BackendResponse(headers=[("Content-Length", str(total))], body=lambda: body)

    backend = await start_backend(download)
    proxy = await start_proxy([backend], timeouts=trilb.Timeouts(client=0.5))
    peak = baseline = rss()

    async def watch_rss() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss())
            await trio.sleep(0.02)

    nursery.start_soon(watch_rss)
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    try:
        await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        received = 0
        with trio.fail_after(WAIT):
            while received < 1024 * 1024:  # read a little, then stop reading
                received += len(await stream.receive_some(65536))
            await proxy.log.wait_access_lines(1)  # the proxy gave up on this client
        line = access(proxy.log.access_lines[0])
        assert (line["status"], line["termination"]) == ("200", "cD")
        with trio.fail_after(WAIT):  # what was in flight, then EOF or a reset
            try:
                while data := await stream.receive_some(1024 * 1024):
                    received += len(data)
            except trio.BrokenResourceError:
                pass
    finally:
        await stream.aclose()
    assert received < total
    assert body.produced < total // 2  # the proxy did not read the rest of the body
    assert peak - baseline < 48 * 1024 * 1024
    await settled(proxy)


def rss() -> int:
    """Resident memory of this process, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- graceful drain --------------------------------------------------------------------------------


async def _serve_until_drained(
    config: trilb.Config,
    log: CollectingLog,
    test: Callable[[trilb.Balancer], Awaitable[None]],
) -> None:
    """Run trilb in a nursery of our own: leaving it proves ``serve()`` returned by itself."""
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            lb: trilb.Balancer = await nursery.start(
                functools.partial(trilb.serve, config, log=log)
            )
            await test(lb)


def _port(lb: trilb.Balancer) -> int:
    return lb.addresses["frontend"][0].port


async def _refused(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def test_drain_lets_the_request_in_flight_finish(start_backend: StartBackend) -> None:
    release = trio.Event()

    async def slow(request: BackendRequest) -> BackendResponse:
        await release.wait()
        return BackendResponse(body=b"finished")

    backend = await start_backend(slow)
    log = CollectingLog()
    responses: list[httpx.Response] = []

    async def test(lb: trilb.Balancer) -> None:
        port = _port(lb)
        async with trio.open_nursery() as tasks:

            async def request() -> None:
                async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as http:
                    responses.append(await http.get(f"http://127.0.0.1:{port}/slow"))

            tasks.start_soon(request)
            await backend.wait_requests(1)
            tasks.start_soon(lb.drain, 20)
            await eventually(lambda: lb.draining)
            await eventually(lambda: any("draining" in m for m in log.messages))
            assert await _refused(port)
            assert not any("info: stopped" in m for m in log.messages)
            release.set()

    await _serve_until_drained(make_config([backend]), log, test)
    (response,) = responses
    assert response.status_code == 200
    assert response.text == "finished"
    assert response.headers["connection"] == "close"
    assert any("info: stopped" in m for m in log.messages)
    assert not any("grace period over" in m for m in log.messages)
    assert access(log.access_lines[0])["status"] == "200"


async def test_drain_cuts_what_outlives_the_grace_period(start_backend: StartBackend) -> None:
    async def never(request: BackendRequest) -> BackendResponse:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    backend = await start_backend(never)
    log = CollectingLog()
    errors: list[Exception] = []

    async def test(lb: trilb.Balancer) -> None:
        port = _port(lb)
        async with trio.open_nursery() as tasks:

            async def request() -> None:
                async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as http:
                    try:
                        await http.get(f"http://127.0.0.1:{port}/forever")
                    except httpx.TransportError as exc:
                        errors.append(exc)

            tasks.start_soon(request)
            await backend.wait_requests(1)
            await lb.drain(0.5)  # returns once the balancer has stopped

    await _serve_until_drained(make_config([backend]), log, test)
    assert len(errors) == 1
    assert isinstance(errors[0], httpx.RemoteProtocolError | httpx.ReadError)
    assert any("grace period over" in m for m in log.messages)
    assert any("info: stopped" in m for m in log.messages)


async def test_drain_closes_idle_keep_alive_connections(
    start_backend: StartBackend, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    log = CollectingLog()

    async def test(lb: trilb.Balancer) -> None:
        raw = await raw_client(_port(lb))
        await raw.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await raw.read_response()).status == 200
        await lb.drain(20)  # the idle connection does not hold it up
        assert await raw.wait_closed() == b""

    config = make_config([backend], timeouts=trilb.Timeouts(keep_alive=60))
    await _serve_until_drained(config, log, test)
    assert not any("grace period over" in m for m in log.messages)


async def test_statistics_during_and_after_a_drain(start_backend: StartBackend) -> None:
    """An operator watches the counters go down while draining, and reads them after the stop."""
    release = trio.Event()

    async def slow(request: BackendRequest) -> BackendResponse:
        await release.wait()
        return BackendResponse(body=b"finished")

    backend = await start_backend(slow)
    log = CollectingLog()

    async def test(lb: trilb.Balancer) -> None:
        port = _port(lb)
        async with trio.open_nursery() as tasks:

            async def request() -> None:
                async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as http:
                    assert (await http.get(f"http://127.0.0.1:{port}/slow")).status_code == 200

            tasks.start_soon(request)
            await backend.wait_requests(1)
            tasks.start_soon(lb.drain, 20)
            await eventually(lambda: any("draining" in m for m in log.messages))
            during = lb.statistics().frontend("frontend").traffic
            assert (during.current_connections, during.current_requests) == (1, 1)
            release.set()
        after = lb.statistics()
        assert after.frontend("frontend").traffic.current_connections == 0
        assert after.frontend("frontend").traffic.total_requests == 1
        assert after.backend("backend").traffic.current_requests == 0

    await _serve_until_drained(make_config([backend]), log, test)
