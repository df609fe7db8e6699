"""Shared fixtures for the in-process proxy tests (``tests/proxy``).

Everything runs on real sockets on 127.0.0.1 (port 0) inside the test's Trio run:

* :class:`Backend` -- a real HTTP/1.1 server written with h11 whose answers each test chooses
  with a handler ``async (BackendRequest) -> BackendResponse``. It records every connection and
  every request (heads as they arrive, complete requests once their body ended), so tests can
  assert "nothing was forwarded". Start one with the ``start_backend`` fixture::

      backend = await start_backend()                    # echo handler (JSON of the request)
      backend = await start_backend(handler, name="s2")  # your own behaviour

* :class:`MisbehavingBackends` (fixture ``misbehaving``) -- raw socket servers that break the
  protocol: ``refuse()``, ``reset_mid_body()``, ``hang()``, ``garbage()``,
  ``close_without_answer()``; each returns the :class:`trilb.Address` to proxy to.

* :class:`Proxy` (fixture ``start_proxy``) -- trilb itself, in-process, in front of some servers,
  with a :class:`CollectingLog` so tests can assert on access-log and message lines::

      proxy = await start_proxy([backend], timeouts=trilb.Timeouts(server=0.5))
      async with httpx.AsyncClient(base_url=proxy.url) as client: ...

* :class:`RawClient` (fixture ``raw_client``) -- a plain socket client for exact-bytes tests
  (smuggling, pipelining, malformed input), with a small HTTP/1.x response reader.

* An autouse check that no file descriptor is left open after a test (sockets, listeners, pool).

Import the types for annotations with ``from conftest import Backend, ...``.
Nothing here sleeps to wait for a condition: waits are on events, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import socket
import struct
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Literal

import attrs
import h11
import pytest
import trio

import trilb
from trilb.core.accesslog import RequestLog

__all__ = [
    "WAIT",
    "Backend",
    "BackendRequest",
    "BackendResponse",
    "CollectingLog",
    "Handler",
    "MisbehavingBackends",
    "Proxy",
    "RawBackend",
    "RawClient",
    "RawResponse",
    "StartBackend",
    "StartProxy",
    "StartRawClient",
    "echo_handler",
    "generated_chunks",
    "generated_sha256",
    "make_config",
]

#: upper bound for any single wait in these helpers (a generous one: the machine may be loaded)
WAIT = 10.0
RECEIVE_SIZE = 64 * 1024


# -- generated data -------------------------------------------------------------------------------


@functools.cache
def _pattern_block(size: int) -> bytes:
    return random.Random(size).randbytes(size)


async def generated_chunks(total: int, chunk_size: int = RECEIVE_SIZE) -> AsyncIterator[bytes]:
    """``total`` bytes of reproducible pseudo-random data, in chunks, without a big buffer.

    :func:`generated_sha256` gives the matching hash."""
    block = _pattern_block(chunk_size)
    sent = 0
    while sent < total:
        piece = block[: min(chunk_size, total - sent)]
        sent += len(piece)
        yield piece


@functools.cache
def generated_sha256(total: int, chunk_size: int = RECEIVE_SIZE) -> str:
    """The SHA-256 of what :func:`generated_chunks` yields for the same arguments."""
    block = _pattern_block(chunk_size)
    digest = hashlib.sha256()
    full, rest = divmod(total, chunk_size)
    for _ in range(full):
        digest.update(block)
    digest.update(block[:rest])
    return digest.hexdigest()


# -- the h11 backend ------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class BackendRequest:
    """A request as the backend received it. ``headers`` keep the names' case as sent."""

    method: str
    target: str
    http_version: str
    headers: list[tuple[str, str]]
    #: the whole body, unless the backend was started with ``keep_body=False`` (then b"")
    body: bytes = b""
    body_length: int = 0
    body_sha256: str = ""
    #: 1-based number of the backend connection it came on
    connection: int = 0

    def header(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        lowered = name.lower()
        return [v for n, v in self.headers if n.lower() == lowered]

    def has_header(self, name: str) -> bool:
        return bool(self.header(name))


ResponseBody = bytes | Callable[[], AsyncIterable[bytes]]


@attrs.define(kw_only=True)
class BackendResponse:
    """What a handler answers.

    ``body`` is bytes or a zero-argument callable returning an async iterable of chunks (for
    streaming). With bytes and no Content-Length / Transfer-Encoding header the backend adds
    Content-Length, unless ``chunked=True``; then (and for streamed bodies without
    Content-Length) h11 frames the body chunked for HTTP/1.1 and by close for HTTP/1.0.
    For HEAD, 1xx, 204 and 304 no body is sent whatever ``body`` holds.
    """

    status: int = 200
    headers: list[tuple[str, str]] = attrs.Factory(list)
    body: ResponseBody = b""
    chunked: bool = False
    reason: str = ""


Handler = Callable[[BackendRequest], Awaitable[BackendResponse]]


def echo_handler(name: str) -> Handler:
    """A handler answering 200 with JSON: server name, method, target, http_version,
    headers (list of [name, value]), body_length and body_sha256."""

    async def handler(request: BackendRequest) -> BackendResponse:
        payload = {
            "server": name,
            "method": request.method,
            "target": request.target,
            "http_version": request.http_version,
            "headers": [[n, v] for n, v in request.headers],
            "body_length": request.body_length,
            "body_sha256": request.body_sha256,
        }
        return BackendResponse(
            headers=[("Content-Type", "application/json")], body=json.dumps(payload).encode()
        )

    return handler


class Backend:
    """A real HTTP/1.1 server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self, name: str, handler: Handler, *, keep_body: bool = True, send_100: bool = True
    ) -> None:
        self.name = name
        self.handler = handler
        self.keep_body = keep_body
        self.send_100 = send_100
        self.port = 0
        #: connections accepted so far, and how many of them have ended
        self.connections = 0
        self.closed_connections = 0
        #: every request head received, complete body or not
        self.heads: list[BackendRequest] = []
        #: every request whose body arrived completely (before the handler ran)
        self.requests: list[BackendRequest] = []
        self._changed = trio.Event()

    @property
    def address(self) -> trilb.Address:
        return trilb.Address(host="127.0.0.1", port=self.port)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds (re-checked whenever the backend records something)."""
        with trio.fail_after(WAIT):
            while not condition():
                await self._changed.wait()

    async def wait_requests(self, count: int) -> None:
        await self.wait_for(lambda: len(self.requests) >= count)

    async def wait_heads(self, count: int) -> None:
        await self.wait_for(lambda: len(self.heads) >= count)

    async def wait_connections(self, count: int) -> None:
        await self.wait_for(lambda: self.connections >= count)

    async def wait_all_closed(self) -> None:
        """Wait until every connection accepted so far has ended."""
        await self.wait_for(lambda: self.closed_connections == self.connections)

    async def run(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._serve_connection, listeners, task_status=task_status)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        self._notify()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1024 * 1024)
        try:
            while True:
                event = await _next_event(conn, stream)
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed
                request = BackendRequest(
                    method=event.method.decode("latin-1"),
                    target=event.target.decode("latin-1"),
                    http_version=event.http_version.decode("latin-1"),
                    headers=[
                        (n.decode("latin-1"), v.decode("latin-1"))
                        for n, v in event.headers.raw_items()
                    ],
                    connection=number,
                )
                self.heads.append(request)
                self._notify()
                await self._read_body(conn, stream, request)
                self.requests.append(request)
                self._notify()
                response = await self.handler(request)
                await self._send_response(conn, stream, request, response)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self.closed_connections += 1
            self._notify()

    async def _read_body(
        self, conn: h11.Connection, stream: trio.SocketStream, request: BackendRequest
    ) -> None:
        if self.send_100 and conn.they_are_waiting_for_100_continue:
            await stream.send_all(
                conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            )
        digest = hashlib.sha256()
        kept = bytearray()
        while True:
            event = await _next_event(conn, stream)
            if isinstance(event, h11.Data):
                request.body_length += len(event.data)
                digest.update(event.data)
                if self.keep_body:
                    kept += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise h11.RemoteProtocolError(f"unexpected {event!r}")
        request.body = bytes(kept)
        request.body_sha256 = digest.hexdigest()

    async def _send_response(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        request: BackendRequest,
        response: BackendResponse,
    ) -> None:
        headers = list(response.headers)
        names = {n.lower() for n, _ in headers}
        body = response.body
        no_body = request.method == "HEAD" or response.status < 200 or response.status in (204, 304)
        if (
            isinstance(body, bytes)
            and not response.chunked
            and not no_body
            and not names & {"content-length", "transfer-encoding"}
        ):
            headers.append(("Content-Length", str(len(body))))
        data = conn.send(
            h11.Response(
                status_code=response.status, headers=headers, reason=response.reason.encode()
            )
        )
        await stream.send_all(data or b"")
        if not no_body:
            if isinstance(body, bytes):
                if body:
                    await stream.send_all(conn.send(h11.Data(data=body)) or b"")
            else:
                pieces = body()
                try:
                    async for piece in pieces:
                        await stream.send_all(conn.send(h11.Data(data=piece)) or b"")
                finally:
                    # An async generator cut off by a broken connection must still be closed,
                    # or it warns (and warnings are errors in this suite).
                    aclose = getattr(pieces, "aclose", None)
                    if aclose is not None:
                        with trio.CancelScope(shield=True):
                            await aclose()
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
            continue
        return event


