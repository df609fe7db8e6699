"""trilb.core.clienthello: SNI and ALPN from a TLS ClientHello (sans-IO, table-driven).

Real hellos come from the stdlib ``ssl`` module over memory BIOs; odd ones are built by hand.
"""

from __future__ import annotations

import random
import ssl
from typing import Any

import pytest

from trilb.core.clienthello import (
    MAX_CLIENT_HELLO,
    ClientHelloInfo,
    NotClientHello,
    parse_client_hello,
)

# -- building hellos -------------------------------------------------------------------------------


def real_hello(
    server_hostname: str | None,
    *,
    alpn: list[str] | None = None,
    maximum_version: ssl.TLSVersion | None = None,
) -> bytes:
    """The first flight of an OpenSSL client: the ClientHello, in its record(s)."""
    context = ssl.create_default_context()
    if server_hostname is None:
        context.check_hostname = False
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    if maximum_version is not None:
        context.maximum_version = maximum_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def handshake_bytes(records: bytes) -> bytes:
    """The handshake payload carried by ``records`` (which must all be handshake records)."""
    payload = b""
    while records:
        assert records[0] == 0x16
        length = int.from_bytes(records[3:5], "big")
        payload += records[5 : 5 + length]
        records = records[5 + length :]
    return payload


def in_records(message: bytes, size: int = 2**14, *, version: bytes = b"\x03\x01") -> bytes:
    """``message`` cut into handshake records of ``size`` bytes (the last may be shorter)."""
    return b"".join(
        b"\x16" + version + len(part).to_bytes(2, "big") + part
        for part in (message[i : i + size] for i in range(0, len(message), size))
    )


def vec(size: int, data: bytes) -> bytes:
    return len(data).to_bytes(size, "big") + data


def ext(type_: int, data: bytes) -> bytes:
    return type_.to_bytes(2, "big") + vec(2, data)


def sni(*names: tuple[int, bytes]) -> bytes:
    return ext(0, vec(2, b"".join(bytes([kind]) + vec(2, name) for kind, name in names)))


def alpn(*protocols: bytes) -> bytes:
    return ext(16, vec(2, b"".join(vec(1, p) for p in protocols)))


