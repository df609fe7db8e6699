"""A two-way byte relay: what a connection becomes after a protocol switch (WebSocket).

Theory of operation. Once a server has answered ``101 Switching Protocols``, the bytes on both
connections belong to a protocol trilb does not speak, so it only relays them. :class:`Tunnel`
runs two pumps in one nursery, one per direction, each a loop of one bounded read
(:data:`RECEIVE_SIZE`) and one write. Nothing is buffered beyond the read in hand: a side that stops
reading stops the other side's pump (TCP backpressure) instead of filling memory.

* **Half-close.** When one side ends its direction (EOF), the other side is told so with
  ``send_eof`` and the other direction goes on until it ends too. A stream that cannot half-close
  (TLS) ends the whole tunnel instead.
* **Inactivity.** The tunnel ends when no byte has moved in either direction for the smaller of the
  two sides' timeouts (``timeout_tunnel`` of the frontend for the client side, of the backend for
  the server side), like HAProxy's ``timeout tunnel``: a WebSocket whose server pushes while the
  client only listens is not idle. The log blames (``cD`` / ``sD``) the side that did not take the
  bytes waiting for it, else the side whose timeout ran out (the client's on a tie).
* **Failures.** A reset or otherwise broken stream ends the tunnel (``CD`` / ``SD`` for the side
  that broke) and cancels the other direction. Both directions ending cleanly is ``--``.

Resource handling: the caller owns both streams and closes them after :meth:`Tunnel.run`, whether it
returned or raised. Cancellation: cancelling :meth:`Tunnel.run` stops both pumps at once.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["RECEIVE_SIZE", "Tunnel"]

#: bytes per read in each direction. WebSocket messages are mostly small and tunnels live long, so
#: a smaller read than the HTTP path's bounds what thousands of open tunnels can hold (at most one
#: read per direction each), while a bulk transfer still moves in large pieces
RECEIVE_SIZE = 64 * 1024

#: the idle deadline moves only when that gains more than this fraction of the timeout (moving a
#: trio deadline costs microseconds, and a WebSocket message can be a few bytes): so a tunnel may
#: idle out up to 1% early, never late
DEADLINE_SLACK = 0.01

CLEAN = "--"


class Tunnel:
    """Relay bytes between ``client`` and ``server`` until both directions have ended.

    ``from_client(n)`` / ``from_server(n)`` are called as each read of ``n`` bytes is relayed,
    so that traffic counters move while a tunnel is open, not only when it ends.
    """

    __slots__ = (
        "_client",
        "_client_timeout",
        "_deadline",
        "_from_client",
        "_from_server",
        "_idle",
        "_scope",
        "_sending",
        "_server",
        "_server_timeout",
        "termination",
    )

    def __init__(
        self,
        client: trio.abc.Stream,
        server: trio.abc.Stream,
        *,
        client_timeout: float,
        server_timeout: float,
        from_client: Callable[[int], None],
        from_server: Callable[[int], None],
    ) -> None:
        self._client = client
        self._server = server
        self._client_timeout = client_timeout
        self._server_timeout = server_timeout
        self._idle = min(client_timeout, server_timeout)
        self._from_client = from_client
        self._from_server = from_server
        self._scope = trio.CancelScope()
        self._deadline = 0.0  # self._scope's deadline, kept here: reading trio's costs too
        #: a pump is blocked writing to the client ([False]) / to the server ([True])
        self._sending = [False, False]
        #: how the tunnel ended (HAProxy termination code), once it has
        self.termination: str | None = None

    def __repr__(self) -> str:
        return f"<Tunnel idle timeout {self._idle:g}s termination={self.termination!r}>"

    async def run(self, *, to_server: bytes = b"", to_client: bytes = b"") -> str:
        """Relay until both directions have ended, a side broke or the tunnel idled out; returns
        the termination code. ``to_server`` / ``to_client`` are bytes already received for the
        other side (sent after a message head, before the switch took effect)."""
        self._deadline = self._scope.deadline = trio.current_time() + self._idle
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, nursery, True, to_server)
                nursery.start_soon(self._pump, nursery, False, to_client)
        if self._scope.cancelled_caught and self.termination is None:
            self.termination = self._idle_termination()
        return self.termination or CLEAN

    async def _pump(self, nursery: trio.Nursery, upstream: bool, data: bytes | bytearray) -> None:
        """One direction: client to server (``upstream``) or server to client."""
        if upstream:
            source, sink, count = self._client, self._server, self._from_client
            source_broke, sink_broke = "CD", "SD"
        else:
            source, sink, count = self._server, self._client, self._from_server
            source_broke, sink_broke = "SD", "CD"
        sending = self._sending
        while True:
            if data:
                sending[upstream] = True  # left set if the idle deadline cuts this write
                try:
                    await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._end(nursery, sink_broke)
                    return
                sending[upstream] = False
                self._touch()
            try:
                data = await source.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._end(nursery, source_broke)
                return
            if not data:
                break
            count(len(data))
            self._touch()
        # The source ended its direction: pass that on, and let the other direction finish.
        if isinstance(sink, trio.abc.HalfCloseableStream):
            try:
                await sink.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._end(nursery, sink_broke)
        else:  # (TLS) the only way to pass an EOF on is to close: the tunnel ends here
            nursery.cancel_scope.cancel()

    def _end(self, nursery: trio.Nursery, termination: str) -> None:
        """A side broke: the first failure names the outcome, and both directions stop."""
        if self.termination is None:
            self.termination = termination
        nursery.cancel_scope.cancel()

    def _touch(self) -> None:
        """Bytes moved: push the idle deadline back (see :data:`DEADLINE_SLACK`)."""
        deadline = trio.current_time() + self._idle
        if deadline - self._deadline > self._idle * DEADLINE_SLACK:
            self._deadline = self._scope.deadline = deadline

    def _idle_termination(self) -> str:
        if self._sending[False]:
            return "cD"  # bytes were waiting for the client, which did not take them
        if self._sending[True]:
            return "sD"
        return "cD" if self._client_timeout <= self._server_timeout else "sD"
