"""Re-encryption: trilb speaks TLS to servers, verifying them unless told not to."""

from __future__ import annotations

import functools
import ssl

import h11
import httpx
import pytest
import trio
import trustme
from conftest import StartProxy

import trilb


async def tls_backend(nursery: trio.Nursery, cert: trustme.LeafCert, seen: list[str | None]) -> int:
    """An HTTPS server answering every request with 200 "tls ok"; records the SNI it was asked."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    def on_sni(_: object, name: str | None, __: object) -> None:
        seen.append(name)

    context.sni_callback = on_sni

    async def handle(raw: trio.SocketStream) -> None:
        stream = trio.SSLStream(raw, context, server_side=True)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.EndOfMessage):
                    body = b"tls ok"
                    headers = [("Content-Length", str(len(body)))]
                    await stream.send_all(
                        (conn.send(h11.Response(status_code=200, headers=headers)) or b"")
                        + (conn.send(h11.Data(data=body)) or b"")
                        + (conn.send(h11.EndOfMessage()) or b"")
                    )
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, h11.ProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


def config(port: int, tls: trilb.UpstreamTLS) -> trilb.Config:
    return trilb.Config(
        frontends=[
            trilb.FrontendConfig(name="frontend", bind=["127.0.0.1:0"], default_backend="b")
        ],
        backends=[
            trilb.BackendConfig(
                name="b",
                retries=0,
                servers=[trilb.ServerConfig(name="s", address=f"127.0.0.1:{port}", tls=tls)],
            )
        ],
        log=trilb.LogConfig(target="none"),
    )


@pytest.fixture
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, str]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, str(path)


async def test_verified_with_sni(
    nursery: trio.Nursery, start_proxy: StartProxy, ca_file: tuple[trustme.CA, str]
) -> None:
    ca, path = ca_file
    seen: list[str | None] = []
    port = await tls_backend(nursery, ca.issue_cert("app.internal"), seen)
    proxy = await start_proxy(config=config(port, trilb.UpstreamTLS(ca=path, sni="app.internal")))
    async with httpx.AsyncClient(trust_env=False) as http:
        for _ in range(3):
            response = await http.get(proxy.url + "/")
            assert (response.status_code, response.text) == (200, "tls ok")
    assert seen == ["app.internal"]  # one TLS connection, reused from the pool


async def test_wrong_ca_or_name_is_503_and_logged(
    nursery: trio.Nursery, start_proxy: StartProxy, ca_file: tuple[trustme.CA, str]
) -> None:
    _, path = ca_file
    other = trustme.CA()
    port = await tls_backend(nursery, other.issue_cert("app.internal"), [])
    proxy = await start_proxy(config=config(port, trilb.UpstreamTLS(ca=path, sni="app.internal")))
    async with httpx.AsyncClient(trust_env=False) as http:
        assert (await http.get(proxy.url + "/")).status_code == 503
    assert any("TLS handshake failed" in m for m in proxy.log.messages)


async def test_name_mismatch_is_refused_and_verify_false_accepts(
    nursery: trio.Nursery, start_proxy: StartProxy, ca_file: tuple[trustme.CA, str]
) -> None:
    ca, path = ca_file
    port = await tls_backend(nursery, ca.issue_cert("other.internal"), [])
    strict = await start_proxy(config=config(port, trilb.UpstreamTLS(ca=path, sni="app.internal")))
    lax = await start_proxy(config=config(port, trilb.UpstreamTLS(verify=False)))
    async with httpx.AsyncClient(trust_env=False) as http:
        assert (await http.get(strict.url + "/")).status_code == 503
        assert (await http.get(lax.url + "/")).text == "tls ok"


async def test_unloadable_ca_is_a_config_error(tmp_path: object) -> None:
    bad = trilb.UpstreamTLS(ca="/nonexistent/ca.pem")
    with pytest.raises(trilb.ConfigError) as info:
        async with trilb.open_balancer(config(9, bad)):
            pass  # pragma: no cover
    (problem,) = info.value.problems
    assert problem.key_path == "backends.b.servers[0].tls.ca"
    assert "cannot load it" in problem.message
