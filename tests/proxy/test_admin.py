"""The admin socket in-process: every command through a real unix socket in tmp_path, what a
client can't do to it (garbage, long lines, stalling, crowds), the socket file's life, and a
drain that lets the request in flight finish while new ones go elsewhere.

Waits are on events or answers, bounded by ``trio.fail_after``; the one sleep (health checks
paused) checks that something does *not* happen.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from conftest import (
    WAIT,
    Backend,
    BackendRequest,
    BackendResponse,
    CollectingLog,
    Proxy,
    StartBackend,
    StartProxy,
    StartRawClient,
    echo_handler,
    make_config,
)

import trilb
import trilb.admin
import trilb.ctl
from trilb.cli import main
from trilb.core.admin_commands import MAX_LINE
from trilb.ctl import CtlError, send_command

HEALTH = trilb.HealthCheck(type="http", path="/health", interval=0.05, timeout=0.5, fall=1, rise=1)


class AdminClient:
    """A line client for the admin socket: send a command, read its answer (up to the empty
    line that ends it)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def command(self, line: str) -> str:
        await self.send(line.encode() + b"\n")
        return await self.answer()

    async def answer(self) -> str:
        """The next answer, without its final empty line."""
        with trio.fail_after(WAIT):
            while (end := self.buffer.find(b"\n\n")) < 0 and self.buffer != b"\n":
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(f"closed before the end of an answer: {bytes(self.buffer)!r}")
                self.buffer += data
        if end < 0:  # the empty answer
            self.buffer.clear()
            return ""
        text = self.buffer[: end + 1].decode()
        del self.buffer[: end + 2]
        return text.rstrip("\n")

    async def read_until_closed(self) -> bytes:
        """What arrives until the server closes. (A unix socket closed with unread data in it
        makes the peer's next read fail with ECONNRESET, after what was sent: that counts as
        closed.)"""
        with trio.fail_after(WAIT):
            try:
                while data := await self.stream.receive_some(65536):
                    self.buffer += data
            except trio.BrokenResourceError:
                pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


async def connect(path: Path) -> AdminClient:
    return AdminClient(await trio.open_unix_socket(str(path)))


async def ask(path: Path, line: str) -> str:
    """One command on a connection of its own."""
    client = await connect(path)
    try:
        return await client.command(line)
    finally:
        await client.aclose()


def with_admin(config: trilb.Config, path: Path, mode: int = 0o600) -> trilb.Config:
    return attrs.evolve(config, admin=trilb.AdminConfig(socket=str(path), mode=mode))


async def start(
    start_proxy: StartProxy,
    servers: Sequence[Backend],
    sock: Path,
    *,
    health: trilb.HealthCheck | None = None,
    **options: object,
) -> Proxy:
    config = make_config(servers, **options)  # type: ignore[arg-type]
    if health is not None:
        config = attrs.evolve(
            config, backends=[attrs.evolve(config.backends[0], health_check=health)]
        )
    return await start_proxy(config=with_admin(config, sock))


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "admin.sock"


async def served_by(url: str, count: int) -> list[str]:
    names = []
    async with httpx.AsyncClient(trust_env=False) as http:
        for _ in range(count):
            response = await http.get(url)
            names.append(response.json()["server"] if response.status_code == 200 else "503")
    return names


# -- the commands ---------------------------------------------------------------------------------


async def test_help_and_show_info(
    start_backend: StartBackend, start_proxy: StartProxy, sock: Path
) -> None:
    s1 = await start_backend()
    proxy = await start(start_proxy, [s1], sock)
    assert await served_by(proxy.url, 2) == ["s1", "s1"]
    client = await connect(sock)
    help_text = await client.command("help")
    for usage in ("show info", "show stat [json]", "set server BACKEND/SERVER state", "quit"):
        assert usage in help_text
    info = dict(line.split(": ", 1) for line in (await client.command("show info")).splitlines())
    assert info["Name"] == "trilb"
    assert info["Version"] == trilb.__version__
    assert info["Pid"] == str(os.getpid())
    assert re.fullmatch(r"0d 0h00m\d\ds", info["Uptime"])
    assert info["CumConns"] == "1"  # httpx kept its connection for both requests
    assert info["CumReq"] == "2"
    assert info["Servers"] == "1"
    assert info["ServersUp"] == "1"
    assert info["Stopping"] == "0"
    assert info["Frontend"] == f"frontend 127.0.0.1:{proxy.port} (0 connections)"
    assert info["Backend"] == "backend roundrobin (1/1 servers UP)"
    await client.aclose()


