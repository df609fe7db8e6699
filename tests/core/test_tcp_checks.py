"""The protocol-aware TCP health checks, sans-IO: each dialog fed bytes as a server would send
them, the reply parsers (Redis line, SMTP multi-line replies, MySQL packets) and what every
answer means, table-driven. No sockets: :mod:`tests.proxy.test_tcp_health_checks` runs them for
real."""

# The tables of cases below read best one case a line, even when that line is long.
# ruff: noqa: E501

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from trilb.config import HealthCheck
from trilb.core.dialog import ANSWER_LIMIT, Dialog, Step, closed, server_words
from trilb.core.health import CheckResult, Reason
from trilb.core.mysql_check import (
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    QUIT_PACKET,
    Greeting,
    MySQLDialog,
    MySQLProtocolError,
    Packet,
    PacketReader,
    ServerError,
    encode_packet,
    login_packet,
    parse_error,
    parse_greeting,
)
from trilb.core.tcp_checks import (
    REDIS_PING,
    RedisDialog,
    SendExpectDialog,
    SMTPDialog,
    SMTPProtocolError,
    SMTPReply,
    SMTPReplyReader,
    compile_expect_regex,
    dialog_for,
    judge_redis_reply,
)

OK = Reason.L7_OK
STS = Reason.L7_STATUS
RSP = Reason.L7_INVALID


def run(dialog: Dialog, chunks: Sequence[bytes]) -> tuple[list[bytes], CheckResult | None]:
    """Feed ``chunks`` (b"" = the server closes) until the dialog decides: everything it sent
    (the goodbye last), and its outcome (None if it still waits)."""
    step = dialog.start()
    sent = [step.send] if step.send else []
    for chunk in chunks:
        assert step.outcome is None, "fed after the outcome"
        step = dialog.receive(chunk)
        if step.send:
            sent.append(step.send)
    return sent, step.outcome


def result(reason: Reason, code: int | None = None, info: str | None = None) -> CheckResult:
    return CheckResult(reason=reason, code=code, info=info)


# -- shared helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"  -LOADING Redis is loading\r\n", "-LOADING Redis is loading"),
        (b"a\x00b\x1bc", "a\\x00b\\x1bc"),  # control characters cannot break a log line
        (b"caf\xc3\xa9 \xff", "café \ufffd"),
        (b"x" * 300, "x" * 197 + "..."),
        ("déjà", "déjà"),
    ],
)
def test_server_words(data: bytes | str, words: str) -> None:
    assert server_words(data) == words


def test_closed() -> None:
    assert closed(False) == result(RSP, info="connection closed without a response")
    assert closed(True, "packet") == result(RSP, info="connection closed in the middle of a packet")


def test_dialog_for_each_type() -> None:
    assert isinstance(dialog_for(HealthCheck(type="send_expect", expect=b"x")), SendExpectDialog)
    assert isinstance(dialog_for(HealthCheck(type="redis")), RedisDialog)
    assert isinstance(dialog_for(HealthCheck(type="smtp")), SMTPDialog)
    assert isinstance(dialog_for(HealthCheck(type="mysql")), MySQLDialog)
    with pytest.raises(ValueError, match="not a dialog"):
        dialog_for(HealthCheck(type="tcp"))
    # only possible from Python: the loader asks for expect or expect_regex
    with pytest.raises(ValueError, match="needs expect or expect_regex"):
        dialog_for(HealthCheck(type="send_expect", send=b"x"))


def test_dialog_for_compiles_expect_regex() -> None:
    check = HealthCheck(type="send_expect", expect_regex=r"^OK \d+")
    assert run(dialog_for(check), [b"OK 42\n"])[1] == result(OK)
    precompiled = re.compile(rb"never")
    assert run(dialog_for(check, pattern=precompiled), [b"OK 42\n", b""])[1] is not None
    assert run(dialog_for(check, pattern=precompiled), [b"OK 42\n"])[1] is None


# -- send_expect ----------------------------------------------------------------------------------

