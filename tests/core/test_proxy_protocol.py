"""trilb.core.proxy_protocol: PROXY protocol v1/v2 parsing and encoding (sans-IO, table-driven)."""

from __future__ import annotations

import ipaddress

import pytest

from trilb.core.proxy_protocol import (
    MAX_HEADER_LENGTH,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    encode_v2_local,
    parse_proxy_header,
)

SIG = V2_SIGNATURE
IPV4_BLOCK = bytes([192, 168, 0, 1, 192, 168, 0, 11]) + (56324).to_bytes(2, "big") + b"\x01\xbb"
IPV6_SRC = bytes.fromhex("20010db8000000000000000000000001")
IPV6_DST = bytes.fromhex("20010db8000000000000000000000002")
IPV6_BLOCK = IPV6_SRC + IPV6_DST + b"\x04\xd2\x00\x50"  # ports 1234, 80
UNIX_BLOCK = b"/run/src.sock".ljust(108, b"\0") + b"/run/dst.sock".ljust(108, b"\0")
V4_MAPPED = str(ipaddress.IPv6Address("::ffff:1.2.3.4"))  # (its text form changed in Python 3.13)


def v2(ver_cmd: int, family: int, body: bytes, *, length: int | None = None) -> bytes:
    """A v2 header laid out by hand, as in the spec's ``struct proxy_hdr_v2``."""
    size = len(body) if length is None else length
    return SIG + bytes([ver_cmd, family]) + size.to_bytes(2, "big") + body


def tlv(type_: int, value: bytes, *, length: int | None = None) -> bytes:
    size = len(value) if length is None else length
    return bytes([type_]) + size.to_bytes(2, "big") + value


