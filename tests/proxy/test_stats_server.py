"""The stats server (``[stats]``): the dashboard, ``/stats.json`` and ``/metrics``.

In-process: a balancer with a stats section on 127.0.0.1:0 in front of real backends; traffic
through it, then the pages read with httpx (and raw sockets for the misbehaving clients), their
figures compared with ``lb.statistics()``, ``/metrics`` parsed by ``prometheus_client``'s own
parser. The pieces without I/O (histogram, rate meter, state history, rendering, basic auth)
are tested directly, table-driven, at the end.
"""

from __future__ import annotations

import base64
import json
import math
import re
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
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
    Proxy,
    StartBackend,
    StartProxy,
    StartRawClient,
    make_config,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import trilb
from trilb import dashboard, stats_server
from trilb.dashboard import render_html, short_check_status
from trilb.metrics import render_json, render_metrics
from trilb.stats import (
    Histogram,
    HistogramSnapshot,
    RateMeter,
    StateHistory,
    StatsView,
)
from trilb.stats_server import basic_auth_ok

USER, PASSWORD = "ops", "pa:ss wörd"


# -- helpers --------------------------------------------------------------------------------------


async def answer_by_path(request: BackendRequest) -> BackendResponse:
    """200 with a small body, but 404 for /missing and 500 for /boom."""
    status = {"/missing": 404, "/boom": 500}.get(request.target, 200)
    return BackendResponse(status=status, body=b"x" * 100)


def with_stats(config: trilb.Config, **options: Any) -> trilb.Config:
    return attrs.evolve(config, stats=trilb.StatsConfig(bind="127.0.0.1:0", **options))


