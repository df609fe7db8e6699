"""The balancer: the Trio task tree that runs a :class:`~trilb.config.Config`.

::

    serve()                         the balancer's nursery
    ├── frontend.run()              one per frontend: an accept loop per listener
    └── connections nursery         one task per client connection (ClientSession.run)

Nothing is global: two balancers in one process share no state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import trio

from .backend import BackendRuntime, resolve_backend
from .config import Address, Config
from .errors import ConfigError, ConfigProblem, StartupError
from .frontend import ConnectionSlots, FrontendRuntime, open_listeners
from .health import start_health_checks
from .logsink import LogSink
from .rules import compile_rules
from .stats import Statistics
from .tls import ServerTLS, describe, load_server_tls

__all__ = ["Balancer", "open_balancer", "serve"]

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
        """Change a server's weight at run time (0-256; 0 = no new traffic)."""
        if not 0 <= weight <= 256:
            raise ValueError(f"weight must be 0-256, got {weight}")
        self._backends[backend].set_weight(server, weight)

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
                start_health_checks(nursery, self._backends.values(), self.log)
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
        # (until each service exists, its configuration must not be silently ignored)
        if self.config.stats is not None:
            raise StartupError("stats: the stats server is not available in this build yet")
        if self.config.admin is not None:
            raise StartupError("admin: the admin socket is not available in this build yet")

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
    log = log if log is not None else LogSink(config.log.target, config.log.format)
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
