"""``trilb serve`` in TCP mode and with the PROXY protocol, against real HAProxy, and its memory
while relaying.

* HAProxy (``mode tcp``, ``send-proxy`` / ``send-proxy-v2``) in front of a trilb HTTP frontend
  with ``accept_proxy``: the backend and trilb's access log see the real client.
* trilb (``mode = "tcp"``, ``send_proxy = "v1"`` / ``"v2"``) in front of an HAProxy ``bind ...
  accept-proxy`` that answers ``%[src]:%[src_port] %[dst]:%[dst_port]``.
* The resident memory (VmRSS) of a trilb process relaying 200 MB is that of one relaying 10 MB,
  and stays bounded when one side reads slowly.

The HAProxy tests skip, saying so, when ``haproxy`` is not on the PATH. Servers on trilb's far
side are threads of the test process (plain sockets); trilb and HAProxy are subprocesses, stopped
in ``finally``.
"""

from __future__ import annotations

import functools
import re
import shutil
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from e2e_support import STARTUP_TIMEOUT, TRILB, TrilbProcess, free_port, stop_process, wait_for

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
#: bound on any one socket operation of a client here
IO_TIMEOUT = 15.0


# -- trilb ----------------------------------------------------------------------------------------


class Trilb(TrilbProcess):
    """A running ``trilb serve``; its frontends bind port 0 and the ports are read from its log."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        super().__init__(proc, out, err)
        self.ports: dict[str, int] = {}

    def rss(self) -> int:
        """Resident memory, bytes (VmRSS of /proc/PID/status)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
        assert match is not None, status
        return int(match.group(1)) * 1024


@contextmanager
def running_trilb(folder: Path, config: str, frontends: tuple[str, ...]) -> Iterator[Trilb]:
    """``trilb serve`` with ``config`` (every bind on 127.0.0.1:0); ready once each of
    ``frontends`` logged the port it listens on."""
    path = folder / "trilb.toml"
    path.write_text(config)
    out, err = folder / "trilb.out", folder / "trilb.err"
    with out.open("wb") as out_file, err.open("wb") as err_file:
        proc = subprocess.Popen(
            [*TRILB, "serve", str(path)],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
        )
    lb = Trilb(proc, out, err)
    try:
        for name in frontends:
            match = lb.wait_output(rf"frontend {name} listening on 127\.0\.0\.1:(\d+) ")
            lb.ports[name] = int(match.group(1))
        yield lb
    finally:
        stop_process(proc)


# -- HAProxy --------------------------------------------------------------------------------------


def haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        pytest.skip(
            "haproxy is not installed: the PROXY protocol interop tests need it on the PATH"
        )
    return path


def haproxy_version() -> tuple[int, int]:
    result = subprocess.run(
        [haproxy(), "-v"], capture_output=True, text=True, timeout=IO_TIMEOUT, check=False
    )
    match = re.search(r"version (\d+)\.(\d+)", result.stdout)
    assert match is not None, result.stdout
    return int(match.group(1)), int(match.group(2))


HAPROXY_DEFAULTS = """
global
    maxconn 100

defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _started_or_exited(proc: subprocess.Popen[bytes], port: int) -> bool:
    return proc.poll() is not None or accepts(port)


@contextmanager
def running_haproxy(folder: Path, config_for_port: Callable[[int], str]) -> Iterator[int]:
    """``haproxy -f cfg -db`` listening on a free port (another one if it lost the port to
    someone else): yields the port."""
    for attempt in range(5):
        port = free_port()
        path = folder / f"haproxy-{attempt}.cfg"
        path.write_text(HAPROXY_DEFAULTS + config_for_port(port))
        log = folder / f"haproxy-{attempt}.log"
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                [haproxy(), "-f", str(path), "-db"],
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(
                functools.partial(_started_or_exited, proc, port),
                STARTUP_TIMEOUT,
                "haproxy to listen",
            )
            if proc.poll() is None:
                yield port
                return
            output = log.read_text()
            if "cannot bind" not in output and "Address already in use" not in output:
                pytest.fail(f"haproxy exited with {proc.returncode}: {output}")
        finally:
            stop_process(proc)
    pytest.fail("no free port for haproxy in 5 attempts")


# -- servers on trilb's far side (threads) --------------------------------------------------------


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def serving(handler: Callable[[socket.socket], None]) -> Iterator[int]:
    """A threaded TCP server on 127.0.0.1 running ``handler(sock)`` per connection."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                handler(self.request)
            except OSError:
                pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=IO_TIMEOUT)


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_to_end(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def head_echo(sock: socket.socket) -> None:
    """An HTTP server answering 200 with the request head it received as the body."""
    sock.settimeout(IO_TIMEOUT)
    head = read_until(sock, b"\r\n\r\n")
    sock.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        + f"Content-Length: {len(head)}\r\n\r\n".encode()
        + head
    )


