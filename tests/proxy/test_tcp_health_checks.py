"""The protocol-aware TCP health checks (send_expect, redis, mysql, smtp, and tls for a TCP-mode
backend) run by a real balancer against stand-in servers on 127.0.0.1: each server goes DOWN
when its stand-in starts answering "no", and comes back UP when it answers "yes" again.

A :class:`StandIn` is a small server for one protocol whose ``mode`` a test switches; it keeps
what every connection sent, so tests check the bytes of the check too (the login packet a MySQL
server gets, the EHLO and QUIT an SMTP server gets). Intervals are 50 ms; every wait is on a log
line or on a stand-in's record, bounded by ``trio.fail_after`` -- never a sleep.
"""

from __future__ import annotations

import functools
import re
import ssl
from collections.abc import Awaitable, Callable

import attrs
import pytest
import trio
import trustme
from conftest import WAIT, CollectingLog, MisbehavingBackends, StartProxy, make_config

import trilb
from trilb.config.model import HealthCheckType, ProxyVersion
from trilb.core.proxy_protocol import encode_v2

CHECK = trilb.HealthCheck(type="tcp", interval=0.05, timeout=0.5, fall=2, rise=2)


def with_checks(
    servers: list[trilb.ServerConfig | trilb.Address], check: trilb.HealthCheck
) -> trilb.Config:
    config = make_config(servers)
    backend = attrs.evolve(config.backends[0], health_check=check)
    return attrs.evolve(config, backends=[backend])


async def wait_message(log: CollectingLog, pattern: str, start: int = 0) -> str:
    """The first message from index ``start`` on matching the regular expression ``pattern``."""
    with trio.fail_after(WAIT):
        while True:
            for line in log.messages[start:]:
                if re.search(pattern, line):
                    return line
            await log._changed.wait()


# -- stand-in servers -----------------------------------------------------------------------------


