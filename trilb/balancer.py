"""The balancer: the Trio task tree that runs a :class:`~trilb.config.Config`.

::

    serve()                         the balancer's nursery
    ├── Generation.run()            the frontends of the configuration (trilb.runtime):
    │   ├── frontend.run()          one per frontend: an accept loop per listener
    │   └── connections nursery     one task per client connection (ClientSession.run)
    ├── Generation.run() ...        after a reload, the previous configuration's, until its
    │                               connections have ended (at most ``timeout_drain``)
    ├── health checks               one task with a nursery of checks (a reload swaps it)
    └── services                    the admin socket (trilb.admin), ...

Nothing is global: two balancers in one process share no state.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import attrs
import trio

from .admin import AdminServer, serve_admin
from .backend import ServerRuntime
from .config import Address, Config, load_config
from .core.health import HealthState
from .core.reload import plan_listeners, unapplied_changes
from .errors import ConfigError, StartupError, TrilbError
from .frontend import ConnectionSlots
from .health import ServerChecker, start_health_checks
from .logsink import LogSink
from .net import TCPListener
from .runtime import (
    Generation,
    Runtime,
    build_runtime,
    carry_over,
    close_pools,
    load_frontend_tls,
)
from .stats import Statistics
from .stats_server import serve_stats
from .systemd import Notifier
from .tls import describe

__all__ = [
    "Balancer",
    "ServerState",
    "SessionInfo",
    "load_frontend_tls",
    "open_balancer",
    "serve",
]

#: default time in-flight requests get to finish after a drain starts
DEFAULT_GRACE = 30.0


class Balancer:
    """A running balancer, as handed back by ``await nursery.start(trilb.serve, config)``."""

    def __init__(
        self,
        runtime: Runtime,
        log: LogSink,
        slots: ConnectionSlots,
        *,
        config_path: str | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = runtime.config
        self.log = log
        #: the file the configuration was read from (``trilb serve``): what SIGHUP and the admin
        #: socket's ``reload`` read again; None when the embedding program built the Config
        self.config_path = config_path
        self._reuse_port = reuse_port  # (what a reload binds new addresses with, too)
        self._runtime = runtime
        self._frontends = runtime.frontends
        self._backends = runtime.backends
        self._slots = slots  # global.max_connections, shared by every configuration
        #: the current configuration's frontends at work, and the previous ones a reload retired
        #: (until their connections have ended)
        self._generation = Generation(runtime.frontends)
        self._retiring: list[Generation] = []
        self._reload_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None  # the balancer's, once running
        self._checks = trio.CancelScope()  # the running health checks' (a reload replaces them)
        self._drain_started = trio.Event()
        self._grace = DEFAULT_GRACE
        self._stopped = trio.Event()
        #: the health checkers by (backend, server), once running
        self._checkers: dict[tuple[str, str], ServerChecker] = {}
        self._started = time.monotonic()
        #: told of reloads (RELOADING=1, then READY=1): systemd's, under ``trilb serve``
        self.notifier = Notifier()

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
        frontends = [fe for g in (self._generation, *self._retiring) for fe in g.frontends]
        for fe in frontends:  # (a reload's previous frontends too, while they finish)
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
        flight finish for up to ``grace`` seconds (default ``global.timeout_drain``, 30 s;
        ``math.inf``: until every connection has ended), then close the rest.
        Returns once the balancer has stopped; calling it again just waits for that."""
        if not self._drain_started.is_set():
            self._grace = self.config.global_.timeout_drain if grace is None else grace
            self._drain_started.set()
        await self._stopped.wait()

    async def _run(self, task_status: trio.TaskStatus[Balancer]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._generation.run)
                await self._start_health_checks({}, set())
                await self._start_services(nursery)
                self._log_start()
                task_status.started(self)
                await self._drain_started.wait()
                if math.isinf(self._grace):
                    self.log.info("draining: waiting for every connection to finish")
                else:
                    self.log.info(
                        f"draining: waiting up to {self._grace:g}s for requests in flight"
                    )
                generations = [self._generation, *self._retiring]
                for generation in generations:
                    generation.stop_accepting()
                    for fe in generation.frontends:
                        fe.start_drain()
                with trio.move_on_after(self._grace) as scope:
                    for generation in generations:
                        await generation.done.wait()
                if scope.cancelled_caught:
                    self.log.warning("drain grace period over: closing the remaining connections")
                # The health checks and services run in `nursery` until cancelled: stop them
                # with the connections left.
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None  # (no reload from here on)
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
            await nursery.start(serve_admin, AdminServer(self), self.config.admin)

    def _close_everything(self) -> None:
        """Close listeners and idle server connections (idempotent; also before any run)."""
        for fe in self._frontends:
            for listener in fe.listeners:
                listener.close()
        for backend in self._backends.values():
            backend.close_idle()
        for generation in self._retiring:
            close_pools(generation.orphan_pools)

    async def _start_health_checks(
        self, states: Mapping[tuple[str, str], HealthState], paused: set[tuple[str, str]]
    ) -> None:
        """Start the current backends' health checks in a task of their own (with ``states``
        carried over by a reload, and ``paused`` ones paused), so that a reload can stop them."""
        assert self._nursery is not None
        self._checks = trio.CancelScope()
        self._checkers = await self._nursery.start(
            self._run_health_checks, self._checks, states, paused
        )

    async def _run_health_checks(
        self,
        scope: trio.CancelScope,
        states: Mapping[tuple[str, str], HealthState],
        paused: set[tuple[str, str]],
        *,
        task_status: trio.TaskStatus[dict[tuple[str, str], ServerChecker]],
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                checkers = {}
                for checker in start_health_checks(
                    nursery, self._backends.values(), self.log, states
                ):
                    key = (checker.backend.name, checker.server.name)
                    if key in paused:
                        checker.pause()
                    checkers[key] = checker
                task_status.started(checkers)

    # -- reload -------------------------------------------------------------------------------

    async def reload(self, config: Config) -> None:
        """Switch to ``config`` without stopping (SIGHUP and ``trilb ctl reload`` call this).

        Everything that can fail comes first, with nothing changed: backends resolved,
        certificates read again (renewed ones are picked up), rules compiled, new binds opened.
        Then, at once: listeners whose bind did not change keep their socket (nothing is refused
        meanwhile), new binds accept, removed ones close; new connections get the new
        configuration, while connections open on the previous one finish on it -- requests under
        way, tunnels, and a keep-alive connection's next request, answered with ``Connection:
        close`` -- for at most ``global.timeout_drain``, then they are closed. Servers that are
        still there (by backend and server name) keep their counters, health, operator state,
        idle connections and stickiness (see :mod:`trilb.core.reload`); ``[log]``, ``[stats]``,
        ``[admin]`` and the process settings of ``[global]`` need a restart (a warning says so).

        Cancellation: before the switch, nothing changes; the switch itself is not interrupted.
        Resource handling: on failure, every listener opened for the new configuration is
        closed; the previous configuration's idle server connections that the new one does not
        use are closed.
        Error handling: raises :class:`~trilb.errors.ConfigError` (a name that does not resolve,
        a certificate that can't be read...) or :class:`~trilb.errors.StartupError` (a port in
        use; the balancer is draining); the errors are logged, and the balancer goes on with
        its configuration unchanged. Reloads run one at a time.
        """
        self.notifier.reloading()
        try:
            await self._reload_logged(config)
        finally:
            self.notifier.ready()

    async def _reload_logged(self, config: Config) -> None:
        async with self._reload_lock:
            try:
                await self._reload(config)
            except TrilbError as exc:
                self._log_reload_failure(exc)
                raise

    async def reload_config_file(self) -> None:
        """Read :attr:`config_path` again and :meth:`reload` it (SIGHUP, ``trilb ctl reload``).
        Raises as :meth:`reload` does (an invalid file is a ConfigError listing every problem;
        logged), and StartupError when the balancer was not started from a file."""
        if self.config_path is None:
            raise StartupError(
                "this balancer was not started from a config file: the program that runs it "
                "reloads it with lb.reload(config)"
            )
        self.notifier.reloading()
        try:
            try:
                config = load_config(self.config_path)
            except ConfigError as exc:
                self._log_reload_failure(exc)
                raise
            await self._reload_logged(config)
        finally:
            self.notifier.ready()

    async def _reload(self, config: Config) -> None:
        if self.draining or self._nursery is None:
            raise StartupError("cannot reload: the balancer is not running or is draining")
        running = self._runtime
        plan = plan_listeners(running.config.frontends, config.frontends)
        kept = {new: running.listeners[old] for new, old in plan.keep.items()}
        new = await build_runtime(config, self.log, self._slots, kept, reuse_port=self._reuse_port)
        if self._drain_started.is_set():  # (a drain started while names were resolved)
            new.close_listeners(plan.open)
            raise StartupError("cannot reload: the balancer is draining")
        opened = [(ref[0], new.where(ref)) for ref in plan.open]
        closed = [(ref[0], running.where(ref)) for ref in plan.close]
        # The switch: no checkpoint from here until the new accept loops are started.
        carried = carry_over(running, new, self._checkers)
        previous, old_checks = self._generation, self._checks
        self._runtime, self.config = new, config
        self._frontends, self._backends = new.frontends, new.backends
        self._slots.set_limit(config.global_.max_connections)
        self._generation = Generation(new.frontends)
        previous.retire()
        running.close_listeners(plan.close)
        _apply_backlogs(running.config, config, plan.keep, new.listeners)
        old_checks.cancel()
        close_pools(carried.orphan_pools)  # (and again once the previous generation is done)
        previous.orphan_pools = carried.orphan_pools
        self._retiring.append(previous)
        with trio.CancelScope(shield=True):  # half a switch would be worse than none
            await self._nursery.start(self._generation.run)
            await self._start_health_checks(carried.health, carried.paused)
        self._nursery.start_soon(self._retire, previous, config.global_.timeout_drain)
        for name, where in opened:
            self.log.info(f"reload: frontend {name} now also listening on {where}")
        for name, where in closed:
            self.log.info(f"reload: frontend {name} no longer listening on {where}")
        for section in unapplied_changes(running.config, config):
            self.log.warning(f"reload: {section} changed: that needs a restart (not applied)")
        self.log.info(
            f"reloaded: {len(config.frontends)} frontends, {len(config.backends)} backends"
        )

    async def _retire(self, generation: Generation, bound: float) -> None:
        """Let a previous configuration's connections finish, for at most ``bound`` seconds."""
        with trio.move_on_after(bound):
            await generation.done.wait()
        if not generation.done.is_set():
            self.log.warning(
                f"reload: timeout_drain ({bound:g}s) is over: closing the "
                f"{generation.open_connections} connection(s) still open on the previous "
                "configuration"
            )
            generation.cut()
            await generation.done.wait()
        # Its orphan pools may have been the pools of older generations' servers too: they
        # close once no older generation is left to put a connection back into them.
        index = self._retiring.index(generation)
        if index > 0:
            self._retiring[index - 1].orphan_pools.extend(generation.orphan_pools)
        else:
            close_pools(generation.orphan_pools)
        del self._retiring[index]

    def _log_reload_failure(self, exc: TrilbError) -> None:
        for line in reload_failure_lines(exc):
            self.log.error(line)

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


def reload_failure_lines(exc: TrilbError) -> list[str]:
    """How a failed reload is logged: what failed, then a line per problem of an invalid file."""
    if not isinstance(exc, ConfigError):
        return [f"reload failed: {exc}; the running configuration is unchanged"]
    count = len(exc.problems)
    return [
        f"reload failed ({count} error{'s' if count != 1 else ''}); the running configuration "
        "is unchanged:",
        *(f"reload: {problem}" for problem in exc.problems),
    ]


def reload_failure_answer(exc: TrilbError) -> str:
    """How a failed reload is answered (``trilb ctl reload``): one line."""
    if not isinstance(exc, ConfigError):
        return f"Reload failed: {exc}"
    count = len(exc.problems)
    problems = "; ".join(str(p) for p in exc.problems)
    return (
        f"Reload failed ({count} error{'s' if count != 1 else ''}; still running the previous "
        f"configuration): {problems}"
    )


def _apply_backlogs(
    old: Config,
    new: Config,
    keep: Mapping[tuple[str, int], tuple[str, int]],
    listeners: Mapping[tuple[str, int], list[TCPListener]],
) -> None:
    """A kept listener whose frontend's ``backlog`` changed takes the new one: Linux lets
    ``listen()`` be called again on a listening socket to change it, queued connections kept."""
    for new_ref, old_ref in keep.items():
        backlog = new.frontend(new_ref[0]).backlog
        if backlog != old.frontend(old_ref[0]).backlog:
            for listener in listeners[new_ref]:
                listener.sock.listen(backlog)


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
    config_path: str | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[Balancer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a balancer for ``config`` until it is drained or cancelled.

    Use it as ``lb = await nursery.start(trilb.serve, config)``: that returns once every listener
    is bound (port 0 works; see ``lb.addresses``). ``config_path``: the file ``config`` was read
    from, read again by :meth:`Balancer.reload_config_file` (SIGHUP, ``trilb ctl reload``).
    ``reuse_port``: bind TCP addresses with SO_REUSEPORT, so that several processes can serve the
    same ports, the kernel spreading connections over them (``trilb serve`` does this for its
    workers when ``global.workers`` is more than 1; a balancer started here is one process
    whatever ``global.workers`` says).

    Cancellation: cancelling the task stops at once, closing every connection.
    Resource handling: listeners, client and server connections are all closed when it returns.
    Error handling: raises :class:`~trilb.errors.StartupError` (e.g. a port in use) or
    :class:`~trilb.errors.ConfigError` (a server name that does not resolve) before starting;
    afterwards, errors of one connection end that connection only and are logged.
    """
    balancer = await _prepare(config, log, config_path, reuse_port=reuse_port)
    await balancer._run(task_status)


async def _prepare(
    config: Config, log: LogSink | None, config_path: str | None, *, reuse_port: bool = False
) -> Balancer:
    """Everything that can fail before the balancer runs: names resolved, certificates checked,
    ports bound. (Kept out of any nursery, so its errors reach the caller as themselves.)"""
    log = log if log is not None else LogSink.from_config(config.log)
    # Connections beyond the global cap wait in the kernel's listen backlog.
    slots = ConnectionSlots(config.global_.max_connections)
    runtime = await build_runtime(config, log, slots, reuse_port=reuse_port)
    return Balancer(runtime, log, slots, config_path=config_path, reuse_port=reuse_port)


@asynccontextmanager
async def open_balancer(
    config: Config, *, log: LogSink | None = None, config_path: str | None = None
) -> AsyncIterator[Balancer]:
    """``async with trilb.open_balancer(config) as lb:`` runs a balancer for the block's duration.

    Leaving the block stops it at once; ``await lb.drain()`` inside the block stops it gracefully.
    Start-up errors (:class:`~trilb.errors.ConfigError`, :class:`~trilb.errors.StartupError`) are
    raised by the ``async with`` itself.
    """
    balancer = await _prepare(config, log, config_path)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(balancer._run)
            yield balancer
            nursery.cancel_scope.cancel()
    finally:
        balancer._close_everything()
