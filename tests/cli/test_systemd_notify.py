"""trilb.systemd.Notifier against a real unix datagram socket, as systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trilb.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket in tmp_path: (its NOTIFY_SOCKET value, the socket)."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield str(path), sock


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_stopping_status(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready()
    assert received(sock) == ["READY=1"]
    assert notifier.ready(status="serving 2 frontends")
    assert received(sock) == ["READY=1", "STATUS=serving 2 frontends"]
    assert notifier.stopping()
    assert received(sock) == ["STOPPING=1"]
    assert notifier.status("two\nlines")
    assert received(sock) == ["STATUS=two lines"]  # a newline would start another assignment
    assert notifier.watchdog()
    assert received(sock) == ["WATCHDOG=1"]


def test_reloading_carries_the_monotonic_time(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    notifier = Notifier(address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = received(sock)
    assert first == "RELOADING=1"
    name, _, value = second.partition("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_socket() -> None:
    name = f"trilb-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.ready()
        assert received(sock) == ["READY=1"]
        assert notifier.stopping()
        assert received(sock) == ["STOPPING=1"]


@pytest.mark.parametrize("value", [None, "", "relative/path", "@", "vsock:2:1234"])
def test_without_a_usable_socket_it_does_nothing(value: str | None) -> None:
    environ = {} if value is None else {"NOTIFY_SOCKET": value}
    notifier = Notifier.from_environment(environ)
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.stopping()
    assert not notifier.reloading()
    assert "disabled" in repr(notifier)


def test_a_socket_nobody_listens_on_is_not_an_error(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.enabled
    assert not notifier.ready()  # lost, as with sd_notify; never raised


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 2.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], interval: float | None) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "/run/nowhere", **environ})
    assert notifier.watchdog_interval == interval


async def test_run_watchdog_pings_at_half_the_interval(
    notify_socket: tuple[str, socket.socket],
) -> None:
    address, sock = notify_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(notifier.run_watchdog)
        for _ in range(3):
            # (the socket's 5 s timeout bounds the wait, should no ping come)
            assert await trio.to_thread.run_sync(sock.recv, 4096) == b"WATCHDOG=1"
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started >= 0.2  # three pings, 0.1 s apart


async def test_run_watchdog_without_one_returns_at_once(
    notify_socket: tuple[str, socket.socket],
) -> None:
    with trio.fail_after(5):
        await Notifier(notify_socket[0]).run_watchdog()
        await Notifier(None, watchdog_interval=1.0).run_watchdog()