def hello_message(
    extensions: bytes | None = b"",
    *,
    version: int = 0x0303,
    session_id: bytes = bytes(32),
    suites: bytes = b"\x13\x01\x13\x02",
    compression: bytes = b"\x00",
    trailer: bytes = b"",
) -> bytes:
    """A ClientHello handshake message laid out as in RFC 8446 section 4.1.2."""
    body = (
        version.to_bytes(2, "big")
        + bytes(range(32))  # random
        + vec(1, session_id)
        + vec(2, suites)
        + vec(1, compression)
        + (b"" if extensions is None else vec(2, extensions))
        + trailer
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def hello(extensions: bytes | None = b"", **fields: Any) -> bytes:
    return in_records(hello_message(extensions, **fields))


def info(
    server_name: str | None, protocols: tuple[str, ...] = (), version: int = 0x0303
) -> ClientHelloInfo:
    return ClientHelloInfo(server_name=server_name, alpn=protocols, version=version)


# -- real hellos -----------------------------------------------------------------------------------

REAL = [
    pytest.param(
        real_hello("example.com", alpn=["h2", "http/1.1"]),
        info("example.com", ("h2", "http/1.1")),
        id="tls13-sni-alpn",
    ),
    pytest.param(real_hello("example.com"), info("example.com"), id="tls13-sni"),
    pytest.param(real_hello(None), info(None), id="tls13-no-sni"),
    pytest.param(real_hello(None, alpn=["http/1.1"]), info(None, ("http/1.1",)), id="alpn-only"),
    pytest.param(real_hello("WWW.Example.COM."), info("www.example.com"), id="sni-case-and-dot"),
    pytest.param(
        real_hello("a.example", alpn=["h2"], maximum_version=ssl.TLSVersion.TLSv1_2),
        info("a.example", ("h2",)),
        id="tls12",
    ),
    pytest.param(real_hello("b\u00fccher.example"), info("xn--bcher-kva.example"), id="idna-name"),
]


@pytest.mark.parametrize(("data", "expected"), REAL)
def test_real_hello(data: bytes, expected: ClientHelloInfo) -> None:
    assert parse_client_hello(data) == expected
    assert parse_client_hello(bytearray(data)) == expected


@pytest.mark.parametrize(("data", "expected"), REAL)
def test_real_hello_every_prefix_waits(data: bytes, expected: ClientHelloInfo) -> None:
    for end in range(len(data)):
        assert parse_client_hello(data[:end]) is None, end
    assert parse_client_hello(data) == expected


@pytest.mark.parametrize(("data", "expected"), REAL)
def test_bytes_after_the_hello_are_ignored(data: bytes, expected: ClientHelloInfo) -> None:
    """Early data or a ChangeCipherSpec may follow; the hello is decided without them."""
    assert parse_client_hello(data + b"\x14\x03\x03\x00\x01\x01") == expected
    assert parse_client_hello(data + b"\x17\x03\x03" + bytes(100)) == expected


@pytest.mark.parametrize("size", [1, 3, 4, 5, 100, 511])
@pytest.mark.parametrize(("data", "expected"), REAL[:3])
def test_fragmented_over_records(data: bytes, expected: ClientHelloInfo, size: int) -> None:
    records = in_records(handshake_bytes(data), size, version=b"\x03\x03")
    assert parse_client_hello(records) == expected
    for end in range(0, len(records), 7 if size < 10 else 1):
        assert parse_client_hello(records[:end]) is None, end


def test_large_hello_over_two_records() -> None:
    """The largest accepted message (16 KiB body) spans two full-size records."""
    name = sni((0, b"big.example"))
    padding = 16 * 1024 + 4 - len(hello_message(name + ext(21, b"")))
    message = hello_message(name + ext(21, bytes(padding)))
    assert len(message) == 4 + 16 * 1024
    records = in_records(message)
    assert len(records) == len(message) + 2 * 5
    assert parse_client_hello(records) == info("big.example")
    assert parse_client_hello(records[:-1]) is None
    too_long = in_records(hello_message(name + ext(21, bytes(padding + 1))))
    with pytest.raises(NotClientHello, match="longer than"):
        parse_client_hello(too_long[:9])  # decided on the message header


# -- hand-made hellos ------------------------------------------------------------------------------

VALID = [
    pytest.param(hello(None), info(None), id="no-extensions-block"),
    pytest.param(hello(b""), info(None), id="empty-extensions"),
    pytest.param(hello(sni((0, b"a.b"))), info("a.b"), id="sni"),
    pytest.param(hello(sni((0, b"A.B."))), info("a.b"), id="sni-normalised"),
    pytest.param(
        hello(sni((0, b"first.example"), (0, b"second.example"))),
        info("first.example"),
        id="sni-first-host-name-wins",
    ),
    pytest.param(
        hello(sni((7, b"other"), (0, b"host.example"))),
        info("host.example"),
        id="sni-other-name-type-skipped",
    ),
    pytest.param(hello(sni((7, b"other"))), info(None), id="sni-no-host-name"),
    pytest.param(hello(sni((0, b"10.0.0.1"))), info("10.0.0.1"), id="sni-ip-literal"),
    pytest.param(hello(alpn(b"h2")), info(None, ("h2",)), id="alpn"),
    pytest.param(
        hello(alpn(b"\x1a\x1a", b"h2", b"http/1.1")),
        info(None, ("\x1a\x1a", "h2", "http/1.1")),
        id="alpn-grease-ascii",
    ),
    pytest.param(
        hello(alpn(b"\xfa\xfa", b"h2")), info(None, ("\xfa\xfa", "h2")), id="alpn-grease-latin1"
    ),
    pytest.param(
        hello(ext(0x0A0A, b"") + sni((0, b"x.y")) + ext(0xFAFA, b"\x00") + alpn(b"h2")),
        info("x.y", ("h2",)),
        id="grease-and-unknown-extensions",
    ),
    pytest.param(hello(b"", session_id=b""), info(None), id="empty-session-id"),
    pytest.param(hello(None, version=0x0301), info(None, version=0x0301), id="tls10-hello"),
    pytest.param(
        in_records(hello_message(sni((0, b"a.b"))), version=b"\x03\x00"),
        info("a.b"),
        id="record-version-3.0",
    ),
]


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_valid(data: bytes, expected: ClientHelloInfo) -> None:
    assert parse_client_hello(data) == expected
    for end in range(len(data)):
        assert parse_client_hello(data[:end]) is None


INVALID = [
    # not TLS at all
    pytest.param(b"GET / HTTP/1.1\r\n", "not handshake", id="http"),
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", "not handshake", id="ssh"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not handshake", id="proxy-header"),
    pytest.param(b"\x80\x2e\x01\x00\x02", "SSLv2", id="sslv2-hello"),
    pytest.param(b"\x80", "SSLv2", id="sslv2-first-byte"),
    pytest.param(b"\x15\x03\x01\x00\x02\x02\x28", "not handshake", id="alert-record"),
    pytest.param(b"\x17\x03\x03\x00\x10", "not handshake", id="application-data-record"),
    # the record layer
    pytest.param(b"\x16\x02", "version", id="record-version-2"),
    pytest.param(b"\x16\x04\x00", "version", id="record-version-4"),
    pytest.param(b"\x16\x03\x01\x00\x00", "record length 0", id="empty-record"),
    pytest.param(b"\x16\x03\x01\x40\x01", "record length 16385", id="record-too-long"),
    pytest.param(
        in_records(hello_message(), 50)[:55] + b"\x17\x03\x03\x00\x05hello",
        "not handshake",
        id="other-record-between-fragments",
    ),
    pytest.param(
        in_records(hello_message(), 50)[:55] + b"\x16\x02\x00\x00\x05",
        "version",
        id="bad-version-in-second-record",
    ),
    # the handshake message
    pytest.param(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not client_hello", id="server-hello"),
    pytest.param(b"\x16\x03\x01\x00\x01\x00", "not client_hello", id="hello-request"),
    pytest.param(b"\x16\x03\x01\x00\x04\x01\x00\x40\x01", "longer than", id="message-too-long"),
    pytest.param(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "longer than", id="message-16-mib"),
    pytest.param(in_records(b"\x01\x00\x00\x00"), "overruns", id="message-empty"),
    # the hello's fields
    pytest.param(hello(b"", version=0x0200), "version", id="hello-version-2"),
    pytest.param(hello(b"", version=0x0403), "version", id="hello-version-4"),
    pytest.param(hello(b"", session_id=bytes(33)), "session id", id="session-id-33"),
    pytest.param(hello(b"", suites=b""), "cipher suites", id="no-cipher-suites"),
    pytest.param(hello(b"", suites=b"\x13\x01\x13"), "odd", id="odd-cipher-suites"),
    pytest.param(hello(b"", compression=b""), "compression", id="no-compression-methods"),
    pytest.param(hello(b"", trailer=b"\x00"), "stray", id="byte-after-extensions"),
    pytest.param(hello(None, trailer=b"\x00"), "extensions length", id="one-byte-extensions"),
    # extensions
    pytest.param(hello(ext(0, b"")[:3]), "overruns", id="extension-header-cut"),
    pytest.param(hello(ext(21, b"abc")[:-1]), "overruns", id="extension-overruns"),
    pytest.param(hello(alpn(b"h2") + alpn(b"h2")), "duplicate", id="duplicate-alpn"),
    pytest.param(hello(sni((0, b"a")) + sni((0, b"b"))), "duplicate", id="duplicate-sni"),
    # server_name
    pytest.param(hello(ext(0, b"")), "overruns", id="sni-empty-extension"),
    pytest.param(hello(ext(0, vec(2, b""))), "shorter", id="sni-empty-list"),
    pytest.param(hello(ext(0, vec(2, b"\x00\x00\x00"))), "shorter", id="sni-empty-name"),
    pytest.param(hello(ext(0, vec(2, b"\x00\x00\x05abc"))), "overruns", id="sni-name-overruns"),
    pytest.param(hello(ext(0, b"\x00\x09\x00\x00\x03abc")), "overruns", id="sni-list-overruns"),
    pytest.param(hello(ext(0, vec(2, b"\x00\x00\x01a") + b"\x00")), "stray", id="sni-stray"),
    pytest.param(hello(ext(0, vec(2, b"\x00\x00\x01a\x00"))), "overruns", id="sni-list-stray"),
    pytest.param(hello(sni((0, "bü.example".encode()))), "ASCII", id="sni-utf8"),
    pytest.param(hello(sni((0, b"a b"))), "ASCII", id="sni-space"),
    pytest.param(hello(sni((0, b"a\x00b"))), "ASCII", id="sni-nul"),
    pytest.param(hello(sni((0, b"."))), "empty", id="sni-just-a-dot"),
    # ALPN
    pytest.param(hello(ext(16, b"")), "overruns", id="alpn-empty-extension"),
    pytest.param(hello(ext(16, vec(2, b""))), "shorter", id="alpn-empty-list"),
    pytest.param(hello(ext(16, vec(2, b"\x00\x02h2"))), "shorter", id="alpn-empty-protocol"),
    pytest.param(hello(ext(16, vec(2, b"\x03h2"))), "overruns", id="alpn-protocol-overruns"),
    pytest.param(hello(ext(16, vec(2, b"\x02h2") + b"x")), "stray", id="alpn-stray"),
]


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid(data: bytes, message: str) -> None:
    with pytest.raises(NotClientHello, match=message):
        parse_client_hello(data)


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid_prefixes(data: bytes, message: str) -> None:
    """Every prefix of a bad hello waits or fails; none claims success."""
    outcomes = []
    for end in range(len(data) + 1):
        try:
            outcomes.append(parse_client_hello(data[:end]))
        except NotClientHello:
            break
    else:
        pytest.fail("no prefix failed")
    assert all(outcome is None for outcome in outcomes)


def test_error_is_a_value_error() -> None:
    assert issubclass(NotClientHello, ValueError)


# -- the bound -------------------------------------------------------------------------------------


def test_too_many_small_records_are_refused() -> None:
    """A hello cut into 1-byte records needs 6 bytes per byte: past MAX_CLIENT_HELLO it is
    refused instead of awaited."""
    message = hello_message(sni((0, b"a.b")) + ext(21, bytes(4000)))
    records = in_records(message, 1)
    assert len(records) > MAX_CLIENT_HELLO
    assert parse_client_hello(records[: MAX_CLIENT_HELLO - 1]) is None
    with pytest.raises(NotClientHello, match="not complete within"):
        parse_client_hello(records[:MAX_CLIENT_HELLO])
    with pytest.raises(NotClientHello, match="not complete within"):
        parse_client_hello(records)


# -- fuzzing ---------------------------------------------------------------------------------------


def _mutate(rng: random.Random, data: bytes) -> bytes:
    mutated = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        position = rng.randrange(len(mutated) + 1)
        if choice < 0.5 and mutated:
            index = min(position, len(mutated) - 1)
            mutated[index] = rng.randrange(256)
        elif choice < 0.6 and mutated:
            index = min(position, len(mutated) - 1)
            mutated[index] ^= 1 << rng.randrange(8)
        elif choice < 0.75:
            mutated[position:position] = rng.randbytes(rng.randint(1, 8))
        elif choice < 0.9:
            del mutated[position : position + rng.randint(1, 8)]
        else:
            del mutated[position:]
    return bytes(mutated)


def test_random_mutations_only_ever_raise_not_client_hello() -> None:
    seeds = [
        real_hello("fuzz.example", alpn=["h2", "http/1.1"]),
        in_records(handshake_bytes(real_hello("fuzz.example", alpn=["h2"])), 60),
        hello(sni((0, b"a.b"), (3, b"x")) + alpn(b"h2", b"\xfa\xfa") + ext(21, b"\x00\x01")),
    ]
    rng = random.Random(20240611)
    outcomes = {"info": 0, "none": 0, "error": 0}
    for case in range(4000):
        data = _mutate(rng, seeds[case % len(seeds)])
        try:
            result = parse_client_hello(data)
        except NotClientHello:
            outcomes["error"] += 1
            continue
        assert result is None or isinstance(result, ClientHelloInfo)
        outcomes["info" if result else "none"] += 1
    assert all(count > 0 for count in outcomes.values()), outcomes


def test_random_length_fields_only_ever_raise_not_client_hello() -> None:
    """Mutations aimed at the length fields of a hand-made hello (1- and 2-byte ones)."""
    message = hello_message(sni((0, b"a.b")) + alpn(b"h2", b"http/1.1") + ext(21, bytes(5)))
    data = in_records(message)
    rng = random.Random(7)
    for _ in range(2000):
        mutated = bytearray(data)
        index = rng.randrange(3, len(mutated) - 1)
        mutated[index : index + 2] = rng.choice(
            [b"\x00\x00", b"\xff\xff", b"\x00\x01", rng.randbytes(2)]
        )
        try:
            result = parse_client_hello(mutated)
        except NotClientHello:
            continue
        assert result is None or isinstance(result, ClientHelloInfo)
