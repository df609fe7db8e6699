"""The PROXY protocol on real sockets, in one process.

``accept_proxy``: clients send hand-built headers (``encode_v1`` / ``encode_v2``) before their
HTTP request or TCP bytes; the h11 backend of ``conftest`` shows what the carried address became
(X-Forwarded-For, the access log, ``src`` routes, ``balance = "source"``).

``send_proxy``: :class:`ProxyAwareServer` reads the header trilb sends with
``parse_proxy_header`` and then echoes bytes (TCP mode), speaks HTTP with h11, or TLS.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import h11
import pytest
import trio
import trustme
from conftest import (
    WAIT,
    Backend,
    Proxy,
    RawClient,
    StartBackend,
    StartProxy,
    StartRawClient,
    make_config,
)

import trilb
from trilb.core.proxy_protocol import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_NOOP,
    PP2_TYPE_UNIQUE_ID,
    ProxyHeader,
    encode_v1,
    encode_v2,
    encode_v2_local,
    parse_proxy_header,
)

RECEIVE_SIZE = 64 * 1024
REQUEST = b"GET /pp HTTP/1.1\r\nHost: example.test\r\n\r\n"
CLIENT = ("203.0.113.7", 4567)
DESTINATION = ("198.51.100.1", 8080)


# -- configs --------------------------------------------------------------------------------------


def with_frontend(config: trilb.Config, **changes: Any) -> trilb.Config:
    """``config`` with its one frontend changed."""
    return attrs.evolve(config, frontends=[attrs.evolve(config.frontends[0], **changes)])


def http_config(
    servers: Sequence[Backend | trilb.ServerConfig],
    *,
    handshake: float = 10.0,
    **frontend: Any,
) -> trilb.Config:
    """An HTTP frontend ``frontend`` with accept_proxy and forwarded_for (unless overridden)."""
    config = make_config(servers, forwarded_for=True, timeouts=trilb.Timeouts(handshake=handshake))
    frontend.setdefault("accept_proxy", True)
    return with_frontend(config, **frontend)


def tcp_config(
    servers: Sequence[trilb.ServerConfig], *, balance: str = "roundrobin", **frontend: Any
) -> trilb.Config:
    return trilb.Config(
        frontends=[
            trilb.FrontendConfig(
                name="frontend",
                bind="127.0.0.1:0",
                mode="tcp",
                default_backend="backend",
                **frontend,
            )
        ],
        backends=[
            trilb.BackendConfig(name="backend", mode="tcp", servers=servers, balance=balance)
        ],
        log=trilb.LogConfig(target="none"),
    )


def echoed(response_body: bytes, name: str) -> list[str]:
    """A header's values as the echo backend saw them."""
    data = json.loads(response_body)
    return [v for n, v in data["headers"] if n.lower() == name.lower()]


def access_client(line: str) -> str:
    """The ``ip:port`` an access line starts with."""
    return line.split(" ", 1)[0]


async def get_through(client: RawClient, header: bytes, request: bytes = REQUEST) -> bytes:
    await client.send(header + request)
    response = await client.read_response()
    assert response.status == 200, response
    return response.body


# -- accept_proxy, HTTP mode ----------------------------------------------------------------------

HEADERS = [
    pytest.param(encode_v1(CLIENT, DESTINATION), CLIENT, id="v1"),
    pytest.param(encode_v2(CLIENT, DESTINATION), CLIENT, id="v2"),
    pytest.param(
        encode_v1(("2001:db8::7", 1234), ("2001:db8::1", 8080)), ("2001:db8::7", 1234), id="v1-ipv6"
    ),
    pytest.param(
        encode_v2(
            ("2001:db8::7", 1234),
            ("2001:db8::1", 8080),
            tlvs=[(PP2_TYPE_AUTHORITY, b"example.test"), (PP2_TYPE_UNIQUE_ID, b"abc")],
            crc32c=True,
        ),
        ("2001:db8::7", 1234),
        id="v2-ipv6-tlvs-crc",
    ),
]


