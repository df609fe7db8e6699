"""A frontend at run time: its listeners, the accept loops, and one task per client connection."""

from __future__ import annotations

import errno
import traceback
from typing import TYPE_CHECKING

import trio

from .config import Address, FrontendConfig, Match
from .core.http1 import response_head
from .core.proxy_protocol import ProxyHeader
from .core.ratelimit import Limiter, SourceConnections
from .core.responses import error_body, raw_error_response
from .errors import StartupError
from .http_proxy import ClientSession
from .net import TCPListener, TCPStream, bind_tcp, bind_unix
from .proxy_header import ProxyHeaderFailed, TrustedSources, read_proxy_header
from .stats import Counters, FrontendStatistics
from .tcp_proxy import TCPSession
from .tls import HandshakeFailed, HandshakeRecord, ServerTLS, server_handshake

if TYPE_CHECKING:
    from .backend import BackendRuntime
    from .core.rewrite import CompiledHeaderRule
    from .core.routing import CompiledRoutes
    from .logsink import LogSink

__all__ = ["FrontendRuntime", "open_listener", "open_listeners"]

#: accept() errors that mean "out of resources for now": wait a little and go on accepting
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: how long to back off after such an error (trio.serve_listeners uses the same)
_ACCEPT_BACKOFF = 0.1


