"""Logging end to end: access lines of real scenarios, field by field; JSON and templates; the
non-blocking queue; file and syslog targets.

Every termination state is produced by what really causes it (a client that resets, a server that
resets, a connect that times out, ...) and its line is parsed with :data:`HTTPLOG`, the one regex
that also parses HAProxy's own lines (:data:`HAPROXY_LINES`): tools written for HAProxy's logs
read trilb's.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio
import trio.testing
from conftest import (
    WAIT,
    BackendRequest,
    BackendResponse,
    CollectingLog,
    MisbehavingBackends,
    RawClient,
    StartBackend,
    StartProxy,
    StartRawClient,
    generated_chunks,
    make_config,
    reset_connection,
)

import trilb
import trilb.logsink
import trilb.logtargets
from trilb.core.accesslog import AccessLogFormatter, RequestLog
from trilb.logtargets import Line

#: HAProxy's ``option httplog`` line, field by field (HAProxy's configuration manual, section
#: "HTTP log format"): also the optional captured headers ``{...} {...}`` (trilb shows a request
#: id there) and the "+" HAProxy puts before retries after a redispatch.
HTTPLOG = re.compile(
    r"^(?P<client_ip>\S+):(?P<client_port>\d+) "
    r"\[(?P<accept_date>\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d\.\d{3})\] "
    r"(?P<frontend>[^\s~]+)(?P<tls>~?) "
    r"(?P<backend>[^\s/]+)/(?P<server>\S+) "
    r"(?P<TR>-?\d+)/(?P<Tw>-?\d+)/(?P<Tc>-?\d+)/(?P<Tr>-?\d+)/(?P<Ta>\+?-?\d+) "
    r"(?P<status>-?\d+) (?P<bytes_read>\+?\d+) "
    r"(?P<request_cookie>\S+) (?P<response_cookie>\S+) "
    r"(?P<termination>[-A-Za-z]{2})(?P<cookie_flags>[-A-Za-z]{2}) "
    r"(?P<actconn>\d+)/(?P<feconn>\d+)/(?P<beconn>\d+)/(?P<srv_conn>\d+)/(?P<retries>\+?\d+) "
    r"(?P<srv_queue>\d+)/(?P<backend_queue>\d+) "
    r"(?:\{(?P<request_headers>[^}]*)\} )?(?:\{(?P<response_headers>[^}]*)\} )?"
    r"\"(?P<request>.*)\"$"
)

#: Lines in HAProxy's format as HAProxy writes them (syslog prefix removed): the manual's own
#: example, and lines written after ones operators posted in haproxy/haproxy issues (#2071: sH,
#: #2250: LR, #1708: cR), with documentation addresses.
HAPROXY_LINES = [
    "10.0.1.2:33317 [06/Feb/2009:12:14:14.655] http-in static/srv1 10/0/30/69/109 200 2750 "
    '- - ---- 1/1/1/1/0 0/0 {1wt.eu} {} "GET /index.html HTTP/1.1"',
    "192.0.2.17:40074 [12/Jun/2012:17:56:10.548] intake-fe intake-be/web2:9105 14/0/0/283/575 "
    '200 107 - - ---- 232/162/162/5/0 0/0 "POST /intake HTTP/1.1"',
    "198.51.100.7:34866 [31/Mar/2023:02:25:33.784] https-in~ https-in/<NOSRV> 0/-1/-1/-1/0 "
    '302 166 - - LR-- 2/1/0/0/0 0/0 "GET /login HTTP/1.1"',
    "203.0.113.9:43608 [07/Mar/2023:11:33:48.083] ssl~ api/10.81.15.120 0/0/3/-1/30002 504 198 "
    '- - sH-- 57/57/11/0/0 0/0 {Go-http-client/2.0} "GET /xyz HTTP/1.1"',
    "203.0.113.50:51893 [19/May/2022:14:39:24.633] https-edge~ https-edge/<NOSRV> "
    '-1/-1/-1/-1/5001 408 0 - - cR-- 10/9/0/0/0 0/0 "<BADREQ>"',
    "192.0.2.44:51002 [20/May/2016:10:02:11.101] web app/s2 0/0/-1/-1/3005 503 212 - - SC-- "
    '2/2/0/0/+3 0/0 "GET /hello HTTP/1.1"',
]


class AtLeast:
    """Equal to any int >= ``low`` (for timers, which vary from run to run)."""

    def __init__(self, low: int) -> None:
        self.low = low

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int) and other >= self.low

    def __hash__(self) -> int:
        return hash(self.low)

    def __repr__(self) -> str:
        return f">={self.low}"


#: a timer that was reached (HAProxy writes -1 for one that was not)
REACHED = AtLeast(0)


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll, under a deadline, for what nothing announces (a file's content, a thread's work)."""
    with trio.fail_after(WAIT):
        while not condition():
            await trio.sleep(0.01)


