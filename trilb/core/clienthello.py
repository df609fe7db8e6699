"""The server name (SNI) and ALPN offer of a TLS ClientHello, read without terminating TLS.

TLS passthrough routes a connection by the name the client asks for (HAProxy's ``req.ssl_sni``)
and forwards the bytes untouched, so trilb only peeks at the first handshake message
(RFC 8446 section 4.1.2, RFC 5246 section 7.4.1.2; extensions from RFC 6066 and RFC 7301).

Theory of operation
-------------------

The shell reads into a buffer and calls :func:`parse_client_hello` after each read: ``None``
means "read more", :class:`ClientHelloInfo` is the answer, :class:`NotClientHello` means "not
TLS, or not valid": drop the connection. The bytes are TLS records (5-byte header: type,
version, length) whose payloads, joined, carry the handshake message (4-byte header: type,
24-bit length); a large ClientHello (post-quantum key shares, many extensions) may arrive
fragmented over several records, so the payloads are joined first.

Every length field is checked against the one enclosing it, and the part of the hello that has
arrived is checked as it arrives, so a bad hello fails on the first byte that makes it bad, not
after a timeout. The wait is bounded: a hello must be complete within :data:`MAX_CLIENT_HELLO`
bytes.
"""

from __future__ import annotations

import attrs

from .sni import normalise_name

__all__ = ["MAX_CLIENT_HELLO", "ClientHelloInfo", "NotClientHello", "parse_client_hello"]

_RECORD_HEADER = 5
_HANDSHAKE_HEADER = 4
_CONTENT_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_MAX_RECORD = 2**14  # plaintext records carry at most 16 KiB (RFC 8446 section 5.1)
#: the longest ClientHello message (its 4-byte header excluded) that is accepted. Browsers send
#: under 2 KiB even with post-quantum key shares; HAProxy inspects a 16 KiB buffer for SNI.
_MAX_MESSAGE = 16 * 1024
#: the most input bytes the parser looks at before deciding: the longest message, plus the
#: headers of up to 128 records to carry it (a hello cut into smaller pieces is refused)
MAX_CLIENT_HELLO = _HANDSHAKE_HEADER + _MAX_MESSAGE + 128 * _RECORD_HEADER

_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_NAME_TYPE_HOST = 0


class NotClientHello(ValueError):
    """The bytes are not (or not a valid) TLS ClientHello; the message says why."""


@attrs.frozen(kw_only=True)
class ClientHelloInfo:
    """What a ClientHello asks for, as far as routing cares."""

    #: the SNI host_name, lower-cased, without a trailing dot; None when the extension is absent
    server_name: str | None
    #: ALPN protocols offered, in order (each byte one character: ids are opaque bytes, and
    #: GREASE ids are not ASCII); () when the extension is absent
    alpn: tuple[str, ...]
    #: the hello's legacy_version, e.g. 0x0303 (TLS 1.3 hides behind 1.2's number)
    version: int


def parse_client_hello(data: bytes | bytearray) -> ClientHelloInfo | None:
    """The ClientHello at the start of ``data``.

    None while more bytes are needed; :class:`NotClientHello` as soon as the bytes cannot be
    one (not a handshake record, an SSLv2 hello, a record version other than 3.x, another
    handshake message, a length overrunning what encloses it...)."""
    window = bytes(data[:MAX_CLIENT_HELLO])
    message, complete = _join_records(window)
    if len(message) >= 1 and message[0] != _CLIENT_HELLO:
        raise NotClientHello(f"handshake message type {message[0]} is not client_hello")
    if len(message) < _HANDSHAKE_HEADER:
        return None  # (a few bytes: every record carries at least one)
    length = int.from_bytes(message[1:4], "big")
    if length > _MAX_MESSAGE:
        raise NotClientHello(f"ClientHello of {length} bytes is longer than {_MAX_MESSAGE}")
    try:
        # A partial message is parsed too: what has arrived must already be valid.
        info = _parse_hello(_Reader(message[_HANDSHAKE_HEADER:], end=length))
    except _Incomplete:
        info = None
    if complete:
        return info
    if len(window) >= MAX_CLIENT_HELLO:
        raise NotClientHello(f"ClientHello not complete within {MAX_CLIENT_HELLO} bytes")
    return None


