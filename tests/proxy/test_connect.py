"""CONNECT, when a frontend allows it: passed on to the server, a 2xx makes a tunnel."""

from __future__ import annotations

import functools

import trio
from conftest import StartProxy

import trilb


async def forward_proxy(stream: trio.SocketStream) -> None:
    """A stand-in forward proxy: answers CONNECT with 200, then echoes what it gets."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        head += chunk
    request_line = head.split(b"\r\n", 1)[0]
    if not request_line.startswith(b"CONNECT tunnel.test:443 "):
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        return
    await stream.send_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
    async with stream:
        while data := await stream.receive_some(4096):
            await stream.send_all(data)


async def test_connect_becomes_a_tunnel_when_allowed(
    nursery: trio.Nursery, start_proxy: StartProxy
) -> None:
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, forward_proxy, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    config = trilb.Config(
        frontends=[
            trilb.FrontendConfig(
                name="frontend", bind=["127.0.0.1:0"], default_backend="p", allow_connect=True
            )
        ],
        backends=[
            trilb.BackendConfig(
                name="p", servers=[trilb.ServerConfig(name="p", address=f"127.0.0.1:{port}")]
            )
        ],
        log=trilb.LogConfig(target="none"),
    )
    proxy = await start_proxy(config=config)
    with trio.fail_after(10):
        client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with client:
            await client.send_all(
                b"CONNECT tunnel.test:443 HTTP/1.1\r\nHost: tunnel.test:443\r\n\r\nearly"
            )
            received = b""
            while b"early" not in received:
                received += await client.receive_some(4096)
            head = received.split(b"\r\n\r\n", 1)[0]
            assert head.startswith(b"HTTP/1.1 200 Connection Established")
            assert b"content-length" not in head.lower()
            await client.send_all(b"ping")
            echoed = b""
            while echoed != b"ping":
                echoed += await client.receive_some(4096)
            await client.send_eof()
            assert await client.receive_some(4096) == b""