# (send, expect, expect_regex, chunks from the server, outcome; None: still waiting)
SEND_EXPECT: list[tuple[str, bytes | None, bytes | None, str | None, list[bytes], CheckResult | None]] = [
    ("substring", b"PING\r\n", b"+PONG", None, [b"+PONG\r\n"], result(OK)),
    ("split across reads", b"PING\r\n", b"+PONG", None, [b"+P", b"ON", b"G"], result(OK)),
    ("anywhere in the answer", None, b"ready", None, [b"hello\r\n", b"I am ready\r\n"], result(OK)),
    ("still waiting", None, b"ready", None, [b"hello"], None),
    ("regex", None, None, r"^SSH-2\.0-\S+", [b"SSH-2.0-OpenSSH_9.2p1\r\n"], result(OK)),
    ("regex over bytes", None, None, r"\x00\xff", [b"a\x00\xffb"], result(OK)),
    ("regex with UTF-8 text", None, None, "café", ["le café".encode()], result(OK)),
    ("both must match", None, b"OK", r"v\d", [b"OK", b" v", b"2"], result(OK)),
    ("both: regex missing", None, b"OK", r"v\d", [b"OK vx"], None),
    ("closed at once", b"HELLO\n", b"OK", None, [b""], result(RSP, info="connection closed without a response")),
    ("closed, no match", None, b"+OK", None, [b"-ERR no\r\n", b""], result(RSP, info="connection closed: the answer '-ERR no\\r\\n' does not contain '+OK'")),
    ("closed, regex", None, None, r"^\+OK", [b"x+OK", b""], result(RSP, info="connection closed: the answer 'x+OK' does not match '^\\\\+OK'")),
    ("closed, both", None, b"A", "B", [b"C", b""], result(RSP, info="connection closed: the answer 'C' does not contain 'A' and match 'B'")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("send", "expect", "regex", "chunks", "outcome"),
    [pytest.param(*case[1:], id=case[0]) for case in SEND_EXPECT],
)
def test_send_expect(
    send: bytes | None,
    expect: bytes | None,
    regex: str | None,
    chunks: list[bytes],
    outcome: CheckResult | None,
) -> None:
    pattern = compile_expect_regex(regex) if regex is not None else None
    dialog = SendExpectDialog(send=send, expect=expect, pattern=pattern)
    sent, got = run(dialog, chunks)
    assert sent == ([send] if send else [])
    assert got == outcome


def test_send_expect_reads_a_bounded_answer() -> None:
    dialog = SendExpectDialog(send=None, expect=b"ready", pattern=None, limit=16)
    _, outcome = run(dialog, [b"x" * 12, b"xxx ready"])  # "ready" starts past byte 16
    assert outcome == result(
        RSP, info="in its first 16 bytes, the answer 'xxxxxxxxxxxxxxx ' does not contain 'ready'"
    )
    # the default bound
    dialog = SendExpectDialog(send=None, expect=b"ready", pattern=None)
    _, outcome = run(dialog, [b"x" * ANSWER_LIMIT])
    assert outcome is not None
    assert outcome.info is not None
    assert outcome.info.startswith(f"in its first {ANSWER_LIMIT} bytes, the answer 'xxx")
    assert len(outcome.info) < 200


# -- redis ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "outcome"),
    [
        (b"+PONG", result(OK)),
        (b"-LOADING Redis is loading the dataset in memory", result(STS, info="-LOADING Redis is loading the dataset in memory")),
        (b"-NOAUTH Authentication required.", result(STS, info="-NOAUTH Authentication required.")),
        (b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", result(STS, info="-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.")),
        (b"+OK", result(STS, info="+OK")),
        (b"$4", result(STS, info="$4")),
        (b"+pong", result(STS, info="+pong")),
        (b"HTTP/1.1 400 Bad Request", result(RSP, info="not a Redis reply: 'HTTP/1.1 400 Bad Request'")),
        (b"", result(RSP, info="not a Redis reply: ''")),
    ],
)  # fmt: skip
def test_judge_redis_reply(line: bytes, outcome: CheckResult) -> None:
    assert judge_redis_reply(line) == outcome


@pytest.mark.parametrize(
    ("chunks", "outcome"),
    [
        ([b"+PONG\r\n"], result(OK)),
        ([b"+PO", b"NG", b"\r", b"\n"], result(OK)),
        ([b"+PONG\n"], result(OK)),  # a bare LF is taken as the end of the line
        ([b"-LOADING Redis is loading the dataset in memory\r\n"], result(STS, info="-LOADING Redis is loading the dataset in memory")),
        ([b"+PONG"], None),  # the line is not finished yet
        ([b""], result(RSP, info="connection closed without a reply")),
        ([b"+PON", b""], result(RSP, info="connection closed in the middle of a reply")),
    ],
)  # fmt: skip
def test_redis_dialog(chunks: list[bytes], outcome: CheckResult | None) -> None:
    sent, got = run(RedisDialog(), chunks)
    assert sent == [REDIS_PING] == [b"*1\r\n$4\r\nPING\r\n"]
    assert got == outcome


def test_redis_line_is_bounded() -> None:
    # what comes past the bound is not looked at, end of line or not
    _, outcome = run(RedisDialog(limit=10), [b"+PPPPP", b"PPPPONG\r\n"])
    assert outcome == result(RSP, info="no end of line in the first 10 bytes")


# -- SMTP replies ---------------------------------------------------------------------------------

EHLO_REPLY = b"250-mail.example.com Hello localhost\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"

# (bytes from the server, the replies read, the error if they are not replies)
SMTP_REPLIES: list[tuple[str, bytes, list[SMTPReply], str | None]] = [
    ("one line", b"220 mail.example.com ESMTP Postfix\r\n", [SMTPReply(code=220, lines=("mail.example.com ESMTP Postfix",))], None),
    ("multi-line", EHLO_REPLY, [SMTPReply(code=250, lines=("mail.example.com Hello localhost", "PIPELINING", "SIZE 10240000", "8BITMIME"))], None),
    ("code alone", b"220\r\n", [SMTPReply(code=220, lines=("",))], None),
    ("bare LF", b"220-a\n220 b\n", [SMTPReply(code=220, lines=("a", "b"))], None),
    ("two replies", b"220 hi\r\n250 ok\r\n", [SMTPReply(code=220, lines=("hi",)), SMTPReply(code=250, lines=("ok",))], None),
    ("unfinished", b"250-a\r\n250 b", [], None),
    ("not SMTP", b"HTTP/1.1 400 Bad Request\r\n", [], "not an SMTP reply: HTTP/1.1 400 Bad Request"),
    ("two digits", b"22 hi\r\n", [], "not an SMTP reply: 22 hi"),
    ("no separator", b"220hi\r\n", [], "not an SMTP reply: 220hi"),
    ("codes differ", b"250-a\r\n251 b\r\n", [], "a reply's lines have different codes: 250 and 251"),
    ("binary", b"\x16\x03\x01\x00\x05\r\n", [], "not an SMTP reply: \\x16\\x03\\x01\\x00\\x05"),
]  # fmt: skip


def read_replies(reader: SMTPReplyReader) -> list[SMTPReply]:
    replies = []
    while (reply := reader.next_reply()) is not None:
        replies.append(reply)
    return replies


def feed_all(chunks: list[bytes]) -> list[SMTPReply]:
    """The replies a new reader reads from ``chunks``, fed one by one."""
    reader = SMTPReplyReader()
    replies = []
    for chunk in chunks:
        reader.feed(chunk)
        replies += read_replies(reader)
    return replies


@pytest.mark.parametrize(
    ("data", "replies", "error"), [pytest.param(*case[1:], id=case[0]) for case in SMTP_REPLIES]
)
def test_smtp_replies(data: bytes, replies: list[SMTPReply], error: str | None) -> None:
    # all at once, then byte by byte: the same replies
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        if error is None:
            assert feed_all(chunks) == replies
        else:
            with pytest.raises(SMTPProtocolError, match=f"^{re.escape(error)}$"):
                feed_all(chunks)


def test_smtp_reply_is_bounded() -> None:
    reader = SMTPReplyReader(limit=20)
    reader.feed(b"250-0123456789\r\n250-abcde")
    with pytest.raises(SMTPProtocolError, match="a reply longer than 20 bytes"):
        read_replies(reader)
    reader = SMTPReplyReader(limit=20)
    reader.feed(b"250-0123456789\r\n250-abcdefgh\r\n")  # complete lines, past the bound
    with pytest.raises(SMTPProtocolError, match="a reply longer than 20 bytes"):
        read_replies(reader)
    reader = SMTPReplyReader(limit=20)
    reader.feed(b"250 " + b"x" * 30)  # no end of line in sight
    with pytest.raises(SMTPProtocolError, match="a reply longer than 20 bytes"):
        reader.next_reply()
    # the bound is per reply: many small replies are fine
    reader = SMTPReplyReader(limit=20)
    reader.feed(b"250 ok\r\n" * 10)
    assert len(read_replies(reader)) == 10
    assert SMTPReply(code=250, lines=("a\x00b",)).text == "a\\x00b"


# -- the SMTP dialog ------------------------------------------------------------------------------

QUIT = b"QUIT\r\n"
EHLO = b"EHLO localhost\r\n"

# (chunks from the server, what the check sent after its EHLO, the outcome)
SMTP_DIALOGS: list[tuple[str, list[bytes], list[bytes], CheckResult | None]] = [
    ("passes", [b"220 mail.example.com ESMTP\r\n", EHLO_REPLY], [EHLO, QUIT], result(OK, 250, "mail.example.com Hello localhost")),
    ("multi-line greeting", [b"220-mail.example.com ESMTP\r\n220-no UCE\r\n", b"220 ok\r\n", b"250 hi\r\n"], [EHLO, QUIT], result(OK, 250, "hi")),
    ("greeting not done yet", [b"220-mail.example.com ESMTP\r\n"], [], None),
    ("421 greeting", [b"421 4.3.2 Service not available, closing channel\r\n"], [QUIT], result(STS, 421, "4.3.2 Service not available, closing channel")),
    ("554 greeting", [b"554-no SMTP service here\r\n554 go away\r\n"], [QUIT], result(STS, 554, "no SMTP service here")),
    ("EHLO refused", [b"220 hi\r\n", b"550 5.7.1 not you\r\n"], [EHLO, QUIT], result(STS, 550, "5.7.1 not you")),
    ("EHLO unknown, 502", [b"220 hi\r\n", b"502 5.5.2 Error: command not recognized\r\n"], [EHLO, QUIT], result(STS, 502, "5.5.2 Error: command not recognized")),
    ("other 2xx to EHLO", [b"220 hi\r\n", b"220 hi again\r\n"], [EHLO, QUIT], result(STS, 220, "hi again")),
    ("code without text", [b"220 hi\r\n", b"250\r\n"], [EHLO, QUIT], result(OK, 250)),
    ("not SMTP", [b"SSH-2.0-OpenSSH_9.2p1\r\n"], [], result(RSP, info="not an SMTP reply: SSH-2.0-OpenSSH_9.2p1")),
    ("closed at once", [b""], [], result(RSP, info="connection closed without a reply")),
    ("closed in a reply", [b"220-hi\r\n", b""], [], result(RSP, info="connection closed in the middle of a reply")),
    ("closed after EHLO", [b"220 hi\r\n", b""], [EHLO], result(RSP, info="connection closed without a reply")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("chunks", "sent", "outcome"), [pytest.param(*case[1:], id=case[0]) for case in SMTP_DIALOGS]
)
def test_smtp_dialog(chunks: list[bytes], sent: list[bytes], outcome: CheckResult | None) -> None:
    assert run(SMTPDialog(), chunks) == (sent, outcome)


def test_smtp_dialog_domain() -> None:
    sent, _ = run(SMTPDialog(domain="lb1.example.com"), [b"220 hi\r\n"])
    assert sent == [b"EHLO lb1.example.com\r\n"]


# -- MySQL packets --------------------------------------------------------------------------------

#: MariaDB 10.11's greeting, as it came from a real server
MARIADB_GREETING = (
    b"d\x00\x00\x00\n5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x0c\x00\x00\x00-R8^Q\\[4\x00\xfe\xf7"
    b"\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00//>)Q<zrKb+N\x00"
    b"mysql_native_password\x00"
)
#: its answers to a login: an unknown user, then a password-less one
MARIADB_DENIED = b"I\x00\x00\x02\xff\x15\x04#28000Access denied for user 'nobody'@'127.0.0.1' (using password: NO)"
MARIADB_OK = b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00"


def greeting(
    version: bytes = b"8.0.36", capabilities: int = 0xFFFF_F7FF, *, short: bool = False
) -> bytes:
    """A protocol 10 greeting payload (``short``: without the part after the lower flags)."""
    payload = b"\x0a" + version + b"\x00" + (7).to_bytes(4, "little") + b"12345678" + b"\x00"
    payload += (capabilities & 0xFFFF).to_bytes(2, "little")
    if not short:
        payload += b"\x21" + b"\x02\x00" + (capabilities >> 16).to_bytes(2, "little") + b"\x15"
        payload += bytes(10) + b"123456789012\x00" + b"caching_sha2_password\x00"
    return payload


def test_encode_packet() -> None:
    assert encode_packet(0, b"\x01") == QUIT_PACKET == b"\x01\x00\x00\x00\x01"
    assert encode_packet(3, b"x" * 0x10203) == b"\x03\x02\x01\x03" + b"x" * 0x10203
    assert encode_packet(256, b"") == b"\x00\x00\x00\x00"  # sequence ids wrap
    with pytest.raises(ValueError, match="needs splitting"):
        encode_packet(0, bytes(1 << 24))


def test_packet_reader() -> None:
    reader = PacketReader()
    assert reader.next_packet() is None
    data = encode_packet(0, b"hello") + encode_packet(1, b"") + encode_packet(2, b"x")
    for byte in data[:8]:
        reader.feed(bytes([byte]))
        assert reader.next_packet() is None
        assert reader.pending
    reader.feed(data[8:])
    assert reader.next_packet() == Packet(sequence=0, payload=b"hello")
    assert reader.next_packet() == Packet(sequence=1, payload=b"")
    assert reader.next_packet() == Packet(sequence=2, payload=b"x")
    assert reader.next_packet() is None
    assert not reader.pending


@pytest.mark.parametrize(
    ("data", "announced"),
    [
        (b"SSH-2.0-OpenSSH_9.2p1\r\n", 4739923),  # "SSH" read as a length
        (b"HTTP/1.1 400 Bad Request\r\n", 5526600),
        (b"\x01\x40\x00\x00", ANSWER_LIMIT + 1),
    ],
)
def test_packet_reader_refuses_big_packets(data: bytes, announced: int) -> None:
    reader = PacketReader()
    reader.feed(data)
    with pytest.raises(MySQLProtocolError, match=f"a packet of {announced} bytes announced"):
        reader.next_packet()


def test_parse_greeting() -> None:
    assert parse_greeting(MARIADB_GREETING[4:]) == Greeting(
        server_version="5.5.5-10.11.19-MariaDB-0+deb12u1", connection_id=12, capabilities=0x81FFF7FE
    )
    parsed = parse_greeting(greeting())
    assert parsed == Greeting(server_version="8.0.36", connection_id=7, capabilities=0xFFFFF7FF)
    # a server of old sends only the lower capability flags
    assert parse_greeting(greeting(capabilities=0x8200, short=True)).capabilities == 0x8200


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", "an empty greeting"),
        (b"\x09" + greeting()[1:], "a greeting of protocol version 9, not 10"),
        (b"\xff\x00", "a greeting of protocol version 255, not 10"),
        (b"\x0a8.0.36", "a truncated greeting (no end to the server version)"),
        (greeting(short=True)[:-1], "a truncated greeting (22 bytes)"),
        (b"\x0a\x00", "a truncated greeting (2 bytes)"),
    ],
)
def test_parse_greeting_refuses_garbled(payload: bytes, error: str) -> None:
    with pytest.raises(MySQLProtocolError, match=re.escape(error)):
        parse_greeting(payload)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (MARIADB_DENIED[4:], ServerError(code=1045, sql_state="28000", message="Access denied for user 'nobody'@'127.0.0.1' (using password: NO)")),
        # at the greeting the server knows nothing of the client yet: no SQL state
        (b"\xffi\x04Host '10.0.0.5' is blocked because of many connection errors; unblock with 'mariadb-admin flush-hosts'", ServerError(code=1129, sql_state=None, message="Host '10.0.0.5' is blocked because of many connection errors; unblock with 'mariadb-admin flush-hosts'")),
        (b"\xff\x10\x04Too many connections", ServerError(code=1040, sql_state=None, message="Too many connections")),
        (b"\xff\x10\x04", ServerError(code=1040, sql_state=None, message="")),
        (b"\xff\x10\x04#2800", ServerError(code=1040, sql_state=None, message="#2800")),
    ],
)  # fmt: skip
def test_parse_error(payload: bytes, error: ServerError) -> None:
    assert parse_error(payload) == error


