"""Traffic counters (mutable, owned by the shell) and their immutable snapshots (public API).

Besides the plain counters:

* :class:`Histogram` -- response times in fixed buckets (one ``bisect`` and two additions per
  observation), for the backends and servers;
* :class:`StateHistory` -- when a server's state last changed, and how long it has been down;
* :class:`RateMeter` -- rates over the last seconds, from samples taken by the stats server
  (nothing on the data path: it reads the totals once a second);
* :class:`StatsView` -- a snapshot with those recent figures: what the stats pages render.

No I/O and no clock of their own here: the callers pass ``now`` (``time.monotonic()``).
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

import attrs

__all__ = [
    "RESPONSE_TIME_BUCKETS",
    "BackendStatistics",
    "Counters",
    "FrontendStatistics",
    "Histogram",
    "HistogramSnapshot",
    "RateMeter",
    "Recent",
    "ServerStatistics",
    "StateHistory",
    "Statistics",
    "StatsView",
    "TrafficStatistics",
]

#: upper bounds (seconds) of the response time buckets: Prometheus' default buckets, which span
#: a fast cache hit (5 ms) to a slow report (10 s); above that is the ``+Inf`` bucket
RESPONSE_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: the states in which a server takes no traffic at all: the time spent in them is downtime
_DOWN_STATES = frozenset({"DOWN", "MAINT"})

K = TypeVar("K", bound=Hashable)


class Counters:
    """Live counters for a frontend, backend or server; cheap to bump on the hot path."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "connect_errors",
        "current_connections",
        "current_requests",
        "denied_connections",
        "denied_requests",
        "handshake_errors",
        "peak_connections",
        "peak_requests",
        "proxy_errors",
        "responses",
        "tarpitted_requests",
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
        self.proxy_errors = 0  # connections dropped without a valid PROXY header (accept_proxy)
        #: over a frontend's or route's ``rate_limit``: answered at once / after a tarpit
        self.denied_requests = 0
        self.tarpitted_requests = 0
        self.denied_connections = 0  # closed at once: over ``max_connections_per_src``
        self.responses = [0, 0, 0, 0, 0, 0]  # other, 1xx, 2xx, 3xx, 4xx, 5xx
        #: the most connections / requests there were at once (HAProxy's "max sessions"); kept
        #: where the current counts go up
        self.peak_connections = 0
        self.peak_requests = 0

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
            proxy_errors=self.proxy_errors,
            denied_requests=self.denied_requests,
            tarpitted_requests=self.tarpitted_requests,
            denied_connections=self.denied_connections,
            responses_1xx=r[1],
            responses_2xx=r[2],
            responses_3xx=r[3],
            responses_4xx=r[4],
            responses_5xx=r[5],
            responses_other=r[0],
            peak_connections=self.peak_connections,
            peak_requests=self.peak_requests,
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
    #: the most connections / requests in progress at once so far
    peak_connections: int = 0
    peak_requests: int = 0
    #: connections dropped for want of a valid PROXY header (``accept_proxy``)
    proxy_errors: int = 0
    #: requests over a ``rate_limit``: answered at once (``deny``) / held first (``tarpit``)
    denied_requests: int = 0
    tarpitted_requests: int = 0
    #: connections closed at once for ``max_connections_per_src``
    denied_connections: int = 0


class Histogram:
    """Observations counted in fixed buckets, as Prometheus' histograms: cheap to observe."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float] = RESPONSE_TIME_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"bucket bounds must be increasing, got {self.bounds}")
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket (not cumulative); last: +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket ("le")
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        cumulative = []
        total = 0
        for count in self.counts:
            total += count
            cumulative.append(total)
        return HistogramSnapshot(bounds=self.bounds, cumulative=tuple(cumulative), sum=self.sum)


@attrs.frozen(kw_only=True)
class HistogramSnapshot:
    """A histogram at one moment: cumulative counts by upper bound, the last one ``+Inf``."""

    bounds: tuple[float, ...] = RESPONSE_TIME_BUCKETS
    #: observations <= each bound, then all of them (len(bounds) + 1 numbers, never decreasing)
    cumulative: tuple[int, ...] = (0,) * (len(RESPONSE_TIME_BUCKETS) + 1)
    sum: float = 0.0

    @property
    def count(self) -> int:
        return self.cumulative[-1]

    def buckets(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, ending with (inf, count)."""
        return list(zip((*self.bounds, math.inf), self.cumulative, strict=True))