def crc32c(data: bytes) -> int:
    """Bit-at-a-time CRC32C, independent of the module's table-driven one."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def header(
    version: int,
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    length: int,
    *,
    local: bool = False,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> ProxyHeader:
    return ProxyHeader(
        version=version,
        local=local,
        source=source,
        destination=destination,
        tlvs=tlvs,
        length=length,
    )


# -- constants -------------------------------------------------------------------------------------


def test_constants() -> None:
    assert V2_SIGNATURE == b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
    assert V1_MAX_LENGTH == 107
    assert MAX_HEADER_LENGTH == 16 + 65535


# -- version 1 -------------------------------------------------------------------------------------

V1_VALID = [
    pytest.param(
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        header(1, ("192.168.0.1", 56324), ("192.168.0.11", 443), 47),
        id="tcp4-spec-example",
    ),
    pytest.param(
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        header(1, ("255.255.255.255", 65535), ("255.255.255.255", 65535), 56),
        id="tcp4-longest",
    ),
    pytest.param(
        b"PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n",
        header(1, ("0.0.0.0", 0), ("10.0.0.1", 0), 33),
        id="tcp4-port-zero",
    ),
    pytest.param(
        b"PROXY TCP6 2001:DB8::1 ::1 1234 80\r\n",
        header(1, ("2001:db8::1", 1234), ("::1", 80), 36),
        id="tcp6-compressed-uppercase",
    ),
    pytest.param(
        b"PROXY TCP6 2001:0db8:0000:0000:0000:0000:0000:0001 ::ffff:1.2.3.4 1 2\r\n",
        header(1, ("2001:db8::1", 1), (V4_MAPPED, 2), 71),
        id="tcp6-full-and-v4-mapped",
    ),
    pytest.param(
        b"PROXY UNKNOWN\r\n",
        header(1, None, None, 15, local=True),
        id="unknown-short",
    ),
    pytest.param(
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ::1 65535 65535\r\n",
        header(1, None, None, 71, local=True),
        id="unknown-with-addresses",
    ),
    pytest.param(
        b"PROXY UNKNOWN whatever the sender likes\r\n",
        header(1, None, None, 41, local=True),
        id="unknown-anything",
    ),
    pytest.param(
        b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n",
        header(1, None, None, V1_MAX_LENGTH, local=True),
        id="unknown-exactly-107-bytes",
    ),
]


@pytest.mark.parametrize(("line", "expected"), V1_VALID)
def test_v1_valid(line: bytes, expected: ProxyHeader) -> None:
    assert expected.length == len(line)
    assert parse_proxy_header(line) == expected
    assert parse_proxy_header(bytearray(line)) == expected


@pytest.mark.parametrize(("line", "expected"), V1_VALID)
def test_v1_payload_after_header(line: bytes, expected: ProxyHeader) -> None:
    """What follows the CRLF is payload, even when it looks like another header."""
    for payload in (b"GET / HTTP/1.1\r\n\r\n", line, b"\r\n", b"\x16\x03\x01" + bytes(200)):
        parsed = parse_proxy_header(line + payload)
        assert parsed == expected
        assert (line + payload)[parsed.length :] == payload


@pytest.mark.parametrize(("line", "expected"), V1_VALID)
def test_v1_split_at_every_byte(line: bytes, expected: ProxyHeader) -> None:
    for end in range(len(line)):
        assert parse_proxy_header(line[:end]) is None, line[:end]
    assert parse_proxy_header(line) == expected


V1_INVALID = [
    # the line's length
    pytest.param(b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15) + b"\r\n", id="108-bytes"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * 200, id="no-crlf-within-107"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n", id="bare-lf"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\rX\n", id="bare-cr"),
    pytest.param(b"PROXY UNKNOWN a\nb\r\n", id="bare-lf-in-unknown"),
    # the family
    pytest.param(b"PROXY TCP5 1.2.3.4 5.6.7.8 80 443\r\n", id="family-tcp5"),
    pytest.param(b"PROXY tcp4 1.2.3.4 5.6.7.8 80 443\r\n", id="family-lowercase"),
    pytest.param(b"PROXY UDP4 1.2.3.4 5.6.7.8 80 443\r\n", id="family-udp4"),
    pytest.param(b"PROXY UNKNOWNX\r\n", id="family-unknownx"),
    pytest.param(b"PROXY TCP4\r\n", id="family-only"),
    pytest.param(b"PROXY \r\n", id="family-empty"),
    pytest.param(b"PROXY\r\n", id="no-family"),
    pytest.param(b"PROXYTCP4 1.2.3.4 5.6.7.8 80 443\r\n", id="no-space-after-proxy"),
    pytest.param(b"proxy TCP4 1.2.3.4 5.6.7.8 80 443\r\n", id="lowercase-proxy"),
    # addresses
    pytest.param(b"PROXY TCP4 1.2.3.256 5.6.7.8 80 443\r\n", id="ipv4-octet-256"),
    pytest.param(b"PROXY TCP4 1.2.3 5.6.7.8 80 443\r\n", id="ipv4-three-octets"),
    pytest.param(b"PROXY TCP4 01.2.3.4 5.6.7.8 80 443\r\n", id="ipv4-leading-zero"),
    pytest.param(b"PROXY TCP4 1.2.3.4 localhost 80 443\r\n", id="ipv4-a-name"),
    pytest.param(b"PROXY TCP4 ::1 ::2 80 443\r\n", id="ipv6-in-tcp4"),
    pytest.param(b"PROXY TCP6 1.2.3.4 5.6.7.8 80 443\r\n", id="ipv4-in-tcp6"),
    pytest.param(b"PROXY TCP6 ::1 5.6.7.8 80 443\r\n", id="ipv4-destination-in-tcp6"),
    pytest.param(b"PROXY TCP6 fe80::1%eth0 ::1 80 443\r\n", id="ipv6-scope-id"),
    pytest.param(b"PROXY TCP6 [::1] ::1 80 443\r\n", id="ipv6-brackets"),
    pytest.param(b"PROXY TCP6 1::2::3 ::1 80 443\r\n", id="ipv6-two-double-colons"),
    pytest.param(b"PROXY TCP6 12345::1 ::1 80 443\r\n", id="ipv6-five-hex-digits"),
    pytest.param(b"PROXY TCP4 \xc3\xa9.2.3.4 5.6.7.8 80 443\r\n", id="non-ascii-address"),
    # ports
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n", id="port-65536"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 99999\r\n", id="port-99999"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n", id="port-plus-sign"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 443\r\n", id="port-negative"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n", id="port-leading-zero"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 0x50 443\r\n", id="port-hex"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443a\r\n", id="port-trailing-letter"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 \xd9\xa1\r\n", id="port-arabic-digit"),
    # spaces and fields
    pytest.param(b"PROXY  TCP4 1.2.3.4 5.6.7.8 80 443\r\n", id="double-space-after-proxy"),
    pytest.param(b"PROXY TCP4  1.2.3.4 5.6.7.8 80 443\r\n", id="double-space-after-family"),
    pytest.param(b"PROXY TCP4 1.2.3.4  5.6.7.8 80 443\r\n", id="double-space-between-addresses"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8  80 443\r\n", id="double-space-before-port"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 80  443\r\n", id="double-space-between-ports"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 \r\n", id="trailing-space"),
    pytest.param(b"PROXY TCP4 1.2.3.4\t5.6.7.8 80 443\r\n", id="tab"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", id="missing-destination-port"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8\r\n", id="missing-ports"),
    pytest.param(b"PROXY TCP4 1.2.3.4\r\n", id="missing-destination"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 8080\r\n", id="extra-field"),
]


@pytest.mark.parametrize("line", V1_INVALID)
def test_v1_invalid(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(line)


def test_v1_no_crlf_decides_at_107_bytes() -> None:
    line = b"PROXY UNKNOWN " + b"x" * 200
    assert parse_proxy_header(line[: V1_MAX_LENGTH - 1]) is None
    with pytest.raises(ProxyProtocolError, match="107"):
        parse_proxy_header(line[:V1_MAX_LENGTH])


# -- early rejection: a prefix that no more bytes can mend fails at once ---------------------------

EARLY_ERRORS = [
    pytest.param(b"G", id="http-first-byte"),
    pytest.param(b"GET ", id="http"),
    pytest.param(b"\x16\x03\x01", id="tls"),
    pytest.param(b"\x00", id="nul"),
    pytest.param(b"PROXX", id="v1-signature"),
    pytest.param(b"PROXY\r", id="v1-signature-cr"),
    pytest.param(b"PROXY X", id="v1-family-x"),
    pytest.param(b"PROXY TCP4X", id="v1-family-tcp4x"),
    pytest.param(b"PROXY TCP4 1\n", id="v1-bare-lf"),
    pytest.param(b"PROXY TCP4 a", id="v1-address-letter"),
    pytest.param(b"PROXY TCP4 1.2.3.4.5.6.7.8.9", id="v1-address-too-long"),
    pytest.param(b"PROXY TCP4 1.2.3.4  ", id="v1-double-space"),
    pytest.param(b"PROXY TCP4 1.2.3.256 ", id="v1-bad-address-complete"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 8a", id="v1-port-letter"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 123456", id="v1-port-six-digits"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 ", id="v1-port-out-of-range"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", id="v1-seventh-field"),
    pytest.param(b"PROXY TCP6 g", id="v1-ipv6-letter"),
    pytest.param(b"\r\n\r\n\x00X", id="v2-signature"),
    pytest.param(b"\r\n\r\n\x00\r\nQUIT\r", id="v2-signature-last-byte"),
    pytest.param(b"\r\r", id="v2-signature-second-byte"),
    pytest.param(SIG + b"\x11", id="v2-version-1"),
    pytest.param(SIG + b"\x31", id="v2-version-3"),
    pytest.param(SIG + b"\x01", id="v2-version-0"),
    pytest.param(SIG + b"\x22", id="v2-command-2"),
    pytest.param(SIG + b"\x2f", id="v2-command-f"),
    pytest.param(SIG + b"\x21\x13", id="v2-family-13"),
    pytest.param(SIG + b"\x20\x41", id="v2-family-41-local"),
]


@pytest.mark.parametrize("prefix", EARLY_ERRORS)
def test_rejected_before_the_header_is_complete(prefix: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(prefix)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"P",
        b"PROXY",
        b"PROXY ",
        b"PROXY U",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r",  # the LF may still come
        b"\r",
        SIG[:11],
        SIG + b"\x21\x11\x00",
    ],
)
def test_valid_prefixes_wait(data: bytes) -> None:
    assert parse_proxy_header(data) is None


# -- version 2 -------------------------------------------------------------------------------------

TLVS = (
    tlv(PP2_TYPE_ALPN, b"h2")
    + tlv(PP2_TYPE_AUTHORITY, b"example.com")
    + tlv(PP2_TYPE_NOOP, b"\0\0\0")
    + tlv(0xE0, b"custom")
    + tlv(PP2_TYPE_UNIQUE_ID, b"")
)
TLVS_PARSED = (
    (PP2_TYPE_ALPN, b"h2"),
    (PP2_TYPE_AUTHORITY, b"example.com"),
    (PP2_TYPE_NOOP, b"\0\0\0"),
    (0xE0, b"custom"),
    (PP2_TYPE_UNIQUE_ID, b""),
)
SSL_TLV_VALUE = (
    b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
)

V2_VALID = [
    pytest.param(
        v2(0x21, 0x11, IPV4_BLOCK),
        header(2, ("192.168.0.1", 56324), ("192.168.0.11", 443), 28),
        id="proxy-tcp4",
    ),
    pytest.param(
        v2(0x21, 0x21, IPV6_BLOCK),
        header(2, ("2001:db8::1", 1234), ("2001:db8::2", 80), 52),
        id="proxy-tcp6",
    ),
    pytest.param(
        v2(0x21, 0x12, IPV4_BLOCK),
        header(2, ("192.168.0.1", 56324), ("192.168.0.11", 443), 28),
        id="proxy-udp4",
    ),
    pytest.param(
        v2(0x21, 0x22, IPV6_BLOCK),
        header(2, ("2001:db8::1", 1234), ("2001:db8::2", 80), 52),
        id="proxy-udp6",
    ),
    pytest.param(
        v2(0x21, 0x21, bytes(32) + b"\0\0\0\0"),
        header(2, ("::", 0), ("::", 0), 52),
        id="proxy-tcp6-zeros",
    ),
    pytest.param(v2(0x20, 0x00, b""), header(2, None, None, 16, local=True), id="local"),
    pytest.param(
        v2(0x20, 0x11, IPV4_BLOCK),
        header(2, None, None, 28, local=True),
        id="local-addresses-ignored",
    ),
    pytest.param(
        v2(0x20, 0x11, b""), header(2, None, None, 16, local=True), id="local-tcp4-no-addresses"
    ),
    pytest.param(
        v2(0x20, 0x21, b"\x01\x02\x03"),
        header(2, None, None, 19, local=True),
        id="local-short-block-discarded",
    ),
    pytest.param(
        v2(0x20, 0x00, TLVS),
        header(2, None, None, 16 + len(TLVS), local=True, tlvs=TLVS_PARSED),
        id="local-with-tlvs",
    ),
    pytest.param(v2(0x21, 0x00, b""), header(2, None, None, 16), id="proxy-unspec"),
    pytest.param(
        v2(0x21, 0x00, tlv(PP2_TYPE_AUTHORITY, b"a")),
        header(2, None, None, 20, tlvs=((PP2_TYPE_AUTHORITY, b"a"),)),
        id="proxy-unspec-with-tlv",
    ),
    pytest.param(v2(0x21, 0x31, UNIX_BLOCK), header(2, None, None, 232), id="proxy-unix-stream"),
    pytest.param(v2(0x21, 0x32, UNIX_BLOCK), header(2, None, None, 232), id="proxy-unix-dgram"),
    pytest.param(
        v2(0x21, 0x11, IPV4_BLOCK + TLVS),
        header(
            2,
            ("192.168.0.1", 56324),
            ("192.168.0.11", 443),
            28 + len(TLVS),
            tlvs=TLVS_PARSED,
        ),
        id="proxy-tcp4-with-tlvs",
    ),
    pytest.param(
        v2(0x21, 0x21, IPV6_BLOCK + tlv(PP2_TYPE_SSL, SSL_TLV_VALUE)),
        header(
            2,
            ("2001:db8::1", 1234),
            ("2001:db8::2", 80),
            52 + 3 + len(SSL_TLV_VALUE),
            tlvs=((PP2_TYPE_SSL, SSL_TLV_VALUE),),
        ),
        id="proxy-tcp6-ssl-tlv-kept-whole",
    ),
    pytest.param(
        v2(0x21, 0x11, IPV4_BLOCK + tlv(PP2_TYPE_ALPN, b"h2") + tlv(PP2_TYPE_ALPN, b"http/1.1")),
        header(
            2,
            ("192.168.0.1", 56324),
            ("192.168.0.11", 443),
            28 + 5 + 11,
            tlvs=((PP2_TYPE_ALPN, b"h2"), (PP2_TYPE_ALPN, b"http/1.1")),
        ),
        id="duplicate-tlv-kept",
    ),
    pytest.param(
        v2(0x21, 0x11, IPV4_BLOCK + tlv(PP2_TYPE_UNIQUE_ID, b"u" * 128)),
        header(
            2,
            ("192.168.0.1", 56324),
            ("192.168.0.11", 443),
            28 + 3 + 128,
            tlvs=((PP2_TYPE_UNIQUE_ID, b"u" * 128),),
        ),
        id="unique-id-128-bytes",
    ),
]


@pytest.mark.parametrize(("data", "expected"), V2_VALID)
def test_v2_valid(data: bytes, expected: ProxyHeader) -> None:
    assert expected.length == len(data)
    assert parse_proxy_header(data) == expected
    assert parse_proxy_header(bytearray(data)) == expected


@pytest.mark.parametrize(("data", "expected"), V2_VALID)
def test_v2_payload_after_header(data: bytes, expected: ProxyHeader) -> None:
    for payload in (b"GET / HTTP/1.1\r\n\r\n", data, b"\x16\x03\x01" + bytes(300)):
        parsed = parse_proxy_header(data + payload)
        assert parsed == expected
        assert (data + payload)[parsed.length :] == payload


@pytest.mark.parametrize(("data", "expected"), V2_VALID)
def test_v2_truncated_at_every_byte(data: bytes, expected: ProxyHeader) -> None:
    for end in range(len(data)):
        assert parse_proxy_header(data[:end]) is None, data[:end]
    assert parse_proxy_header(data) == expected


def test_tlv_lookup() -> None:
    parsed = parse_proxy_header(v2(0x21, 0x11, IPV4_BLOCK + TLVS))
    assert parsed is not None
    assert parsed.tlv(PP2_TYPE_ALPN) == b"h2"
    assert parsed.tlv(PP2_TYPE_AUTHORITY) == b"example.com"
    assert parsed.tlv(0xE0) == b"custom"
    assert parsed.tlv(PP2_TYPE_UNIQUE_ID) == b""  # present but empty is not absent
    assert parsed.tlv(PP2_TYPE_SSL) is None


def test_v2_largest_header() -> None:
    """The length field bounds the wait: 16 + 65535 bytes at most."""
    noop = tlv(PP2_TYPE_NOOP, bytes(0xFFFF - len(IPV4_BLOCK) - 3))
    data = v2(0x21, 0x11, IPV4_BLOCK + noop)
    assert len(data) == MAX_HEADER_LENGTH
    assert parse_proxy_header(data[:-1]) is None
    parsed = parse_proxy_header(data + b"payload")
    assert parsed is not None
    assert parsed.length == MAX_HEADER_LENGTH


V2_INVALID = [
    pytest.param(SIG[:-1] + b"X" + b"\x21\x11\x00\x0c" + IPV4_BLOCK, "signature", id="signature"),
    pytest.param(v2(0x11, 0x11, IPV4_BLOCK), "version", id="version-1"),
    pytest.param(v2(0xF1, 0x11, IPV4_BLOCK), "version", id="version-15"),
    pytest.param(v2(0x22, 0x11, IPV4_BLOCK), "command", id="command-2"),
    pytest.param(v2(0x2F, 0x00, b""), "command", id="command-f"),
    pytest.param(v2(0x21, 0x13, IPV4_BLOCK), "family", id="family-tcp4-transport-3"),
    pytest.param(v2(0x21, 0x10, IPV4_BLOCK), "family", id="family-inet-unspec-transport"),
    pytest.param(v2(0x21, 0x01, b""), "family", id="family-unspec-stream"),
    pytest.param(v2(0x21, 0x41, IPV4_BLOCK), "family", id="family-4"),
    pytest.param(v2(0x21, 0xFF, b""), "family", id="family-ff"),
    pytest.param(v2(0x20, 0x13, b""), "family", id="family-unknown-even-for-local"),
    pytest.param(v2(0x21, 0x11, IPV4_BLOCK[:11]), "bad length", id="length-tcp4-11"),
    pytest.param(v2(0x21, 0x11, b""), "bad length", id="length-tcp4-0"),
    pytest.param(v2(0x21, 0x12, IPV4_BLOCK[:8]), "bad length", id="length-udp4-8"),
    pytest.param(v2(0x21, 0x21, IPV6_BLOCK[:35]), "bad length", id="length-tcp6-35"),
    pytest.param(v2(0x21, 0x21, IPV4_BLOCK), "bad length", id="length-tcp6-ipv4-block"),
    pytest.param(v2(0x21, 0x31, UNIX_BLOCK[:215]), "bad length", id="length-unix-215"),
    pytest.param(
        v2(0x21, 0x11, IPV4_BLOCK + tlv(PP2_TYPE_ALPN, b"h2", length=3)),
        "overruns",
        id="tlv-overruns-by-one",
    ),
    pytest.param(
        v2(0x21, 0x11, IPV4_BLOCK + tlv(PP2_TYPE_ALPN, b"h2", length=0xFFFF)),
        "overruns",
        id="tlv-overruns-far",
    ),
    pytest.param(
        v2(0x21, 0x00, tlv(PP2_TYPE_NOOP, b"", length=1)),
        "overruns",
        id="tlv-overruns-unspec",
    ),
    pytest.param(
        v2(0x20, 0x00, tlv(PP2_TYPE_NOOP, b"abc", length=4)),
        "overruns",
        id="tlv-overruns-local",
    ),
    pytest.param(v2(0x21, 0x11, IPV4_BLOCK + b"\x01"), "truncated TLV", id="tlv-one-byte"),
    pytest.param(v2(0x21, 0x11, IPV4_BLOCK + b"\x01\x00"), "truncated TLV", id="tlv-two-bytes"),
    pytest.param(
        v2(0x21, 0x11, IPV4_BLOCK + tlv(PP2_TYPE_ALPN, b"h2") + b"\x00"),
        "truncated TLV",
        id="tlv-stray-byte-after",
    ),
    pytest.param(
        v2(0x21, 0x11, IPV4_BLOCK + tlv(PP2_TYPE_CRC32C, b"\0\0\0")),
        "CRC32C",
        id="crc32c-three-bytes",
    ),
    pytest.param(
        v2(0x21, 0x11, IPV4_BLOCK + tlv(PP2_TYPE_CRC32C, b"\0\0\0\0")),
        "CRC32C mismatch",
        id="crc32c-wrong",
    ),
    pytest.param(
        v2(0x21, 0x11, IPV4_BLOCK + tlv(PP2_TYPE_UNIQUE_ID, b"u" * 129)),
        "unique ID",
        id="unique-id-129-bytes",
    ),
]


@pytest.mark.parametrize(("data", "message"), V2_INVALID)
def test_v2_invalid(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(data)
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(data + b"GET / HTTP/1.1\r\n\r\n")


def test_v2_checksum_verified() -> None:
    data = encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), tlvs=[(PP2_TYPE_ALPN, b"h2")], crc32c=True)
    parsed = parse_proxy_header(data)
    assert parsed is not None
    checksum = parsed.tlv(PP2_TYPE_CRC32C)
    assert checksum is not None
    assert int.from_bytes(checksum, "big") == crc32c(data[:-4] + bytes(4))
    # A flipped bit in the addresses, the ports or a TLV value is caught (a flip elsewhere breaks
    # the structure and fails on its own).
    for index in [*range(16, 28), 31, 32]:
        tampered = bytearray(data)
        tampered[index] ^= 0x01
        with pytest.raises(ProxyProtocolError, match="CRC32C mismatch"):
            parse_proxy_header(tampered)


def test_crc32c_reference_value() -> None:
    """The test's own CRC32C against the check value of RFC 3720 / the Castagnoli catalogue."""
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4, 32 bytes of zeroes