async def test_show_stat_csv_and_json(
    start_backend: StartBackend, start_proxy: StartProxy, sock: Path
) -> None:
    s1, s2 = await start_backend(), await start_backend()
    proxy = await start(start_proxy, [s1, s2], sock)
    await served_by(proxy.url, 4)
    text = await ask(sock, "show stat")
    header, *lines = text.splitlines()
    assert header.startswith("# pxname,svname,")
    rows = list(csv.DictReader([header[2:], *lines]))
    assert [(r["pxname"], r["svname"]) for r in rows] == [
        ("frontend", "FRONTEND"),
        ("backend", "s1"),
        ("backend", "s2"),
        ("backend", "BACKEND"),
    ]
    fe, r1, r2, be = rows
    assert (fe["status"], fe["type"], fe["req_tot"], fe["hrsp_2xx"]) == ("OPEN", "0", "4", "4")
    assert int(fe["bin"]) > 0
    assert int(fe["bout"]) > 0
    for row in (r1, r2):
        assert (row["status"], row["weight"], row["act"], row["bck"]) == ("UP", "100", "1", "0")
        assert (row["stot"], row["hrsp_2xx"], row["scur"], row["type"]) == ("2", "2", "0", "2")
        assert int(row["bin"]) > 0  # sent to the server
        assert int(row["bout"]) > 0  # answered by it
    assert r1["addr"] == f"127.0.0.1:{s1.port}"
    assert (be["status"], be["weight"], be["act"], be["qcur"], be["stot"]) == (
        "UP",
        "200",
        "2",
        "0",
        "4",
    )
    assert int(be["bout"]) == int(r1["bout"]) + int(r2["bout"])

    (json_line,) = (await ask(sock, "show stat json")).splitlines()
    records = json.loads(json_line)
    assert [(r["pxname"], r["svname"]) for r in records] == [
        (r["pxname"], r["svname"]) for r in rows
    ]
    assert records[1]["stot"] == 2
    assert records[0]["qcur"] is None


async def test_set_server_state_weight_and_show_servers_state(
    start_backend: StartBackend, start_proxy: StartProxy, sock: Path
) -> None:
    s1, s2 = await start_backend(), await start_backend()
    proxy = await start(start_proxy, [s1, s2], sock, weights=[100, 50])
    client = await connect(sock)
    assert await client.command("set server backend/s1 state maint") == (
        "Server backend/s1 set to maint: now MAINT (was UP)."
    )
    assert set(await served_by(proxy.url, 4)) == {"s2"}
    assert await client.command("set server backend/s2 state drain") == (
        "Server backend/s2 set to drain: now DRAIN (was UP)."
    )
    assert set(await served_by(proxy.url, 2)) == {"503"}
    assert await client.command("enable server backend/s1") == (
        "Server backend/s1 set to ready: now UP (was MAINT)."
    )
    assert await client.command("disable server backend/s2") == (
        "Server backend/s2 set to maint: now MAINT (was DRAIN)."
    )
    assert await client.command("set server backend/s2 state ready") == (
        "Server backend/s2 set to ready: now UP (was MAINT)."
    )

    # weights: absolute, then relative to the configured weight
    assert await client.command("get weight backend/s2") == "50 (initial 50)"
    assert await client.command("set server backend/s2 weight 50%") == (
        "Server backend/s2 weight is now 25 (was 50)."
    )
    assert await client.command("set server backend/s1 weight 0") == (
        "Server backend/s1 weight is now 0 (was 100)."
    )
    assert set(await served_by(proxy.url, 3)) == {"s2"}  # weight 0: no new traffic
    assert await client.command("set server backend/s1 weight 200%") == (
        "Server backend/s1 weight is now 200 (was 0)."
    )
    assert await client.command("get weight backend/s1") == "200 (initial 100)"

    state = (await client.command("show servers state")).splitlines()
    assert state[0] == "1"
    header = state[1][2:].split()
    rows = [dict(zip(header, line.split(), strict=True)) for line in state[2:]]
    assert [(r["srv_name"], r["srv_state"], r["srv_weight"], r["srv_iweight"]) for r in rows] == [
        ("s1", "UP", "200", "100"),
        ("s2", "UP", "25", "50"),
    ]
    assert rows[0]["health_checks"] == "none"
    assert rows[0]["check_status"] == "-"
    assert await client.command("show servers state backend") == "\n".join(state)
    assert await client.command("show servers state nope") == "Error: No such backend: nope."
    assert "server backend/s1 weight 100 -> 0 (set by the operator)" in "\n".join(
        proxy.log.messages
    )
    # and the embedding API saw the same
    s1_state = next(s for s in proxy.lb.servers_state() if s.server == "s1")
    assert (s1_state.weight, s1_state.configured_weight, s1_state.admin_state) == (
        200,
        100,
        "ready",
    )
    await client.aclose()


