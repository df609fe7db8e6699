"""trilb.net: the lean streams keep trio's contract (errors, cancellation, fairness, close)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

from trilb.net import YIELD_EVERY, TCPStream, bind_tcp, bind_unix, connect


def stream_pair() -> tuple[TCPStream, TCPStream]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return TCPStream(a), TCPStream(b)


async def test_send_all_larger_than_the_socket_buffers_waits_for_the_reader() -> None:
    left, right = stream_pair()
    payload = os.urandom(8 * 1024 * 1024)
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(payload):
            received.extend(await right.receive_some(65536))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await left.send_all(payload)
    assert bytes(received) == payload
    left.close()
    right.close()


async def test_eof_half_close_and_readability() -> None:
    left, right = stream_pair()
    assert not right.is_readable()
    await left.send_eof()
    assert right.is_readable()
    assert await right.receive_some(10) == b""
    await right.send_all(b"still open this way")
    assert await left.receive_some(100) == b"still open this way"
    left.close()
    right.close()


async def test_closed_stream_raises_closed_resource_error() -> None:
    left, right = stream_pair()
    await left.aclose()
    left.close()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        await left.receive_some(1)
    with pytest.raises(trio.ClosedResourceError):
        await left.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await left.send_eof()
    with pytest.raises(trio.ClosedResourceError):
        await left.wait_send_all_might_not_block()
    with pytest.raises(trio.ClosedResourceError):
        await left.receive_when_ready(1)
    right.close()


async def test_close_wakes_a_waiting_reader() -> None:
    left, right = stream_pair()

    async def close_soon() -> None:
        await trio.testing.wait_all_tasks_blocked()
        right.close()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_soon)
            with pytest.raises(trio.ClosedResourceError):
                await right.receive_some(10)
    left.close()


async def test_peer_reset_is_broken_resource_error() -> None:
    left, right = stream_pair()
    right.close()

    async def send_until_broken() -> None:
        for _ in range(100):  # the first sends may still be buffered
            await left.send_all(b"x" * 65536)

    with pytest.raises(trio.BrokenResourceError):
        await send_until_broken()
    left.close()


async def test_receive_is_cancellable_and_ready_streams_still_yield() -> None:
    left, right = stream_pair()
    with trio.move_on_after(0.05) as scope:
        await right.receive_some(1)
    assert scope.cancelled_caught
    # Data always ready: the stream must still let other tasks run now and then.
    other_ran = False

    async def other() -> None:
        nonlocal other_ran
        other_ran = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(YIELD_EVERY + 1):
            await left.send_all(b"x")
            await right.receive_some(1)
    assert other_ran
    left.close()
    right.close()


async def test_connect_refused_and_ok() -> None:
    (listener,) = bind_tcp("127.0.0.1", 0)
    port = listener.sock.getsockname()[1]
    with trio.fail_after(10):
        client = await connect(socket.AF_INET, ("127.0.0.1", port))
        server, peer = await listener.accept()
    assert isinstance(peer, tuple)
    await client.send_all(b"hi")
    assert await server.receive_when_ready(10) == b"hi"
    for s in (client, server):
        s.close()
    listener.close()
    with pytest.raises(trio.ClosedResourceError):
        await listener.accept()
    with pytest.raises(OSError, match="refused"):
        await connect(socket.AF_INET, ("127.0.0.1", port))


async def test_unix_listener_replaces_a_stale_socket_but_no_other_file(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    first = bind_unix(path)
    first.close()  # leaves the socket file behind, as a crashed process would
    second = bind_unix(path)
    with trio.fail_after(10):
        client = await connect(socket.AF_UNIX, path)
        server, _ = await second.accept()
    for s in (client, server):
        s.close()
    second.close()
    regular = tmp_path / "not-a-socket"
    regular.write_text("precious")
    with pytest.raises(OSError, match="in use"):
        bind_unix(str(regular))
    assert regular.read_text() == "precious"


async def test_accepted_connections_have_nagle_off() -> None:
    (listener,) = bind_tcp("127.0.0.1", 0)
    with trio.fail_after(10):
        client = await connect(socket.AF_INET, listener.sock.getsockname())
        server, _ = await listener.accept()
    for s in (client, server):
        assert s.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        s.close()
    listener.close()


def fill_send_buffer(stream: TCPStream) -> None:
    """Write until the socket takes no more (the peer is not reading)."""
    chunk = b"x" * 65536
    while True:
        try:
            stream.sock.send(chunk)
        except BlockingIOError:
            return


async def test_a_closing_stream_drops_what_does_not_fit_instead_of_waiting() -> None:
    left, right = stream_pair()
    await left.send_all(b"fits")  # (not closing yet: an ordinary send)
    assert await right.receive_some(10) == b"fits"
    fill_send_buffer(left)
    left.closing = True
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
        await left.send_all(b"no room for this")  # would wait for the reader forever
    await left.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await left.send_all(b"x")
    right.close()