def parse(line: str) -> dict[str, str]:
    match = HTTPLOG.match(line)
    assert match is not None, f"not an httplog line: {line!r}"
    return {k: v for k, v in match.groupdict().items() if v is not None}


def check_line(
    line: str,
    *,
    client: RawClient | None = None,
    backend: str = "backend",
    server: str = "s1",
    timers: Sequence[int | AtLeast],
    status: int,
    termination: str,
    request: str,
    bytes_read: int | AtLeast = REACHED,
    retries: int = 0,
) -> dict[str, str]:
    """Check every field of a trilb access line; returns the fields."""
    fields = parse(line)
    assert fields["client_ip"] == "127.0.0.1"
    if client is not None:
        assert int(fields["client_port"]) == client.stream.socket.getsockname()[1]
    accepted = datetime.datetime.strptime(fields["accept_date"], "%d/%b/%Y:%H:%M:%S.%f")
    assert abs((datetime.datetime.now() - accepted).total_seconds()) < 60
    assert (fields["frontend"], fields["tls"]) == ("frontend", "")
    assert (fields["backend"], fields["server"]) == (backend, server)
    assert tuple(int(fields[t]) for t in ("TR", "Tw", "Tc", "Tr", "Ta")) == tuple(timers)
    assert int(fields["status"]) == status
    assert int(fields["bytes_read"]) == bytes_read
    assert (fields["request_cookie"], fields["response_cookie"]) == ("-", "-")
    assert (fields["termination"], fields["cookie_flags"]) == (termination, "--")
    counts = [int(fields[c]) for c in ("actconn", "feconn", "beconn", "srv_conn")]
    assert all(c >= 0 for c in counts)
    assert int(fields["retries"]) == retries
    assert (fields["srv_queue"], fields["backend_queue"]) == ("0", "0")
    assert "request_headers" not in fields  # no request id configured
    assert json.loads(f'"{fields["request"]}"') == request
    return fields


# -- HAProxy's own lines ---------------------------------------------------------------------------


@pytest.mark.parametrize("line", HAPROXY_LINES)
def test_the_regex_parses_haproxy_lines(line: str) -> None:
    fields = parse(line)
    assert fields["request"] in line
    assert fields["termination"] in ("--", "LR", "sH", "cR", "SC")
    assert fields["cookie_flags"] == "--"


def test_haproxy_fields_are_trilb_fields() -> None:
    """The manual's example line and a trilb line of the same request, side by side."""
    haproxy = parse(HAPROXY_LINES[0])
    record = RequestLog(
        client_ip="10.0.1.2",
        client_port=33317,
        accept_date=time.mktime((2009, 2, 6, 12, 14, 14, 0, 0, -1)) + 0.6555,
        frontend="http-in",
        backend="static",
        server="srv1",
        t_request=10,
        t_queue=0,
        t_connect=30,
        t_response=69,
        t_active=109,
        status=200,
        bytes_out=2750,
        actconn=1,
        feconn=1,
        beconn=1,
        srv_conn=1,
        request_line="GET /index.html HTTP/1.1",
    )
    ours = parse(AccessLogFormatter("haproxy").format(record))
    del haproxy["request_headers"], haproxy["response_headers"]  # captured headers: none here
    assert ours == haproxy