StartBackend = Callable[..., Awaitable[Backend]]


@pytest.fixture
def start_backend(nursery: trio.Nursery) -> StartBackend:
    """``await start_backend(handler=None, *, name=None, keep_body=True, send_100=True)``:
    a running :class:`Backend` (echo handler by default; names default to s1, s2, ...)."""
    count = 0

    async def start(
        handler: Handler | None = None,
        *,
        name: str | None = None,
        keep_body: bool = True,
        send_100: bool = True,
    ) -> Backend:
        nonlocal count
        count += 1
        name = name or f"s{count}"
        backend = Backend(
            name, handler or echo_handler(name), keep_body=keep_body, send_100=send_100
        )
        await nursery.start(backend.run)
        return backend

    return start


# -- raw, misbehaving backends --------------------------------------------------------------------


class RawBackend:
    """A raw socket server running ``handler(stream)`` per connection; counts connections."""

    def __init__(self, handler: Callable[[trio.SocketStream], Awaitable[None]]) -> None:
        self.handler = handler
        self.port = 0
        self.connections = 0
        self.received = bytearray()  # everything any connection sent, in arrival order
        self._changed = trio.Event()

    @property
    def address(self) -> trilb.Address:
        return trilb.Address(host="127.0.0.1", port=self.port)

    async def run(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._serve, listeners, task_status=task_status)

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self._changed.set()
        self._changed = trio.Event()
        try:
            await self.handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def wait_connections(self, count: int) -> None:
        with trio.fail_after(WAIT):
            while self.connections < count:
                await self._changed.wait()

    async def read_head(self, stream: trio.SocketStream) -> bytes:
        """Read until the end of a request head (or EOF); returns what was read."""
        data = bytearray()
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(RECEIVE_SIZE)
            if not chunk:
                break
            data += chunk
            self.received += chunk
        return bytes(data)