# -- encoding --------------------------------------------------------------------------------------


def test_encode_v2_matches_the_spec_layout() -> None:
    """Byte for byte what section 2.2 of the spec describes."""
    expected = (
        b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # signature
        b"\x21"  # version 2, PROXY
        b"\x11"  # AF_INET, STREAM
        b"\x00\x11"  # 12 address bytes + a 5-byte TLV = 17
        b"\xc0\xa8\x00\x01"  # 192.168.0.1
        b"\xc0\xa8\x00\x0b"  # 192.168.0.11
        b"\xdc\x04"  # 56324
        b"\x01\xbb"  # 443
        b"\x01\x00\x02h2"  # PP2_TYPE_ALPN, length 2, "h2"
    )
    got = encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443), tlvs=[(PP2_TYPE_ALPN, b"h2")])
    assert got == expected


def test_encode_v2_ipv6_and_local_layout() -> None:
    assert encode_v2(("2001:db8::1", 1234), ("2001:db8::2", 80)) == (
        SIG + b"\x21\x21\x00\x24" + IPV6_BLOCK
    )
    assert encode_v2_local() == SIG + b"\x20\x00\x00\x00"
    assert encode_v2(None, None) == encode_v2_local()
    assert encode_v2(None, None, tlvs=[(PP2_TYPE_NOOP, b"")]) == (
        SIG + b"\x20\x00\x00\x03\x04\x00\x00"
    )


