"""The master/worker link as Trio streams: the I/O around :mod:`trilb.core.control`.

:class:`ControlLink` sends and receives messages on one end of the socket pair;
:class:`Requester` (the master's side) matches replies to requests, so that several requests
(a stats poll, an operator's command, a reload) can be under way on one link at once.
"""

from __future__ import annotations

import collections
import itertools
import socket
from collections.abc import Callable
from typing import Any

import trio

from .core.control import ControlProtocolError, FrameDecoder, Message, encode, request

__all__ = ["ControlLink", "LinkClosed", "Requester", "WorkerRequestError"]

#: bytes read at once: a statistics message of a big configuration arrives in a few reads
_RECEIVE_SIZE = 256 * 1024


class LinkClosed(Exception):
    """The other process closed its end (it exited), or the link broke."""


class WorkerRequestError(Exception):
    """The worker answered a request with an error; the message is the worker's."""


class ControlLink:
    """One end of a master/worker socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._decoder = FrameDecoder()
        self._inbox: collections.deque[Message] = collections.deque()
        self._send_lock = trio.Lock()

    async def send(self, message: Message) -> None:
        """Send one message (messages from several tasks go out whole, one after the other).
        LinkClosed when the other end is gone."""
        data = encode(message)
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise LinkClosed(str(exc)) from None

    async def receive(self) -> Message:
        """The next message. LinkClosed at the end (or on garbage: the link is then useless).
        One task at a time."""
        while not self._inbox:
            try:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise LinkClosed(str(exc)) from None
            if not data:
                raise LinkClosed("closed by the other process")
            try:
                self._inbox.extend(self._decoder.feed(data))
            except ControlProtocolError as exc:
                raise LinkClosed(f"invalid message: {exc}") from None
        return self._inbox.popleft()

    def close(self) -> None:
        self._stream.socket.close()


class _Pending:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Message | None = None


class Requester:
    """Requests over a :class:`ControlLink` and their replies; events go to ``on_event``.

    :meth:`run` must be running (it is the link's only reader) for :meth:`request` to get
    answers; when the link ends, every request waiting and every later one raises LinkClosed."""

    def __init__(self, link: ControlLink, on_event: Callable[[Message], None]) -> None:
        self.link = link
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._closed: str | None = None

    async def request(self, op: str, **arguments: Any) -> Any:
        """Ask the worker; its result. WorkerRequestError with its error message, LinkClosed
        when it went away. (The caller bounds the wait: a worker may be stuck.)"""
        if self._closed is not None:
            raise LinkClosed(self._closed)
        request_id = next(self._ids)
        pending = self._pending[request_id] = _Pending()
        try:
            await self.link.send(request(request_id, op, **arguments))
            await pending.done.wait()
        finally:
            del self._pending[request_id]
        reply = pending.reply
        if reply is None:
            raise LinkClosed(self._closed or "closed")
        if not reply.get("ok"):
            raise WorkerRequestError(str(reply.get("error", "no reason given")))
        return reply.get("result")

    async def run(self) -> None:
        """Read messages until the link ends; then return."""
        try:
            while True:
                message = await self.link.receive()
                if "event" in message:
                    self._on_event(message)
                    continue
                pending = self._pending.get(message.get("id", -1))
                if pending is not None:  # (else the request gave up waiting: a late reply)
                    pending.reply = message
                    pending.done.set()
        except LinkClosed as exc:
            self._closed = str(exc) or "closed"
        finally:
            if self._closed is None:
                self._closed = "closed"
            for pending in self._pending.values():
                pending.done.set()
