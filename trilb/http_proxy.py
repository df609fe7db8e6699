"""HTTP/1.x reverse proxying of one client connection: the Trio shell around h11.

Theory of operation. A :class:`ClientSession` owns one client stream and handles its requests in
order (pipelined ones too). For each request it

1. reads the head into its own bounded buffer, checks it (:mod:`trilb.core.framing`) and lets a
   fresh h11 server-side connection parse it;
2. picks a server, takes a pooled connection or opens one (failed connects go to another server);
3. sends the re-written head (:mod:`trilb.core.headers`); a request body streams in a sibling task
   while the response streams back, so early answers and ``100-continue`` work;
4. finishes the cycle: the server connection goes back to the pool if both directions ended cleanly,
   the client connection is kept if h11 says both sides may go on.

Bytes move in bounded reads (:data:`RECEIVE_SIZE`); h11 holds at most one read's worth beyond what
has been handled, so a 1 GB body passes in constant memory. Every wait has a timeout from the
config. Failures are mapped the way an operator expects (503 no server, 502 bad answer, 504 slow
server, 4xx bad request) and each request is logged once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

import h11
import trio

from .core.accesslog import RequestLog, millis
from .core.framing import (
    HeadProblem,
    check_incomplete_head,
    check_parsed_head,
    check_raw_head,
    find_head_end,
)
from .core.headers import Forwarded, request_headers_for_server, response_headers_for_client
from .core.responses import error_body, error_headers, raw_error_response
from .pool import ServerConnection

if TYPE_CHECKING:
    from .backend import ServerRuntime
    from .frontend import FrontendRuntime

__all__ = ["RECEIVE_SIZE", "ClientSession"]

#: bytes asked for per read: large enough for bulk throughput, small enough that a few thousand
#: connections' in-flight buffers stay within tens of MB
RECEIVE_SIZE = 64 * 1024
#: RFC 9110 section 9.2.2: a request that may be sent twice, when a reused server connection
#: turns out to have been closed before it answered
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
#: after refusing a request, read and discard what the client still sends for this long, so that
#: closing does not reset the connection before the client has read the answer (nginx's
#: lingering close)
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024


class _ClientGone(Exception):
    """The client side failed (closed, reset, timed out): stop and close, nothing to answer."""

    def __init__(self, termination: str) -> None:
        super().__init__(termination)
        self.termination = termination


class _ServerFailed(Exception):
    """The server failed before its response head reached us: the client gets ``status``."""

    def __init__(
        self, status: int, termination: str, reason: str, *, replayable: bool = False
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.termination = termination
        self.reason = reason
        self.replayable = replayable  # the server closed a reused connection without a word


class _ResponseBroken(Exception):
    """The exchange broke after the response head was sent: the client connection must be cut."""

    def __init__(self, termination: str, reason: str) -> None:
        super().__init__(reason)
        self.termination = termination
        self.reason = reason


class ClientSession:
    """One client connection, from accept to close."""

    __slots__ = (
        "buffer",
        "client_ip",
        "client_port",
        "frontend",
        "limits",
        "local_port",
        "log",
        "stream",
        "timeouts",
        "tls",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        frontend: FrontendRuntime,
        peer: tuple[str, int],
        local_port: int,
        *,
        tls: bool = False,
    ) -> None:
        self.stream = stream
        self.frontend = frontend
        self.client_ip, self.client_port = peer
        self.local_port = local_port
        self.tls = tls
        self.timeouts = frontend.config.timeouts
        self.limits = frontend.config.limits
        self.buffer = bytearray()  # received, not yet parsed (the next pipelined request)
        self.log = frontend.log

    # -- the request loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve requests until the client leaves, an error ends the connection, or drain."""
        first = True
        try:
            while await self._serve_one(first):
                first = False
        except _ClientGone:
            pass  # the client left between or inside a request head: nothing to answer
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await trio.aclose_forcefully(self.stream)

    async def _serve_one(self, first: bool) -> bool:
        """Handle one request; True when the connection may carry another."""
        started = time.monotonic()
        record = RequestLog(
            client_ip=self.client_ip,
            client_port=self.client_port,
            accept_date=time.time(),
            frontend=self.frontend.name,
            tls=self.tls,
        )
        got = await self._read_head(first, record)
        if got is None:
            return False
        conn, request = got
        fe = self.frontend
        record.t_request = millis(started, time.monotonic())
        record.request_line = (
            f"{request.method.decode('ascii', 'replace')} {request.target.decode('ascii', 'replace')} "
            f"HTTP/{request.http_version.decode('ascii')}"
        )
        fe.counters.total_requests += 1
        fe.counters.current_requests += 1
        try:
            keep = await self._proxy(conn, request, record, started)
        finally:
            fe.counters.current_requests -= 1
            record.t_active = millis(started, time.monotonic())
            fe.counters.count_response(record.status)
            self.log.access(record)
        if keep and not fe.draining:
            self.buffer = bytearray(conn.trailing_data[0])
            return True
        return False

    # -- reading a request head -----------------------------------------------------------------

    async def _read_head(
        self, first: bool, record: RequestLog
    ) -> tuple[h11.Connection, h11.Request] | None:
        """The next request, parsed; None when the client closed or idled out between requests.
        Refuses bad heads itself (4xx, logged) and then returns None."""
        buffer = self.buffer
        # The first request's head must be complete within timeout_http_request of the accept;
        # later ones within it of their first byte (the wait before that is timeout_keep_alive).
        deadline = trio.current_time() + self.timeouts.http_request
        if not buffer:
            data = await self._wait_first_bytes(first)
            if not data:
                return None
            buffer += data
            if not first:
                deadline = trio.current_time() + self.timeouts.http_request
        if buffer and buffer[0] in b"\r\n":  # RFC 9112 section 2.2: ignore empty lines first
            del buffer[: len(buffer) - len(buffer.lstrip(b"\r\n"))]
        limits = self.limits
        searched = 0
        while (end := find_head_end(buffer, searched)) < 0:
            problem = check_incomplete_head(
                buffer, max_header_size=limits.max_header_size, max_uri_length=limits.max_uri_length
            )
            if problem is not None:
                await self._refuse(problem, record)
                return None
            searched = len(buffer)
            with trio.move_on_at(deadline):
                data = await self._receive_client()
                if not data:
                    if buffer.strip():  # a partial request, abandoned: worth a log line
                        record.termination = "CR"
                        self.log.access(record)
                    return None
                buffer += data
                continue
            await self._refuse(HeadProblem(408, "request head not received in time"), record, "cR")
            return None
        head = bytes(buffer[:end])
        problem = check_raw_head(
            head,
            max_header_size=limits.max_header_size,
            max_uri_length=limits.max_uri_length,
            max_headers=limits.max_headers,
        )
        if problem is not None:
            await self._refuse(problem, record)
            return None
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_size)
        conn.receive_data(bytes(buffer))
        buffer.clear()
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in (414, 431) else 400
            await self._refuse(HeadProblem(status, str(exc)), record)
            return None
        assert isinstance(event, h11.Request), event
        problem = check_parsed_head(event.headers)
        if problem is None and event.method == b"CONNECT":
            problem = HeadProblem(405, "CONNECT is not enabled")
        if problem is None and (max_body := limits.max_request_body) is not None:
            length = _content_length(event)
            if length is not None and length > max_body:
                problem = HeadProblem(413, f"body of {length} bytes exceeds max_request_body")
        if problem is not None:
            await self._refuse(problem, record)
            return None
        return conn, event

    async def _wait_first_bytes(self, first: bool) -> bytes:
        """Wait for a request to start; b"" when the client closes, idles out or we drain."""
        fe = self.frontend
        if fe.draining:
            return b""
        timeout = self.timeouts.http_request if first else self.timeouts.keep_alive
        with trio.move_on_after(timeout) as scope:
            fe.idle_scopes.add(scope)
            try:
                return await self._receive_client()
            except _ClientGone:
                return b""
            finally:
                fe.idle_scopes.discard(scope)
        return b""

    async def _receive_client(self) -> bytes:
        try:
            # trio's streams return bytes; the bytearray in their signature is for other streams
            data = cast(bytes, await self.stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClientGone("CD") from exc
        self.frontend.counters.bytes_in += len(data)
        return data

    async def _refuse(
        self, problem: HeadProblem, record: RequestLog, termination: str = "PR"
    ) -> None:
        """Answer a request that can't be served with a closing error response, then linger."""
        record.status = problem.status
        record.termination = termination
        self.log.warning(
            f"{self.client_ip}:{self.client_port} frontend {self.frontend.name}: "
            f"refused request with {problem.status}: {problem.reason}"
        )
        response = raw_error_response(problem.status)
        record.bytes_out = len(response)
        fe = self.frontend
        fe.counters.count_response(problem.status)
        self.log.access(record)
        try:
            with trio.move_on_after(self.timeouts.client):
                await self.stream.send_all(response)
                fe.counters.bytes_out += len(response)
                await self._linger()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _linger(self) -> None:
        """Half-close, then discard what the client still sends (bounded), so that our answer is
        read before the connection closes."""
        try:
            await self.stream.send_eof()  # type: ignore[attr-defined]
        except (AttributeError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        discarded = 0
        with trio.move_on_after(LINGER_SECONDS):
            while discarded < LINGER_BYTES:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    break
                discarded += len(data)

    # -- relaying one request -------------------------------------------------------------------

    async def _proxy(
        self, conn: h11.Connection, request: h11.Request, record: RequestLog, started: float
    ) -> bool:
        """Relay one request and its response; True when the client connection may be reused."""
        fe = self.frontend
        backend = fe.backend
        record.backend = backend.name
        chunked = False
        has_body = False
        for name, value in request.headers:
            if name == b"transfer-encoding":
                chunked = has_body = True
            elif name == b"content-length" and value != b"0":
                has_body = True
        forwarded = (
            Forwarded(self.client_ip, "https" if self.tls else "http", self.local_port)
            if fe.config.forwarded_for
            else None
        )
        outgoing = h11.Request(
            method=request.method,
            target=request.target,
            headers=request_headers_for_server(
                request.headers.raw_items(), chunked=chunked, forwarded=forwarded
            ),
        )
        replayable = request.method in IDEMPOTENT and not has_body
        tried: set[int] = set()
        attempts = 0
        retries = backend.config.retries
        backend.counters.total_requests += 1
        while True:
            server = backend.pick(tried)
            if server is None:
                return await self._answer_error(conn, record, 503, "SC", "no server available")
            record.server = server.name
            tried.add(server.index)
            try:
                server_conn, reused = await self._server_connection(server, record, started)
            except OSError as exc:
                server.counters.connect_errors += 1
                attempts += 1
                self.log.warning(
                    f"backend {backend.name}/{server.name}: connect failed "
                    f"(attempt {attempts} of {retries + 1}): {exc or type(exc).__name__}"
                )
                if attempts > retries:
                    return await self._answer_error(
                        conn, record, 503, "SC", "no server could be reached"
                    )
                record.retries += 1
                continue
            try:
                return await self._exchange(
                    conn, request, outgoing, server, server_conn, record, started, has_body
                )
            except _ServerFailed as failure:
                server_conn.close()
                if failure.replayable and reused and replayable:
                    tried.discard(
                        server.index
                    )  # a stale pooled connection is not the server's fault
                    continue
                server.counters.count_response(failure.status)
                self.log.warning(
                    f"backend {backend.name}/{server.name}: {failure.reason}; answered {failure.status}"
                )
                record.termination = failure.termination
                if conn.our_state is not h11.SEND_RESPONSE:
                    return False
                return await self._answer_error(
                    conn, record, failure.status, failure.termination, None
                )

    async def _server_connection(
        self, server: ServerRuntime, record: RequestLog, started: float
    ) -> tuple[ServerConnection, bool]:
        now = time.monotonic()
        conn, stale = server.pool.take(now)
        for old in stale:
            old.close()
        if conn is not None:
            record.t_queue = record.t_connect = 0
            return conn, True
        record.t_queue = 0
        conn = await server.connect(self.frontend.backend.config.timeouts.connect)
        record.t_connect = millis(now, time.monotonic())
        server.counters.total_connections += 1
        return conn, False

    async def _exchange(
        self,
        client: h11.Connection,
        request: h11.Request,
        outgoing: h11.Request,
        server: ServerRuntime,
        upstream: ServerConnection,
        record: RequestLog,
        started: float,
        has_body: bool,
    ) -> bool:
        """Send the request to the server and relay the response back."""
        backend = self.frontend.backend
        counters = server.counters
        counters.current_requests += 1
        counters.total_requests += 1
        backend.counters.current_requests += 1
        try:
            if has_body:
                await self._send_server(upstream, upstream.h11.send(outgoing) or b"", server)
                await self._relay_with_body(client, request, upstream, server, record, started)
            else:
                end = client.next_event()  # a request without a body ends with its head
                assert isinstance(end, h11.EndOfMessage), end
                data = (upstream.h11.send(outgoing) or b"") + (upstream.h11.send(end) or b"")
                await self._send_server(upstream, data, server)
                await self._download(client, request, upstream, server, record, started)
        except _ResponseBroken as broken:
            upstream.close()
            record.termination = broken.termination
            self.log.warning(
                f"{self.client_ip}:{self.client_port} {backend.name}/{server.name}: "
                f"response cut short: {broken.reason}"
            )
            return False
        except _ClientGone as gone:
            upstream.close()
            record.termination = gone.termination
            return False
        finally:
            counters.current_requests -= 1
            backend.counters.current_requests -= 1
        if record.status >= 0:
            counters.count_response(record.status)
            backend.counters.count_response(record.status)
        if upstream.is_reusable():
            for old in server.pool.put(upstream, time.monotonic()):
                old.close()
        else:
            upstream.close()
        return client.our_state is h11.DONE and client.their_state is h11.DONE

    async def _relay_with_body(
        self,
        client: h11.Connection,
        request: h11.Request,
        upstream: ServerConnection,
        server: ServerRuntime,
        record: RequestLog,
        started: float,
    ) -> None:
        """Upload and download at once: a server may answer (413, 100-continue, an early error)
        before it has read the body. Whichever side fails first ends both; errors are re-raised
        one at a time, so callers never see an exception group."""
        upload_error: _ClientGone | None = None
        download_error: Exception | None = None
        async with trio.open_nursery() as nursery:

            async def upload() -> None:
                nonlocal upload_error
                try:
                    await self._upload(client, upstream, server)
                except _ClientGone as exc:
                    upload_error = exc
                    nursery.cancel_scope.cancel()

            nursery.start_soon(upload)
            try:
                await self._download(client, request, upstream, server, record, started)
            except (_ServerFailed, _ResponseBroken, _ClientGone) as exc:
                download_error = exc
            # An upload still running means the server answered without reading it all: the
            # server connection's h11 state is then not DONE, so it will not be reused.
            nursery.cancel_scope.cancel()
        if upload_error is not None:
            raise upload_error
        if download_error is not None:
            raise download_error

    async def _upload(
        self, client: h11.Connection, upstream: ServerConnection, server: ServerRuntime
    ) -> None:
        """Stream the request body to the server (runs beside :meth:`_download`)."""
        limit = self.limits.max_request_body
        sent = 0
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                with trio.move_on_after(self.timeouts.client) as scope:
                    data = await self._receive_client()
                if scope.cancelled_caught:
                    raise _ClientGone("cD")
                client.receive_data(data)
                if not data and client.their_state is not h11.DONE:
                    raise _ClientGone("CD")
                continue
            if isinstance(event, h11.Data):
                sent += len(event.data)
                if limit is not None and sent > limit:
                    raise _ClientGone("PD")  # chunked body over the limit: cut the request
                try:
                    await self._send_server(upstream, upstream.h11.send(event) or b"", server)
                except _ServerFailed:
                    return  # the server stopped reading; its answer (or silence) decides
                continue
            if isinstance(event, h11.EndOfMessage):
                try:
                    await self._send_server(upstream, upstream.h11.send(event) or b"", server)
                except _ServerFailed:
                    pass
                return
            raise _ClientGone("CD")  # ConnectionClosed mid-body

    async def _download(
        self,
        client: h11.Connection,
        request: h11.Request,
        upstream: ServerConnection,
        server: ServerRuntime,
        record: RequestLog,
        started: float,
    ) -> None:
        """Relay the server's response to the client, batching each read's events into one write."""
        server_h11 = upstream.h11
        timeout = self.frontend.backend.config.timeouts.server
        out: list[bytes] = []
        responded = False
        got_bytes = False
        while True:
            try:
                event = server_h11.next_event()
            except h11.RemoteProtocolError as exc:
                if responded:
                    raise _ResponseBroken("SD", f"bad response body: {exc}") from None
                if not got_bytes:
                    raise _ServerFailed(
                        502, "SH", "closed before answering", replayable=True
                    ) from None
                raise _ServerFailed(502, "SH", f"invalid response: {exc}") from None
            if event is h11.NEED_DATA:
                if out:
                    await self._send_client(b"".join(out))
                    out.clear()
                with trio.move_on_after(timeout) as scope:
                    try:
                        data = await upstream.stream.receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        if responded:
                            raise _ResponseBroken("SD", f"server connection broke: {exc}") from None
                        raise _ServerFailed(
                            502, "SH", f"server connection broke: {exc}", replayable=not got_bytes
                        ) from None
                if scope.cancelled_caught:
                    if responded:
                        raise _ResponseBroken("sD", f"server sent nothing for {timeout:g}s")
                    raise _ServerFailed(504, "sH", f"no response within {timeout:g}s")
                if data:
                    got_bytes = True
                    server.counters.bytes_in += len(data)
                server_h11.receive_data(data)
                continue
            if isinstance(event, h11.Data):
                out.append(client.send(event) or b"")
                continue
            if isinstance(event, h11.Response):
                record.t_response = millis(started, time.monotonic())
                record.status = event.status_code
                headers = response_headers_for_client(event.headers.raw_items())
                if self.frontend.draining:
                    headers.append((b"Connection", b"close"))
                out.append(
                    client.send(
                        h11.Response(
                            status_code=event.status_code, headers=headers, reason=event.reason
                        )
                    )
                    or b""
                )
                responded = True
                continue
            if isinstance(event, h11.InformationalResponse):
                out.append(client.send(event) or b"")
                continue
            if isinstance(event, h11.EndOfMessage):
                out.append(client.send(h11.EndOfMessage()) or b"")
                await self._send_client(b"".join(out))
                return
            raise _ResponseBroken("SD", f"unexpected {type(event).__name__} from server")

    async def _send_client(self, data: bytes) -> None:
        with trio.move_on_after(self.timeouts.client) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _ClientGone("CD") from exc
        if scope.cancelled_caught:
            raise _ClientGone("cD")
        self.frontend.counters.bytes_out += len(data)

    async def _send_server(
        self, upstream: ServerConnection, data: bytes, server: ServerRuntime
    ) -> None:
        timeout = self.frontend.backend.config.timeouts.server
        with trio.move_on_after(timeout) as scope:
            try:
                await upstream.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _ServerFailed(
                    502, "SH", f"server connection broke: {exc}", replayable=True
                ) from exc
        if scope.cancelled_caught:
            raise _ServerFailed(504, "sH", f"server did not read the request within {timeout:g}s")
        server.counters.bytes_out += len(data)

    async def _answer_error(
        self,
        conn: h11.Connection,
        record: RequestLog,
        status: int,
        termination: str,
        reason: str | None,
    ) -> bool:
        """Answer with trilb's own error page, keeping the connection if the request was read."""
        record.status = status
        record.termination = termination
        if reason is not None:
            self.log.warning(
                f"{self.client_ip}:{self.client_port} frontend {self.frontend.name} "
                f"backend {record.backend}: {reason}; answered {status}"
            )
        keep = conn.their_state is h11.DONE or _drain_request(conn)
        body = error_body(status)
        data = (
            (
                conn.send(
                    h11.Response(status_code=status, headers=error_headers(status, close=not keep))
                )
                or b""
            )
            + (conn.send(h11.Data(data=body)) or b"")
            + (conn.send(h11.EndOfMessage()) or b"")
        )
        record.bytes_out = len(data)
        self.frontend.backend.counters.count_response(status)
        try:
            await self._send_client(data)
        except _ClientGone as gone:
            record.termination = gone.termination
            return False
        return keep and conn.our_state is h11.DONE


def _drain_request(conn: h11.Connection) -> bool:
    """Consume a request body already buffered in h11, so the connection can go on; False when
    more of it is still to come (then the connection closes after the answer)."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return False
        if isinstance(event, h11.EndOfMessage):
            return True
        if not isinstance(event, h11.Data):
            return False


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)
    return None