# -- one real scenario per termination state -------------------------------------------------------


async def test_normal_request(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    proxy = await start_proxy([await start_backend()])
    raw = await raw_client(proxy.port)
    await raw.send(b"GET /ok?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    response = await raw.read_response()
    assert response.status == 200
    await proxy.log.wait_access_lines(1)
    check_line(
        proxy.log.access_lines[0],
        client=raw,
        timers=(REACHED, REACHED, REACHED, REACHED, REACHED),
        status=200,
        termination="--",
        request="GET /ok?x=1 HTTP/1.1",
        bytes_read=len(response.raw_head) + len(response.body),
    )


async def test_client_abort_during_the_body_is_CD(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    total = 256 * 1024 * 1024

    async def download(request: BackendRequest) -> BackendResponse:
        headers = [("Content-Length", str(total))]
        return BackendResponse(headers=headers, body=lambda: generated_chunks(total))

    proxy = await start_proxy([await start_backend(download)])
    raw = await raw_client(proxy.port)
    await raw.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await raw.read_head()).status == 200
    reset_connection(raw.stream)  # the user pressed stop: a reset, mid-download
    await raw.aclose()
    await proxy.log.wait_access_lines(1)
    check_line(
        proxy.log.access_lines[0],
        timers=(REACHED, REACHED, REACHED, REACHED, REACHED),
        status=200,
        termination="CD",
        request="GET /big HTTP/1.1",
        bytes_read=AtLeast(1),
    )
    assert int(parse(proxy.log.access_lines[0])["bytes_read"]) < total


async def test_server_reset_mid_body_is_SD(
    start_proxy: StartProxy, misbehaving: MisbehavingBackends
) -> None:
    proxy = await start_proxy([await misbehaving.reset_mid_body()])
    async with httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=WAIT) as http:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await http.get("/partial")
    await proxy.log.wait_access_lines(1)
    check_line(
        proxy.log.access_lines[0],
        timers=(REACHED, REACHED, REACHED, REACHED, REACHED),
        status=200,
        termination="SD",
        request="GET /partial HTTP/1.1",
        bytes_read=AtLeast(10),  # the head and the 10 body bytes the server sent
    )


@asynccontextmanager
async def unresponsive_address() -> AsyncIterator[trilb.Address]:
    """A local address where connecting hangs: a listener (backlog 0) whose accept queue is full
    of connections nobody accepts, so the kernel drops further SYNs -- a blackhole on loopback."""
    listener = socket.socket()
    fillers: list[trio.socket.SocketType] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(16):
            sock = trio.socket.socket()
            fillers.append(sock)
            with trio.move_on_after(0.3) as pending:
                await sock.connect(address)
            if pending.cancelled_caught:  # this one hangs: the queue is full
                break
        else:
            pytest.fail("could not fill the listener's accept queue")
        yield trilb.Address(host="127.0.0.1", port=address[1])
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


async def test_connect_timeout_is_sC(start_proxy: StartProxy) -> None:
    async with unresponsive_address() as address:
        proxy = await start_proxy(
            [address], backend_timeouts=trilb.Timeouts(connect=0.2), retries=0
        )
        async with httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=WAIT) as http:
            response = await http.get("/hangs")
        assert response.status_code == 503
        await proxy.log.wait_access_lines(1)
    check_line(
        proxy.log.access_lines[0],
        timers=(REACHED, REACHED, -1, -1, AtLeast(200)),
        status=503,
        termination="sC",
        request="GET /hangs HTTP/1.1",
    )
    assert any("no connection within 0.2s" in m for m in proxy.log.messages)


