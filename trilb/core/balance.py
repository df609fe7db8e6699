"""Balancing algorithms: which server gets the next request.

Pure, deterministic state machines over server *indices*; the shell maps indices to servers and says
which are eligible right now (not yet tried for this request, and later: healthy, under maxconn).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["Algorithm", "RoundRobin", "StaticRoundRobin", "make_algorithm"]

Eligible = Callable[[int], bool]


def _always(_index: int) -> bool:
    return True


class Algorithm(Protocol):
    def pick(self, eligible: Eligible = ...) -> int | None:
        """The index of the next server, or None when no eligible server has a weight."""

    def set_weight(self, index: int, weight: int) -> None: ...


class RoundRobin:
    """Smooth weighted round-robin (as in nginx): weights are honoured exactly over each cycle
    and picks are interleaved (5:1:1 gives a a b a c a a, not a a a a a b c). Weights may change at
    any time; ineligible servers are skipped without disturbing the others' shares.
    """

    __slots__ = ("_current", "_weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = list(weights)
        self._current = [0] * len(self._weights)

    def set_weight(self, index: int, weight: int) -> None:
        self._weights[index] = weight
        self._current[index] = 0

    def pick(self, eligible: Eligible = _always) -> int | None:
        best = -1
        total = 0
        weights = self._weights
        current = self._current
        for index, weight in enumerate(weights):
            if weight <= 0 or not eligible(index):
                continue
            current[index] += weight
            total += weight
            if best < 0 or current[index] > current[best]:
                best = index
        if best < 0:
            return None
        current[best] -= total
        return best


class StaticRoundRobin:
    """HAProxy's ``static-rr``: a fixed weighted order computed once; weight changes do not apply
    until restart. Cheaper per pick than :class:`RoundRobin` with many servers.
    """

    __slots__ = ("_next", "_order", "_size")

    def __init__(self, weights: Sequence[int]) -> None:
        self._size = len(weights)
        planner = RoundRobin(weights)
        order = []
        for _ in range(sum(w for w in weights if w > 0)):
            index = planner.pick()
            assert index is not None
            order.append(index)
        self._order = order
        self._next = 0

    def set_weight(self, index: int, weight: int) -> None:
        """Static: ignored until the configuration is reloaded (as in HAProxy)."""

    def pick(self, eligible: Eligible = _always) -> int | None:
        order = self._order
        for _ in range(len(order)):
            index = order[self._next]
            self._next = (self._next + 1) % len(order)
            if eligible(index):
                return index
        return None


def make_algorithm(name: str, weights: Sequence[int]) -> Algorithm:
    if name == "roundrobin":
        return RoundRobin(weights)
    if name == "static-rr":
        return StaticRoundRobin(weights)
    raise ValueError(f"unknown balance algorithm {name!r}")
