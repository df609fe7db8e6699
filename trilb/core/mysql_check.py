"""The MySQL / MariaDB health check (HAProxy's ``option mysql-check [user NAME [post-41]]``), the
decisions: packet framing, the server's greeting, the login packet and what the answers mean.
No I/O here: :mod:`trilb.health` pumps the bytes of a :class:`MySQLDialog`.

What the check verifies
-----------------------

* Without ``user``: that a server process speaking the MySQL protocol answers the connection
  with its greeting (the protocol 10 "initial handshake"), and not with an error packet such as
  "Host '10.0.0.5' is blocked because of many connection errors" or "Too many connections".
  The check then closes the connection. (As HAProxy warns, a server may count such half-made
  connections as errors of the balancer's host: mind ``max_connect_errors``, or use ``user``.)
* With ``user``: also that the server accepts the login of that user with an empty password
  (an OK packet); then the check says ``COM_QUIT``, so the server logs no aborted connection.
  Create a dedicated account that can do nothing, e.g.
  ``CREATE USER 'haproxy_check'@'10.0.0.5';`` (no password, no privileges).

It does not run a query, so it does not check that databases or tables can be read or
written, nor the replication state (lag, ``read_only``, a Galera node's sync state), nor disk
space: a server that accepts logins passes.

Outcomes: ``Layer7 check passed`` (L7OK) with the server's version as info; ``Layer7 wrong
status`` (L7STS) with the server's error code and message when it answers with an error packet,
at the greeting or to the login (1045 "Access denied for user ..."); ``Layer7 invalid
response`` (L7RSP) for anything that is not the MySQL protocol: truncated, oversized or garbled
packets, a greeting of another protocol version, an unexpected answer.

Packets
-------

Every packet is a 3-byte little-endian payload length, a 1-byte sequence id (0 for the
greeting, counting up through the login exchange, 0 again for a new command) and the payload.
The server greets first; the check answers with a "handshake response" naming the user, with
an empty authentication response.
"""

from __future__ import annotations

import attrs

from .dialog import ANSWER_LIMIT, CONTINUE, Dialog, Step, closed, server_words
from .health import CheckResult, Reason

__all__ = [
    "CLIENT_PROTOCOL_41",
    "CLIENT_SECURE_CONNECTION",
    "QUIT_PACKET",
    "Greeting",
    "MySQLDialog",
    "MySQLProtocolError",
    "Packet",
    "PacketReader",
    "ServerError",
    "encode_packet",
    "login_packet",
    "parse_error",
    "parse_greeting",
]

# capability flags (the ones the check uses or looks at)
#: the server speaks, or the client uses, the 4.1 protocol (every server since MySQL 4.1)
CLIENT_PROTOCOL_41 = 0x0000_0200
#: the authentication response is length-prefixed (4.1 "secure" authentication)
CLIENT_SECURE_CONNECTION = 0x0000_8000
#: an old client's flag: it knows the 4.0 "long" password hashes
CLIENT_LONG_PASSWORD = 0x0000_0001

#: the greeting's protocol version since MySQL 3.21
PROTOCOL_VERSION = 10
#: the largest packet the check announces it would accept (it expects small ones only)
MAX_PACKET_SIZE = 16 * 1024 * 1024
#: utf8_general_ci, known to every server since 4.1: the user name is sent as UTF-8
CHARSET_UTF8 = 33

#: ``COM_QUIT``: a new command (sequence 0), "close the connection"
QUIT_PACKET = b"\x01\x00\x00\x00\x01"

_OK, _ERR, _AUTH_SWITCH = 0x00, 0xFF, 0xFE


class MySQLProtocolError(ValueError):
    """The bytes are not the MySQL protocol (the server's fault: ``Layer7 invalid response``)."""


@attrs.frozen(kw_only=True)
class Packet:
    sequence: int
    payload: bytes


def encode_packet(sequence: int, payload: bytes) -> bytes:
    """Frame ``payload`` (at most 16 MiB - 1: the check's packets are tiny)."""
    if len(payload) >= 1 << 24:
        raise ValueError(f"a MySQL packet payload of {len(payload)} bytes needs splitting")
    return len(payload).to_bytes(3, "little") + bytes([sequence & 0xFF]) + payload


