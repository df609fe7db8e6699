"""Balancing algorithms: exact pick sequences and shares (pure, deterministic)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from trilb.core.balance import Algorithm, RoundRobin, StaticRoundRobin, make_algorithm

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


@pytest.mark.parametrize("name", ["leastconn", "RoundRobin", "", "static_rr", "random"])
def test_make_algorithm_unknown_name(name: str) -> None:
    with pytest.raises(ValueError, match="unknown balance algorithm"):
        make_algorithm(name, [1])


def test_algorithms_do_not_keep_the_callers_list() -> None:
    weights: Sequence[int] = [1, 1]
    algorithm = RoundRobin(weights)
    assert isinstance(weights, list)
    weights[0] = 0
    assert picks(algorithm, 4) == "abab"
