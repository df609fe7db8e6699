"""The stats server (``[stats]``): the dashboard, ``/stats.json`` and ``/metrics`` over HTTP/1.1.

::

    serve()                          the balancer's nursery
    ├── ...
    └── serve_stats()                on [stats] bind
        ├── sampler                  the request totals, once a second (rates, response times)
        ├── accept loop              one per listener
        └── stats connection         one task per client, at most MAX_CONNECTIONS at once

It only reads counters: a page costs the data path nothing but a snapshot
(:meth:`Balancer.statistics`) and the rendering (:mod:`trilb.dashboard`, :mod:`trilb.metrics`),
done at most once per :data:`CACHE_SECONDS` for each path, and the sampler reads the totals once
a second. It is an HTTP server anyone who can reach the address may talk to, so
every phase is bounded: the TLS handshake, a request (head and body: :data:`MAX_HEAD`,
:data:`MAX_BODY`), the wait between keep-alive requests, writing the answer. A client that errs
gets its 4xx and the connection closes; an error in one connection ends that connection only.

========================  ===================================================================
request                   answer
========================  ===================================================================
``GET /``                 the dashboard (HTML)
``GET /stats.json``       the same data as JSON
``GET /metrics``          Prometheus text format 0.0.4
other paths               404
other methods             405 (``HEAD`` works for each path)
no or wrong credentials   401 with ``WWW-Authenticate`` (when ``auth`` is set)
========================  ===================================================================
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import math
from collections.abc import Sequence
from http import HTTPStatus
from typing import Protocol

import h11
import trio

from .config import Address, StatsConfig
from .core.responses import raw_error_response
from .dashboard import CONTENT_SECURITY_POLICY, render_html
from .errors import StartupError
from .logsink import LogSink
from .metrics import METRICS_CONTENT_TYPE, render_json, render_metrics
from .net import TCPListener, TCPStream, bind_tcp, bind_unix
from .stats import RateMeter, Recent, Statistics, StatsView
from .tls import HandshakeFailed, HandshakeRecord, ServerTLS, load_server_tls, server_handshake

__all__ = ["StatsSource", "basic_auth_ok", "open_stats_listeners", "serve_stats"]

#: stats clients served at once: operators' browsers and a Prometheus or two; more wait in the
#: listen backlog
MAX_CONNECTIONS = 32
#: a request head at most (h11's bound); a browser's head with a few cookies is well below
MAX_HEAD = 16 * 1024
#: a request body is read and thrown away up to this much (no page takes one); beyond, 413
MAX_BODY = 16 * 1024
#: the TLS handshake must complete within this
HANDSHAKE_TIMEOUT = 10.0
#: a request, head and body, must arrive within this of its first byte (of the accept for the
#: first request of a connection)
REQUEST_TIMEOUT = 10.0
#: an idle keep-alive connection is closed after this; a dashboard refreshing every 5s keeps
#: its connection
IDLE_TIMEOUT = 30.0
#: a client must take an answer within this
SEND_TIMEOUT = 10.0
#: how often the sampler reads the totals, and over how long the rates are taken
SAMPLE_INTERVAL = 1.0
#: a page is rendered at most once in this long (each path); clients asking more often get the
#: same bytes. Rendering costs milliseconds for a large configuration, and this bounds what a
#: client polling in a loop can take from the data path to a few renders a second.
CACHE_SECONDS = 0.5
RATE_WINDOW = 10.0
#: bytes asked of the stream per read
RECEIVE_SIZE = 16 * 1024
#: after an accept() error for lack of resources (EMFILE), wait this long before the next try
ACCEPT_BACKOFF = 0.1
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

_REALM = b'Basic realm="trilb stats", charset="UTF-8"'
_PAGES = {
    b"/": ("text/html; charset=utf-8", render_html),
    b"/stats.json": ("application/json", render_json),
    b"/metrics": (METRICS_CONTENT_TYPE, render_metrics),
}


class StatsSource(Protocol):
    """What the stats server reads (a :class:`~trilb.balancer.Balancer`)."""

    def statistics(self) -> Statistics: ...

    @property
    def draining(self) -> bool: ...


def basic_auth_ok(authorization: bytes | None, user: str, password: str) -> bool:
    """Whether an ``Authorization`` header value carries these credentials (HTTP basic, RFC
    7617). Compared in constant time, user and password both, so that the answer's timing
    tells nothing about either."""
    if authorization is None:
        return False
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    given_user, colon, given_password = decoded.partition(b":")
    user_ok = hmac.compare_digest(given_user, user.encode())
    password_ok = hmac.compare_digest(given_password, password.encode())
    return bool(colon) and user_ok and password_ok


def open_stats_listeners(config: StatsConfig) -> list[TCPListener]:
    """Bind every ``[stats] bind`` address; on a failure close what was opened and say which."""
    listeners: list[TCPListener] = []
    try:
        for index, address in enumerate(config.bind):
            try:
                if address.path is not None:
                    listeners.append(bind_unix(address.path))
                else:
                    listeners.extend(bind_tcp(address.host, address.port))
            except OSError as exc:
                raise StartupError(
                    f"stats.bind[{index}]: cannot listen on {address}: {exc.strerror or exc}"
                ) from None
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


async def serve_stats(
    source: StatsSource,
    config: StatsConfig,
    log: LogSink,
    *,
    task_status: trio.TaskStatus[tuple[Address, ...]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the stats pages of ``source`` on ``config.bind`` until cancelled; started with
    ``await nursery.start(...)``, which hands back the addresses bound (port 0 resolved).

    Cancellation: cancelling the task closes the listeners and every stats connection.
    Resource handling: each connection is closed however it ends; the listeners on return.
    Error handling: raises :class:`~trilb.errors.ConfigError` (the TLS certificates) or
    :class:`~trilb.errors.StartupError` (an address in use) before starting; afterwards an
    error of one connection ends that connection only, and is logged.
    """
    tls = load_server_tls(config.tls, "stats.tls") if config.tls is not None else None
    listeners = open_stats_listeners(config)
    try:
        server = StatsServer(source, config, log, tls)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.sample_forever)
            for listener in listeners:
                nursery.start_soon(server.accept_loop, listener, nursery)
            addresses = tuple(_listener_address(listener) for listener in listeners)
            scheme = "https" if tls is not None else "http"
            where = ", ".join(
                f"{scheme}://{a}/" if a.path is None else f"unix:{a.path}" for a in addresses
            )
            auth = "basic auth" if config.auth is not None else "no auth"
            log.info(f"stats listening on {where} ({auth}; /stats.json, /metrics)")
            task_status.started(addresses)
    finally:
        for listener in listeners:
            listener.close()