class PacketReader:
    """Reads packets from bytes as they come. A packet announcing a payload of more than
    ``limit`` bytes is refused at once (the check expects some hundred bytes: a greeting, an
    OK or an error packet), so a server speaking another protocol fails fast instead of being
    waited for."""

    def __init__(self, limit: int = ANSWER_LIMIT) -> None:
        self._limit = limit
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        """Part of a packet came, not all of it."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_packet(self) -> Packet | None:
        """The next complete packet, or None until more bytes come; MySQLProtocolError for one
        too large to be an answer to the check."""
        if len(self._buffer) < 4:
            return None
        length = int.from_bytes(self._buffer[:3], "little")
        if length > self._limit:
            raise MySQLProtocolError(
                f"a packet of {length} bytes announced, not a MySQL answer to a check"
            )
        if len(self._buffer) < 4 + length:
            return None
        packet = Packet(sequence=self._buffer[3], payload=bytes(self._buffer[4 : 4 + length]))
        del self._buffer[: 4 + length]
        return packet


@attrs.frozen(kw_only=True)
class Greeting:
    """What the check reads of the server's initial handshake packet (protocol 10)."""

    server_version: str
    connection_id: int
    capabilities: int


def parse_greeting(payload: bytes) -> Greeting:
    """The initial handshake: protocol version 10, the server version (NUL-terminated), the
    connection id (4 bytes), the first 8 bytes of the scramble and a filler byte, the lower
    capability flags (2 bytes) and, when present, the character set, the status flags and the
    upper capability flags (2 bytes). (The rest, for passwords, the check does not need.)"""
    if not payload:
        raise MySQLProtocolError("an empty greeting")
    if payload[0] != PROTOCOL_VERSION:
        raise MySQLProtocolError(f"a greeting of protocol version {payload[0]}, not 10")
    end = payload.find(b"\x00", 1)
    if end < 0:
        raise MySQLProtocolError("a truncated greeting (no end to the server version)")
    rest = payload[end + 1 :]
    if len(rest) < 15:  # connection id, scramble, filler, lower capabilities
        raise MySQLProtocolError(f"a truncated greeting ({len(payload)} bytes)")
    capabilities = int.from_bytes(rest[13:15], "little")
    if len(rest) >= 20:
        capabilities |= int.from_bytes(rest[18:20], "little") << 16
    return Greeting(
        server_version=payload[1:end].decode("utf-8", "replace"),
        connection_id=int.from_bytes(rest[0:4], "little"),
        capabilities=capabilities,
    )


@attrs.frozen(kw_only=True)
class ServerError:
    """An error packet: 0xFF, the error code (2 bytes), with the 4.1 protocol ``#`` and a
    5-character SQL state, then the message."""

    code: int
    sql_state: str | None
    message: str


def parse_error(payload: bytes) -> ServerError:
    if len(payload) < 3 or payload[0] != _ERR:
        raise MySQLProtocolError("a truncated error packet")
    code = int.from_bytes(payload[1:3], "little")
    rest = payload[3:]
    sql_state = None
    if rest[:1] == b"#" and len(rest) >= 6:
        sql_state, rest = rest[1:6].decode("ascii", "replace"), rest[6:]
    return ServerError(code=code, sql_state=sql_state, message=rest.decode("utf-8", "replace"))


