"""Header rewriting between the client and server hops.

A proxy is two HTTP connections, so per RFC 9110 section 7.6.1 the hop-by-hop fields of one hop must
not reach the other: ``Connection`` and every field it names, ``Keep-Alive``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade`` and the ``Proxy-*`` fields. Message framing is then re-made for
the next hop (by h11, from the ``Content-Length`` or ``Transfer-Encoding: chunked`` we hand it).

One exception: a protocol switch (RFC 9110 section 7.8), e.g. to WebSocket. ``Upgrade`` is
hop-by-hop, but a proxy that relays the switch becomes a byte tunnel between the two ends, so the
offer has to reach the server and its ``101`` the client: with ``upgrade``, the ``Upgrade`` field
and the ``upgrade`` token of ``Connection`` pass (as ``Connection: Upgrade``); every other field
that ``Connection`` names is still removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

__all__ = [
    "REFUSED_UPGRADES",
    "Forwarded",
    "request_headers_for_server",
    "response_headers_for_client",
    "upgrade_offer",
]

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
_FORWARDED_SET = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"})
_CHUNKED: Header = (b"Transfer-Encoding", b"chunked")
_CONNECTION_UPGRADE: Header = (b"Connection", b"Upgrade")

#: protocols a client may not switch to through trilb: a switch to another HTTP version (``h2c``,
#: RFC 7540 section 3.2) would let the client send requests straight to the server over the
#: tunnel, past routing and header rules ("h2c smuggling"); trilb speaks HTTP/1.1 to servers
REFUSED_UPGRADES = frozenset({b"h2c", b"h2", b"http"})


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


def upgrade_offer(raw_headers: Iterable[Header]) -> bytes | None:
    """The protocols a request offers to switch to, as an ``Upgrade`` value, or None.

    RFC 9110 section 7.8: an ``Upgrade`` field counts only when ``Connection`` names it. Protocols
    in :data:`REFUSED_UPGRADES` are left out (compared by name, without the "/version"). The
    caller decides whether the request may switch at all (HTTP/1.1 only; trilb also wants the
    request to have no body, so that the switch follows the head).
    """
    offered: list[bytes] = []
    connection_upgrade = False
    for name, value in raw_headers:
        lower = name.lower()
        if lower == b"upgrade":
            offered.extend(value.split(b","))
        elif lower == b"connection":
            connection_upgrade = connection_upgrade or any(
                t.strip().lower() == b"upgrade" for t in value.split(b",")
            )
    if not connection_upgrade:
        return None
    kept = [
        token
        for token in (t.strip() for t in offered)
        if token and token.partition(b"/")[0].lower() not in REFUSED_UPGRADES
    ]
    return b", ".join(kept) or None


def _is_hop_by_hop(lower_name: bytes, named: frozenset[bytes]) -> bool:
    return lower_name in HOP_BY_HOP or lower_name.startswith(b"proxy-") or lower_name in named


def request_headers_for_server(
    raw_headers: Sequence[Header],
    *,
    chunked: bool,
    forwarded: Forwarded | None,
    upgrade: bytes | None = None,
) -> list[Header]:
    """The headers to send to the server for a client request.

    ``raw_headers`` are as the client sent them (original case). Host passes unchanged.
    ``chunked`` says the body arrives chunked, so it is re-sent chunked to the server.
    With ``forwarded``, the client address is appended to X-Forwarded-For (one merged header) and
    X-Forwarded-Proto/Host/Port are set, replacing whatever the client claimed.
    With ``upgrade`` (from :func:`upgrade_offer`), the request offers the server that protocol
    switch: ``Upgrade: <upgrade>`` and ``Connection: Upgrade`` follow the client's fields.
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
    if upgrade is not None:
        out.append((b"Upgrade", upgrade))
        out.append(_CONNECTION_UPGRADE)
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


def response_headers_for_client(
    raw_headers: Sequence[Header], *, upgrade: bool = False
) -> list[Header]:
    """The headers to send to the client for a server response; h11 re-frames the body.

    A response that was chunked loses its ``Content-Length`` too (RFC 9112 section 6.3: chunked
    wins), so the framing the client sees always matches the bytes that follow.
    With ``upgrade`` (a ``101 Switching Protocols`` that trilb relays), the server's ``Upgrade``
    fields pass and ``Connection: Upgrade`` is added; other hop-by-hop fields are still removed.
    """
    named = _connection_tokens(raw_headers)
    out: list[Header] = []
    was_chunked = False
    for name, value in raw_headers:
        lower = name.lower()
        if lower == b"transfer-encoding":
            was_chunked = True
            continue
        if _is_hop_by_hop(lower, named) and not (upgrade and lower == b"upgrade"):
            continue
        out.append((name, value))
    if was_chunked:
        out = [(n, v) for n, v in out if n.lower() != b"content-length"]
    if upgrade:
        out.append(_CONNECTION_UPGRADE)
    return out
