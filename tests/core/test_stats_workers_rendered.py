"""The workers in the stats renderings (sans-IO): the dashboard's Workers table, the
``trilb_worker_*`` metrics and ``/stats.json``'s ``workers``, ``show stat``'s per-worker rows
and ``show info``'s lines; and nothing of them without workers."""

from __future__ import annotations

import csv
import json
import re
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from trilb.admin import AdminServer, stat_rows, worker_info
from trilb.core.admin_commands import STAT_COLUMNS, StatRow, render_csv
from trilb.dashboard import render_html
from trilb.metrics import render_json, render_metrics
from trilb.stats import (
    BackendStatistics,
    FrontendStatistics,
    ServerStatistics,
    Statistics,
    StatsView,
    TrafficStatistics,
    WorkerStatistics,
    combine,
)

if TYPE_CHECKING:
    from trilb.balancer import Balancer

_ZERO = {field.name: 0 for field in attrs.fields(TrafficStatistics)}


def traffic(**figures: int) -> TrafficStatistics:
    return TrafficStatistics(**{**_ZERO, **figures})


def figures(requests: int, *, state: str = "UP") -> Statistics:
    """One worker's snapshot: frontends web and api, backend app with server s1."""
    return Statistics(
        frontends=tuple(
            FrontendStatistics(
                name=name,
                addresses=("0.0.0.0:80",),
                traffic=traffic(
                    current_connections=share,
                    total_connections=10 * share,
                    total_requests=requests * share,
                    bytes_in=1000 * share,
                    bytes_out=2**20 * share,
                ),
            )
            for name, share in (("web", 1), ("api", 2))
        ),
        backends=(
            BackendStatistics(
                name="app",
                traffic=traffic(total_requests=requests),
                servers=(
                    ServerStatistics(
                        name="s1",
                        address="10.0.0.1:80",
                        weight=100,
                        traffic=traffic(total_requests=requests),
                        idle_connections=0,
                        state=state,
                    ),
                ),
            ),
        ),
    )


def workers_view() -> StatsView:
    """Two workers: 1 running (pid 4242), 2 restarting (no process)."""
    one, two = figures(5), figures(3, state="DOWN")
    workers = (
        WorkerStatistics(
            index=1, pid=4242, state="running", restarts=1, uptime=190.0, statistics=one
        ),
        WorkerStatistics(
            index=2, pid=None, state="restarting", restarts=3, uptime=0.0, statistics=two
        ),
    )
    return StatsView(statistics=combine([one, two], workers=workers))


