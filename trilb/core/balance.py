"""Balancing algorithms: which server gets the next request.

Pure, deterministic state machines over server *indices* (only ``random`` draws, from an
injectable :class:`random.Random`); the shell maps indices to servers and says which are eligible
right now (not yet tried for this request, healthy, under max_connections). Every algorithm
answers ``pick(eligible, key)`` with an index, or None when no eligible server has a weight above 0.

=================  ==========================================================================
``roundrobin``     smooth weighted round-robin, weights apply at once (:class:`RoundRobin`)
``static-rr``      a weighted order fixed at start (:class:`StaticRoundRobin`)
``leastconn``      lowest load/weight, ties in turn (:class:`LeastConn`)
``first``          lowest index with room under its limit (:class:`First`)
``random``         power of two choices on load/weight (:class:`PowerOfTwoChoices`)
``source``         hash of the client address (:class:`HashAlgorithm`, as the three below)
``uri``            hash of the path (``uri_whole``: path and query)
``url_param:N``    hash of query parameter N, else roundrobin
``header:N``       hash of header field N, else roundrobin
=================  ==========================================================================

Hashing maps keys to servers ``map-based`` or ``consistent`` (``hash_type``, see
:mod:`trilb.core.hashing`). Load-aware algorithms read ``loads`` (requests in flight per server, a
sequence the shell owns and updates) at pick time. A pick costs at most one pass over the servers
and allocates nothing; a consistent-hash pick is a binary search over the ring.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from .hashing import (
    ConsistentRing,
    KeyExtractor,
    RequestKey,
    header_key,
    map_lookup,
    source_key,
    stable_hash,
    uri_key,
    url_param_key,
)

__all__ = [
    "HASH_TYPES",
    "Algorithm",
    "Eligible",
    "First",
    "HashAlgorithm",
    "LeastConn",
    "PowerOfTwoChoices",
    "RequestKey",
    "RoundRobin",
    "StaticRoundRobin",
    "make_algorithm",
    "slow_start_weight",
]

Eligible = Callable[[int], bool]

HASH_TYPES = ("map-based", "consistent")


def _always(_index: int) -> bool:
    return True


class Algorithm(Protocol):
    def pick(self, eligible: Eligible = ..., key: RequestKey | None = None) -> int | None:
        """The index of the next server, or None when no eligible server has a weight.
        ``key`` is what hashing algorithms hash; the others ignore it."""

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

    def pick(self, eligible: Eligible = _always, key: RequestKey | None = None) -> int | None:
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

    def pick(self, eligible: Eligible = _always, key: RequestKey | None = None) -> int | None:
        order = self._order
        for _ in range(len(order)):
            index = order[self._next]
            self._next = (self._next + 1) % len(order)
            if eligible(index):
                return index
        return None


class LeastConn:
    """HAProxy's ``leastconn``: the eligible server with the lowest load/weight (compared as
    ``load_a * weight_b < load_b * weight_a``, no floats). Among equals, the scan starts just past
    the previous pick, so ties are served in turn (equal loads spread evenly)."""

    __slots__ = ("_loads", "_next", "_weights")

    def __init__(self, weights: Sequence[int], loads: Sequence[int]) -> None:
        self._weights = list(weights)
        self._loads = loads
        self._next = 0

    def __repr__(self) -> str:
        return f"<LeastConn weights={self._weights} loads={list(self._loads)}>"

    def set_weight(self, index: int, weight: int) -> None:
        self._weights[index] = weight

    def pick(self, eligible: Eligible = _always, key: RequestKey | None = None) -> int | None:
        weights = self._weights
        loads = self._loads
        size = len(weights)
        best = -1
        best_load = 0
        best_weight = 1
        index = self._next
        for _ in range(size):
            weight = weights[index]
            if weight > 0 and eligible(index):
                load = loads[index]
                if best < 0 or load * best_weight < best_load * weight:
                    best, best_load, best_weight = index, load, weight
            index += 1
            if index == size:
                index = 0
        if best < 0:
            return None
        self._next = best + 1 if best + 1 < size else 0
        return best


class First:
    """HAProxy's ``first``: the lowest-index eligible server whose load is below its limit
    (``None``: no limit), so traffic fills servers in order and the last ones can idle. Weights
    only matter as 0 (skipped). None when every candidate is full: the request should wait."""

    __slots__ = ("_limits", "_loads", "_weights")

    def __init__(
        self, weights: Sequence[int], loads: Sequence[int], limits: Sequence[int | None]
    ) -> None:
        self._weights = list(weights)
        self._loads = loads
        self._limits = list(limits)

    def __repr__(self) -> str:
        return f"<First loads={list(self._loads)} limits={self._limits}>"

    def set_weight(self, index: int, weight: int) -> None:
        self._weights[index] = weight

    def pick(self, eligible: Eligible = _always, key: RequestKey | None = None) -> int | None:
        loads = self._loads
        limits = self._limits
        for index, weight in enumerate(self._weights):
            if weight <= 0:
                continue
            limit = limits[index]
            if (limit is None or loads[index] < limit) and eligible(index):
                return index
        return None


class PowerOfTwoChoices:
    """HAProxy's ``random`` (two draws): two distinct eligible servers drawn at random in
    proportion to their weights; the one with the lower load/weight wins (the first drawn on a
    tie). Spreads like weighted random when idle and steers away from loaded servers when busy,
    without leastconn's herding onto one server."""

    __slots__ = ("_loads", "_rng", "_scratch", "_weights")

    def __init__(
        self, weights: Sequence[int], loads: Sequence[int], rng: random.Random | None = None
    ) -> None:
        self._weights = list(weights)
        self._loads = loads
        self._rng = rng if rng is not None else random.Random()
        #: the weights of this pick's eligible servers (0 for the others); reused, no allocation
        self._scratch = [0] * len(self._weights)

    def __repr__(self) -> str:
        return f"<PowerOfTwoChoices weights={self._weights} loads={list(self._loads)}>"

    def set_weight(self, index: int, weight: int) -> None:
        self._weights[index] = weight

    def pick(self, eligible: Eligible = _always, key: RequestKey | None = None) -> int | None:
        scratch = self._scratch
        total = 0
        count = 0
        last = -1
        for index, weight in enumerate(self._weights):
            if weight > 0 and eligible(index):
                scratch[index] = weight
                total += weight
                count += 1
                last = index
            else:
                scratch[index] = 0
        if count <= 1:
            return last if count else None
        first = _draw(scratch, self._rng.randrange(total))
        first_weight = scratch[first]
        scratch[first] = 0
        second = _draw(scratch, self._rng.randrange(total - first_weight))
        loads = self._loads
        if loads[second] * first_weight < loads[first] * scratch[second]:
            return second
        return first