# -- HAProxy in front of trilb (trilb: accept_proxy) ----------------------------------------------

TRILB_ACCEPTING = """
[frontends.web]
bind = "127.0.0.1:0"
default_backend = "app"
accept_proxy = true
forwarded_for = true

[backends.app]
servers = [{{ name = "b1", address = "127.0.0.1:{backend_port}" }}]
"""

HAPROXY_SENDING = """
frontend fe
    mode tcp
    bind 127.0.0.1:{port}
    default_backend be

backend be
    mode tcp
    server trilb 127.0.0.1:{trilb_port} {send_proxy}
"""


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_haproxy_send_proxy_to_trilb_accept_proxy(tmp_path: Path, send_proxy: str) -> None:
    haproxy()
    with (
        serving(head_echo) as backend_port,
        running_trilb(tmp_path, TRILB_ACCEPTING.format(backend_port=backend_port), ("web",)) as lb,
        running_haproxy(
            tmp_path,
            lambda port: HAPROXY_SENDING.format(
                port=port, trilb_port=lb.ports["web"], send_proxy=send_proxy
            ),
        ) as haproxy_port,
    ):
        with socket.create_connection(("127.0.0.1", haproxy_port), timeout=IO_TIMEOUT) as sock:
            client_port = sock.getsockname()[1]
            sock.sendall(
                b"GET /via-haproxy HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"
            )
            response = read_to_end(sock)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), response
        seen = body.decode("latin-1").lower()
        assert "\r\nx-forwarded-for: 127.0.0.1\r\n" in seen, seen
        # the port the client connected to (HAProxy's), as the header told trilb
        assert f"\r\nx-forwarded-port: {haproxy_port}\r\n" in seen, seen
        # the client's own port: not the one HAProxy connected to trilb from
        line = lb.wait_output(
            r'^127\.0\.0\.1:(\d+) \[[^\]]+\] web app/b1 .* 200 .*"GET /via-haproxy HTTP/1\.1"$'
        )
        assert int(line.group(1)) == client_port, line.group(0)
        assert "connection dropped" not in lb.stdout


# -- trilb in front of HAProxy (trilb: send_proxy) ------------------------------------------------

HAPROXY_ACCEPTING = """
frontend fe
    mode http
    bind 127.0.0.1:{port} accept-proxy
    http-request return status 200 content-type text/plain lf-string "{answer}"
"""
#: what HAProxy answers: the addresses it learnt from the PROXY header
ANSWER = "%[src]:%[src_port] %[dst]:%[dst_port]"

TRILB_SENDING = """
[frontends.db]
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "upstream"

[backends.upstream]
mode = "tcp"
servers = [{{ name = "haproxy", address = "127.0.0.1:{haproxy_port}", send_proxy = "{version}" }}]
"""


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_trilb_send_proxy_to_haproxy_accept_proxy(tmp_path: Path, version: str) -> None:
    if haproxy_version() < (2, 2):
        pytest.skip("http-request return needs HAProxy 2.2 or later")
    with (
        running_haproxy(
            tmp_path, lambda port: HAPROXY_ACCEPTING.format(port=port, answer=ANSWER)
        ) as port,
        running_trilb(
            tmp_path, TRILB_SENDING.format(haproxy_port=port, version=version), ("db",)
        ) as lb,
    ):
        trilb_port = lb.ports["db"]
        with socket.create_connection(("127.0.0.1", trilb_port), timeout=IO_TIMEOUT) as sock:
            client_port = sock.getsockname()[1]
            sock.sendall(b"GET / HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
            response = read_to_end(sock)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), response
        # HAProxy saw the client's own address, and trilb's frontend as the destination
        assert body == f"127.0.0.1:{client_port} 127.0.0.1:{trilb_port}".encode()
        lb.wait_output(
            rf"^127\.0\.0\.1:{client_port} \[[^\]]+\] db upstream/haproxy "
            rf"\d+/\d+/\d+ {len(response)} -- "
        )


# -- memory ---------------------------------------------------------------------------------------

