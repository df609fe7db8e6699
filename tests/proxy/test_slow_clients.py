"""Slow-client protection (issue 9): slowloris, slow POST and slow readers, all at once, beside a
normal client whose requests must keep succeeding.

* **Slowloris** trickles header lines and never ends its head: ``timeout_http_request`` (a
  deadline on the whole head, from the accept) answers 408 and closes (``cR``).
* **Slow POST** sends a head with a large Content-Length, some body bytes, then stalls:
  ``timeout_client`` on the body reads cuts it (``cD``) and the server sees its request aborted.
  ``timeout_client`` is an *inactivity* timeout (as HAProxy's ``timeout client``): each byte that
  arrives restarts it, so the client below trickles for a while first and is cut only once it
  pauses for longer than ``timeout_client``.
* **Slow reader** asks for a large body and reads nothing: once the socket buffers are full,
  ``timeout_client`` on the writes cuts it (``cD``) without trilb reading the rest of the body.

Single slow clients of each kind are tested in ``test_failures.py`` / ``test_logging.py``; here
they run together, several of each, on real sockets on 127.0.0.1. Every wait is on an event and
bounded by ``trio.fail_after``; the only sleeps are the slow clients' own trickle intervals.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs
import httpx
import trio
from conftest import (
    WAIT,
    BackendRequest,
    BackendResponse,
    Proxy,
    RawClient,
    StartBackend,
    StartProxy,
)

import trilb

#: the timeouts under test
HTTP_REQUEST = 0.5
CLIENT = 0.5
#: how often a slow client sends its next few bytes
TRICKLE = 0.1
SLOWLORIS = 4
SLOW_POSTS = 4
SLOW_READERS = 3
#: a slow POST announces this much body ...
POST_LENGTH = 1024 * 1024
#: ... and sends this many pieces of POST_PIECE bytes, TRICKLE apart, before it stalls
POST_PIECES = 3
POST_PIECE = b"x" * 10
#: far more than the socket buffers between the backend and a reader that reads nothing hold
BIG = 256 * 1024 * 1024
#: trilb moves a client-send deadline later only when that gains over 2% (http_exchange._arm)
EARLY_SLACK = 0.02

ACCESS_LINE = re.compile(
    r"^\S+ \[[^\]]+\] \S+ \S+/(?P<server>\S+) "
    r"-?\d+/-?\d+/-?\d+/-?\d+/(?P<Ta>-?\d+) (?P<status>-?\d+) \d+ - - (?P<termination>\S\S)-- "
    r"\d+/\d+/\d+/\d+/\d+ \d+/\d+ \"(?P<request>.*)\"$"
)


def access(line: str) -> dict[str, str]:
    match = ACCESS_LINE.match(line)
    assert match is not None, line
    return match.groupdict()


class BigBody:
    """``total`` bytes in 64 KiB chunks, counting what the backend produced. (An iterator class,
    not an async generator: the backend abandons it mid-way when trilb cuts the connection.)"""

    def __init__(self, total: int) -> None:
        self.total = total
        self.produced = 0
        self._block = b"b" * 65536

    def __aiter__(self) -> BigBody:
        return self

    async def __anext__(self) -> bytes:
        if self.produced >= self.total:
            raise StopAsyncIteration
        chunk = self._block[: self.total - self.produced]
        self.produced += len(chunk)
        return chunk


@attrs.define
class SlowClient:
    """What one slow client did and saw (trio clock times)."""

    kind: str
    number: int
    started: float = 0.0  # before connecting
    last_sent: float = 0.0  # the end of its last successful send
    ended: float = 0.0  # when it saw trilb close (or, for slowloris, answer)
    sent_body: int = 0
    status: int | None = None  # the response it got, if any
    received: int = 0  # bytes it received (slow readers: after trilb gave up on it)

    @property
    def target(self) -> str:
        return f"/{self.kind}-{self.number}"


class Scene:
    """The slow clients, a normal client, and the events between them."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.clients: list[SlowClient] = []
        self.connected = 0
        self.all_connected = trio.Event()
        self.done = 0
        self.all_done = trio.Event()
        self.bodies: dict[str, BigBody] = {}
        self.normal_started = 0.0
        self.normal_statuses: list[int] = []

    @property
    def total(self) -> int:
        return SLOWLORIS + SLOW_POSTS + SLOW_READERS

    async def backend_handler(self, request: BackendRequest) -> BackendResponse:
        if request.target.startswith("/reader-"):
            body = self.bodies[request.target] = BigBody(BIG)
            return BackendResponse(headers=[("Content-Length", str(BIG))], body=lambda: body)
        return BackendResponse(body=f"hello {request.target}".encode())

    async def _connect(self, client: SlowClient) -> trio.SocketStream:
        client.started = trio.current_time()
        stream = await trio.open_tcp_stream("127.0.0.1", self.proxy.port)
        self.clients.append(client)
        return stream

    def _sent(self, client: SlowClient) -> None:
        """The client's first bytes are out: once every slow client got there, the normal one
        may start."""
        client.last_sent = trio.current_time()
        self.connected += 1
        if self.connected == self.total:
            self.all_connected.set()

    def _ended(self, client: SlowClient) -> None:
        client.ended = trio.current_time()
        self.done += 1
        if self.done == self.total:
            self.all_done.set()

    async def wait_access_line(self, request_fragment: str) -> dict[str, str]:
        """Wait for the access-log line whose request contains ``request_fragment``."""
        log = self.proxy.log
        with trio.fail_after(WAIT):
            while True:
                for line in log.access_lines:
                    if request_fragment in line:
                        return access(line)
                await log.wait_access_lines(len(log.access_lines) + 1)

    # -- the slow clients -----------------------------------------------------------------------

    async def slowloris(self, number: int) -> None:
        """A header line every TRICKLE seconds, never the blank line that ends the head."""
        client = SlowClient("slowloris", number)
        async with await self._connect(client) as stream:
            await stream.send_all(f"GET {client.target} HTTP/1.1\r\nHost: x\r\n".encode())
            self._sent(client)

            async def trickle() -> None:
                line = 0
                try:
                    while True:
                        await trio.sleep(TRICKLE)
                        line += 1
                        await stream.send_all(f"X-Trickle-{line}: {line}\r\n".encode())
                except trio.BrokenResourceError:
                    pass  # trilb closed: the answer is what the reader below checks

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                response = await RawClient(stream).read_response()  # bounded by WAIT
                client.status = response.status
                self._ended(client)
                nursery.cancel_scope.cancel()

    async def slow_post(self, number: int) -> None:
        """A 1 MB body announced, POST_PIECES pieces sent TRICKLE apart, then nothing."""
        client = SlowClient("post", number)
        async with await self._connect(client) as stream:
            head = (
                f"POST {client.target} HTTP/1.1\r\nHost: x\r\nContent-Length: {POST_LENGTH}\r\n\r\n"
            )
            await stream.send_all(head.encode())
            self._sent(client)
            for _ in range(POST_PIECES):
                await trio.sleep(TRICKLE)
                await stream.send_all(POST_PIECE)
                client.sent_body += len(POST_PIECE)
                client.last_sent = trio.current_time()
            raw = RawClient(stream)
            answer = await raw.read_until_closed()  # bounded by WAIT
            self._ended(client)
            client.received = len(answer)
            if answer:
                client.status = int(answer.split(b" ", 2)[1])

    async def slow_reader(self, number: int) -> None:
        """Asks for BIG bytes and reads none until trilb has given up on it."""
        client = SlowClient("reader", number)
        async with await self._connect(client) as stream:
            await stream.send_all(f"GET {client.target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            self._sent(client)
            await self.wait_access_line(f"GET {client.target} ")  # trilb is done with it
            self._ended(client)
            # What was already in the socket buffers, then the end (EOF, or a reset).
            with trio.fail_after(WAIT):
                try:
                    while data := await stream.receive_some(1024 * 1024):
                        client.received += len(data)
                except trio.BrokenResourceError:
                    pass

    # -- the normal client ----------------------------------------------------------------------

    async def normal_client(self) -> None:
        """Requests in a loop from when every slow client is connected until all are cut."""
        with trio.fail_after(WAIT):
            await self.all_connected.wait()
        self.normal_started = trio.current_time()
        async with httpx.AsyncClient(
            base_url=self.proxy.url, trust_env=False, timeout=WAIT
        ) as http:
            number = 0
            while not self.all_done.is_set():
                number += 1
                response = await http.get(f"/normal-{number}")
                self.normal_statuses.append(response.status_code)
                assert response.text == f"hello /normal-{number}"


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (for counters, which no event announces) under a deadline."""
    with trio.fail_after(WAIT):
        while not condition():
            await trio.sleep(0.005)


async def settled(proxy: Proxy) -> None:
    """No connection or request in progress anywhere in the balancer."""

    def idle() -> bool:
        stats = proxy.lb.statistics()
        traffic = [stats.frontend("frontend").traffic, stats.backend("backend").traffic]
        traffic += [s.traffic for s in stats.backend("backend").servers]
        return all(t.current_connections == 0 and t.current_requests == 0 for t in traffic)

    await eventually(idle)


async def test_slow_clients_are_cut_while_a_normal_client_keeps_being_served(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    scene: Scene | None = None

    async def handler(request: BackendRequest) -> BackendResponse:
        assert scene is not None
        return await scene.backend_handler(request)

    backend = await start_backend(handler, keep_body=False)
    proxy = await start_proxy(
        [backend],
        timeouts=trilb.Timeouts(http_request=HTTP_REQUEST, client=CLIENT),
        backend_timeouts=trilb.Timeouts(),  # the server side is not under test: 30 s
    )
    scene = Scene(proxy)
    with trio.fail_after(3 * WAIT):
        async with trio.open_nursery() as nursery:
            for number in range(SLOWLORIS):
                nursery.start_soon(scene.slowloris, number)
            for number in range(SLOW_POSTS):
                nursery.start_soon(scene.slow_post, number)
            for number in range(SLOW_READERS):
                nursery.start_soon(scene.slow_reader, number)
            nursery.start_soon(scene.normal_client)

    # The normal client was served all along: it started while every slow client was connected
    # and went on until the last one was cut.
    assert scene.normal_statuses
    assert set(scene.normal_statuses) == {200}
    assert scene.normal_started < min(c.ended for c in scene.clients)

    by_kind = {
        kind: [c for c in scene.clients if c.kind == kind]
        for kind in ("slowloris", "post", "reader")
    }
    assert [len(v) for v in by_kind.values()] == [SLOWLORIS, SLOW_POSTS, SLOW_READERS]

    # Slowloris: 408 once timeout_http_request has passed since the accept, not before.
    for c in by_kind["slowloris"]:
        assert c.status == 408
        assert HTTP_REQUEST <= c.ended - c.started < WAIT, c
    # Slow POST: cut once it was silent for timeout_client; the server saw the head and every
    # byte sent, then its connection closed with the body incomplete (nothing answered it).
    for c in by_kind["post"]:
        assert c.sent_body == POST_PIECES * len(POST_PIECE)
        assert CLIENT <= c.ended - c.last_sent < WAIT, c
    await backend.wait_for(lambda: backend.closed_connections >= SLOW_POSTS + SLOW_READERS)
    heads = {h.target: h for h in backend.heads}
    completed = {r.target for r in backend.requests}
    for c in by_kind["post"]:
        assert heads[c.target].body_length == c.sent_body
        assert c.target not in completed
    # Slow reader: cut on the writes, having received only what the buffers held; the backend
    # was not read to the end.
    for c in by_kind["reader"]:
        assert 0 < c.received < BIG
        assert scene.bodies[c.target].produced < BIG // 2

    # One access-log line per request, with the termination state that says why it ended.
    lines = [access(line) for line in proxy.log.access_lines]
    normal = [line for line in lines if line["request"].startswith("GET /normal-")]
    assert len(normal) == len(scene.normal_statuses)
    assert {(line["status"], line["termination"]) for line in normal} == {("200", "--")}
    assert len(lines) == len(normal) + scene.total
    slow = {line["request"]: line for line in lines}
    badreq = [line for line in lines if line["request"] == "<BADREQ>"]
    assert [(b["status"], b["termination"], b["server"]) for b in badreq] == [
        ("408", "cR", "<NOSRV>")
    ] * SLOWLORIS
    for c in by_kind["post"]:  # cut before any answer: no status
        line = slow[f"POST {c.target} HTTP/1.1"]
        assert (line["status"], line["termination"], line["server"]) == ("-1", "cD", "s1")
        assert c.received == 0
    for c in by_kind["reader"]:  # cut mid-body, after its writes made no progress for CLIENT
        line = slow[f"GET {c.target} HTTP/1.1"]
        assert (line["status"], line["termination"], line["server"]) == ("200", "cD", "s1")
        assert int(line["Ta"]) >= 1000 * CLIENT * (1 - EARLY_SLACK)
    await settled(proxy)
