"""Balancing algorithms: exact pick sequences and shares (pure, deterministic)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from trilb.core.balance import (
    Algorithm,
    First,
    HashAlgorithm,
    LeastConn,
    PowerOfTwoChoices,
    RequestKey,
    RoundRobin,
    StaticRoundRobin,
    make_algorithm,
)

NAMES = "abcdefgh"


def picks(algorithm: Algorithm, count: int, eligible: Callable[[int], bool] | None = None) -> str:
    """``count`` picks as letters (a = server 0); "-" for None."""
    out = []
    for _ in range(count):
        index = algorithm.pick() if eligible is None else algorithm.pick(eligible)
        out.append("-" if index is None else NAMES[index])
    return "".join(out)


# -- RoundRobin: smooth weighted round-robin ---------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([5, 1, 1], "aabacaa" * 2),  # interleaved, not aaaaabc
        ([1, 1, 1], "abc" * 4),
        ([2, 1], "aba" * 4),
        ([1, 2], "bab" * 4),
        ([3, 2], "ababa" * 2),
        ([100, 100], "ab" * 5),
        ([1], "a" * 5),
        ([5, 0, 1], "aaacaa" * 2),  # weight 0 never picked
        ([0, 7], "b" * 5),
        ([0, 0], "-" * 3),
        ([], "-" * 3),
    ],
)
def test_roundrobin_exact_sequence(weights: list[int], expected: str) -> None:
    assert picks(RoundRobin(weights), len(expected)) == expected


@pytest.mark.parametrize(
    "weights",
    [[5, 1, 1], [1, 1, 1], [3, 2], [100, 1], [256, 255, 1, 0], [7, 11, 13], [1, 0, 0, 2]],
)
def test_roundrobin_distribution_is_exact_over_whole_cycles(weights: list[int]) -> None:
    total = sum(weights)
    cycles = 10_000 // total + 1
    algorithm = RoundRobin(weights)
    counts = Counter(algorithm.pick() for _ in range(cycles * total))
    assert counts == Counter({i: w * cycles for i, w in enumerate(weights) if w > 0})


def test_roundrobin_every_cycle_is_exact() -> None:
    """Not only over 10k picks: every window of one cycle length has the exact shares."""
    algorithm = RoundRobin([5, 3, 2])
    for _ in range(1000):
        window = Counter(algorithm.pick() for _ in range(10))
        assert window == Counter({0: 5, 1: 3, 2: 2})


@pytest.mark.parametrize(
    ("weights", "excluded", "expected"),
    [
        ([5, 1, 1], {0}, "bcbcbc"),
        ([5, 1, 1], {1}, "aaacaa" * 2),
        ([5, 1, 1], {1, 2}, "aaaa"),
        ([5, 1, 1], {0, 1, 2}, "---"),
        ([1, 1, 1], {2}, "abab"),
        ([0, 1], {1}, "--"),  # the only eligible server has weight 0
    ],
)
def test_roundrobin_eligible_filter(weights: list[int], excluded: set[int], expected: str) -> None:
    algorithm = RoundRobin(weights)
    assert picks(algorithm, len(expected), lambda i: i not in excluded) == expected


def test_roundrobin_ineligible_skip_does_not_disturb_shares() -> None:
    """Skipping a server once (a retry elsewhere) leaves the long-run shares exact."""
    algorithm = RoundRobin([2, 1, 1])
    assert algorithm.pick(lambda i: i != 0) in (1, 2)
    counts = Counter(algorithm.pick() for _ in range(4000))
    assert counts == Counter({0: 2000, 1: 1000, 2: 1000})


def test_roundrobin_eligible_receives_every_index_with_weight() -> None:
    seen: list[int] = []

    def eligible(index: int) -> bool:
        seen.append(index)
        return True

    RoundRobin([1, 0, 2]).pick(eligible)
    assert seen == [0, 2]  # weight-0 servers are not even asked


@pytest.mark.parametrize(
    ("weights", "changes", "expected"),
    [
        ([1, 1], [(0, 3)], "aaba" * 3),
        ([1, 1], [(1, 0)], "a" * 6),  # drained at run time
        ([0, 1], [(0, 1)], "ab" * 3),  # back from weight 0
        ([1, 1, 1], [(0, 0), (1, 0), (2, 0)], "-" * 3),
        ([5, 1, 1], [(0, 1)], "abc" * 3),
    ],
)
def test_roundrobin_set_weight_applies_at_once(
    weights: list[int], changes: list[tuple[int, int]], expected: str
) -> None:
    algorithm = RoundRobin(weights)
    for index, weight in changes:
        algorithm.set_weight(index, weight)
    assert picks(algorithm, len(expected)) == expected


def test_roundrobin_set_weight_mid_stream_gives_new_shares() -> None:
    algorithm = RoundRobin([1, 1])
    assert picks(algorithm, 7) == "abababa"
    algorithm.set_weight(1, 4)
    counts = Counter(algorithm.pick() for _ in range(5000))
    assert counts == Counter({0: 1000, 1: 4000})


# -- StaticRoundRobin: a fixed order -----------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([5, 1, 1], "aabacaa" * 3),
        ([1, 1, 1], "abc" * 3),
        ([3, 2], "ababa" * 3),
        ([0, 2, 1], "bcb" * 3),
        ([4], "a" * 5),
        ([0, 0], "-" * 3),
        ([], "-" * 2),
    ],
)
def test_static_rr_order(weights: list[int], expected: str) -> None:
    assert picks(StaticRoundRobin(weights), len(expected)) == expected


@pytest.mark.parametrize(
    ("weights", "excluded", "expected"),
    [
        ([5, 1, 1], {0}, "bcbcbc"),
        ([5, 1, 1], {1}, "aaacaaaaacaa"),
        ([1, 1], {0, 1}, "--"),
    ],
)
def test_static_rr_eligible_filter(weights: list[int], excluded: set[int], expected: str) -> None:
    assert picks(StaticRoundRobin(weights), len(expected), lambda i: i not in excluded) == expected


@pytest.mark.parametrize("change", [(0, 0), (1, 100), (2, 0)])
def test_static_rr_set_weight_does_not_apply(change: tuple[int, int]) -> None:
    algorithm = StaticRoundRobin([5, 1, 1])
    algorithm.set_weight(*change)
    assert picks(algorithm, 14) == "aabacaa" * 2


def test_static_rr_distribution_over_10k_picks() -> None:
    algorithm = StaticRoundRobin([7, 2, 1])
    counts = Counter(algorithm.pick() for _ in range(10_000))
    assert counts == Counter({0: 7000, 1: 2000, 2: 1000})


# -- make_algorithm ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"), [("roundrobin", RoundRobin), ("static-rr", StaticRoundRobin)]
)
def test_make_algorithm(name: str, cls: type) -> None:
    algorithm = make_algorithm(name, [2, 1])
    assert isinstance(algorithm, cls)
    assert picks(algorithm, 6) == "abaaba"


@pytest.mark.parametrize("name", ["least_conn", "RoundRobin", "", "static_rr", "hdr(host)"])
def test_make_algorithm_unknown_name(name: str) -> None:
    with pytest.raises(ValueError, match="unknown balance algorithm"):
        make_algorithm(name, [1])


def test_algorithms_do_not_keep_the_callers_list() -> None:
    weights: Sequence[int] = [1, 1]
    algorithm = RoundRobin(weights)
    assert isinstance(weights, list)
    weights[0] = 0
    assert picks(algorithm, 4) == "abab"


# -- every algorithm: the shared contract ------------------------------------------------------

ALL_NAMES = [
    "roundrobin",
    "static-rr",
    "leastconn",
    "first",
    "random",
    "source",
    "uri",
    "url_param:id",
    "header:X-User",
]


def build(
    name: str, weights: Sequence[int], loads: Sequence[int] | None = None, **options: Any
) -> Algorithm:
    """``make_algorithm`` with idle loads and a seeded generator unless given."""
    options.setdefault("rng", random.Random(1))
    return make_algorithm(
        name, weights, loads=[0] * len(weights) if loads is None else loads, **options
    )


def request(i: int) -> RequestKey:
    """A distinct request key per ``i``: each hashing algorithm finds something to hash."""
    return RequestKey(
        client_ip=f"10.0.{i // 256}.{i % 256}",
        path=f"/item/{i}".encode(),
        query=f"id={i}".encode(),
        headers=[(b"x-user", f"user{i}".encode())],
    )


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("roundrobin", RoundRobin),
        ("static-rr", StaticRoundRobin),
        ("leastconn", LeastConn),
        ("first", First),
        ("random", PowerOfTwoChoices),
        ("source", HashAlgorithm),
        ("uri", HashAlgorithm),
        ("url_param:sid", HashAlgorithm),
        ("header:Host", HashAlgorithm),
    ],
)
def test_make_algorithm_every_name(name: str, cls: type) -> None:
    assert isinstance(build(name, [1, 1]), cls)


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("hash_type", ["map-based", "consistent"])
def test_never_ineligible_nor_weight_zero(name: str, hash_type: str) -> None:
    algorithm = build(name, [30, 0, 20, 10], hash_type=hash_type)
    chosen = {algorithm.pick(lambda i: i != 3, request(i)) for i in range(300)}
    chosen |= {algorithm.pick(lambda i: i != 3) for _ in range(30)}  # without a key too
    assert chosen <= {0, 2}
    assert chosen == ({0} if name == "first" else {0, 2})


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("hash_type", ["map-based", "consistent"])
@pytest.mark.parametrize(
    ("weights", "eligible"),
    [
        ([1, 1], lambda i: False),
        ([0, 0], lambda i: True),
        ([0, 1], lambda i: i == 0),  # the only eligible server has weight 0
        ([], lambda i: True),
    ],
)
def test_none_when_nothing_eligible_has_weight(
    name: str, hash_type: str, weights: list[int], eligible: Callable[[int], bool]
) -> None:
    algorithm = build(name, weights, hash_type=hash_type)
    assert algorithm.pick(eligible, request(7)) is None
    assert algorithm.pick(eligible) is None


@pytest.mark.parametrize("name", ["leastconn", "first", "random"])
def test_make_algorithm_load_aware_needs_loads(name: str) -> None:
    with pytest.raises(ValueError, match="needs the servers' loads"):
        make_algorithm(name, [1, 1])
    with pytest.raises(ValueError, match="3 loads for 2 servers"):
        make_algorithm(name, [1, 1], loads=[0, 0, 0])


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("first", {"loads": [0], "limits": [1, 2]}, "2 limits for 1 servers"),
        ("source", {"hash_type": "ring"}, "unknown hash_type 'ring'"),
        ("roundrobin", {"hash_type": "Consistent"}, "unknown hash_type"),
        ("url_param:", {}, "needs a name after the colon"),
        ("header:", {}, "needs a name after the colon"),
        ("cookie:SERVERID", {}, "unknown balance algorithm"),
        ("uri:whole", {}, "unknown balance algorithm"),
    ],
)
def test_make_algorithm_bad_arguments(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_algorithm(name, [1], **options)


@pytest.mark.parametrize("name", ["roundrobin", "static-rr"])
def test_rotating_algorithms_ignore_the_key(name: str) -> None:
    algorithm = make_algorithm(name, [2, 1])
    assert [algorithm.pick(key=request(i)) for i in range(6)] == [0, 1, 0, 0, 1, 0]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("leastconn", "<LeastConn weights=[3, 1] loads=[2, 0]>"),
        ("first", "<First loads=[2, 0] limits=[None, None]>"),
        ("random", "<PowerOfTwoChoices weights=[3, 1] loads=[2, 0]>"),
        ("source", "<HashAlgorithm map-based weights=[3, 1]>"),
    ],
)
def test_repr_shows_state(name: str, shown: str) -> None:
    assert repr(build(name, [3, 1], [2, 0])) == shown


# -- LeastConn ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "loads", "expected"),
    [
        ([1, 1, 1], [3, 1, 2], 1),
        ([1, 1, 1], [0, 0, 0], 0),  # a tie: the first in turn
        ([3, 1], [2, 1], 0),  # 2/3 < 1/1
        ([1, 3], [1, 2], 1),  # 2/3 < 1/1
        ([100, 50], [9, 5], 0),  # 9/100 < 5/50
        ([1, 1], [0, 5], 0),
        ([0, 1], [0, 5], 1),  # weight 0 never, even idle
        ([256, 1], [1000, 4], 0),  # 1000/256 < 4/1
        ([256, 1], [1030, 4], 1),  # 1030/256 > 4/1
    ],
)
def test_leastconn_picks_lowest_load_per_weight(
    weights: list[int], loads: list[int], expected: int
) -> None:
    assert build("leastconn", weights, loads).pick() == expected


@pytest.mark.parametrize(
    ("weights", "loads", "expected"),
    [
        ([1, 1, 1], [0, 0, 0], "abc" * 3),
        ([1, 1, 1, 1], [2, 1, 1, 1], "bcd" * 3),  # ties among the least loaded, in turn
        ([2, 1], [2, 1], "ab" * 3),  # equal load per weight is a tie too
        ([1, 1, 1], [4, 0, 4], "b" * 5),
    ],
)
def test_leastconn_rotates_ties_with_fixed_loads(
    weights: list[int], loads: list[int], expected: str
) -> None:
    assert picks(build("leastconn", weights, loads), len(expected)) == expected


def serve(algorithm: Algorithm, loads: list[int], count: int) -> str:
    """``count`` picks, each adding a request in flight to the server picked (as the shell does)."""
    out = []
    for _ in range(count):
        index = algorithm.pick()
        assert index is not None
        loads[index] += 1
        out.append(NAMES[index])
    return "".join(out)


def test_leastconn_under_uneven_load() -> None:
    loads = [5, 0, 0]
    algorithm = build("leastconn", [1, 1, 1], loads)
    assert serve(algorithm, loads, 10) == "bc" * 5  # the idle ones catch up, alternating
    assert loads == [5, 5, 5]
    assert serve(algorithm, loads, 6) == "abc" * 2  # then all three in turn
    loads[1] -= 3  # three requests on b finish
    assert serve(algorithm, loads, 3) == "bbb"
    loads[2] = 0  # c's requests all finish
    assert serve(algorithm, loads, 4) == "cccc"


def test_leastconn_loads_follow_the_weights() -> None:
    loads = [0, 0, 0]
    algorithm = build("leastconn", [200, 100, 50], loads)
    serve(algorithm, loads, 700)
    assert loads == [400, 200, 100]


def test_leastconn_eligible_and_set_weight() -> None:
    loads = [0, 3, 3]
    algorithm = build("leastconn", [1, 1, 1], loads)
    assert picks(algorithm, 4, lambda i: i != 0) == "bcbc"
    algorithm.set_weight(2, 3)  # c: 3/3 = 1 < b: 3/1
    assert picks(algorithm, 2, lambda i: i != 0) == "cc"
    algorithm.set_weight(0, 0)
    assert picks(algorithm, 2) == "cc"
    algorithm.set_weight(0, 1)
    assert picks(algorithm, 2) == "aa"


# -- First -------------------------------------------------------------------------------------


def test_first_fills_servers_in_order_up_to_their_limits() -> None:
    loads = [0, 0, 0]
    algorithm = build("first", [1, 1, 1], loads, limits=[2, 3, None])
    assert serve(algorithm, loads, 8) == "aabbbccc"
    loads[0] -= 1  # a slot frees on the first server: it is first again
    assert serve(algorithm, loads, 2) == "ac"


@pytest.mark.parametrize(
    ("weights", "loads", "limits", "excluded", "expected"),
    [
        ([1, 1], [1, 1], [1, 1], set(), None),  # all full: wait
        ([1, 1], [1, 0], [1, 1], set(), 1),
        ([1, 100], [0, 0], [1, 1], set(), 0),  # weights do not matter...
        ([0, 1], [0, 0], [1, 1], set(), 1),  # ...except 0
        ([1, 1], [0, 0], [1, 1], {0}, 1),
        ([1, 1], [0, 0], [0, 5], set(), 1),  # a limit of 0 takes nothing
        ([1, 1], [50, 0], [None, None], set(), 0),  # no limit
    ],
)
def test_first_table(
    weights: list[int],
    loads: list[int],
    limits: list[int | None],
    excluded: set[int],
    expected: int | None,
) -> None:
    algorithm = build("first", weights, loads, limits=limits)
    assert algorithm.pick(lambda i: i not in excluded) == expected


def test_first_without_limits_and_set_weight() -> None:
    loads = [0, 0]
    algorithm = build("first", [1, 1], loads)
    assert serve(algorithm, loads, 3) == "aaa"
    algorithm.set_weight(0, 0)
    assert serve(algorithm, loads, 2) == "bb"
    algorithm.set_weight(0, 7)
    assert serve(algorithm, loads, 1) == "a"


# -- PowerOfTwoChoices (random) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "weights", [[1, 1], [100, 100, 100, 100, 100], [100, 50, 200, 150], [256, 1, 30], [3, 0, 1]]
)
def test_random_idle_distribution_follows_weights(weights: list[int]) -> None:
    """With nothing in flight every pair ties and the first draw wins: weighted random."""
    algorithm = build("random", weights, rng=random.Random(4))
    counts = Counter(algorithm.pick() for _ in range(10_000))
    total = sum(weights)
    for index, weight in enumerate(weights):
        assert abs(counts[index] / 10_000 - weight / total) <= 0.02, (index, counts)


def test_random_prefers_the_less_loaded_of_two() -> None:
    algorithm = build("random", [1, 1, 1], [0, 5, 10], rng=random.Random(2))
    counts = Counter(algorithm.pick() for _ in range(10_000))
    assert counts[2] == 0  # the most loaded loses every pair it is drawn in
    assert abs(counts[0] / 10_000 - 2 / 3) <= 0.02  # the least loaded wins when drawn (2 in 3)
    assert abs(counts[1] / 10_000 - 1 / 3) <= 0.02


def test_random_compares_load_per_weight() -> None:
    algorithm = build("random", [300, 100], [2, 1], rng=random.Random(3))
    assert {algorithm.pick() for _ in range(100)} == {0}  # 2/300 < 1/100


def test_random_is_reproducible_with_a_seeded_generator() -> None:
    first = build("random", [1, 2, 3, 4], rng=random.Random(42))
    second = build("random", [1, 2, 3, 4], rng=random.Random(42))
    assert picks(first, 50) == picks(second, 50)
    assert len(set(picks(first, 50))) == 4


def test_random_one_eligible_and_set_weight() -> None:
    algorithm = build("random", [1, 1, 1], [9, 0, 0])
    assert picks(algorithm, 5, lambda i: i == 0) == "aaaaa"  # the only one, however loaded
    algorithm.set_weight(1, 0)
    algorithm.set_weight(2, 0)
    assert picks(algorithm, 3) == "aaa"
    algorithm.set_weight(2, 5)
    assert picks(algorithm, 3) == "ccc"  # a loaded, c idle: c wins every pair


def test_random_default_generator() -> None:
    algorithm = make_algorithm("random", [1, 1], loads=[0, 0])
    assert {algorithm.pick() for _ in range(200)} == {0, 1}
