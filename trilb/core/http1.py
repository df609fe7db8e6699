"""HTTP/1.x message framing for the proxy's writing side (sans-IO).

h11 parses every head and every chunked body trilb receives. Writing is done here instead: the
proxy re-serialises heads from parsed fields (never forwarding raw bytes) and frames bodies itself,
so that ``Content-Length`` bodies can be relayed without per-chunk parser work. The rules are
RFC 9112 section 6 (message body length) and section 9 (connection persistence).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from functools import lru_cache
from http import HTTPStatus
from typing import NamedTuple

__all__ = [
    "LAST_CHUNK",
    "Framing",
    "HeadInfo",
    "body_framing",
    "client_keeps_alive",
    "encode_chunk",
    "inspect_head",
    "request_head",
    "response_framing",
    "response_head",
]

Header = tuple[bytes, bytes]

LAST_CHUNK = b"0\r\n\r\n"


class Framing(enum.Enum):
    """How a message body is delimited."""

    NONE = "none"  # no body at all (HEAD, 1xx, 204, 304)
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # Transfer-Encoding: chunked
    UNTIL_CLOSE = "until-close"  # a response that ends when the server closes


class HeadInfo(NamedTuple):
    """What the proxy needs to know of a message's header fields, gathered in one pass."""

    length: int  # Content-Length, -1 when absent
    chunked: bool  # Transfer-Encoding present (h11 admits only "chunked")
    has_host: bool
    keep_alive: bool  # the sender lets the connection persist (RFC 9112 section 9.3)


def inspect_head(http_version: bytes, headers: Iterable[Header]) -> HeadInfo:
    """One pass over (name, value) fields in any case: iterating h11's ``Headers`` costs a
    method call per field, so the proxy reads ``raw_items()`` once and asks everything here."""
    length = -1
    chunked = has_host = False
    tokens: set[bytes] = set()
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            length = int(value)
        elif lower == b"transfer-encoding":
            chunked = True
        elif lower == b"host":
            has_host = True
        elif lower == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    keep_alive = b"close" not in tokens and (http_version == b"1.1" or b"keep-alive" in tokens)
    return HeadInfo(length, chunked, has_host, keep_alive)


def body_framing(request_method: bytes, status: int, info: HeadInfo) -> tuple[Framing, int]:
    """RFC 9112 section 6.3 for a response: the framing and, for ``LENGTH``, the length."""
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return Framing.NONE, 0
    if info.chunked:
        return Framing.CHUNKED, 0
    if info.length >= 0:
        return Framing.LENGTH, info.length
    return Framing.UNTIL_CLOSE, 0


def response_framing(
    request_method: bytes, status: int, headers: Iterable[Header]
) -> tuple[Framing, int]:
    """:func:`body_framing` from the header fields themselves."""
    return body_framing(request_method, status, inspect_head(b"1.1", headers))


def client_keeps_alive(http_version: bytes, headers: Iterable[Header]) -> bool:
    """Whether the sender lets the connection persist after this message (RFC 9112 section 9.3)."""
    return inspect_head(http_version, headers).keep_alive


def _header_block(headers: Sequence[Header]) -> bytes:
    return b"".join([name + b": " + value + b"\r\n" for name, value in headers])


def request_head(method: bytes, target: bytes, headers: Sequence[Header]) -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\n" + _header_block(headers) + b"\r\n"


@lru_cache(maxsize=256)
def _status_line(status: int, reason: bytes) -> bytes:
    if not reason:
        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def response_head(status: int, reason: bytes, headers: Sequence[Header]) -> bytes:
    """A response head; an empty reason gets the standard phrase. Status lines are cached
    (bounded: a server inventing reason phrases only churns the cache)."""
    return _status_line(status, reason) + _header_block(headers) + b"\r\n"


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n" if data else b""
