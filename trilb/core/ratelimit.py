"""Request rate limits and per-source connection counts (sans-IO: time is passed in).

Theory of operation. A ``rate_limit`` keeps a :class:`RateTable`: for each key (a client
address, a header's or a cookie's value) two counters, as HAProxy's ``http_req_rate(period)``
does with its frequency counters:

* ``current``: the requests that passed in the key's current period, which started at
  ``start``;
* ``previous``: those that passed in the period before it.

The rate at a time ``now`` is the number of requests in the sliding window ``(now - period,
now]``, estimated by assuming the previous period's requests were spread evenly over it::

    rate(now) = current + previous * (period - (now - start)) / period

A request passes when ``rate(now) + 1 <= requests``, and only then is it counted: refused
requests are not (HAProxy counts them too, which keeps a client that never stops retrying
refused for ever; here a client over the limit still gets ``requests`` per period through,
and the ``Retry-After`` it is told is exact).

Why two counters and not a log of every request's time: a log is exact for any spread of
requests, but costs ``requests`` timestamps per key (100 requests x 100 000 keys is 10 million
floats); two counters cost a few dozen bytes per key whatever ``requests`` is, and they are what
HAProxy users already reason with. What is exact, then (and tested so):

* within a key's first period (which starts with its first request) the first ``requests``
  requests pass and the next one is refused, whenever in the period they come;
* a key whose previous period was full (``requests`` passed) gets one more request each
  ``period / requests`` into the next period: the window slides;
* a key idle for two periods starts again with a whole budget;
* :attr:`Verdict.retry_after` is the time after which the key's next request passes.

The table holds at most ``size`` keys: a new key when it is full takes the place of the least
recently seen one (a client with a new address or header value every request costs the table
its oldest entry, never more memory). Keys longer than :data:`KEY_BYTES` are kept as a digest,
so a key costs the same whatever the client sent.

:class:`SourceConnections` counts the connections open per client address
(``max_connections_per_src``): an entry lives while its address has a connection open, so the
table is bounded by the connections the balancer lets in.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence

import attrs

from ..config.limits import RateLimit
from .routing import RequestView

__all__ = [
    "KEY_BYTES",
    "Limiter",
    "RateTable",
    "Refusal",
    "SourceConnections",
    "Verdict",
    "check_limits",
    "table_key",
]

#: a key up to this long is kept as it is; a longer one (a header value may be 32 KiB) is kept
#: as a 16-byte BLAKE2b digest, so the table's memory does not depend on what clients send
KEY_BYTES = 64


def table_key(value: bytes) -> bytes:
    """The form of ``value`` kept in a table: itself when short, else a digest of it."""
    if len(value) <= KEY_BYTES:
        return value
    return b"#" + hashlib.blake2b(value, digest_size=16).digest()


@attrs.frozen
class Verdict:
    """Whether a request (or connection) may pass."""

    allowed: bool
    #: seconds until the key's next request would pass (0.0 when this one passes)
    retry_after: float = 0.0
    #: the key's first refusal in its current period (or since it reached its connection cap):
    #: worth one log line, the refusals after it are not
    first_refusal: bool = False


_ALLOWED = Verdict(True)


class _Entry:
    __slots__ = ("current", "previous", "start", "warned")

    def __init__(self, start: float) -> None:
        self.start = start
        self.previous = 0
        self.current = 0
        self.warned = False


class RateTable:
    """Per-key request rates over a sliding ``period`` (see the module docstring)."""

    __slots__ = ("_entries", "period", "requests", "size")

    def __init__(self, requests: int, period: float, size: int) -> None:
        if requests < 1 or period <= 0 or size < 1:
            raise ValueError("requests and size must be >= 1 and period > 0")
        self.requests = requests
        self.period = period
        self.size = size
        #: least recently seen first
        self._entries: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def _advance(self, entry: _Entry, now: float) -> float:
        """Move the entry's periods up to ``now``; how far into the current one ``now`` is."""
        period = self.period
        elapsed = now - entry.start
        if elapsed >= period:
            if elapsed >= 2 * period:  # idle for a whole period: nothing to remember
                entry.start, entry.previous = now, 0
            else:
                entry.start, entry.previous = entry.start + period, entry.current
            entry.current = 0
            entry.warned = False
            elapsed = now - entry.start
        return max(elapsed, 0.0)  # (a clock that went back counts as the period's start)

    def rate(self, key: bytes, now: float) -> float:
        """The key's estimated requests in the window ending at ``now`` (this one not included)."""
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        elapsed = self._advance(entry, now)
        return entry.current + entry.previous * (self.period - elapsed) / self.period

    def check(self, key: bytes, now: float) -> Verdict:
        """Whether a request of ``key`` at ``now`` may pass. Counts nothing (see :meth:`count`)."""
        entry = self._entries.get(key)
        if entry is None:
            return _ALLOWED  # (requests >= 1)
        self._entries.move_to_end(key)
        period = self.period
        elapsed = self._advance(entry, now)
        allowance = self.requests - 1  # what the rate may be for one more to pass
        if entry.current + entry.previous * (period - elapsed) / period <= allowance:
            return _ALLOWED
        if entry.current <= allowance:
            # this period has room: wait until enough of the previous one has slid out
            wait = period - elapsed - (allowance - entry.current) * period / entry.previous
        else:
            # this period is full: wait for the next one, then for this one to slide out
            wait = 2 * period - elapsed - allowance * period / entry.current
        first = not entry.warned
        entry.warned = True
        return Verdict(False, retry_after=max(wait, 0.0), first_refusal=first)

    def count(self, key: bytes, now: float) -> None:
        """Count a request of ``key`` that passed at ``now``."""
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            self._make_room(now)
            entry = entries[key] = _Entry(now)
        else:
            entries.move_to_end(key)
            self._advance(entry, now)
        entry.current += 1

    def hit(self, key: bytes, now: float) -> Verdict:
        """:meth:`check`, and :meth:`count` the request when it passes."""
        verdict = self.check(key, now)
        if verdict.allowed:
            self.count(key, now)
        return verdict

    def _make_room(self, now: float) -> None:
        """Before a new key goes in: drop the oldest entries that are idle for two periods (a
        few at a time, so one call stays cheap), and the least recently seen one when still
        full."""
        entries = self._entries
        for _ in range(2):
            if not entries:
                return
            oldest = next(iter(entries.values()))
            if now - oldest.start < 2 * self.period:
                break
            entries.popitem(last=False)
        while len(entries) >= self.size:
            entries.popitem(last=False)


