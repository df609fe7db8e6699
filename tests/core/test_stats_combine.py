"""Statistics of many worker processes (sans-IO): the totals over the workers (``combine``), the
counters of the processes that ended (``retire``), and the JSON of the master/worker link."""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
import pytest

from trilb.stats import (
    RESPONSE_TIME_BUCKETS,
    BackendStatistics,
    FrontendStatistics,
    Histogram,
    HistogramSnapshot,
    RetiredTotals,
    ServerStatistics,
    Statistics,
    TrafficStatistics,
    WorkerStatistics,
    combine,
    retire,
    statistics_from_json,
    statistics_to_json,
)

_ZERO = {field.name: 0 for field in attrs.fields(TrafficStatistics)}


def traffic(**figures: int) -> TrafficStatistics:
    return TrafficStatistics(**{**_ZERO, **figures})


def histogram(*values: float) -> HistogramSnapshot:
    h = Histogram()
    for value in values:
        h.observe(value)
    return h.snapshot()


def server(name: str = "s1", **fields: Any) -> ServerStatistics:
    fields.setdefault("address", "10.0.0.1:80")
    fields.setdefault("weight", 100)
    fields.setdefault("traffic", traffic())
    fields.setdefault("idle_connections", 0)
    return ServerStatistics(name=name, **fields)


def backend(name: str = "app", *servers: ServerStatistics, **fields: Any) -> BackendStatistics:
    fields.setdefault("traffic", traffic())
    return BackendStatistics(name=name, servers=servers, **fields)


def frontend(name: str = "web", /, **figures: int) -> FrontendStatistics:
    return FrontendStatistics(name=name, addresses=("0.0.0.0:80",), traffic=traffic(**figures))


def stats(
    frontends: tuple[FrontendStatistics, ...] = (), backends: tuple[BackendStatistics, ...] = ()
) -> Statistics:
    return Statistics(frontends=frontends, backends=backends)


# -- combine ---------------------------------------------------------------------------------------


def test_every_traffic_figure_is_summed_peaks_too() -> None:
    one = {name: n for n, name in enumerate(_ZERO, start=1)}  # a different number per field
    two = {name: 100 * n for name, n in one.items()}
    total = combine([stats((frontend(**one),)), stats((frontend(**two),))])
    (fe,) = total.frontends
    assert attrs.asdict(fe.traffic) == {name: 101 * n for name, n in one.items()}
    assert fe.traffic.peak_connections == one["peak_connections"] * 101  # an upper bound
    assert fe.addresses == ("0.0.0.0:80",)
    assert total.workers == ()


def test_backends_and_servers_are_summed() -> None:
    a = backend(
        "app",
        server("s1", traffic=traffic(total_requests=3, bytes_in=10), idle_connections=2),
        queued=4,
        traffic=traffic(total_requests=3, current_requests=1),
        response_time=histogram(0.001, 0.3),
    )
    b = backend(
        "app",
        server("s1", traffic=traffic(total_requests=5, bytes_in=1), idle_connections=1),
        queued=1,
        traffic=traffic(total_requests=5, current_requests=2),
        response_time=histogram(0.3, 20.0, 0.07),
    )
    be = combine([stats(backends=(a,)), stats(backends=(b,))]).backend("app")
    assert (be.queued, be.traffic.total_requests, be.traffic.current_requests) == (5, 8, 3)
    s1 = be.server("s1")
    assert (s1.traffic.total_requests, s1.traffic.bytes_in, s1.idle_connections) == (8, 11, 3)
    assert be.response_time == histogram(0.001, 0.3, 0.3, 20.0, 0.07)


def test_histograms_are_summed_bucket_by_bucket() -> None:
    values = [0.001, 0.004, 0.2, 0.2, 3.0, 99.0]
    parts = [
        stats(backends=(backend(response_time=histogram(*values[:2])),)),
        stats(backends=(backend(response_time=histogram(*values[2:5])),)),
        stats(backends=(backend(response_time=histogram(values[5])),)),
    ]
    summed = combine(parts).backend("app").response_time
    assert summed.cumulative == histogram(*values).cumulative
    assert summed.count == 6
    assert summed.sum == pytest.approx(sum(values))
    assert summed.bounds == RESPONSE_TIME_BUCKETS