@pytest.mark.parametrize("payload", [b"", b"\xff", b"\xff\x10", b"\x00\x10\x04"])
def test_parse_error_refuses_truncated(payload: bytes) -> None:
    with pytest.raises(MySQLProtocolError, match="a truncated error packet"):
        parse_error(payload)


def test_login_packet_41() -> None:
    packet = login_packet(
        "haproxy_check", sequence=1, post_41=True, server_capabilities=0xFFFF_FFFF
    )
    assert packet == bytes.fromhex(
        "2f0000 01"  # 47 bytes, sequence 1
        "00820000"  # CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION
        "00000001"  # the largest packet: 16 MiB
        "21"  # utf8_general_ci
        + "00" * 23
        + b"haproxy_check".hex()
        + "00"  # the end of the user name
        + "00"  # an empty authentication response
    )
    # a server without 4.1 "secure" authentication: the flag is not announced (the empty
    # response, one zero byte, reads the same either way)
    packet = login_packet("u", sequence=1, post_41=True, server_capabilities=CLIENT_PROTOCOL_41)
    assert packet[4:8] == CLIENT_PROTOCOL_41.to_bytes(4, "little")
    assert login_packet("é", sequence=9, post_41=True, server_capabilities=0)[3] == 9
    assert (
        login_packet("é", sequence=9, post_41=True, server_capabilities=0)[36:39] == b"\xc3\xa9\x00"
    )


