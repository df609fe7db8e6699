"""What every client connection of a frontend knows, whatever its mode (HTTP or TCP): who the
client is, where it connected to, what TLS told, and the PROXY header its ``send_proxy`` server
connections start with."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from .proxy_header import header_for_server, local_address

if TYPE_CHECKING:
    from .frontend import FrontendRuntime

__all__ = ["ClientConnection"]


class ClientConnection:
    """The part of :class:`~trilb.http_proxy.ClientSession` and
    :class:`~trilb.tcp_proxy.TCPSession` they share."""

    __slots__ = (
        "accepted",
        "alpn",
        "client_ip",
        "client_port",
        "destination",
        "frontend",
        "log",
        "requests",
        "sni",
        "stream",
        "tls",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        frontend: FrontendRuntime,
        peer: tuple[str, int],
        *,
        tls: bool,
        sni: str | None,
        alpn: str | None,
        destination: tuple[str, int] | None,
    ) -> None:
        self.stream = stream
        self.frontend = frontend
        self.client_ip, self.client_port = peer
        self.tls = tls
        #: the TLS server name the client asked for (terminated here, or read in passthrough)
        self.sni = sni
        self.alpn = alpn
        #: where the client connected to (from a PROXY header, else looked up when needed)
        self.destination = destination
        self.log = frontend.log
        counters = frontend.counters  # (the frontend counted this connection in; its peak here)
        if counters.current_connections > counters.peak_connections:
            counters.peak_connections = counters.current_connections
        #: for ``show sessions``: when it started (monotonic), requests answered
        self.accepted = time.monotonic()
        self.requests = 0

    def proxy_header(self, version: str) -> bytes:
        """The PROXY header a ``send_proxy`` server connection of this client starts with."""
        if self.destination is None:
            self.destination = local_address(self.stream)
        return header_for_server(
            version,
            (self.client_ip, self.client_port),
            self.destination,
            authority=self.sni,
            alpn=self.alpn,
        )
