"""Traffic counters (mutable, owned by the shell) and their immutable snapshots (public API).

Besides the plain counters:

* :class:`Histogram` -- response times in fixed buckets (one ``bisect`` and two additions per
  observation), for the backends and servers;
* :class:`StateHistory` -- when a server's state last changed, and how long it has been down;
* :class:`RateMeter` -- rates over the last seconds, from samples taken by the stats server
  (nothing on the data path: it reads the totals once a second);
* :class:`StatsView` -- a snapshot with those recent figures: what the stats pages render;
* for many worker processes (``global.workers``): :class:`WorkerStatistics`, the totals over
  the workers (:func:`combine`), kept from going down when a worker is replaced
  (:func:`retire`, :class:`RetiredTotals`), and the snapshots as plain JSON-able data for the
  link between the master and its workers (:func:`statistics_to_json`,
  :func:`statistics_from_json`).

No I/O and no clock of their own here: the callers pass ``now`` (``time.monotonic()``).
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs

__all__ = [
    "RESPONSE_TIME_BUCKETS",
    "WORKER_STATES",
    "BackendStatistics",
    "Counters",
    "FrontendStatistics",
    "Histogram",
    "HistogramSnapshot",
    "RateMeter",
    "Recent",
    "RetiredTotals",
    "ServerStatistics",
    "StateHistory",
    "Statistics",
    "StatsView",
    "TrafficStatistics",
    "WorkerStatistics",
    "combine",
    "retire",
    "statistics_from_json",
    "statistics_to_json",
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
    #: with ``global.workers``: each worker process (the figures above are the totals over
    #: them); empty for a balancer in one process
    workers: tuple[WorkerStatistics, ...] = ()

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


# -- many processes (``global.workers``) ---------------------------------------------------------

#: what a worker process can be doing, as the master sees it
WORKER_STATES = ("starting", "running", "restarting", "stopping", "stopped")


@attrs.frozen(kw_only=True)
class WorkerStatistics:
    """One worker process of a multi-process balancer, as the master sees it: beside the totals
    of :class:`Statistics`, so that a worker that lags or restarts shows."""

    #: which worker, 1..N; it stays when the process is replaced
    index: int
    #: the process' id; None while no process runs
    pid: int | None
    #: one of :data:`WORKER_STATES`
    state: str
    #: how many times its process was replaced
    restarts: int
    #: seconds since this process started; 0 when none runs
    uptime: float
    #: its own latest figures (its process' counters only: they start over when it is replaced)
    statistics: Statistics

    @property
    def traffic(self) -> TrafficStatistics:
        """Its client side: its frontends' traffic summed."""
        return _sum_traffic(fe.traffic for fe in self.statistics.frontends)


_TRAFFIC_FIELDS = tuple(field.name for field in attrs.fields(TrafficStatistics))

#: ties of the servers' state vote go to the first of these (the less available); an unknown
#: state comes before all
_AVAILABILITY = {"MAINT": 0, "DOWN": 1, "DRAIN": 2, "UP": 3}


def _sum_traffic(parts: Iterable[TrafficStatistics]) -> TrafficStatistics:
    totals = dict.fromkeys(_TRAFFIC_FIELDS, 0)
    for traffic in parts:
        for name in _TRAFFIC_FIELDS:
            totals[name] += getattr(traffic, name)
    return TrafficStatistics(**totals)


def _sum_histograms(parts: Sequence[HistogramSnapshot]) -> HistogramSnapshot:
    if not parts:
        return HistogramSnapshot()
    bounds = parts[0].bounds
    if any(part.bounds != bounds for part in parts):
        raise ValueError(f"histograms with different bounds: {[p.bounds for p in parts]}")
    cumulative = tuple(sum(counts) for counts in zip(*(p.cumulative for p in parts), strict=True))
    return HistogramSnapshot(
        bounds=bounds, cumulative=cumulative, sum=math.fsum(p.sum for p in parts)
    )


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)


def _by_name(groups: Iterable[Iterable[N]]) -> dict[str, list[N]]:
    """The items of every group by name, names in the order they first appear."""
    found: dict[str, list[N]] = {}
    for group in groups:
        for item in group:
            found.setdefault(item.name, []).append(item)
    return found


