"""The ``mysql`` health check against a real MariaDB: ``trilb serve`` as a subprocess checks one
server three ways -- greeting only, a login as a password-less user, a login as a user that
does not exist -- and MariaDB's own counters show the logins were closed cleanly (COM_QUIT).

MariaDB runs on a fresh data directory in the test's temporary folder, on 127.0.0.1 only, and is
stopped afterwards. Skipped when MariaDB is not installed (``apt install mariadb-server``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import STARTUP_TIMEOUT, TRILB, free_port, stop_process, wait_for

pytestmark = pytest.mark.e2e


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

    def __init__(self, port: int, sock: Path, log: Path) -> None:
        self.port = port
        self.sock = sock
        self.log = log

    def sql(self, statements: str) -> str:
        """Run SQL as root over the unix socket; its output (tab-separated, no headers)."""
        assert CLIENT is not None
        args = ["--no-defaults", f"--socket={self.sock}", "-u", "root", "-N", "-B"]
        done = subprocess.run(
            [CLIENT, *args, "-e", statements],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
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
            f"MariaDB is not installed (no {', '.join(missing)}): apt install mariadb-server"
        )
    assert MARIADBD is not None
    assert INSTALL_DB is not None
    base = tmp_path_factory.mktemp("mariadb")
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
    try:
        server = MariaDB(port, sock, log)
        server.sql(
            "CREATE USER 'trilb_check'@'127.0.0.1';"  # no password, no privileges
            # mariadb-install-db's root accounts for 127.0.0.1 and ::1 have no password either
            "DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1';"
        )
        yield server
    finally:
        stop_process(proc)


CONFIG = """
[frontends.db]
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "login"

[backends.login]
mode = "tcp"
servers = [{{ name = "s1", address = "127.0.0.1:{port}" }}]
health_check = {{ type = "mysql", user = "trilb_check", interval = "100ms", fall = 1 }}

[backends.old_login]
mode = "tcp"
servers = [{{ name = "s1", address = "127.0.0.1:{port}" }}]
[backends.old_login.health_check]
type = "mysql"
user = "trilb_check"
post_41 = false
interval = "100ms"
fall = 1

[backends.greeting]
mode = "tcp"
servers = [{{ name = "s1", address = "127.0.0.1:{port}" }}]
health_check = {{ type = "mysql", interval = "100ms", fall = 1 }}

[backends.stranger]
mode = "tcp"
servers = [{{ name = "s1", address = "127.0.0.1:{port}" }}]
health_check = {{ type = "mysql", user = "nobody", interval = "100ms", fall = 1 }}
"""


def test_mysql_check_against_mariadb(mariadb: MariaDB, tmp_path: Path) -> None:
    aborted_before = mariadb.sql("SHOW GLOBAL STATUS LIKE 'Aborted_clients'").split()[1]
    config = tmp_path / "trilb.toml"
    config.write_text(CONFIG.format(port=mariadb.port))
    out = tmp_path / "trilb.out"
    with out.open("wb") as output:
        proc = subprocess.Popen(
            [*TRILB, "-v", "serve", str(config)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        version = mariadb.sql("SELECT VERSION()").strip()
        passed = "succeeded, reason: Layer7 check passed, info: "
        wanted = [
            f'health check for server login/s1 {passed}"',
            f'health check for server old_login/s1 {passed}"',
            f'health check for server greeting/s1 {passed}"',
            "server stranger/s1 is DOWN, reason: Layer7 wrong status, code: 1045, info: "
            "\"Access denied for user 'nobody'@'127.0.0.1' (using password: NO)\"",
        ]

        def logged() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"trilb exited with {proc.returncode}:\n{out.read_text()}")
            text = out.read_text()
            return all(line in text for line in wanted)

        wait_for(logged, STARTUP_TIMEOUT, f"the check results in the output of trilb: {wanted}")
        lines = out.read_text().splitlines()
        for server in ("login", "old_login", "greeting"):
            line = next(line for line in lines if f"server {server}/s1 {passed}" in line)
            assert version in line, line  # the info is the server's version
            assert not [line for line in lines if f"{server}/s1 is DOWN" in line]
    finally:
        stop_process(proc)
    # the logins ended with COM_QUIT: MariaDB counted no client that went away without a word
    # (the greeting-only check never logged in: it counts as an aborted connect, not a client)
    assert mariadb.sql("SHOW GLOBAL STATUS LIKE 'Aborted_clients'").split()[1] == aborted_before
    assert "user: 'trilb_check'" not in mariadb.log.read_text()
