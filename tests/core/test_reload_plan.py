"""Hot reload, the decisions: listeners kept/opened/closed by address, servers matched by name,
what carries over (weights, health, pools, stick tables), what needs a restart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from trilb.config import (
    AdminConfig,
    BackendConfig,
    Config,
    FrontendConfig,
    GlobalConfig,
    HealthCheck,
    LogConfig,
    ServerConfig,
    StatsConfig,
    Timeouts,
    UpstreamTLS,
)
from trilb.core.health import HealthState
from trilb.core.reload import (
    carried_health,
    carried_weight,
    plan_backends,
    plan_listeners,
    unapplied_changes,
)
from trilb.core.sticky import StickTable


def frontend(name: str, *binds: str) -> FrontendConfig:
    return FrontendConfig(name=name, bind=list(binds), default_backend="app")


def config(
    frontends: Sequence[FrontendConfig] = (),
    backends: Sequence[BackendConfig] = (),
    **options: object,
) -> Config:
    backends = backends or [BackendConfig(name="app", servers=[server("s1")])]
    frontends = frontends or [frontend("web", "127.0.0.1:8080")]
    return Config(frontends=frontends, backends=backends, **options)  # type: ignore[arg-type]


def server(name: str, port: int = 9001, **options: object) -> ServerConfig:
    return ServerConfig(name=name, address=f"127.0.0.1:{port}", **options)  # type: ignore[arg-type]


# -- listeners ----------------------------------------------------------------------------------


def test_a_bind_in_both_keeps_its_listener_new_ones_open_removed_ones_close() -> None:
    running = [frontend("web", "127.0.0.1:80", "127.0.0.1:81"), frontend("old", "127.0.0.1:90")]
    new = [frontend("web", "127.0.0.1:81", "127.0.0.1:82"), frontend("api", "127.0.0.1:83")]
    plan = plan_listeners(running, new)
    assert plan.keep == {("web", 0): ("web", 1)}
    assert plan.open == (("web", 1), ("api", 0))
    assert plan.close == (("web", 0), ("old", 0))


def test_port_zero_is_kept_like_any_address() -> None:
    running = [frontend("web", "127.0.0.1:0")]
    plan = plan_listeners(running, running)
    assert plan.keep == {("web", 0): ("web", 0)}
    assert plan.open == plan.close == ()


def test_an_address_twice_is_matched_own_frontend_first_then_in_order() -> None:
    running = [frontend("a", "127.0.0.1:0"), frontend("b", "127.0.0.1:0")]
    new = [frontend("b", "127.0.0.1:0"), frontend("c", "127.0.0.1:0"), frontend("d", "127.0.0.1:0")]
    plan = plan_listeners(running, new)
    assert plan.keep == {("b", 0): ("b", 0), ("c", 0): ("a", 0)}
    assert plan.open == (("d", 0),)
    assert plan.close == ()


def test_a_bind_may_move_to_another_frontend() -> None:
    plan = plan_listeners(
        [frontend("old", "unix:/run/x.sock")], [frontend("new", "unix:/run/x.sock")]
    )
    assert plan.keep == {("new", 0): ("old", 0)}
    assert plan.close == ()


def test_another_host_on_the_same_port_is_another_bind() -> None:
    plan = plan_listeners([frontend("web", "*:8080")], [frontend("web", "127.0.0.1:8080")])
    assert plan.keep == {}
    assert plan.open == (("web", 0),)
    assert plan.close == (("web", 0),)


# -- servers and backends -----------------------------------------------------------------------


def test_servers_are_matched_by_backend_and_server_name() -> None:
    running = config(
        backends=[
            BackendConfig(name="app", servers=[server("s1"), server("s2", 9002)]),
            BackendConfig(name="gone", servers=[server("x")]),
        ]
    )
    new = config(
        backends=[
            BackendConfig(
                name="app", servers=[server("s3", 9003), server("s2", 9002), server("s1")]
            ),
            BackendConfig(name="fresh", servers=[server("x")]),
        ]
    )
    (app,) = plan_backends(running, new)
    assert app.backend == "app"
    assert [(s.server, s.old_index, s.new_index) for s in app.servers] == [
        ("s2", 1, 1),
        ("s1", 0, 2),
    ]
    assert app.index_map() == {1: 1, 0: 2}
    assert all(s.pool for s in app.servers)
    assert not app.stick_table


@pytest.mark.parametrize(
    ("change", "pool"),
    [
        ({}, True),
        ({"weight": 5}, True),
        ({"address": "127.0.0.1:9999"}, False),
        ({"tls": UpstreamTLS(verify=False)}, False),
        ({"send_proxy": "v2"}, False),
    ],
)
def test_idle_connections_carry_over_when_connecting_did_not_change(
    change: dict[str, Any], pool: bool
) -> None:
    before = server("s1")
    after = attrs.evolve(before, **change)
    running = config(backends=[BackendConfig(name="app", servers=[before])])
    new = config(backends=[BackendConfig(name="app", servers=[after])])
    (app,) = plan_backends(running, new)
    assert app.servers[0].pool is pool


@pytest.mark.parametrize("change", [{"pool_max_idle": 3}, {"timeouts": Timeouts(pool_idle=1.0)}])
def test_new_pool_settings_make_a_new_pool(change: dict[str, Any]) -> None:
    running = config()
    new = config(backends=[attrs.evolve(running.backends[0], **change)])
    (app,) = plan_backends(running, new)
    assert not app.servers[0].pool


@pytest.mark.parametrize(
    ("before", "after", "health"),
    [
        (HealthCheck(), HealthCheck(rise=5), True),
        (HealthCheck(), None, False),
        (None, HealthCheck(), False),
        (None, None, False),
    ],
)
def test_health_carries_over_with_checks_before_and_after(
    before: HealthCheck | None, after: HealthCheck | None, health: bool
) -> None:
    running = config(
        backends=[BackendConfig(name="app", servers=[server("s1")], health_check=before)]
    )
    new = config(backends=[BackendConfig(name="app", servers=[server("s1")], health_check=after)])
    (app,) = plan_backends(running, new)
    assert app.servers[0].health is health


@pytest.mark.parametrize(
    ("before", "after", "carried"),
    [("source", "source", True), ("source", None, False), (None, "source", False)],
)
def test_the_stick_table_carries_over_with_stick_before_and_after(
    before: str | None, after: str | None, carried: bool
) -> None:
    def with_stick(stick: str | None) -> Config:
        return config(backends=[BackendConfig(name="app", servers=[server("s1")], stick=stick)])  # type: ignore[arg-type]

    (app,) = plan_backends(with_stick(before), with_stick(after))
    assert app.stick_table is carried


@pytest.mark.parametrize(
    ("configured", "current", "new_configured", "weight"),
    [
        (100, 100, 100, 100),  # nothing changed
        (100, 100, 50, 50),  # the file changed it
        (100, 20, 100, 20),  # the operator changed it, the file did not: the operator's stays
        (100, 20, 50, 50),  # both changed it: the file wins
        (100, 0, 100, 0),  # weight 0 set at run time survives
    ],
)
def test_carried_weight(configured: int, current: int, new_configured: int, weight: int) -> None:
    assert carried_weight(configured, current, new_configured) == weight


# -- health -------------------------------------------------------------------------------------


def test_an_up_confirmed_server_stays_confirmed() -> None:
    state = HealthState(2, 3)
    state.record(True, "ok")  # confirmed: no failure counted
    carried = carried_health(state, 2, 3)
    assert (carried.up, carried.failures) == (True, 0)
    assert carried.record(False, "bad") is None  # one failure does not take it DOWN


def test_a_down_server_stays_down_until_rise_good_checks() -> None:
    state = HealthState(3, 3, up=False)
    state.record(True, "ok")
    carried = carried_health(state, 3, 3)
    assert (carried.up, carried.successes) == (False, 1)
    assert carried.record(True, "ok") is None
    transition = carried.record(True, "ok")
    assert transition is not None
    assert transition.up


def test_counts_are_clamped_to_new_thresholds() -> None:
    down = HealthState(5, 3, up=False)
    for _ in range(4):
        down.record(True, "ok")
    carried = carried_health(down, 2, 3)
    assert (carried.up, carried.successes, carried.rise) == (False, 1, 2)
    up = HealthState(2, 5)  # unconfirmed: 4 failures counted
    carried = carried_health(up, 2, 2)
    assert (carried.up, carried.failures, carried.fall) == (True, 1, 2)


# -- what needs a restart -----------------------------------------------------------------------


def test_unapplied_changes_name_sections_and_global_keys() -> None:
    running = config()
    assert unapplied_changes(running, running) == ()
    applied = attrs.evolve(running, global_=GlobalConfig(max_connections=5, timeout_drain=1.0))
    assert unapplied_changes(running, applied) == ()
    new = attrs.evolve(
        running,
        log=LogConfig(target="stderr"),
        stats=StatsConfig(bind="127.0.0.1:0"),
        admin=AdminConfig(socket="/tmp/a.sock"),
        global_=GlobalConfig(pidfile="/tmp/trilb.pid"),
    )
    assert unapplied_changes(running, new) == ("[log]", "[stats]", "[admin]", "global.pidfile")


# -- stick table --------------------------------------------------------------------------------


def test_a_remapped_stick_table_follows_servers_and_drops_the_gone() -> None:
    table = StickTable(10, 60.0)
    table.store("10.0.0.1", 0, 1.0)
    table.store("10.0.0.2", 1, 2.0)
    table.store("10.0.0.3", 2, 3.0)
    remapped = table.remapped({0: 1, 2: 0}, 10, 60.0)
    assert len(remapped) == 2
    assert remapped.lookup("10.0.0.1", 4.0) == 1
    assert remapped.lookup("10.0.0.2", 4.0) is None
    assert remapped.lookup("10.0.0.3", 4.0) == 0
    assert table.lookup("10.0.0.2", 4.0) == 1  # the running table is left as it was


def test_a_smaller_remapped_table_keeps_the_most_recent() -> None:
    table = StickTable(10, 60.0)
    for i in range(5):
        table.store(f"10.0.0.{i}", 0, float(i))
    remapped = table.remapped({0: 0}, 2, 5.0)
    assert [remapped.lookup(f"10.0.0.{i}", 5.0) for i in range(5)] == [None, None, None, 0, 0]
    assert remapped.expire == 5.0
