"""Server states, backup servers, per-server connection limits and the backend queue."""

from __future__ import annotations

import httpx
import pytest
import trio
from conftest import Backend, BackendRequest, BackendResponse, StartBackend, StartProxy

import trilb


def config(servers: list[tuple[Backend, dict[str, object]]], **backend: object) -> trilb.Config:
    return trilb.Config(
        frontends=[
            trilb.FrontendConfig(name="frontend", bind=["127.0.0.1:0"], default_backend="b")
        ],
        backends=[
            trilb.BackendConfig(
                name="b",
                servers=[
                    trilb.ServerConfig(name=b.name, address=b.address, **options)  # type: ignore[arg-type]
                    for b, options in servers
                ],
                **backend,  # type: ignore[arg-type]
            )
        ],
        log=trilb.LogConfig(target="none"),
    )


async def served_by(url: str, count: int) -> list[str]:
    names = []
    async with httpx.AsyncClient(trust_env=False) as http:
        for _ in range(count):
            response = await http.get(url)
            names.append(response.json()["server"] if response.status_code == 200 else "503")
    return names


async def test_backup_only_when_no_regular_server_is_usable(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    a, b = await start_backend(name="a"), await start_backend(name="b")
    spare1, spare2 = await start_backend(name="spare1"), await start_backend(name="spare2")
    proxy = await start_proxy(
        config=config([(a, {}), (b, {}), (spare1, {"backup": True}), (spare2, {"backup": True})])
    )
    url = proxy.url + "/"
    assert sorted(set(await served_by(url, 6))) == ["a", "b"]
    proxy.lb.set_server_state("b", "a", "maint")
    proxy.lb.set_server_state("b", "b", "drain")
    assert set(await served_by(url, 4)) == {"spare1"}  # the first backup only
    proxy.lb.set_server_state("b", "spare1", "maint")
    assert set(await served_by(url, 4)) == {"spare2"}
    proxy.lb.set_server_state("b", "spare2", "maint")
    assert await served_by(url, 2) == ["503", "503"]
    proxy.lb.set_server_state("b", "a", "ready")
    assert set(await served_by(url, 3)) == {"a"}
    states = {s.name: s.state for s in proxy.lb.statistics().backend("b").servers}
    assert states == {"a": "UP", "b": "DRAIN", "spare1": "MAINT", "spare2": "MAINT"}
    assert proxy.lb.statistics().backend("b").server("spare1").backup


async def test_all_backups_share_the_load(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    a = await start_backend(name="a")
    spare1, spare2 = await start_backend(name="spare1"), await start_backend(name="spare2")
    proxy = await start_proxy(
        config=config(
            [(a, {}), (spare1, {"backup": True}), (spare2, {"backup": True})], all_backups=True
        )
    )
    proxy.lb.set_server_state("b", "a", "maint")
    assert sorted(await served_by(proxy.url + "/", 4)) == ["spare1"] * 2 + ["spare2"] * 2


async def test_set_server_state_rejects_unknown_states(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    a = await start_backend(name="a")
    proxy = await start_proxy(config=config([(a, {})]))
    with pytest.raises(ValueError, match="ready"):
        proxy.lb.set_server_state("b", "a", "down")
    with pytest.raises(KeyError):
        proxy.lb.set_server_state("b", "nope", "maint")


async def test_max_connections_queues_in_arrival_order(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    release = trio.Event()
    order: list[str] = []

    async def slow(request: BackendRequest) -> BackendResponse:
        order.append(request.target)
        await release.wait()
        return BackendResponse(body=b"done")

    backend = await start_backend(slow, name="a")
    proxy = await start_proxy(config=config([(backend, {"max_connections": 1})]))
    statuses: list[int] = []

    async def get(path: str) -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            statuses.append((await http.get(proxy.url + path)).status_code)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(get, "/1")
            await backend.wait_heads(1)
            for path in ("/2", "/3", "/4"):
                nursery.start_soon(get, path)
                while proxy.lb.statistics().backend("b").queued < int(path[1:]) - 1:
                    await trio.sleep(0.01)  # (polling a condition, not waiting and hoping)
            assert proxy.lb.statistics().backend("b").server("a").traffic.current_requests == 1
            release.set()
    assert order == ["/1", "/2", "/3", "/4"]
    assert statuses == [200, 200, 200, 200]
    assert proxy.lb.statistics().backend("b").queued == 0


async def test_queue_full_and_queue_timeout_are_503(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    release = trio.Event()

    async def slow(request: BackendRequest) -> BackendResponse:
        await release.wait()
        return BackendResponse(body=b"done")

    backend = await start_backend(slow, name="a")
    proxy = await start_proxy(
        config=config(
            [(backend, {"max_connections": 1})],
            max_queue=1,
            timeouts=trilb.Timeouts(queue=0.3),
        )
    )
    results: dict[str, int] = {}

    async def get(path: str) -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            results[path] = (await http.get(proxy.url + path)).status_code

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(get, "/busy")
            await backend.wait_heads(1)
            nursery.start_soon(get, "/queued")
            while proxy.lb.statistics().backend("b").queued < 1:
                await trio.sleep(0.01)
            await get("/rejected")  # the queue holds one: this one is turned away at once
            assert results["/rejected"] == 503
            while "/queued" not in results:  # it times out after timeout_queue
                await trio.sleep(0.01)
            assert results["/queued"] == 503
            release.set()
    assert results["/busy"] == 200


async def test_insert_cookie_keeps_a_client_on_its_server_and_moves_it_when_down(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    a, b = await start_backend(name="a"), await start_backend(name="b")
    cookie = trilb.CookieConfig(name="SRV", httponly=True)
    proxy = await start_proxy(config=config([(a, {"cookie_value": "ida"}), (b, {})], cookie=cookie))
    async with httpx.AsyncClient(trust_env=False, base_url=proxy.url) as http:
        first = await http.get("/")
        assert first.headers["set-cookie"] == "SRV=ida; Path=/; HttpOnly"
        assert first.json()["server"] == "a"
        for _ in range(4):  # the cookie jar sends SRV=ida: always a, no new cookie
            again = await http.get("/")
            assert again.json()["server"] == "a"
            assert "set-cookie" not in again.headers
        # the server never sees trilb's cookie
        assert all("SRV" not in v for n, v in again.json()["headers"] if n.lower() == "cookie")
        proxy.lb.set_server_state("b", "a", "drain")  # draining: sticky clients still go there
        assert (await http.get("/")).json()["server"] == "a"
        proxy.lb.set_server_state("b", "a", "maint")  # gone: redispatched and re-cookied
        moved = await http.get("/")
        assert moved.json()["server"] == "b"
        assert moved.headers["set-cookie"].startswith("SRV=")
        assert moved.headers["set-cookie"] != "SRV=ida; Path=/; HttpOnly"
        assert (await http.get("/")).json()["server"] == "b"


async def test_prefix_cookie_wraps_the_applications_own(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    async def app(request: BackendRequest) -> BackendResponse:
        cookies = [v for n, v in request.headers if n.lower() == "cookie"]
        return BackendResponse(
            headers=[("Set-Cookie", "JSESSIONID=abc123; Path=/")],
            body=(cookies[0] if cookies else "-").encode(),
        )

    a, b = await start_backend(app, name="a"), await start_backend(app, name="b")
    cookie = trilb.CookieConfig(name="JSESSIONID", mode="prefix")
    proxy = await start_proxy(config=config([(a, {}), (b, {})], cookie=cookie))
    async with httpx.AsyncClient(trust_env=False, base_url=proxy.url) as http:
        first = await http.get("/")
        server_id, _, value = first.headers["set-cookie"].partition("=")[2].partition("~")
        assert value.startswith("abc123")
        for _ in range(3):
            response = await http.get("/")
            assert response.text == "JSESSIONID=abc123"  # the prefix is stripped again
        assert server_id


@pytest.mark.parametrize("hash_type", ["map-based", "consistent"])
async def test_hashing_algorithms_keep_a_key_on_one_server(
    start_backend: StartBackend, start_proxy: StartProxy, hash_type: str
) -> None:
    servers = [await start_backend(name=f"s{i}") for i in range(3)]
    for balance in ("uri", "header:X-User", "url_param:id"):
        proxy = await start_proxy(
            config=config([(s, {}) for s in servers], balance=balance, hash_type=hash_type)
        )
        async with httpx.AsyncClient(trust_env=False, base_url=proxy.url) as http:
            seen: dict[str, set[str]] = {}
            for key in [f"k{i}" for i in range(30)] * 3:
                response = await http.get(
                    f"/{key}" if balance == "uri" else f"/?id={key}", headers={"X-User": key}
                )
                seen.setdefault(key, set()).add(response.json()["server"])
        assert all(len(names) == 1 for names in seen.values()), balance
        assert len(set().union(*seen.values())) == 3, balance  # and the keys are spread


async def test_leastconn_sends_new_requests_to_the_idle_server(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    release = trio.Event()

    async def slow(request: BackendRequest) -> BackendResponse:
        if request.target == "/slow":
            await release.wait()
        return BackendResponse(body=b'{"server": "a"}')

    a = await start_backend(slow, name="a")
    b = await start_backend(name="b")
    proxy = await start_proxy(config=config([(a, {}), (b, {})], balance="leastconn"))
    async with httpx.AsyncClient(trust_env=False) as http, trio.open_nursery() as nursery:
        nursery.start_soon(http.get, proxy.url + "/slow")
        await a.wait_heads(1)
        names = [(await http.get(proxy.url + "/")).json()["server"] for _ in range(4)]
        assert names == ["b"] * 4  # a is busy with /slow
        release.set()


async def test_source_stickiness_keeps_a_client_address_on_one_server(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    a, b = await start_backend(name="a"), await start_backend(name="b")
    proxy = await start_proxy(config=config([(a, {}), (b, {})], stick="source"))
    names = await served_by(proxy.url + "/", 6)
    assert len(set(names)) == 1  # roundrobin would alternate; the stick table keeps it
    proxy.lb.set_server_state("b", names[0], "maint")
    moved = await served_by(proxy.url + "/", 3)
    assert len(set(moved)) == 1
    assert moved[0] != names[0]


def checked(servers: list[tuple[Backend, dict[str, object]]], **backend: object) -> trilb.Config:
    """A backend whose active checks pass but run rarely: only passive checks act in a test."""
    check = trilb.HealthCheck(type="tcp", interval=60.0, timeout=1.0)
    return config(servers, health_check=check, **backend)


async def test_passive_layer7_errors_take_a_server_down(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    async def failing(request: BackendRequest) -> BackendResponse:
        return BackendResponse(status=500, body=b'{"server": "a"}')

    a = await start_backend(failing, name="a")
    b = await start_backend(name="b")
    proxy = await start_proxy(config=checked([(a, {}), (b, {})], observe="layer7", error_limit=3))
    async with httpx.AsyncClient(trust_env=False) as http:
        statuses = [(await http.get(proxy.url + "/")).status_code for _ in range(6)]
        assert statuses == [500, 200, 500, 200, 500, 200]  # a's third error in a row: DOWN
        assert [(await http.get(proxy.url + "/")).status_code for _ in range(4)] == [200] * 4
    assert proxy.lb.statistics().backend("b").server("a").state == "DOWN"
    assert any(
        "server b/a is DOWN, reason: Health analyze, info: 3 consecutive errors" in m
        for m in proxy.log.messages
    )


async def test_shutdown_sessions_cuts_requests_of_a_server_marked_down(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    async def app(request: BackendRequest) -> BackendResponse:
        if request.target == "/slow":
            await trio.sleep_forever()
        return BackendResponse(status=503, body=b"overloaded")

    a = await start_backend(app, name="a")
    proxy = await start_proxy(
        config=checked(
            [(a, {})], observe="layer7", error_limit=2, on_marked_down="shutdown-sessions"
        )
    )
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        slow: list[int] = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:

                async def wait_slow() -> None:
                    slow.append((await http.get(proxy.url + "/slow")).status_code)

                nursery.start_soon(wait_slow)
                await a.wait_heads(1)
                assert (await http.get(proxy.url + "/x")).status_code == 503
                assert (await http.get(proxy.url + "/x")).status_code == 503  # 2nd: DOWN
        assert slow == [503]  # cut, answered by trilb since nothing had been sent yet
    assert any("KH" in line for line in proxy.log.access_lines)


async def test_slow_start_ramps_a_returning_server_up(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    a, b = await start_backend(name="a"), await start_backend(name="b")
    proxy = await start_proxy(config=config([(a, {"slow_start": 30.0}), (b, {})]))
    proxy.lb.set_server_state("b", "a", "maint")
    await served_by(proxy.url + "/", 2)  # the balancer sees a out
    proxy.lb.set_server_state("b", "a", "ready")
    names = await served_by(proxy.url + "/", 20)
    assert names.count("a") <= 2  # weight ~1 of 100 at first, rising over 30 s
    assert names.count("b") >= 18
