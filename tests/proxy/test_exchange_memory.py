"""What an exchange leaves for the garbage collector, and what a slow reader pins (issue 9).

* **No reference cycles.** A request that ends badly (a slow POST cut, a client gone mid-body, a
  malformed chunked body, a server answering garbage or nothing) must leave no cycle of trilb
  objects: its connection's objects are long-lived, so a cycle among them waits for a *full*
  collection (rare under :func:`trilb.gctune.tune_for_serving`), and every cycle collected makes
  the collector's pauses longer. Each test runs its scenario with the collector off, then
  collects with ``gc.DEBUG_SAVEALL`` and looks for trilb frames and objects in what was freed.
* **Slow readers.** A client that stops reading leaves next to nothing of the response waiting in
  trilb (body reads are sized to the room in its socket buffer), where a ``RECEIVE_SIZE`` read
  used to wait: measured with ``tracemalloc`` once every task is blocked; the bodies then arrive
  whole once the clients read.

Waits are on events and ``trio.testing.wait_all_tasks_blocked``, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import gc
import hashlib
import socket
import tracemalloc
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import (
    WAIT,
    BackendRequest,
    BackendResponse,
    MisbehavingBackends,
    Proxy,
    RawClient,
    StartBackend,
    StartProxy,
    StartRawClient,
    generated_chunks,
    generated_sha256,
)

import trilb
from trilb.http_exchange import HEAD_READ

TRILB_DIR = str(Path(trilb.__file__).parent)


def _from_trilb(obj: object) -> str | None:
    """How ``obj`` (found in cyclic garbage) belongs to trilb, if it does."""
    if isinstance(obj, types.FrameType) and obj.f_code.co_filename.startswith(TRILB_DIR):
        return f"frame of {obj.f_code.co_qualname}"
    if type(obj).__module__.startswith("trilb."):
        return f"{type(obj).__qualname__} object"
    return None


@contextmanager
def cyclic_garbage() -> Iterator[list[str]]:
    """Run the block with the collector off; then the trilb objects that only a collection
    freed (that were in reference cycles) are in the list it gave."""
    found: list[str] = []
    gc.collect()
    gc.disable()
    try:
        yield found
    finally:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            found.extend(sorted(filter(None, map(_from_trilb, gc.garbage))))
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
            gc.enable()
            gc.collect()


async def _access_line(proxy: Proxy, count: int = 1) -> None:
    await proxy.log.wait_access_lines(count)


def _termination(proxy: Proxy, index: int = 0) -> str:
    """The termination state (2 letters) of an access-log line (HAProxy's format)."""
    return proxy.log.access_lines[index].split()[9][:2]


# -- no reference cycles --------------------------------------------------------------------------


async def test_a_slow_post_cut_at_timeout_client_leaves_no_cycle(
    start_proxy: StartProxy, start_backend: StartBackend, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend], timeouts=trilb.Timeouts(client=0.3))
    with cyclic_garbage() as garbage:
        client = await raw_client(proxy.port)
        await client.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        await _access_line(proxy)
        await client.wait_closed()
        await client.aclose()
    assert _termination(proxy) == "cD"
    assert garbage == []


async def test_a_client_gone_mid_body_leaves_no_cycle(
    start_proxy: StartProxy, start_backend: StartBackend, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend])
    with cyclic_garbage() as garbage:
        client = await raw_client(proxy.port)
        await client.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        await backend.wait_heads(1)
        await client.aclose()
        await _access_line(proxy)
    assert _termination(proxy) == "CD"
    assert garbage == []


async def test_a_malformed_chunked_body_leaves_no_cycle(
    start_proxy: StartProxy, start_backend: StartBackend, raw_client: StartRawClient
) -> None:
    backend = await start_backend()
    proxy = await start_proxy([backend])
    with cyclic_garbage() as garbage:
        client = await raw_client(proxy.port)
        await client.send(
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"
        )
        await _access_line(proxy)
        await client.wait_closed()
        await client.aclose()
    assert _termination(proxy) == "PD"
    assert garbage == []


