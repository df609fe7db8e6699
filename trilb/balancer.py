"""The balancer: the Trio task tree that runs a :class:`~trilb.config.Config`.

::

    serve()                         the balancer's nursery
    ├── frontend.run()              one per frontend: an accept loop per listener
    ├── health checks, services     the admin socket (trilb.admin), ...
    └── connections nursery         one task per client connection (ClientSession.run)

Nothing is global: two balancers in one process share no state.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import attrs
import trio

from .admin import serve_admin
from .backend import BackendRuntime, ServerRuntime, resolve_backend
from .config import Address, Config
from .errors import ConfigError, ConfigProblem
from .frontend import ConnectionSlots, FrontendRuntime, open_listeners
from .health import ServerChecker, start_health_checks
from .logsink import LogSink
from .rules import compile_rules
from .stats import Statistics
from .stats_server import serve_stats
from .tls import ServerTLS, describe, load_server_tls

__all__ = ["Balancer", "ServerState", "SessionInfo", "open_balancer", "serve"]

#: default time in-flight requests get to finish after a drain starts
DEFAULT_GRACE = 30.0


class Balancer:
    """A running balancer, as handed back by ``await nursery.start(trilb.serve, config)``."""

    def __init__(
        self,
        config: Config,
        frontends: list[FrontendRuntime],
        backends: dict[str, BackendRuntime],
        log: LogSink,
    ) -> None:
        self.config = config
        self.log = log
        self._frontends = frontends
        self._backends = backends
        self._drain_started = trio.Event()
        self._grace = DEFAULT_GRACE
        self._stopped = trio.Event()
        #: the health checkers by (backend, server), once running
        self._checkers: dict[tuple[str, str], ServerChecker] = {}
        self._started = time.monotonic()

    @property
    def uptime(self) -> float:
        """Seconds since the balancer started."""
        return time.monotonic() - self._started

    @property
    def addresses(self) -> Mapping[str, tuple[Address, ...]]:
        """The addresses each frontend really listens on (port 0 resolved), by frontend name."""
        return {fe.name: fe.addresses for fe in self._frontends}

    @property
    def draining(self) -> bool:
        return self._drain_started.is_set()

    def statistics(self) -> Statistics:
        """An immutable snapshot of every frontend's, backend's and server's counters."""
        return Statistics(
            frontends=tuple(fe.statistics() for fe in self._frontends),
            backends=tuple(b.statistics() for b in self._backends.values()),
        )

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        """Change a server's weight at run time (0-256; 0 = no new traffic).
        KeyError for an unknown backend or server."""
        if not 0 <= weight <= 256:
            raise ValueError(f"weight must be 0-256, got {weight}")
        was = self._server(backend, server).weight
        self._backends[backend].set_weight(server, weight)
        if weight != was:
            self.log.info(
                f"server {backend}/{server} weight {was} -> {weight} (set by the operator)"
            )

    def set_server_state(self, backend: str, server: str, state: str) -> None:
        """Take a server out or put it back, as an operator: "ready" (normal), "drain" (no new
        requests; those in flight finish) or "maint" (none at all). Health checks still decide
        whether a "ready" server is UP."""
        if state not in ("ready", "drain", "maint"):
            raise ValueError(f'state must be "ready", "drain" or "maint", got {state!r}')
        target = self._backends[backend].server(server)
        if target.admin_state != state:
            target.admin_state = state
            self.log.info(f"server {backend}/{server} is now {target.state} (set by the operator)")

    def disable_health(self, backend: str, server: str) -> None:
        """Stop a server's active health checks (HAProxy's ``disable health``): it keeps its
        current UP or DOWN until :meth:`enable_health`. KeyError for an unknown backend or
        server, ValueError when its backend has no ``health_check``."""
        checker = self._checker(backend, server)
        if not checker.paused:
            checker.pause()
            self.log.info(
                f"server {backend}/{server}: health checks disabled by the operator "
                f"(stays {checker.server.state})"
            )

    def enable_health(self, backend: str, server: str) -> None:
        """Start a server's active health checks again after :meth:`disable_health`."""
        checker = self._checker(backend, server)
        if checker.paused:
            checker.resume()
            self.log.info(f"server {backend}/{server}: health checks enabled by the operator")

    def servers_state(self) -> tuple[ServerState, ...]:
        """Every server's state as the operator and the health checks set it."""
        result = []
        for backend in self._backends.values():
            for server in backend.servers:
                checker = self._checkers.get((backend.name, server.name))
                checks = "none" if checker is None else "disabled" if checker.paused else "enabled"
                result.append(
                    ServerState(
                        backend=backend.name,
                        server=server.name,
                        address=str(server.config.address),
                        state=server.state,
                        admin_state=server.admin_state,
                        up=server.up,
                        weight=server.weight,
                        configured_weight=server.config.weight,
                        backup=server.config.backup,
                        health_checks=checks,
                        check_status=server.check_status,
                        current_requests=server.counters.current_requests,
                    )
                )
        return tuple(result)

    def sessions(self) -> tuple[SessionInfo, ...]:
        """The client connections open now (TLS ones once their handshake is done)."""
        now = time.monotonic()
        result = []
        for fe in self._frontends:
            for conn_id, session in list(fe.sessions.items()):
                request = session.request
                line = backend = server = None
                if request is not None:  # (the access log's placeholders: not chosen yet)
                    line = request.request_line
                    backend = request.backend if request.backend != "-" else None
                    server = request.server if request.server != "<NOSRV>" else None
                result.append(
                    SessionInfo(
                        frontend=fe.name,
                        id=conn_id,
                        client=f"{session.client_ip}:{session.client_port}",
                        tls=session.tls,
                        age=max(0.0, now - session.accepted),
                        requests=session.requests,
                        request_line=line,
                        backend=backend,
                        server=server,
                    )
                )
        return tuple(result)

    def _server(self, backend: str, server: str) -> ServerRuntime:
        return self._backends[backend].server(server)

    def _checker(self, backend: str, server: str) -> ServerChecker:
        self._server(backend, server)
        checker = self._checkers.get((backend, server))
        if checker is None:
            raise ValueError(f"backend {backend} has no health checks")
        return checker

    async def drain(self, grace: float | None = None) -> None:
        """Stop gracefully: stop accepting, close idle keep-alive connections, let requests in
        flight finish for up to ``grace`` seconds (default 30), then close the rest.
        Returns once the balancer has stopped; calling it again just waits for that."""
        if not self._drain_started.is_set():
            self._grace = DEFAULT_GRACE if grace is None else grace
            self._drain_started.set()
        await self._stopped.wait()

    async def _run(self, task_status: trio.TaskStatus[Balancer]) -> None:
        try:
            async with trio.open_nursery() as nursery, trio.open_nursery() as connections:
                for fe in self._frontends:
                    nursery.start_soon(fe.run, connections)
                for checker in start_health_checks(nursery, self._backends.values(), self.log):
                    self._checkers[checker.backend.name, checker.server.name] = checker
                await self._start_services(nursery)
                self._log_start()
                task_status.started(self)
                await self._drain_started.wait()
                self.log.info(f"draining: waiting up to {self._grace:g}s for requests in flight")
                for fe in self._frontends:
                    fe.start_drain()
                with trio.move_on_after(self._grace) as scope:
                    for fe in self._frontends:
                        await fe.connections_done.wait()
                if scope.cancelled_caught:
                    self.log.warning("drain grace period over: closing the remaining connections")
                connections.cancel_scope.cancel()
                # The health checks run in `nursery` until cancelled: stop them with the rest.
                nursery.cancel_scope.cancel()
        finally:
            self._close_everything()
            self._stopped.set()
        self.log.info("stopped")

    async def _start_services(self, nursery: trio.Nursery) -> None:
        """The balancer's own services, in its nursery: they stop with it.

        Each service module adds one line here (the log writer, the stats server, the admin
        socket); they are started before ``task_status.started`` so that a port in use is a
        start-up error."""
        await nursery.start(self.log.run)  # the log writer: from here on, logging never blocks
        # (until each service exists, its configuration must not be silently ignored)
        #: where the stats server listens (port 0 resolved); () without ``[stats]``
        self.stats_addresses: tuple[Address, ...] = ()
        if self.config.stats is not None:
            self.stats_addresses = await nursery.start(
                serve_stats, self, self.config.stats, self.log
            )
        if self.config.admin is not None:
            await nursery.start(serve_admin, self, self.config.admin)

    def _close_everything(self) -> None:
        """Close listeners and idle server connections (idempotent; also before any run)."""
        for fe in self._frontends:
            for listener in fe.listeners:
                listener.close()
        for backend in self._backends.values():
            backend.close_idle()

    def _log_start(self) -> None:
        for fe in self._frontends:
            where = ", ".join(str(a) for a in fe.addresses)
            tls = " (TLS)" if fe.tls is not None else ""
            target = (
                f"backend {fe.backend.name}" if fe.backend else f"https port {fe.redirect_port}"
            )
            self.log.info(f"frontend {fe.name} listening on {where}{tls} -> {target}")
            if fe.tls is not None:
                self.log.info(f"frontend {fe.name} certificates: {describe(fe.tls.certificates)}")


