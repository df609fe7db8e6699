"""``trilb demo``: a balancer in front of two small in-process web servers, no setup needed."""

from __future__ import annotations

import functools
import html
from pathlib import Path

import h11
import trio

from .balancer import Balancer, serve
from .config import (
    BackendConfig,
    Config,
    FrontendConfig,
    RedirectHTTPS,
    ServerConfig,
    TLSConfig,
)
from .devcerts import write_dev_certs
from .logsink import LogSink

__all__ = ["run_demo", "serve_demo_backend"]

#: demo backends read at most this much per request head (they are toys, but bounded toys)
_MAX_HEAD = 16 * 1024


def _page(name: str, request: h11.Request, client: str) -> bytes:
    headers = "".join(
        f"<tr><td>{html.escape(k.decode())}</td><td>{html.escape(v.decode('latin-1'))}</td></tr>"
        for k, v in request.headers.raw_items()
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>trilb demo</title>"
        "<style>body{font-family:sans-serif;margin:2em}"
        "td{padding:0 1em;font-family:monospace}</style>"
        f"</head><body><h1>Served by {html.escape(name)}</h1>"
        "<p>Reload the page: trilb spreads requests round-robin over the demo backends.</p>"
        f"<p>The backend saw the connection from {html.escape(client)} and these headers:</p>"
        f"<table>{headers}</table></body></html>\n"
    ).encode()


async def serve_demo_backend(name: str, stream: trio.SocketStream) -> None:
    """One connection to a demo backend: answers every request with a page naming itself."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
    peer = stream.socket.getpeername()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                with trio.move_on_after(30):
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                return
            if isinstance(event, h11.Request):
                body = _page(name, event, f"{peer[0]}:{peer[1]}")
                response = h11.Response(
                    status_code=200,
                    headers=[
                        ("Content-Type", "text/html; charset=utf-8"),
                        ("Content-Length", str(len(body))),
                        ("X-Served-By", name),
                    ],
                )
                await stream.send_all(
                    (conn.send(response) or b"") + (conn.send(h11.Data(data=body)) or b"")
                )
            elif isinstance(event, h11.EndOfMessage):
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                if conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return
    except (h11.ProtocolError, trio.BrokenResourceError):
        return
    finally:
        await trio.aclose_forcefully(stream)


def demo_config(port: int, backend_ports: list[int], certificate: Path | None = None) -> Config:
    """Plain HTTP on ``port``; with a ``certificate``, HTTPS there and a plain frontend on the
    next port that redirects to it."""
    if certificate is None:
        frontends = [
            FrontendConfig(
                name="demo", bind=[f"127.0.0.1:{port}"], default_backend="demo", forwarded_for=True
            )
        ]
    else:
        frontends = [
            FrontendConfig(
                name="demo",
                bind=[f"127.0.0.1:{port}"],
                default_backend="demo",
                forwarded_for=True,
                tls=TLSConfig(certificates=[str(certificate)]),
                hsts="max-age=300",
            ),
            FrontendConfig(
                name="demo-http",
                bind=[f"127.0.0.1:{port + 1 if port else 0}"],
                redirect_https=RedirectHTTPS(),
            ),
        ]
    return Config(
        frontends=frontends,
        backends=[
            BackendConfig(
                name="demo",
                servers=[
                    ServerConfig(name=f"demo-{i + 1}", address=f"127.0.0.1:{p}")
                    for i, p in enumerate(backend_ports)
                ],
            )
        ],
    )


async def run_demo(
    port: int = 8080,
    backends: int = 2,
    *,
    log: LogSink,
    certs_dir: Path | None = None,
    task_status: trio.TaskStatus[Balancer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start ``backends`` demo servers and a balancer on 127.0.0.1:``port`` in front of them;
    with ``certs_dir``, over HTTPS with a development certificate made there (``trilb certs``)."""
    certificate = None
    if certs_dir is not None:
        certs = write_dev_certs(certs_dir, ["localhost", "127.0.0.1", "::1"])
        certificate = certs.cert_path
        print(f"trust {certs.ca_path} to see no warning, e.g. curl --cacert {certs.ca_path}")
    async with trio.open_nursery() as nursery:
        ports = []
        for i in range(backends):
            handler = functools.partial(serve_demo_backend, f"demo-{i + 1}")
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
            )
            ports.append(listeners[0].socket.getsockname()[1])
        lb: Balancer = await nursery.start(
            functools.partial(serve, demo_config(port, ports, certificate), log=log)
        )
        scheme, host = ("https", "localhost") if certificate else ("http", "127.0.0.1")
        url = f"{scheme}://{host}:{lb.addresses['demo'][0].port}/"
        log.info(f"demo: {backends} backends on ports {', '.join(map(str, ports))}")
        print(f"trilb demo is running: open {url}  (Ctrl-C to stop)", flush=True)
        task_status.started(lb)
        await trio.sleep_forever()
