"""``trilb serve`` as a daemon process: the pidfile, systemd's NOTIFY_SOCKET, the stop signals
(SIGUSR1 drains without a limit, SIGTERM within ``timeout_drain``, a second signal stops at
once) and dropping root privileges (``global.user``).

The backend is :data:`e2e_support.BACKEND_SCRIPT`: a request to ``/slow`` touches
``slow-started`` in tmp_path and is answered once ``release`` exists there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import (
    PROMPTLY,
    STARTUP_TIMEOUT,
    TRILB,
    TrilbProcess,
    start_backend_process,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.e2e

#: the process must be done within this after being told to stop (drain limits are shorter or
#: much longer)

CONFIG = """
[global]
{global_}

[frontends.web]
bind = "127.0.0.1:0"
default_backend = "app"

[backends.app]
servers = [{{ name = "b1", address = "127.0.0.1:{backend}" }}]
"""


class Trilb(TrilbProcess):
    """A ``trilb serve`` subprocess, its frontend's port once :meth:`wait_serving` saw it."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        super().__init__(proc, out, err)
        self.port = 0

    def wait_serving(self) -> None:
        """Wait for the frontend's port (bound to port 0) to show in the log."""
        match = self.wait_output(r"frontend web listening on 127\.0\.0\.1:(\d+)")
        self.port = int(match.group(1))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


Start = Callable[..., Trilb]


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[int]:
    proc, port = start_backend_process(tmp_path, "b1")
    yield port
    (tmp_path / "release").touch()
    stop_process(proc)


@pytest.fixture
def start(tmp_path: Path, backend: int) -> Iterator[Start]:
    """``start(global_lines, *serve_options, env=..., **popen)`` runs ``trilb serve`` with
    CONFIG (its ``[global]`` table holding ``global_lines``), in tmp_path."""
    started: list[Trilb] = []

    def run(
        global_: str = "",
        *options: str,
        env: dict[str, str] | None = None,
        folder: Path = tmp_path,
        **popen: Any,
    ) -> Trilb:
        config = folder / f"trilb-{len(started)}.toml"
        config.write_text(CONFIG.format(global_=global_, backend=backend))
        out, err = tmp_path / f"trilb-{len(started)}.out", tmp_path / f"trilb-{len(started)}.err"
        with out.open("wb") as out_file, err.open("wb") as err_file:
            proc = subprocess.Popen(
                [*TRILB, "serve", str(config), *options],
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=out_file,
                stderr=err_file,
                env={**os.environ, **(env or {})},
                **popen,
            )
        lb = Trilb(proc, out, err)
        started.append(lb)
        return lb

    yield run
    for lb in started:
        stop_process(lb.proc)


def get(url: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=30) as client:
        return client.get(url)


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except ConnectionRefusedError:
        return False


# -- pidfile --------------------------------------------------------------------------------------


def test_pidfile_written_once_serving_and_removed_at_exit(start: Start, tmp_path: Path) -> None:
    pidfile = tmp_path / "run" / "trilb.pid"
    pidfile.parent.mkdir()
    lb = start('pidfile = "run/trilb.pid"')  # relative to the config file's folder
    lb.wait_serving()
    wait_for(pidfile.exists, STARTUP_TIMEOUT, "the pidfile")
    assert pidfile.read_text() == f"{lb.proc.pid}\n"
    assert answers(lb.port)
    assert sorted(p.name for p in pidfile.parent.iterdir()) == ["trilb.pid"]
    lb.signal(signal.SIGTERM)
    assert lb.wait() == 0
    assert not pidfile.exists()


def test_pidfile_in_a_missing_folder_is_a_startup_error(start: Start) -> None:
    lb = start('pidfile = "missing/trilb.pid"')
    assert lb.wait(STARTUP_TIMEOUT) == 1
    assert "Traceback" not in lb.stdout + lb.stderr
    lines = lb.stderr.splitlines()
    assert len(lines) == 1, lb.stderr
    assert lines[0].startswith("trilb: error: global.pidfile: cannot write ")
    assert "listening" not in lb.stdout  # failed before binding anything