def test_login_packet_before_41() -> None:
    packet = login_packet("haproxy_check", sequence=1, post_41=False, server_capabilities=0)
    assert packet == bytes.fromhex(
        "130000 01"  # 19 bytes, sequence 1
        "0100"  # CLIENT_LONG_PASSWORD
        "ffffff" + b"haproxy_check".hex() + "00"  # the largest packet
    )


# -- the MySQL dialog -----------------------------------------------------------------------------

VERSION = "5.5.5-10.11.19-MariaDB-0+deb12u1"
LOGIN = login_packet("haproxy_check", sequence=1, post_41=True, server_capabilities=0x81FFF7FE)
OLD_LOGIN = login_packet("haproxy_check", sequence=1, post_41=False, server_capabilities=0)


def packet(sequence: int, payload: bytes) -> bytes:
    return encode_packet(sequence, payload)


# (user, post_41, chunks from the server, what the check sent, the outcome)
MYSQL_DIALOGS: list[tuple[str, str | None, bool, list[bytes], list[bytes], CheckResult | None]] = [
    ("greeting passes", None, True, [MARIADB_GREETING], [], result(OK, info=VERSION)),
    ("greeting in pieces", None, True, [MARIADB_GREETING[:3], MARIADB_GREETING[3:50], MARIADB_GREETING[50:]], [], result(OK, info=VERSION)),
    ("greeting waited for", None, True, [MARIADB_GREETING[:50]], [], None),
    ("blocked host", None, True, [packet(0, b"\xffi\x04Host '10.0.0.5' is blocked because of many connection errors")], [], result(STS, 1129, "Host '10.0.0.5' is blocked because of many connection errors")),
    ("too many connections", "haproxy_check", True, [packet(0, b"\xff\x10\x04Too many connections")], [], result(STS, 1040, "Too many connections")),
    ("login accepted", "haproxy_check", True, [MARIADB_GREETING, MARIADB_OK], [LOGIN, QUIT_PACKET], result(OK, info=VERSION)),
    ("login refused", "haproxy_check", True, [MARIADB_GREETING, MARIADB_DENIED], [LOGIN], result(STS, 1045, "Access denied for user 'nobody'@'127.0.0.1' (using password: NO)")),
    ("old login", "haproxy_check", False, [MARIADB_GREETING, MARIADB_OK], [OLD_LOGIN, QUIT_PACKET], result(OK, info=VERSION)),
    ("login waited for", "haproxy_check", True, [MARIADB_GREETING, MARIADB_OK[:5]], [LOGIN], None),
    ("auth switch", "haproxy_check", True, [MARIADB_GREETING, packet(2, b"\xfemysql_old_password\x00")], [LOGIN], result(STS, info="the server asks for another authentication method: the check logs in with an empty password only")),
    ("out of order", "haproxy_check", True, [MARIADB_GREETING, packet(1, b"\x00\x00\x00")], [LOGIN], result(RSP, info="an answer to the login with sequence id 1, not 2")),
    ("unexpected answer", "haproxy_check", True, [MARIADB_GREETING, packet(2, b"\x05abc")], [LOGIN], result(RSP, info="an unexpected answer to the login: 0x05")),
    ("empty answer", "haproxy_check", True, [MARIADB_GREETING, packet(2, b"")], [LOGIN], result(RSP, info="an unexpected answer to the login: an empty packet")),
    ("no 4.1", "haproxy_check", True, [packet(0, greeting(b"4.0.30", 0x802C, short=True))], [], result(RSP, info="the server (4.0.30) does not speak protocol 4.1: set post_41 = false")),
    ("no 4.1, old login", "haproxy_check", False, [packet(0, greeting(b"4.0.30", 0x802C, short=True)), MARIADB_OK], [OLD_LOGIN, QUIT_PACKET], result(OK, info="4.0.30")),
    ("MySQL 8 greeting", "haproxy_check", True, [packet(0, greeting())], [login_packet("haproxy_check", sequence=1, post_41=True, server_capabilities=0xFFFFF7FF)], None),
    ("greeting of protocol 9", None, True, [packet(0, b"\x093.20.32\x00" + bytes(20))], [], result(RSP, info="a greeting of protocol version 9, not 10")),
    ("garbled greeting", None, True, [packet(0, b"\x0a5.7")], [], result(RSP, info="a truncated greeting (no end to the server version)")),
    ("truncated error", None, True, [packet(0, b"\xff\x10")], [], result(RSP, info="a truncated error packet")),
    ("not MySQL", None, True, [b"SSH-2.0-OpenSSH_9.2p1\r\n"], [], result(RSP, info="a packet of 4739923 bytes announced, not a MySQL answer to a check")),
    ("closed at once", None, True, [b""], [], result(RSP, info="connection closed without a packet")),
    ("closed in the greeting", None, True, [MARIADB_GREETING[:20], b""], [], result(RSP, info="connection closed in the middle of a packet")),
    ("closed after the login", "haproxy_check", True, [MARIADB_GREETING, b""], [LOGIN], result(RSP, info="connection closed without a packet")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("user", "post_41", "chunks", "sent", "outcome"),
    [pytest.param(*case[1:], id=case[0]) for case in MYSQL_DIALOGS],
)
def test_mysql_dialog(
    user: str | None,
    post_41: bool,
    chunks: list[bytes],
    sent: list[bytes],
    outcome: CheckResult | None,
) -> None:
    assert run(MySQLDialog(user=user, post_41=post_41), chunks) == (sent, outcome)


def test_mysql_check_speaks_after_the_greeting_only() -> None:
    dialog = MySQLDialog(user="haproxy_check")
    assert dialog.start() == Step()
    assert dialog.receive(MARIADB_GREETING[:10]) == Step()
    assert CLIENT_SECURE_CONNECTION & int.from_bytes(LOGIN[4:8], "little")