def _draw(weights: list[int], ticket: int) -> int:
    """The index whose cumulative weight range holds ``ticket`` (0 <= ticket < sum(weights))."""
    for index, weight in enumerate(weights):
        if ticket < weight:
            return index
        ticket -= weight
    raise AssertionError("unreachable: ticket < total weight")


class HashAlgorithm:
    """``source``, ``uri``, ``url_param:NAME``, ``header:NAME``: the same request key goes to the
    same server while the eligible set and weights stay the same. ``map-based`` or ``consistent``
    (see :mod:`trilb.core.hashing`). Requests without a key (no such parameter or header, or no
    :class:`RequestKey` given at all) are spread by smooth weighted round-robin, as in HAProxy."""

    __slots__ = ("_extract", "_fallback", "_ring", "_scratch", "_weights", "hash_type")

    def __init__(
        self, weights: Sequence[int], extract: KeyExtractor, *, hash_type: str = "map-based"
    ) -> None:
        if hash_type not in HASH_TYPES:
            raise ValueError(f"unknown hash_type {hash_type!r} (expected one of {HASH_TYPES})")
        self.hash_type = hash_type
        self._extract = extract
        self._weights = list(weights)
        self._fallback = RoundRobin(weights)
        self._ring = ConsistentRing(weights) if hash_type == "consistent" else None
        self._scratch = [0] * len(self._weights)

    def __repr__(self) -> str:
        return f"<HashAlgorithm {self.hash_type} weights={self._weights}>"

    def set_weight(self, index: int, weight: int) -> None:
        self._weights[index] = weight
        self._fallback.set_weight(index, weight)
        if self._ring is not None:
            self._ring.set_weight(index, weight)  # the ring is rebuilt at the next pick

    def pick(self, eligible: Eligible = _always, key: RequestKey | None = None) -> int | None:
        data = None if key is None else self._extract(key)
        if data is None:
            return self._fallback.pick(eligible)
        hashed = stable_hash(data)
        if self._ring is not None:
            return self._ring.lookup(hashed, eligible)
        return map_lookup(self._weights, eligible, hashed, self._scratch)