class StatsServer:
    """The stats pages of one balancer: the sampler, the accept loops, the connections."""

    def __init__(
        self, source: StatsSource, config: StatsConfig, log: LogSink, tls: ServerTLS | None
    ) -> None:
        self.source = source
        self.config = config
        self.log = log
        self.tls = tls
        self.meter: RateMeter[tuple[str, ...]] = RateMeter(RATE_WINDOW)
        self.started = trio.current_time()
        self._slots = trio.Semaphore(MAX_CONNECTIONS)
        self._cache: dict[bytes, tuple[float, bytes]] = {}  # path -> (rendered when, page)

    # -- the figures -------------------------------------------------------------------------

    async def sample_forever(self) -> None:
        while True:
            self.sample()
            await trio.sleep(SAMPLE_INTERVAL)

    def sample(self) -> None:
        """Note the totals the rates and recent response times are computed from."""
        totals: dict[tuple[str, ...], float] = {}
        stats = self.source.statistics()
        for fe in stats.frontends:
            totals["frontend", fe.name, "requests"] = fe.traffic.total_requests
        for be in stats.backends:
            key: tuple[str, ...] = ("backend", be.name)
            totals[(*key, "requests")] = be.traffic.total_requests
            totals[(*key, "time")] = be.response_time.sum
            totals[(*key, "responses")] = be.response_time.count
            for s in be.servers:
                key = ("server", be.name, s.name)
                totals[(*key, "requests")] = s.traffic.total_requests
                totals[(*key, "time")] = s.response_time.sum
                totals[(*key, "responses")] = s.response_time.count
        self.meter.sample(trio.current_time(), totals)

    def _recent(self, key: tuple[str, ...]) -> Recent:
        meter = self.meter
        responses, _ = meter.increase((*key, "responses"))
        time_spent, _ = meter.increase((*key, "time"))
        return Recent(
            request_rate=meter.rate((*key, "requests")),
            response_time=time_spent / responses if responses else None,
        )

    def view(self) -> StatsView:
        stats = self.source.statistics()
        recent: dict[tuple[str, ...], Recent] = {}
        for fe in stats.frontends:
            recent["frontend", fe.name] = self._recent(("frontend", fe.name))
        for be in stats.backends:
            recent["backend", be.name] = self._recent(("backend", be.name))
            for s in be.servers:
                recent["server", be.name, s.name] = self._recent(("server", be.name, s.name))
        return StatsView(
            statistics=stats,
            recent=recent,
            uptime=trio.current_time() - self.started,
            refresh=self.config.refresh,
            window=RATE_WINDOW,
            draining=self.source.draining,
        )

    # -- requests to answers (no I/O) --------------------------------------------------------

    def answer(self, request: h11.Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers and body for a request (the body also for HEAD: its length)."""
        auth = self.config.auth
        if auth is not None:
            given = next((v for n, v in request.headers if n == b"authorization"), None)
            if not basic_auth_ok(given, *auth):
                return _plain(401, b"401 Unauthorized\n", [(b"WWW-Authenticate", _REALM)])
        if request.method not in (b"GET", b"HEAD"):
            return _plain(405, b"405 Method Not Allowed\n", [(b"Allow", b"GET, HEAD")])
        path = request.target.partition(b"?")[0]
        page = _PAGES.get(path)
        if page is None:
            return _plain(404, b"404 Not Found\n", [])
        content_type, render = page
        now = trio.current_time()
        rendered, body = self._cache.get(path, (-math.inf, b""))
        if now - rendered >= CACHE_SECONDS:
            body = render(self.view())
            self._cache[path] = (now, body)
        headers = [(b"Content-Type", content_type.encode()), *_COMMON_HEADERS]
        if render is render_html:
            headers.append((b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode()))
        return 200, headers, body

    # -- connections -------------------------------------------------------------------------

    async def accept_loop(self, listener: TCPListener, nursery: trio.Nursery) -> None:
        while True:
            await self._slots.acquire()
            try:
                stream, _ = await listener.accept()
            except trio.ClosedResourceError:
                self._slots.release()
                return
            except OSError as exc:
                self._slots.release()
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                self.log.error(f"stats: accept failed: {exc}; retrying")
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            nursery.start_soon(self._handle, stream)

    async def _handle(self, transport: TCPStream) -> None:
        """The error boundary of one stats connection."""
        try:
            stream: trio.abc.Stream = transport
            if self.tls is not None:
                with trio.move_on_after(HANDSHAKE_TIMEOUT):
                    stream, _ = await server_handshake(transport, self.tls, HandshakeRecord())
                if stream is transport:
                    return  # no handshake in time
            await self._serve(stream)
            if stream is not transport:
                with trio.move_on_after(1):  # a close_notify, so the end of the answer is clear
                    await stream.aclose()
        except (HandshakeFailed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client's doing; nothing to answer
        except Exception as exc:  # noqa: BLE001 - the error boundary of one connection
            self.log.error(f"stats: internal error: {exc!r}")
        finally:
            transport.close()
            self._slots.release()

    async def _serve(self, stream: trio.abc.Stream) -> None:
        """Requests in turn (keep-alive) until the client closes, idles out or errs."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        first = True
        while True:
            try:
                request = await _read_request(conn, stream, first)
            except _RequestFailed as failure:
                with trio.move_on_after(SEND_TIMEOUT):
                    await stream.send_all(raw_error_response(failure.status))
                return
            if request is None:
                return
            status, headers, body = self.answer(request)
            body_out = b"" if request.method == b"HEAD" else body
            headers.append((b"Content-Length", str(len(body)).encode()))
            reason = HTTPStatus(status).phrase.encode()
            data = (
                conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
            )
            if body_out:
                data += conn.send(h11.Data(data=body_out)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            with trio.move_on_after(SEND_TIMEOUT) as scope:
                await stream.send_all(data)
            if scope.cancelled_caught:
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
            first = False


class _RequestFailed(Exception):
    """The request can't be answered normally: answer ``status`` and close."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def _read_request(
    conn: h11.Connection, stream: trio.abc.Stream, first: bool
) -> h11.Request | None:
    """The next request, its body read and discarded; None when the client closed or stayed
    idle before starting one. Raises :class:`_RequestFailed` for a bad, slow or big request."""
    deadline = trio.current_time() + (REQUEST_TIMEOUT if first else IDLE_TIMEOUT)
    begun = first  # whether the request's deadline runs (else the idle one)
    request: h11.Request | None = None
    head = body = 0  # bytes received before the head was complete; of the body
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            raise _RequestFailed(status if 400 <= status < 500 else 400) from None
        if event is h11.NEED_DATA:
            with trio.move_on_at(deadline):
                data = await stream.receive_some(RECEIVE_SIZE)
                if data and not begun:
                    begun = True
                    deadline = trio.current_time() + REQUEST_TIMEOUT
                if request is None:
                    head += len(data)
                    if head > MAX_HEAD:  # (h11 bounds only what it holds incomplete)
                        raise _RequestFailed(431)
                conn.receive_data(bytes(data))
                continue
            if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                return None  # nothing of a request came: an idle connection, just close
            raise _RequestFailed(408)
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += len(event.data)
            if body > MAX_BODY:
                raise _RequestFailed(413)
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None
        # (h11.PAUSED cannot come: the cycle restarts after each answer)


_COMMON_HEADERS: Sequence[tuple[bytes, bytes]] = (
    (b"Cache-Control", b"no-store"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"X-Frame-Options", b"DENY"),
)


def _plain(
    status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    content_type = (b"Content-Type", b"text/plain; charset=utf-8")
    return status, [content_type, *_COMMON_HEADERS, *headers], body


def _listener_address(listener: TCPListener) -> Address:
    name = listener.sock.getsockname()
    if isinstance(name, tuple):
        return Address(host=name[0], port=name[1])
    return Address(path=str(name))