def test_encode_v1_layout() -> None:
    assert encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert encode_v1(("2001:0DB8::0001", 1), ("::1", 2)) == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"


ROUND_TRIPS = [
    pytest.param(("192.168.0.1", 56324), ("192.168.0.11", 443), id="ipv4"),
    pytest.param(("0.0.0.0", 0), ("255.255.255.255", 65535), id="ipv4-extremes"),
    pytest.param(("2001:db8::1", 1234), ("2001:db8::2", 80), id="ipv6"),
    pytest.param(("::", 0), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535), id="ipv6-extremes"),
    pytest.param(("::1", 5), ("::1", 6), id="ipv6-loopback"),
]


@pytest.mark.parametrize(("source", "destination"), ROUND_TRIPS)
def test_round_trip_v1(source: tuple[str, int], destination: tuple[str, int]) -> None:
    data = encode_v1(source, destination)
    assert len(data) <= V1_MAX_LENGTH
    assert parse_proxy_header(data + b"payload") == header(1, source, destination, len(data))


@pytest.mark.parametrize(("source", "destination"), ROUND_TRIPS)
@pytest.mark.parametrize("checksum", [False, True])
def test_round_trip_v2(
    source: tuple[str, int], destination: tuple[str, int], checksum: bool
) -> None:
    tlvs = [(PP2_TYPE_AUTHORITY, b"example.com"), (0xEA, bytes(range(256)))]
    data = encode_v2(source, destination, tlvs=tlvs, crc32c=checksum)
    parsed = parse_proxy_header(data + b"payload")
    assert parsed is not None
    assert (parsed.version, parsed.local, parsed.length) == (2, False, len(data))
    assert (parsed.source, parsed.destination) == (source, destination)
    assert parsed.tlvs[:2] == tuple(tlvs)
    assert len(parsed.tlvs) == (3 if checksum else 2)


