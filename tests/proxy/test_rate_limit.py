"""Limits on real sockets: ``rate_limit`` (deny and tarpit, per frontend and per route),
``max_connections_per_src``, a frontend's ``max_connections`` and ``backlog``.

Every client here is 127.0.0.1, so the rate limits that must tell clients apart key on a header
(``X-Client``); ``src`` is used where one client is enough. The periods are long (60 s) so that
nothing slides out of the window while a test runs on a slow machine: the exact arithmetic of
the window is the sans-IO core's, tested with explicit times in ``tests/core/test_ratelimit.py``.
"""

from __future__ import annotations

import shutil
from typing import Any

import attrs
import httpx
import pytest
import trio
from conftest import (
    WAIT,
    Backend,
    CollectingLog,
    RawClient,
    StartBackend,
    StartProxy,
    StartRawClient,
    make_config,
)

import trilb
from trilb.core.proxy_protocol import encode_v1
from trilb.metrics import render_metrics
from trilb.stats import StatsView

REQUEST = b"GET /x HTTP/1.1\r\nHost: test\r\n\r\n"


def limited(backend: Backend, **changes: Any) -> trilb.Config:
    """The conftest's one-frontend config with its frontend changed."""
    config = make_config([backend])
    return attrs.evolve(config, frontends=[attrs.evolve(config.frontends[0], **changes)])


def traffic(lb: trilb.Balancer) -> trilb.TrafficStatistics:
    return lb.statistics().frontend("frontend").traffic


async def wait_message(log: CollectingLog, text: str) -> str:
    """Wait until a message line containing ``text`` was logged; that line."""
    with trio.fail_after(WAIT):
        while True:
            for line in log.messages:
                if text in line:
                    return line
            await log._changed.wait()


async def get(client: RawClient, request: bytes = REQUEST) -> int:
    await client.send(request)
    return (await client.read_response()).status


# -- rate_limit ------------------------------------------------------------------------------------