async def test_connect_refused_is_SC_with_retries(
    start_proxy: StartProxy, misbehaving: MisbehavingBackends
) -> None:
    proxy = await start_proxy([misbehaving.refuse()], retries=2)
    async with httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=WAIT) as http:
        assert (await http.get("/refused")).status_code == 503
    await proxy.log.wait_access_lines(1)
    check_line(
        proxy.log.access_lines[0],
        timers=(REACHED, REACHED, -1, -1, REACHED),
        status=503,
        termination="SC",
        request="GET /refused HTTP/1.1",
        retries=2,
    )


async def test_request_head_timeout_is_cR(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    proxy = await start_proxy(
        [await start_backend()], timeouts=trilb.Timeouts(http_request=0.3, client=30)
    )
    raw = await raw_client(proxy.port)
    await raw.send(b"GET /slowloris HTTP/1.1\r\nHost: x\r\n")
    response = await raw.read_response()
    assert response.status == 408
    await proxy.log.wait_access_lines(1)
    # (HAProxy names the frontend as the backend here and shows the time spent in Ta)
    check_line(
        proxy.log.access_lines[0],
        client=raw,
        backend="-",
        server="<NOSRV>",
        timers=(-1, -1, -1, -1, -1),
        status=408,
        termination="cR",
        request="<BADREQ>",
        bytes_read=len(response.raw_head) + len(response.body),
    )


async def test_no_server_available_is_SC(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy([await start_backend()])
    proxy.lb.set_server_state("backend", "s1", "maint")
    async with httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=WAIT) as http:
        assert (await http.get("/nobody")).status_code == 503
    await proxy.log.wait_access_lines(1)
    check_line(
        proxy.log.access_lines[0],
        server="<NOSRV>",
        timers=(REACHED, -1, -1, -1, REACHED),
        status=503,
        termination="SC",
        request="GET /nobody HTTP/1.1",
    )
    assert any("server backend/s1 is now MAINT" in m for m in proxy.log.messages)


async def test_bad_response_is_SH(
    start_proxy: StartProxy, misbehaving: MisbehavingBackends
) -> None:
    proxy = await start_proxy([await misbehaving.garbage()])
    async with httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=WAIT) as http:
        assert (await http.get("/garbage")).status_code == 502
    await proxy.log.wait_access_lines(1)
    check_line(
        proxy.log.access_lines[0],
        timers=(REACHED, REACHED, REACHED, -1, REACHED),
        status=502,
        termination="SH",
        request="GET /garbage HTTP/1.1",
    )


async def test_server_timeout_is_sH(
    start_proxy: StartProxy, misbehaving: MisbehavingBackends
) -> None:
    proxy = await start_proxy([await misbehaving.hang()], timeouts=trilb.Timeouts(server=0.3))
    async with httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=WAIT) as http:
        assert (await http.get("/slow")).status_code == 504
    await proxy.log.wait_access_lines(1)
    check_line(
        proxy.log.access_lines[0],
        timers=(REACHED, REACHED, REACHED, -1, AtLeast(300)),
        status=504,
        termination="sH",
        request="GET /slow HTTP/1.1",
    )


async def test_redirect_is_LR(
    start_proxy: StartProxy, raw_client: StartRawClient, misbehaving: MisbehavingBackends
) -> None:
    config = make_config([misbehaving.refuse()])  # (never used)
    redirecting = attrs.evolve(config.frontends[0], redirect_https=trilb.RedirectHTTPS(port=8443))
    proxy = await start_proxy(config=attrs.evolve(config, frontends=[redirecting]))
    raw = await raw_client(proxy.port)
    await raw.send(b"GET /login HTTP/1.1\r\nHost: example.com\r\n\r\n")
    response = await raw.read_response()
    assert (response.status, response.header("location")) == (
        301,
        ["https://example.com:8443/login"],
    )
    await proxy.log.wait_access_lines(1)
    check_line(
        proxy.log.access_lines[0],
        client=raw,
        backend="frontend",  # as HAProxy: answered by the frontend itself
        server="<NOSRV>",
        timers=(REACHED, -1, -1, -1, REACHED),
        status=301,
        termination="LR",
        request="GET /login HTTP/1.1",
        bytes_read=len(response.raw_head),
    )