class ConnectionSlots:
    """``global.max_connections`` (and a frontend's): a counter, and a parking lot where accept
    loops wait while the balancer is full (new connections meanwhile wait in the kernel's listen
    backlog). Cheaper than a semaphore: taking a free slot does not yield, and that happens for
    every connection."""

    __slots__ = ("_lot", "active", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0  # taken: open connections, and accept loops about to accept one
        self.active = 0  # open client connections (HAProxy's actconn)
        self._lot = trio.lowlevel.ParkingLot()

    async def acquire(self) -> None:
        while self.used >= self.limit:
            await self._lot.park()
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        if self._lot:
            self._lot.unpark()

    def set_limit(self, limit: int) -> None:
        """A new limit (a reload): accept loops waiting for a slot look again."""
        self.limit = limit
        self._lot.unpark_all()


class FrontendRuntime:
    """What a client session needs from its frontend, plus the frontend's listeners."""

    def __init__(
        self,
        config: FrontendConfig,
        backend: BackendRuntime | None,
        listeners: list[TCPListener],
        log: LogSink,
        slots: ConnectionSlots,
        tls: ServerTLS | None = None,
    ) -> None:
        self.config = config
        self.tls = tls
        self.name = config.name
        self.backend = backend  # None for a frontend that only redirects to HTTPS
        #: every backend by name (for routes), the compiled routes and header rules
        self.backends: dict[str, BackendRuntime] = {}
        self.routes: CompiledRoutes | None = None
        self.request_rules: tuple[CompiledHeaderRule, ...] = ()
        self.response_rules: tuple[CompiledHeaderRule, ...] = ()
        #: the HTTPS port that ``redirect_https`` sends clients to (set once all frontends bound)
        self.redirect_port: int | None = None
        #: ``accept_proxy``: the sources whose connections start with a PROXY header
        self.proxy_sources = TrustedSources(config.trusted_proxies) if config.accept_proxy else None
        #: TCP mode, TLS passthrough: routes look at the ClientHello's server name
        self.tcp_needs_sni = config.mode == "tcp" and any(
            _uses_sni(route.match) for route in config.routes
        )
        self.listeners = listeners
        self.log = log
        self.counters = Counters()
        self.draining = False
        #: a reload replaced this frontend: its connections finish what they are doing (the
        #: next response says ``Connection: close``) while the new one accepts
        self.retiring = False
        #: the cancel scopes of connections idling between requests (or held by a tarpit),
        #: cancelled by a drain
        self.idle_scopes: set[trio.CancelScope] = set()
        #: ``rate_limit``: the frontend's, and each route's by the id of its Route (the compiled
        #: routes' decisions carry these same objects: rules.compile_rules reads config.routes)
        self.rate_limiter = Limiter(config.rate_limit) if config.rate_limit is not None else None
        self.route_limiters = {
            id(route): Limiter(route.rate_limit)
            for route in config.routes
            if route.rate_limit is not None
        }
        #: ``max_connections_per_src``: connections open per client address
        per_src = config.max_connections_per_src
        self.sources = SourceConnections(per_src) if per_src is not None else None
        #: ``max_connections`` of this frontend, on top of the balancer's
        cap = config.max_connections
        self._own_slots = ConnectionSlots(cap) if cap is not None else None
        self.connections_done = trio.Event()
        #: the client connections being served, by connection id (``show sessions``)
        self.sessions: dict[int, ClientSession | TCPSession] = {}
        self._slots = slots  # shared by every frontend of the balancer
        self._addresses = tuple(_listener_address(listener) for listener in listeners)
        #: status -> page, read once at start from ``error_pages``
        self.error_pages: dict[int, bytes] = {}
        for status, path in config.error_pages.items():
            with open(path, "rb") as file:
                self.error_pages[status] = file.read()
        first = self._addresses[0] if self._addresses else None
        #: stands in for a missing Host header in redirects
        self._local_host = first.host if first is not None and first.host else "localhost"
        self._next_id = 0

    def error_page(self, status: int) -> bytes:
        """The body of an error answer: the frontend's ``error_pages`` file, else trilb's own."""
        page = self.error_pages.get(status)
        return page if page is not None else error_body(status)

    def page_headers(self, status: int, length: int) -> list[tuple[bytes, bytes]]:
        headers = [(b"Content-Length", str(length).encode("ascii"))]
        if length:
            headers.insert(0, (b"Content-Type", b"text/html; charset=utf-8"))
            headers.append((b"Cache-Control", b"no-cache"))
        return headers

    def closing_error_response(self, status: int) -> bytes:
        """A whole error response that closes the connection (nothing else can be trusted)."""
        if status not in self.error_pages:
            return raw_error_response(status)
        body = self.error_pages[status]
        headers = [*self.page_headers(status, len(body)), (b"Connection", b"close")]
        return response_head(status, b"", headers) + body

    @property
    def active_connections(self) -> int:
        """Client connections open on the whole balancer (HAProxy's actconn)."""
        return self._slots.active

    @property
    def addresses(self) -> tuple[Address, ...]:
        """Where it listens (port 0 resolved); still known after the listeners closed."""
        return self._addresses

    async def run(self, connection_nursery: trio.Nursery) -> None:
        """Accept on every listener until they are closed; connections run in
        ``connection_nursery``."""
        async with trio.open_nursery() as nursery:
            for listener in self.listeners:
                nursery.start_soon(self._accept_loop, listener, connection_nursery)

    async def _accept_loop(self, listener: TCPListener, nursery: trio.Nursery) -> None:
        """Take a slot (the frontend's, then the balancer's), then a pending connection. A slot is
        held only while a connection is there to take: waiting for one, the loop holds none, so
        a frontend with several listeners (``*:80`` has two) and a small ``max_connections``
        never leaves a slot idle on one listener while clients wait on another."""
        port = _listener_address(listener).port  # the local port of every connection it accepts
        while True:
            await trio.lowlevel.checkpoint_if_cancelled()
            await self._acquire_slots()
            try:
                accepted = listener.accept_nowait()
            except trio.ClosedResourceError:
                self._release_slots()
                return
            except OSError as exc:
                self._release_slots()
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                self.log.error(f"frontend {self.name}: accept failed: {exc}; retrying")
                await trio.sleep(_ACCEPT_BACKOFF)
                continue
            if accepted is None:  # nothing pending: wait for a client without holding a slot
                self._release_slots()
                try:
                    await listener.wait_acceptable()
                except trio.ClosedResourceError:
                    return
                continue
            stream, peer = accepted
            nursery.start_soon(self._handle, stream, peer, port)

    async def _acquire_slots(self) -> None:
        if self._own_slots is not None:
            await self._own_slots.acquire()
        try:
            await self._slots.acquire()
        except BaseException:  # (cancelled while the balancer is full)
            if self._own_slots is not None:
                self._own_slots.release()
            raise

    def _release_slots(self) -> None:
        self._slots.release()
        if self._own_slots is not None:
            self._own_slots.release()

    async def _handle(self, stream: TCPStream, peer_name: object, local_port: int) -> None:
        """The error boundary of one connection: whatever happens, it ends here, logged once."""
        counters = self.counters
        counters.current_connections += 1
        counters.total_connections += 1
        self._slots.active += 1
        self._next_id += 1
        conn_id = self._next_id
        peer = _peer(peer_name)
        destination = None
        #: a unix socket client has no address, unless a PROXY header gives it one
        has_address = isinstance(peer_name, tuple)
        counted_source: str | None = None  # the address counted in ``self.sources``
        session: ClientSession | TCPSession
        try:
            if self.proxy_sources is not None and peer[0] in self.proxy_sources:
                header = await self._proxy_header(stream, peer)
                if header is None:
                    return
                if not header.local and header.source is not None:
                    peer, destination = header.source, header.destination
                    has_address = True
                    if destination is not None:
                        local_port = destination[1]
            if self.sources is not None and has_address:
                if not self._admit_source(stream, peer):
                    return
                counted_source = peer[0]
            client: trio.abc.Stream = stream
            subject = sni = alpn = None
            if self.tls is not None:
                handshake = await self._handshake(stream, self.tls, peer)
                if handshake is None:
                    return
                tls_stream, subject, sni = handshake
                alpn = tls_stream.selected_alpn_protocol()
                client = tls_stream
            tls = self.tls is not None
            if self.config.mode == "tcp":
                session = TCPSession(
                    client, self, peer, destination=destination, tls=tls, sni=sni, alpn=alpn
                )
            else:
                session = ClientSession(
                    client,
                    self,
                    peer,
                    local_port,
                    self._local_host,
                    tls=tls,
                    client_cert=subject,
                    sni=sni,
                    alpn=alpn,
                    destination=destination,
                )
            self.sessions[conn_id] = session
            await session.run()
        except Exception as exc:  # noqa: BLE001 - the error boundary of one connection
            self.log.error(f"frontend {self.name} connection #{conn_id}: internal error: {exc!r}")
            self.log.debug(traceback.format_exc())
            stream.close()
        finally:
            self.sessions.pop(conn_id, None)
            if counted_source is not None and self.sources is not None:
                self.sources.close(counted_source)
            counters.current_connections -= 1
            self._slots.active -= 1
            self._release_slots()
            if self.draining and counters.current_connections == 0:
                self.connections_done.set()

    def _admit_source(self, stream: TCPStream, peer: tuple[str, int]) -> bool:
        """``max_connections_per_src``: count the connection in, or close it (logged once until
        that address has no connection left) and say no."""
        assert self.sources is not None
        verdict = self.sources.open(peer[0])
        if verdict.allowed:
            return True
        stream.close()
        self.counters.denied_connections += 1
        if verdict.first_refusal:
            self.log.warning(
                f"{peer[0]}:{peer[1]} frontend {self.name}: {self.sources.limit} connections "
                "from this address already (max_connections_per_src); new ones are closed "
                "until some end"
            )
        return False

    async def _proxy_header(self, stream: TCPStream, peer: tuple[str, int]) -> ProxyHeader | None:
        """``accept_proxy``: the PROXY header, within ``timeout_handshake``; None (logged,
        closed) when none came."""
        timeout = self.config.timeouts.handshake
        try:
            with trio.move_on_after(timeout):
                return await read_proxy_header(stream)
            raise ProxyHeaderFailed(f"no PROXY header within {timeout:g}s")
        except ProxyHeaderFailed as failure:
            stream.close()
            self.counters.proxy_errors += 1
            self.log.warning(
                f"{peer[0]}:{peer[1]} frontend {self.name}: {failure}; connection dropped"
            )
            return None

    async def _handshake(
        self, stream: TCPStream, tls: ServerTLS, peer: tuple[str, int]
    ) -> tuple[trio.SSLStream[trio.abc.Stream], str | None, str | None] | None:
        """TLS for a new connection within ``timeout_handshake``: the stream, the verified client
        certificate's subject and the server name asked for; None (logged, closed) if not."""
        record = HandshakeRecord()
        timeout = self.config.timeouts.handshake
        try:
            with trio.move_on_after(timeout):
                client, subject = await server_handshake(stream, tls, record)
                return client, subject, record.server_name
            raise HandshakeFailed(f"no handshake within {timeout:g}s", record.server_name)
        except HandshakeFailed as failure:
            stream.close()
            self.counters.handshake_errors += 1
            self.log.warning(
                f"{peer[0]}:{peer[1]} frontend {self.name}: TLS handshake failed: "
                f"{failure.reason} (SNI {failure.server_name or '-'})"
            )
            return None

    def take_over(self, old: FrontendRuntime) -> None:
        """A reload: carry over the state of ``old``, this frontend in the running configuration.
        The counters are shared from now on (connections still open on the old configuration
        count here too), and connection ids go on from where they were.

        So are the limits' books, so that a reload is no way around a limit: the open
        connections per source and of ``max_connections`` (under the new limits: the
        connections still open on the old configuration count), and the request rates of a
        ``rate_limit`` the reload left as it was (the frontend's, and a route's that is the same
        route, same matchers, same limit). A changed ``rate_limit`` starts a fresh table."""
        self.counters = old.counters
        self._next_id = old._next_id
        if self.sources is not None and old.sources is not None:
            old.sources.limit = self.sources.limit
            self.sources = old.sources
        if self._own_slots is not None and old._own_slots is not None:
            old._own_slots.set_limit(self._own_slots.limit)
            self._own_slots = old._own_slots
        if (
            self.rate_limiter is not None
            and old.rate_limiter is not None
            and old.rate_limiter.config == self.rate_limiter.config
        ):
            self.rate_limiter = old.rate_limiter
        old_routes = [
            (route, old.route_limiters[id(route)])
            for route in old.config.routes
            if id(route) in old.route_limiters
        ]
        for route in self.config.routes:
            if id(route) in self.route_limiters:
                kept = next((limiter for r, limiter in old_routes if r == route), None)
                if kept is not None:
                    self.route_limiters[id(route)] = kept

    def start_drain(self) -> None:
        """Stop accepting and wake idle keep-alive connections so they close."""
        self.draining = True
        for listener in self.listeners:
            listener.close()
        for scope in list(self.idle_scopes):
            scope.cancel()
        if self.counters.current_connections == 0:
            self.connections_done.set()

    def statistics(self) -> FrontendStatistics:
        return FrontendStatistics(
            name=self.name,
            addresses=tuple(str(a) for a in self.addresses),
            traffic=self.counters.snapshot(),
        )


def _uses_sni(match: Match | None) -> bool:
    while match is not None:
        if match.sni:
            return True
        match = match.not_
    return False


def _peer(name: object) -> tuple[str, int]:
    if isinstance(name, tuple):
        return str(name[0]), int(name[1])
    return "unix", 0


def _listener_address(listener: TCPListener) -> Address:
    name = listener.sock.getsockname()
    if isinstance(name, tuple):
        return Address(host=name[0], port=name[1])
    return Address(path=str(name))


def open_listeners(config: FrontendConfig, *, reuse_port: bool = False) -> list[TCPListener]:
    """Bind every address of a frontend; on any failure close what was opened and say which."""
    listeners: list[TCPListener] = []
    try:
        for index in range(len(config.bind)):
            listeners.extend(open_listener(config, index, reuse_port=reuse_port))
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def open_listener(
    config: FrontendConfig, index: int, *, reuse_port: bool = False
) -> list[TCPListener]:
    """Bind the frontend's ``bind[index]`` (``*:80`` makes two listeners, IPv4 and IPv6);
    StartupError naming it when that fails. ``reuse_port``: see :func:`~trilb.net.bind_tcp`
    (TCP addresses only)."""
    address = config.bind[index]
    try:
        if address.path is not None:
            return [bind_unix(address.path, backlog=config.backlog)]
        return bind_tcp(address.host, address.port, backlog=config.backlog, reuse_port=reuse_port)
    except OSError as exc:
        raise StartupError(
            f"frontends.{config.name}.bind[{index}]: cannot listen on {address}: "
            f"{exc.strerror or exc}"
        ) from None
