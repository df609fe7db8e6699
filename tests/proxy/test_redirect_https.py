"""``redirect_https`` on a plain frontend and ``hsts`` on a TLS one, through real sockets."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import trio
import trustme
from conftest import Backend, RawClient, StartBackend, StartProxy

import trilb


def tls_config(
    backend: Backend, cert_path: Path, *, redirect: trilb.RedirectHTTPS, hsts: str | None = None
) -> trilb.Config:
    return trilb.Config(
        frontends=[
            trilb.FrontendConfig(name="plain", bind=["127.0.0.1:0"], redirect_https=redirect),
            trilb.FrontendConfig(
                name="secure",
                bind=["127.0.0.1:0"],
                default_backend="app",
                forwarded_for=True,
                tls=trilb.TLSConfig(certificates=[str(cert_path)]),
                hsts=hsts,
            ),
        ],
        backends=[
            trilb.BackendConfig(
                name="app", servers=[trilb.ServerConfig(name="s1", address=backend.address)]
            )
        ],
        log=trilb.LogConfig(target="none"),
    )


def issue(tmp_path: Path) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path / "site.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(path))
    return ca, path


async def raw(port: int) -> RawClient:
    return RawClient(await trio.open_tcp_stream("127.0.0.1", port))


async def test_redirects_to_the_tls_frontends_real_port(
    tmp_path: Path, start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    _, cert = issue(tmp_path)
    backend = await start_backend()
    proxy = await start_proxy(config=tls_config(backend, cert, redirect=trilb.RedirectHTTPS()))
    plain = proxy.lb.addresses["plain"][0].port
    secure = proxy.lb.addresses["secure"][0].port
    client = await raw(plain)
    await client.send(
        b"GET /a/b?c=1 HTTP/1.1\r\nHost: localhost:" + str(plain).encode() + b"\r\n\r\n"
    )
    response = await client.read_response()
    assert response.status == 301
    assert response.header("location") == [f"https://localhost:{secure}/a/b?c=1"]
    # keep-alive goes on after a redirect; other methods get 308
    await client.send(b"DELETE /x HTTP/1.1\r\nHost: example.test\r\n\r\n")
    response = await client.read_response()
    assert response.status == 308
    assert response.header("location") == [f"https://example.test:{secure}/x"]
    await client.stream.aclose()
    assert backend.requests == []
    assert [line.split()[3] for line in proxy.log.access_lines[:1]] == ["plain/<NOSRV>"]


async def test_explicit_port_and_code_and_a_body_closes(
    tmp_path: Path, start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    _, cert = issue(tmp_path)
    backend = await start_backend()
    redirect = trilb.RedirectHTTPS(port=443, code=302)
    proxy = await start_proxy(config=tls_config(backend, cert, redirect=redirect))
    client = await raw(proxy.lb.addresses["plain"][0].port)
    await client.send(b"POST /form HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\nhello")
    response = await client.read_response()
    assert response.status == 302
    assert response.header("location") == ["https://shop.test/form"]
    assert response.header("connection") == ["close"]
    assert await client.wait_closed() == b""
    await client.stream.aclose()


async def test_hsts_and_forwarded_proto_on_the_tls_frontend(
    tmp_path: Path, start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    ca, cert = issue(tmp_path)
    backend = await start_backend()
    config = tls_config(backend, cert, redirect=trilb.RedirectHTTPS(), hsts="max-age=63072000")
    proxy = await start_proxy(config=config)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    port = proxy.lb.addresses["secure"][0].port
    async with httpx.AsyncClient(verify=context, trust_env=False) as http:
        response = await http.get(
            f"https://localhost:{port}/", headers={"X-Forwarded-Proto": "http"}
        )
    assert response.status_code == 200
    assert response.headers["strict-transport-security"] == "max-age=63072000"
    seen = dict(response.json()["headers"])
    assert seen["X-Forwarded-Proto"] == "https"
