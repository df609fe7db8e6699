"""Hot reload in one process: ``await lb.reload(config)`` while real clients talk to real servers.

A reload must change nothing when the new configuration is invalid, keep the sockets of binds
that stay (nothing refused, the same port), open and close the others, send new requests to the
new servers and weights, let what is under way finish on the configuration it started with
(keep-alive connections are told ``Connection: close``; downloads and tunnels go on, bounded by
``timeout_drain``), and carry the servers' state over. The last test is the proof of the issue:
continuous load -- keep-alive and new connections and a long download -- through ten reloads
with changing servers and weights, and not one failed or truncated request.

Waits are on events (a backend's record of requests, log lines, bytes received), bounded by
``trio.fail_after``; a long download is paced by a gate the test opens, never by a sleep.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import attrs
import h11
import httpx
import pytest
import trio
import trustme
from conftest import (
    RECEIVE_SIZE,
    WAIT,
    Backend,
    BackendRequest,
    BackendResponse,
    CollectingLog,
    Handler,
    MisbehavingBackends,
    RawBackend,
    StartBackend,
    StartProxy,
    echo_handler,
    generated_chunks,
    generated_sha256,
    make_config,
)

import trilb
from trilb.systemd import Notifier

MiB = 1024 * 1024


# -- helpers ------------------------------------------------------------------------------------


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.body)
        return result

    @property
    def server(self) -> object:
        return self.json()["server"]


class Client:
    """A small h11 client over any trio stream (plain or TLS), to follow one connection's fate."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def get(self, path: str, *, close: bool = False) -> Reply:
        headers = [("Host", "localhost")] + ([("Connection", "close")] if close else [])
        request = h11.Request(method="GET", target=path, headers=headers)
        await self.stream.send_all(
            (self.conn.send(request) or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
        )
        status, fields, body = 0, {}, bytearray()
        with trio.fail_after(WAIT):
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(bytes(await self.stream.receive_some(RECEIVE_SIZE)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    fields = {n.decode().lower(): v.decode() for n, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise AssertionError(f"unexpected {event!r}")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Reply(status, fields, bytes(body))

    async def wait_closed(self) -> None:
        """The server closes the connection (bounded)."""
        with trio.fail_after(WAIT):
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError:
                return
        assert data == b""

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def connect(port: int) -> Client:
    return Client(await trio.open_tcp_stream("127.0.0.1", port))


async def get(port: int, path: str = "/") -> Reply:
    """One request on a connection of its own."""
    client = await connect(port)
    try:
        return await client.get(path, close=True)
    finally:
        await client.aclose()


def servers_config(
    servers: Sequence[Backend | RawBackend | trilb.Address],
    weights: Sequence[int] | None = None,
    **options: object,
) -> trilb.Config:
    return make_config(servers, weights=weights, **options)  # type: ignore[arg-type]


def with_global(config: trilb.Config, **options: object) -> trilb.Config:
    return attrs.evolve(config, global_=trilb.GlobalConfig(**options))  # type: ignore[arg-type]


def with_frontends(config: trilb.Config, *extra: trilb.FrontendConfig) -> trilb.Config:
    return attrs.evolve(config, frontends=[*config.frontends, *extra])


def extra_frontend(name: str, bind: str) -> trilb.FrontendConfig:
    return trilb.FrontendConfig(name=name, bind=bind, default_backend="backend")


async def wait_message(log: CollectingLog, pattern: str, start: int = 0) -> str:
    """The first message from index ``start`` on matching the regular expression ``pattern``."""
    with trio.fail_after(WAIT):
        while True:
            for line in log.messages[start:]:
                if re.search(pattern, line):
                    return line
            await log._changed.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def refused(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


class Gate:
    """Lets a backend's response go on one step at a time, when the test says so."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[None](math.inf)

    def open_once(self) -> None:
        self._send.send_nowait(None)

    async def wait(self) -> None:
        await self._receive.receive()


def gated_download(total: int, steps: int, gate: Gate) -> Callable[[], AsyncIterator[bytes]]:
    """A body of ``total`` generated bytes (see conftest.generated_chunks) sent in ``steps``
    parts; each part after the first waits for the gate."""
    pieces_per_step = max(1, total // RECEIVE_SIZE // steps)

    async def body() -> AsyncIterator[bytes]:
        index = 0
        async for piece in generated_chunks(total):
            if index and index % pieces_per_step == 0 and index // pieces_per_step < steps:
                await gate.wait()
            index += 1
            yield piece

    return body


def downloads(gate: Gate, total: int, steps: int) -> Callable[[str], Handler]:
    """A handler factory: ``/download`` gets the gated body, everything else the echo."""

    def handler(name: str) -> Handler:
        echo = echo_handler(name)

        async def handle(request: BackendRequest) -> BackendResponse:
            if request.target == "/download":
                return BackendResponse(
                    headers=[("Content-Length", str(total))],
                    body=gated_download(total, steps, gate),
                )
            return await echo(request)

        return handle

    return handler


@attrs.define
class Download:
    """A download through the proxy, read in a task: its hash, length and progress."""

    received: int = 0
    status: int = 0
    sha256: str = ""
    started: trio.Event = attrs.Factory(trio.Event)
    done: trio.Event = attrs.Factory(trio.Event)

    async def run(self, url: str) -> None:
        digest = hashlib.sha256()
        try:
            async with (
                httpx.AsyncClient(trust_env=False, timeout=WAIT * 3) as client,
                client.stream("GET", url) as response,
            ):
                self.status = response.status_code
                async for data in response.aiter_raw():
                    digest.update(data)
                    self.received += len(data)
                    self.started.set()
        finally:
            self.sha256 = digest.hexdigest()
            self.done.set()


# -- invalid configurations -----------------------------------------------------------------------


async def test_an_invalid_config_changes_nothing(
    start_backend: StartBackend, start_proxy: StartProxy, tmp_path: Path
) -> None:
    s1 = await start_backend(name="s1")
    s2 = await start_backend(name="s2")
    proxy = await start_proxy([s1])
    lb = proxy.lb
    addresses = dict(lb.addresses)
    running = lb.config

    # a certificate that can't be read (after the backends resolved): a ConfigError, each
    # problem logged with its key path
    tls = trilb.TLSConfig(certificates=[str(tmp_path / "missing.pem")])
    broken = servers_config([s2])
    broken = attrs.evolve(broken, frontends=[attrs.evolve(broken.frontends[0], tls=tls)])
    mark = len(proxy.log.messages)
    with pytest.raises(trilb.ConfigError) as info:
        await lb.reload(broken)
    assert info.value.problems[0].key_path.startswith("frontends.frontend.tls")
    await wait_message(proxy.log, r"reload failed \(1 error\); the running configuration", mark)
    await wait_message(proxy.log, r"reload: frontends\.frontend\.tls.*missing\.pem", mark)
    assert lb.config is running
    assert lb.addresses == addresses
    assert (await get(proxy.port)).server == "s1"

    # a port in use: a StartupError, and the listeners the attempt opened are closed again
    # (the test's file-descriptor check says so)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        in_use = with_frontends(
            servers_config([s2]),
            extra_frontend("fresh", "127.0.0.1:0"),
            extra_frontend("busy", f"127.0.0.1:{port}"),
        )
        with pytest.raises(trilb.StartupError, match=rf"frontends\.busy\.bind\[0\].*{port}"):
            await lb.reload(in_use)
    assert lb.config is running
    assert lb.addresses == addresses
    # an error page that can't be read (a config built in code is not checked for files)
    pages = {503: str(tmp_path / "missing.html")}
    no_page = servers_config([s2])
    no_page = attrs.evolve(
        no_page, frontends=[attrs.evolve(no_page.frontends[0], error_pages=pages)]
    )
    with pytest.raises(trilb.ConfigError, match=r"frontends\.frontend\.error_pages: cannot read"):
        await lb.reload(no_page)
    for _ in range(3):
        assert (await get(proxy.port)).server == "s1"
    assert [s.backend + "/" + s.server for s in lb.servers_state()] == ["backend/s1"]


async def test_reload_config_file_without_a_file(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy([await start_backend()])
    with pytest.raises(trilb.StartupError, match="not started from a config file"):
        await proxy.lb.reload_config_file()


async def test_the_admin_reload_command_needs_a_config_file(
    start_backend: StartBackend, start_proxy: StartProxy, tmp_path: Path
) -> None:
    sock = tmp_path / "admin.sock"
    config = attrs.evolve(
        servers_config([await start_backend()]), admin=trilb.AdminConfig(socket=str(sock))
    )
    await start_proxy(config=config)
    stream = await trio.open_unix_socket(str(sock))
    try:
        await stream.send_all(b"reload\n")
        answer = b""
        with trio.fail_after(WAIT):
            while not answer.endswith(b"\n\n"):
                answer += await stream.receive_some(RECEIVE_SIZE)
    finally:
        await stream.aclose()
    assert answer == (
        b"Error: Reload failed: this balancer was not started from a config file: the program "
        b"that runs it reloads it with lb.reload(config)\n\n"
    )


async def serve_from_file(
    start_backend: StartBackend, nursery: trio.Nursery, tmp_path: Path, log: CollectingLog
) -> tuple[trilb.Balancer, Path, str]:
    """A balancer started from a config file (frontend web -> backend app, server s1), as
    ``trilb serve`` starts it: the balancer, the file and its text."""
    s1 = await start_backend(name="s1")
    path = tmp_path / "trilb.toml"
    good = f"""
        [frontends.web]
        bind = "127.0.0.1:0"
        default_backend = "app"

        [backends.app]
        servers = [{{ name = "s1", address = "127.0.0.1:{s1.port}" }}]
    """
    path.write_text(good)
    lb: trilb.Balancer = await nursery.start(
        functools.partial(trilb.serve, trilb.load_config(path), log=log, config_path=str(path))
    )
    return lb, path, good


async def test_reload_config_file_reports_every_problem(
    start_backend: StartBackend, nursery: trio.Nursery, tmp_path: Path
) -> None:
    log = CollectingLog()
    lb, path, good = await serve_from_file(start_backend, nursery, tmp_path, log)
    path.write_text(good.replace('"app"', '"nope"', 1) + "\n[global]\nmax_conections = 3\n")
    with pytest.raises(trilb.ConfigError) as info:
        await lb.reload_config_file()
    assert len(info.value.problems) == 2
    await wait_message(log, r"reload failed \(2 errors\)")
    await wait_message(log, r"reload: global\.max_conections: unknown key")
    await wait_message(log, r"reload: frontends\.web\.default_backend")
    assert (await get(lb.addresses["web"][0].port)).server == "s1"
    await lb.drain(grace=1)


async def test_systemd_hears_of_every_reload_good_or_bad(
    start_backend: StartBackend, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """RELOADING=1 then READY=1 around a reload however it is asked for (SIGHUP, ``trilb ctl
    reload``, lb.reload) and however it ends: systemd's notify-reload waits for both."""
    lb, path, _ = await serve_from_file(start_backend, nursery, tmp_path, CollectingLog())
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.setblocking(False)
        lb.notifier = Notifier(str(tmp_path / "notify"))

        def heard() -> list[bytes]:
            messages = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    messages.append(sock.recv(4096).split(b"\n")[0])
            return messages

        await lb.reload_config_file()
        assert heard() == [b"RELOADING=1", b"READY=1"]
        await lb.reload(trilb.load_config(path))
        assert heard() == [b"RELOADING=1", b"READY=1"]
        path.write_text("nonsense")
        with pytest.raises(trilb.ConfigError):
            await lb.reload_config_file()
        assert heard() == [b"RELOADING=1", b"READY=1"]
    await lb.drain(grace=1)


# -- listeners -------------------------------------------------------------------------------------


async def test_a_kept_bind_keeps_its_socket_and_refuses_nothing(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    """A client connecting in a tight loop through five reloads: every connection served."""
    servers = [await start_backend(name=f"s{i}") for i in range(1, 4)]
    proxy = await start_proxy(servers[:1])
    lb = proxy.lb
    addresses = dict(lb.addresses)
    served = 0
    failures: list[str] = []
    progress = trio.Event()
    done = False

    async def hammer() -> None:
        nonlocal served, progress
        while not done:
            try:
                reply = await get(proxy.port)
                if reply.status != 200:
                    failures.append(f"status {reply.status}")
            except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                failures.append(repr(exc))
            served += 1
            progress.set()
            progress = trio.Event()

    async def wait_served(count: int) -> None:
        with trio.fail_after(WAIT):
            while served < count:
                await progress.wait()

    async with trio.open_nursery() as clients:
        clients.start_soon(hammer)
        clients.start_soon(hammer)
        for round_ in range(5):
            await wait_served(served + 10)
            await lb.reload(servers_config(servers[: 1 + round_ % 3]))
            assert lb.addresses == addresses
        await wait_served(served + 10)
        done = True
    assert failures == []
    assert served >= 60


async def test_new_binds_open_and_removed_binds_close(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    s1 = await start_backend(name="s1")
    base = servers_config([s1])
    # (a port of its own: two port-0 binds are the same address, and would keep the socket)
    old_port = free_port()
    old = extra_frontend("old", f"127.0.0.1:{old_port}")
    proxy = await start_proxy(config=with_frontends(base, old))
    lb = proxy.lb
    assert (await get(old_port)).server == "s1"

    await lb.reload(with_frontends(base, extra_frontend("new", "127.0.0.1:0")))
    assert set(lb.addresses) == {"frontend", "new"}
    assert await refused(old_port)
    assert (await get(lb.addresses["new"][0].port)).server == "s1"
    assert (await get(proxy.port)).server == "s1"
    await wait_message(proxy.log, r"reload: frontend new now also listening on 127\.0\.0\.1:")
    await wait_message(proxy.log, rf"reload: frontend old no longer listening on .*:{old_port}")


# -- new requests, new configuration ------------------------------------------------------------


async def test_new_requests_use_the_new_servers_and_weights(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    s1, s2, s3 = [await start_backend(name=f"s{i}") for i in range(1, 4)]
    proxy = await start_proxy([s1, s2], weights=[1, 3])
    lb = proxy.lb

    async def spread(count: int) -> dict[object, int]:
        counts: dict[object, int] = {}
        for _ in range(count):
            server = (await get(proxy.port)).server
            counts[server] = counts.get(server, 0) + 1
        return counts

    assert await spread(8) == {"s1": 2, "s2": 6}  # smooth round-robin: exact over each cycle
    await lb.reload(servers_config([s1, s2], weights=[3, 1]))
    assert await spread(8) == {"s1": 6, "s2": 2}
    assert lb.statistics().backend("backend").server("s1").weight == 3
    await lb.reload(servers_config([s3, s2], weights=[1, 1]))
    assert await spread(4) == {"s3": 2, "s2": 2}
    assert [s.server for s in lb.servers_state()] == ["s3", "s2"]
    # a weight the operator set survives a reload whose file did not change it
    lb.set_weight("backend", "s2", 3)
    mark = len(proxy.log.messages)
    await lb.reload(with_global(servers_config([s3, s2], weights=[1, 1]), pidfile="/x.pid"))
    assert await spread(4) == {"s3": 1, "s2": 3}
    await wait_message(proxy.log, r"reload: global\.pidfile changed: that needs a restart", mark)
    await lb.reload(servers_config([s3, s2], weights=[1, 2]))
    assert await spread(3) == {"s3": 1, "s2": 2}


async def test_a_keep_alive_connection_is_told_to_close_after_a_reload(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    s1 = await start_backend(name="s1")
    s2 = await start_backend(name="s2")
    proxy = await start_proxy([s1])
    client = await connect(proxy.port)
    try:
        first = await client.get("/1")
        assert (first.server, first.headers.get("connection")) == ("s1", None)
        await proxy.lb.reload(servers_config([s2]))
        assert [(s.frontend, s.requests) for s in proxy.lb.sessions()] == [("frontend", 1)]
        # the old connection's next request: the configuration it started with, and "close"
        second = await client.get("/2")
        assert (second.server, second.headers.get("connection")) == ("s1", "close")
        await client.wait_closed()
    finally:
        await client.aclose()
    assert (await get(proxy.port, "/3")).server == "s2"
    # an idle keep-alive connection is not cut by the reload: its next request is served
    idle = await connect(proxy.port)
    try:
        assert (await idle.get("/4")).server == "s2"
        await proxy.lb.reload(servers_config([s1]))
        reply = await idle.get("/5")
        assert (reply.status, reply.server, reply.headers["connection"]) == (200, "s2", "close")
    finally:
        await idle.aclose()


# -- what is under way finishes --------------------------------------------------------------------


async def test_a_long_download_survives_reloads(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    total, steps = 8 * MiB, 4
    gate = Gate()
    handler = downloads(gate, total, steps)
    s1 = await start_backend(handler("s1"), name="s1", keep_body=False)
    s2 = await start_backend(handler("s2"), name="s2", keep_body=False)
    proxy = await start_proxy([s1])
    download = Download()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(download.run, f"{proxy.url}/download")
        with trio.fail_after(WAIT):
            await download.started.wait()
        for round_ in range(steps - 1):
            # s1, which is sending the download, leaves and comes back
            await proxy.lb.reload(servers_config([s2] if round_ % 2 == 0 else [s1, s2]))
            assert (await get(proxy.port)).status == 200
            gate.open_once()
    assert (download.status, download.received) == (200, total)
    assert download.sha256 == generated_sha256(total)


async def echo_server(misbehaving: MisbehavingBackends, name: str) -> RawBackend:
    """A TCP server that answers every line with ``NAME: line``."""

    async def handler(backend: RawBackend, stream: trio.SocketStream) -> None:
        buffer = b""
        while data := await stream.receive_some(RECEIVE_SIZE):
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                await stream.send_all(name.encode() + b": " + line + b"\n")

    return await misbehaving.start(name, handler)


def tcp_config(server: RawBackend, *, timeout_drain: float = 30.0) -> trilb.Config:
    return trilb.Config(
        frontends=[
            trilb.FrontendConfig(
                name="frontend", bind="127.0.0.1:0", mode="tcp", default_backend="backend"
            )
        ],
        backends=[
            trilb.BackendConfig(
                name="backend",
                mode="tcp",
                servers=[trilb.ServerConfig(name="s1", address=server.address)],
            )
        ],
        log=trilb.LogConfig(target="none"),
        global_=trilb.GlobalConfig(timeout_drain=timeout_drain),
    )


async def line_exchange(stream: trio.abc.Stream, line: bytes) -> bytes:
    await stream.send_all(line + b"\n")
    received = b""
    with trio.fail_after(WAIT):
        while not received.endswith(b"\n"):
            data = await stream.receive_some(RECEIVE_SIZE)
            assert data, f"closed after {received!r}"
            received += data
    return received.rstrip(b"\n")


async def test_a_tcp_tunnel_survives_a_reload_and_timeout_drain_ends_it(
    misbehaving: MisbehavingBackends, start_proxy: StartProxy
) -> None:
    one = await echo_server(misbehaving, "one")
    two = await echo_server(misbehaving, "two")
    proxy = await start_proxy(config=tcp_config(one))
    port = proxy.lb.addresses["frontend"][0].port
    tunnel = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        assert await line_exchange(tunnel, b"a") == b"one: a"
        await proxy.lb.reload(tcp_config(two))
        assert await line_exchange(tunnel, b"b") == b"one: b"  # the tunnel goes on
        fresh = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            assert await line_exchange(fresh, b"c") == b"two: c"
            # a reload with timeout_drain = 0.2s: the first tunnel has been retiring for a
            # while, the second one is now cut 0.2s after this reload
            mark = len(proxy.log.messages)
            await proxy.lb.reload(tcp_config(one, timeout_drain=0.2))
            assert await line_exchange(fresh, b"d") == b"two: d"
            await Client(fresh).wait_closed()
            await wait_message(
                proxy.log, r"reload: timeout_drain \(0\.2s\) is over: closing the 1 conn", mark
            )
        finally:
            await fresh.aclose()
        assert await line_exchange(tunnel, b"e") == b"one: e"  # its bound is 30s
        # a drain ends the retiring configurations' connections too
        assert [s.id for s in proxy.lb.sessions()] == [1]
        with trio.fail_after(WAIT):
            await proxy.lb.drain(grace=0.2)
        await Client(tunnel).wait_closed()
        with pytest.raises(trilb.StartupError, match="not running or is draining"):
            await proxy.lb.reload(tcp_config(two))
    finally:
        await tunnel.aclose()
    stats = proxy.lb.statistics().frontend("frontend").traffic
    assert stats.total_connections == 2


# -- state carried over ---------------------------------------------------------------------------


@attrs.define
class Health:
    """A /health page that can be switched; everything else gets the echo."""

    name: str
    healthy: bool = True

    async def __call__(self, request: BackendRequest) -> BackendResponse:
        if request.target == "/health":
            return BackendResponse(status=200 if self.healthy else 503, body=b"")
        return await echo_handler(self.name)(request)


CHECK = trilb.HealthCheck(type="http", path="/health", interval=0.05, timeout=0.5, fall=1, rise=3)


def with_checks(config: trilb.Config, check: trilb.HealthCheck = CHECK) -> trilb.Config:
    return attrs.evolve(
        config, backends=[attrs.evolve(b, health_check=check) for b in config.backends]
    )


async def test_health_state_and_paused_checks_carry_over(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    s1 = await start_backend(Health("s1"), name="s1")
    health = Health("s2", healthy=False)
    s2 = await start_backend(health, name="s2")
    s3 = await start_backend(Health("s3"), name="s3")
    proxy = await start_proxy(config=with_checks(servers_config([s1, s2])))
    lb, log = proxy.lb, proxy.log
    await wait_message(log, r"server backend/s2 is DOWN")
    lb.disable_health("backend", "s1")

    # a new server first (the others move), s2's weight changes
    await lb.reload(with_checks(servers_config([s3, s1, s2], weights=[100, 100, 50])))
    mark = len(log.messages)
    state = {s.server: s for s in lb.servers_state()}
    assert (state["s2"].state, state["s2"].weight) == ("DOWN", 50)
    assert state["s2"].check_status.startswith("Layer7 wrong status, code: 503")
    assert (state["s1"].state, state["s1"].health_checks) == ("UP", "disabled")
    assert (state["s3"].state, state["s3"].health_checks) == ("UP", "enabled")
    # DOWN it stays, checked by the new configuration's checks, until rise (3) good checks
    checks_before = len([r for r in s2.requests if r.target == "/health"])
    await s2.wait_for(
        lambda: len([r for r in s2.requests if r.target == "/health"]) >= checks_before + 2
    )
    assert {(await get(proxy.port)).server for _ in range(6)} == {"s1", "s3"}
    health.healthy = True
    await wait_message(log, r"server backend/s2 is UP", mark)
    assert lb.servers_state()[2].state == "UP"


async def test_stick_table_and_counters_carry_over(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    s1, s2, s3 = [await start_backend(name=f"s{i}") for i in range(1, 4)]

    def sticky(servers: Sequence[Backend]) -> trilb.Config:
        config = servers_config(servers)
        backend = attrs.evolve(config.backends[0], stick="source")
        return attrs.evolve(config, backends=[backend])

    proxy = await start_proxy(config=sticky([s1, s2]))
    lb = proxy.lb
    first = (await get(proxy.port)).server
    for _ in range(2):
        assert (await get(proxy.port)).server == first
    await lb.reload(sticky([s3, s2, s1]))  # a new server first: the others move
    for _ in range(3):
        assert (await get(proxy.port)).server == first
    stats = lb.statistics()
    assert stats.frontend("frontend").traffic.total_requests == 6
    assert stats.frontend("frontend").traffic.total_connections == 6
    backend = stats.backend("backend")
    assert backend.traffic.total_requests == 6
    assert backend.server(str(first)).traffic.total_requests == 6
    assert backend.server("s3").traffic.total_requests == 0


# -- certificates ---------------------------------------------------------------------------------


def issue(ca: trustme.CA, path: Path) -> bytes:
    """A new certificate for localhost, written to ``path``; its DER form."""
    cert = ca.issue_cert("localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


async def tls_connect(port: int, ca: trustme.CA) -> tuple[Client, bytes]:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    stream = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), context, server_hostname="localhost"
    )
    with trio.fail_after(WAIT):
        await stream.do_handshake()
    der = stream.getpeercert(binary_form=True)
    assert der is not None
    return Client(stream), der


async def test_a_reload_reads_certificates_again(
    start_backend: StartBackend, start_proxy: StartProxy, tmp_path: Path
) -> None:
    ca = trustme.CA()
    pem = tmp_path / "site.pem"
    old_cert = issue(ca, pem)
    s1 = await start_backend(name="s1")
    config = servers_config([s1])
    tls = trilb.TLSConfig(certificates=[str(pem)])
    config = attrs.evolve(config, frontends=[attrs.evolve(config.frontends[0], tls=tls)])
    proxy = await start_proxy(config=config)
    old, der = await tls_connect(proxy.port, ca)
    try:
        assert der == old_cert
        assert (await old.get("/1")).server == "s1"
        new_cert = issue(ca, pem)  # renewed in place, as certbot does
        await proxy.lb.reload(config)  # the very same configuration
        fresh, der = await tls_connect(proxy.port, ca)
        try:
            assert der == new_cert
            assert (await fresh.get("/2")).server == "s1"
        finally:
            await fresh.aclose()
        reply = await old.get("/3")  # the old connection goes on, and is told to close
        assert (reply.server, reply.headers["connection"]) == ("s1", "close")
    finally:
        await old.aclose()


# -- the proof: continuous load through ten reloads ------------------------------------------------

#: the servers (of s1..s4) and weights of each configuration: the first, then ten reloads
PLANS: list[dict[str, int]] = [
    {"s1": 100, "s2": 100},
    {"s1": 50, "s2": 150, "s3": 100},
    {"s2": 100, "s3": 10},
    {"s3": 100, "s4": 100},
    {"s1": 1, "s3": 200, "s4": 50},
    {"s4": 100},
    {"s1": 100, "s2": 100, "s3": 100, "s4": 100},
    {"s2": 30, "s4": 70},
    {"s1": 256, "s2": 1},
    {"s3": 100, "s1": 100},
    {"s1": 100, "s2": 20, "s4": 100},
]


@attrs.define
class Load:
    """What the clients did: requests done, failures (with what went wrong), and progress."""

    done: int = 0
    keep_alive: int = 0
    new_connections: int = 0
    failures: list[str] = attrs.Factory(list)
    #: reloads started and finished so far (a request that saw no reload start must have gone
    #: to the servers of the configuration of its time)
    reloads_started: int = 0
    reloads_done: int = 0
    stop: bool = False
    _progress: trio.Event = attrs.Factory(trio.Event)

    def count(self) -> None:
        self.done += 1
        self._progress.set()
        self._progress = trio.Event()

    async def wait_done(self, count: int) -> None:
        with trio.fail_after(WAIT):
            while self.done < count:
                await self._progress.wait()

    def check(self, reply: Reply | httpx.Response, path: str) -> None:
        """A whole, right answer: 200, and the echo of this very request."""
        body = reply.body if isinstance(reply, Reply) else reply.content
        status = reply.status if isinstance(reply, Reply) else reply.status_code
        if status != 200:
            self.failures.append(f"{path}: status {status}: {body[:200]!r}")
            return
        try:
            payload = json.loads(body)
        except ValueError:
            self.failures.append(f"{path}: truncated or broken body {body[:200]!r}")
            return
        if payload["target"] != path:
            self.failures.append(f"{path}: the answer to {payload['target']}")


async def keep_alive_client(load: Load, url: str, worker: int) -> None:
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=WAIT) as client:
        number = 0
        while not load.stop:
            number += 1
            path = f"/ka/{worker}/{number}"
            try:
                load.check(await client.get(path), path)
            except httpx.HTTPError as exc:
                load.failures.append(f"{path}: {exc!r}")
            load.keep_alive += 1
            load.count()


async def new_connection_client(load: Load, port: int, worker: int) -> None:
    number = 0
    while not load.stop:
        number += 1
        path = f"/nc/{worker}/{number}"
        generation = load.reloads_done
        try:
            reply = await get(port, path)
        except (OSError, trio.BrokenResourceError, h11.ProtocolError, EOFError) as exc:
            load.failures.append(f"{path}: {exc!r}")
        else:
            load.check(reply, path)
            if reply.status == 200 and load.reloads_started == generation:
                # no reload began while it ran: the servers of that configuration answered
                server = reply.server
                if server not in PLANS[generation]:
                    load.failures.append(f"{path}: {server} is not in configuration {generation}")
        load.new_connections += 1
        load.count()


async def test_zero_failed_requests_through_ten_reloads_under_load(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    total = 16 * MiB
    gate = Gate()
    handler = downloads(gate, total, len(PLANS))
    backends = {
        name: await start_backend(handler(name), name=name, keep_body=False)
        for name in ("s1", "s2", "s3", "s4")
    }

    def config(plan: dict[str, int]) -> trilb.Config:
        # timeout_drain well beyond the test's length: nothing is cut on a slow machine
        return with_global(
            servers_config([backends[n] for n in plan], weights=list(plan.values())),
            timeout_drain=300.0,
        )

    proxy = await start_proxy(config=config(PLANS[0]))
    lb = proxy.lb
    load = Load()
    download = Download()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(download.run, f"{proxy.url}/download")
        for worker in range(4):
            nursery.start_soon(keep_alive_client, load, proxy.url, worker)
        for worker in range(3):
            nursery.start_soon(new_connection_client, load, proxy.port, worker)
        with trio.fail_after(WAIT):
            await download.started.wait()
        for plan in PLANS[1:]:
            await load.wait_done(load.done + 100)
            load.reloads_started += 1
            await lb.reload(config(plan))
            load.reloads_done += 1
            assert [s.server for s in lb.servers_state()] == list(plan)
            assert [s.weight for s in lb.servers_state()] == list(plan.values())
            gate.open_once()  # the download's next part
        await load.wait_done(load.done + 100)
        with trio.fail_after(WAIT):
            await download.done.wait()
        load.stop = True
    print(
        f"\n{load.done} requests ({load.keep_alive} keep-alive, {load.new_connections} on new "
        f"connections) and a {total // MiB} MiB download through {len(PLANS) - 1} reloads: "
        f"{len(load.failures)} failures"
    )
    assert load.failures == []
    assert (download.status, download.received) == (200, total)
    assert download.sha256 == generated_sha256(total)
    assert load.done >= 100 * len(PLANS)
    assert load.keep_alive > 0
    assert load.new_connections > 0
    # every request was counted, across the configurations: the clients' and the download
    traffic = lb.statistics().frontend("frontend").traffic
    assert traffic.total_requests == load.done + 1
    assert not [m for m in proxy.log.messages if m.startswith("trilb error")]
