"""WebSocket (HTTP Upgrade) through trilb: a 101 turns the connection into a two-way byte tunnel.

Everything runs on real sockets. The backend is a WebSocket echo server written here, with the
RFC 6455 handshake and frames done by hand (no wsproto): it echoes text and binary frames, answers
plain HTTP requests too (so that one server connection can carry HTTP and then switch), and obeys a
few commands sent as text frames (``close-me``, ``reset-me``, ``flood``). The client is a raw socket
with hand-made masked frames. Each test checks both ends and the access-log line; the conftest's
autouse check finds no file descriptor left open.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import attrs
import pytest
import trio
import trustme
from conftest import (
    WAIT,
    BackendRequest,
    BackendResponse,
    CollectingLog,
    MisbehavingBackends,
    RawBackend,
    StartBackend,
    StartProxy,
    StartRawClient,
    make_config,
)

import trilb
from trilb.net import TCPStream
from trilb.tunnel import Tunnel

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8
RECEIVE_SIZE = 64 * 1024

#: the fields of a haproxy-format access log line that these tests look at
ACCESS_LINE = re.compile(
    r"^\S+ \[[^\]]+\] (?P<frontend>\S+) (?P<backend>\S+)/(?P<server>\S+) "
    r"(?P<timers>\S+) (?P<status>-?\d+) (?P<bytes>\d+) - - (?P<termination>\S\S)-- "
    r"\d+/\d+/\d+/\d+/(?P<retries>\d+) \d+/\d+ (?P<request>\".*\")$"
)

Headers = list[tuple[bytes, bytes]]


def access(line: str) -> re.Match[str]:
    match = ACCESS_LINE.match(line)
    assert match is not None, line
    return match


# -- the WebSocket protocol, by hand (RFC 6455) ----------------------------------------------------


def accept_for(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``Sec-WebSocket-Key: key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def new_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def _mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    size = len(data)
    pad = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(size, "big")


def encode_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One final frame; clients mask, servers do not."""
    head = bytearray([0x80 | opcode])
    bit = 0x80 if mask else 0
    size = len(payload)
    if size < 126:
        head.append(bit | size)
    elif size < 1 << 16:
        head.append(bit | 126)
        head += size.to_bytes(2, "big")
    else:
        head.append(bit | 127)
        head += size.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        head += key
        payload = _mask(payload, key)
    return bytes(head) + payload