# -- JSON and templates on real traffic ------------------------------------------------------------


async def test_json_lines(start_backend: StartBackend, nursery: trio.Nursery) -> None:
    backend = await start_backend()
    config = make_config([backend])
    frontend = attrs.evolve(config.frontends[0], unique_id=True)
    config = attrs.evolve(config, frontends=[frontend])
    log = CollectingLog("json")
    lb: trilb.Balancer = await nursery.start(functools.partial(trilb.serve, config, log=log))
    url = f"http://127.0.0.1:{lb.addresses['frontend'][0].port}"
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=WAIT) as http:
        response = await http.get("/json?q=1")
    await log.wait_access_lines(1)
    record = json.loads(log.access_lines[0])
    assert set(record) == {field.name for field in attrs.fields(RequestLog)}
    sent_id = dict(response.json()["headers"])["X-Request-ID"]
    assert record["request_id"] == sent_id != "-"
    assert record["request_line"] == "GET /json?q=1 HTTP/1.1"
    assert (record["frontend"], record["backend"], record["server"]) == (
        "frontend",
        "backend",
        "s1",
    )
    assert (record["status"], record["termination"], record["retries"]) == (200, "--", 0)
    assert record["t_active"] >= record["t_response"] >= 0
    assert record["bytes_out"] > len(response.content)
    datetime.datetime.strptime(record["accept_date"], "%d/%b/%Y:%H:%M:%S.%f")


class MemoryTarget:
    """A log target keeping its lines (written from the Trio thread: ``blocking = False``)."""

    blocking = False
    check_interval: float | None = None

    def __init__(self) -> None:
        self.lines: list[Line] = []
        self.closed = 0
        self._changed = trio.Event()

    def write(self, lines: Sequence[Line]) -> int:
        self.lines.extend(lines)
        self._changed.set()
        self._changed = trio.Event()
        return 0

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1

    @property
    def texts(self) -> list[str]:
        return [text for _, text in self.lines]

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT):
            while not condition():
                await self._changed.wait()


async def test_template_lines_through_the_writer(
    start_backend: StartBackend, nursery: trio.Nursery
) -> None:
    """A real LogSink (queue and writer task) with a template, in the balancer."""
    target = MemoryTarget()
    log = trilb.LogSink(target, template="%ci %b/%s %ST %tsc %{+Q}r %HP|%HQ")
    config = make_config([await start_backend()])
    lb: trilb.Balancer = await nursery.start(functools.partial(trilb.serve, config, log=log))
    url = f"http://127.0.0.1:{lb.addresses['frontend'][0].port}"
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=WAIT) as http:
        await http.get("/t?a=b")
    expected = '127.0.0.1 backend/s1 200 ---- "GET /t?a=b HTTP/1.1" /t|?a=b'
    await target.wait_for(lambda: expected in target.texts)
    assert [s for s, text in target.lines if text == expected] == [6]  # info
    await lb.drain(1)
    assert target.texts[-1].endswith("trilb info: stopped")
    assert target.closed >= 1  # the writer closed the target when the balancer stopped


async def test_bad_template_is_a_config_error_at_start(misbehaving: MisbehavingBackends) -> None:
    log = trilb.LogConfig(target="none", template="%ci %Tx")
    config = attrs.evolve(make_config([misbehaving.refuse()]), log=log)
    with pytest.raises(trilb.ConfigError) as caught:
        async with trilb.open_balancer(config):
            pass  # pragma: no cover
    (problem,) = caught.value.problems
    assert problem.key_path == "log.template"
    assert "unknown variable %Tx" in problem.message