@pytest.mark.parametrize("kind", ["garbage", "close_without_answer"])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_bad_answer_leaves_no_cycle(
    start_proxy: StartProxy,
    misbehaving: MisbehavingBackends,
    raw_client: StartRawClient,
    kind: str,
    method: str,
) -> None:
    proxy = await start_proxy([await getattr(misbehaving, kind)()])
    with cyclic_garbage() as garbage:
        client = await raw_client(proxy.port)
        body = b"abc" if method == "POST" else b""
        await client.send(
            f"{method} /x HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        response = await client.read_response()
        await _access_line(proxy)
        await client.aclose()
    assert response.status == 502
    assert garbage == []


async def test_a_slow_reader_cut_at_timeout_client_leaves_no_cycle(
    start_proxy: StartProxy, start_backend: StartBackend
) -> None:
    size = 64 * 1024 * 1024  # far more than the socket buffers hold

    async def handler(request: BackendRequest) -> BackendResponse:
        return BackendResponse(
            headers=[("Content-Length", str(size))], body=lambda: generated_chunks(size)
        )

    proxy = await start_proxy([await start_backend(handler)], timeouts=trilb.Timeouts(client=0.3))
    with cyclic_garbage() as garbage:
        stream = await _slow_reader(proxy.port)
        await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await _access_line(proxy)
        await stream.aclose()
    assert _termination(proxy) == "cD"
    assert garbage == []


async def test_normal_requests_leave_no_cycle(
    start_proxy: StartProxy, start_backend: StartBackend, raw_client: StartRawClient
) -> None:
    proxy = await start_proxy([await start_backend()])
    with cyclic_garbage() as garbage:
        client = await raw_client(proxy.port)
        for number in range(3):
            await client.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await client.read_response()).status == 200
            await client.send(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            assert (await client.read_response()).status == 200
            await _access_line(proxy, 2 * number + 2)
        await client.aclose()
    assert garbage == []


# -- slow readers ---------------------------------------------------------------------------------


async def _slow_reader(port: int) -> trio.SocketStream:
    """A client with a tiny receive buffer and an Ethernet MSS (as in bench/slow_clients.py):
    with loopback's 64 KiB MSS Linux would give trilb's side a 4 MiB send buffer at once."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


def _traced_in_trilb(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes allocated (and not freed) with trilb code anywhere on the stack."""
    only = snapshot.filter_traces([tracemalloc.Filter(True, f"{TRILB_DIR}/*", all_frames=True)])
    return sum(stat.size for stat in only.statistics("filename"))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_client_that_stops_reading_pins_little_of_the_response(
    start_proxy: StartProxy, start_backend: StartBackend, chunked: bool
) -> None:
    readers = 4
    size = 16 * 1024 * 1024

    async def handler(request: BackendRequest) -> BackendResponse:
        headers = [] if chunked else [("Content-Length", str(size))]
        return BackendResponse(headers=headers, body=lambda: generated_chunks(size))

    proxy = await start_proxy([await start_backend(handler)], timeouts=trilb.Timeouts(client=WAIT))
    streams: list[trio.SocketStream] = []
    try:
        tracemalloc.start(64)
        try:
            before = _traced_in_trilb(tracemalloc.take_snapshot())
            for _ in range(readers):
                streams.append(stream := await _slow_reader(proxy.port))
                await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            # Every task blocked: trilb waits on the clients, the backend on trilb.
            with trio.fail_after(WAIT):
                await trio.testing.wait_all_tasks_blocked(cushion=0.2)
            pinned = _traced_in_trilb(tracemalloc.take_snapshot()) - before
        finally:
            tracemalloc.stop()
        # Each reader's session objects: some 15 KiB. It used to be 130-170 KiB: a RECEIVE_SIZE
        # read (and copies of it) waiting for the client.
        assert pinned < readers * HEAD_READ // 2

        # The clients read now: each gets the whole body.
        async def read_all(stream: trio.SocketStream) -> None:
            response = await RawClient(stream).read_response()
            assert hashlib.sha256(response.body).hexdigest() == generated_sha256(size)

        with trio.fail_after(WAIT * 3):
            async with trio.open_nursery() as nursery:
                for stream in streams:
                    nursery.start_soon(read_all, stream)
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)
    await proxy.log.wait_access_lines(readers)
    assert [_termination(proxy, i) for i in range(readers)] == ["--"] * readers