def _vote(states: Iterable[str]) -> str:
    counts = collections.Counter(states)
    return min(counts, key=lambda state: (-counts[state], _AVAILABILITY.get(state, -1), state))


def combine(
    parts: Sequence[Statistics],
    *,
    retired: Statistics | None = None,
    workers: Iterable[WorkerStatistics] = (),
) -> Statistics:
    """The totals over the workers' figures ``parts``, plus the counters of ``retired`` (those
    of the worker processes that ended, see :func:`retire`) for the names some part has, with
    ``workers`` as :attr:`~Statistics.workers`.

    * Frontends, backends and servers are matched by name, in the order in which they first
      appear in ``parts`` (those of the first part first). Only names of ``parts`` are shown:
      ``retired`` never brings back what a reload removed (though it keeps its counters, so a
      name that comes back continues from them: totals only go up).
    * Every :class:`TrafficStatistics` figure is summed, the histograms bucket by bucket (their
      bounds must be the same), and ``queued`` and ``idle_connections`` too. The peaks are
      sums of each process's peak, reached at different moments maybe: an upper bound of the
      real peak (which a retired worker's peak loosens further).
    * A server's views, not counts, are taken from ``parts`` only: each worker runs its own
      health checks, so they may disagree for a moment. Its state is the one most workers
      report, a tie going to the less available (MAINT, DOWN, DRAIN, UP in that order); its
      ``check_status``, ``weight``, ``address`` and ``backup`` are those of the first worker
      reporting that state; ``last_change`` is the least (the most recent change); ``downtime``
      and ``changes`` are the largest (of ``retired`` too, so they don't go down when workers
      are replaced).
    """
    old_frontends = {fe.name: fe for fe in retired.frontends} if retired is not None else {}
    old_backends = {be.name: be for be in retired.backends} if retired is not None else {}
    frontends = _by_name(part.frontends for part in parts)
    backends = _by_name(part.backends for part in parts)
    return Statistics(
        frontends=tuple(
            _combine_frontend(group, old_frontends.get(name)) for name, group in frontends.items()
        ),
        backends=tuple(
            _combine_backend(group, old_backends.get(name)) for name, group in backends.items()
        ),
        workers=tuple(workers),
    )


def _combine_frontend(
    live: list[FrontendStatistics], old: FrontendStatistics | None
) -> FrontendStatistics:
    counted = live if old is None else [*live, old]
    return FrontendStatistics(
        name=live[0].name,
        addresses=live[0].addresses,
        traffic=_sum_traffic(fe.traffic for fe in counted),
    )


def _combine_backend(
    live: list[BackendStatistics], old: BackendStatistics | None
) -> BackendStatistics:
    old_servers = {s.name: s for s in old.servers} if old is not None else {}
    servers = _by_name(backend.servers for backend in live)
    counted = live if old is None else [*live, old]
    return BackendStatistics(
        name=live[0].name,
        traffic=_sum_traffic(be.traffic for be in counted),
        servers=tuple(
            _combine_server(group, old_servers.get(name)) for name, group in servers.items()
        ),
        queued=sum(be.queued for be in counted),
        response_time=_sum_histograms([be.response_time for be in counted]),
    )


def _combine_server(live: list[ServerStatistics], old: ServerStatistics | None) -> ServerStatistics:
    state = _vote(s.state for s in live)
    first = next(s for s in live if s.state == state)
    counted = live if old is None else [*live, old]
    return ServerStatistics(
        name=first.name,
        address=first.address,
        weight=first.weight,
        traffic=_sum_traffic(s.traffic for s in counted),
        idle_connections=sum(s.idle_connections for s in counted),
        state=state,
        backup=first.backup,
        check_status=first.check_status,
        last_change=min(s.last_change for s in live),
        downtime=max(s.downtime for s in counted),
        changes=max(s.changes for s in counted),
        response_time=_sum_histograms([s.response_time for s in counted]),
    )


def _no_gauges(traffic: TrafficStatistics) -> TrafficStatistics:
    return attrs.evolve(traffic, current_connections=0, current_requests=0)