def test_json_format_writes_messages_as_json_too() -> None:
    target = MemoryTarget()
    log = trilb.LogSink(target, "json")
    log.warning('a "quoted" warning')
    (line,) = target.texts
    assert json.loads(line)["level"] == "warning"
    assert json.loads(line)["message"] == 'a "quoted" warning'


# -- never blocking --------------------------------------------------------------------------------


class StalledTarget:
    """A target whose writes block (in the writer's thread) until ``release`` is set."""

    blocking = True
    check_interval: float | None = None

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.lines: list[Line] = []

    def write(self, lines: Sequence[Line]) -> int:
        self.entered.set()
        self.release.wait()
        self.lines.extend(lines)
        return 0

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait_entered(self) -> None:
        assert await trio.to_thread.run_sync(self.entered.wait, WAIT)


def record() -> RequestLog:
    return RequestLog(
        client_ip="127.0.0.1", client_port=1234, accept_date=time.time(), frontend="w"
    )


async def test_a_stalled_target_drops_and_counts_and_never_blocks() -> None:
    target = StalledTarget()
    log = trilb.LogSink(target, queue=10)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            log.info("first")  # taken by the writer, whose write now blocks in its thread
            await target.wait_entered()
            started = time.monotonic()
            with trio.testing.assert_no_checkpoints():  # access() never awaits
                for _ in range(1000):
                    log.access(record())
            assert time.monotonic() - started < 1.0
            assert (log.queued, log.dropped) == (10, 990)
            target.release.set()  # the target recovers: the writer catches up and tells
            await eventually(lambda: any("990 log lines dropped" in t for _, t in target.lines))
            assert len(target.lines) == 1 + 10 + 1
            nursery.cancel_scope.cancel()
    finally:
        target.release.set()


async def test_stopping_with_a_stuck_write_does_not_wait_for_it() -> None:
    target = StalledTarget()
    log = trilb.LogSink(target, queue=100)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            log.info("stuck")
            await target.wait_entered()
            for _ in range(5):
                log.access(record())
            started = time.monotonic()
            nursery.cancel_scope.cancel()
        assert time.monotonic() - started < trilb.logsink.STOP_WAIT + 2
        assert log.dropped == 5  # what was queued behind the stuck write
        log.error("after the stop")  # no writer: synchronous -- but never behind a stuck write
        assert log.dropped == 6
    finally:
        target.release.set()


async def test_without_a_writer_lines_are_written_at_once_and_in_order() -> None:
    target = MemoryTarget()
    log = trilb.LogSink(target)
    log.info("before the writer")
    assert target.texts[-1].endswith("info: before the writer")  # synchronous
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        for i in range(600):  # more than one batch
            log.access(attrs.evolve(record(), client_port=i))
        await target.wait_for(lambda: len(target.lines) == 601)
        log.info("last queued")
        nursery.cancel_scope.cancel()
    assert target.texts[-1].endswith("info: last queued")  # written when the writer stopped
    log.info("after the writer")
    assert target.texts[-1].endswith("info: after the writer")
    ports = [int(text.split(" ")[0].split(":")[1]) for text in target.texts[1:601]]
    assert ports == list(range(600))


async def test_a_shared_sink_has_one_writer_at_a_time() -> None:
    target = MemoryTarget()
    log = trilb.LogSink(target)
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as first:
            await first.start(log.run)
            await outer.start(log.run)  # waits for the first one to stop, then takes over
            log.info("one")
            await target.wait_for(lambda: len(target.lines) == 1)
            first.cancel_scope.cancel()
        log.info("two")
        await target.wait_for(lambda: len(target.lines) == 2)
        outer.cancel_scope.cancel()