class Conversation:
    """One connection to a stand-in, with reading helpers; ``received`` is all it got."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.received = bytearray()
        self._buffer = bytearray()
        self.closed = False

    async def _fill(self) -> bool:
        data = b"" if self.closed else await self.stream.receive_some(65536)
        if not data:
            self.closed = True
            return False
        self.received += data
        self._buffer += data
        return True

    async def read_until(self, marker: bytes) -> bytes | None:
        """Up to and including ``marker``; None if the peer closed first."""
        while (index := self._buffer.find(marker)) < 0:
            if not await self._fill():
                return None
        data = bytes(self._buffer[: index + len(marker)])
        del self._buffer[: index + len(marker)]
        return data

    async def read_exactly(self, size: int) -> bytes | None:
        while len(self._buffer) < size:
            if not await self._fill():
                return None
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def read_until_closed(self) -> None:
        while await self._fill():
            pass

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)


Handler = Callable[["StandIn", Conversation], Awaitable[None]]


class StandIn:
    """A server on 127.0.0.1:0 running ``handler`` per connection (over TLS with ``tls``);
    ``mode`` tells the handler how to answer. ``conversations`` holds every connection, and
    ``ended`` counts those that are over."""

    def __init__(self, handler: Handler, mode: str, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.mode = mode
        self.tls = tls
        self.port = 0
        self.conversations: list[Conversation] = []
        self.ended = 0
        self._changed = trio.Event()

    @property
    def address(self) -> trilb.Address:
        return trilb.Address(host="127.0.0.1", port=self.port)

    async def run(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._serve, listeners, task_status=task_status)

    async def _serve(self, raw: trio.SocketStream) -> None:
        stream: trio.abc.Stream = raw
        if self.tls is not None:
            stream = trio.SSLStream(raw, self.tls, server_side=True)
        conversation = Conversation(stream)
        self.conversations.append(conversation)
        try:
            await self.handler(self, conversation)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            self.ended += 1
            self._changed.set()
            self._changed = trio.Event()

    async def wait_ended(self, count: int) -> list[Conversation]:
        """Wait until ``count`` connections are over; the conversations so far."""
        with trio.fail_after(WAIT):
            while self.ended < count:
                await self._changed.wait()
        return self.conversations


StartStandIn = Callable[..., Awaitable[StandIn]]


@pytest.fixture
def stand_in(nursery: trio.Nursery) -> StartStandIn:
    """``await stand_in(handler, mode, tls=None)``: a running :class:`StandIn`."""

    async def start(handler: Handler, mode: str, tls: ssl.SSLContext | None = None) -> StandIn:
        server = StandIn(handler, mode, tls)
        await nursery.start(server.run)
        return server

    return start


async def goes_down_and_up(
    proxy_log: CollectingLog, server: StandIn, down_mode: str, up_mode: str
) -> tuple[str, str]:
    """Once the first check confirmed the server, switch it to ``down_mode`` until it is DOWN,
    then back to ``up_mode`` until it is UP: the two log lines."""
    await wait_message(proxy_log, r"health check for server backend/s1 succeeded.*status: 2/2 UP")
    server.mode = down_mode
    mark = len(proxy_log.messages)
    down = await wait_message(proxy_log, r"server backend/s1 is DOWN", mark)
    server.mode = up_mode
    mark = len(proxy_log.messages)
    up = await wait_message(proxy_log, r"server backend/s1 is UP", mark)
    return down, up


def down_line(reason: str) -> str:
    """The pattern of the DOWN line of the one server s1, with ``reason`` (a pattern)."""
    return (
        rf"trilb warning: server backend/s1 is DOWN, reason: {reason}, check duration: \d+ms\. "
        r"0 active and 0 backup servers left\."
    )


def up_line(reason: str) -> str:
    return (
        rf"trilb info: server backend/s1 is UP, reason: {reason}, check duration: \d+ms\. "
        r"1 active and 0 backup servers online\."
    )


# -- send_expect ----------------------------------------------------------------------------------


async def echo(server: StandIn, conversation: Conversation) -> None:
    """Echoes the first line, or answers "nope" (mode "down"); then closes."""
    line = await conversation.read_until(b"\n")
    if line is not None:
        await conversation.send(line if server.mode == "up" else b"nope\r\n")


async def test_send_expect_goes_down_and_up(
    stand_in: StartStandIn, start_proxy: StartProxy
) -> None:
    server = await stand_in(echo, "up")
    check = attrs.evolve(CHECK, type="send_expect", send=b"hello\r\n", expect=b"hello")
    proxy = await start_proxy(config=with_checks([server.address], check))
    down, up = await goes_down_and_up(proxy.log, server, "down", "up")
    info = r"connection closed: the answer 'nope\r\n' does not contain 'hello'"
    assert re.fullmatch(down_line(rf'Layer7 invalid response, info: "{re.escape(info)}"'), down), (
        down
    )
    assert re.fullmatch(up_line("Layer7 check passed"), up), up
    conversations = await server.wait_ended(3)
    assert all(c.received == b"hello\r\n" for c in conversations[:3])


async def test_send_expect_regex_with_a_server_that_speaks_first(
    stand_in: StartStandIn, start_proxy: StartProxy
) -> None:
    async def banner(server: StandIn, conversation: Conversation) -> None:
        await conversation.send(
            b"SSH-2.0-OpenSSH_9.2p1\r\n" if server.mode == "up" else b"busy\r\n"
        )
        await conversation.read_until_closed()

    server = await stand_in(banner, "up")
    check = attrs.evolve(CHECK, type="send_expect", expect_regex=r"^SSH-2\.0-\S+\r\n")
    proxy = await start_proxy(config=with_checks([server.address], check))
    down, _ = await goes_down_and_up(proxy.log, server, "down", "up")
    # no match, and the server keeps the connection open: the check times out
    assert re.fullmatch(down_line("Layer7 timeout"), down), down
    conversations = await server.wait_ended(3)
    assert all(c.received == b"" for c in conversations[:3])  # the check only listened


# -- redis ----------------------------------------------------------------------------------------

LOADING = b"-LOADING Redis is loading the dataset in memory"


async def redis(server: StandIn, conversation: Conversation) -> None:
    """Answers PING with +PONG (mode "up"), or with the mode as an error line."""
    if await conversation.read_until(b"PING\r\n") is None:
        return
    await conversation.send(b"+PONG\r\n" if server.mode == "up" else server.mode.encode() + b"\r\n")
    await conversation.read_until_closed()


@pytest.mark.parametrize("error", [LOADING, b"-NOAUTH Authentication required."])
async def test_redis_goes_down_and_up(
    stand_in: StartStandIn, start_proxy: StartProxy, error: bytes
) -> None:
    server = await stand_in(redis, "up")
    proxy = await start_proxy(
        config=with_checks([server.address], attrs.evolve(CHECK, type="redis"))
    )
    down, up = await goes_down_and_up(proxy.log, server, error.decode(), "up")
    words = re.escape(error.decode())
    assert re.fullmatch(down_line(f'Layer7 wrong status, info: "{words}"'), down), down
    assert re.fullmatch(up_line("Layer7 check passed"), up), up
    conversations = await server.wait_ended(1)
    assert conversations[0].received == b"*1\r\n$4\r\nPING\r\n"


# -- mysql ----------------------------------------------------------------------------------------

VERSION = b"10.11.99-MariaDB-standin"
#: capabilities of a MariaDB 10.11 (the lower and upper halves)
CAPABILITIES = 0x81FF_F7FE


def mysql_packet(sequence: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([sequence]) + payload


def mysql_greeting(version: bytes = VERSION, capabilities: int = CAPABILITIES) -> bytes:
    """A protocol 10 greeting as MariaDB sends it."""
    payload = (
        b"\x0a"
        + version
        + b"\x00"
        + (42).to_bytes(4, "little")  # connection id
        + b"abcdefgh\x00"  # the scramble's first part, a filler
        + (capabilities & 0xFFFF).to_bytes(2, "little")
        + b"\x21\x02\x00"  # character set, status
        + (capabilities >> 16).to_bytes(2, "little")
        + b"\x15"
        + bytes(10)
        + b"ijklmnopqrst\x00"  # the scramble's second part
        + b"mysql_native_password\x00"
    )
    return mysql_packet(0, payload)


def parse_login(payload: bytes) -> tuple[str, int]:
    """(user, capability flags) of a handshake response, checking its layout as a server would:
    4.1 (flags, max packet, charset, 23 zeros, user, empty auth) or older (flags, max packet,
    user, nothing)."""
    flags = int.from_bytes(payload[:2], "little")
    if flags & 0x200:  # CLIENT_PROTOCOL_41
        flags = int.from_bytes(payload[:4], "little")
        assert payload[9:32] == bytes(23), payload
        user, _, auth = payload[32:].partition(b"\x00")
        assert auth == b"\x00", payload  # an empty authentication response
    else:
        user, _, auth = payload[5:].partition(b"\x00")
        assert auth == b"", payload
    return user.decode(), flags


@attrs.define
class MySQLStandIn:
    """What the MySQL stand-in saw: the logins (user, flags, sequence id)."""

    logins: list[tuple[str, int, int]] = attrs.Factory(list)


def mysql_handler(seen: MySQLStandIn) -> Handler:
    """Modes: "ok" (accepts any login), "denied" (refuses it), "blocked" (an error greeting)."""

    async def handler(server: StandIn, conversation: Conversation) -> None:
        if server.mode == "blocked":
            blocked = b"Host '127.0.0.1' is blocked because of many connection errors"
            await conversation.send(mysql_packet(0, b"\xff\x69\x04" + blocked))
            return
        await conversation.send(mysql_greeting())
        head = await conversation.read_exactly(4)
        if head is None:
            return  # a check without user: the greeting was all
        payload = await conversation.read_exactly(int.from_bytes(head[:3], "little"))
        assert payload is not None
        user, flags = parse_login(payload)
        seen.logins.append((user, flags, head[3]))
        if server.mode == "ok":
            await conversation.send(mysql_packet(head[3] + 1, b"\x00\x00\x00\x02\x00\x00\x00"))
            await conversation.read_until_closed()  # COM_QUIT, then the check closes
        else:
            message = f"Access denied for user '{user}'@'127.0.0.1' (using password: NO)"
            error = b"\xff\x15\x04#28000" + message.encode()
            await conversation.send(mysql_packet(head[3] + 1, error))

    return handler


async def test_mysql_login_goes_down_and_up(
    stand_in: StartStandIn, start_proxy: StartProxy
) -> None:
    seen = MySQLStandIn()
    server = await stand_in(mysql_handler(seen), "ok")
    check = attrs.evolve(CHECK, type="mysql", user="haproxy_check")
    proxy = await start_proxy(config=with_checks([server.address], check))
    down, up = await goes_down_and_up(proxy.log, server, "denied", "ok")
    info = "Access denied for user 'haproxy_check'@'127.0.0.1' (using password: NO)"
    assert re.fullmatch(
        down_line(f'Layer7 wrong status, code: 1045, info: "{re.escape(info)}"'), down
    ), down
    assert re.fullmatch(up_line(f'Layer7 check passed, info: "{VERSION.decode()}"'), up), up
    # every login: user haproxy_check, protocol 4.1 with secure authentication, sequence id 1
    assert seen.logins
    assert set(seen.logins) == {("haproxy_check", 0x8200, 1)}
    # after an accepted login, the check said COM_QUIT
    conversations = await server.wait_ended(1)
    assert conversations[0].received.endswith(b"\x01\x00\x00\x00\x01")


async def test_mysql_pre_41_login(stand_in: StartStandIn, start_proxy: StartProxy) -> None:
    seen = MySQLStandIn()
    server = await stand_in(mysql_handler(seen), "ok")
    check = attrs.evolve(CHECK, type="mysql", user="haproxy_check", post_41=False)
    proxy = await start_proxy(config=with_checks([server.address], check))
    await wait_message(proxy.log, r"backend/s1 succeeded, reason: Layer7 check passed")
    assert seen.logins[0] == ("haproxy_check", 0x0001, 1)


async def test_mysql_greeting_only_goes_down_and_up(
    stand_in: StartStandIn, start_proxy: StartProxy
) -> None:
    seen = MySQLStandIn()
    server = await stand_in(mysql_handler(seen), "ok")
    proxy = await start_proxy(
        config=with_checks([server.address], attrs.evolve(CHECK, type="mysql"))
    )
    down, up = await goes_down_and_up(proxy.log, server, "blocked", "ok")
    info = "Host '127.0.0.1' is blocked because of many connection errors"
    assert re.fullmatch(
        down_line(f'Layer7 wrong status, code: 1129, info: "{re.escape(info)}"'), down
    ), down
    assert re.fullmatch(up_line(f'Layer7 check passed, info: "{VERSION.decode()}"'), up), up
    assert seen.logins == []  # without user, the check sends nothing
    conversations = await server.wait_ended(3)
    assert all(c.received == b"" for c in conversations[:3])


# -- smtp -----------------------------------------------------------------------------------------


async def smtp(server: StandIn, conversation: Conversation) -> None:
    """Modes: "ok"; "421" and "554" (greetings that refuse); "550" (refuses the EHLO)."""
    if server.mode in ("421", "554"):
        code = server.mode.encode()
        await conversation.send(code + b"-mail.example.test no service\r\n" + code + b" bye\r\n")
        await conversation.read_until_closed()
        return
    await conversation.send(b"220-mail.example.test ESMTP stand-in\r\n220 no UCE\r\n")
    if await conversation.read_until(b"\r\n") is None:
        return
    if server.mode == "550":
        await conversation.send(b"550 5.7.1 not from you\r\n")
    else:
        await conversation.send(
            b"250-mail.example.test Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
            b"250 8BITMIME\r\n"
        )
    if await conversation.read_until(b"QUIT\r\n") is not None:
        await conversation.send(b"221 2.0.0 Bye\r\n")


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("421", 'Layer7 wrong status, code: 421, info: "mail.example.test no service"'),
        ("554", 'Layer7 wrong status, code: 554, info: "mail.example.test no service"'),
        ("550", 'Layer7 wrong status, code: 550, info: "5.7.1 not from you"'),
    ],
)
async def test_smtp_goes_down_and_up(
    stand_in: StartStandIn, start_proxy: StartProxy, mode: str, reason: str
) -> None:
    server = await stand_in(smtp, "ok")
    check = attrs.evolve(CHECK, type="smtp", domain="lb1.example.test")
    proxy = await start_proxy(config=with_checks([server.address], check))
    down, up = await goes_down_and_up(proxy.log, server, mode, "ok")
    assert re.fullmatch(down_line(re.escape(reason)), down), down
    assert re.fullmatch(
        up_line('Layer7 check passed, code: 250, info: "mail.example.test Hello"'), up
    ), up
    conversations = await server.wait_ended(1)
    assert conversations[0].received == b"EHLO lb1.example.test\r\nQUIT\r\n"


# -- timeouts, closed connections -----------------------------------------------------------------

TYPES: list[tuple[HealthCheckType, dict[str, object]]] = [
    ("send_expect", {"send": b"hello\r\n", "expect": b"hello"}),
    ("redis", {}),
    ("mysql", {"user": "haproxy_check"}),
    ("smtp", {}),
]


@pytest.mark.parametrize(("check_type", "keys"), TYPES)
async def test_a_silent_server_times_out(
    misbehaving: MisbehavingBackends,
    start_proxy: StartProxy,
    check_type: HealthCheckType,
    keys: dict[str, object],
) -> None:
    address = await misbehaving.hang()  # accepts, reads, never says a word
    check = attrs.evolve(CHECK, type=check_type, timeout=0.1, **keys)  # type: ignore[arg-type]
    proxy = await start_proxy(config=with_checks([address], check))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    match = re.fullmatch(down_line(r"Layer7 timeout"), line)
    assert match is not None, line
    duration = int(re.search(r"check duration: (\d+)ms", line).group(1))  # type: ignore[union-attr]
    assert 100 <= duration < 1000


async def close_at_once(server: StandIn, conversation: Conversation) -> None:
    pass


async def close_after_a_line(server: StandIn, conversation: Conversation) -> None:
    await conversation.read_until(b"\n")


@pytest.mark.parametrize(
    ("check_type", "keys", "handler", "what"),
    [
        ("send_expect", {"expect": b"hello"}, close_at_once, "response"),
        ("mysql", {}, close_at_once, "packet"),
        ("smtp", {}, close_at_once, "reply"),
        ("redis", {}, close_after_a_line, "reply"),  # it reads the PING, answers nothing
        ("send_expect", {"send": b"hi\n", "expect": b"hello"}, close_after_a_line, "response"),
    ],
)
async def test_a_server_that_closes_is_an_invalid_response(
    stand_in: StartStandIn,
    start_proxy: StartProxy,
    check_type: HealthCheckType,
    keys: dict[str, object],
    handler: Handler,
    what: str,
) -> None:
    server = await stand_in(handler, "")
    check = attrs.evolve(CHECK, type=check_type, **keys)  # type: ignore[arg-type]
    proxy = await start_proxy(config=with_checks([server.address], check))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    info = f"connection closed without a {what}"
    assert re.fullmatch(down_line(f'Layer7 invalid response, info: "{info}"'), line), line


async def test_a_refused_connection_is_a_connection_problem(
    misbehaving: MisbehavingBackends, start_proxy: StartProxy
) -> None:
    check = attrs.evolve(CHECK, type="redis")
    proxy = await start_proxy(config=with_checks([misbehaving.refuse()], check))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    assert re.fullmatch(down_line('Layer4 connection problem, info: "Connection refused"'), line)


async def test_a_send_expect_check_built_without_expectation_is_an_internal_error(
    stand_in: StartStandIn, start_proxy: StartProxy
) -> None:
    """Only possible from Python (the loader asks for expect): logged once, the balancer goes
    on."""
    server = await stand_in(echo, "up")
    check = attrs.evolve(CHECK, type="send_expect", send=b"hello\n")
    proxy = await start_proxy(config=with_checks([server.address], check))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    assert "reason: Internal check error, info: " in line
    assert "needs expect or expect_regex" in line
    errors = [m for m in proxy.log.messages if "failed unexpectedly" in m]
    assert len(errors) == 1, errors


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, str]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, str(path)


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


async def test_checks_speak_tls_to_a_re_encrypted_server(
    stand_in: StartStandIn, start_proxy: StartProxy, ca: tuple[trustme.CA, str]
) -> None:
    """As HAProxy's checks inherit ``ssl``: a Redis behind TLS, checked on its traffic port."""
    authority, path = ca
    server = await stand_in(redis, "up", tls=server_context(authority))
    config = trilb.ServerConfig(name="s1", address=server.address, tls=trilb.UpstreamTLS(ca=path))
    proxy = await start_proxy(config=with_checks([config], attrs.evolve(CHECK, type="redis")))
    down, up = await goes_down_and_up(proxy.log, server, LOADING.decode(), "up")
    assert "Layer7 wrong status" in down
    assert "Layer7 check passed" in up
    conversations = await server.wait_ended(1)
    assert conversations[0].received == b"*1\r\n$4\r\nPING\r\n"