async def test_errors_are_one_line_and_the_connection_goes_on(
    start_backend: StartBackend, start_proxy: StartProxy, sock: Path
) -> None:
    s1 = await start_backend()
    await start(start_proxy, [s1], sock)
    client = await connect(sock)
    for line, error in [
        ("foo", "Unknown command: foo. Try 'help'."),
        ("set server backend/x state ready", "No such server: backend/x."),
        ("set server web/s1 state ready", "No such backend: web."),
        ("set server backend/s1 weight 300", "Weight must be 0-256, got 300."),
        ("set server backend/s1 weight 300%", "Weight 300 (300% of 100) is out of range 0-256."),
        ("set server backend/s1 state up", "Unknown state 'up': expected ready, drain or maint."),
        ("disable health backend/s1", "No health checks are configured for backend backend."),
        ("enable health backend/x", "No such server: backend/x."),
        ("get weight backend/x", "No such server: backend/x."),
    ]:
        assert await client.command(line) == f"Error: {error}"
    assert await client.command("") == ""  # a blank line: an empty answer
    assert (await client.command("get weight backend/s1")) == "100 (initial 100)"
    await client.send(b"quit\n")
    assert await client.read_until_closed() == b""
    await client.aclose()


async def test_several_commands_in_one_write(
    start_backend: StartBackend, start_proxy: StartProxy, sock: Path
) -> None:
    s1 = await start_backend()
    await start(start_proxy, [s1], sock)
    client = await connect(sock)
    await client.send(b"get weight backend/s1\r\nfoo\nshow sessions\nget weight backend/s1")
    await client.stream.send_eof()  # the last command has no line end: still a command
    assert await client.answer() == "100 (initial 100)"
    assert await client.answer() == "Error: Unknown command: foo. Try 'help'."
    assert await client.answer() == "# 0 sessions"
    assert await client.answer() == "100 (initial 100)"
    assert await client.read_until_closed() == b""
    await client.aclose()


