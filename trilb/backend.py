"""A backend at run time: its servers, their pools and counters, and the balancing algorithm."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Container

import trio

from .config import BackendConfig, ServerConfig, UpstreamTLS
from .core.balance import Algorithm, make_algorithm
from .errors import ConfigError
from .net import connect
from .pool import IdlePool, ServerConnection
from .stats import BackendStatistics, Counters, ServerStatistics

__all__ = ["BackendRuntime", "ServerRuntime", "resolve_backend"]


class ServerRuntime:
    """One server: where it is, how to connect to it, its idle pool and counters."""

    __slots__ = (
        "config",
        "counters",
        "family",
        "index",
        "name",
        "pool",
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

    async def connect(self) -> ServerConnection:
        """A new connection (the caller bounds the wait, handshake included); OSError when it
        can't be made, a failed TLS handshake (an untrusted certificate) included."""
        transport = await connect(self.family, self.sockaddr)
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
        return ServerStatistics(
            name=self.name,
            address=str(self.config.address),
            weight=self.weight,
            traffic=self.counters.snapshot(),
            idle_connections=len(self.pool),
        )


class BackendRuntime:
    """The servers of one backend and the algorithm that chooses among them."""

    __slots__ = ("algorithm", "config", "counters", "name", "servers")

    def __init__(self, config: BackendConfig, servers: list[ServerRuntime]) -> None:
        self.config = config
        self.name = config.name
        self.servers = servers
        self.algorithm: Algorithm = make_algorithm(config.balance, [s.weight for s in servers])
        self.counters = Counters()

    def pick(self, tried: Container[int]) -> ServerRuntime | None:
        """The next server, preferring one not tried yet for this request (redispatch)."""
        index = self.algorithm.pick(lambda i: i not in tried) if tried else self.algorithm.pick()
        if index is None and tried:
            index = self.algorithm.pick()
        return None if index is None else self.servers[index]

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
        return BackendStatistics(
            name=self.name,
            traffic=self.counters.snapshot(),
            servers=tuple(s.statistics() for s in self.servers),
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
