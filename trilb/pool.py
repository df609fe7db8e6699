"""Pooled keep-alive connections to one server.

"Decide, then do" (as in httpcore): :class:`IdlePool` is synchronous bookkeeping that hands back the
connection to use and the connections to close; the caller performs the closing. So a cancellation
can never leave the pool half-updated.
"""

from __future__ import annotations

import collections

import trio

from .net import TCPStream

__all__ = ["IdlePool", "ServerConnection"]

#: a connection idle for less than this is reused without first checking that the server has not
#: closed it (a syscall per request otherwise). Servers close idle connections after seconds
#: (Apache 5 s, nginx 75 s), and the rare loser of the race is retried when that is safe.
TRUST_IDLE = 1.0


class ServerConnection:
    """A connection to a server. (Each response gets a fresh h11 parser, so nothing but the
    stream carries over from one request to the next.)"""

    __slots__ = ("idle_since", "stream", "transport")

    def __init__(self, transport: TCPStream, stream: trio.abc.Stream | None = None) -> None:
        self.transport = transport
        #: what requests and responses go through: the transport, or TLS over it
        self.stream: trio.abc.Stream = transport if stream is None else stream
        self.idle_since = 0.0

    async def receive_when_ready(self, max_bytes: int) -> bytes:
        """A read when no data is expected yet (the cheap path of :class:`TCPStream`)."""
        if self.stream is self.transport:
            return await self.transport.receive_when_ready(max_bytes)
        return bytes(await self.stream.receive_some(max_bytes))

    def looks_closed(self) -> bool:
        """An idle connection with something to read has been closed (or spoken out of turn) by
        the server: either way it must not carry a request."""
        return self.transport.is_readable()

    def close(self) -> None:
        """Close now, without the checkpoint of ``aclose`` (pool clean-up is synchronous; a TLS
        connection is closed without close_notify, as HAProxy does for idle ones)."""
        self.transport.close()


class IdlePool:
    """Idle connections to one server, most recently used first (the warmest, least likely to
    have been closed by the server's own keep-alive timeout)."""

    __slots__ = ("_idle", "idle_timeout", "max_idle")

    def __init__(self, max_idle: int, idle_timeout: float) -> None:
        self._idle: collections.deque[ServerConnection] = collections.deque()
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout

    def __len__(self) -> int:
        return len(self._idle)

    def take(self, now: float) -> tuple[ServerConnection | None, list[ServerConnection]]:
        """A live idle connection (or None), and the dead or expired ones to close."""
        discard: list[ServerConnection] = []
        idle = self._idle
        while idle:
            conn = idle.pop()
            idle_for = now - conn.idle_since
            if idle_for > self.idle_timeout or (idle_for > TRUST_IDLE and conn.looks_closed()):
                discard.append(conn)
                continue
            discard.extend(self._expire(now))
            return conn, discard
        return None, discard

    def put(self, conn: ServerConnection, now: float) -> list[ServerConnection]:
        """Keep ``conn`` for reuse; returns the connections that must be closed instead."""
        conn.idle_since = now
        self._idle.append(conn)
        discard = self._expire(now)
        while len(self._idle) > self.max_idle:
            discard.append(self._idle.popleft())
        return discard

    def _expire(self, now: float) -> list[ServerConnection]:
        idle = self._idle
        expired = []
        while idle and now - idle[0].idle_since > self.idle_timeout:
            expired.append(idle.popleft())
        return expired

    def drain(self) -> list[ServerConnection]:
        """Everything, for shutdown."""
        conns = list(self._idle)
        self._idle.clear()
        return conns
