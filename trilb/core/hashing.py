"""What hashing balance algorithms look at, and the two ways of turning a hash into a server.

Theory of operation
-------------------
A hashing algorithm (``source``, ``uri``, ``url_param:NAME``, ``header:NAME``) reduces a request
to a byte string (:data:`KeyExtractor`), hashes it with :func:`stable_hash` to a 64-bit integer,
and maps that integer to a server index:

* **map-based** (:func:`map_lookup`): the hash modulo the total weight of the servers eligible for
  this pick, laid out over the eligible servers in index order, each taking ``weight`` consecutive
  slots. Exact shares, no state, but when a server comes or goes the total changes and most keys
  land elsewhere (HAProxy's documented trade-off of ``hash-type map-based``).
* **consistent** (:class:`ConsistentRing`): every server owns ``weight * POINTS_PER_WEIGHT``
  points on a 64-bit ring; a key belongs to the first point clockwise from its hash whose server
  is eligible. A server's points depend only on its index and weight, so removing (or making
  ineligible) one server moves only its own keys, and adding one moves only the keys it takes
  over (~1/N).

The hash is BLAKE2b cut to 8 bytes: stable across processes, Python versions and machines (unlike
the randomized built-in ``hash()``), well spread even for near-identical inputs such as
consecutive IP addresses or ``/item/1``, ``/item/2``, and ~0.4 µs per key, negligible next to
handling a request.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left
from collections.abc import Callable, Sequence

import attrs

__all__ = [
    "POINTS_PER_WEIGHT",
    "ConsistentRing",
    "KeyExtractor",
    "RequestKey",
    "header_key",
    "map_lookup",
    "source_key",
    "stable_hash",
    "uri_key",
    "url_param_key",
]

#: Ring points per unit of weight (HAProxy uses the same factor, ``BE_WEIGHT_SCALE``). With
#: trilb's weights (0-256, default 100) a default server has 1,600 points, which keeps its share of
#: the key space within ~2.5% (relative; one standard deviation is ~1/sqrt(points)) of what its
#: weight says; the heaviest (256) has 4,096. A ring of 20 default servers is 32,000 entries
#: (~2 MB, built in ~10 ms at start and ~2 ms after a weight change). More points would smooth
#: little and cost memory and rebuild time. Small weights give a coarse ring: five servers of
#: weight 1 (16 points each) get shares 10-30% instead of 20% each, so keep consistent-hash weights
#: in the tens or hundreds (1, 2, 3 -> 100, 200, 300).
POINTS_PER_WEIGHT = 16


@attrs.frozen
class RequestKey:
    """What hashing algorithms may look at; built once per request by the shell."""

    client_ip: str
    #: the request target's path, without the query
    path: bytes
    #: the query string without "?", b"" if none
    query: bytes
    #: header fields as received (original case)
    headers: Sequence[tuple[bytes, bytes]]


#: The bytes to hash for a request, or None when it has none (then the algorithm falls back to
#: roundrobin, as HAProxy does for an absent URL parameter or header).
KeyExtractor = Callable[[RequestKey], bytes | None]


def stable_hash(data: bytes) -> int:
    """A 64-bit hash of ``data`` that is the same in every process and on every machine."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest())


# -- keys -------------------------------------------------------------------------------------


def source_key(key: RequestKey) -> bytes:
    """``balance source``: the client address as text (the shell should pass the address the
    connection came from, or the one a PROXY header announced, in one canonical form)."""
    return key.client_ip.encode()


def uri_key(whole: bool) -> KeyExtractor:
    """``balance uri``: the path, or with ``whole`` the path and the query (``/a?b=1``)."""

    def extract(key: RequestKey) -> bytes:
        if whole and key.query:
            return key.path + b"?" + key.query
        return key.path

    return extract


def url_param_key(name: bytes) -> KeyExtractor:
    """``balance url_param:NAME``: the value of the first ``NAME=`` in the query, compared as
    received (no percent-decoding, case-sensitive, as in HAProxy). None when the parameter is
    absent or its value is empty."""
    prefix = name + b"="

    def extract(key: RequestKey) -> bytes | None:
        query = key.query
        if prefix not in query:  # the common case costs one substring search, no split
            return None
        for part in query.split(b"&"):
            if part.startswith(prefix):
                return part[len(prefix) :] or None
        return None

    return extract


def header_key(name: bytes) -> KeyExtractor:
    """``balance header:NAME``: the value of the first ``NAME`` header field (name compared
    case-insensitively, value without surrounding whitespace). None when absent or empty."""
    lowered = name.lower()
    size = len(lowered)

    def extract(key: RequestKey) -> bytes | None:
        for field, value in key.headers:
            if len(field) == size and field.lower() == lowered:
                return value.strip(b" \t") or None
        return None

    return extract


# -- map-based --------------------------------------------------------------------------------


