"""What the end-to-end tests share: a backend server run as a subprocess, polling with a
deadline, stopping what a test started, free ports.

(A module, not a ``conftest.py``: without ``__init__.py`` files a second conftest would shadow
``tests/proxy/conftest.py`` for ``from conftest import ...``.)
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = [
    "BACKEND_SCRIPT",
    "PROMPTLY",
    "STARTUP_TIMEOUT",
    "TRILB",
    "TrilbProcess",
    "free_port",
    "start_backend_process",
    "stop_process",
    "wait_for",
]

#: how long any subprocess may take to become ready on a loaded machine
STARTUP_TIMEOUT = 15.0

TRILB = [sys.executable, "-m", "trilb"]

#: how long a running process may take to react (answer, exit after a signal)
PROMPTLY = 10.0

#: A small h11 server: ``python backend.py DIR NAME [--echo-proto]``. It answers every request
#: with ``NAME TARGET`` (and the X-Forwarded-Proto it saw, with --echo-proto) and an
#: ``X-Served-By: NAME`` header; ``/missing`` gets 404, ``/fail`` 503; ``/no-length*`` is sent
#: without Content-Length (read until close); ``/slow*`` touches ``DIR/slow-started`` and
#: ``DIR/NAME.slow`` and answers once ``DIR/release`` exists. It writes its port to
#: ``DIR/NAME.port`` when it listens.
BACKEND_SCRIPT = r"""
import os
import sys
from pathlib import Path

import h11
import trio

DIR = Path(sys.argv[1])
NAME = sys.argv[2]
ECHO_PROTO = "--echo-proto" in sys.argv[3:]
STATUS = {"/missing": 404, "/fail": 503}


async def handle(stream):
    conn = h11.Connection(h11.SERVER)
    target, proto = "", "-"
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                target = event.target.decode()
                proto = "-"
                for name, value in event.headers:
                    if name == b"x-forwarded-proto":
                        proto = value.decode()
            elif isinstance(event, h11.EndOfMessage):
                if target.startswith("/slow"):
                    (DIR / "slow-started").touch()
                    (DIR / f"{NAME}.slow").touch()
                    # a backend, not a test: polling the file system is its way to be told
                    while not (DIR / "release").exists():
                        await trio.sleep(0.02)
                body = f"{NAME} {target} {proto}\n" if ECHO_PROTO else f"{NAME} {target}\n"
                body = body.encode()
                headers = [("X-Served-By", NAME)]
                if not target.startswith("/no-length"):
                    headers.insert(0, ("Content-Length", str(len(body))))
                status = STATUS.get(target, 200)
                out = conn.send(h11.Response(status_code=status, headers=headers))
                out += conn.send(h11.Data(data=body))
                out += conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def main():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    tmp = DIR / f"{NAME}.port.tmp"
    tmp.write_text(str(port))
    os.replace(tmp, DIR / f"{NAME}.port")
    await trio.serve_listeners(handle, listeners)


trio.run(main)
"""


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


class TrilbProcess:
    """A ``trilb`` subprocess whose output goes to files (no pipe can fill up)."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.proc = proc
        self.out = out
        self.err = err

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def wait_output(self, pattern: str, timeout: float = STARTUP_TIMEOUT) -> re.Match[str]:
        """The first match of ``pattern`` in the output, once it is there; fails the test when
        the process has exited without writing it."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            exited = self.proc.poll() is not None  # (before reading: its last words count)
            match = re.search(pattern, self.stdout, re.MULTILINE)
            if match is not None:
                found.append(match)
                return True
            if exited:
                pytest.fail(f"trilb exited with {self.proc.returncode}: {self.stderr}")
            return False

        wait_for(seen, timeout, f"{pattern!r} in the output of trilb")
        return found[0]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = PROMPTLY) -> int:
        return self.proc.wait(timeout=timeout)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate (then kill) a subprocess we started, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    """A port that was free a moment ago (the caller retries if someone took it since)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_backend_process(
    folder: Path, name: str, *, echo_proto: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """Run :data:`BACKEND_SCRIPT` as backend ``name``: the process (the caller stops it) and its
    port, once it listens."""
    script = folder / "backend.py"
    if not script.exists():
        script.write_text(BACKEND_SCRIPT)
    port_file = folder / f"{name}.port"
    args = [sys.executable, str(script), str(folder), name]
    if echo_proto:
        args.append("--echo-proto")
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"backend {name} exited with {proc.returncode}")
        return port_file.exists()

    try:
        wait_for(ready, STARTUP_TIMEOUT, f"backend {name} to listen")
    except BaseException:
        stop_process(proc)
        raise
    return proc, int(port_file.read_text())