async def test_disable_and_enable_health(
    start_backend: StartBackend, start_proxy: StartProxy, sock: Path
) -> None:
    healthy = True

    async def handler(request: BackendRequest) -> BackendResponse:
        if request.target == "/health":
            return BackendResponse(status=200 if healthy else 500)
        return await echo_handler("s1")(request)

    s1 = await start_backend(handler, name="s1")

    def checks() -> int:
        return sum(1 for r in s1.requests if r.target == "/health")

    proxy = await start(start_proxy, [s1], sock, health=HEALTH)
    await s1.wait_for(lambda: checks() >= 2)
    client = await connect(sock)
    assert await client.command("disable health backend/s1") == (
        "Health checks of backend/s1 disabled; it stays UP."
    )
    assert "health_checks" in (await client.command("show servers state")).splitlines()[1]
    assert " disabled L7OK " in await client.command("show servers state")
    healthy = False
    seen = checks()
    await trio.sleep(0.3)  # six intervals: no check, so the server stays UP although it fails
    assert checks() <= seen + 1  # (one may have been under way)
    assert proxy.lb.statistics().backend("backend").server("s1").state == "UP"
    assert await served_by(proxy.url, 1) == ["s1"]
    assert await client.command("disable health backend/s1") == (
        "Health checks of backend/s1 disabled; it stays UP."
    )  # again: nothing changes
    assert (
        await client.command("enable health backend/s1") == "Health checks of backend/s1 enabled."
    )
    with trio.fail_after(WAIT):
        while proxy.lb.statistics().backend("backend").server("s1").state != "DOWN":
            before = checks()
            await s1.wait_for(lambda: checks() > before)  # noqa: B023 - used at once
    assert " enabled L7STS " in await client.command("show servers state")
    # disabled while DOWN: it stays DOWN although the server is fine again
    assert await client.command("disable health backend/s1") == (
        "Health checks of backend/s1 disabled; it stays DOWN."
    )
    healthy = True
    assert await served_by(proxy.url, 1) == ["503"]
    messages = "\n".join(proxy.log.messages)
    assert "server backend/s1: health checks disabled by the operator (stays UP)" in messages
    assert "server backend/s1: health checks enabled by the operator" in messages
    await client.aclose()


async def test_embedding_api(start_backend: StartBackend, start_proxy: StartProxy) -> None:
    s1 = await start_backend()
    config = make_config([s1])
    config = attrs.evolve(config, backends=[attrs.evolve(config.backends[0], health_check=HEALTH)])
    proxy = await start_proxy(config=config)
    lb = proxy.lb
    with pytest.raises(KeyError):
        lb.disable_health("backend", "nope")
    with pytest.raises(KeyError):
        lb.set_weight("nope", "s1", 5)
    lb.disable_health("backend", "s1")
    assert lb.servers_state()[0].health_checks == "disabled"
    lb.enable_health("backend", "s1")
    assert lb.servers_state()[0].health_checks == "enabled"
    assert lb.sessions() == ()
    assert lb.uptime >= 0