def parse_head(raw: bytes) -> tuple[bytes, Headers]:
    """The start line and the header fields of a message head (without its blank line)."""
    start, *lines = raw.split(b"\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    return start, headers


def header(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name.lower()]


def tokens(headers: Headers, name: bytes) -> set[bytes]:
    return {t.strip().lower() for v in header(headers, name) for t in v.split(b",")}


class Peer:
    """One end of a WebSocket over a trio stream: reads heads and frames from its own buffer."""

    def __init__(self, stream: trio.abc.Stream, *, masks: bool) -> None:
        self.stream = stream
        self.masks = masks
        self.buffer = bytearray()
        self.eof = False

    async def _fill(self) -> bool:
        if self.eof:
            return False
        data = await self.stream.receive_some(RECEIVE_SIZE)
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise EOFError(f"closed with {len(self.buffer)} of {size} bytes")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_head(self) -> bytes | None:
        """The next message head (without the blank line), or None at a clean EOF."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if not await self._fill():
                if self.buffer:
                    raise EOFError(f"closed inside a head: {bytes(self.buffer)!r}")
                return None
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return head

    async def read_frame(self) -> tuple[int, bytes] | None:
        """The next frame (opcode, unmasked payload), or None at EOF between frames."""
        if not self.buffer and not await self._fill():
            return None
        first, second = await self._take(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(await self._take(2), "big")
        elif size == 127:
            size = int.from_bytes(await self._take(8), "big")
        key = await self._take(4) if second & 0x80 else None
        payload = await self._take(size)
        return first & 0x0F, _mask(payload, key) if key else payload

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        await self.stream.send_all(encode_frame(opcode, payload, mask=self.masks))


# -- the echo backend -----------------------------------------------------------------------------


@attrs.define
class Switch:
    """What a backend connection saw of a handshake."""

    connection: int  # 1-based number of the backend connection
    headers: Headers


class WsBackend:
    """A WebSocket echo server on 127.0.0.1 (see the module docstring).

    ``greeting``, if set, is sent as a text frame in the same write as the 101 head. Counts
    connections, their ends, and how WebSocket connections ended: ``eofs`` (the peer closed its
    direction) and ``breaks`` (reset / broken)."""

    def __init__(self, *, greeting: bytes | None = None) -> None:
        self.greeting = greeting
        self.port = 0
        self.connections = 0
        self.closed = 0
        self.eofs = 0
        self.breaks = 0
        self.switches: list[Switch] = []
        self.plain_requests = 0
        self.messages: list[tuple[int, bytes]] = []  # frames received, in order
        self._changed = trio.Event()

    @property
    def address(self) -> trilb.Address:
        return trilb.Address(host="127.0.0.1", port=self.port)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT):
            while not condition():
                await self._changed.wait()

    async def run(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._serve, listeners, task_status=task_status)

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        self._notify()
        peer = Peer(stream, masks=False)
        try:
            while (raw := await peer.read_head()) is not None:
                _, headers = parse_head(raw)
                upgrade = tokens(headers, b"upgrade")
                if b"upgrade" in tokens(headers, b"connection") and b"websocket" in upgrade:
                    self.switches.append(Switch(connection=number, headers=headers))
                    self._notify()
                    await self._websocket(peer, header(headers, b"sec-websocket-key")[0])
                    return
                self.plain_requests += 1
                self._notify()
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            self.closed += 1
            self._notify()

    async def _websocket(self, peer: Peer, key: bytes) -> None:
        stream = peer.stream
        assert isinstance(stream, trio.SocketStream)
        out = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_for(key) + b"\r\n\r\n"
        )
        if self.greeting is not None:
            out += encode_frame(TEXT, self.greeting, mask=False)
        await stream.send_all(out)
        try:
            while (frame := await peer.read_frame()) is not None:
                opcode, payload = frame
                self.messages.append(frame)
                self._notify()
                if opcode == CLOSE:
                    await peer.send_frame(CLOSE, payload)
                    return
                if payload == b"close-me":
                    await peer.send_frame(CLOSE, struct.pack("!H", 1000))
                    return
                if payload == b"reset-me":
                    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if payload == b"flood":
                    block = encode_frame(BINARY, b"f" * 60_000, mask=False)
                    while True:
                        await stream.send_all(block)
                await peer.send_frame(opcode, payload)
        except trio.BrokenResourceError:
            self.breaks += 1
            self._notify()
            return
        # The client ended its direction: say goodbye on ours (a half-closed tunnel still carries
        # it), then close.
        self.eofs += 1
        self._notify()
        await peer.send_frame(TEXT, b"bye")


StartWsBackend = Callable[..., Awaitable[WsBackend]]


@pytest.fixture
def start_ws_backend(nursery: trio.Nursery) -> StartWsBackend:
    """``await start_ws_backend(greeting=None)``: a running :class:`WsBackend`."""

    async def start(*, greeting: bytes | None = None) -> WsBackend:
        backend = WsBackend(greeting=greeting)
        await nursery.start(backend.run)
        return backend

    return start


# -- the client -----------------------------------------------------------------------------------


def handshake_request(
    key: bytes,
    *,
    target: bytes = b"/chat",
    version: bytes = b"1.1",
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    fields: Headers = [
        (b"Host", b"chat.example.com"),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", key),
        (b"Sec-WebSocket-Version", b"13"),
        *extra,
    ]
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in fields)
    return b"GET " + target + b" HTTP/" + version + b"\r\n" + lines + b"\r\n"


async def open_websocket(
    raw_client: StartRawClient, port: int, *, early: bytes = b""
) -> tuple[Peer, Headers]:
    """Connect through trilb and switch to WebSocket; ``early`` goes in the handshake's write.
    Returns the client end and the 101's header fields (the Accept already checked)."""
    raw = await raw_client(port)
    client = Peer(raw.stream, masks=True)
    key = new_key()
    await client.stream.send_all(handshake_request(key) + early)
    with trio.fail_after(WAIT):
        head = await client.read_head()
    assert head is not None
    start, headers = parse_head(head)
    assert start == b"HTTP/1.1 101 Switching Protocols", head
    assert header(headers, b"sec-websocket-accept") == [accept_for(key)]
    return client, headers


async def receive(peer: Peer) -> tuple[int, bytes] | None:
    with trio.fail_after(WAIT):
        return await peer.read_frame()


async def closed(peer: Peer) -> None:
    """Wait until the other end closes (a reset counts), with no frame arriving meanwhile."""
    with trio.fail_after(WAIT):
        try:
            assert await peer.read_frame() is None
        except trio.BrokenResourceError:
            pass


async def echo(peer: Peer, opcode: int, payload: bytes) -> None:
    await peer.send_frame(opcode, payload)
    assert await receive(peer) == (opcode, payload)


def tunnel_timeouts(seconds: float) -> trilb.Timeouts:
    return trilb.Timeouts(tunnel=seconds)


# -- the tests ------------------------------------------------------------------------------------


async def test_handshake_and_messages_both_ways(
    start_ws_backend: StartWsBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_ws_backend()
    proxy = await start_proxy([backend.address])
    client, headers = await open_websocket(raw_client, proxy.port)
    assert tokens(headers, b"upgrade") == {b"websocket"}
    assert tokens(headers, b"connection") == {b"upgrade"}

    # the server got the offer: Upgrade, Connection: Upgrade and the key, end to end
    (switch,) = backend.switches
    assert header(switch.headers, b"upgrade") == [b"websocket"]
    assert header(switch.headers, b"connection") == [b"Upgrade"]
    assert len(header(switch.headers, b"sec-websocket-key")) == 1

    big = os.urandom(300 * 1024)  # several reads' worth, both ways
    payloads = [b"hello", b"x" * 125, b"y" * 126, b"z" * 65536, big, b"last"]
    for index, payload in enumerate(payloads):
        await echo(client, BINARY if index % 2 else TEXT, payload)
    assert [payload for _, payload in backend.messages] == payloads

    # traffic counters move while the tunnel is open, not only when it ends
    stats = proxy.lb.statistics()
    moved = sum(len(p) for p in payloads)
    assert stats.frontend("frontend").traffic.bytes_out > moved
    assert stats.frontend("frontend").traffic.bytes_in > moved
    server = stats.backend("backend").server("s1")
    assert server.traffic.bytes_in > moved
    assert server.traffic.bytes_out > moved
    assert server.traffic.current_requests == 1
    assert proxy.log.access_lines == []  # logged when the tunnel ends

    # the WebSocket closing handshake; the server closes, then the client
    await client.send_frame(CLOSE, struct.pack("!H", 1000))
    assert await receive(client) == (CLOSE, struct.pack("!H", 1000))
    await closed(client)
    await client.stream.aclose()
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert line["status"] == "101"
    assert line["termination"] == "--"
    assert line["request"] == '"GET /chat HTTP/1.1"'
    assert int(line["bytes"]) > moved
    await backend.wait_for(lambda: backend.closed == 1)
    after = proxy.lb.statistics().backend("backend")
    assert after.server("s1").idle_connections == 0  # a switched connection is never pooled
    assert after.server("s1").traffic.current_requests == 0
    assert after.traffic.responses_1xx == 1


async def test_bytes_sent_with_the_heads_are_not_lost(
    start_ws_backend: StartWsBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    """A frame in the client's handshake write and one in the server's 101 write both arrive."""
    backend = await start_ws_backend(greeting=b"welcome")
    proxy = await start_proxy([backend.address])
    early = encode_frame(TEXT, b"early bird", mask=True)
    client, _ = await open_websocket(raw_client, proxy.port, early=early)
    assert await receive(client) == (TEXT, b"welcome")
    assert await receive(client) == (TEXT, b"early bird")
    assert backend.messages == [(TEXT, b"early bird")]
    await echo(client, TEXT, b"and then")


async def test_client_half_close_reaches_the_backend(
    start_ws_backend: StartWsBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_ws_backend()
    proxy = await start_proxy([backend.address])
    client, _ = await open_websocket(raw_client, proxy.port)
    await echo(client, TEXT, b"one")
    stream = client.stream
    assert isinstance(stream, trio.SocketStream)
    await stream.send_eof()  # the client is done sending, not receiving
    await backend.wait_for(lambda: backend.eofs == 1)
    # the backend's goodbye, sent after the client's EOF, still comes through; then the end
    assert await receive(client) == (TEXT, b"bye")
    await closed(client)
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert (line["status"], line["termination"]) == ("101", "--")
    assert backend.breaks == 0
    await backend.wait_for(lambda: backend.closed == 1)


async def test_backend_close_reaches_the_client(
    start_ws_backend: StartWsBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_ws_backend()
    proxy = await start_proxy([backend.address])
    client, _ = await open_websocket(raw_client, proxy.port)
    await client.send_frame(TEXT, b"close-me")
    assert await receive(client) == (CLOSE, struct.pack("!H", 1000))
    await closed(client)  # the server's EOF, passed on
    assert proxy.log.access_lines == []  # the client's direction is still open
    await client.stream.aclose()
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert (line["status"], line["termination"]) == ("101", "--")


@pytest.mark.parametrize(
    ("frontend_tunnel", "backend_tunnel", "termination"),
    [
        pytest.param(0.5, 0.5, "cD", id="same-timeouts-client-side"),
        pytest.param(5.0, 0.5, "sD", id="backend-timeout-shorter"),
    ],
)
async def test_idle_tunnel_times_out(
    start_ws_backend: StartWsBackend,
    start_proxy: StartProxy,
    raw_client: StartRawClient,
    frontend_tunnel: float,
    backend_tunnel: float,
    termination: str,
) -> None:
    backend = await start_ws_backend()
    proxy = await start_proxy(
        [backend.address],
        timeouts=tunnel_timeouts(frontend_tunnel),
        backend_timeouts=tunnel_timeouts(backend_tunnel),
    )
    client, _ = await open_websocket(raw_client, proxy.port)
    await echo(client, TEXT, b"ping")
    idle_since = trio.current_time()
    await closed(client)
    waited = trio.current_time() - idle_since
    assert 0.45 <= waited < 3.0
    await backend.wait_for(lambda: backend.closed == 1)
    assert backend.eofs + backend.breaks == 1
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert (line["status"], line["termination"]) == ("101", termination)


async def test_traffic_keeps_a_tunnel_open(
    start_ws_backend: StartWsBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    """Inactivity means no byte in either direction: a tunnel in use outlives timeout_tunnel."""
    backend = await start_ws_backend()
    proxy = await start_proxy([backend.address], timeouts=tunnel_timeouts(0.5))
    client, _ = await open_websocket(raw_client, proxy.port)
    started = trio.current_time()
    while trio.current_time() - started < 1.2:
        await echo(client, TEXT, b"still here")
        await trio.sleep(0.1)
    assert proxy.log.access_lines == []


async def test_a_client_that_does_not_read_is_blamed(
    start_ws_backend: StartWsBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    """The server pushes, the client reads nothing: buffers fill, trilb's write to the client
    waits, and when the tunnel idles out (on the backend's shorter timeout) the client is named."""
    backend = await start_ws_backend()
    proxy = await start_proxy(
        [backend.address], timeouts=tunnel_timeouts(5.0), backend_timeouts=tunnel_timeouts(0.5)
    )
    client, _ = await open_websocket(raw_client, proxy.port)
    await client.send_frame(TEXT, b"flood")
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert (line["status"], line["termination"]) == ("101", "cD")
    await backend.wait_for(lambda: backend.closed == 1)


async def test_client_reset_ends_the_tunnel(
    start_ws_backend: StartWsBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_ws_backend()
    proxy = await start_proxy([backend.address])
    client, _ = await open_websocket(raw_client, proxy.port)
    await echo(client, TEXT, b"ping")
    stream = client.stream
    assert isinstance(stream, trio.SocketStream)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()
    await backend.wait_for(lambda: backend.closed == 1)
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert (line["status"], line["termination"]) == ("101", "CD")


async def test_backend_reset_ends_the_tunnel(
    start_ws_backend: StartWsBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_ws_backend()
    proxy = await start_proxy([backend.address])
    client, _ = await open_websocket(raw_client, proxy.port)
    await client.send_frame(TEXT, b"reset-me")
    await closed(client)
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert (line["status"], line["termination"]) == ("101", "SD")


@pytest.mark.parametrize("status", [200, 400])
async def test_a_refused_upgrade_is_an_ordinary_response(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    raw_client: StartRawClient,
    status: int,
) -> None:
    async def refuse(request: BackendRequest) -> BackendResponse:
        return BackendResponse(status=status, body=b"no switching here")

    backend = await start_backend(refuse)
    proxy = await start_proxy([backend.address])
    raw = await raw_client(proxy.port)
    await raw.send(handshake_request(new_key()))
    response = await raw.read_response()
    assert response.status == status
    assert response.body == b"no switching here"
    assert response.header("upgrade") == []
    assert response.header("connection") == []  # HTTP/1.1 keep-alive: nothing to say
    (head,) = backend.heads
    assert head.header("upgrade") == ["websocket"]
    assert head.header("connection") == ["Upgrade"]
    # the client connection goes on, and so does the (pooled) server connection
    await raw.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await raw.read_response()).status == status
    assert [h.connection for h in backend.heads] == [1, 1]
    assert not backend.heads[1].has_header("upgrade")
    await proxy.log.wait_access_lines(2)
    assert [access(line)["status"] for line in proxy.log.access_lines] == [str(status)] * 2


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        pytest.param(handshake_request(b"a2V5", version=b"1.0"), "HTTP/1.0", id="http-1.0"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            "h2c",
            id="h2c",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Content-Length: 2\r\n\r\nhi",
            "a body",
            id="with-a-body",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            "no Connection: Upgrade",
            id="not-named-in-connection",
        ),
    ],
)
async def test_offers_that_are_not_passed_on(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    raw_client: StartRawClient,
    request_bytes: bytes,
    reason: str,
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend.address])
    raw = await raw_client(proxy.port)
    await raw.send(request_bytes)
    response = await raw.read_response()
    assert response.status == 200, reason
    (head,) = backend.heads
    assert not head.has_header("upgrade"), reason
    assert not head.has_header("connection"), reason
    assert not head.has_header("http2-settings"), reason


async def test_a_101_nobody_asked_for_is_a_bad_gateway(
    misbehaving: MisbehavingBackends, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    """Without an offer passed on (here: no Connection: Upgrade), a 101 is a protocol error."""

    async def switch_anyway(backend: RawBackend, stream: trio.SocketStream) -> None:
        await backend.read_head(stream)
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
        await stream.aclose()

    server = await misbehaving.start("switch-anyway", switch_anyway)
    proxy = await start_proxy([server.address], retries=0)
    raw = await raw_client(proxy.port)
    await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
    response = await raw.read_response()
    assert response.status == 502
    assert response.header("upgrade") == []
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert (line["status"], line["termination"]) == ("502", "SH")


async def test_a_switched_server_connection_is_never_pooled(
    start_ws_backend: StartWsBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_ws_backend()
    proxy = await start_proxy([backend.address])

    async def plain() -> None:
        raw = await raw_client(proxy.port)
        await raw.send(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await raw.read_response()).body == b"plain"

    def idle() -> int:
        return proxy.lb.statistics().backend("backend").server("s1").idle_connections

    await plain()
    assert backend.connections == 1
    assert idle() == 1
    # the handshake reuses the pooled connection, which then becomes a tunnel
    client, _ = await open_websocket(raw_client, proxy.port)
    assert backend.switches[0].connection == 1
    assert idle() == 0
    await echo(client, TEXT, b"hi")
    await client.send_frame(TEXT, b"close-me")
    assert (await receive(client)) == (CLOSE, struct.pack("!H", 1000))
    await closed(client)
    await client.stream.aclose()
    await proxy.log.wait_access_lines(2)
    assert idle() == 0
    await plain()  # needs a new server connection
    assert backend.connections == 2
    assert backend.plain_requests == 2


async def test_drain_closes_an_open_tunnel(
    start_ws_backend: StartWsBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_ws_backend()
    proxy = await start_proxy([backend.address])
    client, _ = await open_websocket(raw_client, proxy.port)
    await echo(client, TEXT, b"ping")
    with trio.fail_after(WAIT):
        await proxy.lb.drain(0.3)  # the tunnel outlives the grace period: cut
    await closed(client)
    await backend.wait_for(lambda: backend.closed == 1)
    line = access(proxy.log.access_lines[0])
    assert (line["status"], line["termination"]) == ("101", "KD")
    assert any("grace period over" in m for m in proxy.log.messages)


async def test_cancelling_the_balancer_closes_an_open_tunnel(
    start_ws_backend: StartWsBackend, raw_client: StartRawClient
) -> None:
    backend = await start_ws_backend()
    log = CollectingLog()
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            lb: trilb.Balancer = await nursery.start(
                functools.partial(trilb.serve, make_config([backend.address]), log=log)
            )
            client, _ = await open_websocket(raw_client, lb.addresses["frontend"][0].port)
            await echo(client, TEXT, b"ping")
            nursery.cancel_scope.cancel()
    await closed(client)
    await backend.wait_for(lambda: backend.closed == 1)
    line = access(log.access_lines[0])
    assert (line["status"], line["termination"]) == ("101", "KD")


# -- over TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    pem = tmp_path_factory.mktemp("ws-certs") / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    return ca, pem


async def test_websocket_over_a_tls_frontend(
    start_ws_backend: StartWsBackend,
    start_proxy: StartProxy,
    tls_files: tuple[trustme.CA, Path],
) -> None:
    """A TLS client stream cannot half-close: the server's close ends the whole tunnel."""
    ca, pem = tls_files
    backend = await start_ws_backend()
    config = make_config([backend.address])
    (frontend,) = config.frontends
    config = attrs.evolve(
        config,
        frontends=[attrs.evolve(frontend, tls=trilb.TLSConfig(certificates=[str(pem)]))],
    )
    proxy = await start_proxy(config=config)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    tcp = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
    try:
        client = Peer(stream, masks=True)
        key = new_key()
        await stream.send_all(handshake_request(key))
        head = await client.read_head()
        assert head is not None
        start, headers = parse_head(head)
        assert start == b"HTTP/1.1 101 Switching Protocols"
        assert header(headers, b"sec-websocket-accept") == [accept_for(key)]
        for payload in (b"over tls", os.urandom(200 * 1024)):
            await echo(client, BINARY, payload)
        await client.send_frame(TEXT, b"close-me")
        assert await receive(client) == (CLOSE, struct.pack("!H", 1000))
        await closed(client)  # no half-close over TLS: trilb closed the client connection
    finally:
        await trio.aclose_forcefully(stream)
    await proxy.log.wait_access_lines(1)
    line = access(proxy.log.access_lines[0])
    assert (line["status"], line["termination"]) == ("101", "--")


# -- the Tunnel on its own, over socket pairs -----------------------------------------------------


def _pair() -> tuple[TCPStream, trio.SocketStream]:
    """A connected pair: trilb's end (a TCPStream) and the peer's (a trio SocketStream)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return TCPStream(ours), trio.SocketStream(trio.socket.from_stdlib_socket(theirs))


async def _run_tunnel(
    client_timeout: float,
    server_timeout: float,
    test: Callable[[trio.SocketStream, trio.SocketStream], Awaitable[None]],
) -> tuple[Tunnel, str]:
    """Run a Tunnel between two pairs while ``test`` plays the client and the server."""
    client_ours, client = _pair()
    server_ours, server = _pair()
    tunnel = Tunnel(
        client_ours,
        server_ours,
        client_timeout=client_timeout,
        server_timeout=server_timeout,
        from_client=lambda size: None,
        from_server=lambda size: None,
    )
    termination = ""
    try:
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:

                async def run() -> None:
                    nonlocal termination
                    termination = await tunnel.run()
                    client_ours.close()  # as the proxy does once a tunnel has ended
                    server_ours.close()

                nursery.start_soon(run)
                await test(client, server)
    finally:
        for stream in (client_ours, server_ours):
            stream.close()
        for peer in (client, server):
            await trio.aclose_forcefully(peer)
    return tunnel, termination


async def test_tunnel_blames_a_server_that_does_not_read() -> None:
    """The client's timeout is the smaller, but the bytes were waiting for the server."""

    async def test(client: trio.SocketStream, server: trio.SocketStream) -> None:
        try:
            while True:  # until the tunnel gives up and the client connection is closed
                await client.send_all(b"x" * 65536)
        except trio.BrokenResourceError:
            pass

    tunnel, termination = await _run_tunnel(0.3, 5.0, test)
    assert termination == "sD"
    assert repr(tunnel) == "<Tunnel idle timeout 0.3s termination='sD'>"


async def test_tunnel_write_to_a_closed_server() -> None:
    async def test(client: trio.SocketStream, server: trio.SocketStream) -> None:
        await server.aclose()
        assert await client.receive_some(10) == b""  # the server's EOF, passed on
        await client.send_all(b"anyone there?")  # relayed to a closed socket: broken

    _, termination = await _run_tunnel(5.0, 5.0, test)
    assert termination == "SD"