def test_a_failing_target_counts_dropped_lines() -> None:
    class Broken(MemoryTarget):
        def write(self, lines: Sequence[Line]) -> int:
            raise RuntimeError("a bug in an embedder's target")

    log = trilb.LogSink(Broken())
    log.info("lost")
    log.access(record())
    assert log.dropped == 2


# -- file target -----------------------------------------------------------------------------------


def text_of(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_file_target_reopens_on_request_and_after_a_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "trilb.log"
    log = trilb.LogSink(f"file:{path}")
    try:
        log.info("one")
        path.rename(tmp_path / "trilb.log.1")
        log.reopen()  # as on SIGUSR2
        log.info("two")
        assert "one" in text_of(tmp_path / "trilb.log.1")
        assert "two" not in text_of(tmp_path / "trilb.log.1")
        assert "info: two" in text_of(path)
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            log.access(record())
            await eventually(lambda: '"<BADREQ>"' in text_of(path))
            path.rename(tmp_path / "trilb.log.2")
            log.reopen()  # SIGUSR2 with a writer: it reopens before its next line
            log.info("three")
            await eventually(lambda: "info: three" in text_of(path))
            monkeypatch.setattr(trilb.logtargets, "ROTATION_CHECK", 0.0)  # check at every write
            path.rename(tmp_path / "trilb.log.3")  # no signal this time
            log.info("four")
            await eventually(lambda: "info: four" in text_of(path))
            nursery.cancel_scope.cancel()
        assert "three" not in text_of(tmp_path / "trilb.log.2")
        assert '"<BADREQ>"' in text_of(tmp_path / "trilb.log.2")
        assert "info: three" in text_of(tmp_path / "trilb.log.3")
        assert "four" not in text_of(tmp_path / "trilb.log.3")
        path.unlink()  # removed: the next line makes it again
        log.info("five")
        assert "info: five" in text_of(path)
    finally:
        log.close()


def test_a_full_disk_drops_and_counts() -> None:
    log = trilb.LogSink("file:/dev/full")  # every write: ENOSPC
    try:
        log.info("lost")
        log.access(record())
        assert log.dropped == 2
    finally:
        log.close()


@pytest.mark.parametrize(
    ("target", "facility", "key_path", "message"),
    [
        ("syslog", "local0", "log.target", 'must be "stdout", "stderr", "none", "file:PATH"'),
        ("file:", "local0", "log.target", "must be"),
        ("syslog:localhost", "local0", "log.target", "the syslog address must be"),
        ("syslog:127.0.0.1:514", "local9", "log.facility", "unknown syslog facility 'local9'"),
    ],
)
def test_bad_targets_are_config_errors(
    target: str, facility: str, key_path: str, message: str
) -> None:
    with pytest.raises(trilb.ConfigError) as caught:
        trilb.LogSink(target, facility=facility)
    (problem,) = caught.value.problems
    assert problem.key_path == key_path
    assert message in problem.message


def test_queue_must_hold_a_line() -> None:
    with pytest.raises(ValueError, match="queue must be at least 1"):
        trilb.LogSink("none", queue=0)


def test_file_target_in_a_missing_folder_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(trilb.StartupError, match=r"^log\.target: cannot open .*missing"):
        trilb.LogSink(f"file:{tmp_path}/missing/trilb.log")


# -- syslog ----------------------------------------------------------------------------------------

RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<timestamp>\S+) (?P<hostname>\S+) (?P<app>\S+) (?P<procid>\S+) "
    r"(?P<msgid>\S+) (?P<sd>-|\[.*\]) (?P<msg>.*)$",
    re.DOTALL,
)


def syslog_fields(datagram: bytes) -> dict[str, str]:
    match = RFC5424.match(datagram.decode("utf-8"))
    assert match is not None, datagram
    fields = match.groupdict()
    assert datetime.datetime.fromisoformat(fields["timestamp"]).tzinfo is not None
    assert (fields["app"], fields["procid"]) == ("trilb", str(os.getpid()))
    assert (fields["msgid"], fields["sd"]) == ("-", "-")
    assert fields["hostname"] == socket.gethostname()
    return fields