def map_lookup(
    weights: Sequence[int], eligible: Callable[[int], bool], hashed: int, scratch: list[int]
) -> int | None:
    """The server for ``hashed`` on the weighted map of the eligible servers (hash modulo their
    total weight), or None when none is eligible with a weight. ``scratch`` (as long as
    ``weights``) is overwritten, so a pick allocates nothing and asks ``eligible`` once per
    server with a weight."""
    total = 0
    for index, weight in enumerate(weights):
        if weight > 0 and eligible(index):
            total += weight
            scratch[index] = total
        else:
            scratch[index] = 0
    if total == 0:
        return None
    slot = hashed % total
    for index, upto in enumerate(scratch):
        if upto > slot:
            return index
    raise AssertionError("unreachable: slot < total")


# -- consistent -------------------------------------------------------------------------------


class ConsistentRing:
    """A hash ring with ``weight * POINTS_PER_WEIGHT`` points per server.

    Server ``i``'s points are the first ``n`` values of a fixed sequence derived from ``i`` alone,
    so a weight change adds or removes only that server's points (at the tail of its sequence)
    and leaves every other point where it was. The sorted ring is rebuilt lazily, at the first
    lookup after a weight change: the changed server's points are regenerated and sorted, then
    the servers' sorted runs are merged (Timsort merges presorted runs: ~2 ms for 20 servers of
    weight 100). Eligibility is asked per lookup and never rebuilds the ring.

    Each ring entry is one int, ``position << 16 | server``: half the memory of two parallel
    lists, one bisect, and ties between equal positions (never seen with 64-bit positions)
    still ordered deterministically.
    """

    __slots__ = ("_dirty", "_ring", "_runs", "_servers", "_weights")

    def __init__(self, weights: Sequence[int]) -> None:
        if len(weights) > _MAX_SERVERS:
            raise ValueError(f"consistent hashing supports at most {_MAX_SERVERS} servers")
        self._weights = list(weights)
        #: per server, its entries sorted; None when its weight changed since (to regenerate)
        self._runs: list[list[int] | None] = [None] * len(self._weights)
        self._ring: list[int] = []
        self._servers = 0  # servers with at least one point
        self._dirty = True
        self._rebuild()  # at start (configuration time), not at the first request

    def __repr__(self) -> str:
        return f"<ConsistentRing weights={self._weights} points={len(self)}>"

    def __len__(self) -> int:
        """The number of points on the ring (after any pending rebuild)."""
        if self._dirty:
            self._rebuild()
        return len(self._ring)

    def set_weight(self, index: int, weight: int) -> None:
        if self._weights[index] != weight:
            self._weights[index] = weight
            self._runs[index] = None
            self._dirty = True

    def lookup(self, hashed: int, eligible: Callable[[int], bool]) -> int | None:
        """The server of the first point at or after ``hashed`` (clockwise, wrapping) whose
        server is eligible, or None. ``eligible`` is asked at most once per server. O(log points)
        plus the walk past ineligible servers' points (a step or two unless most are out)."""
        if self._dirty:
            self._rebuild()
        ring = self._ring
        size = len(ring)
        if size == 0:
            return None
        start = bisect_left(ring, hashed << _OWNER_BITS)
        remaining = self._servers  # servers not yet found ineligible in this lookup
        rejected = 0  # and those that were, as a bit set
        for step in range(size):
            owner = ring[(start + step) % size] & _OWNER_MASK
            bit = 1 << owner
            if rejected & bit:
                continue
            if eligible(owner):
                return owner
            rejected |= bit
            remaining -= 1
            if remaining == 0:
                return None
        raise AssertionError("unreachable: the walk meets every server's points")

    def _rebuild(self) -> None:
        ring: list[int] = []
        servers = 0
        for index, weight in enumerate(self._weights):
            run = self._runs[index]
            if run is None:
                run = self._runs[index] = _server_run(index, max(weight, 0) * POINTS_PER_WEIGHT)
            if run:
                servers += 1
                ring += run
        ring.sort()
        self._ring = ring
        self._servers = servers
        self._dirty = False


_OWNER_BITS = 16
_OWNER_MASK = (1 << _OWNER_BITS) - 1
_MAX_SERVERS = 1 << _OWNER_BITS
#: points derived per BLAKE2b call (a 64-byte digest cut into eight 64-bit positions)
_BLOCK = 8
_UNPACK_BLOCK = struct.Struct(">8Q").unpack


def _server_run(index: int, count: int) -> list[int]:
    """Server ``index``'s first ``count`` ring entries, sorted."""
    entries = []
    for block in range(-(-count // _BLOCK)):
        seed = f"trilb-server-{index}-{block}".encode()
        for position in _UNPACK_BLOCK(hashlib.blake2b(seed, digest_size=64).digest()):
            entries.append(position << _OWNER_BITS | index)
    del entries[count:]
    entries.sort()
    return entries