def plain_view() -> StatsView:
    """The same totals, from a balancer in one process."""
    view = workers_view()
    return attrs.evolve(view, statistics=attrs.evolve(view.statistics, workers=()))


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(family: Any, name: str | None = None, **labels: str) -> float:
    (found,) = [
        s
        for s in family.samples
        if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return float(found.value)


# -- the dashboard ---------------------------------------------------------------------------------


def test_dashboard_workers_table() -> None:
    page = render_html(workers_view()).decode()
    section = re.search(r"<section><h2>Workers.*?</section>", page)
    assert section is not None
    assert page.index("<h2>Workers") < page.index("<h2>Frontends")
    assert "1 of 2 running" in section[0]
    rows = re.findall(r"<tr class=[^>]*>.*?</tr>", section[0])
    assert len(rows) == 2

    def cells(row: str) -> dict[str, str]:
        found = re.findall(r'<td data-label="([^"]*)"[^>]*>(.*?)</td>', row)
        return {label: re.sub(r"<[^>]+>", "", text) for label, text in found}

    one, two = cells(rows[0]), cells(rows[1])
    assert one == {
        "Worker": "Worker 1",
        "State": "running",
        "PID": "4242",
        "Restarts": "1",
        "Uptime": "3m10s",
        "Sessions cur": "3",
        "Sessions total": "30",
        "Requests total": "15",
        "Bytes in": "2.9 KiB",
        "Bytes out": "3.0 MiB",
    }
    assert (two["State"], two["PID"], two["Restarts"], two["Uptime"]) == (
        "restarting",
        "-",
        "3",
        "-",
    )
    assert two["Requests total"] == "9"
    assert 'class="st st-UP">running<' in rows[0]
    assert 'class="st st-DRAIN">restarting<' in rows[1]
    # the totals stay in the other tables: web has 5 + 3 requests over both workers
    assert re.search(r'data-label="Requests total">8<', page)


def test_dashboard_without_workers_has_no_workers_table() -> None:
    page = render_html(plain_view()).decode()
    assert "Workers" not in page
    assert "<h2>Frontends" in page
    # the rest of the page (its style, hence its policy, included) is the same with workers
    with_workers = render_html(workers_view()).decode()
    section = re.search(r"<section><h2>Workers.*?</section>", with_workers)
    assert section is not None
    assert with_workers.replace(section[0], "") == page


# -- /metrics and /stats.json ----------------------------------------------------------------------


def test_metrics_per_worker() -> None:
    found = families(render_metrics(workers_view()).decode())
    assert value(found["trilb_worker_up"], worker="1") == 1
    assert value(found["trilb_worker_up"], worker="2") == 0
    assert value(found["trilb_worker_state"], worker="2", state="restarting") == 1
    assert value(found["trilb_worker_state"], worker="2", state="running") == 0
    assert value(found["trilb_worker_restarts"], worker="2") == 3
    assert found["trilb_worker_restarts"].type == "counter"
    assert value(found["trilb_worker_uptime_seconds"], worker="1") == 190.0
    assert value(found["trilb_worker_current_sessions"], worker="1") == 3
    assert value(found["trilb_worker_sessions"], worker="1") == 30
    assert value(found["trilb_worker_current_requests"], worker="1") == 0
    assert value(found["trilb_worker_requests"], worker="1") == 15
    assert value(found["trilb_worker_requests"], worker="2") == 9
    assert value(found["trilb_worker_bytes_in"], worker="2") == 3000
    assert value(found["trilb_worker_bytes_out"], worker="1") == 3 * 2**20
    # the other families stay the totals
    assert value(found["trilb_frontend_requests"], frontend="web") == 8
    assert value(found["trilb_server_requests"], backend="app", server="s1") == 8
    assert value(found["trilb_server_up"], backend="app", server="s1") == 0  # a tie: DOWN


def test_metrics_without_workers_have_no_worker_series() -> None:
    text = render_metrics(plain_view()).decode()
    assert "trilb_worker" not in text
    assert "trilb_server_response_seconds_count" in text
    with_workers = render_metrics(workers_view()).decode()
    assert with_workers.startswith(text)  # the worker series come after the totals
    assert "# TYPE trilb_worker_up gauge" in with_workers[len(text) :]


def test_stats_json_workers() -> None:
    document = json.loads(render_json(workers_view()))
    one, two = document["workers"]
    assert {k: one[k] for k in ("index", "pid", "state", "restarts", "uptime")} == {
        "index": 1,
        "pid": 4242,
        "state": "running",
        "restarts": 1,
        "uptime": 190.0,
    }
    assert (one["traffic"]["total_requests"], one["traffic"]["bytes_in"]) == (15, 3000)
    assert (two["pid"], two["traffic"]["total_connections"]) == (None, 30)
    assert document["frontends"][0]["traffic"]["total_requests"] == 8
    del document["workers"]
    assert json.loads(render_json(plain_view())) == document


# -- the admin socket ------------------------------------------------------------------------------


def parsed(rows: list[StatRow]) -> list[dict[str, str]]:
    lines = render_csv(rows)
    return list(csv.DictReader([lines[0][2:], *lines[1:]]))


def test_show_stat_rows_per_worker() -> None:
    view = workers_view()
    rows = parsed(stat_rows(view.statistics))
    names = [(r["pxname"], r["svname"], r["pid"]) for r in rows]
    block = [("web", "FRONTEND"), ("api", "FRONTEND"), ("app", "s1"), ("app", "BACKEND")]
    assert names == [
        *((px, sv, "") for px, sv in block),
        *((px, sv, "1") for px, sv in block),
        *((px, sv, "2") for px, sv in block),
    ]
    assert [r["req_tot"] for r in rows if r["svname"] == "FRONTEND"] == [
        "8",
        "16",
        "5",
        "10",
        "3",
        "6",
    ]
    assert [r["status"] for r in rows if r["svname"] == "s1"] == ["DOWN", "UP", "DOWN"]
    assert all(r["status"] == "OPEN" for r in rows if r["svname"] == "FRONTEND")


def test_show_stat_a_stopping_worker_and_draining() -> None:
    statistics = workers_view().statistics
    one, two = statistics.workers
    statistics = attrs.evolve(statistics, workers=(attrs.evolve(one, state="stopping"), two))
    frontends = [r for r in stat_rows(statistics) if r["svname"] == "FRONTEND"]
    assert [(r["pid"], r["status"]) for r in frontends] == [
        (None, "OPEN"),
        (None, "OPEN"),
        (1, "STOP"),
        (1, "STOP"),
        (2, "OPEN"),
        (2, "OPEN"),
    ]
    assert {r["status"] for r in stat_rows(statistics, draining=True) if r["type"] == 0} == {"STOP"}


def test_show_stat_without_workers() -> None:
    rows = parsed(stat_rows(plain_view().statistics))
    assert len(rows) == 4
    assert {r["pid"] for r in rows} == {""}
    assert STAT_COLUMNS.index("pid") == STAT_COLUMNS.index("downtime") + 1  # HAProxy's order
    assert STAT_COLUMNS.index("type") == STAT_COLUMNS.index("pid") + 1


def admin_for(statistics: Statistics) -> AdminServer:
    """An AdminServer over a stand-in balancer with just what ``show info`` reads."""
    config = SimpleNamespace(
        global_=SimpleNamespace(max_connections=1000),
        backend=lambda name: SimpleNamespace(balance="roundrobin"),
    )
    balancer = SimpleNamespace(
        log=None, statistics=lambda: statistics, uptime=75.0, draining=False, config=config
    )
    return AdminServer(cast("Balancer", balancer))


def info(statistics: Statistics) -> list[tuple[str, str]]:
    lines = admin_for(statistics).info()
    return [(key, rest) for key, _, rest in (line.partition(": ") for line in lines)]


def test_show_info_with_workers() -> None:
    lines = info(workers_view().statistics)
    keys = [key for key, _ in lines]
    assert keys.index("Nbproc") == keys.index("Pid") - 1
    assert dict(lines)["Nbproc"] == "2"
    assert dict(lines)["CumReq"] == "24"  # the totals: 8 + 16
    assert [rest for key, rest in lines if key == "Worker"] == [
        "1 pid 4242 running (1 restart, up 0d 0h03m10s)",
        "2 pid - restarting (3 restarts)",
    ]
    assert keys[-2:] == ["Worker", "Worker"]


def test_show_info_without_workers() -> None:
    keys = [key for key, _ in info(plain_view().statistics)]
    assert "Nbproc" not in keys
    assert "Worker" not in keys
    assert keys[:4] == ["Name", "Version", "Pid", "Uptime"]


@pytest.mark.parametrize(
    ("worker", "line"),
    [
        (
            WorkerStatistics(
                index=3,
                pid=7,
                state="stopping",
                restarts=0,
                uptime=90061.0,
                statistics=Statistics(frontends=(), backends=()),
            ),
            "Worker: 3 pid 7 stopping (0 restarts, up 1d 1h01m01s)",
        ),
        (
            WorkerStatistics(
                index=1,
                pid=None,
                state="stopped",
                restarts=1,
                uptime=0.0,
                statistics=Statistics(frontends=(), backends=()),
            ),
            "Worker: 1 pid - stopped (1 restart)",
        ),
    ],
)
def test_worker_info(worker: WorkerStatistics, line: str) -> None:
    assert worker_info([worker]) == [line]