def retire(last: Statistics, retired: Statistics | None = None) -> Statistics:
    """The counters of the worker processes that ended, ``retired`` (None: none yet), with
    those of one more: ``last``, the last figures it reported (what it counted after them is
    lost). For :func:`combine`, so that no total goes down when a worker is replaced: its new
    process counts from 0.

    Its gauges (current connections and requests, ``queued``, ``idle_connections``) are left
    out, as nothing of it is open any more; its counters, peaks and views are kept, every name
    too (:func:`combine` shows only the live ones). No :attr:`~Statistics.workers`."""
    ended = Statistics(
        frontends=tuple(attrs.evolve(fe, traffic=_no_gauges(fe.traffic)) for fe in last.frontends),
        backends=tuple(
            attrs.evolve(
                be,
                traffic=_no_gauges(be.traffic),
                queued=0,
                servers=tuple(
                    attrs.evolve(s, traffic=_no_gauges(s.traffic), idle_connections=0)
                    for s in be.servers
                ),
            )
            for be in last.backends
        ),
    )
    return ended if retired is None else combine([retired, ended])


class RetiredTotals:
    """:func:`retire` and :func:`combine` for the master, holding what the worker processes
    that ended had counted."""

    __slots__ = ("statistics",)

    def __init__(self) -> None:
        #: their counters, as :func:`retire` keeps them (every name any of them had)
        self.statistics = Statistics(frontends=(), backends=())

    def add(self, last: Statistics) -> None:
        """A worker's process ended; ``last`` is the last figures it reported."""
        self.statistics = retire(last, self.statistics)

    def totals(
        self, live: Sequence[Statistics], workers: Iterable[WorkerStatistics] = ()
    ) -> Statistics:
        """The totals over the latest figures of the workers running now, ``live``, and the
        ones that ended, for the names the live ones have (:func:`combine`)."""
        return combine(live, retired=self.statistics, workers=workers)


# -- the master/worker link: plain JSON-able data -------------------------------------------------


def _float_out(value: float) -> float | str:
    """A float as strict JSON has it: inf and nan (which it lacks) as "inf", "-inf", "nan"."""
    return value if math.isfinite(value) else str(value)


def _histogram_out(histogram: HistogramSnapshot) -> dict[str, Any]:
    return {
        "bounds": [_float_out(bound) for bound in histogram.bounds],
        "cumulative": list(histogram.cumulative),
        "sum": _float_out(histogram.sum),
    }


def _traffic_out(traffic: TrafficStatistics) -> dict[str, Any]:
    return {name: getattr(traffic, name) for name in _TRAFFIC_FIELDS}


def statistics_to_json(statistics: Statistics) -> dict[str, Any]:
    """``statistics`` as plain data (dicts, lists, str, int, float, bool, None) for
    :func:`json.dumps` -- strict JSON: no inf or nan -- and :func:`statistics_from_json`."""
    return {
        "frontends": [
            {"name": fe.name, "addresses": list(fe.addresses), "traffic": _traffic_out(fe.traffic)}
            for fe in statistics.frontends
        ],
        "backends": [
            {
                "name": be.name,
                "traffic": _traffic_out(be.traffic),
                "queued": be.queued,
                "response_time": _histogram_out(be.response_time),
                "servers": [
                    {
                        "name": s.name,
                        "address": s.address,
                        "weight": s.weight,
                        "traffic": _traffic_out(s.traffic),
                        "idle_connections": s.idle_connections,
                        "state": s.state,
                        "backup": s.backup,
                        "check_status": s.check_status,
                        "last_change": _float_out(s.last_change),
                        "downtime": _float_out(s.downtime),
                        "changes": s.changes,
                        "response_time": _histogram_out(s.response_time),
                    }
                    for s in be.servers
                ],
            }
            for be in statistics.backends
        ],
        "workers": [
            {
                "index": w.index,
                "pid": w.pid,
                "state": w.state,
                "restarts": w.restarts,
                "uptime": _float_out(w.uptime),
                "statistics": statistics_to_json(w.statistics),
            }
            for w in statistics.workers
        ],
    }


_REQUIRED: Any = object()


