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

__all__ = [
    "LAST_CHUNK",
    "Framing",
    "client_keeps_alive",
    "encode_chunk",
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


def response_framing(
    request_method: bytes, status: int, headers: Iterable[Header]
) -> tuple[Framing, int]:
    """RFC 9112 section 6.3 for a response; ``headers`` are h11's parsed (lower-case) ones.

    Returns the framing and, for ``LENGTH``, the length.
    """
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return Framing.NONE, 0
    length = -1
    for name, value in headers:
        if name == b"transfer-encoding":
            return Framing.CHUNKED, 0
        if name == b"content-length":
            length = int(value)
    if length >= 0:
        return Framing.LENGTH, length
    return Framing.UNTIL_CLOSE, 0


def client_keeps_alive(http_version: bytes, headers: Iterable[Header]) -> bool:
    """Whether the client lets the connection persist after this request (RFC 9112 section 9.3)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    if b"close" in tokens:
        return False
    if http_version == b"1.1":
        return True
    return b"keep-alive" in tokens


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
