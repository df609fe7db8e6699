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

import math
import time
from typing import TYPE_CHECKING, cast

import h11
import trio

from .core.accesslog import RequestLog, millis
from .core.framing import (
    HeadProblem,
    check_head_info,
    check_incomplete_head,
    check_raw_head,
    find_head_end,
)
from .core.headers import Forwarded
from .core.http1 import inspect_head, response_head
from .core.ratelimit import Limiter, Refusal, check_limits
from .core.redirect import https_location, redirect_status
from .core.routing import RequestView, redirect_location
from .http_exchange import RECEIVE_SIZE, ClientGone, Exchange, ParsedRequest
from .net import TCPStream
from .session import ClientConnection

if TYPE_CHECKING:
    from .backend import ServerRuntime
    from .frontend import FrontendRuntime
    from .pool import ServerConnection

__all__ = ["ClientSession"]

#: after refusing a request, read and discard what the client still sends for this long, so that
#: closing does not reset the connection before the client has read the answer (nginx's
#: lingering close)
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024
#: a TLS read returns at most one record's plaintext (16 KiB), and ``ssl`` allocates a buffer of
#: the size asked for on every read (and every try that finds no record yet): asking for more
#: than a record only costs
TLS_RECEIVE_SIZE = 16 * 1024


async def close_stream(stream: trio.abc.Stream) -> None:
    """Close a client stream without waiting on the client: a plain socket just closes (no
    checkpoints: this is on the path of every connection); other streams (TLS) get a bounded,
    forceful close."""
    if isinstance(stream, TCPStream):
        stream.close()
        return
    # TLS: a close_notify first (trio sends it without waiting for the client's), so that the
    # client knows the end is real; bounded, and forceful if need be.
    transport = getattr(stream, "transport_stream", None)
    if isinstance(transport, TCPStream):
        # The usual case, on the path of every TLS connection: the close_notify goes out if the
        # socket takes it now, else it is dropped (``closing``), so no timer is needed.
        transport.closing = True
        with trio.CancelScope(shield=True):
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        return
    with trio.CancelScope(shield=True):
        with trio.move_on_after(1):
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            return
        await trio.aclose_forcefully(stream)


