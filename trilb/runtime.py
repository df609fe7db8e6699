"""A configuration made runnable, and the frontends of one configuration at work.

::

    Balancer._run()                 the balancer's nursery
    ├── Generation.run()            the current configuration's frontends; after a reload also
    │   ├── accept loops            the previous ones, until their connections have ended
    │   └── connections nursery     one task per client connection
    ├── health checks               one task and its nursery per configuration (a reload swaps it)
    └── services                    log writer, stats server, admin socket

:func:`build_runtime` does everything that can fail before a configuration runs -- names
resolved, certificates read, rules compiled, ports bound -- so that a start or a reload either
fails with nothing changed or has everything it needs. :func:`carry_over` then hands the running
configuration's state to the new one, following the decisions of :mod:`trilb.core.reload`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
import trio

from .backend import BackendRuntime, resolve_backend
from .config import Address, Config
from .core.health import HealthState
from .core.reload import BindRef, carried_health, carried_weight, plan_backends
from .errors import ConfigError, ConfigProblem
from .frontend import ConnectionSlots, FrontendRuntime, open_listener
from .health import ServerChecker
from .logsink import LogSink
from .net import TCPListener
from .pool import IdlePool
from .rules import compile_rules
from .tls import ServerTLS, load_server_tls

__all__ = [
    "Carried",
    "Generation",
    "Runtime",
    "build_runtime",
    "carry_over",
    "close_pools",
    "load_frontend_tls",
]


@attrs.define(kw_only=True, eq=False)
class Runtime:
    """A configuration ready to run: its frontends (listeners bound) and backends (resolved)."""

    config: Config
    frontends: list[FrontendRuntime]
    backends: dict[str, BackendRuntime]
    #: every bind's listeners, by (frontend name, index in its ``bind`` list)
    listeners: dict[BindRef, list[TCPListener]]

    def close_listeners(self, binds: Iterable[BindRef]) -> None:
        for ref in binds:
            for listener in self.listeners[ref]:
                listener.close()

    def where(self, ref: BindRef) -> str:
        """Where a bind's listeners listen (port 0 resolved), for a log line."""
        result = []
        for listener in self.listeners[ref]:
            name = listener.sock.getsockname()
            tcp = isinstance(name, tuple)
            result.append(Address(host=name[0], port=name[1]) if tcp else Address(path=str(name)))
        return ", ".join(str(address) for address in result)


async def build_runtime(
    config: Config,
    log: LogSink,
    slots: ConnectionSlots,
    kept: Mapping[BindRef, list[TCPListener]] | None = None,
    *,
    reuse_port: bool = False,
) -> Runtime:
    """Resolve the backends, read the certificates, compile the rules and bind the listeners of
    ``config``; binds in ``kept`` take those (already open) listeners instead.

    Error handling: ConfigError (a name that does not resolve, a certificate or a rule that is
    wrong) or StartupError (a port in use); then every listener this call opened is closed
    again, and the ``kept`` ones are left as they were. ``reuse_port``: bind with SO_REUSEPORT.
    """
    kept = kept or {}
    backends: dict[str, BackendRuntime] = {}
    for backend_config in config.backends:
        backends[backend_config.name] = await resolve_backend(backend_config)
    # Certificates and rules are checked before any port opens: a bad one stops the start.
    server_tls = load_frontend_tls(config)
    rules = compile_rules(config)
    for name, backend_rules in rules.backends.items():
        backends[name].request_rules = backend_rules.request
        backends[name].response_rules = backend_rules.response
    opened: list[TCPListener] = []
    listeners: dict[BindRef, list[TCPListener]] = {}
    frontends: list[FrontendRuntime] = []
    try:
        for fe_config in config.frontends:
            for index in range(len(fe_config.bind)):
                ref = (fe_config.name, index)
                if ref in kept:
                    listeners[ref] = kept[ref]
                else:
                    listeners[ref] = open_listener(fe_config, index, reuse_port=reuse_port)
                    opened.extend(listeners[ref])
        for fe_config in config.frontends:
            backend = fe_config.default_backend
            fe_listeners = [
                listener
                for index in range(len(fe_config.bind))
                for listener in listeners[fe_config.name, index]
            ]
            try:
                runtime = FrontendRuntime(
                    fe_config,
                    backends[backend] if backend is not None else None,
                    fe_listeners,
                    log,
                    slots,
                    server_tls.get(fe_config.name),
                )
            except OSError as exc:  # an error page that can't be read
                raise ConfigError.single(
                    f"frontends.{fe_config.name}.error_pages",
                    f"cannot read {exc.filename}: {exc.strerror or exc}",
                ) from None
            fe_rules = rules.frontends[fe_config.name]
            runtime.backends = backends
            runtime.routes = fe_rules.routes
            runtime.request_rules = fe_rules.request
            runtime.response_rules = fe_rules.response
            frontends.append(runtime)
    except BaseException:
        for listener in opened:
            listener.close()
        raise
    _set_redirect_ports(frontends)
    return Runtime(config=config, frontends=frontends, backends=backends, listeners=listeners)