class Limiter:
    """One configured ``rate_limit``: its table, and how a request's key is found."""

    __slots__ = ("config", "kind", "name", "table")

    def __init__(self, config: RateLimit) -> None:
        self.config = config
        self.table = RateTable(config.requests, config.period, config.size)
        kind, _, name = config.key.partition(":")
        self.kind = kind  # "src", "header" or "cookie"
        self.name = name.lower().encode("ascii") if kind == "header" else name.encode("ascii")

    def key(self, view: RequestView) -> bytes | None:
        """The request's key (as kept in the table), or None when it has none: a client without
        an IP address (a unix socket), a header or cookie that is absent or empty. Of a header
        or cookie sent more than once, the last one counts (as HAProxy's ``req.hdr`` and
        ``req.cook`` take it: the one the nearest proxy added)."""
        if self.kind == "src":
            address = view.client_address
            return None if address is None else address.packed
        values = (view.header_map if self.kind == "header" else view.cookies).get(self.name)
        if not values or not values[-1]:
            return None
        return table_key(values[-1])

    def describe(self, key: bytes) -> str:
        """The key for a log line: ``src``, ``header:X-Client="abc"``... (cut at 40 characters)."""
        if self.kind == "src":
            return "src"
        text = key.decode("latin-1")
        if key.startswith(b"#") and len(key) == 17:
            text = "#" + key[1:].hex()
        shown = text if len(text) <= 40 else text[:37] + "..."
        return f"{self.config.key}={shown!r}"


@attrs.frozen
class Refusal:
    """A request over a limit: which limiter refused it, for which key, and the verdict."""

    limiter: Limiter
    key: bytes
    verdict: Verdict


def check_limits(limiters: Sequence[Limiter], view: RequestView, now: float) -> Refusal | None:
    """Check a request against every limiter that applies (the frontend's, the route's): the
    first refusal, or None when all let it pass -- and then it is counted in each, so a request
    refused by one limit is counted by none."""
    keys: list[tuple[Limiter, bytes]] = []
    for limiter in limiters:
        key = limiter.key(view)
        if key is None:
            continue  # no key, no limit
        verdict = limiter.table.check(key, now)
        if not verdict.allowed:
            return Refusal(limiter, key, verdict)
        keys.append((limiter, key))
    for limiter, key in keys:
        limiter.table.count(key, now)
    return None


class SourceConnections:
    """Connections open per client address, for ``max_connections_per_src``: an address is
    tracked while it has a connection open, so this is bounded by the open connections."""

    __slots__ = ("_open", "_warned", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        #: addresses refused since they last had no connection (logged once per such stretch)
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self._open)

    def count(self, source: str) -> int:
        return self._open.get(source, 0)

    def open(self, source: str) -> Verdict:
        """A new connection from ``source``: counted when allowed (then :meth:`close` it)."""
        current = self._open.get(source, 0)
        if current >= self.limit:
            first = source not in self._warned
            self._warned.add(source)
            return Verdict(False, first_refusal=first)
        self._open[source] = current + 1
        return _ALLOWED

    def close(self, source: str) -> None:
        """A counted connection from ``source`` ended."""
        current = self._open[source] - 1
        if current:
            self._open[source] = current
        else:
            del self._open[source]
            self._warned.discard(source)
