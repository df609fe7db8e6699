"""A real MariaDB for end-to-end tests: a fresh data directory in a temporary folder, listening
on 127.0.0.1 only, root reachable over its unix socket only, stopped when the test is done.

``with running_mariadb(folder) as server:`` skips the test (with the package to install) when
MariaDB is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import STARTUP_TIMEOUT, free_port, stop_process, wait_for

__all__ = ["MariaDB", "running_mariadb"]


def _program(name: str, *fallbacks: str) -> str | None:
    found = shutil.which(name)
    if found is None:
        found = next((path for path in fallbacks if os.access(path, os.X_OK)), None)
    return found


MARIADBD = _program("mariadbd", "/usr/sbin/mariadbd")
INSTALL_DB = _program("mariadb-install-db", "/usr/bin/mariadb-install-db")
CLIENT = _program("mariadb", "/usr/bin/mariadb")


class MariaDB:
    """A running MariaDB: its TCP port, its unix socket (root logs in there), its error log."""

    def __init__(self, port: int, sock: Path, log: Path, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.sock = sock
        self.log = log
        self.proc = proc

    def sql(self, statements: str) -> str:
        """Run SQL as root over the unix socket; its output (tab-separated, no headers)."""
        assert CLIENT is not None
        args = ["--no-defaults", f"--socket={self.sock}", "-u", "root", "-N", "-B"]
        return _run_client([*args, "-e", statements])

    def stop(self) -> None:
        stop_process(self.proc)


def client_query(port: int, user: str, password: str, statements: str) -> str:
    """Run SQL over TCP on 127.0.0.1 (through a balancer, say) with the ``mariadb`` client."""
    args = ["--no-defaults", "-h", "127.0.0.1", "-P", str(port), "-u", user, "-N", "-B"]
    return _run_client([*args, f"--password={password}", "-e", statements])


def _run_client(args: list[str]) -> str:
    assert CLIENT is not None
    done = subprocess.run([CLIENT, *args], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def running_mariadb(base: Path) -> Iterator[MariaDB]:
    """A MariaDB with its data in ``base``; stopped when the block ends."""
    missing = [
        name
        for name, path in [
            ("mariadbd", MARIADBD),
            ("mariadb-install-db", INSTALL_DB),
            ("mariadb", CLIENT),
        ]
        if path is None
    ]
    if missing:
        pytest.skip(
            f"MariaDB is not installed (no {', '.join(missing)}): "
            "apt install mariadb-server mariadb-client"
        )
    assert MARIADBD is not None
    assert INSTALL_DB is not None
    # mariadbd refuses to run as root unless told to: it stays in this temporary folder
    as_user = ["--user=root"] if os.geteuid() == 0 else []
    data = base / "data"
    installed = subprocess.run(
        [
            INSTALL_DB,
            "--no-defaults",
            f"--datadir={data}",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",  # root: over the unix socket only
            *as_user,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    sock, log = base / "mysqld.sock", base / "mariadbd.log"
    for _ in range(3):  # a port someone else took meanwhile: try another one
        port = free_port()
        proc = subprocess.Popen(
            [
                MARIADBD,
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={sock}",
                f"--port={port}",
                "--bind-address=127.0.0.1",  # reachable from this machine only
                "--skip-name-resolve",
                f"--pid-file={base / 'mariadbd.pid'}",
                f"--log-error={log}",
                "--innodb-buffer-pool-size=16M",  # small and quick to start
                *as_user,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: proc.poll() is not None or (sock.exists() and _listening(port)),  # noqa: B023
            STARTUP_TIMEOUT,
            "mariadbd to listen",
        )
        if proc.poll() is None:
            break
        assert "already in use" in log.read_text(), log.read_text()
    else:
        pytest.fail("no free port for MariaDB in 3 attempts")
    server = MariaDB(port, sock, log, proc)
    try:
        # mariadb-install-db's root accounts for 127.0.0.1 and ::1 have no password
        server.sql("DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1';")
        yield server
    finally:
        server.stop()