def stats_url(proxy: Proxy, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{proxy.lb.stats_addresses[0].port}"


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (for state no event announces, like counters) under a deadline."""
    with trio.fail_after(WAIT):
        while not condition():
            await trio.sleep(0.01)


async def settled(proxy: Proxy) -> None:
    """No client connection or request left anywhere (the clients closed theirs)."""

    def idle() -> bool:
        stats = proxy.lb.statistics()
        traffic = [fe.traffic for fe in stats.frontends]
        for backend in stats.backends:
            traffic += [backend.traffic, *(s.traffic for s in backend.servers)]
        return all(t.current_connections == 0 and t.current_requests == 0 for t in traffic)

    await eventually(idle)


async def start_with_traffic(
    start_backend: StartBackend, start_proxy: StartProxy, paths: Sequence[str], **stats: Any
) -> tuple[Proxy, list[Backend]]:
    backends = [await start_backend(answer_by_path) for _ in range(2)]
    proxy = await start_proxy(config=with_stats(make_config(backends), **stats))
    async with httpx.AsyncClient(base_url=proxy.url) as client:
        for path in paths:
            await client.get(path)
    await settled(proxy)
    return proxy, backends


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(family: Any, name: str | None = None, **labels: str) -> float:
    """The value of the one sample of ``family`` with these labels (and ``name``)."""
    found: list[Sample] = [
        s
        for s in family.samples
        if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (family.name, name, labels, found)
    return float(found[0].value)


PATHS = ["/", "/a", "/missing", "/boom", "/", "/b", "/c", "/missing"]


# -- the figures ----------------------------------------------------------------------------------


async def test_stats_json_has_the_figures_of_statistics(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    proxy, backends = await start_with_traffic(start_backend, start_proxy, PATHS)
    async with httpx.AsyncClient(base_url=stats_url(proxy)) as client:
        response = await client.get("/stats.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    page = response.json()
    stats = proxy.lb.statistics()

    [frontend] = page["frontends"]
    assert frontend["name"] == "frontend"
    assert frontend["state"] == "OPEN"
    assert frontend["traffic"] == attrs.asdict(stats.frontend("frontend").traffic)
    assert frontend["traffic"]["total_requests"] == len(PATHS)
    assert frontend["traffic"]["responses_4xx"] == 2
    assert frontend["traffic"]["responses_5xx"] == 1
    assert frontend["traffic"]["peak_connections"] == 1

    [backend] = page["backends"]
    expected = stats.backend("backend")
    assert backend["traffic"] == attrs.asdict(expected.traffic)
    assert (backend["state"], backend["weight"], backend["queued"]) == ("UP", 200, 0)
    # the backend's bytes are its servers' (counted per server)
    assert backend["traffic"]["bytes_in"] == sum(s.traffic.bytes_in for s in expected.servers)
    assert backend["traffic"]["bytes_in"] > 0
    assert backend["response_time"]["count"] == len(PATHS)
    for server in backend["servers"]:
        snapshot = expected.server(server["name"])
        assert server["traffic"] == attrs.asdict(snapshot.traffic)
        assert server["state"] == "UP"
        assert server["weight"] == snapshot.weight == 100
        assert server["response_time"]["count"] == snapshot.traffic.total_requests
        assert server["response_time"]["cumulative"] == list(snapshot.response_time.cumulative)
        assert server["check_status"] == ""
        assert server["downtime"] == 0
        assert 0 <= server["last_change"] < WAIT
        assert "address" not in server  # no addresses on the stats pages
    assert [s["name"] for s in backend["servers"]] == [b.name for b in backends]
    assert str(backends[0].port) not in response.text


async def test_request_rates_come_from_the_samples(
    start_backend: StartBackend, start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats_server, "SAMPLE_INTERVAL", 0.02)
    proxy, _ = await start_with_traffic(start_backend, start_proxy, PATHS)
    async with httpx.AsyncClient(base_url=stats_url(proxy)) as client:
        page: dict[str, Any] = {}

        async def fetch() -> None:
            page.update((await client.get("/stats.json")).json())

        with trio.fail_after(WAIT):
            await fetch()
            while page["frontends"][0]["request_rate"] == 0:
                await trio.sleep(0.05)
                await fetch()
    [backend] = page["backends"]
    assert page["frontends"][0]["request_rate"] > 0
    assert backend["request_rate"] > 0
    assert backend["response_time_avg"] > 0
    assert sum(s["request_rate"] for s in backend["servers"]) == pytest.approx(
        backend["request_rate"]
    )


async def test_metrics_parse_with_prometheus_client(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    proxy, backends = await start_with_traffic(start_backend, start_proxy, PATHS)
    async with httpx.AsyncClient(base_url=stats_url(proxy)) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text
    found = families(text)
    stats = proxy.lb.statistics()

    # every family has its HELP and TYPE, and every name is in trilb's namespace
    for name, family in found.items():
        assert name.startswith("trilb_")
        assert family.documentation, name
        assert f"# TYPE {name}" in text or f"# TYPE {name}_total" in text

    web = {"frontend": "frontend"}
    assert found["trilb_frontend_requests"].type == "counter"
    assert sample(found["trilb_frontend_requests"], **web) == len(PATHS)
    responses = found["trilb_frontend_responses"]
    assert sample(responses, **web, code="2xx") == 5
    assert sample(responses, **web, code="4xx") == 2
    assert sample(responses, **web, code="5xx") == 1
    assert sample(responses, **web, code="1xx") == 0
    traffic = stats.frontend("frontend").traffic
    assert sample(found["trilb_frontend_bytes_in"], **web) == traffic.bytes_in
    assert sample(found["trilb_frontend_bytes_out"], **web) == traffic.bytes_out
    assert sample(found["trilb_frontend_current_sessions"], **web) == 0
    assert sample(found["trilb_frontend_max_sessions"], **web) == 1
    assert sample(found["trilb_frontend_sessions"], **web) == 1

    app = {"backend": "backend"}
    assert sample(found["trilb_backend_up"], **app) == 1
    assert sample(found["trilb_backend_current_queue"], **app) == 0
    assert sample(found["trilb_backend_requests"], **app) == len(PATHS)
    assert sample(found["trilb_backend_responses"], **app, code="5xx") == 1

    for backend in backends:
        server = {"backend": "backend", "server": backend.name}
        snapshot = stats.backend("backend").server(backend.name)
        assert sample(found["trilb_server_up"], **server) == 1
        assert sample(found["trilb_server_state"], **server, state="UP") == 1
        assert sample(found["trilb_server_state"], **server, state="MAINT") == 0
        assert sample(found["trilb_server_weight"], **server) == 100
        assert sample(found["trilb_server_current_sessions"], **server) == 0
        assert sample(found["trilb_server_requests"], **server) == len(backend.requests)
        assert sample(found["trilb_server_bytes_in"], **server) == snapshot.traffic.bytes_in
        assert sample(found["trilb_server_downtime_seconds"], **server) == 0

        histogram = found["trilb_server_response_seconds"]
        assert histogram.type == "histogram"
        buckets = [
            (float(s.labels["le"]), s.value)
            for s in histogram.samples
            if s.name.endswith("_bucket") and s.labels["server"] == backend.name
        ]
        assert [le for le, _ in buckets] == [*trilb.stats.RESPONSE_TIME_BUCKETS, math.inf]
        counts = [count for _, count in buckets]
        assert counts == sorted(counts), "buckets must be cumulative"
        count = sample(histogram, "trilb_server_response_seconds_count", **server)
        assert counts[-1] == count == len(backend.requests)
        assert sample(histogram, "trilb_server_response_seconds_sum", **server) > 0

    backend_count = sample(
        found["trilb_backend_response_seconds"], "trilb_backend_response_seconds_count", **app
    )
    assert backend_count == len(PATHS)


async def test_a_server_in_maint_drain_or_down_shows_so(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    up = await start_backend(name="alpha")
    drained = await start_backend(name="beta")
    maint = await start_backend(name="gamma")
    dead = trilb.ServerConfig(name="delta", address=f"127.0.0.1:{await refused_port()}")
    config = with_stats(make_config([up, drained, maint, dead]))
    check = trilb.HealthCheck(type="tcp", interval=0.05, fall=1, rise=1)
    backend_config = attrs.evolve(config.backends[0], health_check=check)
    proxy = await start_proxy(config=attrs.evolve(config, backends=[backend_config]))
    proxy.lb.set_server_state("backend", "beta", "drain")
    proxy.lb.set_server_state("backend", "gamma", "maint")
    await eventually(
        lambda: proxy.lb.statistics().backend("backend").server("delta").state == "DOWN"
    )
    await trio.sleep(0.05)  # some downtime to see

    async with httpx.AsyncClient(base_url=stats_url(proxy)) as client:
        html = (await client.get("/")).text
        page = (await client.get("/stats.json")).json()
        metrics = families((await client.get("/metrics")).text)

    states = {s["name"]: s["state"] for s in page["backends"][0]["servers"]}
    assert states == {"alpha": "UP", "beta": "DRAIN", "gamma": "MAINT", "delta": "DOWN"}
    for name, state in states.items():
        assert re.search(rf"{name}</td><td[^>]*><span class=\"st st-{state}\">{state}</span>", html)
        labels = {"backend": "backend", "server": name}
        assert sample(metrics["trilb_server_state"], **labels, state=state) == 1
        assert sample(metrics["trilb_server_up"], **labels) == (state == "UP")
    servers = {s["name"]: s for s in page["backends"][0]["servers"]}
    assert servers["delta"]["check_status"].startswith("Layer4 connection problem")
    assert "L4CON" in html
    assert servers["delta"]["downtime"] > 0
    assert servers["gamma"]["downtime"] > 0  # MAINT counts as downtime
    assert servers["beta"]["downtime"] == 0  # DRAIN does not
    assert servers["alpha"]["check_status"].startswith("Layer4 check passed")
    assert servers["gamma"]["changes"] == 1
    assert page["backends"][0]["weight"] == 100  # only alpha takes new traffic
    downtime = sample(metrics["trilb_server_downtime_seconds"], backend="backend", server="delta")
    assert downtime > 0


async def refused_port() -> int:
    """A port nothing listens on."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_the_dashboard_page(start_backend: StartBackend, start_proxy: StartProxy) -> None:
    proxy, backends = await start_with_traffic(start_backend, start_proxy, PATHS, refresh=2.5)
    async with httpx.AsyncClient(base_url=stats_url(proxy)) as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    page = response.text
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert 'data-refresh="2500"' in page
    assert '<meta http-equiv="refresh" content="2.5">' in page  # (without JavaScript)
    for backend in backends:
        assert f">{backend.name}</td>" in page
    assert "Backend backend" in page
    assert ">frontend</td>" in page
    # nothing from elsewhere, no version, no addresses
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert trilb.__version__ not in page
    assert "127.0.0.1" not in page
    for backend in backends:
        assert str(backend.port) not in page


# -- the HTTP server ------------------------------------------------------------------------------


async def test_basic_auth(start_backend: StartBackend, start_proxy: StartProxy) -> None:
    proxy, _ = await start_with_traffic(start_backend, start_proxy, [], auth=(USER, PASSWORD))
    async with httpx.AsyncClient(base_url=stats_url(proxy)) as client:
        for path in ["/", "/stats.json", "/metrics", "/nothing-here"]:
            refused = await client.get(path)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith('Basic realm="trilb stats"')
            assert "trilb" not in refused.text.lower()  # nothing about the balancer
        for user, password in [
            (USER, "wrong"),
            ("root", PASSWORD),
            (USER, ""),
            (USER, PASSWORD[:-1]),
        ]:
            assert (await client.get("/", auth=(user, password))).status_code == 401
        garbled = {"Authorization": "Basic not*base64"}
        assert (await client.get("/", headers=garbled)).status_code == 401
        for path in ["/", "/stats.json", "/metrics"]:
            assert (await client.get(path, auth=(USER, PASSWORD))).status_code == 200
        assert (await client.get("/nothing-here", auth=(USER, PASSWORD))).status_code == 404


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, trustme.CA]:
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("stats-certs")
    pem = folder / "stats.pem"
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pem.write_bytes(cert.private_key_and_cert_chain_pem.bytes())
    return pem, ca


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    certificate: tuple[Path, trustme.CA],
    version: ssl.TLSVersion,
) -> None:
    pem, ca = certificate
    tls = trilb.TLSConfig(certificates=[str(pem)])
    proxy, _ = await start_with_traffic(
        start_backend, start_proxy, PATHS, tls=tls, auth=(USER, PASSWORD)
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.minimum_version = context.maximum_version = version
    async with httpx.AsyncClient(base_url=stats_url(proxy, "https"), verify=context) as client:
        assert (await client.get("/")).status_code == 401
        response = await client.get("/metrics", auth=(USER, PASSWORD))
        assert response.status_code == 200
        found = families(response.text)
        assert sample(found["trilb_frontend_requests"], frontend="frontend") == len(PATHS)
    # plain HTTP to it gets nowhere, and an untrusted client fails its handshake
    async with httpx.AsyncClient(base_url=stats_url(proxy)) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get("/")
    async with httpx.AsyncClient(base_url=stats_url(proxy, "https")) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/")
    assert any("stats listening on https://127.0.0.1:" in m for m in proxy.log.messages)


async def test_a_stalled_tls_handshake_is_cut_off(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    raw_client: StartRawClient,
    certificate: tuple[Path, trustme.CA],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stats_server, "HANDSHAKE_TIMEOUT", 0.2)
    tls = trilb.TLSConfig(certificates=[str(certificate[0])])
    proxy, _ = await start_with_traffic(start_backend, start_proxy, [], tls=tls)
    stalled = await raw_client(proxy.lb.stats_addresses[0].port)
    await stalled.send(b"\x16\x03\x01")  # the start of a ClientHello, and no more
    assert await stalled.wait_closed() == b""


async def test_on_a_unix_socket(start_backend: StartBackend, tmp_path: Path) -> None:
    backend = await start_backend()
    path = tmp_path / "stats.sock"
    config = attrs.evolve(make_config([backend]), stats=trilb.StatsConfig(bind=f"unix:{path}"))
    async with trilb.open_balancer(config, log=CollectingLog()) as lb:
        assert lb.stats_addresses == (trilb.Address(path=str(path)),)
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://stats/metrics")
    assert response.status_code == 200
    assert "trilb_server_up" in response.text


async def test_methods_paths_and_head(start_backend: StartBackend, start_proxy: StartProxy) -> None:
    proxy, _ = await start_with_traffic(start_backend, start_proxy, PATHS)
    async with httpx.AsyncClient(base_url=stats_url(proxy)) as client:
        for path in ["/nothing", "/stats", "/metrics/", "/index.html", "/stats.json/x"]:
            assert (await client.get(path)).status_code == 404
        assert (await client.get("/metrics?x=1")).status_code == 200  # a query is fine
        posted = await client.post("/metrics", content=b"x=1")
        assert posted.status_code == 405
        assert posted.headers["allow"] == "GET, HEAD"
        for path in ["/", "/stats.json", "/metrics"]:
            got = await client.get(path)
            head = await client.head(path)
            assert head.status_code == 200
            assert head.content == b""
            assert head.headers["content-type"] == got.headers["content-type"]
            # (the page changes between the two: uptime, rates; the length is there)
            assert int(head.headers["content-length"]) > 0
        assert "server" not in got.headers  # no software name, no version


async def test_pages_are_rendered_at_most_once_in_a_while(
    start_backend: StartBackend, start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client polling in a loop gets the same bytes until the cache time is over."""
    monkeypatch.setattr(stats_server, "CACHE_SECONDS", 3600)
    proxy, _ = await start_with_traffic(start_backend, start_proxy, PATHS)
    async with httpx.AsyncClient(base_url=stats_url(proxy)) as stats:
        before = (await stats.get("/stats.json")).content
        async with httpx.AsyncClient(base_url=proxy.url) as client:
            await client.get("/")
        await settled(proxy)
        assert (await stats.get("/stats.json")).content == before
        monkeypatch.setattr(stats_server, "CACHE_SECONDS", 0)
        after = (await stats.get("/stats.json")).json()
    assert after["frontends"][0]["traffic"]["total_requests"] == len(PATHS) + 1


async def test_keep_alive_and_concurrent_clients(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    proxy, _ = await start_with_traffic(start_backend, start_proxy, [])
    port = proxy.lb.stats_addresses[0].port
    silent = await raw_client(port)  # connected, sends nothing: holds its own task only
    client = await raw_client(port)
    for path in ["/metrics", "/stats.json", "/"]:
        await client.send(f"GET {path} HTTP/1.1\r\nHost: stats\r\n\r\n".encode())
        response = await client.read_response()
        assert response.status == 200
    await client.send(b"GET /metrics HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n\r\n")
    assert (await client.read_response()).status == 200
    assert await client.wait_closed() == b""
    await silent.aclose()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 20000, 413),
    ],
    ids=["garbage", "no-host", "huge-head", "huge-body"],
)
async def test_bad_requests_get_a_4xx_and_the_server_goes_on(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    raw_client: StartRawClient,
    request_bytes: bytes,
    status: int,
) -> None:
    proxy, _ = await start_with_traffic(start_backend, start_proxy, [])
    port = proxy.lb.stats_addresses[0].port
    bad = await raw_client(port)
    await bad.send(request_bytes)
    response = await bad.read_response()
    assert response.status == status
    assert response.header("connection") == ["close"]
    await bad.wait_closed()
    async with httpx.AsyncClient(base_url=stats_url(proxy)) as client:
        assert (await client.get("/metrics")).status_code == 200


async def test_slow_and_idle_clients_are_cut_off(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    raw_client: StartRawClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stats_server, "REQUEST_TIMEOUT", 0.2)
    monkeypatch.setattr(stats_server, "IDLE_TIMEOUT", 0.2)
    proxy, _ = await start_with_traffic(start_backend, start_proxy, [])
    port = proxy.lb.stats_addresses[0].port
    slow = await raw_client(port)
    await slow.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # ... and never the end
    assert (await slow.read_response()).status == 408
    await slow.wait_closed()
    silent = await raw_client(port)
    assert await silent.wait_closed() == b""  # nothing came: closed without a word
    idle = await raw_client(port)
    await idle.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await idle.read_response()).status == 200
    assert await idle.wait_closed() == b""  # then idle for too long


async def test_a_stats_port_in_use_is_a_startup_error(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    proxy, backends = await start_with_traffic(start_backend, start_proxy, [])
    taken = proxy.lb.stats_addresses[0].port
    config = attrs.evolve(make_config(backends), stats=trilb.StatsConfig(bind=f"127.0.0.1:{taken}"))
    # (services start inside the balancer's nursery: their start-up errors come in a group)
    with pytest.RaisesGroup(
        pytest.RaisesExc(trilb.StartupError, match=r"stats\.bind\[0\]: cannot listen on"),
        flatten_subgroups=True,
    ):
        async with trilb.open_balancer(config, log=CollectingLog()):
            pass  # pragma: no cover


async def test_the_stats_server_stops_with_the_balancer(start_backend: StartBackend) -> None:
    backend = await start_backend()
    config = with_stats(make_config([backend]))
    async with trilb.open_balancer(config, log=CollectingLog()) as lb:
        port = lb.stats_addresses[0].port
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
        await lb.drain(grace=1)
    with pytest.raises(OSError, match="all attempts to connect"):  # (refused)
        await trio.open_tcp_stream("127.0.0.1", port)


# -- the pieces without I/O -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "cumulative"),
    [
        ([], [0] * 12),
        ([0.0], [1] * 12),
        ([0.005], [1] * 12),  # a bound belongs to its own bucket ("le")
        ([0.0051], [0, *[1] * 11]),
        ([20.0], [*[0] * 11, 1]),
        ([0.003, 0.2, 0.2, 3.0, 11.0], [1, 1, 1, 1, 1, 3, 3, 3, 3, 4, 4, 5]),
    ],
)
def test_histogram(values: list[float], cumulative: list[int]) -> None:
    histogram = Histogram()
    for value in values:
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert list(snapshot.cumulative) == cumulative
    assert snapshot.count == len(values)
    assert snapshot.sum == pytest.approx(sum(values))
    assert snapshot.buckets()[-1] == (math.inf, len(values))


def test_histogram_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram([1.0, 0.5])


@pytest.mark.parametrize(
    ("samples", "rate"),
    [
        ([], 0.0),
        ([(0.0, 5)], 0.0),  # one sample: no rate yet
        ([(0.0, 0), (1.0, 10)], 10.0),
        ([(0.0, 0), (1.0, 10), (2.0, 30)], 15.0),
        # older samples leave the 10s window: the rate is over the last 10 seconds only
        ([(0.0, 0), (5.0, 1000), *((5.0 + i, 1000 + i) for i in range(1, 12))], 1.0),
    ],
)
def test_rate_meter(samples: list[tuple[float, int]], rate: float) -> None:
    meter: RateMeter[str] = RateMeter(window=10.0)
    for now, total in samples:
        meter.sample(now, {"requests": total})
    assert meter.rate("requests") == pytest.approx(rate)
    assert meter.rate("unknown") == 0.0
    assert len(meter._samples) <= 12  # bounded


def test_state_history() -> None:
    history = StateHistory(100.0)
    assert (history.last_change, history.downtime(150.0), history.changes) == (100.0, 0.0, 0)
    history.change("DOWN", 110.0)
    assert history.downtime(115.0) == 5.0
    history.change("MAINT", 120.0)  # still no traffic: the downtime goes on
    assert history.downtime(125.0) == 15.0
    history.change("UP", 130.0)
    assert history.downtime(200.0) == 20.0
    history.change("DRAIN", 140.0)  # draining is not downtime
    assert history.downtime(200.0) == 20.0
    assert (history.last_change, history.changes) == (140.0, 4)
    assert StateHistory(0.0, "DOWN").downtime(3.0) == 3.0


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (None, False),
        (b"", False),
        (b"Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()), True),
        (b"basic  " + base64.b64encode(f"{USER}:{PASSWORD}".encode()), True),
        (b"Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()), False),
        (b"Basic " + base64.b64encode(f"{USER}:{PASSWORD}x".encode()), False),
        (b"Basic " + base64.b64encode(f"{USER}{PASSWORD}".encode()), False),
        (b"Basic " + base64.b64encode(f":{PASSWORD}".encode()), False),
        (b"Basic !!!", False),
        (b"Basic", False),
    ],
)
def test_basic_auth_ok(header: bytes | None, ok: bool) -> None:
    assert basic_auth_ok(header, USER, PASSWORD) is ok


@pytest.mark.parametrize(
    ("status", "short"),
    [
        ("", "-"),
        ("Layer7 check passed, code: 200, check duration: 3ms", "L7OK/200 in 3ms"),
        ("Layer7 wrong status, code: 500, check duration: 12ms", "L7STS/500 in 12ms"),
        ('Layer4 connection problem, info: "refused", check duration: 0ms', "L4CON in 0ms"),
        ("Layer4 timeout, check duration: 1000ms", "L4TOUT in 1000ms"),
        ("something new", "something new"),
    ],
)
def test_short_check_status(status: str, short: str) -> None:
    assert short_check_status(status) == short


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m"), (90061, "1d01h")],
)
def test_durations(seconds: float, text: str) -> None:
    assert dashboard._duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (5 * 1024**3, "5.0 GiB"),
        (3 * 1024**5, "3072.0 TiB"),
    ],
)
def test_sizes(size: int, text: str) -> None:
    assert dashboard._bytes(size) == text


@pytest.mark.parametrize(
    ("function", "value", "text"),
    [
        (dashboard._rate, 0.0, "0"),
        (dashboard._rate, 2.25, "2.2"),
        (dashboard._rate, 1234.5, "1234"),
        (dashboard._millis, None, "-"),
        (dashboard._millis, 0.0042, "4.2"),
        (dashboard._millis, 0.25, "250"),
    ],
)
def test_figures(function: Callable[[Any], str], value: float | None, text: str) -> None:
    assert function(value) == text


def strange_view() -> StatsView:
    """A snapshot whose names need escaping everywhere."""
    traffic = trilb.TrafficStatistics(
        current_connections=0,
        total_connections=3,
        current_requests=0,
        total_requests=3,
        bytes_in=10,
        bytes_out=20,
        connect_errors=0,
        handshake_errors=0,
        responses_1xx=0,
        responses_2xx=3,
        responses_3xx=0,
        responses_4xx=0,
        responses_5xx=0,
        responses_other=0,
    )
    histogram = Histogram()
    histogram.observe(0.01)
    server = trilb.ServerStatistics(
        name='s "1"\\\n<b>',
        address="10.0.0.1:80",
        weight=7,
        traffic=traffic,
        idle_connections=0,
        response_time=histogram.snapshot(),
    )
    return StatsView(
        statistics=trilb.Statistics(
            frontends=(
                trilb.FrontendStatistics(
                    name="<script>alert(1)</script>", addresses=("10.0.0.9:80",), traffic=traffic
                ),
            ),
            backends=(trilb.BackendStatistics(name='app\\"x', traffic=traffic, servers=(server,)),),
        )
    )


def test_label_values_are_escaped() -> None:
    view = strange_view()
    found = families(render_metrics(view).decode())
    labels = {"backend": 'app\\"x', "server": 's "1"\\\n<b>'}
    assert sample(found["trilb_server_weight"], **labels) == 7
    assert sample(found["trilb_frontend_requests"], frontend="<script>alert(1)</script>") == 3
    assert (
        sample(
            found["trilb_server_response_seconds"], "trilb_server_response_seconds_count", **labels
        )
        == 1
    )


def test_names_are_escaped_in_html_and_json_and_addresses_left_out() -> None:
    view = strange_view()
    page = render_html(view).decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>" not in page
    assert "10.0.0" not in page
    document = json.loads(render_json(view))
    assert document["backends"][0]["servers"][0]["name"] == 's "1"\\\n<b>'
    assert "10.0.0" not in json.dumps(document)
    assert HistogramSnapshot().count == 0
