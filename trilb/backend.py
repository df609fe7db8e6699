"""A backend at run time: its servers, their pools and counters, and the balancing algorithm."""

from __future__ import annotations

import collections
import socket
import ssl
import time
from collections.abc import Callable, Container, Mapping, Sequence
from typing import NamedTuple, Protocol, overload

import attrs
import trio

from .config import BackendConfig, ServerConfig, UpstreamTLS
from .core.balance import Algorithm, RequestKey, make_algorithm, slow_start_weight
from .core.rewrite import CompiledHeaderRule
from .core.sticky import StickTable, default_cookie_value
from .errors import ConfigError
from .net import connect
from .pool import IdlePool, ServerConnection
from .stats import BackendStatistics, Counters, Histogram, ServerStatistics, StateHistory

__all__ = ["BackendRuntime", "NoServer", "ServerRuntime", "resolve_backend"]


class ServerRuntime:
    """One server: where it is, how to connect to it, its idle pool and counters."""

    __slots__ = (
        "_admin_state",
        "_up",
        "check_status",
        "config",
        "consecutive_errors",
        "cookie_id",
        "counters",
        "exchanges",
        "family",
        "history",
        "index",
        "mark_down",
        "name",
        "pool",
        "response_time",
        "sockaddr",
        "tls_context",
        "tls_name",
        "weight",
    )

    def __init__(
        self,
        config: ServerConfig,
        index: int,
        family: int,
        sockaddr: object,
        pool: IdlePool,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        #: TLS to the server (re-encryption), and the name it is asked for and checked against
        self.tls_context = tls_context
        tls = config.tls
        self.tls_name = (tls.sni if tls is not None else None) or config.address.host
        self.name = config.name
        self.index = index
        self.weight = config.weight
        self.family = family
        self.sockaddr = sockaddr
        self.pool = pool
        self.counters = Counters()
        #: seconds from sending a request to the end of its response (see Exchange)
        self.response_time = Histogram()
        #: the operator's say (see the admin_state property)
        self._admin_state = "ready"
        #: this server's id in stickiness cookies
        self.cookie_id = b""
        #: the health checks' say (see the up property)
        self._up = True
        #: when the state last changed, downtime (for the stats)
        self.history = StateHistory(time.monotonic())
        #: the last check's outcome, for logs and statistics ("" before any check)
        self.check_status = ""
        #: passive checks: errors of real traffic in a row
        self.consecutive_errors = 0
        #: set by the health checker: take the server DOWN now (passive checks), with a reason
        self.mark_down: Callable[[str], None] | None = None
        #: requests being relayed to this server, for ``on_marked_down = "shutdown-sessions"``
        self.exchanges: set[Killable] = set()

    @property
    def up(self) -> bool:
        """The health checks' say (always True without checks)."""
        return self._up

    @up.setter
    def up(self, value: bool) -> None:
        before = self.state
        self._up = value
        self._state_set(before)

    @property
    def admin_state(self) -> str:
        """The operator's say: "ready", "drain" (only sessions already there) or "maint" (none)."""
        return self._admin_state

    @admin_state.setter
    def admin_state(self, value: str) -> None:
        before = self.state
        self._admin_state = value
        self._state_set(before)

    def _state_set(self, before: str) -> None:
        state = self.state
        if state != before:
            self.history.change(state, time.monotonic())

    @property
    def usable(self) -> bool:
        """May get new traffic."""
        return self._up and self._admin_state == "ready"

    @property
    def full(self) -> bool:
        """At its ``max_connections``: new requests wait in the backend's queue."""
        limit = self.config.max_connections
        return limit is not None and self.counters.current_requests >= limit

    @property
    def state(self) -> str:
        """HAProxy's words: UP, DOWN, DRAIN or MAINT."""
        if self._admin_state == "maint":
            return "MAINT"
        if not self._up:
            return "DOWN"
        return "DRAIN" if self._admin_state == "drain" else "UP"

    def take_over(self, old: ServerRuntime, *, pool: bool, health: bool) -> None:
        """A reload: carry over the state of ``old``, this server in the running configuration.
        Counters, response times, state history and the requests being relayed are shared from
        now on, so requests still in flight on the old configuration count here too; the
        operator's state carries over, the health verdict with ``health`` (checks before and
        after), the idle connections with ``pool`` (connecting to it did not change)."""
        before = old.state
        self.counters = old.counters
        self.response_time = old.response_time
        self.history = old.history
        self.exchanges = old.exchanges
        self.consecutive_errors = old.consecutive_errors
        self._admin_state = old._admin_state
        if health:
            self._up = old._up
            self.check_status = old.check_status
        if pool:
            self.pool = old.pool
        self._state_set(before)

    async def connect(self, proxy_header: bytes = b"") -> ServerConnection:
        """A new connection (the caller bounds the wait, handshake included); OSError when it
        can't be made, a failed TLS handshake (an untrusted certificate) included.
        ``proxy_header`` (``send_proxy``) goes first, before any TLS."""
        transport = await connect(self.family, self.sockaddr)
        if proxy_header:
            try:
                await transport.send_all(proxy_header)
            except BaseException as exc:
                transport.close()
                if isinstance(exc, trio.BrokenResourceError):
                    raise OSError(f"sending the PROXY header failed: {exc}") from None
                raise
        if self.tls_context is None:
            return ServerConnection(transport)
        stream = trio.SSLStream(transport, self.tls_context, server_hostname=self.tls_name)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            transport.close()
            reason = getattr(exc.__cause__, "verify_message", None) or exc.__cause__ or exc
            raise OSError(f"TLS handshake failed: {reason}") from None
        except BaseException:
            transport.close()
            raise
        return ServerConnection(transport, stream)

    def statistics(self) -> ServerStatistics:
        now = time.monotonic()
        return ServerStatistics(
            name=self.name,
            address=str(self.config.address),
            weight=self.weight,
            traffic=self.counters.snapshot(),
            idle_connections=len(self.pool),
            state=self.state,
            backup=self.config.backup,
            check_status=self.check_status,
            last_change=max(0.0, now - self.history.last_change),
            downtime=self.history.downtime(now),
            changes=self.history.changes,
            response_time=self.response_time.snapshot(),
        )


class Killable(Protocol):
    def kill(self) -> None:
        """Cut the request short: its server was marked DOWN."""


class NoServer(NamedTuple):
    """Why no server could be had: HAProxy's termination code and the words for the log."""

    termination: str
    reason: str


class RequestQueue:
    """Requests waiting for a server slot, first come first served, bounded.

    A waiter is woken when a slot frees; it then picks a server like any request. New requests
    do not overtake: while anyone waits, they queue too (see Exchange.run).
    """

    __slots__ = ("_waiters", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiters: collections.deque[trio.Event] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait(self) -> bool:
        """Wait for this request's turn (the caller bounds the wait); False at once when the
        queue is full."""
        if len(self._waiters) >= self.limit:
            return False
        event = trio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        finally:
            if not event.is_set():
                self._waiters.remove(event)  # cancelled (timed out): leave the line
        return True

    def wake_next(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()


class BackendRuntime:
    """The servers of one backend, the algorithm that chooses among them, and the queue of
    requests waiting for a server with room."""

    __slots__ = (
        "_ramps",
        "_slow",
        "_was_usable",
        "algorithm",
        "config",
        "cookie",
        "cookie_ids",
        "counters",
        "has_backups",
        "hashes",
        "limited",
        "name",
        "queue",
        "request_rules",
        "response_rules",
        "response_time",
        "servers",
        "stick_table",
    )

    def __init__(self, config: BackendConfig, servers: list[ServerRuntime]) -> None:
        self.config = config
        self.name = config.name
        self.servers = servers
        self.algorithm: Algorithm = make_algorithm(
            config.balance,
            [s.weight for s in servers],
            loads=_Loads(servers),
            limits=[s.config.max_connections for s in servers],
            hash_type=config.hash_type,
            uri_whole=config.uri_whole,
        )
        #: whether picks need the request's key (the hashing algorithms)
        self.hashes = config.balance in ("source", "uri") or ":" in config.balance
        self.counters = Counters()
        #: the servers' response times, all together
        self.response_time = Histogram()
        self.queue = RequestQueue(config.max_queue)
        self.cookie = config.cookie
        #: header rules, compiled when the balancer starts (see trilb.rules)
        self.request_rules: tuple[CompiledHeaderRule, ...] = ()
        self.response_rules: tuple[CompiledHeaderRule, ...] = ()
        #: slow start: servers that ramp up after coming back, their state last seen, ramps
        self._slow = [s for s in servers if s.config.slow_start]
        self._was_usable = [s.usable for s in servers]
        self._ramps: dict[int, float] = {}
        self.has_backups = any(s.config.backup for s in servers)
        #: some server has max_connections: picks must skip full servers
        self.limited = any(s.config.max_connections is not None for s in servers)
        for server in servers:
            value = server.config.cookie_value or default_cookie_value(self.name, server.name)
            server.cookie_id = value.encode("ascii")
        self.cookie_ids = {server.cookie_id: server.index for server in servers}
        table = config.stick_table
        self.stick_table = StickTable(table.size, table.expire) if config.stick else None

    def sticky_server(self, index: int) -> ServerRuntime | None:
        """The server a stickiness cookie names, if it may take the request: UP, and ready or
        draining (a draining server still serves the sessions it has), with room."""
        server = self.servers[index]
        if server.up and server.admin_state != "maint" and not server.full:
            return server
        return None

    def pick(self, tried: Container[int], key: RequestKey | None = None) -> ServerRuntime | None:
        """The next server with room, preferring one not tried yet for this request
        (redispatch). Backup servers only when no regular server is usable: all of them with
        ``all_backups``, else the first. None when nothing is usable or everything is full."""
        servers = self.servers
        if self._slow:
            self._slow_start(time.monotonic())
        if not self.has_backups and not tried:  # the common case, kept cheap
            if self.limited:
                index = self.algorithm.pick(lambda i: _room(servers[i]), key)
            else:
                index = self.algorithm.pick(lambda i: servers[i].usable, key)
            return None if index is None else servers[index]
        if not self.has_backups:
            candidates = [True] * len(servers)
        elif any(s.usable and not s.config.backup for s in servers):
            candidates = [not s.config.backup for s in servers]
        elif self.config.all_backups:
            candidates = [s.config.backup for s in servers]
        else:
            first = next((s.index for s in servers if s.config.backup and s.usable), None)
            candidates = [s.index == first for s in servers]

        def fresh(i: int) -> bool:
            server = servers[i]
            return candidates[i] and server.usable and not server.full and i not in tried

        index = self.algorithm.pick(fresh, key)
        if index is None and tried:
            index = self.algorithm.pick(
                lambda i: fresh(i) or (candidates[i] and i in tried and _room(servers[i])), key
            )
        return None if index is None else servers[index]

    def _slow_start(self, now: float) -> None:
        """Ramp the weight of servers that became usable again (checked at each pick: only
        backends with ``slow_start`` servers pay for it)."""
        was = self._was_usable
        for server in self._slow:
            usable = server.usable
            if usable and not was[server.index]:
                self._ramps[server.index] = now
            was[server.index] = usable
        for index, started in list(self._ramps.items()):
            server = self.servers[index]
            duration = server.config.slow_start
            assert duration is not None
            weight = slow_start_weight(server.weight, now - started, duration)
            if weight >= server.weight:
                del self._ramps[index]
            self.algorithm.set_weight(index, weight)

    def effective_weight(self, server: ServerRuntime) -> int:
        """The weight the algorithm uses now (lower while slow-starting)."""
        started = self._ramps.get(server.index)
        if started is None or server.config.slow_start is None:
            return server.weight
        return slow_start_weight(
            server.weight, time.monotonic() - started, server.config.slow_start
        )

    def observe(self, server: ServerRuntime, ok: bool, what: str) -> None:
        """Passive checks (``observe``): an outcome of real traffic. ``error_limit`` errors in a
        row take the server DOWN (its active checks bring it back)."""
        if self.config.observe is None:
            return
        if ok:
            server.consecutive_errors = 0
            return
        server.consecutive_errors += 1
        limit = self.config.error_limit
        if server.consecutive_errors < limit or not server.up or server.mark_down is None:
            return
        server.consecutive_errors = 0
        server.mark_down(f"{limit} consecutive errors of real traffic, the last: {what}")
        if self.config.on_marked_down == "shutdown-sessions":
            for exchange in list(server.exchanges):
                exchange.kill()

    async def wait_for_server(
        self, tried: Container[int], key: RequestKey | None, sticky_index: int | None = None
    ) -> ServerRuntime | NoServer:
        """The server for the next attempt: the sticky one if it may take it, else the
        algorithm's pick; when every usable server is full, wait in the queue (first come, first
        served: while anyone waits, newcomers queue too) for up to ``timeout_queue``."""
        while True:
            server = None
            if sticky_index is not None and not tried:
                server = self.sticky_server(sticky_index)
            if server is None and not self.queue.waiting:
                server = self.pick(tried, key)
            if server is not None:
                return server
            if not self.waits_for_a_slot():
                return NoServer("SC", "no server available")
            admitted = True
            with trio.move_on_after(self.config.timeouts.queue) as waited:
                admitted = await self.queue.wait()
            if not admitted:
                return NoServer("PQ", "no server slot (queue full)")
            if waited.cancelled_caught:
                return NoServer("sQ", "no server slot (queue timeout)")
            server = self.pick(tried, key)
            if server is not None:
                return server
            self.queue.wake_next()  # let the next one try its luck

    async def open_connection(
        self, server: ServerRuntime, proxy_header: bytes = b""
    ) -> ServerConnection:
        """A new connection to ``server`` within ``timeout_connect`` (``proxy_header`` sent
        first): TimeoutError when the time ran out, OSError when it failed."""
        timeout = self.config.timeouts.connect
        with trio.move_on_after(timeout):
            conn = await server.connect(proxy_header)
            server.counters.total_connections += 1
            return conn
        raise TimeoutError(f"no connection within {timeout:g}s")

    def connect_failed(self, server: ServerRuntime, exc: OSError, attempt: int) -> str:
        """Count a failed connect (passive checks too); the log line that says so."""
        error = str(exc) or type(exc).__name__
        server.counters.connect_errors += 1
        self.observe(server, False, f"connect failed: {error}")
        return (
            f"backend {self.name}/{server.name}: connect failed "
            f"(attempt {attempt} of {self.config.retries + 1}): {error}"
        )

    def waits_for_a_slot(self) -> bool:
        """Some server could take the request but is full: wait in the queue (not 503)."""
        return any(s.usable and s.full for s in self.servers)

    def take_slot(self, server: ServerRuntime) -> None:
        counters = server.counters
        counters.current_requests += 1
        if counters.current_requests > counters.peak_requests:
            counters.peak_requests = counters.current_requests
        counters = self.counters
        counters.current_requests += 1
        if counters.current_requests > counters.peak_requests:
            counters.peak_requests = counters.current_requests

    def release_slot(self, server: ServerRuntime) -> None:
        server.counters.current_requests -= 1
        self.counters.current_requests -= 1
        if server.config.max_connections is not None:
            self.queue.wake_next()

    def take_over(
        self, old: BackendRuntime, positions: Mapping[int, int], *, stick_table: bool
    ) -> None:
        """A reload: carry over the backend-wide state of ``old``, this backend in the running
        configuration (its servers carry theirs over with :meth:`ServerRuntime.take_over`):
        counters, response times and the queue are shared from now on; with ``stick_table``,
        the stick table's entries follow their servers (``positions``: old index -> new)."""
        self.counters = old.counters
        self.response_time = old.response_time
        old.queue.limit = self.queue.limit
        self.queue = old.queue
        if stick_table and old.stick_table is not None and self.stick_table is not None:
            table = self.stick_table
            self.stick_table = old.stick_table.remapped(positions, table.size, table.expire)

    def server(self, name: str) -> ServerRuntime:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def set_weight(self, server_name: str, weight: int) -> None:
        for server in self.servers:
            if server.name == server_name:
                server.weight = weight
                self.algorithm.set_weight(server.index, weight)
                return
        raise KeyError(server_name)

    def close_idle(self) -> None:
        for server in self.servers:
            for conn in server.pool.drain():
                conn.close()

    def statistics(self) -> BackendStatistics:
        servers = tuple(s.statistics() for s in self.servers)
        # Bytes and connections are counted per server only: the backend's are their sums.
        traffic = attrs.evolve(
            self.counters.snapshot(),
            bytes_in=sum(s.traffic.bytes_in for s in servers),
            bytes_out=sum(s.traffic.bytes_out for s in servers),
            total_connections=sum(s.traffic.total_connections for s in servers),
            connect_errors=sum(s.traffic.connect_errors for s in servers),
        )
        return BackendStatistics(
            name=self.name,
            traffic=traffic,
            servers=servers,
            queued=self.queue.waiting,
            response_time=self.response_time.snapshot(),
        )


def upstream_tls_context(tls: UpstreamTLS, key_path: str) -> ssl.SSLContext:
    """A client context for re-encryption: verification on unless turned off, against ``ca`` or
    the system's trust store. ConfigError (with the key path) when the CA can't be loaded."""
    try:
        context = ssl.create_default_context(cafile=tls.ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError.single(f"{key_path}.ca", f"cannot load it ({exc})") from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


async def resolve_backend(config: BackendConfig) -> BackendRuntime:
    """Resolve every server's address once, at start (as HAProxy does without resolvers), and
    build the TLS contexts of re-encrypting servers."""
    servers = []
    for index, server in enumerate(config.servers):
        address = server.address
        pool = IdlePool(config.pool_max_idle, config.timeouts.pool_idle)
        key_path = f"backends.{config.name}.servers[{index}]"
        context = upstream_tls_context(server.tls, f"{key_path}.tls") if server.tls else None
        if address.path is not None:
            servers.append(
                ServerRuntime(server, index, socket.AF_UNIX, address.path, pool, context)
            )
            continue
        assert address.host is not None
        try:
            infos = await trio.socket.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise ConfigError.single(
                f"backends.{config.name}.servers[{index}].address",
                f"cannot resolve {address.host!r}: {exc}",
            ) from None
        family, _, _, _, sockaddr = infos[0]
        servers.append(ServerRuntime(server, index, family, sockaddr, pool, context))
    return BackendRuntime(config, servers)


def _room(server: ServerRuntime) -> bool:
    return server.usable and not server.full


class _Loads(Sequence[int]):
    """The live in-flight request counts, by server index, for the load-aware algorithms."""

    __slots__ = ("_servers",)

    def __init__(self, servers: list[ServerRuntime]) -> None:
        self._servers = servers

    def __len__(self) -> int:
        return len(self._servers)

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...
    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        if isinstance(index, slice):
            return [s.counters.current_requests for s in self._servers[index]]
        return self._servers[index].counters.current_requests