class StateHistory:
    """When a server's state last changed, and the time it spent DOWN or in MAINT (downtime)."""

    __slots__ = ("_down_since", "_downtime", "changes", "last_change")

    def __init__(self, now: float, state: str = "UP") -> None:
        #: when the state last changed (the start counts as a change, as in HAProxy)
        self.last_change = now
        #: state changes so far
        self.changes = 0
        self._downtime = 0.0
        self._down_since: float | None = now if state in _DOWN_STATES else None

    def change(self, state: str, now: float) -> None:
        """The server is in ``state`` from ``now`` on (call it when the state changes)."""
        self.last_change = now
        self.changes += 1
        if state in _DOWN_STATES:
            if self._down_since is None:
                self._down_since = now
        elif self._down_since is not None:
            self._downtime += now - self._down_since
            self._down_since = None

    def downtime(self, now: float) -> float:
        """Seconds spent DOWN or in MAINT so far, the current stretch included."""
        if self._down_since is None:
            return self._downtime
        return self._downtime + max(0.0, now - self._down_since)


class RateMeter(Generic[K]):
    """Rates over a sliding window (the last ``window`` seconds), from samples of counters.

    The owner calls :meth:`sample` with the current totals every second or so; :meth:`rate`
    is then the increase per second between the oldest sample still in the window and the
    newest. Memory is bounded: at most ``window / interval + 2`` samples are kept."""

    __slots__ = ("_samples", "window")

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, Mapping[K, float]]] = collections.deque()

    def sample(self, now: float, totals: Mapping[K, float]) -> None:
        samples = self._samples
        samples.append((now, dict(totals)))
        # keep one sample at or beyond the window's start, as the base of the difference
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()

    def increase(self, key: K) -> tuple[float, float]:
        """How much ``key`` grew, and over how many seconds (0 with fewer than two samples)."""
        if len(self._samples) < 2:
            return 0.0, 0.0
        (start, old), (end, new) = self._samples[0], self._samples[-1]
        return new.get(key, 0.0) - old.get(key, 0.0), end - start

    def rate(self, key: K) -> float:
        """Per second over the window (0.0 until two samples were taken)."""
        delta, seconds = self.increase(key)
        return delta / seconds if seconds > 0 else 0.0


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
    #: seconds since the state last changed (or since the balancer started)
    last_change: float = 0.0
    #: seconds spent DOWN or in MAINT so far
    downtime: float = 0.0
    #: state changes so far
    changes: int = 0
    #: how long the server took for its responses (see ``trilb_server_response_seconds``)
    response_time: HistogramSnapshot = HistogramSnapshot()


@attrs.frozen(kw_only=True)
class BackendStatistics:
    name: str
    traffic: TrafficStatistics
    servers: tuple[ServerStatistics, ...]
    #: requests waiting for a server slot
    queued: int = 0
    #: how long its servers took for their responses, all servers together
    response_time: HistogramSnapshot = HistogramSnapshot()

    def server(self, name: str) -> ServerStatistics:
        return next(s for s in self.servers if s.name == name)

    @property
    def state(self) -> str:
        """UP while some server is UP (or draining: it still serves its sessions), else DOWN."""
        return "UP" if any(s.state in ("UP", "DRAIN") for s in self.servers) else "DOWN"

    @property
    def weight(self) -> int:
        """The weight of the servers that take new traffic: those UP, but the backups only when
        no regular server is UP (as they get traffic only then)."""
        up = [s for s in self.servers if s.state == "UP"]
        regular = [s for s in up if not s.backup]
        return sum(s.weight for s in (regular or up))


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


#: what a key of :attr:`StatsView.recent` looks like: ("frontend", name), ("backend", name) or
#: ("server", backend, name)
RecentKey = tuple[str, ...]


@attrs.frozen(kw_only=True)
class Recent:
    """Figures over the last seconds (the rate window), from the stats server's samples."""

    #: requests per second
    request_rate: float = 0.0
    #: the mean response time of the responses in the window, seconds; None: there were none
    response_time: float | None = None


@attrs.frozen(kw_only=True)
class StatsView:
    """Everything one rendering of the stats pages shows (:mod:`trilb.dashboard`,
    :mod:`trilb.metrics`)."""

    statistics: Statistics
    recent: Mapping[RecentKey, Recent] = attrs.field(factory=dict)
    #: seconds since the stats server started (with the balancer)
    uptime: float = 0.0
    #: seconds between the dashboard's updates
    refresh: float = 5.0
    #: the length of the window of :attr:`recent`, seconds
    window: float = 10.0
    draining: bool = False

    def get(self, *key: str) -> Recent:
        return self.recent.get(key, _NOTHING_RECENT)


_NOTHING_RECENT = Recent()
