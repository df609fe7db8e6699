"""Cookie stickiness (sans-IO): which server a request's cookie names, and the cookie edits on
the way in and out. HAProxy's three modes:

* ``insert``: trilb adds its own cookie, ``NAME=<server id>``, to a response when the client did
  not already carry the right one; the server never sees it (HAProxy's ``insert indirect``).
* ``rewrite``: the application sets cookie NAME; trilb replaces its value with the server id (the
  application's value is lost: it must only use the cookie as a marker).
* ``prefix``: the application sets cookie NAME; trilb prefixes the server id, ``id~value``, and
  strips the prefix again from requests, so the application sees its own value.

A server id is an opaque token (by default a short hash of the server's name), never an address.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Mapping, Sequence

from ..config.model import CookieConfig

__all__ = [
    "CookieConfig",
    "StickTable",
    "StickyCookie",
    "default_cookie_value",
    "request_cookie",
    "response_cookies",
]

Header = tuple[bytes, bytes]
PREFIX_SEPARATOR = b"~"


def default_cookie_value(backend: str, server: str) -> str:
    """An opaque, stable id for a server: the same across restarts and processes."""
    return hashlib.blake2b(f"{backend}/{server}".encode(), digest_size=6).hexdigest()


StickyCookie = CookieConfig  # the settings, as the config model has them


def _split_cookies(value: bytes) -> list[tuple[bytes, bytes]]:
    pairs = []
    for part in value.split(b";"):
        name, eq, cookie_value = part.strip().partition(b"=")
        if eq and name:
            pairs.append((name, cookie_value))
    return pairs


def request_cookie(
    config: StickyCookie, headers: Sequence[Header], servers: Mapping[bytes, int]
) -> tuple[int | None, list[Header]]:
    """The server index the request's cookie points at (None if none or unknown), and the
    headers to forward: in ``insert`` mode trilb's cookie is removed, in ``prefix`` mode the
    prefix is stripped; other cookies pass untouched (each ``Cookie`` header is rebuilt only
    when it held ours)."""
    name = config.name.encode()
    chosen: int | None = None
    out: list[Header] = []
    for header_name, value in headers:
        if header_name.lower() != b"cookie" or name not in value:
            out.append((header_name, value))
            continue
        kept: list[bytes] = []
        changed = False
        for cookie_name, cookie_value in _split_cookies(value):
            if cookie_name != name:
                kept.append(cookie_name + b"=" + cookie_value)
                continue
            if config.mode == "prefix":
                server_id, sep, original = cookie_value.partition(PREFIX_SEPARATOR)
                if sep:
                    chosen = servers.get(server_id, chosen)
                    kept.append(cookie_name + b"=" + original)
                    changed = True
                    continue
                kept.append(cookie_name + b"=" + cookie_value)
            else:
                chosen = servers.get(cookie_value, chosen)
                if config.mode == "insert":
                    changed = True  # ours: the server never sees it
                else:
                    kept.append(cookie_name + b"=" + cookie_value)
        if not changed:
            out.append((header_name, value))
        elif kept:
            out.append((header_name, b"; ".join(kept)))
    return chosen, out


def response_cookies(
    config: StickyCookie,
    headers: list[Header],
    server_id: bytes,
    *,
    request_had_it: bool,
) -> list[Header]:
    """The response headers with stickiness applied for the server (id) that answered.

    ``insert``: add ``Set-Cookie`` unless the request already carried this server's cookie.
    ``rewrite``/``prefix``: edit the application's own ``Set-Cookie`` for NAME.
    """
    name = config.name.encode()
    if config.mode == "insert":
        if request_had_it:
            return headers
        attributes = [name + b"=" + server_id, b"Path=/"]
        if config.max_age is not None:
            attributes.append(b"Max-Age=%d" % config.max_age)
        if config.domain:
            attributes.append(b"Domain=" + config.domain.encode())
        if config.httponly:
            attributes.append(b"HttpOnly")
        if config.secure:
            attributes.append(b"Secure")
        headers.append((b"Set-Cookie", b"; ".join(attributes)))
        if config.nocache:
            # a shared cache must not hand one client's stickiness to everyone
            headers = [(n, v) for n, v in headers if n.lower() != b"cache-control"]
            headers.append((b"Cache-Control", b'private, no-cache="set-cookie"'))
        return headers
    out: list[Header] = []
    for header_name, value in headers:
        if header_name.lower() == b"set-cookie":
            first, sep, rest = value.partition(b";")
            cookie_name, eq, cookie_value = first.strip().partition(b"=")
            if eq and cookie_name == name:
                if config.mode == "rewrite":
                    cookie_value = server_id
                else:
                    cookie_value = server_id + PREFIX_SEPARATOR + cookie_value
                value = cookie_name + b"=" + cookie_value + sep + rest
        out.append((header_name, value))
    return out


class StickTable:
    """Source stickiness (HAProxy's ``stick-table type ip`` + ``stick on src``): client address
    -> server index, bounded and expiring. The least recently seen entry makes room when the
    table is full, so a flood of addresses costs memory up to ``size`` and no more. Time is
    passed in (sans-IO), so tests need no clock."""

    __slots__ = ("_entries", "expire", "size")

    def __init__(self, size: int, expire: float) -> None:
        self.size = size
        self.expire = expire
        self._entries: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str, now: float) -> int | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        index, seen = entry
        if now - seen > self.expire:
            del self._entries[key]
            return None
        return index

    def store(self, key: str, index: int, now: float) -> None:
        entries = self._entries
        entries[key] = (index, now)
        entries.move_to_end(key)
        while len(entries) > self.size:
            entries.popitem(last=False)

    def remapped(self, positions: Mapping[int, int], size: int, expire: float) -> StickTable:
        """A copy for a reloaded backend (its servers may have moved): the entries of the servers
        in ``positions`` (old index -> new index), the others dropped; with a smaller ``size``,
        the most recently seen entries are kept."""
        table = StickTable(size, expire)
        entries = table._entries
        for key, (index, seen) in self._entries.items():
            moved = positions.get(index)
            if moved is not None:
                entries[key] = (moved, seen)
        while len(entries) > size:
            entries.popitem(last=False)
        return table