def make_algorithm(
    name: str,
    weights: Sequence[int],
    *,
    loads: Sequence[int] | None = None,
    limits: Sequence[int | None] | None = None,
    hash_type: str = "map-based",
    uri_whole: bool = False,
    rng: random.Random | None = None,
) -> Algorithm:
    """The algorithm called ``name`` (the config's ``balance``) over servers with ``weights``.

    ``loads``: requests in flight per server, owned and updated by the caller; required by
    ``leastconn``, ``first`` and ``random``, ignored by the others. ``limits``: each server's
    max_connections (None: unlimited), for ``first``. ``hash_type`` and ``uri_whole`` apply to the
    hashing algorithms, ``rng`` to ``random``. ValueError for an unknown name or a missing or
    mis-sized argument.
    """
    if hash_type not in HASH_TYPES:
        raise ValueError(f"unknown hash_type {hash_type!r} (expected one of {HASH_TYPES})")
    if name == "roundrobin":
        return RoundRobin(weights)
    if name == "static-rr":
        return StaticRoundRobin(weights)
    if name in ("leastconn", "first", "random"):
        if loads is None:
            raise ValueError(f"balance algorithm {name!r} needs the servers' loads")
        _check_length("loads", loads, weights)
        if name == "leastconn":
            return LeastConn(weights, loads)
        if name == "random":
            return PowerOfTwoChoices(weights, loads, rng)
        if limits is None:
            limits = [None] * len(weights)
        _check_length("limits", limits, weights)
        return First(weights, loads, limits)
    extract = _key_extractor(name, uri_whole)
    return HashAlgorithm(weights, extract, hash_type=hash_type)


def _key_extractor(name: str, uri_whole: bool) -> KeyExtractor:
    if name == "source":
        return source_key
    if name == "uri":
        return uri_key(uri_whole)
    kind, colon, argument = name.partition(":")
    if colon and kind in ("url_param", "header"):
        if not argument:
            raise ValueError(f"balance algorithm {name!r} needs a name after the colon")
        return (url_param_key if kind == "url_param" else header_key)(argument.encode())
    raise ValueError(f"unknown balance algorithm {name!r}")


def _check_length(what: str, values: Sequence[object], weights: Sequence[int]) -> None:
    if len(values) != len(weights):
        raise ValueError(f"{len(values)} {what} for {len(weights)} servers")


def slow_start_weight(weight: int, elapsed: float, duration: float) -> int:
    """A server's effective weight ``elapsed`` seconds into its ``slow_start``: from 1 (so it
    gets some traffic at once, as in HAProxy) up to its full weight, linearly."""
    if weight <= 0 or elapsed >= duration:
        return weight
    return max(1, int(weight * max(0.0, elapsed) / duration))
