"""Traffic counters (mutable, owned by the shell) and their immutable snapshots (public API)."""

from __future__ import annotations

import attrs

__all__ = [
    "BackendStatistics",
    "Counters",
    "FrontendStatistics",
    "ServerStatistics",
    "Statistics",
    "TrafficStatistics",
]


class Counters:
    """Live counters for a frontend, backend or server; cheap to bump on the hot path."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "connect_errors",
        "current_connections",
        "current_requests",
        "handshake_errors",
        "responses",
        "total_connections",
        "total_requests",
    )

    def __init__(self) -> None:
        self.current_connections = 0
        self.total_connections = 0
        self.current_requests = 0
        self.total_requests = 0
        self.bytes_in = 0  # from the client (frontend) / from the server (server)
        self.bytes_out = 0  # to the client (frontend) / to the server (server)
        self.connect_errors = 0
        self.handshake_errors = 0  # failed or timed-out TLS handshakes (frontends)
        self.responses = [0, 0, 0, 0, 0, 0]  # other, 1xx, 2xx, 3xx, 4xx, 5xx

    def count_response(self, status: int) -> None:
        self.responses[status // 100 if 100 <= status < 600 else 0] += 1

    def snapshot(self) -> TrafficStatistics:
        r = self.responses
        return TrafficStatistics(
            current_connections=self.current_connections,
            total_connections=self.total_connections,
            current_requests=self.current_requests,
            total_requests=self.total_requests,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            connect_errors=self.connect_errors,
            handshake_errors=self.handshake_errors,
            responses_1xx=r[1],
            responses_2xx=r[2],
            responses_3xx=r[3],
            responses_4xx=r[4],
            responses_5xx=r[5],
            responses_other=r[0],
        )


@attrs.frozen(kw_only=True)
class TrafficStatistics:
    current_connections: int
    total_connections: int
    current_requests: int
    total_requests: int
    bytes_in: int
    bytes_out: int
    connect_errors: int
    handshake_errors: int
    responses_1xx: int
    responses_2xx: int
    responses_3xx: int
    responses_4xx: int
    responses_5xx: int
    responses_other: int


@attrs.frozen(kw_only=True)
class ServerStatistics:
    name: str
    address: str
    weight: int
    traffic: TrafficStatistics
    idle_connections: int
    #: UP, DOWN (health checks), DRAIN or MAINT (the operator)
    state: str = "UP"
    backup: bool = False
    #: the last health check's outcome ("" without checks)
    check_status: str = ""


@attrs.frozen(kw_only=True)
class BackendStatistics:
    name: str
    traffic: TrafficStatistics
    servers: tuple[ServerStatistics, ...]
    #: requests waiting for a server slot
    queued: int = 0

    def server(self, name: str) -> ServerStatistics:
        return next(s for s in self.servers if s.name == name)


@attrs.frozen(kw_only=True)
class FrontendStatistics:
    name: str
    addresses: tuple[str, ...]
    traffic: TrafficStatistics


@attrs.frozen(kw_only=True)
class Statistics:
    """An immutable snapshot of a balancer's counters, from :meth:`Balancer.statistics`."""

    frontends: tuple[FrontendStatistics, ...]
    backends: tuple[BackendStatistics, ...]

    def frontend(self, name: str) -> FrontendStatistics:
        return next(f for f in self.frontends if f.name == name)

    def backend(self, name: str) -> BackendStatistics:
        return next(b for b in self.backends if b.name == name)
