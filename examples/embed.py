"""Embedding trilb in a Trio application, next to the application's own tasks.

Run:  python examples/embed.py
It starts two tiny web servers (the app's own tasks), a trilb balancer in front of them on a
free port, makes a few requests through it, prints the statistics, and drains the balancer.
"""

from __future__ import annotations

import functools

import trio

import trilb
from trilb.demo import serve_demo_backend


async def fetch(port: int) -> str:
    """A minimal HTTP client, so the example needs nothing beyond trilb."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    served_by = [line for line in head.split("\r\n") if line.lower().startswith("x-served-by")]
    return f"{head.splitlines()[0]}  {served_by[0] if served_by else ''}"


async def main() -> None:
    async with trio.open_nursery() as nursery:
        # The application's own tasks: here, two backends.
        ports = []
        for name in ("app-1", "app-2"):
            listeners = await nursery.start(
                functools.partial(
                    trio.serve_tcp, functools.partial(serve_demo_backend, name), 0, host="127.0.0.1"
                )
            )
            ports.append(listeners[0].socket.getsockname()[1])

        config = trilb.Config(
            frontends=[
                trilb.FrontendConfig(
                    name="web", bind=["127.0.0.1:0"], default_backend="app", forwarded_for=True
                )
            ],
            backends=[
                trilb.BackendConfig(
                    name="app",
                    servers=[
                        trilb.ServerConfig(name=f"s{i}", address=f"127.0.0.1:{p}")
                        for i, p in enumerate(ports, 1)
                    ],
                )
            ],
            log=trilb.LogConfig(target="stderr"),
        )
        lb: trilb.Balancer = await nursery.start(trilb.serve, config)
        port = lb.addresses["web"][0].port
        print(f"balancer listening on 127.0.0.1:{port}")

        for _ in range(4):
            print(await fetch(port))

        stats = lb.statistics()
        for server in stats.backend("app").servers:
            print(f"{server.name}: {server.traffic.total_requests} requests")

        await lb.drain(grace=5)  # graceful: serve() returns once in-flight requests finished
        nursery.cancel_scope.cancel()  # stop the application's own tasks too


if __name__ == "__main__":
    trio.run(main)