def test_histograms_with_other_bounds_are_refused() -> None:
    other = HistogramSnapshot(bounds=(1.0,), cumulative=(0, 0))
    with pytest.raises(ValueError, match="different bounds"):
        combine([stats(backends=(backend(),)), stats(backends=(backend(response_time=other),))])


@pytest.mark.parametrize(
    ("states", "winner"),
    [
        (["UP", "UP", "DOWN"], "UP"),  # the majority
        (["DOWN", "UP", "DOWN"], "DOWN"),
        (["UP", "DOWN"], "DOWN"),  # a tie: the less available
        (["UP", "DRAIN"], "DRAIN"),
        (["DRAIN", "DOWN"], "DOWN"),
        (["DOWN", "MAINT"], "MAINT"),
        (["UP", "UP", "DRAIN", "DRAIN", "MAINT"], "DRAIN"),
        (["UP"], "UP"),
    ],
)
def test_a_servers_state_is_the_vote_of_the_workers(states: list[str], winner: str) -> None:
    parts = [stats(backends=(backend("app", server(state=state)),)) for state in states]
    assert combine(parts).backend("app").server("s1").state == winner


def test_a_servers_views_come_from_the_first_worker_with_the_winning_state() -> None:
    up = server(state="UP", check_status="Layer7 check passed", weight=10, address="a:1")
    down_1 = server(
        state="DOWN",
        check_status="Layer4 timeout",
        weight=20,
        address="b:1",
        backup=True,
        last_change=5.0,
        downtime=5.0,
        changes=3,
    )
    down_2 = server(
        state="DOWN",
        check_status="Layer4 connection problem",
        weight=30,
        last_change=2.0,
        downtime=4.0,
        changes=7,
    )
    parts = [stats(backends=(backend("app", s),)) for s in (up, down_1, down_2)]
    s1 = combine(parts).backend("app").server("s1")
    assert (s1.state, s1.check_status, s1.weight, s1.address, s1.backup) == (
        "DOWN",
        "Layer4 timeout",
        20,
        "b:1",
        True,
    )
    assert (s1.last_change, s1.downtime, s1.changes) == (0.0, 5.0, 7)  # min, max, max


def test_names_only_in_some_parts_and_the_order() -> None:
    one = stats(
        (frontend("web"), frontend("api")),
        (backend("app", server("s1"), server("s3")), backend("old")),
    )
    two = stats(
        (frontend("api"), frontend("admin"), frontend("web")),
        (backend("new"), backend("app", server("s2"), server("s1"))),
    )
    total = combine([one, two])
    assert [fe.name for fe in total.frontends] == ["web", "api", "admin"]
    assert [be.name for be in total.backends] == ["app", "old", "new"]
    assert [s.name for s in total.backend("app").servers] == ["s1", "s3", "s2"]


def test_combine_of_one_part_is_that_part_and_of_none_is_empty() -> None:
    part = stats(
        (frontend("web", total_requests=3, current_connections=1),),
        (
            backend(
                "app",
                server("s1", state="DRAIN", changes=2, downtime=1.5, last_change=3.0),
                queued=2,
                response_time=histogram(0.1),
            ),
        ),
    )
    assert combine([part]) == part
    assert combine([]) == Statistics(frontends=(), backends=())


def test_workers_are_attached() -> None:
    worker = WorkerStatistics(
        index=1, pid=42, state="running", restarts=0, uptime=1.0, statistics=stats()
    )
    assert combine([stats()], workers=[worker]).workers == (worker,)


# -- retire: totals across a worker's restart ------------------------------------------------------


def worker_figures(requests: int, current: int, *, names: tuple[str, ...] = ("web",)) -> Statistics:
    """A worker's snapshot: each frontend with these requests and open connections, backend
    app with server s1."""
    return stats(
        tuple(
            frontend(name, total_requests=requests, current_connections=current, peak_requests=2)
            for name in names
        ),
        (
            backend(
                "app",
                server(
                    "s1",
                    traffic=traffic(total_requests=requests, current_requests=current),
                    idle_connections=current,
                    downtime=10.0 * requests,
                    changes=requests,
                ),
                traffic=traffic(total_requests=requests, current_requests=current),
                queued=current,
                response_time=histogram(*[0.01] * requests),
            ),
        ),
    )