def _join_records(window: bytes) -> tuple[bytes, bool]:
    """The handshake bytes carried by the records in ``window`` so far, and whether they hold
    the whole message (so reading more cannot help)."""
    if window[:1] and window[0] & 0x80:
        raise NotClientHello("SSLv2-style ClientHello (not supported)")
    payload = bytearray()
    offset = 0
    while offset < len(window):
        header = window[offset : offset + _RECORD_HEADER]
        if header[0] != _CONTENT_HANDSHAKE:
            raise NotClientHello(f"TLS record type {header[0]:#04x} is not handshake")
        if len(header) >= 2 and header[1] != 3:
            raise NotClientHello(f"TLS record version {header[1]}.x is not 3.x")
        if len(header) < _RECORD_HEADER:
            break
        length = int.from_bytes(header[3:5], "big")
        if not 0 < length <= _MAX_RECORD:
            raise NotClientHello(f"TLS record length {length} out of range")
        start = offset + _RECORD_HEADER
        payload += window[start : start + length]
        offset = start + length
        if len(payload) >= _HANDSHAKE_HEADER:
            needed = _HANDSHAKE_HEADER + int.from_bytes(payload[1:4], "big")
            if len(payload) >= needed:
                return bytes(payload[:needed]), True
            if needed > _HANDSHAKE_HEADER + _MAX_MESSAGE:
                break  # the caller refuses the length
    return bytes(payload), False


class _Incomplete(Exception):
    """The bytes so far are a valid start; more are needed."""


class _Reader:
    """Reads ``buffer[pos:end]``, where ``end`` is what the enclosing length field promised.

    Reading past ``end`` is the peer's fault (NotClientHello); reading past the bytes that
    have arrived only means waiting (_Incomplete)."""

    __slots__ = ("buffer", "end", "pos")

    def __init__(self, buffer: bytes, *, end: int, pos: int = 0) -> None:
        self.buffer = buffer
        self.end = end
        self.pos = pos

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > self.end:
            raise NotClientHello(f"{what} overruns its enclosing length")
        if self.pos + count > len(self.buffer):
            raise _Incomplete
        start = self.pos
        self.pos += count
        return self.buffer[start : self.pos]

    def integer(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, what: str, *, minimum: int = 0) -> _Reader:
        """A reader over the next ``size``-byte-length-prefixed vector, which it skips here."""
        length = self.integer(size, f"{what} length")
        if length < minimum:
            raise NotClientHello(f"{what} shorter than {minimum} bytes")
        if self.pos + length > self.end:
            raise NotClientHello(f"{what} overruns its enclosing length")
        inner = _Reader(self.buffer, end=self.pos + length, pos=self.pos)
        self.pos += length
        return inner

    def done(self, what: str) -> None:
        if self.pos != self.end:
            raise NotClientHello(f"{self.end - self.pos} stray bytes after {what}")


def _parse_hello(hello: _Reader) -> ClientHelloInfo:
    version = hello.integer(2, "legacy_version")
    if version >> 8 != 3:
        raise NotClientHello(f"ClientHello version {version:#06x} is not 3.x")
    hello.take(32, "random")
    if hello.vector(1, "session id").remaining() > 32:
        raise NotClientHello("session id longer than 32 bytes")
    suites = hello.vector(2, "cipher suites", minimum=2)
    if suites.remaining() % 2:
        raise NotClientHello("odd cipher suites length")
    hello.vector(1, "compression methods", minimum=1)
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if hello.remaining():  # extensions are optional before TLS 1.3
        extensions = hello.vector(2, "extensions")
        hello.done("extensions")
        seen: set[int] = set()
        while extensions.remaining():
            type_ = extensions.integer(2, "extension type")
            if type_ in seen:
                raise NotClientHello(f"duplicate extension {type_}")
            seen.add(type_)
            body = extensions.vector(2, f"extension {type_}")
            if type_ == _EXT_SERVER_NAME:
                server_name = _server_name(body)
            elif type_ == _EXT_ALPN:
                alpn = _alpn(body)
        extensions.done("extensions")
    hello.done("ClientHello")
    return ClientHelloInfo(server_name=server_name, alpn=alpn, version=version)


def _server_name(body: _Reader) -> str | None:
    """The first host_name of the server_name extension (RFC 6066 section 3)."""
    names = body.vector(2, "server name list", minimum=1)
    body.done("server name list")
    found: str | None = None
    while names.remaining():
        name_type = names.integer(1, "server name type")
        name = names.vector(2, "server name", minimum=1)
        raw = name.take(name.remaining(), "server name")
        if name_type == _NAME_TYPE_HOST and found is None:
            if not all(0x21 <= byte < 0x7F for byte in raw):
                raise NotClientHello("server name is not printable ASCII")
            found = normalise_name(raw.decode("ascii"))
            if not found:
                raise NotClientHello("empty server name")
    names.done("server name list")
    return found


def _alpn(body: _Reader) -> tuple[str, ...]:
    """The protocols offered by the ALPN extension (RFC 7301 section 3.1)."""
    protocols = body.vector(2, "ALPN protocol list", minimum=2)
    body.done("ALPN extension")
    offered: list[str] = []
    while protocols.remaining():
        protocol = protocols.vector(1, "ALPN protocol", minimum=1)
        offered.append(protocol.take(protocol.remaining(), "ALPN protocol").decode("latin-1"))
    protocols.done("ALPN protocol list")
    return tuple(offered)