@pytest.mark.parametrize(("header", "source"), HEADERS)
async def test_accept_proxy_http_uses_the_carried_address(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    raw_client: StartRawClient,
    header: bytes,
    source: tuple[str, int],
) -> None:
    backend = await start_backend()
    proxy = await start_proxy(config=http_config([backend]))
    client = await raw_client(proxy.port)
    # the header and the request in one segment: the request must not be eaten with the header
    body = await get_through(client, header)
    assert echoed(body, "X-Forwarded-For") == [source[0]]
    assert echoed(body, "X-Forwarded-Port") == ["8080"]  # the carried destination port
    assert backend.requests[0].target == "/pp"
    # keep-alive: the next request on the connection comes from the same client
    body = await get_through(client, b"")
    assert echoed(body, "X-Forwarded-For") == [source[0]]
    await proxy.log.wait_access_lines(2)
    for line in proxy.log.access_lines:
        # (HAProxy's %ci:%cp: an IPv6 address is not bracketed either)
        assert access_client(line) == f"{source[0]}:{source[1]}", line
        assert line.endswith('"GET /pp HTTP/1.1"')


async def test_accept_proxy_header_sent_byte_by_byte(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy(config=http_config([backend]))
    for header in (encode_v1(CLIENT, DESTINATION), encode_v2(CLIENT, DESTINATION)):
        client = await raw_client(proxy.port)
        with trio.fail_after(WAIT):
            for index in range(len(header)):
                await client.send(header[index : index + 1])
                await trio.sleep(0.002)
        body = await get_through(client, b"")
        assert echoed(body, "X-Forwarded-For") == [CLIENT[0]]
        await client.aclose()
    await proxy.log.wait_access_lines(2)
    assert [access_client(line) for line in proxy.log.access_lines] == ["203.0.113.7:4567"] * 2


@pytest.mark.parametrize("pieces", [1, 7])
async def test_accept_proxy_v2_header_with_a_64k_tlv(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient, pieces: int
) -> None:
    """The longest kind of header (near the 16-bit length limit), whole or in pieces: read to
    its last byte, and not one byte of the request with it."""
    backend = await start_backend()
    proxy = await start_proxy(config=http_config([backend]))
    header = encode_v2(CLIENT, DESTINATION, tlvs=[(PP2_TYPE_NOOP, bytes(65000))], crc32c=True)
    assert len(header) > 65000
    data = header + REQUEST
    client = await raw_client(proxy.port)
    step = -(-len(data) // pieces)
    for start in range(0, len(data), step):
        await client.send(data[start : start + step])
        await trio.sleep(0.01)
    response = await client.read_response()
    assert response.status == 200
    assert echoed(response.body, "X-Forwarded-For") == [CLIENT[0]]
    assert backend.requests[0].target == "/pp"


async def test_accept_proxy_local_command_keeps_the_real_address(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    """v2 LOCAL (a health check of the balancer in front) and v1 UNKNOWN: the connection's own
    addresses apply."""
    backend = await start_backend()
    proxy = await start_proxy(config=http_config([backend]))
    for header in (encode_v2_local(), b"PROXY UNKNOWN\r\n"):
        client = await raw_client(proxy.port)
        body = await get_through(client, header)
        assert echoed(body, "X-Forwarded-For") == ["127.0.0.1"]


INVALID = [
    pytest.param(REQUEST, id="http-request"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01", id="tls-hello"),
    pytest.param(b"PROXY TCP4 203.0.113.999 198.51.100.1 1 2\r\n", id="bad-ip"),
    pytest.param(b"PROXY TCP4 203.0.113.7 198.51.100.1 01 2\r\n", id="octal-port"),
    pytest.param(b"PROXY TCP6 203.0.113.7 198.51.100.1 1 2\r\n", id="v4-as-tcp6"),
    pytest.param(b"PROXY " + b"A" * 200, id="no-crlf"),
    pytest.param(encode_v2(CLIENT, DESTINATION)[:12] + b"\x21\x99\x00\x0c", id="v2-family"),
]


@pytest.mark.parametrize("data", INVALID)
async def test_invalid_header_drops_the_connection(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient, data: bytes
) -> None:
    backend = await start_backend()
    proxy = await start_proxy(config=http_config([backend]))
    client = await raw_client(proxy.port)
    await client.send(data)
    assert await client.wait_closed() == b""  # not even an error response
    warnings = [m for m in proxy.log.messages if "connection dropped" in m]
    assert len(warnings) == 1, proxy.log.messages
    assert warnings[0].startswith("trilb warning: 127.0.0.1:")
    assert "invalid PROXY header" in warnings[0]
    assert "frontend frontend" in warnings[0]
    assert backend.connections == 0
    assert backend.heads == []
    traffic = proxy.lb.statistics().frontend("frontend").traffic
    assert traffic.proxy_errors == 1
    assert proxy.log.access_lines == []


async def test_connection_closed_within_the_header_is_logged(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy(config=http_config([backend]))
    client = await raw_client(proxy.port)
    await client.send(encode_v1(CLIENT, DESTINATION)[:10])
    await client.stream.send_eof()
    assert await client.wait_closed() == b""
    assert any("connection closed within the header" in m for m in proxy.log.messages), (
        proxy.log.messages
    )
    assert backend.connections == 0


@pytest.mark.parametrize("partial", [b"", b"PROXY TCP4 203.0.113.7 "], ids=["silent", "partial"])
async def test_no_header_within_timeout_handshake(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient, partial: bytes
) -> None:
    backend = await start_backend()
    proxy = await start_proxy(config=http_config([backend], handshake=0.3))
    client = await raw_client(proxy.port)
    if partial:
        await client.send(partial)
    assert await client.wait_closed() == b""
    dropped = [m for m in proxy.log.messages if "connection dropped" in m]
    assert len(dropped) == 1, proxy.log.messages
    assert "no PROXY header within 0.3s" in dropped[0]
    assert backend.connections == 0
    assert proxy.lb.statistics().frontend("frontend").traffic.proxy_errors == 1


async def test_untrusted_source_is_a_direct_client(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    """127.0.0.1 is not in trusted_proxies: its connections carry no header, so a PROXY line is
    taken for the start of an HTTP request (and is not one)."""
    backend = await start_backend()
    config = http_config([backend], trusted_proxies=("10.0.0.0/8", "192.168.0.0/16"))
    proxy = await start_proxy(config=config)
    direct = await raw_client(proxy.port)
    body = await get_through(direct, b"")
    assert echoed(body, "X-Forwarded-For") == ["127.0.0.1"]

    spoofing = await raw_client(proxy.port)
    await spoofing.send(encode_v1(CLIENT, DESTINATION) + REQUEST)
    response = await spoofing.read_response()
    assert response.status == 400
    assert len(backend.requests) == 1  # only the direct client's
    assert proxy.lb.statistics().frontend("frontend").traffic.proxy_errors == 0
    await proxy.log.wait_access_lines(2)
    assert all(access_client(line).startswith("127.0.0.1:") for line in proxy.log.access_lines)


async def test_trusted_source_must_send_a_header(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    config = http_config([backend], trusted_proxies=("10.0.0.0/8", "127.0.0.0/8"))
    proxy = await start_proxy(config=config)
    client = await raw_client(proxy.port)
    body = await get_through(client, encode_v2(CLIENT, DESTINATION))
    assert echoed(body, "X-Forwarded-For") == [CLIENT[0]]
    direct = await raw_client(proxy.port)
    await direct.send(REQUEST)
    assert await direct.wait_closed() == b""
    assert len(backend.requests) == 1


# -- accept_proxy and TLS -------------------------------------------------------------------------


@attrs.frozen
class Certs:
    ca: trustme.CA
    site: Path  # localhost and a.example.test


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("pp-certs")
    ca = trustme.CA()
    site = folder / "site.pem"
    leaf = ca.issue_cert("localhost", "a.example.test")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(site))
    return Certs(ca=ca, site=site)


def client_context(certs: Certs, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    certs.ca.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


async def read_until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    with trio.fail_after(WAIT):
        while True:
            try:
                chunk = await stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def https_get(
    port: int,
    certs: Certs,
    *,
    header: bytes = b"",
    hostname: str = "localhost",
    alpn: Sequence[str] = (),
) -> tuple[int, bytes]:
    """A PROXY header in the clear, then TLS, then one request (Connection: close): the
    status and body of the response."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    if header:
        await tcp.send_all(header)
    stream = trio.SSLStream(tcp, client_context(certs, alpn), server_hostname=hostname)
    try:
        with trio.fail_after(WAIT):
            await stream.do_handshake()
            await stream.send_all(
                f"GET /tls HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n".encode()
            )
            raw = await read_until_closed(stream)
    finally:
        await trio.aclose_forcefully(stream)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_accept_proxy_then_tls(
    start_backend: StartBackend, start_proxy: StartProxy, certs: Certs
) -> None:
    backend = await start_backend()
    tls = trilb.TLSConfig(certificates=str(certs.site))
    proxy = await start_proxy(config=http_config([backend], tls=tls))
    status, body = await https_get(proxy.port, certs, header=encode_v2(CLIENT, DESTINATION))
    assert status == 200
    assert echoed(body, "X-Forwarded-For") == [CLIENT[0]]
    assert echoed(body, "X-Forwarded-Proto") == ["https"]
    await proxy.log.wait_access_lines(1)
    line = proxy.log.access_lines[0]
    assert access_client(line) == "203.0.113.7:4567"
    assert " frontend~ " in line


async def test_accept_proxy_then_tls_handshake_failure_names_the_carried_client(
    start_backend: StartBackend, start_proxy: StartProxy, certs: Certs, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    tls = trilb.TLSConfig(certificates=str(certs.site))
    proxy = await start_proxy(config=http_config([backend], tls=tls, handshake=0.5))
    client = await raw_client(proxy.port)
    await client.send(encode_v1(CLIENT, DESTINATION) + REQUEST)  # then HTTP, not TLS
    await client.wait_closed()
    with trio.fail_after(WAIT):
        while not any("TLS handshake failed" in m for m in proxy.log.messages):
            await trio.sleep(0.01)
    failed = [m for m in proxy.log.messages if "TLS handshake failed" in m]
    assert failed[0].startswith("trilb warning: 203.0.113.7:4567 frontend frontend: "), failed
    assert backend.connections == 0


# -- accept_proxy, balancing and routes -----------------------------------------------------------


def server_of(backend: Backend) -> trilb.ServerConfig:
    return trilb.ServerConfig(name=backend.name, address=backend.address)


async def test_src_routes_use_the_carried_address(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    inside = await start_backend(name="inside")
    outside = await start_backend(name="outside")
    config = trilb.Config(
        frontends=[
            trilb.FrontendConfig(
                name="frontend",
                bind="127.0.0.1:0",
                default_backend="outside",
                accept_proxy=True,
                routes=[
                    trilb.Route(
                        name="lan", match=trilb.Match(src=["203.0.113.0/24"]), backend="inside"
                    )
                ],
            )
        ],
        backends=[
            trilb.BackendConfig(name="inside", servers=[server_of(inside)]),
            trilb.BackendConfig(name="outside", servers=[server_of(outside)]),
        ],
        log=trilb.LogConfig(target="none"),
    )
    proxy = await start_proxy(config=config)
    for source, expected in [
        (("203.0.113.99", 1000), "inside"),
        (("198.51.100.99", 1000), "outside"),
        (("127.0.0.1", 1000), "outside"),
    ]:
        client = await raw_client(proxy.port)
        body = await get_through(client, encode_v1(source, DESTINATION))
        assert json.loads(body)["server"] == expected, source
        await client.aclose()


@attrs.define(eq=False)
class PPConn:
    """One connection to a :class:`ProxyAwareServer`: the header it started with, and then."""

    number: int
    header: ProxyHeader | None = None
    targets: list[str] = attrs.Factory(list)
    received: bytearray = attrs.Factory(bytearray)
    ended: trio.Event = attrs.Factory(trio.Event)


class PrefixedStream(trio.abc.Stream):
    """``inner`` with ``prefix`` (bytes already read from it) put back in front."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self.inner = inner
        self.prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.prefix:
            size = max_bytes or len(self.prefix)
            data, self.prefix = self.prefix[:size], self.prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


Kind = Literal["echo", "http", "tls"]


class ProxyAwareServer:
    """A server whose connections start with a PROXY header (``send_proxy``); after it: echo,
    HTTP (h11: answers ``NAME #CONNECTION TARGET``) or TLS (then its name on a line)."""

    def __init__(self, name: str, kind: Kind, tls: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.kind = kind
        self.tls = tls
        self.port = 0
        self.conns: list[PPConn] = []
        self._changed = trio.Event()

    def config(self, send_proxy: Literal["v1", "v2"] | None) -> trilb.ServerConfig:
        return trilb.ServerConfig(
            name=self.name,
            address=trilb.Address(host="127.0.0.1", port=self.port),
            send_proxy=send_proxy,
        )

    async def run(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._serve, listeners, task_status=task_status)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT):
            while not condition():
                await self._changed.wait()

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = PPConn(number=len(self.conns) + 1)
        self.conns.append(conn)
        try:
            buffer = bytearray()
            while (header := parse_proxy_header(buffer)) is None:
                chunk = await stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    return
                buffer += chunk
            conn.header = header
            self._notify()
            rest = bytes(buffer[header.length :])
            if self.kind == "echo":
                await self._echo(conn, PrefixedStream(stream, rest))
            elif self.kind == "http":
                await self._http(conn, stream, rest)
            else:
                assert self.tls is not None
                tls = trio.SSLStream(PrefixedStream(stream, rest), self.tls, server_side=True)
                await tls.do_handshake()
                await tls.send_all(self.name.encode() + b"\n")
                await self._echo(conn, tls)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            conn.ended.set()
            self._notify()

    async def _echo(self, conn: PPConn, stream: trio.abc.Stream) -> None:
        while data := await stream.receive_some(RECEIVE_SIZE):
            conn.received += data
            self._notify()
            await stream.send_all(data)

    async def _http(self, conn: PPConn, stream: trio.SocketStream, rest: bytes) -> None:
        h11_conn = h11.Connection(h11.SERVER)
        h11_conn.receive_data(rest)
        while True:
            event = h11_conn.next_event()
            if event is h11.NEED_DATA:
                h11_conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
            elif isinstance(event, h11.Request):
                conn.targets.append(event.target.decode())
                self._notify()
            elif isinstance(event, h11.EndOfMessage):
                body = f"{self.name} #{conn.number} {conn.targets[-1]}".encode()
                out = h11_conn.send(
                    h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))])
                )
                out = (out or b"") + (h11_conn.send(h11.Data(data=body)) or b"")
                out += h11_conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
                if h11_conn.our_state is not h11.DONE or h11_conn.their_state is not h11.DONE:
                    return
                h11_conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return


StartPPServer = Callable[..., Awaitable[ProxyAwareServer]]


@pytest.fixture
def start_pp_server(nursery: trio.Nursery) -> StartPPServer:
    async def start(name: str, kind: Kind, tls: ssl.SSLContext | None = None) -> ProxyAwareServer:
        server = ProxyAwareServer(name, kind, tls)
        await nursery.start(server.run)
        return server

    return start


async def test_balance_source_uses_the_carried_address(
    start_pp_server: StartPPServer, start_proxy: StartProxy
) -> None:
    servers = [await start_pp_server(f"s{i}", "echo") for i in (1, 2)]
    config = tcp_config([s.config("v2") for s in servers], balance="source", accept_proxy=True)
    proxy = await start_proxy(config=config)
    seen: dict[str, set[int]] = {}
    for round_ in range(2):
        for host in range(1, 17):
            source = f"203.0.113.{host}"
            async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as client:
                await client.send_all(encode_v1((source, 1000 + round_), DESTINATION) + b"x")
                with trio.fail_after(WAIT):
                    assert await client.receive_some(1) == b"x"
            await proxy.log.wait_access_lines(round_ * 16 + host)
            line = proxy.log.access_lines[-1]
            assert line.startswith(f"{source}:{1000 + round_} ")
            server = int(line.split(" ")[3].split("/")[1][1:])
            seen.setdefault(source, set()).add(server)
            # and the server learnt the carried address from trilb's own header
            header = servers[server - 1].conns[-1].header
            assert header is not None
            assert header.source == (source, 1000 + round_)
    assert all(len(servers_) == 1 for servers_ in seen.values()), seen  # each source sticks
    assert set().union(*seen.values()) == {1, 2}  # and sources are spread


# -- send_proxy -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_send_proxy_tcp_mode_carries_client_and_frontend_addresses(
    start_pp_server: StartPPServer, start_proxy: StartProxy, version: Literal["v1", "v2"]
) -> None:
    server = await start_pp_server("s1", "echo")
    proxy = await start_proxy(config=tcp_config([server.config(version)]))
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as client:
        local = client.socket.getsockname()
        with trio.fail_after(WAIT):
            await client.send_all(b"after the header")
            data = b""
            while len(data) < 16:
                data += await client.receive_some(RECEIVE_SIZE)
    assert data == b"after the header"
    header = server.conns[0].header
    assert header is not None
    assert header.version == int(version[1])
    assert not header.local
    assert header.source == ("127.0.0.1", local[1])
    assert header.destination == ("127.0.0.1", proxy.port)
    assert header.tlvs == ()
    assert bytes(server.conns[0].received) == b"after the header"
    line = (await _lines(proxy, 1))[0]
    assert line.startswith(f"127.0.0.1:{local[1]} ")


async def _lines(proxy: Proxy, count: int) -> list[str]:
    await proxy.log.wait_access_lines(count)
    return proxy.log.access_lines


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_accept_proxy_tcp_mode_passes_the_carried_addresses_on(
    start_pp_server: StartPPServer, start_proxy: StartProxy, version: Literal["v1", "v2"]
) -> None:
    server = await start_pp_server("s1", "echo")
    proxy = await start_proxy(config=tcp_config([server.config(version)], accept_proxy=True))
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as client:
        await client.send_all(encode_v2(CLIENT, DESTINATION) + b"ping")
        with trio.fail_after(WAIT):
            assert await client.receive_some(4) == b"ping"
    header = server.conns[0].header
    assert header is not None
    assert (header.source, header.destination) == (CLIENT, DESTINATION)
    line = (await _lines(proxy, 1))[0]
    assert line.startswith("203.0.113.7:4567 ")
    assert re.search(r" frontend backend/s1 \d+/\d+/\d+ 4 -- ", line), line


async def test_accept_proxy_tcp_mode_invalid_header(
    start_pp_server: StartPPServer, start_proxy: StartProxy
) -> None:
    server = await start_pp_server("s1", "echo")
    proxy = await start_proxy(config=tcp_config([server.config(None)], accept_proxy=True))
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as client:
        await client.send_all(b"SSH-2.0-OpenSSH_9.2\r\n")
        assert await read_until_closed(client) == b""  # (a reset: the bytes were left unread)
    assert any("invalid PROXY header" in m for m in proxy.log.messages)
    assert server.conns == []


async def http_get(client: RawClient, target: str) -> str:
    await client.send(f"GET {target} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
    response = await client.read_response()
    assert response.status == 200, response
    return response.body.decode()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_send_proxy_http_mode_keeps_a_connection_per_client(
    start_pp_server: StartPPServer,
    start_proxy: StartProxy,
    raw_client: StartRawClient,
    version: Literal["v1", "v2"],
) -> None:
    server = await start_pp_server("s1", "http")
    proxy = await start_proxy(config=make_config([server.config(version)]))
    alice = await raw_client(proxy.port)
    bob = await raw_client(proxy.port)
    alice_port = alice.stream.socket.getsockname()[1]
    bob_port = bob.stream.socket.getsockname()[1]

    # alice's two requests share one server connection: one header
    assert await http_get(alice, "/a1") == "s1 #1 /a1"
    assert await http_get(alice, "/a2") == "s1 #1 /a2"
    # bob, while alice's connection is idle, gets his own (a pool would have given him alice's)
    assert await http_get(bob, "/b1") == "s1 #2 /b1"
    assert await http_get(alice, "/a3") == "s1 #1 /a3"
    assert await http_get(bob, "/b2") == "s1 #2 /b2"
    assert len(server.conns) == 2
    first, second = server.conns
    assert first.header is not None
    assert second.header is not None
    assert first.header.source == ("127.0.0.1", alice_port)
    assert second.header.source == ("127.0.0.1", bob_port)
    for conn in (first, second):
        assert conn.header is not None
        assert conn.header.version == int(version[1])
        assert conn.header.destination == ("127.0.0.1", proxy.port)
    assert first.targets == ["/a1", "/a2", "/a3"]
    assert second.targets == ["/b1", "/b2"]

    # alice leaves: her server connection is closed with hers, not pooled for anyone
    await alice.aclose()
    await server.wait_for(lambda: first.ended.is_set())
    carol = await raw_client(proxy.port)
    assert await http_get(carol, "/c1") == "s1 #3 /c1"
    assert server.conns[2].header is not None
    assert server.conns[2].header.source == ("127.0.0.1", carol.stream.socket.getsockname()[1])
    assert not second.ended.is_set()
    stats = proxy.lb.statistics().backend("backend").server("s1")
    assert stats.traffic.total_connections == 3
    assert stats.idle_connections == 0


async def test_send_proxy_http_mode_passes_the_carried_client_on(
    start_pp_server: StartPPServer, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    server = await start_pp_server("s1", "http")
    proxy = await start_proxy(config=http_config([server.config("v1")]))
    client = await raw_client(proxy.port)
    await client.send(encode_v2(CLIENT, DESTINATION))
    assert await http_get(client, "/x") == "s1 #1 /x"
    header = server.conns[0].header
    assert header is not None
    assert header.version == 1
    assert (header.source, header.destination) == (CLIENT, DESTINATION)


async def test_send_proxy_v2_carries_sni_and_alpn_from_a_tls_frontend(
    start_pp_server: StartPPServer, start_proxy: StartProxy, certs: Certs
) -> None:
    server = await start_pp_server("s1", "http")
    tls = trilb.TLSConfig(certificates=str(certs.site))
    config = with_frontend(make_config([server.config("v2")]), tls=tls)
    proxy = await start_proxy(config=config)
    status, body = await https_get(proxy.port, certs, hostname="a.example.test", alpn=["http/1.1"])
    assert (status, body) == (200, b"s1 #1 /tls")
    header = server.conns[0].header
    assert header is not None
    assert header.tlv(PP2_TYPE_AUTHORITY) == b"a.example.test"
    assert header.tlv(PP2_TYPE_ALPN) == b"http/1.1"
    assert header.source is not None
    assert header.source[0] == "127.0.0.1"


async def test_send_proxy_v2_carries_sni_in_tcp_mode_with_tls(
    start_pp_server: StartPPServer, start_proxy: StartProxy, certs: Certs
) -> None:
    server = await start_pp_server("s1", "echo")
    tls = trilb.TLSConfig(certificates=str(certs.site), alpn=())
    proxy = await start_proxy(config=tcp_config([server.config("v2")], tls=tls))
    tcp = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    stream = trio.SSLStream(tcp, client_context(certs), server_hostname="a.example.test")
    try:
        with trio.fail_after(WAIT):
            await stream.do_handshake()
            await stream.send_all(b"plain")
            assert await stream.receive_some(5) == b"plain"
    finally:
        await trio.aclose_forcefully(stream)
    header = server.conns[0].header
    assert header is not None
    assert header.tlv(PP2_TYPE_AUTHORITY) == b"a.example.test"
    assert header.tlv(PP2_TYPE_ALPN) is None
    assert bytes(server.conns[0].received) == b"plain"  # TLS ended at trilb


async def test_send_proxy_v2_carries_sni_in_tls_passthrough(
    start_pp_server: StartPPServer, start_proxy: StartProxy, certs: Certs
) -> None:
    """SNI routes on a TCP frontend without TLS: the server name read from the ClientHello goes
    into the header, and the handshake itself passes through to the server after it."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(certs.site))
    server = await start_pp_server("tls1", "tls", server_ctx)
    other = await start_pp_server("other", "echo")
    config = trilb.Config(
        frontends=[
            trilb.FrontendConfig(
                name="frontend",
                bind="127.0.0.1:0",
                mode="tcp",
                default_backend="other",
                routes=[
                    trilb.Route(name="a", match=trilb.Match(sni=["a.example.test"]), backend="tls")
                ],
            )
        ],
        backends=[
            trilb.BackendConfig(name="tls", mode="tcp", servers=[server.config("v2")]),
            trilb.BackendConfig(name="other", mode="tcp", servers=[other.config("v1")]),
        ],
        log=trilb.LogConfig(target="none"),
    )
    proxy = await start_proxy(config=config)
    tcp = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    local_port = tcp.socket.getsockname()[1]
    stream = trio.SSLStream(
        tcp, client_context(certs, ["h2", "http/1.1"]), server_hostname="a.example.test"
    )
    try:
        with trio.fail_after(WAIT):
            await stream.do_handshake()
            data = b""
            while not data.endswith(b"\n"):
                data += await stream.receive_some(RECEIVE_SIZE)
    finally:
        await trio.aclose_forcefully(stream)
    assert data == b"tls1\n"
    header = server.conns[0].header
    assert header is not None
    assert header.source == ("127.0.0.1", local_port)
    assert header.tlv(PP2_TYPE_AUTHORITY) == b"a.example.test"
    assert other.conns == []