def reset_connection(stream: trio.SocketStream) -> None:
    """Make the next close send RST instead of FIN (SO_LINGER with a zero timeout)."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class MisbehavingBackends:
    """Factories for servers that break HTTP; each returns the address to put in a ServerConfig.

    The started :class:`RawBackend` objects are in ``started`` (by kind), e.g. to count the
    connections trilb made."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.started: dict[str, list[RawBackend]] = {}

    async def start(
        self, kind: str, handler: Callable[[RawBackend, trio.SocketStream], Awaitable[None]]
    ) -> RawBackend:
        backend = RawBackend(lambda stream: handler(backend, stream))
        await self._nursery.start(backend.run)
        self.started.setdefault(kind, []).append(backend)
        return backend

    def refuse(self) -> trilb.Address:
        """A port nothing listens on: connecting is refused."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        return trilb.Address(host="127.0.0.1", port=port)

    async def reset_mid_body(self) -> trilb.Address:
        """Answers headers with Content-Length: 1000 and 10 body bytes, then resets."""

        async def handler(backend: RawBackend, stream: trio.SocketStream) -> None:
            await backend.read_head(stream)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n"
                + b"0123456789"
            )
            reset_connection(stream)
            await stream.aclose()

        return (await self.start("reset_mid_body", handler)).address

    async def hang(self) -> trilb.Address:
        """Accepts, reads whatever comes and never answers."""

        async def handler(backend: RawBackend, stream: trio.SocketStream) -> None:
            while chunk := await stream.receive_some(RECEIVE_SIZE):
                backend.received += chunk
            await trio.sleep_forever()

        return (await self.start("hang", handler)).address

    async def garbage(self) -> trilb.Address:
        """Answers a request head with ``NOT HTTP\\r\\n\\r\\n`` and closes."""

        async def handler(backend: RawBackend, stream: trio.SocketStream) -> None:
            await backend.read_head(stream)
            await stream.send_all(b"NOT HTTP\r\n\r\n")
            await stream.aclose()

        return (await self.start("garbage", handler)).address

    async def close_without_answer(self) -> trilb.Address:
        """Reads a request head and closes without a byte of answer."""

        async def handler(backend: RawBackend, stream: trio.SocketStream) -> None:
            await backend.read_head(stream)
            await stream.aclose()

        return (await self.start("close_without_answer", handler)).address


@pytest.fixture
def misbehaving(nursery: trio.Nursery) -> MisbehavingBackends:
    """Factories for protocol-breaking servers (see :class:`MisbehavingBackends`)."""
    return MisbehavingBackends(nursery)


# -- trilb ----------------------------------------------------------------------------------------


class CollectingLog(trilb.LogSink):
    """A LogSink that keeps its lines in memory: ``lines`` (all), ``access_lines``, ``messages``."""

    def __init__(self, fmt: str = "haproxy") -> None:
        super().__init__("none", fmt, verbosity=1)
        self.lines: list[str] = []
        self.access_lines: list[str] = []
        self.messages: list[str] = []
        self._changed = trio.Event()

    def access(self, record: RequestLog) -> None:
        line = self._formatter.format(record)
        self.access_lines.append(line)
        self._write(line)

    def _message(self, level: str, message: str) -> None:
        line = f"trilb {level}: {message}"
        self.messages.append(line)
        self._write(line)

    def _write(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_access_lines(self, count: int) -> None:
        """Wait until at least ``count`` access-log lines were written."""
        with trio.fail_after(WAIT):
            while len(self.access_lines) < count:
                await self._changed.wait()


@attrs.define(kw_only=True)
class Proxy:
    """A running trilb in front of some servers: frontend ``web`` -> backend ``app``."""

    lb: trilb.Balancer
    config: trilb.Config
    log: CollectingLog

    @property
    def port(self) -> int:
        return self.lb.addresses["frontend"][0].port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


ServerSpec = trilb.Address | Backend | RawBackend | trilb.ServerConfig

StartProxy = Callable[..., Awaitable[Proxy]]


def make_config(
    servers: Sequence[ServerSpec],
    *,
    timeouts: trilb.Timeouts | None = None,
    backend_timeouts: trilb.Timeouts | None = None,
    limits: trilb.Limits | None = None,
    forwarded_for: bool = False,
    balance: Literal["roundrobin", "static-rr"] = "roundrobin",
    weights: Sequence[int] | None = None,
    retries: int = 2,
    pool_max_idle: int = 64,
    frontend_name: str = "frontend",
    backend_name: str = "backend",
) -> trilb.Config:
    """A one-frontend, one-backend Config on 127.0.0.1:0.

    ``servers`` are addresses, :class:`Backend` / :class:`RawBackend` objects (named after the
    Backend, else s1, s2, ...) or ready ServerConfigs. ``timeouts`` applies to the frontend and,
    unless ``backend_timeouts`` is given, to the backend too."""
    configs: list[trilb.ServerConfig] = []
    for index, server in enumerate(servers):
        if isinstance(server, trilb.ServerConfig):
            configs.append(server)
            continue
        name = server.name if isinstance(server, Backend) else f"s{index + 1}"
        address = server if isinstance(server, trilb.Address) else server.address
        weight = weights[index] if weights is not None else 100
        configs.append(trilb.ServerConfig(name=name, address=address, weight=weight))
    timeouts = timeouts or trilb.Timeouts()
    return trilb.Config(
        frontends=[
            trilb.FrontendConfig(
                name=frontend_name,
                bind="127.0.0.1:0",
                default_backend=backend_name,
                forwarded_for=forwarded_for,
                timeouts=timeouts,
                limits=limits or trilb.Limits(),
            )
        ],
        backends=[
            trilb.BackendConfig(
                name=backend_name,
                servers=configs,
                balance=balance,
                timeouts=backend_timeouts or timeouts,
                retries=retries,
                pool_max_idle=pool_max_idle,
            )
        ],
        log=trilb.LogConfig(target="none"),
    )


@pytest.fixture
def start_proxy(nursery: trio.Nursery) -> StartProxy:
    """``await start_proxy(servers, **make_config options)``: trilb running in the test's nursery
    (frontend ``frontend`` on 127.0.0.1:0 -> backend ``backend``), logging to a
    :class:`CollectingLog`. Pass ``config=`` to run a Config of your own instead. It is cancelled
    when the test ends unless the test drained it."""

    async def start(
        servers: Sequence[ServerSpec] = (), *, config: trilb.Config | None = None, **options: object
    ) -> Proxy:
        if config is None:
            config = make_config(servers, **options)  # type: ignore[arg-type]
        log = CollectingLog()
        lb: trilb.Balancer = await nursery.start(functools.partial(trilb.serve, config, log=log))
        return Proxy(lb=lb, config=config, log=log)

    return start


# -- a raw client ---------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class RawResponse:
    http_version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> list[str]:
        lowered = name.lower()
        return [v for n, v in self.headers if n.lower() == lowered]


class RawClient:
    """A TCP client for exact bytes: ``send`` what you like, read responses with
    :meth:`read_response` (a small HTTP/1.x reader: Content-Length, chunked, read-until-close),
    and check the server closed with :meth:`wait_closed`."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.eof = False

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except trio.BrokenResourceError:  # reset by the peer: counts as closed
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def _read_until(self, marker: bytes) -> bytes:
        while (index := self.buffer.find(marker)) < 0:
            if not await self._fill():
                raise EOFError(f"closed before {marker!r}; got {bytes(self.buffer)!r}")
        data = bytes(self.buffer[: index + len(marker)])
        del self.buffer[: index + len(marker)]
        return data

    async def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise EOFError(f"closed with {len(self.buffer)} of {size} bytes")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_head(self) -> RawResponse:
        """The next response head (1xx ones included), without its body."""
        with trio.fail_after(WAIT):
            raw = await self._read_until(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status, *reason = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        return RawResponse(
            http_version=version,
            status=int(status),
            reason=reason[0] if reason else "",
            headers=headers,
            body=b"",
            raw_head=raw,
        )

    async def read_response(
        self, *, head_request: bool = False, skip_1xx: bool = True
    ) -> RawResponse:
        """The next response with its body, framed the way the head says."""
        with trio.fail_after(WAIT):
            while True:
                response = await self.read_head()
                if not (skip_1xx and 100 <= response.status < 200):
                    break
            if head_request or response.status < 200 or response.status in (204, 304):
                return response
            encodings = ",".join(response.header("transfer-encoding")).lower()
            lengths = response.header("content-length")
            if "chunked" in encodings:
                response.body = await self._read_chunked()
            elif lengths:
                response.body = await self._read_exactly(int(lengths[0]))
            else:
                response.body = await self.read_until_closed()
            return response

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_line = await self._read_until(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while await self._read_until(b"\r\n") != b"\r\n":  # trailers
                    pass
                return bytes(body)
            body += await self._read_exactly(size)
            if await self._read_exactly(2) != b"\r\n":
                raise ValueError("bad chunk end")

    async def read_until_closed(self) -> bytes:
        """Everything until the peer closes (each wait bounded by WAIT seconds)."""
        with trio.fail_after(WAIT):
            while await self._fill():
                pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def wait_closed(self) -> bytes:
        """Wait until the peer closes; returns what arrived meanwhile (should usually be b"")."""
        return await self.read_until_closed()

    async def aclose(self) -> None:
        await self.stream.aclose()


StartRawClient = Callable[[int], Awaitable[RawClient]]


@pytest.fixture
async def raw_client() -> AsyncIterator[StartRawClient]:
    """``client = await raw_client(port)``: a connected :class:`RawClient`, closed at teardown."""
    clients: list[RawClient] = []

    async def connect(port: int) -> RawClient:
        client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        clients.append(client)
        return client

    try:
        yield connect
    finally:
        for client in clients:
            await trio.aclose_forcefully(client.stream)


# -- leak check -----------------------------------------------------------------------------------


def _open_fds() -> dict[int, str]:
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the directory listing's own fd, closed meanwhile
            continue
    return fds


@pytest.fixture(autouse=True)
def no_leaked_fds() -> Iterator[None]:
    """Fail a test that leaves a file descriptor open.

    A sync fixture: pytest-trio runs the test and all its async fixtures (the nursery holding
    the balancer and the backends) inside one ``trio.run`` in the test's call phase, so this
    teardown runs after that nursery has exited and trio's own fds are closed."""
    before = _open_fds()
    yield
    after = _open_fds()
    new = {fd: target for fd, target in after.items() if before.get(fd) != target}
    assert len(after) <= len(before), f"file descriptors left open: {new}"