@attrs.frozen(kw_only=True)
class ServerState:
    """One server, as :meth:`Balancer.servers_state` sees it."""

    backend: str
    server: str
    address: str
    #: UP, DOWN, DRAIN or MAINT: what the balancing goes by
    state: str
    #: the operator's say: "ready", "drain" or "maint" (:meth:`Balancer.set_server_state`)
    admin_state: str
    #: the health checks' say (True without checks)
    up: bool
    weight: int
    configured_weight: int
    backup: bool
    #: "enabled", "disabled" (:meth:`Balancer.disable_health`) or "none" (no ``health_check``)
    health_checks: str
    #: the last check's outcome ("" before any)
    check_status: str
    #: requests being relayed to it now
    current_requests: int


@attrs.frozen(kw_only=True)
class SessionInfo:
    """One client connection, as :meth:`Balancer.sessions` sees it."""

    frontend: str
    #: its number within its frontend (as in log messages: "connection #12")
    id: int
    #: "ip:port" ("unix:0" on a unix socket)
    client: str
    tls: bool
    #: seconds since it was accepted (since its TLS handshake ended, with TLS)
    age: float
    #: requests answered so far
    requests: int
    #: the request under way, if any: its request line, and its backend and server once chosen
    request_line: str | None = None
    backend: str | None = None
    server: str | None = None