async def test_syslog_over_udp(start_backend: StartBackend, nursery: trio.Nursery) -> None:
    """trilb.serve makes its sink from ``[log]``: RFC 5424 datagrams, facility local0."""
    receiver = trio.socket.socket(type=socket.SOCK_DGRAM)
    try:
        await receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        config = attrs.evolve(
            make_config([await start_backend()]),
            log=trilb.LogConfig(target=f"syslog:127.0.0.1:{port}", facility="local0"),
        )
        lb: trilb.Balancer = await nursery.start(trilb.serve, config)
        url = f"http://127.0.0.1:{lb.addresses['frontend'][0].port}"
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=WAIT) as http:
            await http.get("/via-syslog")
        received: list[dict[str, str]] = []
        with trio.fail_after(WAIT):
            while not any(f["msg"].endswith('"GET /via-syslog HTTP/1.1"') for f in received):
                received.append(syslog_fields(await receiver.recv(65536)))
        assert received[0]["pri"] == "134"  # local0 (16) * 8 + info (6)
        assert received[0]["msg"].startswith("info: frontend frontend listening on 127.0.0.1:")
        access = received[-1]
        assert access["pri"] == "134"
        check_line(
            access["msg"],
            timers=(REACHED, REACHED, REACHED, REACHED, REACHED),
            status=200,
            termination="--",
            request="GET /via-syslog HTTP/1.1",
        )
        lb.set_server_state("backend", "s1", "maint")
        with trio.fail_after(WAIT):
            message = syslog_fields(await receiver.recv(65536))
        assert message["msg"] == "info: server backend/s1 is now MAINT (set by the operator)"
        await lb.drain(1)
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("level", "facility", "pri"),
    [
        ("info", "local0", 134),
        ("warning", "local0", 132),
        ("error", "local7", 187),
        ("error", "kern", 3),
    ],
)
async def test_syslog_priorities(level: str, facility: str, pri: int) -> None:
    receiver = trio.socket.socket(type=socket.SOCK_DGRAM)
    log: trilb.LogSink | None = None
    try:
        await receiver.bind(("127.0.0.1", 0))
        log = trilb.LogSink(f"syslog:127.0.0.1:{receiver.getsockname()[1]}", facility=facility)
        getattr(log, level)("a message")
        with trio.fail_after(WAIT):
            fields = syslog_fields(await receiver.recv(65536))
        assert (int(fields["pri"]), fields["msg"]) == (pri, f"{level}: a message")
    finally:
        if log is not None:
            log.close()
        receiver.close()


async def test_syslog_unix_socket_and_drops_when_it_is_full(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    log: trilb.LogSink | None = None
    try:
        await receiver.bind(str(path))
        log = trilb.LogSink(f"syslog:unix:{path}", facility="daemon")
        log.access(record())
        with trio.fail_after(WAIT):
            fields = syslog_fields(await receiver.recv(65536))
        assert fields["pri"] == str(3 * 8 + 6)
        assert fields["msg"].endswith('"<BADREQ>"')
        with trio.testing.assert_no_checkpoints():  # nobody reads: the socket fills up
            for _ in range(5000):
                log.access(record())
        assert 0 < log.dropped < 5000
        with trio.fail_after(WAIT):
            assert syslog_fields(await receiver.recv(65536))["pri"] == "30"
    finally:
        if log is not None:
            log.close()
        receiver.close()


def test_missing_syslog_socket_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(trilb.StartupError, match=r"^log\.target: no syslog socket at .*nope"):
        trilb.LogSink(f"syslog:unix:{tmp_path}/nope")
    (tmp_path / "file").touch()
    with pytest.raises(trilb.StartupError, match=r"^log\.target: .*file is not a socket"):
        trilb.LogSink(f"syslog:unix:{tmp_path}/file")
