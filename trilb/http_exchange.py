"""One HTTP exchange: a client's request relayed to a server, and the response relayed back.

h11 parses the heads and chunked bodies; :mod:`trilb.core.http1` writes what goes out. A
``Content-Length`` body is relayed as raw bytes with a countdown (no per-chunk parsing), which is
what lets trilb move bulk data near the speed of a plain byte relay.

Timeouts: a request without a body runs under one cancel scope whose deadline moves with each wait
(``timeout_server`` while the server has the turn, ``timeout_client`` while writing to the client),
and ``self.phase`` records whose turn it was, so that a deadline is turned into the right answer
(504 before the response started, a cut connection after). Creating a cancel scope per read costs
more than the read on this path, hence the one moving deadline.

Memory, for many slow clients: a response body is read in pieces sized to the room left in the
client's socket buffer (from :data:`SLOW_READ` to :data:`RECEIVE_SIZE`; a client whose buffer is
full is waited for first), and nothing keeps what was sent. So a client that stops reading leaves
next to nothing waiting in trilb, and one that keeps up gets full reads. An exchange that fails
makes no reference cycle (a connection's objects are long-lived: see :mod:`trilb.gctune`).

Protocol switches (WebSocket): a bodiless HTTP/1.1 request that offers ``Upgrade`` (see
:func:`trilb.core.headers.upgrade_offer`) is sent on with the offer, and its response is parsed by
an h11 connection primed with an offer too, so that h11 accepts a ``101`` and stops parsing
(``SWITCHED_PROTOCOL``). The 101 goes to the client, and both connections become a
:class:`trilb.tunnel.Tunnel` under ``timeout_tunnel``; neither is used for HTTP again. Any other
answer is an ordinary response.
"""

from __future__ import annotations

import fcntl
import math
import select
import socket
import sys
import termios
import time
from typing import TYPE_CHECKING, NamedTuple

import h11
import trio

from .backend import NoServer
from .config.model import DEFAULT_TUNNEL_TIMEOUT
from .core.accesslog import RequestLog, millis
from .core.balance import RequestKey
from .core.headers import (
    request_headers_for_server,
    response_headers_for_client,
    upgrade_offer,
)
from .core.http1 import (
    LAST_CHUNK,
    Framing,
    HeadInfo,
    body_framing,
    encode_chunk,
    inspect_head,
    request_head,
    response_head,
)
from .core.rewrite import Variables, apply_header_rules, take_request_id, variables_for
from .core.routing import RequestView
from .core.sticky import request_cookie, response_cookies
from .net import TCPStream
from .pool import ServerConnection
from .tunnel import Tunnel

if TYPE_CHECKING:
    from .backend import BackendRuntime, ServerRuntime
    from .http_proxy import ClientSession

__all__ = ["Exchange"]

#: RFC 9110 section 9.2.2: requests that may be sent again when a reused server connection turns
#: out to have been closed before the server said anything
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
#: bytes per read from either side, at most: large enough for bulk throughput, small enough that
#: thousands of connections' in-flight buffers stay within tens of MB
RECEIVE_SIZE = 256 * 1024
#: a server's response head may not exceed this (h11 refuses larger incomplete heads)
MAX_RESPONSE_HEAD = 64 * 1024
#: the reads of a response head (with whatever of the body came along): a head fits, and a client
#: that reads nothing (a slow reader) leaves at most this much waiting in trilb, not RECEIVE_SIZE
HEAD_READ = MAX_RESPONSE_HEAD
#: the smallest body read (see Exchange._next_read_size): when the client's socket buffer has
#: less room than that, trilb first waits until it can send
SLOW_READ = 16 * 1024
_INT = bytes(4)  # an ioctl's int result

_EOM = h11.EndOfMessage()
_PRIMER_HEADERS = [(b"Host", b"trilb")]
_PRIMERS = {
    m: h11.Request(method=m, target=b"/", headers=_PRIMER_HEADERS)
    for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE")
}
#: a primer for a request that offers a protocol switch: h11 accepts a 101 only after an offer
_UPGRADE_PRIMER_HEADERS = [*_PRIMER_HEADERS, (b"Connection", b"upgrade"), (b"Upgrade", b"tunnel")]
_CHUNKED_HEADER = (b"Transfer-Encoding", b"chunked")
_CLOSE_HEADER = (b"Connection", b"close")
_KEEP_ALIVE_HEADER = (b"Connection", b"keep-alive")

#: how far a deadline may lag behind the exact one before it is moved (see Exchange._arm)
DEADLINE_SLACK = 0.02

