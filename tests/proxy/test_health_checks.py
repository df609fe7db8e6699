"""Active health checks against real servers: servers go DOWN and come back UP, traffic follows.

Intervals are short (50 ms) so that a test takes a fraction of a second; every wait is on a log
line or on a backend's record of requests, bounded by ``trio.fail_after`` -- never a sleep.
A server's state is observed through the balancer's log lines (HAProxy's wording) and through
where the traffic goes.
"""

from __future__ import annotations

import functools
import re
import ssl
from collections.abc import Sequence

import attrs
import h11
import httpx
import pytest
import trio
import trustme
from conftest import (
    WAIT,
    Backend,
    BackendRequest,
    BackendResponse,
    CollectingLog,
    MisbehavingBackends,
    Proxy,
    StartBackend,
    StartProxy,
    echo_handler,
    make_config,
)

import trilb
from trilb.config.model import HealthCheckType

CHECK = trilb.HealthCheck(type="http", path="/health", interval=0.05, timeout=0.5, fall=2, rise=2)


def with_checks(
    servers: Sequence[Backend | trilb.Address | trilb.ServerConfig],
    check: trilb.HealthCheck,
    **options: object,
) -> trilb.Config:
    config = make_config(servers, **options)  # type: ignore[arg-type]
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


def traffic(backend: Backend) -> list[BackendRequest]:
    """The requests that were not health checks."""
    return [r for r in backend.requests if r.target != "/health"]


def checks(backend: Backend) -> list[BackendRequest]:
    return [r for r in backend.requests if r.target == "/health"]


@attrs.define
class Health:
    """A switchable /health page; every other path gets the echo handler's answer."""

    name: str
    status: int = 200
    body: bytes = b"ok"
    #: statuses actually answered to checks, in order
    answered: list[int] = attrs.Factory(list)

    async def __call__(self, request: BackendRequest) -> BackendResponse:
        if request.target == "/health":
            self.answered.append(self.status)
            return BackendResponse(status=self.status, body=self.body)
        return await echo_handler(self.name)(request)


def client(proxy: Proxy) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=WAIT)


# -- HTTP checks ----------------------------------------------------------------------------------