async def test_deny_over_the_limit_with_retry_after_and_others_unaffected(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backend = await start_backend()
    limit = trilb.RateLimit(requests=3, period=60.0, key="header:X-Client")
    proxy = await start_proxy(config=limited(backend, rate_limit=limit))
    async with httpx.AsyncClient(trust_env=False, base_url=proxy.url) as http:
        a = {"X-Client": "a"}
        assert [(await http.get("/", headers=a)).status_code for _ in range(3)] == [200] * 3
        refused = await http.get("/", headers=a)
        assert refused.status_code == 429
        assert "429 Too Many Requests" in refused.text
        # the 4th passes once 3 * (1 - x) <= 2 in the next period: at 60 s + 20 s
        assert 60 < int(refused.headers["retry-after"]) <= 80
        assert (await http.get("/", headers=a)).status_code == 429  # still, on the same connection
        # another client is not affected, nor is a request without the key
        b = {"X-Client": "b"}
        assert [(await http.get("/", headers=b)).status_code for _ in range(3)] == [200] * 3
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/", headers=a)).status_code == 429
    assert len(backend.requests) == 7  # the refused ones never reached it
    stats = traffic(proxy.lb)
    assert (stats.denied_requests, stats.tarpitted_requests, stats.responses_4xx) == (3, 0, 3)
    metrics = render_metrics(StatsView(statistics=proxy.lb.statistics())).decode()
    assert 'trilb_frontend_denied_requests_total{frontend="frontend"} 3' in metrics
    assert 'trilb_frontend_tarpitted_requests_total{frontend="frontend"} 0' in metrics
    # logged: every refusal as an access line (PR, no server), the key's first one as a warning
    await proxy.log.wait_access_lines(10)
    refusals = [line for line in proxy.log.access_lines if " 429 " in line]
    assert len(refusals) == 3
    assert all(" frontend frontend/<NOSRV> " in line and " PR-- " in line for line in refusals)
    warnings = [m for m in proxy.log.messages if "rate limit" in m]
    assert len(warnings) == 1, warnings  # one line for the key's period, not one a refusal
    assert warnings[0].startswith("trilb warning: 127.0.0.1:")
    assert warnings[0].endswith(
        " frontend frontend: over the rate limit of 3 requests per 60s (header:X-Client='a'); "
        "answering 429 until it slows down"
    )


async def test_src_key_and_a_status_of_ones_own(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    limit = trilb.RateLimit(requests=2, period=60.0, status=503)
    proxy = await start_proxy(config=limited(backend, rate_limit=limit))
    first, second = await raw_client(proxy.port), await raw_client(proxy.port)
    assert await get(first) == 200
    assert await get(second) == 200  # the same address: the same budget
    assert await get(first) == 503
    assert await get(second) == 503


async def test_tarpit_holds_the_request_for_timeout_tarpit(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backend = await start_backend()
    limit = trilb.RateLimit(requests=1, period=60.0, key="header:X-Client", action="tarpit")
    config = limited(backend, rate_limit=limit, timeouts=trilb.Timeouts(tarpit=0.3))
    proxy = await start_proxy(config=config)
    async with httpx.AsyncClient(trust_env=False, base_url=proxy.url) as http:
        a = {"X-Client": "a"}
        assert (await http.get("/", headers=a)).status_code == 200
        start = trio.current_time()
        held = await http.get("/", headers=a)
        elapsed = trio.current_time() - start
    assert held.status_code == 429
    assert 0.3 <= elapsed < 0.3 + WAIT
    assert 0 <= int(held.headers["retry-after"]) <= 120
    stats = traffic(proxy.lb)
    assert (stats.denied_requests, stats.tarpitted_requests) == (0, 1)
    await proxy.log.wait_access_lines(2)
    assert " 429 " in proxy.log.access_lines[1]
    assert " PT-- " in proxy.log.access_lines[1]
    assert len(backend.requests) == 1


async def test_a_tarpit_holds_no_one_else_and_a_drain_ends_it(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    limit = trilb.RateLimit(requests=1, period=60.0, key="header:X-Client", action="tarpit")
    config = limited(backend, rate_limit=limit, timeouts=trilb.Timeouts(tarpit=60.0))
    proxy = await start_proxy(config=config)
    held = await raw_client(proxy.port)
    request_a = b"GET / HTTP/1.1\r\nHost: test\r\nX-Client: a\r\n\r\n"
    assert await get(held, request_a) == 200
    await held.send(request_a)
    await wait_message(proxy.log, "over the rate limit")  # held from here on
    # meanwhile other clients are served, on connections of their own
    others = [await raw_client(proxy.port) for _ in range(3)]
    for index, client in enumerate(others):
        request = b"GET / HTTP/1.1\r\nHost: test\r\nX-Client: b%d\r\n\r\n" % index
        assert await get(client, request) == 200
    assert traffic(proxy.lb).tarpitted_requests == 1
    assert not [line for line in proxy.log.access_lines if " 429 " in line]  # not answered yet
    # a drain answers it at once, closing, instead of waiting 60 s
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proxy.lb.drain, 30.0)
            response = await held.read_response()
            assert response.status == 429
            assert response.header("connection") == ["close"]
            assert await held.wait_closed() == b""
            for client in others:
                await client.wait_closed()  # idle keep-alive connections are closed by the drain


async def test_a_route_limit_adds_to_the_frontends(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    login = trilb.Route(
        name="login",
        backend="backend",
        match=trilb.Match(path_prefix=["/login"]),
        rate_limit=trilb.RateLimit(requests=2, period=60.0),
    )
    frontend_limit = trilb.RateLimit(requests=4, period=60.0)
    proxy = await start_proxy(config=limited(backend, routes=[login], rate_limit=frontend_limit))
    client = await raw_client(proxy.port)
    login_request = b"GET /login HTTP/1.1\r\nHost: test\r\n\r\n"
    assert [await get(client, login_request) for _ in range(3)] == [200, 200, 429]
    # the refused login counted against neither limit: the frontend has 2 left
    assert [await get(client) for _ in range(3)] == [200, 200, 429]
    assert await get(client, login_request) == 429
    warning = await wait_message(proxy.log, "route login")
    assert "over the rate limit of 2 requests per 60s (src, route login)" in warning
    await wait_message(proxy.log, "over the rate limit of 4 requests per 60s (src)")
    assert traffic(proxy.lb).denied_requests == 3
    assert [r.target for r in backend.requests] == ["/login", "/login", "/x", "/x"]


async def test_a_redirecting_frontend_is_limited_too(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    config = limited(
        backend,
        redirect_https=trilb.RedirectHTTPS(port=8443),
        rate_limit=trilb.RateLimit(requests=1, period=60.0),
    )
    proxy = await start_proxy(config=config)
    client = await raw_client(proxy.port)
    assert [await get(client) for _ in range(2)] == [301, 429]


# -- max_connections_per_src -----------------------------------------------------------------------


async def test_per_source_cap_closes_the_extra_connection_at_once(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy(config=limited(backend, max_connections_per_src=2))
    first, second = await raw_client(proxy.port), await raw_client(proxy.port)
    assert await get(first) == 200  # (answered: so counted)
    assert await get(second) == 200
    third = await raw_client(proxy.port)
    await third.send(REQUEST)
    assert await third.wait_closed() == b""  # closed, no answer
    warning = await wait_message(proxy.log, "max_connections_per_src")
    assert warning.startswith("trilb warning: 127.0.0.1:")
    assert "frontend frontend: 2 connections from this address already" in warning
    assert traffic(proxy.lb).denied_connections == 1
    # the first two still work
    assert await get(first) == 200
    assert await get(second) == 200
    # one ends (the answer with Connection: close, then the close: the slot is free by then)
    assert await get(first, b"GET /x HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n") == 200
    await first.wait_closed()
    fourth = await raw_client(proxy.port)
    assert await get(fourth) == 200
    metrics = render_metrics(StatsView(statistics=proxy.lb.statistics())).decode()
    assert 'trilb_frontend_denied_connections_total{frontend="frontend"} 1' in metrics
    assert len(backend.requests) == 6


async def test_per_source_cap_counts_the_address_of_the_proxy_header(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy(config=limited(backend, accept_proxy=True, max_connections_per_src=1))
    destination = ("198.51.100.1", 80)
    one = await raw_client(proxy.port)
    assert await get(one, encode_v1(("203.0.113.7", 1000), destination) + REQUEST) == 200
    other = await raw_client(proxy.port)  # 127.0.0.1 too, but another client behind the L4 hop
    assert await get(other, encode_v1(("203.0.113.8", 1000), destination) + REQUEST) == 200
    again = await raw_client(proxy.port)
    await again.send(encode_v1(("203.0.113.7", 1001), destination) + REQUEST)
    assert await again.wait_closed() == b""
    warning = await wait_message(proxy.log, "max_connections_per_src")
    assert warning.startswith("trilb warning: 203.0.113.7:1001 frontend frontend")


# -- a frontend's max_connections, backlog ---------------------------------------------------------


@pytest.mark.parametrize("first_listener", [0, 1])
async def test_frontend_max_connections_waits_in_the_backlog(
    start_backend: StartBackend,
    start_proxy: StartProxy,
    raw_client: StartRawClient,
    first_listener: int,
) -> None:
    """With one slot and two listeners, the second client waits (on either listener) until the
    first leaves: no slot is kept by a listener nobody connects to."""
    backend = await start_backend()
    config = limited(backend, bind=["127.0.0.1:0", "127.0.0.1:0"], max_connections=1)
    proxy = await start_proxy(config=config)
    ports = [address.port for address in proxy.lb.addresses["frontend"]]
    first = await raw_client(ports[first_listener])
    assert await get(first) == 200
    waiting = await raw_client(ports[1 - first_listener])  # the kernel completes the handshake
    await waiting.send(REQUEST)
    assert await get(first) == 200  # the balancer is at work meanwhile ...
    assert traffic(proxy.lb).total_connections == 1  # ... but has not taken the second one
    assert len(backend.requests) == 2
    await first.aclose()
    with trio.fail_after(WAIT):
        response = await waiting.read_response()
    assert response.status == 200
    stats = traffic(proxy.lb)
    assert (stats.total_connections, stats.peak_connections) == (2, 1)


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
async def test_backlog_is_the_listen_backlog(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backend = await start_backend()
    proxy = await start_proxy(config=limited(backend, backlog=7))
    port = proxy.lb.addresses["frontend"][0].port
    result = await trio.run_process(
        ["ss", "-H", "-l", "-t", "-n", "sport", "=", f":{port}"], capture_stdout=True
    )
    (line,) = result.stdout.decode().splitlines()
    # for a listening socket, ss shows the backlog as Send-Q
    state, _, send_q, *_ = line.split()
    assert (state, send_q) == ("LISTEN", "7")


# -- across a reload -------------------------------------------------------------------------------


async def listen_backlog(port: int) -> str:
    result = await trio.run_process(
        ["ss", "-H", "-l", "-t", "-n", "sport", "=", f":{port}"], capture_stdout=True
    )
    (line,) = result.stdout.decode().splitlines()
    return line.split()[2]  # a listening socket's Send-Q: its backlog


async def test_a_reload_is_no_way_around_a_rate_limit(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend, other = await start_backend(), await start_backend()
    login = trilb.Route(
        name="login",
        backend="backend",
        match=trilb.Match(path_prefix=["/login"]),
        rate_limit=trilb.RateLimit(requests=1, period=60.0),
    )
    limit = trilb.RateLimit(requests=3, period=60.0)
    config = limited(backend, routes=[login], rate_limit=limit)
    proxy = await start_proxy(config=config)
    client = await raw_client(proxy.port)
    login_request = b"GET /login HTTP/1.1\r\nHost: test\r\n\r\n"
    assert [await get(client, login_request), await get(client)] == [200, 200]
    # the same limits, another server and weight: the tables go on
    reloaded = make_config([backend, other])
    await proxy.lb.reload(
        attrs.evolve(
            reloaded,
            frontends=[attrs.evolve(reloaded.frontends[0], routes=[login], rate_limit=limit)],
        )
    )
    fresh = await raw_client(proxy.port)
    assert await get(fresh, login_request) == 429  # the route's 1 per minute was used
    assert [await get(fresh) for _ in range(2)] == [200, 429]  # the frontend's 3 too
    # a changed limit starts afresh
    changed = trilb.RateLimit(requests=4, period=60.0)
    await proxy.lb.reload(limited(backend, routes=[login], rate_limit=changed))
    again = await raw_client(proxy.port)
    assert [await get(again) for _ in range(5)] == [200, 200, 200, 200, 429]


async def test_a_reload_keeps_counting_the_open_connections_per_source(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy(config=limited(backend, max_connections_per_src=2))
    first, second = await raw_client(proxy.port), await raw_client(proxy.port)
    assert await get(first) == 200
    assert await get(second) == 200
    await proxy.lb.reload(limited(backend, max_connections_per_src=3))
    # the two still open (on the previous configuration) count against the new limit of 3
    third = await raw_client(proxy.port)
    assert await get(third) == 200
    fourth = await raw_client(proxy.port)
    await fourth.send(REQUEST)
    assert await fourth.wait_closed() == b""
    assert traffic(proxy.lb).denied_connections == 1


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
async def test_a_reload_applies_a_new_backlog_to_a_kept_listener(
    start_backend: StartBackend, start_proxy: StartProxy, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy(config=limited(backend, backlog=7))
    port = proxy.lb.addresses["frontend"][0].port
    assert await listen_backlog(port) == "7"
    await proxy.lb.reload(limited(backend, backlog=11))
    assert proxy.lb.addresses["frontend"][0].port == port  # the same socket
    assert await listen_backlog(port) == "11"
    assert await get(await raw_client(port)) == 200