# Phases, for turning a deadline into the right outcome.
SERVER_TURN, SERVER_BODY, CLIENT_SEND = "server", "server-body", "client-send"


def _h11_problem(exc: h11.RemoteProtocolError) -> str:
    """What ``exc`` says, with its traceback dropped: h11 raises a RemoteProtocolError from a frame
    that holds it (``_reraise_as_remote_protocol_error``), a reference cycle (the exception, its
    traceback, that frame) that only the cyclic garbage collector would free."""
    exc.__traceback__ = None
    return str(exc)


def _client_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The socket under a client stream (plain TCP, or TLS over it), if there is one."""
    if isinstance(stream, TCPStream):
        return stream.sock
    transport = getattr(stream, "transport_stream", None)
    return transport.sock if isinstance(transport, TCPStream) else None


def _send_room(sock: socket.socket) -> int:
    """About how many more bytes the socket's send buffer takes now: half its size (Linux
    doubles the size asked for, for its own bookkeeping) less what it holds (sent but not
    acknowledged, or not sent yet). RECEIVE_SIZE where the system does not say."""
    try:
        held = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, _INT)  # SIOCOUTQ for sockets
        size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    except OSError:
        return RECEIVE_SIZE
    return size // 2 - int.from_bytes(held, sys.byteorder, signed=True)


def _writable(sock: socket.socket) -> bool:
    """Whether a send would not block now (for TCP: a third of the send buffer is free), or the
    socket failed (the send then says how)."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(0))


def _response_parser(method: bytes, *, upgrade: bool = False) -> h11.Connection:
    """An h11 client connection primed as if it had sent a request with ``method``: h11 then
    parses the response with the right framing rules (a HEAD response has no body). With
    ``upgrade`` the primer offers a protocol switch, so that a 101 is accepted."""
    parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    if upgrade:
        primer = h11.Request(method=method, target=b"/", headers=_UPGRADE_PRIMER_HEADERS)
    else:
        primer = _PRIMERS.get(method) or h11.Request(
            method=method, target=b"/", headers=_PRIMER_HEADERS
        )
    parser.send(primer)
    parser.send(_EOM)
    return parser


class ParsedRequest(NamedTuple):
    """A request head as read from the client, with what the proxy needs to know of it."""

    parser: h11.Connection  # the h11 server-side connection that parsed it (holds the body)
    request: h11.Request
    fields: list[tuple[bytes, bytes]]  # its header fields as sent (original case)
    info: HeadInfo
    started: float  # monotonic time the request began


class _Retry(Exception):
    """Try again (another server, or a fresh connection to the same one)."""

    def __init__(self, failures: int, *, stale: bool) -> None:
        super().__init__(failures)
        self.failures = failures
        self.stale = stale


class ClientGone(Exception):
    """The client side failed (closed, reset, timed out): nothing more can be said to it."""

    def __init__(self, termination: str) -> None:
        super().__init__(termination)
        self.termination = termination


