"""TCP mode (L4): one client connection relayed byte for byte to one server.

Theory of operation. A :class:`TCPSession` owns one client stream of a ``mode = "tcp"`` frontend
(TLS already terminated when the frontend has ``tls``; the PROXY header already read when it has
``accept_proxy``). It

1. reads the TLS ClientHello when the frontend routes on ``sni`` without terminating TLS
   (passthrough): the bytes are kept and relayed untouched, only the server name is looked at;
2. chooses the backend (routes on ``sni`` and ``src``, else ``default_backend``) and a server by
   the backend's algorithm, waiting in the backend's queue when every server is at its
   ``max_connections``; a failed connect is retried (on another server when there is one), as in
   HTTP mode;
3. sends the server a PROXY header first when the server has ``send_proxy``;
4. relays both directions with :class:`~trilb.tunnel.Tunnel` (half-close passed on, idle
   timeouts ``timeout_tunnel`` if set, else ``timeout_client`` / ``timeout_server``) and logs one
   line in HAProxy's ``tcplog`` layout when the connection ends.

Resource handling: the session closes both connections, however it ends.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from .backend import BackendRuntime, NoServer, ServerRuntime
from .core.accesslog import RequestLog, millis
from .core.balance import RequestKey
from .core.clienthello import MAX_CLIENT_HELLO, NotClientHello, parse_client_hello
from .core.routing import RequestView
from .http_proxy import close_stream
from .pool import ServerConnection
from .session import ClientConnection
from .tunnel import Tunnel

if TYPE_CHECKING:
    from .frontend import FrontendRuntime

__all__ = ["TCPSession"]

#: bytes per read while waiting for a ClientHello (a whole one is usually one read)
HELLO_RECEIVE_SIZE = 16 * 1024


class TCPSession(ClientConnection):
    """One client connection of a TCP-mode frontend, from accept to close."""

    __slots__ = ("_killed", "_scope", "record")

    def __init__(
        self,
        stream: trio.abc.Stream,
        frontend: FrontendRuntime,
        peer: tuple[str, int],
        *,
        destination: tuple[str, int] | None = None,
        tls: bool = False,
        sni: str | None = None,
        alpn: str | None = None,
    ) -> None:
        super().__init__(
            stream, frontend, peer, tls=tls, sni=sni, alpn=alpn, destination=destination
        )
        self.record = RequestLog(
            client_ip=self.client_ip,
            client_port=self.client_port,
            accept_date=time.time(),
            frontend=frontend.name,
            tls=tls,
            mode="tcp",
        )
        self._scope = trio.CancelScope()
        self._killed = False

    @property
    def request(self) -> RequestLog:
        """(``show sessions``) the connection as a whole is the one request."""
        return self.record

    async def run(self) -> None:
        """Relay until both sides are done, a side breaks, it idles out, or it is cut."""
        fe = self.frontend
        record = self.record
        counters = fe.counters
        counters.total_requests += 1
        try:
            first = b""
            if fe.tcp_needs_sni and not self.tls:
                first = await self._read_client_hello()
            backend = self._choose_backend()
            if backend is None:
                record.termination = "PR"
                self.log.warning(
                    f"{self.client_ip}:{self.client_port} frontend {fe.name}: no route matched "
                    "and there is no default_backend: connection closed"
                )
                return
            await self._relay(backend, first)
        finally:
            await close_stream(self.stream)
            self.requests = 1
            record.t_total = millis(self.accepted, time.monotonic())
            record.feconn = counters.current_connections
            record.actconn = fe.active_connections
            self.log.access(record)

    async def _read_client_hello(self) -> bytes:
        """TLS passthrough: the client's first bytes, read until the ClientHello's server name
        is known (``timeout_handshake`` at most). What is not a ClientHello is routed without
        a server name (the default backend), as HAProxy does when its inspect delay is over."""
        data = bytearray()
        with trio.move_on_after(self.frontend.config.timeouts.handshake):
            while len(data) < MAX_CLIENT_HELLO:
                try:
                    chunk = await self.stream.receive_some(HELLO_RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not chunk:
                    break
                data += chunk
                try:
                    hello = parse_client_hello(data)
                except NotClientHello:
                    break
                if hello is not None:
                    self.sni = hello.server_name
                    break
        self.record.bytes_in += len(data)
        self.frontend.counters.bytes_in += len(data)
        return bytes(data)

    def _choose_backend(self) -> BackendRuntime | None:
        fe = self.frontend
        if fe.routes is None:
            return fe.backend
        view = RequestView(method=b"", target=b"", client_ip=self.client_ip, sni=self.sni)
        decision = fe.routes.select(view)
        if decision.route is not None:
            self.record.route = decision.route.name
        if decision.backend is None:
            return None
        return fe.backends[decision.backend]

    async def _relay(self, backend: BackendRuntime, first: bytes) -> None:
        record = self.record
        record.backend = backend.name
        backend.counters.total_requests += 1
        key = None
        if backend.hashes:  # (only "source" is allowed in TCP mode)
            key = RequestKey(client_ip=self.client_ip, path=b"", query=b"", headers=())
        tried: set[int] = set()
        failures = 0
        retries = backend.config.retries
        queued_at = time.monotonic()
        while True:
            server = await backend.wait_for_server(tried, key)
            if isinstance(server, NoServer):
                if server.termination != "SC":
                    record.t_queue = millis(queued_at, time.monotonic())
                record.termination = server.termination
                self.log.warning(
                    f"{self.client_ip}:{self.client_port} backend {backend.name}: "
                    f"{server.reason}: connection closed"
                )
                return
            record.t_queue = millis(queued_at, time.monotonic())
            record.server = server.name
            tried.add(server.index)
            backend.take_slot(server)
            try:
                upstream = await self._connect(backend, server)
                if isinstance(upstream, OSError):
                    failures += 1
                    if failures > retries:
                        # HAProxy's words: "sC" timeout connect struck, "SC" refused (or other)
                        record.termination = "sC" if isinstance(upstream, TimeoutError) else "SC"
                        return
                    record.retries += 1
                    continue
                try:
                    await self._tunnel(backend, server, upstream, first)
                finally:
                    upstream.close()
                return
            finally:
                record.srv_conn = server.counters.current_requests
                record.beconn = backend.counters.current_requests
                backend.release_slot(server)

    async def _connect(
        self, backend: BackendRuntime, server: ServerRuntime
    ) -> ServerConnection | TimeoutError | OSError:
        """A connection to ``server``, the PROXY header sent; the error (logged) when it
        failed."""
        started = time.monotonic()
        send_proxy = server.config.send_proxy
        header = self.proxy_header(send_proxy) if send_proxy is not None else b""
        try:
            upstream = await backend.open_connection(server, header)
        except OSError as exc:
            self.log.warning(backend.connect_failed(server, exc, self.record.retries + 1))
            return exc
        self.record.t_connect = millis(started, time.monotonic())
        return upstream

    async def _tunnel(
        self,
        backend: BackendRuntime,
        server: ServerRuntime,
        upstream: ServerConnection,
        first: bytes,
    ) -> None:
        fe = self.frontend
        record = self.record
        fe_counters = fe.counters
        counters = server.counters
        counters.total_requests += 1

        def from_client(size: int) -> None:
            fe_counters.bytes_in += size
            counters.bytes_out += size
            record.bytes_in += size

        def from_server(size: int) -> None:
            counters.bytes_in += size
            fe_counters.bytes_out += size
            record.bytes_out += size

        counters.bytes_out += len(first)  # the ClientHello already read (counted in as read)
        fe_timeouts = fe.config.timeouts
        be_timeouts = backend.config.timeouts
        tunnel = Tunnel(
            self.stream,
            upstream.stream,
            client_timeout=fe_timeouts.tunnel_or(fe_timeouts.client),
            server_timeout=be_timeouts.tunnel_or(be_timeouts.server),
            from_client=from_client,
            from_server=from_server,
        )
        server.exchanges.add(self)
        try:
            with self._scope:
                record.termination = await tunnel.run(to_server=first)
            if self._killed:
                record.termination = "KD"
        finally:
            server.exchanges.discard(self)
        backend.observe(server, record.termination[0] != "S", f"relay ended {record.termination}")

    def kill(self) -> None:
        """Cut the connection: its server was marked DOWN (``shutdown-sessions``)."""
        self._killed = True
        self._scope.cancel()
