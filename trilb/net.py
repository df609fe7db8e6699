"""Lean TCP streams for the hot path, on trio's low-level I/O primitives.

``trio.SocketStream`` costs ~13 us for a send and a receive on this kind of machine, of which the
two system calls are ~3 us: the rest is the generality of trio's socket layer (a context manager
per call, a forced yield after every successful operation). A proxy makes four such calls per
request, so trilb drives its sockets directly with ``trio.lowlevel.wait_readable`` /
``wait_writable`` and keeps trio's guarantees in a cheaper form:

* every call checks for cancellation (``checkpoint_if_cancelled``);
* a call that has to wait yields to the scheduler; one that succeeds at once does not, except every
  :data:`YIELD_EVERY` calls, so a connection with data always ready cannot starve the others;
* ``OSError`` becomes ``trio.BrokenResourceError`` and use after close ``trio.ClosedResourceError``,
  at this one choke point, as in trio.

:class:`TCPStream` is a ``trio.abc.HalfCloseableStream``, so ``trio.SSLStream`` can wrap it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

import trio
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    notify_closing,
    wait_readable,
    wait_writable,
)

__all__ = ["YIELD_EVERY", "TCPListener", "TCPStream", "bind_tcp", "bind_unix", "connect"]

#: listen() backlog: connections over max_connections wait here
BACKLOG = 1024

#: successful calls in a row after which a stream yields anyway (fairness between connections)
YIELD_EVERY = 16


class TCPStream(trio.abc.HalfCloseableStream):
    """A connected, non-blocking socket."""

    __slots__ = ("_closed", "_ready_streak", "_waiting", "closing", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._closed = False
        self._ready_streak = 0
        self._waiting = 0  # tasks inside wait_readable/wait_writable on this socket
        #: set just before closing: :meth:`send_all` then never waits for the peer (what does not
        #: fit in the socket buffer now is dropped, with BrokenResourceError), so a last word such
        #: as a TLS close_notify needs no timer to bound it
        self.closing = False

    async def _maybe_yield(self) -> None:
        self._ready_streak += 1
        if self._ready_streak >= YIELD_EVERY:
            self._ready_streak = 0
            await cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        size = max_bytes or 65536
        sock = self.sock
        try:
            try:
                data: bytes | None = sock.recv(size)
            except BlockingIOError:
                # (the wait is outside the handler: an exception being handled would stay alive,
                # traceback and frames, for as long as the client takes to send)
                data = None
            if data is not None:
                await self._maybe_yield()
                return data
            self._ready_streak = 0
            while True:
                self._waiting += 1
                try:
                    await wait_readable(sock)
                finally:
                    self._waiting -= 1
                try:
                    return sock.recv(size)
                except BlockingIOError:
                    continue  # woken spuriously
        except OSError as exc:
            raise self._translate(exc) from exc

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """What is there to read right now, or None if a read would block. Synchronous (no
        checkpoint), for a caller that will wait anyway if nothing is there."""
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        try:
            return self.sock.recv(max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._translate(exc) from exc

    async def receive_when_ready(self, max_bytes: int) -> bytes:
        """Like :meth:`receive_some`, for when data is not expected yet (a response just
        requested): waits for readiness first instead of trying, and failing, to read."""
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        self._ready_streak = 0
        sock = self.sock
        try:
            self._waiting += 1
            try:
                await wait_readable(self.sock)
            finally:
                self._waiting -= 1
            return sock.recv(max_bytes)
        except BlockingIOError:
            return await self.receive_some(max_bytes)  # woken spuriously
        except OSError as exc:
            raise self._translate(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        sock = self.sock
        try:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                await self._maybe_yield()
                return
            self._ready_streak = 0
            if self.closing:
                raise trio.BrokenResourceError("closing: the peer is not reading")
            view = memoryview(data)
            while sent < len(view):
                self._waiting += 1
                try:
                    await wait_writable(self.sock)
                finally:
                    self._waiting -= 1
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    continue
        except OSError as exc:
            raise self._translate(exc) from exc

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        self._waiting += 1
        try:
            await wait_writable(self.sock)
        finally:
            self._waiting -= 1

    async def send_eof(self) -> None:
        await checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise self._translate(exc) from exc

    def is_readable(self) -> bool:
        """True if a read would not block: for an idle connection, the peer closed or spoke."""
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    def close(self) -> None:
        """Close at once (synchronous: usable from ``finally`` and from pool clean-up)."""
        if not self._closed:
            self._closed = True
            if self._waiting:  # wake them with ClosedResourceError; else spare the system call
                notify_closing(self.sock)
            self.sock.close()

    async def aclose(self) -> None:
        """Close at once. Like the other calls that do not have to wait, no forced yield (but
        every :data:`YIELD_EVERY` calls): a TLS stream's close ends here on every connection."""
        self.close()
        await self._maybe_yield()

    def _translate(self, exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
        if self._closed or exc.errno == errno.EBADF:
            return trio.ClosedResourceError("the stream was closed")
        return trio.BrokenResourceError(f"connection broken: {exc}")


class TCPListener:
    """A listening socket (TCP or unix); ``accept`` hands back :class:`TCPStream` objects."""

    __slots__ = ("_closed", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._closed = False

    async def accept(self) -> tuple[TCPStream, object]:
        """The next connection and its peer address. Raises OSError for accept errors (EMFILE)
        and trio.ClosedResourceError once the listener is closed."""
        await checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the listener was closed")
            try:
                conn, address = self.sock.accept()
            except BlockingIOError:
                await wait_readable(self.sock)
                continue
            except OSError as exc:
                if self._closed or exc.errno == errno.EBADF:
                    raise trio.ClosedResourceError("the listener was closed") from exc
                raise
            conn.setblocking(False)  # (TCP_NODELAY it inherits from the listener, on Linux)
            return TCPStream(conn), address

    def accept_nowait(self) -> tuple[TCPStream, object] | None:
        """A pending connection and its peer address, or None when there is none (never
        waits). Errors as :meth:`accept`."""
        if self._closed:
            raise trio.ClosedResourceError("the listener was closed")
        try:
            conn, address = self.sock.accept()
        except BlockingIOError:
            return None
        except OSError as exc:
            if self._closed or exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("the listener was closed") from exc
            raise
        conn.setblocking(False)
        return TCPStream(conn), address

    async def wait_acceptable(self) -> None:
        """Wait until a connection is pending (:meth:`accept_nowait` may still find none: the
        client may have given up). trio.ClosedResourceError once the listener is closed."""
        if self._closed:
            raise trio.ClosedResourceError("the listener was closed")
        await wait_readable(self.sock)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            notify_closing(self.sock)
            self.sock.close()


async def connect(family: int, address: object) -> TCPStream:
    """Open a connection (the caller bounds the wait). Raises OSError when it fails."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(address)  # type: ignore[arg-type]
        if code == errno.EINPROGRESS:
            await wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        else:
            await cancel_shielded_checkpoint()
        if code:
            raise OSError(code, os.strerror(code))
    except BaseException:
        notify_closing(sock)
        sock.close()
        raise
    return TCPStream(sock)


def bind_tcp(
    host: str | None, port: int, *, backlog: int = BACKLOG, reuse_port: bool = False
) -> list[TCPListener]:
    """Listen on ``host``:``port``; ``host=None`` means every address, IPv4 and IPv6 (each its own
    socket, IPv6 ones with IPV6_V6ONLY, as trio.open_tcp_listeners does).

    ``reuse_port``: SO_REUSEPORT, so that other processes of the same user can listen on the same
    address and the kernel spreads new connections over them all (``trilb serve``'s workers)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[TCPListener] = []
    seen = set()
    try:
        for family, type_, proto, _, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                # Accepted connections inherit it: one system call per listener, not per client.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(sockaddr)
                sock.listen(backlog)
            except BaseException:
                sock.close()
                raise
            listeners.append(TCPListener(sock))
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def bind_unix(path: str, *, backlog: int = BACKLOG) -> TCPListener:
    """Listen on a unix socket, replacing a stale socket file (never any other kind of file)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return TCPListener(sock)