def test_retire_zeroes_the_gauges_only() -> None:
    worker = WorkerStatistics(
        index=1, pid=1, state="running", restarts=0, uptime=1.0, statistics=stats()
    )
    last = attrs.evolve(worker_figures(5, 3), workers=(worker,))
    ended = retire(last)
    fe = ended.frontend("web")
    assert (fe.traffic.current_connections, fe.traffic.total_requests) == (0, 5)
    assert fe.traffic.peak_requests == 2
    be = ended.backend("app")
    assert (be.queued, be.traffic.current_requests, be.traffic.total_requests) == (0, 0, 5)
    s1 = be.server("s1")
    assert (s1.idle_connections, s1.traffic.current_requests, s1.traffic.total_requests) == (
        0,
        0,
        5,
    )
    assert (s1.downtime, s1.changes) == (50.0, 5)
    assert be.response_time.count == 5
    assert ended.workers == ()


def test_totals_never_go_down_across_a_restart() -> None:
    # two workers; worker 2 dies after reporting 7 requests, its new process counts from 0
    w1, w2 = worker_figures(4, 1), worker_figures(7, 2)
    before = combine([w1, w2])
    assert before.frontend("web").traffic.total_requests == 11
    retired = retire(w2)
    restarted = worker_figures(0, 0)
    after = combine([w1, restarted], retired=retired)
    assert after.frontend("web").traffic.total_requests == 11
    assert after.frontend("web").traffic.current_connections == 1  # only the live worker's
    be = after.backend("app")
    assert (be.traffic.total_requests, be.queued, be.response_time.count) == (11, 1, 11)
    s1 = be.server("s1")
    assert (s1.traffic.total_requests, s1.idle_connections) == (11, 1)
    assert (s1.downtime, s1.changes) == (70.0, 7)  # the largest, the retired ones' included
    # more traffic, then worker 2 dies again: both of its processes count
    later = combine([w1, worker_figures(3, 1)], retired=retired)
    assert later.frontend("web").traffic.total_requests == 14
    retired = retire(worker_figures(3, 1), retired)
    assert retired.frontend("web").traffic.total_requests == 10
    assert retired.frontend("web").traffic.current_connections == 0
    final = combine([w1, worker_figures(0, 0)], retired=retired)
    assert final.frontend("web").traffic.total_requests == 14
    assert final.backend("app").response_time.count == 14


def test_retired_totals_hold_the_ended_processes() -> None:
    totals = RetiredTotals()
    w1 = worker_figures(4, 1)
    assert totals.totals([w1, worker_figures(7, 2)]).frontend("web").traffic.total_requests == 11
    totals.add(worker_figures(7, 2))
    totals.add(worker_figures(3, 1))  # the same worker again, after its restart
    assert totals.statistics == retire(worker_figures(3, 1), retire(worker_figures(7, 2)))
    worker = WorkerStatistics(
        index=2, pid=None, state="restarting", restarts=2, uptime=0.0, statistics=stats()
    )
    now = totals.totals([w1], workers=[worker])
    assert now.frontend("web").traffic.total_requests == 14
    assert now.frontend("web").traffic.current_connections == 1
    assert now.workers == (worker,)


def test_retired_names_no_live_worker_has_are_not_shown() -> None:
    # a reload removed frontend "old" (and server s1 of backend app); the retired counters
    # remain but are not shown while no live worker has those names
    retired = retire(worker_figures(5, 0, names=("web", "old")))
    live = stats(
        (frontend("web", total_requests=1),),
        (backend("app", server("s2")), backend("extra")),
    )
    total = combine([live], retired=retired)
    assert [fe.name for fe in total.frontends] == ["web"]
    assert total.frontend("web").traffic.total_requests == 6
    assert [be.name for be in total.backends] == ["app", "extra"]
    assert [s.name for s in total.backend("app").servers] == ["s2"]
    assert total.backend("app").traffic.total_requests == 5  # the backend itself lives on
    assert combine([], retired=retired) == Statistics(frontends=(), backends=())