async def test_http_check_takes_a_failing_server_out_and_back(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    health = Health("s1")
    s1 = await start_backend(health, name="s1")
    s2 = await start_backend(Health("s2"), name="s2")
    proxy = await start_proxy(config=with_checks([s1, s2], CHECK))
    log = proxy.log
    # the first passed check confirms s1 as UP: from then on it takes `fall` failures
    await wait_message(log, r"health check for server backend/s1 succeeded.*status: 2/2 UP")

    health.status = 500
    mark = len(log.messages)
    line = await wait_message(log, r"server backend/s1 is DOWN", mark)
    assert re.fullmatch(
        r"trilb warning: server backend/s1 is DOWN, reason: Layer7 wrong status, code: 500, "
        r"check duration: \d+ms\. 1 active and 0 backup servers left\.",
        line,
    ), line
    assert health.answered.count(500) == CHECK.fall  # after exactly `fall` failed checks
    async with client(proxy) as http:
        for _ in range(6):
            assert (await http.get("/app")).json()["server"] == "s2"
    assert traffic(s1) == []

    health.status = 200
    mark = len(log.messages)
    line = await wait_message(log, r"server backend/s1 is UP", mark)
    assert re.fullmatch(
        r"trilb info: server backend/s1 is UP, reason: Layer7 check passed, code: 200, "
        r"check duration: \d+ms\. 2 active and 0 backup servers online\.",
        line,
    ), line
    assert health.answered[-CHECK.rise :] == [200] * CHECK.rise
    async with client(proxy) as http:
        servers = [(await http.get("/app")).json()["server"] for _ in range(4)]
    assert set(servers) == {"s1", "s2"}

    request = checks(s1)[0]
    assert (request.method, request.http_version) == ("GET", "1.1")
    assert request.header("Host") == [str(s1.address)]
    assert request.header("User-Agent") == ["trilb-check"]
    assert request.header("Connection") == ["close"]


async def test_http_check_method_and_host(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    s1 = await start_backend(Health("s1"), name="s1")
    check = attrs.evolve(CHECK, method="HEAD", host="health.internal")
    await start_proxy(config=with_checks([s1], check))
    await s1.wait_requests(1)
    assert s1.requests[0].method == "HEAD"
    assert s1.requests[0].header("Host") == ["health.internal"]


@pytest.mark.parametrize(
    ("check", "body", "info"),
    [
        (attrs.evolve(CHECK, expect_body="healthy"), b"sick", "body does not contain 'healthy'"),
        (
            attrs.evolve(CHECK, expect_body_regex=r"^up( \d+)?$"),
            b"up and down",
            "body does not match '^up( \\\\d+)?$'",
        ),
    ],
)
async def test_body_mismatch_is_a_response_error(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    check: trilb.HealthCheck,
    body: bytes,
    info: str,
) -> None:
    s1 = await start_backend(Health("s1", body=body), name="s1")
    proxy = await start_proxy(config=with_checks([s1], check))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    assert f'reason: Layer7 response error, code: 200, info: "{info}", check duration: ' in line, (
        line
    )
    assert line.endswith("0 active and 0 backup servers left.")
    await wait_message(proxy.log, r"trilb error: backend backend has no server available!")
    async with client(proxy) as http:
        assert (await http.get("/app")).status_code == 503


@pytest.mark.parametrize(
    ("check", "status", "body"),
    [
        (attrs.evolve(CHECK, expect_status=((200, 200), (302, 302))), 302, b""),
        (attrs.evolve(CHECK, expect_body="healthy"), 200, b"I am healthy"),
        (attrs.evolve(CHECK, expect_body_regex=r"^up( \d+)?$"), 200, b"up 42"),
        # only the first 64 KiB of a body are read: the match must be there
        (attrs.evolve(CHECK, expect_body="healthy"), 200, b"healthy" + b"x" * 200_000),
    ],
)
async def test_expected_answers_keep_the_server_up(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    check: trilb.HealthCheck,
    status: int,
    body: bytes,
) -> None:
    health = Health("s1", status=status, body=body)
    s1 = await start_backend(health, name="s1")
    proxy = await start_proxy(config=with_checks([s1], check))
    await s1.wait_for(lambda: len(health.answered) >= 3)
    assert not [m for m in proxy.log.messages if "is DOWN" in m or " failed" in m]
    assert "succeeded, reason: Layer7 check passed" in "\n".join(proxy.log.messages)


async def test_a_body_past_the_limit_does_not_count(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    s1 = await start_backend(Health("s1", body=b"x" * 100_000 + b"healthy"), name="s1")
    proxy = await start_proxy(config=with_checks([s1], attrs.evolve(CHECK, expect_body="healthy")))
    await wait_message(proxy.log, r"server backend/s1 is DOWN, reason: Layer7 response error")


@pytest.mark.parametrize(
    ("kind", "info"),
    [
        ("garbage", 'info: "[^"]+"'),  # not HTTP: h11's complaint
        ("close_without_answer", 'info: "connection closed without a response"'),
    ],
)
async def test_not_http_is_an_invalid_response(
    misbehaving: MisbehavingBackends, start_proxy: StartProxy, kind: str, info: str
) -> None:
    address = await getattr(misbehaving, kind)()
    proxy = await start_proxy(config=with_checks([address], CHECK))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    assert re.search(rf"reason: Layer7 invalid response, {info}, check duration", line), line


# -- TCP checks -----------------------------------------------------------------------------------


async def test_tcp_check_closed_port_goes_down_and_all_down_is_503(
    start_backend: StartBackend, start_proxy: StartProxy, misbehaving: MisbehavingBackends
) -> None:
    check = attrs.evolve(CHECK, type="tcp")
    alive = await start_backend(name="s1")
    dead = misbehaving.refuse()
    proxy = await start_proxy(config=with_checks([alive, dead], check))
    line = await wait_message(proxy.log, r"server backend/s2 is DOWN")
    assert re.fullmatch(
        r"trilb warning: server backend/s2 is DOWN, reason: Layer4 connection problem, "
        r'info: "Connection refused", check duration: \d+ms\. 1 active and 0 backup servers '
        r"left\.",
        line,
    ), line
    async with client(proxy) as http:
        for _ in range(4):
            assert (await http.get("/")).json()["server"] == "s1"
    assert proxy.lb.statistics().backend("backend").server("s2").traffic.total_requests == 0
    assert alive.connections >= 1  # the checks of s1 (which passed: no line about s1)
    assert not [m for m in proxy.log.messages if "backend/s1 is" in m]

    all_dead = await start_proxy(config=with_checks([misbehaving.refuse()] * 2, check))
    await wait_message(all_dead.log, r"backend backend has no server available!")
    assert len([m for m in all_dead.log.messages if "is DOWN" in m]) == 2
    async with client(all_dead) as http:
        assert (await http.get("/")).status_code == 503


async def test_check_port_and_address_override(
    start_backend: StartBackend, start_proxy: StartProxy, misbehaving: MisbehavingBackends
) -> None:
    """The traffic address is dead, but the check goes elsewhere: the server stays UP."""
    s1 = await start_backend(Health("s1"), name="s1")
    dead = misbehaving.refuse()
    # (nothing listens on 127.0.0.2: the backend is bound to 127.0.0.1 only)
    elsewhere = trilb.Address(host="127.0.0.2", port=s1.port)
    cases: list[tuple[trilb.Address, dict[str, object]]] = [
        (dead, {"port": s1.port}),
        (dead, {"address": "127.0.0.1", "port": s1.port}),
        (elsewhere, {"address": "127.0.0.1"}),  # the server's port, at the check address
    ]
    for address, override in cases:
        server = trilb.ServerConfig(name="s1", address=address)
        check = attrs.evolve(CHECK, **override)  # type: ignore[arg-type]
        proxy = await start_proxy(config=with_checks([server], check))
        await wait_message(proxy.log, r"backend/s1 succeeded, reason: Layer7 check passed")
        assert not [m for m in proxy.log.messages if "is DOWN" in m]


async def test_unresolvable_check_address(
    start_proxy: StartProxy, start_backend: StartBackend
) -> None:
    s1 = await start_backend(name="s1")
    check = attrs.evolve(CHECK, type="tcp", address="no-such-host.invalid")
    proxy = await start_proxy(config=with_checks([s1], check))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    assert "Layer4 connection problem, info: \"cannot resolve 'no-such-host.invalid'" in line


async def test_unix_server_needs_a_check_address_for_a_port(start_proxy: StartProxy) -> None:
    server = trilb.ServerConfig(name="s1", address="unix:/nonexistent/trilb.sock")
    proxy = await start_proxy(config=with_checks([server], attrs.evolve(CHECK, port=8080)))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    assert 'info: "a check port needs a check address for unix:/nonexistent/trilb.sock"' in line


# -- TLS checks -----------------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, str]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, str(path)


async def start_tls_backend(nursery: trio.Nursery, cert: trustme.LeafCert) -> trilb.Address:
    """An HTTPS server answering every request with 200 "tls ok"."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    async def handle(raw: trio.SocketStream) -> None:
        stream = trio.SSLStream(raw, context, server_side=True)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.EndOfMessage):
                    headers = [("Content-Length", "6")]
                    await stream.send_all(
                        (conn.send(h11.Response(status_code=200, headers=headers)) or b"")
                        + (conn.send(h11.Data(data=b"tls ok")) or b"")
                        + (conn.send(h11.EndOfMessage()) or b"")
                    )
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, h11.ProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return trilb.Address(host="127.0.0.1", port=listeners[0].socket.getsockname()[1])


@pytest.mark.parametrize(
    ("check_type", "verify", "passed"),
    [
        ("tls", True, "Layer6 check passed"),  # the server's own, verifying, context
        ("tls", False, "Layer6 check passed"),  # a server trilb speaks plain HTTP to
        ("http", True, "Layer7 check passed, code: 200"),  # HTTP over the server's TLS
    ],
)
async def test_tls_checks_pass(
    nursery: trio.Nursery,
    start_proxy: StartProxy,
    ca: tuple[trustme.CA, str],
    check_type: HealthCheckType,
    verify: bool,
    passed: str,
) -> None:
    authority, path = ca
    address = await start_tls_backend(nursery, authority.issue_cert("127.0.0.1"))
    tls = trilb.UpstreamTLS(ca=path) if verify else None
    server = trilb.ServerConfig(name="s1", address=address, tls=tls)
    proxy = await start_proxy(config=with_checks([server], attrs.evolve(CHECK, type=check_type)))
    await wait_message(proxy.log, rf"backend/s1 succeeded, reason: {passed}")


async def test_tls_check_against_plain_or_untrusted_server_is_down(
    nursery: trio.Nursery,
    start_backend: StartBackend,
    start_proxy: StartProxy,
    ca: tuple[trustme.CA, str],
) -> None:
    plain = await start_backend(name="s1")
    _, path = ca
    untrusted = await start_tls_backend(nursery, trustme.CA().issue_cert("127.0.0.1"))
    servers = [
        trilb.ServerConfig(name="s1", address=plain.address),
        trilb.ServerConfig(name="s2", address=untrusted, tls=trilb.UpstreamTLS(ca=path)),
    ]
    proxy = await start_proxy(config=with_checks(servers, attrs.evolve(CHECK, type="tls")))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    assert re.search(r'reason: Layer6 invalid response, info: "[^"]+", check duration', line)
    line = await wait_message(proxy.log, r"server backend/s2 is DOWN")
    assert 'Layer6 invalid response, info: "certificate verify failed' in line, line


# -- timeouts and errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check_type", "reason"), [("http", "Layer7 timeout"), ("tls", "Layer6 timeout")]
)
async def test_a_hanging_server_times_out(
    misbehaving: MisbehavingBackends,
    start_proxy: StartProxy,
    check_type: HealthCheckType,
    reason: str,
) -> None:
    address = await misbehaving.hang()
    check = attrs.evolve(CHECK, type=check_type, timeout=0.1)
    proxy = await start_proxy(config=with_checks([address], check))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    match = re.search(rf"reason: {reason}, check duration: (\d+)ms\.", line)
    assert match is not None, line
    assert 100 <= int(match.group(1)) < 1000


async def test_an_error_in_a_check_is_a_failure_logged_once(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    """A check that cannot even be sent (an invalid method: only possible from Python, the
    loader refuses it) fails with a reason; the balancer goes on."""
    s1 = await start_backend(name="s1")
    proxy = await start_proxy(config=with_checks([s1], attrs.evolve(CHECK, method="BAD METHOD")))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    assert "reason: Internal check error, info: " in line
    await wait_message(proxy.log, r"trilb error: backend backend has no server available!")
    errors = [m for m in proxy.log.messages if "failed unexpectedly" in m]
    assert len(errors) == 1, errors
    assert errors[0].startswith("trilb error: health check of server backend/s1 failed")
    # the balancer still answers
    async with client(proxy) as http:
        assert (await http.get("/")).status_code == 503


# -- lifetime -------------------------------------------------------------------------------------


async def test_drain_stops_the_checks(start_backend: StartBackend, start_proxy: StartProxy) -> None:
    s1 = await start_backend(Health("s1"), name="s1")
    proxy = await start_proxy(config=with_checks([s1], CHECK))
    await s1.wait_requests(2)
    # drain() returns once serve() has returned, i.e. once its nursery, where the check tasks
    # run, has no task left
    with trio.fail_after(WAIT):
        await proxy.lb.drain(1)
    assert "trilb info: stopped" in proxy.log.messages
    await s1.wait_all_closed()


async def test_no_checks_without_health_check(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    s1 = await start_backend(name="s1")
    proxy = await start_proxy([s1])
    async with client(proxy) as http:
        assert (await http.get("/")).status_code == 200
    assert s1.connections == 1
    assert not [m for m in proxy.log.messages if "health check" in m]


async def test_a_reset_while_reading_is_a_connection_problem(
    misbehaving: MisbehavingBackends, start_proxy: StartProxy
) -> None:
    """The server answers a head, then resets the connection in the middle of the body."""
    address = await misbehaving.reset_mid_body()
    proxy = await start_proxy(config=with_checks([address], attrs.evolve(CHECK, expect_body="ok")))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    assert 'reason: Layer4 connection problem, info: "Connection reset by peer"' in line, line


async def test_backup_servers_are_counted(
    start_backend: StartBackend, start_proxy: StartProxy, misbehaving: MisbehavingBackends
) -> None:
    spare = await start_backend(name="spare")
    servers = [
        trilb.ServerConfig(name="s1", address=misbehaving.refuse()),
        trilb.ServerConfig(name="spare", address=spare.address, backup=True),
    ]
    proxy = await start_proxy(config=with_checks(servers, attrs.evolve(CHECK, type="tcp")))
    line = await wait_message(proxy.log, r"server backend/s1 is DOWN")
    assert line.endswith("0 active and 1 backup servers left. Running on backup."), line
