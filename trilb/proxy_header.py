"""The PROXY protocol on the wire: reading a header from a new client connection
(``accept_proxy``) and making the header a server connection starts with (``send_proxy``).

Reading takes exactly the header's bytes from the socket and not one more: what follows belongs to
the next layer (a TLS handshake, an HTTP request), which reads the socket itself. So the socket is
peeked at (``MSG_PEEK``), the parser (:mod:`trilb.core.proxy_protocol`) told what is there, and
only bytes known to be part of the header are consumed. A peek that leaves the header incomplete
consumes what it saw (all of it header), so the next wait is for new bytes, never a busy loop.
"""

from __future__ import annotations

import ipaddress
import socket

import trio
from trio.lowlevel import wait_readable

from .core.proxy_protocol import (
    MAX_HEADER_LENGTH,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    ProxyHeader,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    parse_proxy_header,
)
from .net import TCPStream

__all__ = [
    "ProxyHeaderFailed",
    "TrustedSources",
    "header_for_server",
    "local_address",
    "local_header",
    "read_proxy_header",
]


class ProxyHeaderFailed(Exception):
    """No valid PROXY header arrived: the connection is dropped; the message is for the log."""


async def read_proxy_header(stream: TCPStream) -> ProxyHeader:
    """Read one PROXY header (v1 or v2) off ``stream``, leaving what follows it unread.

    The caller bounds the wait. Raises :class:`ProxyHeaderFailed` for an invalid header, or a
    connection that closes or breaks before sending a whole one."""
    sock = stream.sock
    seen = bytearray()  # consumed: a prefix of the header
    while True:
        try:
            await wait_readable(sock)
            peeked = sock.recv(MAX_HEADER_LENGTH - len(seen), socket.MSG_PEEK)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise ProxyHeaderFailed(f"connection broken: {exc.strerror or exc}") from None
        if not peeked:
            if seen:
                raise ProxyHeaderFailed(f"connection closed within the header ({len(seen)} bytes)")
            raise ProxyHeaderFailed("connection closed before any header")
        try:
            header = parse_proxy_header(seen + peeked)
        except ProxyProtocolError as exc:
            raise ProxyHeaderFailed(f"invalid PROXY header: {exc}") from None
        take = len(peeked) if header is None else header.length - len(seen)
        try:
            taken = sock.recv(take)  # (peeked: it is all there)
        except OSError as exc:
            raise ProxyHeaderFailed(f"connection broken: {exc.strerror or exc}") from None
        if header is not None:
            assert len(taken) == take
            return header
        seen += taken


class TrustedSources:
    """``trusted_proxies``: the addresses whose connections carry a PROXY header. Empty: all."""

    __slots__ = ("_networks",)

    def __init__(self, cidrs: tuple[str, ...]) -> None:
        self._networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)

    def __contains__(self, ip: str) -> bool:
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False  # a unix socket peer: only when every source is trusted
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


def header_for_server(
    version: str,
    source: tuple[str, int],
    destination: tuple[str, int] | None,
    *,
    authority: str | None = None,
    alpn: str | None = None,
) -> bytes:
    """The header a server connection starts with (``send_proxy``). A client without an IP
    address (a unix socket) or a destination of another family is sent as "unknown" (v1
    ``UNKNOWN``, v2 ``LOCAL``): the server then uses the connection's own addresses. v2 carries
    the TLS server name (AUTHORITY) and ALPN protocol when known."""
    known = destination is not None and _same_family(source[0], destination[0])
    if version == "v1":
        return encode_v1(source, destination) if known and destination else b"PROXY UNKNOWN\r\n"
    tlvs: list[tuple[int, bytes]] = []
    if alpn:
        tlvs.append((PP2_TYPE_ALPN, alpn.encode("ascii", "replace")))
    if authority:
        tlvs.append((PP2_TYPE_AUTHORITY, authority.encode("ascii", "replace")))
    if not known:
        return encode_v2(None, None, tlvs=tlvs)
    return encode_v2(source, destination, tlvs=tlvs)


def local_header(version: str) -> bytes:
    """The header of a connection trilb makes on its own behalf (a health check): v1
    ``UNKNOWN``, v2 ``LOCAL`` -- "use the connection's addresses", as HAProxy's checks send."""
    return b"PROXY UNKNOWN\r\n" if version == "v1" else encode_v2(None, None)


def _same_family(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a).version == ipaddress.ip_address(b).version
    except ValueError:
        return False


def local_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The address a client connected to (ip, port), when it has one."""
    transport = getattr(stream, "transport_stream", stream)
    sock = getattr(transport, "sock", None)
    if sock is None:
        return None
    try:
        name = sock.getsockname()
    except OSError:
        return None
    if isinstance(name, tuple):
        return str(name[0]), int(name[1])
    return None