TRILB_TCP = """
[frontends.relay]
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "far"

[backends.far]
mode = "tcp"
servers = [{{ name = "s1", address = "127.0.0.1:{port}" }}]
"""

_BLOCK = bytes(range(256)) * 4096  # 1 MiB


def source_or_sink(sock: socket.socket, stop: threading.Event | None = None) -> None:
    """``SEND n``: send n bytes, then close. ``SINK``: read slowly (64 KiB every 10 ms) until
    the peer is done or ``stop`` is set."""
    sock.settimeout(IO_TIMEOUT)
    command = read_until(sock, b"\n").partition(b"\n")[0].decode().split()
    if command[0] == "SEND":
        left = int(command[1])
        while left > 0:
            piece = _BLOCK[: min(left, len(_BLOCK))]
            sock.sendall(piece)
            left -= len(piece)
    else:
        while sock.recv(65536) and not (stop is not None and stop.is_set()):
            time.sleep(0.01)


def fast_download(port: int, size: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(f"SEND {size}\n".encode())
        buffer = bytearray(MiB)
        got = 0
        while count := sock.recv_into(buffer):
            got += count
    assert got == size


def test_rss_does_not_grow_with_payload_size(tmp_path: Path) -> None:
    with (
        serving(source_or_sink) as port,
        running_trilb(tmp_path, TRILB_TCP.format(port=port), ("relay",)) as lb,
    ):
        relay = lb.ports["relay"]
        for _ in range(3):  # warm up: whatever is allocated once is allocated now
            fast_download(relay, 10 * MiB)
        after_10 = lb.rss()
        started = time.monotonic()
        fast_download(relay, 200 * MiB)
        elapsed = time.monotonic() - started
        after_200 = lb.rss()
        assert after_200 - after_10 < 4 * MiB, (after_10, after_200, elapsed)
        lb.wait_output(r"^127\.0\.0\.1:\d+ \[[^\]]+\] relay far/s1 \d+/\d+/\d+ 209715200 -- ")


def test_rss_stays_bounded_with_a_slow_client(tmp_path: Path) -> None:
    """The server sends as fast as it can, the client takes 64 KiB every 10 ms: trilb must
    not buffer what the client does not take."""
    with (
        serving(source_or_sink) as port,
        running_trilb(tmp_path, TRILB_TCP.format(port=port), ("relay",)) as lb,
    ):
        relay = lb.ports["relay"]
        for _ in range(3):
            fast_download(relay, 10 * MiB)
        baseline = lb.rss()
        samples: list[int] = []
        with socket.create_connection(("127.0.0.1", relay), timeout=IO_TIMEOUT) as sock:
            sock.sendall(f"SEND {1000 * MiB}\n".encode())
            got = 0
            started = time.monotonic()
            while time.monotonic() - started < 4.0:
                got += len(sock.recv(65536))
                time.sleep(0.01)
                if len(samples) < (time.monotonic() - started) / 0.25:
                    samples.append(lb.rss())
        assert got < 100 * MiB  # it really was slow
        assert max(samples) - baseline < 4 * MiB, (baseline, samples)
        # the client left early: trilb logs it and forgets the connection
        lb.wait_output(r"^127\.0\.0\.1:\d+ \[[^\]]+\] relay far/s1 \d+/\d+/\d+ \d+ CD ")


def test_rss_stays_bounded_with_a_slow_server(tmp_path: Path) -> None:
    """The client uploads as fast as it can, the server takes 64 KiB every 10 ms."""
    stop = threading.Event()
    with (
        serving(functools.partial(source_or_sink, stop=stop)) as port,
        running_trilb(tmp_path, TRILB_TCP.format(port=port), ("relay",)) as lb,
    ):
        relay = lb.ports["relay"]
        for _ in range(3):
            fast_download(relay, 10 * MiB)
        baseline = lb.rss()
        samples: list[int] = []
        with socket.create_connection(("127.0.0.1", relay), timeout=IO_TIMEOUT) as sock:
            sock.sendall(b"SINK\n")
            sock.setblocking(False)
            sent = 0
            started = time.monotonic()
            while time.monotonic() - started < 4.0:
                try:
                    sent += sock.send(_BLOCK)
                except BlockingIOError:
                    time.sleep(0.01)  # the buffers are full: trilb does not take more
                if len(samples) < (time.monotonic() - started) / 0.25:
                    samples.append(lb.rss())
            stop.set()  # (else trilb, stopping, would wait for the server to read it all)
        assert sent < 100 * MiB
        assert max(samples) - baseline < 4 * MiB, (baseline, samples)