def test_round_trip_v2_local() -> None:
    data = encode_v2(None, None, tlvs=[(PP2_TYPE_UNIQUE_ID, b"id-1")], crc32c=True)
    parsed = parse_proxy_header(data)
    assert parsed is not None
    assert (parsed.local, parsed.source, parsed.destination) == (True, None, None)
    assert parsed.tlv(PP2_TYPE_UNIQUE_ID) == b"id-1"


def test_encode_drops_an_ipv6_zone() -> None:
    """A link-local peer address carries its interface; the header has no room for it."""
    assert encode_v1(("fe80::1%eth0", 1), ("fe80::2", 2)) == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"
    parsed = parse_proxy_header(encode_v2(("fe80::1%eth0", 1), ("fe80::2", 2)))
    assert parsed is not None
    assert parsed.source == ("fe80::1", 1)


@pytest.mark.parametrize(
    ("source", "destination"),
    [
        pytest.param(("1.2.3.4", 1), ("::1", 2), id="mixed-4-6"),
        pytest.param(("::1", 1), ("1.2.3.4", 2), id="mixed-6-4"),
        pytest.param(("::ffff:1.2.3.4", 1), ("1.2.3.4", 2), id="mixed-v4-mapped"),
        pytest.param(("1.2.3.4", 65536), ("1.2.3.4", 2), id="port-too-large"),
        pytest.param(("1.2.3.4", 1), ("1.2.3.4", -1), id="port-negative"),
        pytest.param(("localhost", 1), ("1.2.3.4", 2), id="a-name"),
        pytest.param(("[::1]", 1), ("::1", 2), id="brackets"),
    ],
)
def test_encode_refuses(source: tuple[str, int], destination: tuple[str, int]) -> None:
    with pytest.raises(ValueError, match=r"."):
        encode_v1(source, destination)
    with pytest.raises(ValueError, match=r"."):
        encode_v2(source, destination)


@pytest.mark.parametrize(
    ("source", "destination", "tlvs"),
    [
        pytest.param(("1.2.3.4", 1), None, (), id="source-only"),
        pytest.param(None, ("1.2.3.4", 1), (), id="destination-only"),
        pytest.param(None, None, [(256, b"")], id="tlv-type-256"),
        pytest.param(None, None, [(-1, b"")], id="tlv-type-negative"),
        pytest.param(None, None, [(PP2_TYPE_NOOP, bytes(0x10000))], id="tlv-too-long"),
        pytest.param(
            None,
            None,
            [(PP2_TYPE_NOOP, bytes(0x8000)), (PP2_TYPE_NOOP, bytes(0x8000))],
            id="header-too-long",
        ),
    ],
)
def test_encode_v2_refuses(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    tlvs: list[tuple[int, bytes]],
) -> None:
    with pytest.raises(ValueError, match=r"."):
        encode_v2(source, destination, tlvs=tlvs)


def test_error_is_a_value_error() -> None:
    assert issubclass(ProxyProtocolError, ValueError)