def _field(data: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    if key not in data:
        if default is _REQUIRED:
            raise ValueError(f"{key!r} is missing")
        return default
    value = data[key]
    # (bool is an int to Python, not to JSON)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{key!r}: expected {kind.__name__}, got {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> int:
    value: int = _field(data, key, int, default)
    return value


def _str(data: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> str:
    value: str = _field(data, key, str, default)
    return value


def _bool(data: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> bool:
    value: bool = _field(data, key, bool, default)
    return value


def _list(data: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> list[Any]:
    value: list[Any] = _field(data, key, list, default)
    return value


def _object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value: Mapping[str, Any] = _field(data, key, dict, _REQUIRED)
    return value


def _float_in(value: object, key: str) -> float:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{key!r}: expected a number, got {value!r}")


def _float(data: Mapping[str, Any], key: str, default: float | None = None) -> float:
    if key not in data and default is not None:
        return default
    return _float_in(data.get(key), key)


def _objects(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = _list(data, key)
    if not all(isinstance(item, dict) for item in items):
        raise ValueError(f"{key!r}: expected a list of objects")
    return items


def _strings(data: Mapping[str, Any], key: str) -> list[str]:
    items = _list(data, key, [])
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{key!r}: expected a list of strings")
    return items


def _histogram_in(data: Mapping[str, Any], key: str) -> HistogramSnapshot:
    if key not in data:
        return HistogramSnapshot()
    histogram = _object(data, key)
    cumulative = _list(histogram, "cumulative")
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in cumulative):
        raise ValueError(f"{key!r}: the counts must be integers")
    bounds = tuple(_float_in(bound, key) for bound in _list(histogram, "bounds"))
    if len(cumulative) != len(bounds) + 1:
        raise ValueError(f"{key!r}: {len(bounds)} bounds but {len(cumulative)} counts")
    return HistogramSnapshot(
        bounds=bounds, cumulative=tuple(cumulative), sum=_float(histogram, "sum")
    )


def _traffic_in(data: Mapping[str, Any]) -> TrafficStatistics:
    traffic = _object(data, "traffic")
    return TrafficStatistics(
        **{
            field.name: _int(traffic, field.name, field.default)
            if field.default is not attrs.NOTHING
            else _int(traffic, field.name)
            for field in attrs.fields(TrafficStatistics)
        }
    )


def statistics_from_json(data: Mapping[str, Any]) -> Statistics:
    """The :class:`Statistics` that :func:`statistics_to_json` made ``data`` of (after a trip
    through JSON). Fields with a default may be missing and unknown keys are ignored, so a
    worker of a slightly older or newer trilb is understood; ValueError for anything else."""
    if not isinstance(data, Mapping):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    try:
        return _statistics_in(data)
    except (KeyError, TypeError) as exc:  # (attrs' own checks; the link is ours, but be sure)
        raise ValueError(f"not statistics: {exc!r}") from None


def _statistics_in(data: Mapping[str, Any]) -> Statistics:
    return Statistics(
        frontends=tuple(
            FrontendStatistics(
                name=_str(fe, "name"),
                addresses=tuple(_strings(fe, "addresses")),
                traffic=_traffic_in(fe),
            )
            for fe in _objects(data, "frontends")
        ),
        backends=tuple(
            BackendStatistics(
                name=_str(be, "name"),
                traffic=_traffic_in(be),
                queued=_int(be, "queued", 0),
                response_time=_histogram_in(be, "response_time"),
                servers=tuple(
                    ServerStatistics(
                        name=_str(s, "name"),
                        address=_str(s, "address", ""),
                        weight=_int(s, "weight"),
                        traffic=_traffic_in(s),
                        idle_connections=_int(s, "idle_connections", 0),
                        state=_str(s, "state", "UP"),
                        backup=_bool(s, "backup", False),
                        check_status=_str(s, "check_status", ""),
                        last_change=_float(s, "last_change", 0.0),
                        downtime=_float(s, "downtime", 0.0),
                        changes=_int(s, "changes", 0),
                        response_time=_histogram_in(s, "response_time"),
                    )
                    for s in _objects(be, "servers")
                ),
            )
            for be in _objects(data, "backends")
        ),
        workers=tuple(
            WorkerStatistics(
                index=_int(w, "index"),
                pid=None if w.get("pid") is None else _int(w, "pid"),
                state=_str(w, "state"),
                restarts=_int(w, "restarts", 0),
                uptime=_float(w, "uptime", 0.0),
                statistics=statistics_from_json(_object(w, "statistics")),
            )
            for w in (_objects(data, "workers") if "workers" in data else [])
        ),
    )