# -- systemd --------------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(STARTUP_TIMEOUT)
        yield str(path), sock


def test_notify_socket_hears_ready_then_stopping(
    start: Start, notify_socket: tuple[str, socket.socket]
) -> None:
    address, sock = notify_socket
    lb = start(env={"NOTIFY_SOCKET": address})
    assert sock.recv(4096) == b"READY=1"
    lb.wait_serving()
    assert answers(lb.port)  # READY=1 came once the port was bound
    assert get(lb.url("/after-ready")).status_code == 200
    lb.signal(signal.SIGTERM)
    assert sock.recv(4096) == b"STOPPING=1"
    assert lb.wait() == 0


def test_notify_socket_abstract_and_watchdog(start: Start) -> None:
    name = f"trilb-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(STARTUP_TIMEOUT)
        lb = start(env={"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "400000"})
        messages = {sock.recv(4096) for _ in range(3)}  # READY=1 and (at least) two pings
        assert messages == {b"READY=1", b"WATCHDOG=1"}
        lb.signal(signal.SIGTERM)
        assert lb.wait() == 0


# -- stop signals ---------------------------------------------------------------------------------


def _slow_request(lb: Trilb, pool: ThreadPoolExecutor, tmp_path: Path) -> Future[httpx.Response]:
    future = pool.submit(get, lb.url("/slow"))
    wait_for((tmp_path / "slow-started").exists, PROMPTLY, "the request to reach the backend")
    return future


def test_sigusr1_waits_for_the_request_in_flight(start: Start, tmp_path: Path) -> None:
    # timeout_drain bounds SIGTERM's drain, not SIGUSR1's
    lb = start('timeout_drain = "1s"')
    lb.wait_serving()
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            future = _slow_request(lb, pool, tmp_path)
            lb.signal(signal.SIGUSR1)
            lb.wait_output("SIGUSR1 received: draining until every connection has ended")
            wait_for(lambda: not answers(lb.port), PROMPTLY, "the listener to close")
            with pytest.raises(subprocess.TimeoutExpired):
                lb.wait(timeout=3)  # well past timeout_drain: still waiting for the request
        finally:
            (tmp_path / "release").touch()
        response = future.result(timeout=30)
    assert response.status_code == 200
    assert response.text == "b1 /slow\n"
    assert lb.wait() == 0
    assert "info: draining: waiting for every connection to finish" in lb.stdout
    assert "grace period over" not in lb.stdout
    assert "Traceback" not in lb.stdout + lb.stderr


@pytest.mark.parametrize(
    ("global_", "options"),
    [('timeout_drain = "1s"', ()), ('timeout_drain = "1h"', ("--grace", "1"))],
    ids=["timeout_drain", "grace-overrides"],
)
def test_sigterm_cuts_what_outlasts_timeout_drain(
    start: Start, tmp_path: Path, global_: str, options: Sequence[str]
) -> None:
    lb = start(global_, *options)
    lb.wait_serving()
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            future = _slow_request(lb, pool, tmp_path)
            signalled = time.monotonic()
            lb.signal(signal.SIGTERM)
            assert lb.wait() == 0
            took = time.monotonic() - signalled
            with pytest.raises(httpx.TransportError):
                future.result(timeout=30)  # cut: the backend never answered
        finally:
            (tmp_path / "release").touch()
    assert 0.9 <= took < PROMPTLY
    assert "info: draining: waiting up to 1s for requests in flight" in lb.stdout
    assert "drain grace period over: closing the remaining connections" in lb.stdout
    assert "Traceback" not in lb.stdout + lb.stderr


@pytest.mark.parametrize(
    ("first", "second", "said"),
    [
        (signal.SIGUSR1, signal.SIGTERM, "SIGTERM received while draining: stopping now"),
        (signal.SIGUSR1, signal.SIGUSR1, "SIGUSR1 received again: stopping now"),
        (signal.SIGTERM, signal.SIGUSR1, "SIGUSR1 received while draining: stopping now"),
    ],
    ids=["usr1-term", "usr1-usr1", "term-usr1"],
)
def test_second_signal_stops_at_once(
    start: Start, tmp_path: Path, first: signal.Signals, second: signal.Signals, said: str
) -> None:
    lb = start('timeout_drain = "1h"')
    lb.wait_serving()
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            future = _slow_request(lb, pool, tmp_path)
            lb.signal(first)
            lb.wait_output(f"{first.name} received: draining")
            lb.signal(second)
            assert lb.wait() == 0  # long before the hour
            with pytest.raises(httpx.TransportError):
                future.result(timeout=30)
        finally:
            (tmp_path / "release").touch()
    assert said in lb.stdout
    assert "Traceback" not in lb.stdout + lb.stderr


# -- privileges -----------------------------------------------------------------------------------


def _ids(status: Path) -> tuple[list[int], list[int], list[int]]:
    """(real, effective, saved, filesystem) uids, the same gids, and the supplementary groups,
    from a /proc/.../status file."""
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
    return (
        [int(x) for x in fields["Uid"].split()],
        [int(x) for x in fields["Gid"].split()],
        [int(x) for x in fields["Groups"].split()],
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: trilb switches to user nobody")
def test_root_becomes_nobody_after_binding(start: Start, tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    # the pidfile's folder (pytest's, mode 0700) is root's: nobody can't remove it at exit
    lb = start('user = "nobody"\npidfile = "trilb.pid"')
    lb.wait_serving()
    lb.wait_output(rf"info: running as user nobody \(uid {nobody.pw_uid}, gid {nobody.pw_gid}\)")
    threads = list(Path(f"/proc/{lb.proc.pid}/task").glob("*/status"))
    assert threads
    for status in threads:  # every thread (the log writer's too), not only the main one
        uids, gids, groups = _ids(status)
        assert uids == [nobody.pw_uid] * 4
        assert gids == [nobody.pw_gid] * 4
        assert 0 not in groups
    assert (tmp_path / "trilb.pid").read_text() == f"{lb.proc.pid}\n"  # written as root
    response = get(lb.url("/as-nobody"))
    assert response.status_code == 200
    assert response.text == "b1 /as-nobody\n"
    lb.signal(signal.SIGTERM)
    assert lb.wait() == 0
    assert "left behind: no permission to remove it" in lb.stdout
    assert "Traceback" not in lb.stdout + lb.stderr


def test_switching_users_needs_root(start: Start) -> None:
    """Not root and told to become another user: a start-up error. (As root, the test runs
    trilb as nobody, in a folder nobody can read.)"""
    popen: dict[str, Any] = {}
    if os.geteuid() == 0:
        popen = {"user": "nobody", "group": "nogroup", "extra_groups": []}
        try:
            subprocess.run([*TRILB, "--version"], check=True, capture_output=True, **popen)
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"user nobody can't run this Python ({exc}); test as a non-root user")
    with tempfile.TemporaryDirectory(prefix="trilb-test-") as folder:
        os.chmod(folder, 0o755)
        lb = start('user = "root"', folder=Path(folder), **popen)
        assert lb.wait(STARTUP_TIMEOUT) == 1
    assert lb.stderr == (
        "trilb: error: global.user: trilb needs to start as root to switch to user root\n"
    )
    assert "listening" not in lb.stdout


def test_unknown_user_is_a_config_error(start: Start) -> None:
    lb = start('user = "no-such-user-trilb"\ngroup = "no-such-group-trilb"')
    assert lb.wait(STARTUP_TIMEOUT) == 2
    assert "global.user: no user 'no-such-user-trilb' on this system" in lb.stderr
    assert "global.group: no group 'no-such-group-trilb' on this system" in lb.stderr
    assert "Traceback" not in lb.stderr
