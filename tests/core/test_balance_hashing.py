"""Hashing balance algorithms (source, uri, url_param, header): keys, shares, and how many keys
move when servers come and go, map-based versus consistent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from trilb.core import hashing
from trilb.core.balance import Algorithm, HashAlgorithm, RequestKey, make_algorithm
from trilb.core.hashing import (
    POINTS_PER_WEIGHT,
    ConsistentRing,
    header_key,
    stable_hash,
    uri_key,
    url_param_key,
)

N = 10_000
HASH_TYPES = ["map-based", "consistent"]


def key(
    client_ip: str = "192.0.2.1",
    path: bytes = b"/",
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> RequestKey:
    return RequestKey(client_ip=client_ip, path=path, query=query, headers=headers)


def ip_key(i: int) -> RequestKey:
    return key(client_ip=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")


def path_key(i: int) -> RequestKey:
    return key(path=f"/wp-content/uploads/{i}.jpg".encode())


IP_KEYS = [ip_key(i) for i in range(N)]
PATH_KEYS = [path_key(i) for i in range(N)]


def assignment(
    algorithm: Algorithm, keys: Sequence[RequestKey], eligible: Callable[[int], bool] | None = None
) -> list[int | None]:
    if eligible is None:
        return [algorithm.pick(key=k) for k in keys]
    return [algorithm.pick(eligible, k) for k in keys]


def moved(before: Sequence[int | None], after: Sequence[int | None]) -> float:
    return sum(b != a for b, a in zip(before, after, strict=True)) / len(before)


# -- the hash ----------------------------------------------------------------------------------


def test_stable_hash_is_pinned() -> None:
    """The same in every process and release: changing it would move every client at upgrade."""
    assert stable_hash(b"10.0.0.1") == 6021020536128996326
    assert stable_hash(b"") == 16476032584258269876
    assert 0 <= stable_hash(b"x" * 10_000) < 2**64


# -- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("whole", "path", "query", "expected"),
    [
        (False, b"/a/b", b"x=1", b"/a/b"),
        (True, b"/a/b", b"x=1", b"/a/b?x=1"),
        (True, b"/a/b", b"", b"/a/b"),  # no query: no "?"
        (False, b"/", b"", b"/"),
    ],
)
def test_uri_key(whole: bool, path: bytes, query: bytes, expected: bytes) -> None:
    assert uri_key(whole)(key(path=path, query=query)) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"id=42", b"42"),
        (b"a=1&id=42&b=2", b"42"),
        (b"id=1&id=2", b"1"),  # the first one
        (b"uid=7&id=8", b"8"),  # a parameter ending in the name is another one
        (b"uid=7", None),
        (b"ID=42", None),  # case-sensitive, as in HAProxy
        (b"id", None),  # no value
        (b"id=", None),  # empty value
        (b"id=&id=3", None),  # the first one, empty
        (b"", None),
        (b"id=a%20b", b"a%20b"),  # hashed as received
        (b"id=x=y", b"x=y"),
    ],
)
def test_url_param_key(query: bytes, expected: bytes | None) -> None:
    assert url_param_key(b"id")(key(query=query)) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"X-User", b"alice")], b"alice"),
        ([(b"x-user", b"alice")], b"alice"),  # names compare case-insensitively
        ([(b"X-USER", b" alice \t")], b"alice"),  # value without surrounding whitespace
        ([(b"Host", b"h"), (b"X-User", b"a"), (b"x-user", b"b")], b"a"),  # the first field
        ([(b"X-Users", b"alice")], None),
        ([(b"X-User", b"")], None),
        ([(b"X-User", b"   ")], None),
        ([], None),
    ],
)
def test_header_key(headers: list[tuple[bytes, bytes]], expected: bytes | None) -> None:
    assert header_key(b"X-User")(key(headers=headers)) == expected


# -- distribution ------------------------------------------------------------------------------

DISTRIBUTION_CASES = [
    ("map-based", [100, 100, 100, 100, 100]),
    ("map-based", [100, 50, 200, 150]),
    ("map-based", [256, 100, 30]),
    ("map-based", [1, 2, 3]),  # map-based shares are exact whatever the scale
    ("map-based", [1, 0, 1]),
    ("consistent", [100, 100, 100, 100, 100]),
    ("consistent", [100, 50, 200, 150]),
    ("consistent", [256, 100, 30]),
    ("consistent", [100, 0, 100]),
]


@pytest.mark.parametrize(("hash_type", "weights"), DISTRIBUTION_CASES)
@pytest.mark.parametrize(("name", "keys"), [("source", IP_KEYS), ("uri", PATH_KEYS)])
def test_distribution_follows_weights_within_2_percent(
    name: str, keys: list[RequestKey], hash_type: str, weights: list[int]
) -> None:
    counts = Counter(assignment(make_algorithm(name, weights, hash_type=hash_type), keys))
    total = sum(weights)
    for index, weight in enumerate(weights):
        assert abs(counts[index] / N - weight / total) <= 0.02, (index, counts)


@pytest.mark.parametrize("hash_type", HASH_TYPES)
@pytest.mark.parametrize(
    ("name", "make_key"),
    [
        ("url_param:sid", lambda i: key(query=f"lang=en&sid={i}".encode())),
        ("header:X-Session", lambda i: key(headers=[(b"x-session", f"s{i}".encode())])),
    ],
)
def test_url_param_and_header_spread_and_stick(
    name: str, make_key: Callable[[int], RequestKey], hash_type: str
) -> None:
    algorithm = make_algorithm(name, [100, 100, 100], hash_type=hash_type)
    keys = [make_key(i) for i in range(3000)]
    first = assignment(algorithm, keys)
    assert assignment(algorithm, keys) == first  # the same key, the same server
    counts = Counter(first)
    assert all(abs(counts[i] / 3000 - 1 / 3) <= 0.03 for i in range(3)), counts


@pytest.mark.parametrize("hash_type", HASH_TYPES)
def test_uri_ignores_the_query_unless_whole(hash_type: str) -> None:
    keys = [key(path=b"/page", query=f"v={i}".encode()) for i in range(200)]
    plain = make_algorithm("uri", [1, 1, 1, 1], hash_type=hash_type)
    whole = make_algorithm("uri", [1, 1, 1, 1], hash_type=hash_type, uri_whole=True)
    assert len(set(assignment(plain, keys))) == 1
    assert len(set(assignment(whole, keys))) == 4


def test_source_is_the_same_for_every_instance() -> None:
    """Stable across algorithm instances (and processes): a restart does not move clients."""
    for hash_type in HASH_TYPES:
        one = make_algorithm("source", [100] * 4, hash_type=hash_type)
        two = make_algorithm("source", [100] * 4, hash_type=hash_type)
        assert assignment(one, IP_KEYS[:500]) == assignment(two, IP_KEYS[:500])


# -- consistency: how many keys move -----------------------------------------------------------


@pytest.mark.parametrize("gone", range(5))
def test_consistent_removing_a_server_moves_only_its_keys(gone: int) -> None:
    algorithm = make_algorithm("source", [100] * 5, hash_type="consistent")
    before = assignment(algorithm, IP_KEYS)
    after = assignment(algorithm, IP_KEYS, lambda i: i != gone)
    for b, a in zip(before, after, strict=True):
        assert a == b or b == gone  # every other key stays
    assert gone not in after
    assert 0.15 <= moved(before, after) <= 0.25  # its ~1/5, spread over the other four
    assert assignment(algorithm, IP_KEYS) == before  # back: every key returns


@pytest.mark.parametrize("how", ["new algorithm", "set_weight"])
def test_consistent_adding_a_sixth_server_moves_about_a_sixth(how: str) -> None:
    before = assignment(make_algorithm("source", [100] * 5, hash_type="consistent"), IP_KEYS)
    if how == "set_weight":
        algorithm = make_algorithm("source", [100] * 5 + [0], hash_type="consistent")
        algorithm.set_weight(5, 100)
    else:
        algorithm = make_algorithm("source", [100] * 6, hash_type="consistent")
    after = assignment(algorithm, IP_KEYS)
    assert 0.08 <= moved(before, after) <= 0.25  # ~1/6 (measured: 16.9%)
    for b, a in zip(before, after, strict=True):
        assert a == b or a == 5  # keys move only to the new server


@pytest.mark.parametrize("change", ["remove", "add"])
def test_map_based_moves_many_keys(change: str) -> None:
    """The known trade-off of map-based: the total weight changes, most keys land elsewhere."""
    algorithm = make_algorithm("source", [100] * 5, hash_type="map-based")
    before = assignment(algorithm, IP_KEYS)
    if change == "remove":
        after = assignment(algorithm, IP_KEYS, lambda i: i != 2)
    else:
        after = assignment(make_algorithm("source", [100] * 6, hash_type="map-based"), IP_KEYS)
    assert moved(before, after) > 0.40  # measured: ~80% on removal, ~83% on addition


def test_consistent_weight_change_moves_only_that_servers_share() -> None:
    algorithm = make_algorithm("uri", [100, 100, 100, 100], hash_type="consistent")
    before = assignment(algorithm, PATH_KEYS)
    algorithm.set_weight(1, 200)
    doubled = assignment(algorithm, PATH_KEYS)
    for b, a in zip(before, doubled, strict=True):
        assert a == b or a == 1  # it gains keys, the others only lose some to it
    assert abs(doubled.count(1) / N - 2 / 5) <= 0.02
    algorithm.set_weight(1, 50)
    halved = assignment(algorithm, PATH_KEYS)
    for b, a in zip(before, halved, strict=True):
        assert a == b or b == 1  # it loses keys, nobody else's move
    assert abs(halved.count(1) / N - 50 / 350) <= 0.02
    algorithm.set_weight(1, 100)
    assert assignment(algorithm, PATH_KEYS) == before


def test_map_based_set_weight_applies() -> None:
    algorithm = make_algorithm("uri", [100, 100], hash_type="map-based")
    algorithm.set_weight(1, 300)
    assert abs(assignment(algorithm, PATH_KEYS).count(1) / N - 0.75) <= 0.02
    algorithm.set_weight(1, 0)
    assert set(assignment(algorithm, PATH_KEYS[:500])) == {0}


# -- eligibility and the ring ------------------------------------------------------------------


@pytest.mark.parametrize("hash_type", HASH_TYPES)
def test_ineligible_servers_are_skipped(hash_type: str) -> None:
    algorithm = make_algorithm("source", [100, 100, 100], hash_type=hash_type)
    assert set(assignment(algorithm, IP_KEYS[:1000], lambda i: i != 1)) == {0, 2}
    assert set(assignment(algorithm, IP_KEYS[:100], lambda i: i == 2)) == {2}
    assert set(assignment(algorithm, IP_KEYS[:100], lambda i: False)) == {None}


def test_ring_lookup_asks_each_server_at_most_once() -> None:
    ring = ConsistentRing([100, 100, 0, 100])
    asked: list[int] = []

    def nobody(index: int) -> bool:
        asked.append(index)
        return False

    for i in range(50):
        asked.clear()
        assert ring.lookup(stable_hash(str(i).encode()), nobody) is None
        assert sorted(asked) == [0, 1, 3]  # weight 0 has no points: never asked


def test_ring_wraps_around() -> None:
    ring = ConsistentRing([1, 1])
    assert ring.lookup(2**64 - 1, lambda i: True) in (0, 1)  # past the last point: the first
    assert ring.lookup(0, lambda i: True) in (0, 1)


@pytest.mark.parametrize(
    ("weights", "points"), [([100, 0, 3], 103), ([256], 256), ([0, 0], 0), ([], 0), ([1] * 7, 7)]
)
def test_ring_size_is_weight_times_points_per_weight(weights: list[int], points: int) -> None:
    ring = ConsistentRing(weights)
    assert len(ring) == points * POINTS_PER_WEIGHT
    assert f"points={points * POINTS_PER_WEIGHT}" in repr(ring)


def test_ring_size_follows_weight_changes() -> None:
    ring = ConsistentRing([100, 100])
    ring.set_weight(0, 0)
    assert len(ring) == 100 * POINTS_PER_WEIGHT
    ring.set_weight(1, 3)
    assert len(ring) == 3 * POINTS_PER_WEIGHT
    assert ring.lookup(12345, lambda i: True) == 1


def test_ring_rebuilt_only_when_a_weight_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    generated: list[int] = []
    original = hashing._server_run

    def counting(index: int, count: int) -> list[int]:
        generated.append(index)
        return original(index, count)

    monkeypatch.setattr(hashing, "_server_run", counting)
    algorithm = make_algorithm("source", [100, 100, 100], hash_type="consistent")
    assert generated == [0, 1, 2]  # built at configuration time, not at the first request
    for i, eligible in enumerate([lambda i: True, lambda i: i != 0, lambda i: i == 2] * 20):
        algorithm.pick(eligible, IP_KEYS[i])
    assert generated == [0, 1, 2]  # eligibility never rebuilds
    algorithm.set_weight(1, 100)  # unchanged
    algorithm.set_weight(2, 40)
    algorithm.set_weight(2, 60)
    assert generated == [0, 1, 2]  # lazily...
    algorithm.pick(key=IP_KEYS[0])
    algorithm.pick(key=IP_KEYS[1])
    assert generated == [0, 1, 2, 2]  # ...once, and only the changed server's points


def test_ring_rejects_too_many_servers() -> None:
    with pytest.raises(ValueError, match="at most 65536 servers"):
        ConsistentRing([0] * 65_537)


# -- fallback to roundrobin --------------------------------------------------------------------


@pytest.mark.parametrize("hash_type", HASH_TYPES)
@pytest.mark.parametrize(
    ("name", "keyless"),
    [
        ("url_param:sid", key(query=b"lang=en")),
        ("url_param:sid", key(query=b"sid=")),
        ("header:X-Session", key(headers=[(b"Host", b"example.com")])),
        ("header:X-Session", key(headers=[(b"X-Session", b"")])),
        ("source", None),  # no RequestKey at all (the shell's old call form)
        ("uri", None),
    ],
)
def test_falls_back_to_roundrobin_without_a_key(
    name: str, keyless: RequestKey | None, hash_type: str
) -> None:
    algorithm = make_algorithm(name, [2, 1, 0], hash_type=hash_type)
    assert [algorithm.pick(key=keyless) for _ in range(6)] == [0, 1, 0, 0, 1, 0]
    assert [algorithm.pick(lambda i: i != 0, keyless) for _ in range(2)] == [1, 1]


def test_fallback_follows_weight_changes() -> None:
    algorithm = make_algorithm("header:X-Session", [1, 1], hash_type="consistent")
    algorithm.set_weight(0, 3)
    assert [algorithm.pick() for _ in range(8)] == [0, 0, 1, 0] * 2


def test_hash_algorithm_rejects_unknown_hash_type() -> None:
    with pytest.raises(ValueError, match="unknown hash_type"):
        HashAlgorithm([1], uri_key(False), hash_type="jump")
    assert "consistent" in repr(make_algorithm("uri", [1], hash_type="consistent"))