async def test_embedding_api_without_health_checks(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy([await start_backend()])
    with pytest.raises(ValueError, match="no health checks"):
        proxy.lb.enable_health("backend", "s1")


# -- drain, and the sessions it leaves -----------------------------------------------------------


async def test_drain_lets_the_request_in_flight_finish(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    raw_client: StartRawClient,
    sock: Path,
) -> None:
    release = trio.Event()

    async def slow(request: BackendRequest) -> BackendResponse:
        if request.target == "/slow":
            await release.wait()
        return await echo_handler("s1")(request)

    s1 = await start_backend(slow, name="s1")
    s2 = await start_backend(name="s2")
    proxy = await start(start_proxy, [s1, s2], sock)
    # a keep-alive client with a request in flight on s1 (round robin: s1 comes first)
    keep_alive = await raw_client(proxy.port)
    await keep_alive.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await s1.wait_heads(1)

    sessions = (await ask(sock, "show sessions")).splitlines()
    assert sessions[0] == "# 1 session"
    assert re.fullmatch(
        r"frontend#\d+ client=127\.0\.0\.1:\d+ tls=no age=\d+\.\ds requests=0 "
        r'backend=backend server=s1 request="GET /slow HTTP/1.1"',
        sessions[1],
    ), sessions[1]

    assert await ask(sock, "set server backend/s1 state drain") == (
        "Server backend/s1 set to drain: now DRAIN (was UP)."
    )
    assert set(await served_by(proxy.url, 4)) == {"s2"}  # new requests go elsewhere
    release.set()
    response = await keep_alive.read_response()
    assert response.status == 200
    assert json.loads(response.body)["server"] == "s1"  # the one in flight finished there
    assert response.header("connection") == []  # and the connection stays open
    await keep_alive.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    following = await keep_alive.read_response()
    assert json.loads(following.body)["server"] == "s2"  # its next request goes elsewhere too

    # (httpx's connections may still be closing: look at this client's session only)
    client = f"127.0.0.1:{keep_alive.stream.socket.getsockname()[1]}"
    (line,) = [s for s in (await ask(sock, "show sessions")).splitlines() if client in s]
    assert re.search(r" requests=2 idle$", line), line
    (info,) = [s for s in proxy.lb.sessions() if s.client == client]
    assert (info.frontend, info.tls, info.requests, info.request_line, info.server) == (
        "frontend",
        False,
        2,
        None,
        None,
    )
    state = await ask(sock, "show servers state")
    assert "backend s1 " in state
    assert " DRAIN drain " in state


# -- what a client can't do ------------------------------------------------------------------------


async def test_garbage_and_long_lines(
    start_backend: StartBackend, start_proxy: StartProxy, sock: Path
) -> None:
    s1 = await start_backend()
    await start(start_proxy, [s1], sock)
    client = await connect(sock)
    assert await client.command("\x00\x01\x02") == (
        "Error: Not a command: the line has unprintable characters."
    )
    await client.send(b"\xff\xfe\xfd\n")
    assert await client.answer() == "Error: Not a command: the line is not UTF-8 text."
    assert await client.command("help")  # still served

    # a line longer than MAX_LINE: an error, then the connection is closed
    await client.send(b"show " + b"x" * MAX_LINE)
    assert await client.read_until_closed() == b"Error: Line too long (max 4096 bytes).\n\n"
    await client.aclose()

    # the same with the line end in the same write
    client = await connect(sock)
    await client.send(b"y" * (MAX_LINE + 10) + b"\nhelp\n")
    assert (await client.read_until_closed()).startswith(b"Error: Line too long")
    await client.aclose()

    # 1 MB of random bytes: refused line by line or closed, never more
    client = await connect(sock)
    data = bytes(range(256)) * 4096
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:

            async def send_all() -> None:
                try:
                    await client.send(data)
                except trio.BrokenResourceError:
                    pass  # closed by the server: expected

            nursery.start_soon(send_all)
            answers = await client.read_until_closed()
    assert answers.count(b"Error: ") >= 1
    await client.aclose()
    assert await ask(sock, "get weight backend/s1") == "100 (initial 100)"


async def test_slow_and_idle_clients_are_closed(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    sock: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trilb.admin, "IDLE_TIMEOUT", 0.2)
    s1 = await start_backend()
    await start(start_proxy, [s1], sock)
    client = await connect(sock)
    await client.send(b"show in")  # never finished
    with trio.fail_after(WAIT):
        assert await client.read_until_closed() == (
            b"Error: No complete command in 0.2s; closing.\n\n"
        )
    await client.aclose()
    client = await connect(sock)  # connected and silent
    assert (await client.read_until_closed()).startswith(b"Error: No complete command")
    await client.aclose()


async def test_commands_per_connection_are_bounded(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    sock: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trilb.admin, "MAX_COMMANDS", 3)
    s1 = await start_backend()
    await start(start_proxy, [s1], sock)
    client = await connect(sock)
    for _ in range(3):
        assert await client.command("get weight backend/s1") == "100 (initial 100)"
    assert await client.read_until_closed() == (
        b"Error: Too many commands on one connection (max 3); closing.\n\n"
    )
    await client.aclose()


async def test_many_clients_at_once(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    sock: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trilb.admin, "MAX_CLIENTS", 3)
    s1 = await start_backend()
    await start(start_proxy, [s1], sock)
    idle = [await connect(sock) for _ in range(3)]
    for client in idle:  # each is being served (answered) before the next connects
        assert await client.command("get weight backend/s1") == "100 (initial 100)"
    refused = await connect(sock)
    assert await refused.read_until_closed() == (
        b"Error: Too many admin connections; try again later.\n\n"
    )
    await refused.aclose()
    await idle[0].send(b"quit\n")  # the server counts the connection out before closing it
    assert await idle[0].read_until_closed() == b""
    assert await ask(sock, "get weight backend/s1") == "100 (initial 100)"  # a free slot again
    for client in idle:
        await client.aclose()

    # a crowd, each client sending a few commands: every answer is whole, or the busy error
    monkeypatch.setattr(trilb.admin, "MAX_CLIENTS", 16)
    results: list[str] = []

    async def one() -> None:
        client = await connect(sock)
        try:
            for _ in range(3):
                results.append(await client.command("show stat"))
        except (EOFError, trio.BrokenResourceError):
            results.append("closed")
        finally:
            await client.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(40):
            nursery.start_soon(one)
    for result in results:
        assert result.startswith("# pxname,svname,") or result in (
            "Error: Too many admin connections; try again later.",
            "closed",
        ), result
    assert sum(1 for r in results if r.startswith("# pxname")) >= 16 * 3
    assert (await ask(sock, "show stat")).startswith("# pxname")


# -- the socket file -----------------------------------------------------------------------------


async def test_socket_mode_and_removal_on_stop(
    start_backend: StartBackend, sock: Path, nursery: trio.Nursery
) -> None:
    s1 = await start_backend()
    old_umask = os.umask(0)  # the mode must not depend on the umask
    try:
        config = with_admin(make_config([s1]), sock)
        lb: trilb.Balancer = await nursery.start(
            functools.partial(trilb.serve, config, log=CollectingLog())
        )
    finally:
        os.umask(old_umask)
    info = os.stat(sock)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert await ask(sock, "get weight backend/s1") == "100 (initial 100)"
    client = await connect(sock)  # connected while the balancer stops
    await lb.drain(1)
    assert not await trio.Path(sock).exists()
    assert await client.read_until_closed() == b""
    await client.aclose()


async def test_custom_mode_and_removal_on_cancel(
    start_backend: StartBackend, tmp_path: Path
) -> None:
    s1 = await start_backend()
    sock = tmp_path / "a.sock"
    config = with_admin(make_config([s1]), sock, mode=0o660)
    async with trilb.open_balancer(config, log=CollectingLog()):
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    assert not await trio.Path(sock).exists()


async def test_stale_socket_is_replaced_other_files_are_not(
    start_backend: StartBackend, tmp_path: Path
) -> None:
    s1 = await start_backend()
    stale = tmp_path / "stale.sock"
    with trio.socket.socket(trio.socket.AF_UNIX) as leftover:
        await leftover.bind(str(stale))  # a socket file nobody listens on
    config = with_admin(make_config([s1]), stale)
    async with trilb.open_balancer(config, log=CollectingLog()):
        assert await ask(stale, "get weight backend/s1") == "100 (initial 100)"
    assert not await trio.Path(stale).exists()

    regular = tmp_path / "precious.txt"
    regular.write_text("keep me")
    config = with_admin(make_config([s1]), regular)
    # (services start inside the balancer's nursery: their start-up errors come in a group)
    with pytest.RaisesGroup(
        pytest.RaisesExc(trilb.StartupError, match="exists and is not a socket"),
        flatten_subgroups=True,
    ):
        async with trilb.open_balancer(config, log=CollectingLog()):
            pass  # pragma: no cover
    assert regular.read_text() == "keep me"

    config = with_admin(make_config([s1]), tmp_path / "missing" / "admin.sock")
    with pytest.RaisesGroup(
        pytest.RaisesExc(trilb.StartupError, match=r"admin\.socket: cannot listen on .*missing"),
        flatten_subgroups=True,
    ):
        async with trilb.open_balancer(config, log=CollectingLog()):
            pass  # pragma: no cover


async def test_a_replaced_socket_is_not_removed_on_stop(
    start_backend: StartBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A newer balancer that took the path over keeps its socket when the old one stops."""
    s1 = await start_backend()
    sock = tmp_path / "a.sock"
    config = with_admin(make_config([s1]), sock)
    old: trilb.Balancer = await nursery.start(
        functools.partial(trilb.serve, config, log=CollectingLog())
    )
    async with trilb.open_balancer(config, log=CollectingLog()):
        taken_over = os.stat(sock).st_ino
        await old.drain(0)
        assert os.stat(sock).st_ino == taken_over
        assert await ask(sock, "get weight backend/s1") == "100 (initial 100)"
    assert not await trio.Path(sock).exists()


async def test_a_client_that_does_not_read_is_closed(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    sock: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trilb.admin, "SEND_TIMEOUT", 0.1)
    s1 = await start_backend()
    await start(start_proxy, [s1], sock)
    client = await connect(sock)
    help_answer = (await client.command("help")).encode() + b"\n\n"
    # ~1 MB of answers asked for, none read: far more than the socket buffers hold
    await client.send(b"help\n" * 999)
    await trio.sleep(0.5)  # the server gives up on sending meanwhile
    received = await client.read_until_closed()
    assert len(received) < 999 * len(help_answer)
    assert b"Error: " not in received
    await client.aclose()
    assert await ask(sock, "get weight backend/s1") == "100 (initial 100)"


async def test_a_failing_command_is_an_error_answer_and_logged(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    sock: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: trilb.admin.AdminServer, command: object) -> list[str]:
        raise RuntimeError("a bug")

    s1 = await start_backend()
    proxy = await start(start_proxy, [s1], sock)
    monkeypatch.setattr(trilb.admin.AdminServer, "run", broken)
    client = await connect(sock)
    assert await client.command("show info") == "Error: Internal error: RuntimeError('a bug')."
    assert await client.command("foo") == "Error: Unknown command: foo. Try 'help'."
    await client.aclose()
    assert "admin socket: command b'show info\\n' failed: RuntimeError('a bug')" in "\n".join(
        proxy.log.messages
    )


# -- trilb ctl, in-process (the end-to-end tests run it as a subprocess) -------------------------


async def test_ctl(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    sock: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s1 = await start_backend()
    await start(start_proxy, [s1], sock)

    async def ctl(*args: str) -> tuple[int, str, str]:
        code = await trio.to_thread.run_sync(main, ["ctl", *args])
        out, err = capsys.readouterr()
        return code, out, err

    assert await ctl("--socket", str(sock), "get", "weight", "backend/s1") == (
        0,
        "100 (initial 100)\n",
        "",
    )
    assert await ctl("--socket", str(sock), "set server backend/s1 weight 50%") == (
        0,
        "Server backend/s1 weight is now 50 (was 100).\n",
        "",
    )
    assert await ctl("--socket", str(sock), "foo") == (
        1,
        "",
        "trilb: error: Unknown command: foo. Try 'help'.\n",
    )
    code, out, err = await ctl("--socket", str(tmp_path / "none.sock"), "help")
    assert (code, out) == (1, "")
    assert err.startswith(f"trilb: error: cannot reach the admin socket {tmp_path}/none.sock: ")

    monkeypatch.setattr(trilb.admin, "MAX_CLIENTS", 0)  # busy: the reason comes through
    assert await ctl("--socket", str(sock), "help") == (
        1,
        "",
        "trilb: error: Too many admin connections; try again later.\n",
    )

    config = tmp_path / "trilb.toml"
    config.write_text(
        f'[admin]\nsocket = "{sock}"\n\n[frontends.web]\nbind = "127.0.0.1:1"\n'
        'default_backend = "app"\n\n[backends.app]\n'
        'servers = [{ name = "b1", address = "127.0.0.1:2" }]\n'
    )
    monkeypatch.setattr(trilb.ctl, "DEFAULT_SOCKET", str(tmp_path / "default.sock"))
    code, _, err = await ctl("-c", str(config), "help")
    assert "Too many admin connections" in err  # the config's socket was used
    code, _, err = await ctl("help")
    assert f"cannot reach the admin socket {tmp_path}/default.sock" in err


async def test_ctl_timeout_and_bad_commands(tmp_path: Path) -> None:
    path = str(tmp_path / "mute.sock")
    with trio.socket.socket(trio.socket.AF_UNIX) as mute:  # listens, never answers
        await mute.bind(path)
        mute.listen()
        with pytest.raises(CtlError, match=r"no answer from the admin socket .* within 0\.2s"):
            await trio.to_thread.run_sync(
                functools.partial(trilb.ctl.send_command, path, "help", timeout=0.2)
            )
    with pytest.raises(CtlError, match="a command is one line"):
        send_command(path, "help\nshow info")