def login_packet(user: str, *, sequence: int, post_41: bool, server_capabilities: int) -> bytes:
    """The handshake response logging ``user`` in with an empty password, framed.

    With ``post_41`` (the default) the 4.1 packet: capability flags (4 bytes), the largest
    packet size (4 bytes), the character set, 23 reserved zero bytes, the user name (NUL-
    terminated) and an empty authentication response (one zero length byte). Every MySQL and
    MariaDB since 4.1 (2004) speaks it and every current client sends it, so it is the login
    path servers exercise and keep, which is why it is trilb's default; the older packet is a
    compatibility path a server may drop. HAProxy's default is that older packet, which
    ``post_41 = false`` sends:
    capability flags (2 bytes), the largest packet size (3 bytes) and the user name
    (NUL-terminated), the (empty) authentication response running to the end of the packet.

    The check does not announce plugin authentication: a password-less account logs in with
    the classic method, and the server answers OK or an error at once."""
    name = user.encode()
    if post_41:
        flags = CLIENT_PROTOCOL_41 | (server_capabilities & CLIENT_SECURE_CONNECTION)
        payload = (
            flags.to_bytes(4, "little")
            + MAX_PACKET_SIZE.to_bytes(4, "little")
            + bytes([CHARSET_UTF8])
            + bytes(23)
            + name
            + b"\x00"
            + b"\x00"  # the authentication response: empty (as a length, or a C string)
        )
    else:
        payload = (
            CLIENT_LONG_PASSWORD.to_bytes(2, "little")
            + (MAX_PACKET_SIZE - 1).to_bytes(3, "little")
            + name
            + b"\x00"
        )
    return encode_packet(sequence, payload)


def _server_said(error: ServerError) -> CheckResult:
    return CheckResult(
        reason=Reason.L7_STATUS, code=error.code, info=server_words(error.message) or None
    )


def _invalid(info: str) -> CheckResult:
    return CheckResult(reason=Reason.L7_INVALID, info=info)


class MySQLDialog(Dialog):
    """Read the greeting; with a ``user``, log in and expect OK, then say ``COM_QUIT``.
    See the module docstring for what this verifies."""

    def __init__(self, *, user: str | None = None, post_41: bool = True) -> None:
        self._user = user
        self._post_41 = post_41
        self._reader = PacketReader()
        self._greeting: Greeting | None = None
        self._login_sequence = 0

    def receive(self, data: bytes) -> Step:
        if not data:
            return Step(outcome=closed(self._reader.pending, "packet"))
        self._reader.feed(data)
        try:
            packet = self._reader.next_packet()
            if packet is None:
                return CONTINUE
            if self._greeting is None:
                return self._greeted(packet)
            return self._answered(packet)
        except MySQLProtocolError as exc:
            return Step(outcome=_invalid(str(exc)))

    def _greeted(self, packet: Packet) -> Step:
        if packet.payload[:1] == bytes([_ERR]):
            return Step(outcome=_server_said(parse_error(packet.payload)))
        greeting = self._greeting = parse_greeting(packet.payload)
        version = server_words(greeting.server_version) or None
        if self._user is None:
            return Step(outcome=CheckResult(reason=Reason.L7_OK, info=version))
        if self._post_41 and not greeting.capabilities & CLIENT_PROTOCOL_41:
            return Step(
                outcome=_invalid(
                    f"the server ({version}) does not speak protocol 4.1: set post_41 = false"
                )
            )
        self._login_sequence = (packet.sequence + 1) & 0xFF
        login = login_packet(
            self._user,
            sequence=self._login_sequence,
            post_41=self._post_41,
            server_capabilities=greeting.capabilities,
        )
        return Step(send=login)

    def _answered(self, packet: Packet) -> Step:
        assert self._greeting is not None
        expected = (self._login_sequence + 1) & 0xFF
        if packet.sequence != expected:
            return Step(
                outcome=_invalid(
                    f"an answer to the login with sequence id {packet.sequence}, not {expected}"
                )
            )
        kind = packet.payload[:1]
        if kind == bytes([_OK]):
            version = server_words(self._greeting.server_version) or None
            outcome = CheckResult(reason=Reason.L7_OK, info=version)
            return Step(send=QUIT_PACKET, outcome=outcome)
        if kind == bytes([_ERR]):
            return Step(outcome=_server_said(parse_error(packet.payload)))
        if kind == bytes([_AUTH_SWITCH]):
            return Step(
                outcome=CheckResult(
                    reason=Reason.L7_STATUS,
                    info="the server asks for another authentication method: the check logs "
                    "in with an empty password only",
                )
            )
        shown = f"0x{kind[0]:02x}" if kind else "an empty packet"
        return Step(outcome=_invalid(f"an unexpected answer to the login: {shown}"))
