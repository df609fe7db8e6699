"""Rate limits and per-source connection counts (sans-IO): driven with explicit times.

"Exact at the boundary", as these tests pin it down for ``requests = 100, period = 10s``:

* in a key's first period (from its first request), the 100th request passes and the 101st is
  refused, whether they all come at once or spread up to the period's last instant;
* the period after a full one gives one more request each ``period / requests`` (0.1 s): at the
  period's end the 101st is still refused, 0.1 s later it passes (the window slides);
* after two idle periods a key has its whole budget again;
* ``retry_after`` is exact: a moment before it the request is refused, a moment after it passes.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from trilb.config import RateLimit
from trilb.core.ratelimit import (
    KEY_BYTES,
    Limiter,
    RateTable,
    SourceConnections,
    check_limits,
    table_key,
)
from trilb.core.routing import RequestView

#: a moment: much less than any interval the tests use, much more than float rounding
EPSILON = 1e-6


def hits(table: RateTable, key: bytes, now: float, count: int) -> list[bool]:
    return [table.hit(key, now).allowed for _ in range(count)]


# -- exactness at the boundary ---------------------------------------------------------------------


@pytest.mark.parametrize("start", [0.0, 1234.5])
def test_a_burst_the_100th_passes_the_101st_is_refused(start: float) -> None:
    table = RateTable(100, 10.0, 1000)
    assert hits(table, b"a", start, 100) == [True] * 100
    assert not table.hit(b"a", start).allowed
    assert not table.hit(b"a", start + 10.0 - EPSILON).allowed  # to the period's last instant


def test_spread_over_the_period_the_101st_is_refused_at_its_end() -> None:
    table = RateTable(100, 10.0, 1000)
    for index in range(100):  # one every 0.1 s, the last at 9.9 s
        assert table.hit(b"a", index * 0.1).allowed, index
    assert not table.hit(b"a", 9.99).allowed


def test_after_a_full_period_one_more_each_period_over_requests() -> None:
    table = RateTable(100, 10.0, 1000)
    hits(table, b"a", 0.0, 100)
    assert not table.hit(b"a", 10.0).allowed  # the period has ended, but it is still in the window
    assert not table.hit(b"a", 10.1 - EPSILON).allowed
    assert table.hit(b"a", 10.1 + EPSILON).allowed  # 1/100 of it has slid out: one more
    assert not table.hit(b"a", 10.1 + 2 * EPSILON).allowed
    assert table.hit(b"a", 10.2 + EPSILON).allowed
    assert not table.hit(b"a", 10.2 + 2 * EPSILON).allowed


def test_the_rate_is_the_sliding_estimate() -> None:
    table = RateTable(100, 10.0, 1000)
    hits(table, b"a", 0.0, 60)
    assert table.rate(b"a", 5.0) == 60
    assert table.rate(b"a", 12.5) == pytest.approx(60 * 0.75)  # a quarter of it slid out
    assert table.rate(b"a", 20.0) == 0.0  # two periods on: forgotten
    assert table.rate(b"unknown", 0.0) == 0.0


def test_two_idle_periods_give_the_whole_budget_again() -> None:
    table = RateTable(100, 10.0, 1000)
    hits(table, b"a", 0.0, 100)
    assert hits(table, b"a", 20.0, 100) == [True] * 100
    assert not table.hit(b"a", 20.0).allowed


def test_a_period_half_full_lets_the_rest_through_at_once_after_it() -> None:
    table = RateTable(10, 10.0, 1000)
    hits(table, b"a", 0.0, 4)
    # at 15 s, half of the 4 is still in the window: 2, so 8 more pass, not 9
    assert hits(table, b"a", 15.0, 9) == [True] * 8 + [False]


def test_one_request_per_period() -> None:
    table = RateTable(1, 10.0, 1000)
    assert table.hit(b"a", 0.0).allowed
    verdict = table.hit(b"a", 5.0)
    assert not verdict.allowed
    assert verdict.retry_after == pytest.approx(15.0)  # two periods from the first: forgotten
    assert not table.hit(b"a", 20.0 - EPSILON).allowed
    assert table.hit(b"a", 20.0).allowed


def test_refused_requests_are_not_counted() -> None:
    table = RateTable(10, 10.0, 1000)
    hits(table, b"a", 0.0, 10)
    for step in range(1000):  # a client that never stops retrying
        assert not table.hit(b"a", step * 0.001).allowed
    assert table.rate(b"a", 5.0) == 10
    assert table.hit(b"a", 11.0 + EPSILON).allowed  # as if it had not retried at all


def test_keys_are_independent() -> None:
    table = RateTable(2, 10.0, 1000)
    assert hits(table, b"a", 0.0, 3) == [True, True, False]
    assert hits(table, b"b", 0.0, 3) == [True, True, False]


def test_a_clock_that_goes_back_counts_as_the_periods_start() -> None:
    table = RateTable(2, 10.0, 1000)
    hits(table, b"a", 5.0, 2)
    verdict = table.hit(b"a", 4.0)
    assert not verdict.allowed
    assert verdict.retry_after > 0


# -- Retry-After -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_retry_after_is_exact(seed: int) -> None:
    """Whatever the history: refused just before ``retry_after``, allowed just after."""
    rng = random.Random(seed)
    requests = rng.choice([1, 2, 3, 10, 100])
    period = rng.choice([1.0, 10.0, 60.0])
    table = RateTable(requests, period, 1000)
    now = 0.0
    for _ in range(rng.randrange(1, 400)):  # some history, over the limit at times
        now += rng.expovariate(3 * requests / period)
        table.hit(b"k", now)
    while (verdict := table.hit(b"k", now)).allowed:  # then a burst, to be refused now
        pass
    retry_after = verdict.retry_after
    assert 0 < retry_after <= 2 * period
    if retry_after > EPSILON:
        assert not table.check(b"k", now + retry_after - EPSILON).allowed
    assert table.check(b"k", now + retry_after + EPSILON).allowed


def test_retry_after_values() -> None:
    table = RateTable(100, 10.0, 1000)
    hits(table, b"a", 0.0, 100)
    assert table.hit(b"a", 4.0).retry_after == pytest.approx(6.1)  # 10 s + 0.1 s to slide
    table = RateTable(100, 10.0, 1000)
    hits(table, b"a", 0.0, 50)
    # at 12 s, 50 * 0.8 = 40 of the previous period count: 60 more pass
    assert hits(table, b"a", 12.0, 61) == [True] * 60 + [False]
    verdict = table.hit(b"a", 12.0)
    assert not verdict.allowed
    # this period has 60 (room for 39 more): wait until only 39 of the previous 50 remain
    assert verdict.retry_after == pytest.approx(20.0 - 12.0 - 39 / 50 * 10.0)


# -- logging once per period -----------------------------------------------------------------------


def test_first_refusal_once_per_key_and_period() -> None:
    table = RateTable(1, 10.0, 1000)
    table.hit(b"a", 0.0)
    assert table.hit(b"a", 1.0).first_refusal
    assert not table.hit(b"a", 2.0).first_refusal
    table.hit(b"b", 2.0)
    assert table.hit(b"b", 2.0).first_refusal  # another key: its own first
    verdict = table.hit(b"a", 11.0)  # the next period (still refused: the window slides)
    assert not verdict.allowed
    assert verdict.first_refusal


# -- a bounded table -------------------------------------------------------------------------------


def test_the_table_never_grows_beyond_its_size() -> None:
    table = RateTable(5, 10.0, 100)
    for index in range(10_000):
        table.hit(str(index).encode(), index * 0.001)
        assert len(table) <= 100
    assert len(table) == 100
    assert b"9999" in table
    assert b"0" not in table


def test_the_least_recently_seen_key_makes_room() -> None:
    table = RateTable(1, 10.0, 2)
    table.hit(b"a", 0.0)
    table.hit(b"b", 1.0)
    table.hit(b"a", 2.0)  # refused, but seen: b is now the least recently seen
    table.hit(b"c", 3.0)
    assert (b"a" in table, b"b" in table, b"c" in table) == (True, False, True)
    assert not table.hit(b"a", 4.0).allowed  # a kept its count


def test_expired_keys_go_first() -> None:
    table = RateTable(1, 10.0, 10)
    table.hit(b"old1", 0.0)
    table.hit(b"old2", 0.0)
    table.hit(b"recent", 15.0)
    table.hit(b"new", 25.0)  # old1 and old2 are two periods idle: dropped, though not full
    assert (b"old1" in table, b"old2" in table) == (False, False)
    assert (b"recent" in table, b"new" in table) == (True, True)


def test_an_evicted_key_starts_again() -> None:
    table = RateTable(1, 10.0, 1)
    table.hit(b"a", 0.0)
    table.hit(b"b", 0.0)  # a is pushed out
    assert table.hit(b"a", 0.0).allowed  # the price of a bounded table: a forgets


def test_checking_an_unknown_key_stores_nothing() -> None:
    table = RateTable(1, 10.0, 10)
    assert table.check(b"a", 0.0).allowed
    assert len(table) == 0


@pytest.mark.parametrize(("requests", "period", "size"), [(0, 1.0, 1), (1, 0.0, 1), (1, 1.0, 0)])
def test_bad_table_parameters(requests: int, period: float, size: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateTable(requests, period, size)


# -- keys ------------------------------------------------------------------------------------------


def test_long_keys_are_kept_as_a_digest() -> None:
    short = b"x" * KEY_BYTES
    assert table_key(short) == short
    long_key = table_key(b"x" * (KEY_BYTES + 1))
    assert len(long_key) == 17
    assert long_key.startswith(b"#")
    assert long_key != table_key(b"y" * (KEY_BYTES + 1))
    assert long_key == table_key(b"x" * (KEY_BYTES + 1))


def view(*headers: tuple[bytes, bytes], client_ip: str = "192.0.2.7") -> RequestView:
    return RequestView(method=b"GET", target=b"/", headers=headers, client_ip=client_ip)


def limiter(key: str, requests: int = 1) -> Limiter:
    return Limiter(RateLimit(requests=requests, period=10.0, key=key))


def test_src_key_is_the_client_address() -> None:
    src = limiter("src")
    assert src.key(view()) == ipaddress.ip_address("192.0.2.7").packed
    # an IPv4 client on a dual-stack socket is the same client
    assert src.key(view(client_ip="::ffff:192.0.2.7")) == src.key(view())
    assert src.key(view(client_ip="2001:db8::1")) == ipaddress.ip_address("2001:db8::1").packed
    assert src.key(view(client_ip="unix")) is None  # no address: not limited
    assert src.describe(b"\xc0\x00\x02\x07") == "src"


def test_header_key_is_its_last_value_any_case() -> None:
    header = limiter("header:X-Client")
    assert header.key(view((b"x-client", b" a "))) == b"a"
    assert header.key(view((b"X-Client", b"a"), (b"X-CLIENT", b"b"))) == b"b"
    assert header.key(view((b"X-Other", b"a"))) is None
    assert header.key(view((b"X-Client", b""))) is None
    assert header.key(view((b"X-Client", b"z" * 1000))) == table_key(b"z" * 1000)
    assert header.describe(b"abc") == "header:X-Client='abc'"
    assert header.describe(b"q" * 50) == f"header:X-Client='{'q' * 37}...'"
    assert header.describe(table_key(b"z" * 1000)).startswith("header:X-Client='#")


def test_cookie_key_is_its_last_value() -> None:
    cookie = limiter("cookie:session")
    assert cookie.key(view((b"Cookie", b"a=1; session=abc"))) == b"abc"
    assert cookie.key(view((b"Cookie", b"session=1"), (b"Cookie", b"session=2"))) == b"2"
    assert cookie.key(view((b"Cookie", b"Session=abc"))) is None  # cookie names keep their case
    assert cookie.key(view((b"Cookie", b"session="))) is None
    assert cookie.key(view()) is None


# -- the frontend's and the route's limits together ------------------------------------------------


def test_a_request_refused_by_one_limit_is_counted_by_none() -> None:
    frontend = limiter("src", requests=10)
    route = limiter("header:X-Client", requests=1)
    request = view((b"X-Client", b"a"))
    assert check_limits([frontend, route], request, 0.0) is None
    refusal = check_limits([frontend, route], request, 0.0)
    assert refusal is not None
    assert (refusal.limiter, refusal.key) == (route, b"a")
    assert not refusal.verdict.allowed
    client = ipaddress.ip_address("192.0.2.7").packed
    assert frontend.table.rate(client, 0.0) == 1  # the refused request was not counted


def test_a_limit_without_a_key_does_not_apply() -> None:
    frontend = limiter("src", requests=2)
    route = limiter("header:X-Client", requests=1)
    request = view()  # no X-Client
    assert check_limits([frontend, route], request, 0.0) is None
    assert check_limits([frontend, route], request, 0.0) is None
    refusal = check_limits([frontend, route], request, 0.0)
    assert refusal is not None
    assert refusal.limiter is frontend
    assert len(route.table) == 0


# -- connections per source ------------------------------------------------------------------------


def test_source_connections_cap_and_release() -> None:
    sources = SourceConnections(2)
    assert sources.open("10.0.0.1").allowed
    assert sources.open("10.0.0.1").allowed
    first = sources.open("10.0.0.1")
    assert (first.allowed, first.first_refusal) == (False, True)
    again = sources.open("10.0.0.1")
    assert (again.allowed, again.first_refusal) == (False, False)  # logged once
    assert sources.open("10.0.0.2").allowed  # another address has its own count
    assert sources.count("10.0.0.1") == 2
    sources.close("10.0.0.1")
    assert sources.open("10.0.0.1").allowed  # a slot came free
    assert not sources.open("10.0.0.1").first_refusal  # still the same stretch
    sources.close("10.0.0.1")
    sources.close("10.0.0.1")
    sources.close("10.0.0.2")
    assert len(sources) == 0  # no connection, no entry: bounded by the open connections
    assert sources.count("10.0.0.1") == 0
    assert sources.open("10.0.0.1").allowed
    sources.open("10.0.0.1")
    assert sources.open("10.0.0.1").first_refusal  # a new stretch: logged again
