"""The HAProxy PROXY protocol, versions 1 and 2: parsing a received header, encoding one to send.

A proxy in front of trilb (or trilb in front of a server) prepends one header to the connection
that tells the client's real addresses (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt).
Whoever may send it can spoof any address, so the parser is as strict as HAProxy's: anything that
is not exactly a header is refused, and refused as early as the bytes allow, so a client that
speaks HTTP or TLS to a PROXY listener fails at once instead of waiting for a timeout.

Theory of operation
-------------------

The shell reads into a buffer and calls :func:`parse_proxy_header` after each read: ``None``
means "read more", a :class:`ProxyHeader` says how many bytes the header took (``length``; the
rest is payload), :class:`ProxyProtocolError` means "drop the connection". The wait is bounded by
the format itself: a v1 line ends within :data:`V1_MAX_LENGTH` bytes, a v2 header announces its
length in its first 16 bytes, so no header ever needs more than :data:`MAX_HEADER_LENGTH`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import attrs

__all__ = [
    "MAX_HEADER_LENGTH",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "encode_v1",
    "encode_v2",
    "encode_v2_local",
    "parse_proxy_header",
]

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: the longest v1 line, CRLF included: "PROXY UNKNOWN" with two full IPv6 addresses and ports
V1_MAX_LENGTH = 107
_V2_HEADER = 16  # signature, version/command, family/transport, 2-byte length
#: the most bytes any header takes: v2's length field is 16 bits
MAX_HEADER_LENGTH = _V2_HEADER + 0xFFFF

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_TYPE_NETNS = 0x30

_UNIQUE_ID_MAX = 128  # spec section 2.2.5

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
# family/transport byte -> (address bytes each, port bytes each); AF_UNIX carries 108-byte paths
# and no ports. Every other byte "must be rejected as invalid by receivers" (spec section 2.2).
_FAMILIES: dict[int, tuple[int, int]] = {
    0x00: (0, 0),  # AF_UNSPEC
    0x11: (4, 2),  # TCP over IPv4
    0x12: (4, 2),  # UDP over IPv4
    0x21: (16, 2),  # TCP over IPv6
    0x22: (16, 2),  # UDP over IPv6
    0x31: (108, 0),  # UNIX stream
    0x32: (108, 0),  # UNIX datagram
}

_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")  # decimal, no sign, no leading zero (octal confusion)
_IPV4 = re.compile(rb"[0-9.]{7,15}")
_IPV6 = re.compile(rb"[0-9A-Fa-f:.]{2,45}")  # no scope id ("%eth0"), no brackets
_V1_FAMILIES = (b"TCP4", b"TCP6", b"UNKNOWN")
# what a field still arriving may look like so far
_PARTIAL_IP = {b"TCP4": re.compile(rb"[0-9.]{0,15}"), b"TCP6": re.compile(rb"[0-9A-Fa-f:.]{0,45}")}
_PARTIAL_PORT = re.compile(rb"[0-9]{0,5}")


class ProxyProtocolError(ValueError):
    """A header that is not valid; the message says what is wrong (for the log line)."""


@attrs.frozen(kw_only=True)
class ProxyHeader:
    """What a PROXY header says about the connection it arrived on."""

    version: int
    #: v2 LOCAL command or v1 "UNKNOWN": the sender speaks for itself (a health check), so the
    #: connection's real addresses apply
    local: bool
    #: (ip, port) with the ip in text form (IPv6 without brackets); None when the header names no
    #: internet address (local, AF_UNSPEC, AF_UNIX)
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    #: v2 type-length-value extensions in arrival order, unknown types included
    tlvs: tuple[tuple[int, bytes], ...] = ()
    #: how many bytes of the input the header took; what follows is the connection's payload
    length: int

    def tlv(self, type_: int) -> bytes | None:
        """The value of the first TLV of ``type_``, or None."""
        for found, value in self.tlvs:
            if found == type_:
                return value
        return None


def parse_proxy_header(data: bytes | bytearray) -> ProxyHeader | None:
    """The header at the start of ``data``.

    None while more bytes are needed to decide; :class:`ProxyProtocolError` as soon as the bytes
    seen cannot start a valid header (a wrong signature fails on its first wrong byte)."""
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    if data[:1] == V1_SIGNATURE[:1]:
        return _parse_v1(data)
    if not data:
        return None
    raise ProxyProtocolError("not a PROXY protocol header (wrong signature)")


# -- version 1 -------------------------------------------------------------------------------------


def _parse_v1(data: bytes | bytearray) -> ProxyHeader | None:
    window = bytes(data[:V1_MAX_LENGTH])
    end = window.find(b"\r\n")
    line = window if end < 0 else window[:end]
    _check_v1_start(line, complete=end >= 0)
    if end < 0:
        if len(window) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"v1: no CRLF within {V1_MAX_LENGTH} bytes")
        return None
    fields = line.split(b" ")
    if fields[1] == b"UNKNOWN":
        return ProxyHeader(version=1, local=True, source=None, destination=None, length=end + 2)
    if len(fields) != 6:
        raise ProxyProtocolError("v1: expected 'PROXY family src dst sport dport'")
    family = fields[1]
    source = _v1_address(family, fields[2]), _v1_port(fields[4])
    destination = _v1_address(family, fields[3]), _v1_port(fields[5])
    return ProxyHeader(
        version=1, local=False, source=source, destination=destination, length=end + 2
    )


def _check_v1_start(line: bytes, *, complete: bool) -> None:
    """Refuse a (maybe partial) v1 line on what no later byte can mend."""
    if not V1_SIGNATURE.startswith(line[:6]):
        raise ProxyProtocolError("not a PROXY protocol header (wrong signature)")
    # No CRLF yet: a CR may only be the last byte seen (its LF still to come).
    if b"\n" in line or b"\r" in line[:-1] or (complete and line.endswith(b"\r")):
        raise ProxyProtocolError("v1: a lone CR or LF in the line")
    line = line.removesuffix(b"\r")  # the start of the CRLF
    if len(line) <= len(V1_SIGNATURE):
        if complete:
            raise ProxyProtocolError("v1: no family")
        return
    fields = line.split(b" ")
    family = fields[1]
    if len(fields) > 2 or complete:  # the family word is complete
        if family not in _V1_FAMILIES:
            raise ProxyProtocolError(f"v1: unknown family {family[:8]!r}")
    elif not any(f.startswith(family) for f in _V1_FAMILIES):
        raise ProxyProtocolError(f"v1: unknown family {family[:8]!r}")
    if family == b"UNKNOWN":
        return  # anything may follow, up to the CRLF
    if len(fields) > 6:
        raise ProxyProtocolError("v1: too many fields")
    # Fields followed by a space are complete: check them now (addresses, then ports); the one
    # still arriving must at least be made of the right characters.
    done = fields if complete else fields[:-1]
    for index, field in enumerate(done[2:], start=2):
        if index < 4:
            _v1_address(family, field)
        else:
            _v1_port(field)
    if not complete and len(fields) > 2:
        index, partial = len(fields) - 1, fields[-1]
        pattern = _PARTIAL_PORT if index >= 4 else _PARTIAL_IP[family]
        if not pattern.fullmatch(partial):
            what = "port" if index >= 4 else f"{family.decode()} address"
            raise ProxyProtocolError(f"v1: not a {what}: {partial[:45]!r}")


def _v1_address(family: bytes, field: bytes) -> str:
    try:
        if family == b"TCP4" and _IPV4.fullmatch(field):
            return str(ipaddress.IPv4Address(field.decode("ascii")))
        if family == b"TCP6" and _IPV6.fullmatch(field):
            return str(ipaddress.IPv6Address(field.decode("ascii")))
    except ValueError:
        pass
    raise ProxyProtocolError(f"v1: not a {family.decode()} address: {field[:45]!r}")


def _v1_port(field: bytes) -> int:
    if _PORT.fullmatch(field) and int(field) <= 0xFFFF:
        return int(field)
    raise ProxyProtocolError(f"v1: bad port {field[:8]!r}")


# -- version 2 -------------------------------------------------------------------------------------


def _parse_v2(data: bytes | bytearray) -> ProxyHeader | None:
    signature = bytes(data[: len(V2_SIGNATURE)])
    if not V2_SIGNATURE.startswith(signature):
        raise ProxyProtocolError("not a PROXY protocol header (wrong signature)")
    if len(data) > 12:
        version, command = data[12] >> 4, data[12] & 0x0F
        if version != 2:
            raise ProxyProtocolError(f"v2: unsupported version {version}")
        if command not in (_CMD_LOCAL, _CMD_PROXY):
            raise ProxyProtocolError(f"v2: unknown command {command:#x}")
    if len(data) > 13 and data[13] not in _FAMILIES:
        raise ProxyProtocolError(f"v2: unknown family {data[13]:#04x}")
    if len(data) < _V2_HEADER:
        return None
    total = _V2_HEADER + int.from_bytes(data[14:16], "big")
    if len(data) < total:
        return None
    header = bytes(data[:total])
    local = data[12] & 0x0F == _CMD_LOCAL
    address_size, port_size = _FAMILIES[data[13]]
    block = 2 * (address_size + port_size)
    if total - _V2_HEADER < block:
        if local:  # LOCAL discards the address block, family included (spec section 2.2)
            return ProxyHeader(version=2, local=True, source=None, destination=None, length=total)
        raise ProxyProtocolError(f"v2: bad length {total - _V2_HEADER} for family {data[13]:#04x}")
    tlvs = _parse_tlvs(header, _V2_HEADER + block)
    source = destination = None
    if not local and port_size:
        addresses = header[_V2_HEADER : _V2_HEADER + 2 * address_size]
        ports = header[_V2_HEADER + 2 * address_size : _V2_HEADER + block]
        source = _ip_text(addresses[:address_size]), int.from_bytes(ports[:2], "big")
        destination = _ip_text(addresses[address_size:]), int.from_bytes(ports[2:], "big")
    return ProxyHeader(
        version=2, local=local, source=source, destination=destination, tlvs=tlvs, length=total
    )


def _parse_tlvs(header: bytes, offset: int) -> tuple[tuple[int, bytes], ...]:
    tlvs: list[tuple[int, bytes]] = []
    while offset < len(header):
        if offset + 3 > len(header):
            raise ProxyProtocolError("v2: truncated TLV header")
        type_ = header[offset]
        end = offset + 3 + int.from_bytes(header[offset + 1 : offset + 3], "big")
        if end > len(header):
            raise ProxyProtocolError(f"v2: TLV {type_:#04x} overruns the header")
        value = header[offset + 3 : end]
        if type_ == PP2_TYPE_CRC32C:
            _check_crc32c(header, offset + 3, value)
        elif type_ == PP2_TYPE_UNIQUE_ID and len(value) > _UNIQUE_ID_MAX:
            raise ProxyProtocolError(f"v2: unique ID longer than {_UNIQUE_ID_MAX} bytes")
        tlvs.append((type_, value))
        offset = end
    return tuple(tlvs)


def _check_crc32c(header: bytes, at: int, value: bytes) -> None:
    """The checksum covers the whole header with its own 4 bytes zeroed (spec section 2.2.3)."""
    if len(value) != 4:
        raise ProxyProtocolError("v2: CRC32C TLV is not 4 bytes")
    zeroed = header[:at] + bytes(4) + header[at + 4 :]
    if _crc32c(zeroed) != int.from_bytes(value, "big"):
        raise ProxyProtocolError("v2: CRC32C mismatch")


def _ip_text(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


# -- encoding --------------------------------------------------------------------------------------


def encode_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 line, ``TCP4`` or ``TCP6`` by the addresses' family (ValueError if they differ)."""
    src, dst = _ip(source), _ip(destination)
    if src.version != dst.version:
        raise ValueError(f"mixed address families: {source[0]!r} and {destination[0]!r}")
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    *,
    tlvs: Sequence[tuple[int, bytes]] = (),
    crc32c: bool = False,
) -> bytes:
    """A v2 header: LOCAL when both addresses are None, else PROXY with TCP over IPv4/IPv6.

    ``crc32c`` appends a checksum TLV (spec section 2.2.3) after ``tlvs``."""
    if source is None and destination is None:
        command, family, block = _CMD_LOCAL, 0x00, b""
    elif source is None or destination is None:
        raise ValueError("encode_v2 needs both addresses, or neither for LOCAL")
    else:
        src, dst = _ip(source), _ip(destination)
        if src.version != dst.version:
            raise ValueError(f"mixed address families: {source[0]!r} and {destination[0]!r}")
        command, family = _CMD_PROXY, 0x11 if src.version == 4 else 0x21
        ports = source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
        block = src.packed + dst.packed + ports
    extensions = b"".join(_tlv(type_, value) for type_, value in tlvs)
    if crc32c:
        extensions += _tlv(PP2_TYPE_CRC32C, bytes(4))
    length = len(block) + len(extensions)
    if length > 0xFFFF:
        raise ValueError(f"v2 header too long ({length} bytes after the first 16)")
    header = (
        V2_SIGNATURE
        + bytes([0x20 | command, family])
        + length.to_bytes(2, "big")
        + block
        + extensions
    )
    if crc32c:
        header = header[:-4] + _crc32c(header).to_bytes(4, "big")
    return header


def encode_v2_local() -> bytes:
    """A v2 LOCAL header without addresses: what a health check sends."""
    return encode_v2(None, None)


def _ip(address: tuple[str, int]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    host, port = address
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(ip.packed)  # a link-local zone means nothing to the receiver
    return ip


def _tlv(type_: int, value: bytes) -> bytes:
    if not 0 <= type_ <= 0xFF:
        raise ValueError(f"TLV type out of range: {type_}")
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV {type_:#04x} value too long ({len(value)} bytes)")
    return bytes([type_]) + len(value).to_bytes(2, "big") + value


# -- CRC32C (Castagnoli, RFC 4960 appendix B): not in the stdlib ----------------------------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
