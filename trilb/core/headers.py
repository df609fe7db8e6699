"""Header rewriting between the client and server hops.

A proxy is two HTTP connections, so per RFC 9110 section 7.6.1 the hop-by-hop fields of one hop must
not reach the other: ``Connection`` and every field it names, ``Keep-Alive``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade`` and the ``Proxy-*`` fields. Message framing is then re-made for
the next hop (by h11, from the ``Content-Length`` or ``Transfer-Encoding: chunked`` we hand it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

__all__ = ["Forwarded", "request_headers_for_server", "response_headers_for_client"]

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
_FORWARDED_SET = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"})
_CHUNKED: Header = (b"Transfer-Encoding", b"chunked")


@attrs.frozen
class Forwarded:
    """What the server should learn about the client hop (``forwarded_for = true``)."""

    client_ip: str
    proto: str  # "http" or "https"
    port: int  # the frontend port the client connected to


def _connection_tokens(raw_headers: Iterable[Header]) -> frozenset[bytes]:
    """Field names listed in ``Connection`` headers: hop-by-hop too (RFC 9110 section 7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in raw_headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def _is_hop_by_hop(lower_name: bytes, named: frozenset[bytes]) -> bool:
    return lower_name in HOP_BY_HOP or lower_name.startswith(b"proxy-") or lower_name in named


def request_headers_for_server(
    raw_headers: Sequence[Header], *, chunked: bool, forwarded: Forwarded | None
) -> list[Header]:
    """The headers to send to the server for a client request.

    ``raw_headers`` are as the client sent them (original case). Host passes unchanged.
    ``chunked`` says the body arrives chunked, so it is re-sent chunked to the server.
    With ``forwarded``, the client address is appended to X-Forwarded-For (one merged header) and
    X-Forwarded-Proto/Host/Port are set, replacing whatever the client claimed.
    """
    named = _connection_tokens(raw_headers)
    out: list[Header] = []
    forwarded_for: list[bytes] = []
    host: bytes | None = None
    for name, value in raw_headers:
        lower = name.lower()
        if _is_hop_by_hop(lower, named):
            continue
        if lower == b"host":
            host = value
        if forwarded is not None:
            if lower == b"x-forwarded-for":
                forwarded_for.append(value)
                continue
            if lower in _FORWARDED_SET:
                continue
        out.append((name, value))
    if chunked:
        out.append(_CHUNKED)
    if forwarded is not None:
        forwarded_for.append(forwarded.client_ip.encode("ascii"))
        out.append((b"X-Forwarded-For", b", ".join(forwarded_for)))
        out.append((b"X-Forwarded-Proto", forwarded.proto.encode("ascii")))
        if host is not None:
            out.append((b"X-Forwarded-Host", host))
        out.append((b"X-Forwarded-Port", str(forwarded.port).encode("ascii")))
    return out


def response_headers_for_client(raw_headers: Sequence[Header]) -> list[Header]:
    """The headers to send to the client for a server response; h11 re-frames the body.

    A response that was chunked loses its ``Content-Length`` too (RFC 9112 section 6.3: chunked
    wins), so the framing the client sees always matches the bytes that follow.
    """
    named = _connection_tokens(raw_headers)
    out: list[Header] = []
    was_chunked = False
    for name, value in raw_headers:
        lower = name.lower()
        if lower == b"transfer-encoding":
            was_chunked = True
            continue
        if _is_hop_by_hop(lower, named):
            continue
        out.append((name, value))
    if was_chunked:
        out = [(n, v) for n, v in out if n.lower() != b"content-length"]
    return out