# -- JSON for the master/worker link ---------------------------------------------------------------


def rich() -> Statistics:
    """A snapshot with every kind of value: odd names, floats, None, a nested worker."""
    inner = stats(
        (frontend('w"é\\b', total_requests=3, peak_connections=2, denied_connections=1),),
        (
            backend(
                "app",
                server(
                    "s1",
                    state="MAINT",
                    backup=True,
                    check_status="Layer7 wrong status, code: 500",
                    last_change=1.25,
                    downtime=0.1 + 0.2,
                    changes=4,
                    idle_connections=2,
                    response_time=histogram(0.003, 0.7, 12.5),
                    traffic=traffic(bytes_in=2**40, responses_5xx=1),
                ),
                server("s2"),
                queued=3,
                response_time=histogram(0.003, 0.7, 12.5),
            ),
            backend("empty"),
        ),
    )
    workers = (
        WorkerStatistics(
            index=1, pid=1234, state="running", restarts=2, uptime=3.5, statistics=inner
        ),
        WorkerStatistics(
            index=2, pid=None, state="restarting", restarts=3, uptime=0.0, statistics=stats()
        ),
    )
    return combine([inner], workers=workers)


@pytest.mark.parametrize(
    "statistics",
    [
        pytest.param(rich(), id="workers"),
        pytest.param(attrs.evolve(rich(), workers=()), id="no-workers"),
        pytest.param(Statistics(frontends=(), backends=()), id="empty"),
    ],
)
def test_json_round_trip(statistics: Statistics) -> None:
    text = json.dumps(statistics_to_json(statistics), allow_nan=False)
    assert statistics_from_json(json.loads(text)) == statistics


def test_json_keeps_infinite_floats() -> None:
    odd = HistogramSnapshot(bounds=(1.0, math.inf), cumulative=(1, 2, 2), sum=math.inf)
    statistics = stats(backends=(backend("app", server(downtime=-math.inf), response_time=odd),))
    text = json.dumps(statistics_to_json(statistics), allow_nan=False)
    back = statistics_from_json(json.loads(text))
    assert back == statistics
    assert back.backend("app").response_time.bounds == (1.0, math.inf)


def test_json_fills_in_defaults_and_ignores_unknown_keys() -> None:
    data = {
        "frontends": [{"name": "web", "traffic": {**_ZERO, "future": 1}, "new": True}],
        "backends": [
            {
                "name": "app",
                "traffic": {k: v for k, v in _ZERO.items() if k != "denied_connections"},
                "servers": [{"name": "s1", "weight": 5, "traffic": _ZERO}],
            }
        ],
    }
    assert statistics_from_json(data) == stats(
        (FrontendStatistics(name="web", addresses=(), traffic=traffic()),),
        (backend("app", server("s1", address="", weight=5)),),
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"backends": []}, "'frontends' is missing"),
        ({"frontends": {}, "backends": []}, "expected list"),
        ({"frontends": [1], "backends": []}, "a list of objects"),
        ({"frontends": [{"name": "web", "traffic": {**_ZERO, "bytes_in": "1"}}]}, "'bytes_in'"),
        ({"frontends": [{"name": "web", "traffic": {**_ZERO, "bytes_in": True}}]}, "'bytes_in'"),
        (
            {
                "frontends": [],
                "backends": [
                    {
                        "name": "a",
                        "traffic": _ZERO,
                        "servers": [],
                        "response_time": {"bounds": [1.0], "cumulative": [1], "sum": 0},
                    }
                ],
            },
            "1 bounds but 1 counts",
        ),
        (
            {
                "frontends": [],
                "backends": [],
                "workers": [{"index": 1, "pid": None, "state": "stopped", "statistics": []}],
            },
            "'statistics'",
        ),
        ([], "expected an object"),
    ],
)
def test_json_errors(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        statistics_from_json(data)