def _set_redirect_ports(frontends: list[FrontendRuntime]) -> None:
    """``redirect_https`` without a port sends clients to the only TLS frontend's real port."""
    tls_ports = [fe.addresses[0].port for fe in frontends if fe.tls is not None and fe.addresses]
    for fe in frontends:
        redirect = fe.config.redirect_https
        if redirect is not None:
            fe.redirect_port = redirect.port if redirect.port is not None else tls_ports[0]


def load_frontend_tls(config: Config) -> dict[str, ServerTLS]:
    """Every TLS frontend's certificates and contexts; ConfigError lists all the problems.
    (The files are read each time: a reload picks up renewed certificates.)"""
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


@attrs.define(kw_only=True, eq=False)
class Carried:
    """What :func:`carry_over` hands to the new configuration's health checks, and leaves over."""

    #: the health state each checked server starts from, by (backend, server)
    health: dict[tuple[str, str], HealthState]
    #: servers whose checks the operator had paused (``disable health``): they stay paused
    paused: set[tuple[str, str]]
    #: idle pools of running servers that the new configuration does not use (to be closed)
    orphan_pools: list[IdlePool]


def carry_over(
    running: Runtime, new: Runtime, checkers: Mapping[tuple[str, str], ServerChecker]
) -> Carried:
    """Hand the state of the running configuration to ``new`` (synchronous: no checkpoint, so
    no request sees half of it): frontend counters by frontend name; by backend and server name
    the counters, response times, state history, operator state, weight, health verdict
    (``checkers``: the running health checks), idle connections and stick table, as
    :mod:`trilb.core.reload` decides."""
    before = {fe.name: fe for fe in running.frontends}
    for fe in new.frontends:
        old_fe = before.get(fe.name)
        if old_fe is not None:
            fe.take_over(old_fe)
    health: dict[tuple[str, str], HealthState] = {}
    paused: set[tuple[str, str]] = set()
    kept_pools: set[int] = set()
    for carry in plan_backends(running.config, new.config):
        old_backend = running.backends[carry.backend]
        backend = new.backends[carry.backend]
        backend.take_over(old_backend, carry.index_map(), stick_table=carry.stick_table)
        for server_carry in carry.servers:
            old = old_backend.servers[server_carry.old_index]
            server = backend.servers[server_carry.new_index]
            server.take_over(old, pool=server_carry.pool, health=server_carry.health)
            weight = carried_weight(old.config.weight, old.weight, server.config.weight)
            if weight != server.weight:
                backend.set_weight(server.name, weight)
            if server_carry.pool:
                kept_pools.add(id(old.pool))
            checker = checkers.get((carry.backend, server.name))
            check = backend.config.health_check
            if server_carry.health and checker is not None and check is not None:
                key = (carry.backend, server.name)
                health[key] = carried_health(checker.state, check.rise, check.fall)
                if checker.paused:
                    paused.add(key)
    orphans = [
        server.pool
        for backend in running.backends.values()
        for server in backend.servers
        if id(server.pool) not in kept_pools
    ]
    return Carried(health=health, paused=paused, orphan_pools=orphans)


def close_pools(pools: Iterable[IdlePool]) -> None:
    """Close the idle connections of ``pools``."""
    for pool in pools:
        for conn in pool.drain():
            conn.close()


class Generation:
    """The frontends of one configuration at work: their accept loops and their connections.

    A reload retires the running generation: :meth:`stop_accepting` ends its accept loops
    without closing the listeners (the next generation accepts on them), its connections go on
    until they end, or until :meth:`cut`; :attr:`done` is set once none is left."""

    def __init__(self, frontends: list[FrontendRuntime]) -> None:
        self.frontends = frontends
        self._accepting = trio.CancelScope()
        self._connections: trio.Nursery | None = None
        self._cut = False
        #: set once the accept loops and every connection have ended
        self.done = trio.Event()
        #: once retired: idle pools of its servers that the next configuration does not use
        #: (closed when it is done: its requests may still put connections back)
        self.orphan_pools: list[IdlePool] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept (until :meth:`stop_accepting` or the listeners close) and serve connections;
        returns once the last connection has ended.

        Cancellation: cancelling the task closes every connection at once (as :meth:`cut`)."""
        try:
            async with trio.open_nursery() as connections:
                self._connections = connections
                if self._cut:
                    connections.cancel_scope.cancel()
                with self._accepting:
                    async with trio.open_nursery() as accepting:
                        for fe in self.frontends:
                            accepting.start_soon(fe.run, connections)
                        task_status.started()
        finally:
            self.done.set()

    def stop_accepting(self) -> None:
        """End the accept loops; the listeners stay open (synchronous: nothing is accepted after
        this returns)."""
        self._accepting.cancel()

    def retire(self) -> None:
        """A reload replaced this generation: no more accepting, and every response from now on
        says ``Connection: close``; tunnels and requests under way go on."""
        self.stop_accepting()
        for fe in self.frontends:
            fe.retiring = True
            fe.listeners = []  # they belong to the next generation now (or were closed)

    def cut(self) -> None:
        """Close every connection now."""
        self._cut = True
        self.stop_accepting()
        if self._connections is not None:
            self._connections.cancel_scope.cancel()

    @property
    def open_connections(self) -> int:
        """Client connections being served (TLS ones once their handshake is done)."""
        return sum(len(fe.sessions) for fe in self.frontends)