async def serve(
    config: Config,
    *,
    log: LogSink | None = None,
    task_status: trio.TaskStatus[Balancer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a balancer for ``config`` until it is drained or cancelled.

    Use it as ``lb = await nursery.start(trilb.serve, config)``: that returns once every listener
    is bound (port 0 works; see ``lb.addresses``).

    Cancellation: cancelling the task stops at once, closing every connection.
    Resource handling: listeners, client and server connections are all closed when it returns.
    Error handling: raises :class:`~trilb.errors.StartupError` (e.g. a port in use) or
    :class:`~trilb.errors.ConfigError` (a server name that does not resolve) before starting;
    afterwards, errors of one connection end that connection only and are logged.
    """
    balancer = await _prepare(config, log)
    await balancer._run(task_status)


async def _prepare(config: Config, log: LogSink | None) -> Balancer:
    """Everything that can fail before the balancer runs: names resolved, certificates checked,
    ports bound. (Kept out of any nursery, so its errors reach the caller as themselves.)"""
    log = log if log is not None else LogSink.from_config(config.log)
    backends: dict[str, BackendRuntime] = {}
    for backend_config in config.backends:
        backends[backend_config.name] = await resolve_backend(backend_config)
    # Connections beyond the global cap wait in the kernel's listen backlog.
    slots = ConnectionSlots(config.global_.max_connections)
    # Certificates and rules are checked before any port opens: a bad one stops the start.
    server_tls = load_frontend_tls(config)
    rules = compile_rules(config)
    for name, backend_rules in rules.backends.items():
        backends[name].request_rules = backend_rules.request
        backends[name].response_rules = backend_rules.response
    frontends: list[FrontendRuntime] = []
    try:
        for fe_config in config.frontends:
            listeners = open_listeners(fe_config)
            backend = fe_config.default_backend
            runtime = FrontendRuntime(
                fe_config,
                backends[backend] if backend is not None else None,
                listeners,
                log,
                slots,
                server_tls.get(fe_config.name),
            )
            fe_rules = rules.frontends[fe_config.name]
            runtime.backends = backends
            runtime.routes = fe_rules.routes
            runtime.request_rules = fe_rules.request
            runtime.response_rules = fe_rules.response
            frontends.append(runtime)
    except BaseException:
        for fe in frontends:
            for listener in fe.listeners:
                listener.close()
        raise
    _set_redirect_ports(frontends)
    return Balancer(config, frontends, backends, log)


def _set_redirect_ports(frontends: list[FrontendRuntime]) -> None:
    """``redirect_https`` without a port sends clients to the only TLS frontend's real port."""
    tls_ports = [fe.addresses[0].port for fe in frontends if fe.tls is not None and fe.addresses]
    for fe in frontends:
        redirect = fe.config.redirect_https
        if redirect is not None:
            fe.redirect_port = redirect.port if redirect.port is not None else tls_ports[0]


def load_frontend_tls(config: Config) -> dict[str, ServerTLS]:
    """Every TLS frontend's certificates and contexts; ConfigError lists all the problems."""
    result: dict[str, ServerTLS] = {}
    problems: list[ConfigProblem] = []
    for frontend in config.frontends:
        if frontend.tls is None:
            continue
        try:
            result[frontend.name] = load_server_tls(frontend.tls, f"frontends.{frontend.name}.tls")
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return result


@asynccontextmanager
async def open_balancer(config: Config, *, log: LogSink | None = None) -> AsyncIterator[Balancer]:
    """``async with trilb.open_balancer(config) as lb:`` runs a balancer for the block's duration.

    Leaving the block stops it at once; ``await lb.drain()`` inside the block stops it gracefully.
    Start-up errors (:class:`~trilb.errors.ConfigError`, :class:`~trilb.errors.StartupError`) are
    raised by the ``async with`` itself.
    """
    balancer = await _prepare(config, log)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(balancer._run)
            yield balancer
            nursery.cancel_scope.cancel()
    finally:
        balancer._close_everything()