class ClientSession(ClientConnection):
    """One client connection, from accept to close."""

    __slots__ = (
        "buffer",
        "cert_header",
        "client_cert",
        "forwarded",
        "hsts",
        "limits",
        "local_host",
        "local_port",
        "private",
        "receive_size",
        "request",
        "timeouts",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        frontend: FrontendRuntime,
        peer: tuple[str, int],
        local_port: int,
        local_host: str = "localhost",
        *,
        tls: bool = False,
        client_cert: str | None = None,
        sni: str | None = None,
        alpn: str | None = None,
        destination: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(
            stream, frontend, peer, tls=tls, sni=sni, alpn=alpn, destination=destination
        )
        self.local_port = local_port
        #: ``send_proxy`` servers' connections carry this client's address: kept for this
        #: session only, never pooled for others (as HAProxy keeps them private)
        self.private: dict[ServerRuntime, ServerConnection] = {}
        #: a verified client certificate's subject (content switching may look at it)
        self.client_cert = client_cert
        self.local_host = local_host
        self.timeouts = frontend.config.timeouts
        self.limits = frontend.config.limits
        self.buffer = bytearray()  # received, not yet parsed (the next pipelined request)
        self.receive_size = TLS_RECEIVE_SIZE if tls else RECEIVE_SIZE
        #: for ``show sessions``: the request under way
        self.request: RequestLog | None = None
        #: with client certificates configured, the header that carries the verified subject:
        #: (lower-case name, name, value or None); a client-sent header of that name never passes
        self.cert_header: tuple[bytes, bytes, bytes | None] | None = None
        tls_config = frontend.tls.config if frontend.tls is not None else None
        if tls_config is not None and tls_config.verify_client != "none":
            name = tls_config.client_cert_header.encode("ascii")
            value = client_cert.encode("utf-8") if client_cert is not None else None
            self.cert_header = (name.lower(), name, value)
        hsts = frontend.config.hsts
        self.hsts = (b"Strict-Transport-Security", hsts.encode("ascii")) if hsts else None
        #: what the servers learn about this client (``forwarded_for``); fixed per connection
        self.forwarded = (
            Forwarded(self.client_ip, "https" if tls else "http", local_port)
            if frontend.config.forwarded_for
            else None
        )

    # -- the request loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve requests until the client leaves, an error ends the connection, or drain."""
        first = True
        try:
            while await self._serve_one(first):
                first = False
        except ClientGone:
            pass  # the client left between or inside a request head: nothing to answer
        finally:
            for conn in self.private.values():
                conn.close()
            self.private.clear()
            await close_stream(self.stream)

    async def _serve_one(self, first: bool) -> bool:
        """Handle one request; True when the connection may carry another."""
        record = RequestLog(
            client_ip=self.client_ip,
            client_port=self.client_port,
            accept_date=time.time(),
            frontend=self.frontend.name,
            tls=self.tls,
        )
        parsed = await self._read_head(first, record)
        if parsed is None:
            return False
        request = parsed.request
        started = parsed.started
        fe = self.frontend
        record.t_request = millis(started, time.monotonic())
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        record.request_line = f"{method} {target} HTTP/{request.http_version.decode('ascii')}"
        fe.counters.total_requests += 1
        fe.counters.current_requests += 1
        if fe.counters.current_requests > fe.counters.peak_requests:
            fe.counters.peak_requests = fe.counters.current_requests
        self.request = record
        try:
            keep = await self._dispatch(parsed, record)
        finally:
            self.request = None
            self.requests += 1
            fe.counters.current_requests -= 1
            record.t_active = millis(started, time.monotonic())
            record.feconn = fe.counters.current_connections
            record.actconn = fe.active_connections
            fe.counters.count_response(record.status)
            self.log.access(record)
        return keep and not fe.draining

    def _view(self, parsed: ParsedRequest) -> RequestView:
        request = parsed.request
        return RequestView(
            method=request.method,
            target=request.target,
            headers=parsed.fields,
            client_ip=self.client_ip,
            sni=self.sni,
            client_cert=self.client_cert is not None,
        )

    async def _dispatch(self, parsed: ParsedRequest, record: RequestLog) -> bool:
        """Route the request (content switching), check its rate limits, relay or answer it."""
        fe = self.frontend
        if fe.config.redirect_https is not None:
            if fe.rate_limiter is not None:
                refusal = check_limits((fe.rate_limiter,), self._view(parsed), trio.current_time())
                if refusal is not None:
                    return await self._over_limit(parsed, record, refusal)
            return await self._redirect_https(parsed, record)
        backend = fe.backend
        view = decision = None
        limiters: tuple[Limiter, ...] = () if fe.rate_limiter is None else (fe.rate_limiter,)
        if fe.routes is not None:
            view = self._view(parsed)
            decision = fe.routes.select(view)
            if decision.route is not None:
                record.route = decision.route.name
                route_limiter = fe.route_limiters.get(id(decision.route))
                if route_limiter is not None:
                    limiters = (*limiters, route_limiter)
        if limiters:
            view = view or self._view(parsed)
            refusal = check_limits(limiters, view, trio.current_time())
            if refusal is not None:
                return await self._over_limit(parsed, record, refusal)
        if decision is not None:
            assert view is not None
            if decision.deny is not None:
                return await self.answer_locally(
                    parsed, record, decision.deny, [], page=True, termination="PR"
                )
            if decision.redirect is not None:
                location = redirect_location(decision.redirect, view, tls=self.tls)
                headers = [(b"Location", location)]
                return await self.answer_locally(parsed, record, decision.redirect.code, headers)
            backend = fe.backends[decision.backend] if decision.backend is not None else None
        if backend is None:  # no route matched and there is no default_backend
            return await self.answer_locally(parsed, record, 503, [], page=True, termination="SC")
        return await Exchange(self, backend, parsed, record, view).run()

    async def _redirect_https(self, parsed: ParsedRequest, record: RequestLog) -> bool:
        """Answer with a redirect to the same URL over HTTPS (``redirect_https``)."""
        fe = self.frontend
        redirect = fe.config.redirect_https
        assert redirect is not None
        assert fe.redirect_port is not None  # set when the balancer started
        request = parsed.request
        host = next((v for n, v in parsed.fields if n.lower() == b"host"), None)
        location = https_location(host, request.target, fe.redirect_port, self.local_host)
        status = redirect_status(request.method, redirect.code)
        return await self.answer_locally(parsed, record, status, [(b"Location", location)])

    async def _over_limit(
        self, parsed: ParsedRequest, record: RequestLog, refusal: Refusal
    ) -> bool:
        """Answer a request over a ``rate_limit`` with its ``status`` and a ``Retry-After``: at
        once (``deny``, logged ``PR``) or after holding it for ``timeout_tarpit`` (``tarpit``,
        ``PT``). The hold is this connection's own wait: other clients are not held up, and a
        drain ends it at once (the answer then goes out, with ``Connection: close``)."""
        fe = self.frontend
        limit = refusal.limiter.config
        tarpit = limit.action == "tarpit"
        if refusal.verdict.first_refusal:  # once per key and period: a flood is one line
            self.log.warning(
                f"{self.client_ip}:{self.client_port} frontend {fe.name}: over the rate limit "
                f"of {limit.requests} requests per {limit.period:g}s "
                f"({refusal.limiter.describe(refusal.key)}"
                + (f", route {record.route}" if refusal.limiter is not fe.rate_limiter else "")
                + f"); answering {limit.status}"
                + (f" after {self.timeouts.tarpit:g}s" if tarpit else "")
                + " until it slows down"
            )
        retry_after = refusal.verdict.retry_after
        if tarpit:
            fe.counters.tarpitted_requests += 1
            if not fe.draining:
                held = trio.current_time()
                with trio.move_on_after(self.timeouts.tarpit) as scope:
                    fe.idle_scopes.add(scope)
                    try:
                        await trio.sleep_forever()
                    finally:
                        fe.idle_scopes.discard(scope)
                retry_after -= trio.current_time() - held
        else:
            fe.counters.denied_requests += 1
        headers = [(b"Retry-After", str(max(0, math.ceil(retry_after))).encode("ascii"))]
        termination = "PT" if tarpit else "PR"
        return await self.answer_locally(
            parsed, record, limit.status, headers, page=True, termination=termination
        )

    async def answer_locally(
        self,
        parsed: ParsedRequest,
        record: RequestLog,
        status: int,
        headers: list[tuple[bytes, bytes]],
        *,
        page: bool = False,
        termination: str = "LR",
    ) -> bool:
        """Answer a request without any server (a redirect, a deny): trilb's page (or the
        frontend's own ``error_pages``) when ``page``, else no body. The connection goes on when
        the request had no body left unread."""
        fe = self.frontend
        body_unread = parsed.info.chunked or parsed.info.length > 0
        keep = parsed.info.keep_alive and not body_unread and not (fe.draining or fe.retiring)
        body = fe.error_page(status) if page else b""
        headers = [*headers, *fe.page_headers(status, len(body) if page else 0)]
        if not keep:
            headers.append((b"Connection", b"close"))
        data = response_head(status, b"", headers) + body
        record.backend = fe.name
        record.status = status
        record.termination = termination  # "LR": answered locally, at the request
        with trio.move_on_after(self.timeouts.client) as scope:
            await self.send_client(data)
            record.bytes_out = len(data)
            if body_unread:
                await self.linger()
        return keep and not scope.cancelled_caught

    # -- reading a request head -----------------------------------------------------------------

    async def _read_head(self, first: bool, record: RequestLog) -> ParsedRequest | None:
        """The next request, parsed, and when it started (monotonic: the accept for a first
        request, its first byte for later ones); None when the client closed or idled out between
        requests. Refuses bad heads itself (4xx, logged) and then returns None."""
        started = time.monotonic()
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
                started = time.monotonic()
                record.accept_date = time.time()
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
                data = await self.receive_client()
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
            exc.__traceback__ = None  # (its frames would hold this session in a reference cycle)
            status = exc.error_status_hint if exc.error_status_hint in (414, 431) else 400
            await self._refuse(HeadProblem(status, str(exc)), record)
            return None
        assert isinstance(event, h11.Request), event
        fields = event.headers.raw_items()
        info = inspect_head(event.http_version, fields)
        problem = check_head_info(info)
        if (
            problem is None
            and event.method == b"CONNECT"
            and not self.frontend.config.allow_connect
        ):
            problem = HeadProblem(405, "CONNECT is not enabled")
        max_body = limits.max_request_body
        if problem is None and max_body is not None and info.length > max_body:
            problem = HeadProblem(413, f"body of {info.length} bytes exceeds max_request_body")
        if problem is not None:
            await self._refuse(problem, record)
            return None
        return ParsedRequest(conn, event, fields, info, started)

    async def _wait_first_bytes(self, first: bool) -> bytes:
        """Wait for a request to start; b"" when the client closes, idles out or we drain."""
        fe = self.frontend
        if fe.draining:
            return b""
        stream = self.stream
        if first and isinstance(stream, TCPStream):
            # A new connection's request has usually arrived with it: take it without setting
            # up a timed wait (this is on the path of every connection).
            try:
                data = stream.receive_nowait(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
            if data is not None:
                fe.counters.bytes_in += len(data)
                return data
        timeout = self.timeouts.http_request if first else self.timeouts.keep_alive
        with trio.move_on_after(timeout) as scope:
            fe.idle_scopes.add(scope)
            try:
                return await self.receive_client()
            except ClientGone:
                return b""
            finally:
                fe.idle_scopes.discard(scope)
        return b""

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
        response = self.frontend.closing_error_response(problem.status)
        record.bytes_out = len(response)
        fe = self.frontend
        fe.counters.count_response(problem.status)
        self.log.access(record)
        try:
            with trio.move_on_after(self.timeouts.client):
                await self.stream.send_all(response)
                fe.counters.bytes_out += len(response)
                await self.linger()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def linger(self) -> None:
        """Half-close, then discard what the client still sends (bounded), so that our answer is
        read before the connection closes."""
        discarded = 0
        try:
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                await self.stream.send_eof()
            with trio.move_on_after(LINGER_SECONDS):
                while discarded < LINGER_BYTES:
                    data = await self.stream.receive_some(self.receive_size)
                    if not data:
                        break
                    discarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # -- moving bytes ----------------------------------------------------------------------------

    async def receive_client(self) -> bytes:
        """The next bytes from the client (b"" at its end); the caller bounds the wait."""
        try:
            # trio's streams return bytes; the bytearray in their signature is for other streams
            data = cast(bytes, await self.stream.receive_some(self.receive_size))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGone("CD") from exc
        self.frontend.counters.bytes_in += len(data)
        return data

    async def send_client(self, data: bytes) -> None:
        """Write to the client; the caller bounds the wait."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGone("CD") from exc
        self.frontend.counters.bytes_out += len(data)
