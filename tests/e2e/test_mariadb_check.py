"""The ``mysql`` health check against a real MariaDB: ``trilb serve`` as a subprocess checks one
server three ways -- greeting only, a login as a password-less user, a login as a user that
does not exist -- and MariaDB's own counters show the logins were closed cleanly (COM_QUIT).

MariaDB runs on a fresh data directory in the test's temporary folder, on 127.0.0.1 only, and is
stopped afterwards. Skipped when MariaDB is not installed (``apt install mariadb-server``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import STARTUP_TIMEOUT, TRILB, stop_process, wait_for
from mariadb_support import MariaDB, running_mariadb

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    with running_mariadb(tmp_path_factory.mktemp("mariadb")) as server:
        server.sql("CREATE USER 'trilb_check'@'127.0.0.1';")  # no password, no privileges
        yield server


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