class ServerFailed(Exception):
    """The server failed before its response head reached us: the client gets ``status``."""

    def __init__(
        self, status: int, termination: str, reason: str, *, replayable: bool = False
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.termination = termination
        self.reason = reason
        self.replayable = replayable  # a reused connection closed before the server said a word


class ResponseBroken(Exception):
    """The exchange broke after the response head was sent: the client connection must be cut."""

    def __init__(self, termination: str, reason: str) -> None:
        super().__init__(reason)
        self.termination = termination
        self.reason = reason


class Exchange:
    """The state of one request while it is relayed."""

    __slots__ = (
        "_client_turn",
        "_deadline",
        "_upload_error",
        "backend",
        "body_left",
        "chunked",
        "fields",
        "info",
        "keep_client",
        "killed",
        "parser",
        "phase",
        "record",
        "request",
        "request_done",
        "responded",
        "scope",
        "server_timeout",
        "session",
        "started",
        "sticky_index",
        "upgrade",
        "variables",
        "view",
    )

    def __init__(
        self,
        session: ClientSession,
        backend: BackendRuntime,
        parsed: ParsedRequest,
        record: RequestLog,
        view: RequestView | None = None,
    ) -> None:
        self.session = session
        self.backend = backend
        self.view = view  # what routing saw; made on demand for header rule variables
        self.variables: Variables | None = None
        self.server_timeout = backend.config.timeouts.server
        self.parser = parsed.parser
        self.request = parsed.request
        self.fields = parsed.fields
        self.info = parsed.info
        self.record = record
        self.started = parsed.started
        self.scope = trio.CancelScope()
        self._deadline = math.inf  # self.scope's deadline, kept here: reading trio's costs too
        self.phase = SERVER_TURN
        self.responded = False  # the response head went out to the client
        self.chunked = parsed.info.chunked
        self.body_left = max(0, parsed.info.length)  # request body bytes not relayed yet
        self.request_done = not (self.chunked or self.body_left)
        self.keep_client = parsed.info.keep_alive
        #: the server a stickiness cookie of the request names (its index), if any
        self.sticky_index: int | None = None
        self.killed = False
        self.upgrade = False  # the request offers the server a protocol switch
        #: the request body's upload (beside the response): whether it waits on the client (else
        #: on the server), and how it failed
        self._client_turn = False
        self._upload_error: ClientGone | None = None

    # -- choosing a server and retrying ---------------------------------------------------------

    async def run(self) -> bool:
        """Relay the request; True when the client connection may carry another one."""
        session = self.session
        backend = self.backend
        record = self.record
        record.backend = backend.name
        if self.request_done:
            # No Content-Length, no Transfer-Encoding: the request ends with its head (RFC 9112
            # section 6.3), so whatever h11 holds beyond it is the next, pipelined request.
            pipelined = self.parser.trailing_data[0]
            if pipelined:
                session.buffer = bytearray(pipelined)
        request = self.request
        fields = self.fields
        if backend.cookie is not None:
            self.sticky_index, fields = request_cookie(backend.cookie, fields, backend.cookie_ids)
        stick_table = backend.stick_table
        if stick_table is not None and self.sticky_index is None:
            self.sticky_index = stick_table.lookup(session.client_ip, time.monotonic())
        # Only a bodiless HTTP/1.1 request may switch protocols (RFC 9110 section 7.8 for 1.0;
        # trilb's own rule for bodies, so that the tunnel starts right after the head).
        offer = None
        if self.request_done and request.http_version == b"1.1":
            offer = upgrade_offer(fields)
            self.upgrade = offer is not None
        headers = request_headers_for_server(
            fields, chunked=self.chunked, forwarded=session.forwarded, upgrade=offer
        )
        if session.cert_header is not None:
            lower, name, subject = session.cert_header
            headers = [h for h in headers if h[0].lower() != lower]
            if subject is not None:
                headers.append((name, subject))
        fe = session.frontend
        if fe.config.unique_id or fe.request_rules or backend.request_rules:
            headers = self._rewrite_request(headers)
        # The request goes out as HTTP/1.1, which requires Host; an HTTP/1.0 client may have sent
        # none. Then, as nginx does, the server's own address is named (per attempt, below).
        has_host = self.info.has_host
        head = request_head(request.method, request.target, headers) if has_host else b""
        replayable = request.method in IDEMPOTENT and self.request_done
        tried: set[int] = set()
        failures = 0
        backend.counters.total_requests += 1
        queued_at = time.monotonic()
        while True:
            server = await backend.wait_for_server(tried, self._key(), self.sticky_index)
            if isinstance(server, NoServer):
                if server.termination != "SC":  # (it waited in the queue)
                    record.t_queue = millis(queued_at, time.monotonic())
                return await self._answer_error(503, server.termination, server.reason)
            record.t_queue = millis(queued_at, time.monotonic())
            record.server = server.name
            tried.add(server.index)
            backend.take_slot(server)
            if stick_table is not None:
                stick_table.store(session.client_ip, server.index, time.monotonic())
            try:
                return await self._attempt(server, head, headers, has_host, failures, replayable)
            except _Retry as retry:
                failures = retry.failures
                if retry.stale:
                    tried.discard(server.index)  # a stale pooled connection: not the server's fault
                continue
            finally:
                backend.release_slot(server)

    def _rewrite_request(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The request id and the frontend's, then the backend's, header rules (applied after
        the hop-by-hop clean-up, so what a rule sets stays)."""
        session = self.session
        fe = session.frontend
        config = fe.config
        request_id = b""
        if config.unique_id:
            request_id, headers = take_request_id(
                headers, name=config.unique_id_header.encode(), trust=config.trust_request_id
            )
            self.record.request_id = request_id.decode("ascii", "replace")
        view = self.view or RequestView(
            method=self.request.method,
            target=self.request.target,
            headers=self.fields,
            client_ip=session.client_ip,
            sni=session.sni,
            client_cert=session.client_cert is not None,
        )
        self.variables = variables_for(view, tls=session.tls, unique_id=request_id)
        headers = apply_header_rules(fe.request_rules, headers, self.variables)
        return apply_header_rules(self.backend.request_rules, headers, self.variables)

    def _key(self) -> RequestKey | None:
        """What a hashing algorithm looks at; only built for those."""
        if not self.backend.hashes:
            return None
        path, _, query = self.request.target.partition(b"?")
        return RequestKey(
            client_ip=self.session.client_ip, path=path, query=query, headers=self.fields
        )

    async def _attempt(
        self,
        server: ServerRuntime,
        head: bytes,
        headers: list[tuple[bytes, bytes]],
        has_host: bool,
        failures: int,
        replayable: bool,
    ) -> bool:
        """One try on ``server``; raises :class:`_Retry` when another try should follow."""
        session = self.session
        backend = self.backend
        record = self.record
        request = self.request
        retries = backend.config.retries
        try:
            upstream, reused = await self._server_connection(server)
        except OSError as exc:
            failures += 1
            session.log.warning(backend.connect_failed(server, exc, failures))
            if failures > retries:
                # HAProxy's words: "sC" timeout connect struck, "SC" refused (or another error)
                code = "sC" if isinstance(exc, TimeoutError) else "SC"
                return await self._answer_error(503, code, "no server could be reached")
            record.retries += 1
            raise _Retry(failures, stale=False) from None
        if not has_host:
            host = str(server.config.address).encode("ascii")
            head = request_head(request.method, request.target, [(b"Host", host), *headers])
        try:
            return await self._exchange(server, upstream, head)
        except ServerFailed as failure:
            upstream.close()
            if failure.replayable and reused and replayable:
                raise _Retry(failures, stale=True) from None
            backend.observe(server, False, failure.reason)
            server.counters.count_response(failure.status)
            session.log.warning(
                f"backend {backend.name}/{server.name}: {failure.reason}; answered {failure.status}"
            )
            return await self._answer_error(failure.status, failure.termination, None)

    async def _server_connection(self, server: ServerRuntime) -> tuple[ServerConnection, bool]:
        now = time.monotonic()
        record = self.record
        header = b""
        if server.config.send_proxy is None:
            conn, stale = server.pool.take(now)
            for old in stale:
                old.close()
        else:  # this client's own connection, if it has one
            conn = self.session.private.pop(server, None)
            if conn is not None and conn.looks_closed():
                conn.close()
                conn = None
            if conn is None:
                header = self.session.proxy_header(server.config.send_proxy)
        if conn is not None:
            record.t_connect = 0
            return conn, True
        conn = await self.backend.open_connection(server, header)
        record.t_connect = millis(now, time.monotonic())
        return conn, False

    # -- one attempt ----------------------------------------------------------------------------

    async def _exchange(
        self, server: ServerRuntime, upstream: ServerConnection, head: bytes
    ) -> bool:
        session = self.session
        backend = self.backend
        counters = server.counters
        counters.total_requests += 1  # (current_requests: the slot taken in run())
        record = self.record
        self.scope = trio.CancelScope()  # one per attempt: a scope can be entered only once
        self._deadline = math.inf
        server.exchanges.add(self)
        sent_at = time.monotonic()  # (for the response time histograms)
        try:
            with self.scope:
                if self.request_done:
                    await self._send_server(upstream, head, server)
                    server_reusable = await self._relay_response(upstream, server)
                else:
                    server_reusable = await self._relay_with_body(upstream, server, head)
            if self.scope.cancelled_caught:
                raise self._timed_out()
        except (ResponseBroken, ClientGone) as exc:
            upstream.close()
            record.termination = exc.termination
            if isinstance(exc, ResponseBroken):
                backend.observe(server, False, exc.reason)
                session.log.warning(
                    f"{session.client_ip}:{session.client_port} {backend.name}/{server.name}: "
                    f"response cut short: {exc.reason}"
                )
            return False
        except BaseException:
            upstream.close()  # cancelled, or a failure the caller handles: never leak it
            raise
        finally:
            server.exchanges.discard(self)
            record.srv_conn = counters.current_requests
            record.beconn = backend.counters.current_requests
        status = record.status
        failed = backend.config.observe == "layer7" and status >= 500 and status not in (501, 505)
        backend.observe(server, not failed, f"status {status}")
        counters.count_response(record.status)
        backend.counters.count_response(record.status)
        now = time.monotonic()
        if status != 101 and self.request.method != b"CONNECT":  # (not the tunnels' lifetimes)
            server.response_time.observe(now - sent_at)
            backend.response_time.observe(now - sent_at)
        if server_reusable and self.request_done:
            if server.config.send_proxy is not None:
                self.session.private[server] = upstream
            else:
                for old in server.pool.put(upstream, now):
                    old.close()
        else:
            upstream.close()
        return self.keep_client and self.request_done

    def kill(self) -> None:
        """Cut this request short: its server was marked DOWN (``shutdown-sessions``)."""
        self.killed = True
        self.scope.cancel()

    def _timed_out(self) -> Exception:
        """The exception that a deadline (or a kill) of this request's scope stands for."""
        if self.killed:
            if self.responded:
                return ResponseBroken("KD", "cut: the server was marked DOWN")
            return ServerFailed(503, "KH", "the server was marked DOWN")
        if self.phase == CLIENT_SEND:
            return ClientGone("cD")
        timeout = self.server_timeout
        if self.responded:
            return ResponseBroken("sD", f"server sent nothing for {timeout:g}s")
        return ServerFailed(504, "sH", f"no response within {timeout:g}s")

    async def _relay_with_body(
        self, upstream: ServerConnection, server: ServerRuntime, head: bytes
    ) -> bool:
        """Upload and download at once: a server may answer (413, 100-continue, an early error)
        before it has read the body. Errors come out one at a time, never as a group."""
        download_error: Exception | None = None
        reusable = False
        await self._send_server(upstream, head, server)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._upload_beside, upstream, server, nursery.cancel_scope)
                try:
                    reusable = await self._relay_response(upstream, server)
                except (ServerFailed, ResponseBroken, ClientGone) as exc:
                    download_error = exc
                # Still uploading means the server answered without reading it all:
                # self.request_done stays False, so neither connection is reused.
                nursery.cancel_scope.cancel()
            if self._upload_error is not None:
                raise self._upload_error
            if download_error is not None:
                raise download_error
            return reusable
        finally:
            # The error raised refers to this frame (its traceback), and this frame to the error:
            # a reference cycle, which only the cyclic garbage collector would free.
            download_error = self._upload_error = None

    async def _upload_beside(
        self, upstream: ServerConnection, server: ServerRuntime, nursery_scope: trio.CancelScope
    ) -> None:
        try:
            await self._upload(upstream, server)
        except ClientGone as exc:
            self._upload_error = exc
            nursery_scope.cancel()

    async def _upload(self, upstream: ServerConnection, server: ServerRuntime) -> None:
        """Stream the request body to the server (beside :meth:`_relay_response`).

        One cancel scope bounds every wait of the upload, its deadline moved at each:
        ``timeout_client`` for the client's next bytes (then the client is cut), ``timeout_server``
        for the server to take them (then the upload just stops: the server's answer, or its
        silence, decides what follows). A scope per wait would be objects that a slow client,
        sending a byte a second, keeps alive for that second: long enough to age into the garbage
        collector's oldest generation."""
        with trio.CancelScope() as scope:
            await self._upload_body(upstream, server, scope)
        if scope.cancelled_caught and self._client_turn:
            raise ClientGone("cD")

    async def _upload_body(
        self, upstream: ServerConnection, server: ServerRuntime, scope: trio.CancelScope
    ) -> None:
        session = self.session
        if not self.chunked:  # Content-Length: relay raw bytes with a countdown
            data = self.parser.trailing_data[0]
            while True:
                if len(data) > self.body_left:  # the client pipelined its next request
                    session.buffer = bytearray(data[self.body_left :])
                    data = data[: self.body_left]
                if data:
                    self.body_left -= len(data)
                    if not await self._upload_bytes(upstream, data, server, scope):
                        return
                if not self.body_left:
                    self.request_done = True
                    return
                data = await self._body_from_client(scope)
                if not data:
                    raise ClientGone("CD")  # the client closed in the middle of its body
        limit = session.limits.max_request_body
        parser = self.parser
        sent = 0
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                _h11_problem(exc)
                raise ClientGone("PD") from None  # malformed chunked body: cut the request
            if event is h11.NEED_DATA:
                parser.receive_data(await self._body_from_client(scope))
            elif isinstance(event, h11.Data):
                sent += len(event.data)
                if limit is not None and sent > limit:
                    raise ClientGone("PD")  # chunked body over max_request_body: cut it
                if not await self._upload_bytes(upstream, encode_chunk(event.data), server, scope):
                    return
            elif isinstance(event, h11.EndOfMessage):
                session.buffer = bytearray(parser.trailing_data[0])
                if await self._upload_bytes(upstream, LAST_CHUNK, server, scope):
                    self.request_done = True
                return
            else:
                raise ClientGone("CD")  # the client closed in the middle of its body

    async def _body_from_client(self, scope: trio.CancelScope) -> bytes:
        """The client's next body bytes (b"" when it closed), within ``timeout_client``."""
        self._client_turn = True
        scope.deadline = trio.current_time() + self.session.timeouts.client
        return await self.session.receive_client()

    async def _upload_bytes(
        self,
        upstream: ServerConnection,
        data: bytes,
        server: ServerRuntime,
        scope: trio.CancelScope,
    ) -> bool:
        """False when the server stopped reading: its answer (or silence) decides what follows."""
        timeout = self.server_timeout
        self._client_turn = False
        scope.deadline = trio.current_time() + timeout
        try:
            await upstream.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        server.counters.bytes_out += len(data)
        # Bytes flowing to the server count as activity: the server is not expected to answer
        # before it has the body, however long a slow client takes to send it. (Moved later with
        # the slack of _arm.)
        deadline = trio.current_time() + timeout
        if deadline - self._deadline > timeout * DEADLINE_SLACK:
            self._deadline = self.scope.deadline = deadline
        return True

    # -- the response ---------------------------------------------------------------------------

    async def _relay_response(self, upstream: ServerConnection, server: ServerRuntime) -> bool:
        """Relay the response head and body; True when the server connection can be reused."""
        session = self.session
        request = self.request
        record = self.record
        parser = _response_parser(request.method, upgrade=self.upgrade)
        got_bytes = False
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                problem = _h11_problem(exc)
                if not got_bytes:
                    raise ServerFailed(
                        502, "SH", "closed before answering", replayable=True
                    ) from None
                raise ServerFailed(502, "SH", f"invalid response: {problem}") from None
            if event is h11.NEED_DATA:
                data = await self._receive_server(upstream, server, SERVER_TURN, HEAD_READ)
                got_bytes = got_bytes or bool(data)
                parser.receive_data(data)
                del data  # (the parser has it: one copy is enough, should the client stall)
            elif isinstance(event, h11.InformationalResponse):
                if parser.their_state is h11.SWITCHED_PROTOCOL:  # a 101 to our offer
                    return await self._switch_protocols(upstream, server, parser, event)
                if request.http_version == b"1.1":  # 1xx must not go to HTTP/1.0 clients
                    await self._send_client(
                        response_head(event.status_code, event.reason, event.headers.raw_items())
                    )
            elif isinstance(event, h11.Response):
                if parser.their_state is h11.SWITCHED_PROTOCOL:  # a 2xx to a CONNECT
                    return await self._switch_protocols(upstream, server, parser, event)
                break
            else:  # pragma: no cover - h11 yields nothing else before a response
                raise ServerFailed(502, "SH", f"unexpected {type(event).__name__}")
        record.t_response = millis(self.started, time.monotonic())
        record.status = event.status_code
        fields = event.headers.raw_items()
        info = inspect_head(event.http_version, fields)
        framing, length = body_framing(request.method, event.status_code, info)
        server_keeps_alive = info.keep_alive
        headers = response_headers_for_client(fields)
        if self.backend.response_rules or session.frontend.response_rules:
            variables = self.variables or variables_for(
                self.view or RequestView(method=request.method, target=request.target),
                tls=session.tls,
            )
            headers = apply_header_rules(self.backend.response_rules, headers, variables)
            headers = apply_header_rules(session.frontend.response_rules, headers, variables)
        cookie = self.backend.cookie
        if cookie is not None:
            had_it = self.sticky_index == server.index
            headers = response_cookies(cookie, headers, server.cookie_id, request_had_it=had_it)
        to_chunk = False
        if framing is Framing.CHUNKED or framing is Framing.UNTIL_CLOSE:
            if request.http_version == b"1.1":
                headers.append(_CHUNKED_HEADER)
                to_chunk = True
            else:
                self.keep_client = False  # HTTP/1.0 knows no chunks: the body ends at close
        if session.hsts is not None:
            headers.append(session.hsts)
        if session.frontend.draining or session.frontend.retiring:  # (retiring: a reload)
            self.keep_client = False
        if not self.keep_client:
            headers.append(_CLOSE_HEADER)
        elif request.http_version != b"1.1":
            headers.append(_KEEP_ALIVE_HEADER)
        out = response_head(event.status_code, event.reason, headers)
        self.responded = True
        if framing is Framing.NONE:
            await self._send_client(out)
            return server_keeps_alive
        if framing is Framing.LENGTH:
            # A raw body: the parser (and its buffer) goes, what it read beyond the head goes out
            # with the head, and nothing keeps a copy while the client takes it.
            body = parser.trailing_data[0]
            del parser
            extra = len(body) > length
            left = length - min(len(body), length)
            out += body[:length] if extra else body
            del body
            await self._send_client(out)
            del out
            return (
                await self._relay_length(upstream, server, left)
                and not extra
                and server_keeps_alive
            )
        return (
            await self._relay_parsed(upstream, server, parser, out, to_chunk) and server_keeps_alive
        )

    async def _switch_protocols(
        self,
        upstream: ServerConnection,
        server: ServerRuntime,
        parser: h11.Connection,
        event: h11.InformationalResponse | h11.Response,
    ) -> bool:
        """The server switched protocols: relay its 101 (or its 2xx to a CONNECT), then bytes
        both ways until both sides have closed (:class:`~trilb.tunnel.Tunnel`). Returns False:
        a switched server connection is never reused, and the client connection ends with the
        tunnel.

        Timeouts: ``timeout_tunnel`` of the frontend for the client side and of the backend for
        the server side; the tunnel ends when neither side has moved a byte for the smaller one.
        """
        session = self.session
        record = self.record
        record.t_response = millis(self.started, time.monotonic())
        record.status = event.status_code
        self.keep_client = False
        connect = self.request.method == b"CONNECT"
        headers = response_headers_for_client(event.headers.raw_items(), upgrade=not connect)
        if connect:  # RFC 9110 section 9.3.6: a 2xx to CONNECT has no framing headers
            headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        cookie = self.backend.cookie
        if cookie is not None:
            had_it = self.sticky_index == server.index
            headers = response_cookies(cookie, headers, server.cookie_id, request_had_it=had_it)
        if session.hsts is not None:
            headers.append(session.hsts)
        self.responded = True
        # What the server sent after its 101 head already belongs to the new protocol.
        out = response_head(event.status_code, event.reason, headers) + parser.trailing_data[0]
        await self._send_client(out)
        # The tunnel keeps its own time; from here on this scope only serves kill().
        self._deadline = self.scope.deadline = math.inf
        first = bytes(session.buffer)  # what the client sent after its request head
        session.buffer.clear()
        fe_counters = session.frontend.counters
        counters = server.counters
        counters.bytes_out += len(first)  # (counted in when the client sent them)

        def from_client(size: int) -> None:
            fe_counters.bytes_in += size
            counters.bytes_out += size

        def from_server(size: int) -> None:
            counters.bytes_in += size
            fe_counters.bytes_out += size
            record.bytes_out += size

        tunnel = Tunnel(
            session.stream,
            upstream.stream,
            client_timeout=session.timeouts.tunnel_or(DEFAULT_TUNNEL_TIMEOUT),
            server_timeout=self.backend.config.timeouts.tunnel_or(DEFAULT_TUNNEL_TIMEOUT),
            from_client=from_client,
            from_server=from_server,
        )
        try:
            record.termination = await tunnel.run(to_server=first)
        except BaseException:
            # Cut from outside: a drain's hard stop or kill() (or a bug, which the connection's
            # error boundary logs); the caller closes the server connection, the session the
            # client's.
            record.termination = "KD"
            raise
        return False

    async def _relay_length(
        self, upstream: ServerConnection, server: ServerRuntime, left: int
    ) -> bool:
        """The rest of a Content-Length body: raw bytes with a countdown. False if the server sent
        more than that."""
        while left:
            size = min(await self._next_read_size(), left + 1)  # (+1: to see a server's extra)
            data = await self._receive_server(upstream, server, SERVER_BODY, size)
            if not data:
                raise ResponseBroken("SD", f"server closed with {left} bytes of the body unsent")
            if len(data) > left:
                await self._send_client(data[:left])
                return False
            left -= len(data)
            await self._send_client(data)
            del data  # (sent: not to be kept while the client takes it)
        return True

    async def _relay_parsed(
        self,
        upstream: ServerConnection,
        server: ServerRuntime,
        parser: h11.Connection,
        out: bytes,
        to_chunk: bool,
    ) -> bool:
        """A chunked or until-close body, decoded by h11, re-chunked for HTTP/1.1 clients."""
        pending = [out]
        del out
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                raise ResponseBroken("SD", f"bad response body: {_h11_problem(exc)}") from None
            if event is h11.NEED_DATA:
                await self._send_client(b"".join(pending))
                pending.clear()
                size = await self._next_read_size()
                parser.receive_data(await self._receive_server(upstream, server, SERVER_BODY, size))
            elif isinstance(event, h11.Data):
                pending.append(encode_chunk(event.data) if to_chunk else event.data)
            elif isinstance(event, h11.EndOfMessage):
                if to_chunk:
                    pending.append(LAST_CHUNK)
                await self._send_client(b"".join(pending))
                return parser.their_state is h11.DONE
            else:
                raise ResponseBroken("SD", f"unexpected {type(event).__name__} from server")

    async def _next_read_size(self) -> int:
        """How much of the response body to read next: what the client's socket buffer has room
        for, from :data:`SLOW_READ` to :data:`RECEIVE_SIZE`. When it has less, first wait until
        the client takes some (holding nothing). So a client that stops reading (a slow reader)
        leaves little or nothing of the body waiting in trilb, where a full read would wait
        until ``timeout_client``; one that keeps up gets full reads. (With TLS too: the socket
        under it is asked.)"""
        session = self.session
        sock = _client_socket(session.stream)
        if sock is None:
            return RECEIVE_SIZE
        room = _send_room(sock)
        if room < SLOW_READ and not _writable(sock):
            self._arm(CLIENT_SEND, session.timeouts.client)
            try:
                await session.stream.wait_send_all_might_not_block()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGone("CD") from exc
            room = _send_room(sock)
        return max(SLOW_READ, min(room, RECEIVE_SIZE))

    # -- moving bytes under the moving deadline -------------------------------------------------

    async def _receive_server(
        self, upstream: ServerConnection, server: ServerRuntime, phase: str, size: int
    ) -> bytes:
        self._arm(phase, self.server_timeout)
        try:
            if phase == SERVER_TURN:  # the server has yet to answer: nothing to read right now
                data = await upstream.receive_when_ready(size)
            else:
                data = bytes(await upstream.stream.receive_some(size))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self.responded:
                raise ResponseBroken("SD", f"server connection broke: {exc}") from None
            raise ServerFailed(
                502, "SH", f"server connection broke: {exc}", replayable=True
            ) from None
        server.counters.bytes_in += len(data)
        return data

    def _arm(self, phase: str, timeout: float) -> None:
        """Enter a phase whose waits may each last ``timeout``. Moving a trio deadline costs
        microseconds, so it moves later only when that gains more than :data:`DEADLINE_SLACK` of
        the timeout (so a timeout may end up to 2% early, never late); earlier, always."""
        self.phase = phase
        deadline = trio.current_time() + timeout
        if deadline < self._deadline or deadline - self._deadline > timeout * DEADLINE_SLACK:
            self._deadline = self.scope.deadline = deadline

    async def _send_server(
        self, upstream: ServerConnection, data: bytes, server: ServerRuntime
    ) -> None:
        self._arm(SERVER_TURN, self.server_timeout)
        try:
            await upstream.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ServerFailed(
                502, "SH", f"server connection broke: {exc}", replayable=True
            ) from exc
        server.counters.bytes_out += len(data)

    async def _send_client(self, data: bytes) -> None:
        self._arm(CLIENT_SEND, self.session.timeouts.client)
        await self.session.send_client(data)
        self.record.bytes_out += len(data)

    async def _answer_error(self, status: int, termination: str, reason: str | None) -> bool:
        """Answer with trilb's own error page; the connection goes on if the request was read."""
        session = self.session
        record = self.record
        record.status = status
        record.termination = termination
        if reason is not None:
            session.log.warning(
                f"{session.client_ip}:{session.client_port} frontend {session.frontend.name} "
                f"backend {record.backend}: {reason}; answered {status}"
            )
        fe = session.frontend
        keep = self.keep_client and self.request_done and not (fe.draining or fe.retiring)
        body = fe.error_page(status)
        headers = fe.page_headers(status, len(body))
        if not keep:
            headers.append((b"Connection", b"close"))
        data = response_head(status, b"", headers) + body
        self.backend.counters.count_response(status)
        with trio.move_on_after(session.timeouts.client) as scope:
            try:
                await session.send_client(data)
                record.bytes_out += len(data)
                if not self.request_done:
                    await session.linger()  # the unread body must not reset our answer away
            except ClientGone as gone:
                record.termination = gone.termination
                return False
        return keep and not scope.cancelled_caught