async def test_tls_check_of_a_tcp_mode_backend(
    nursery: trio.Nursery, stand_in: StartStandIn, ca: tuple[trustme.CA, str]
) -> None:
    """TLS passthrough: trilb relays TCP and never speaks TLS to the server itself; the ``tls``
    check still makes sure a TLS server answers (without verifying it: trilb has no CA for it)."""
    authority, _ = ca
    up_server = await stand_in(close_after_a_line, "", tls=server_context(authority))
    plain = await stand_in(close_at_once, "")
    check = attrs.evolve(CHECK, type="tls")
    config = trilb.Config(
        frontends=[
            trilb.FrontendConfig(name="front", bind="127.0.0.1:0", mode="tcp", default_backend="db")
        ],
        backends=[
            trilb.BackendConfig(
                name="db",
                mode="tcp",
                servers=[
                    trilb.ServerConfig(name="tls", address=up_server.address),
                    trilb.ServerConfig(name="plain", address=plain.address),
                ],
                health_check=check,
            )
        ],
        log=trilb.LogConfig(target="none"),
    )
    log = CollectingLog()
    await nursery.start(functools.partial(trilb.serve, config, log=log))
    await wait_message(
        log, r"health check for server db/tls succeeded, reason: Layer6 check passed"
    )
    line = await wait_message(log, r"server db/plain is DOWN")
    assert "reason: Layer6 invalid response" in line, line
    assert not [m for m in log.messages if "db/tls is DOWN" in m]


# -- send_proxy -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "header"),
    [("v1", b"PROXY UNKNOWN\r\n"), ("v2", encode_v2(None, None))],
)
async def test_checks_of_a_send_proxy_server_start_with_a_local_header(
    stand_in: StartStandIn, start_proxy: StartProxy, version: ProxyVersion, header: bytes
) -> None:
    """The server's port expects a PROXY header first: checks send one naming no client."""

    async def hello_after_header(server: StandIn, conversation: Conversation) -> None:
        if await conversation.read_until(b"hello\r\n") is not None:
            await conversation.send(b"hello\r\n")

    server = await stand_in(hello_after_header, "up")
    check = attrs.evolve(CHECK, type="send_expect", send=b"hello\r\n", expect=b"hello")
    address = trilb.ServerConfig(name="s1", address=server.address, send_proxy=version)
    proxy = await start_proxy(config=with_checks([address], check))
    conversations = await server.wait_ended(2)
    assert all(c.received == header + b"hello\r\n" for c in conversations[:2])
    assert not any("DOWN" in line for line in proxy.log.messages)
