"""``examples/mysql-primary-replica.toml`` for real: ``trilb serve`` in front of two MariaDB
servers (the primary db1 and the replica db2; db3 is a replica that is down), with the mysql
health checks, the write port on the primary and the read port on the replicas -- then the
primary stops and the write port fails over to the backup.

The example's addresses and ports are rewritten to this machine's (and its check interval
shortened), nothing else. MariaDB replication itself is not set up: the test only needs to see
which server answered (``SELECT @@port``). Skipped when MariaDB is not installed.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from e2e_support import STARTUP_TIMEOUT, TRILB, free_port, stop_process, wait_for
from mariadb_support import MariaDB, client_query, running_mariadb

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).parents[2] / "examples" / "mysql-primary-replica.toml"


def _rewritten(replacements: dict[str, str]) -> str:
    text = EXAMPLE.read_text()
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the example"
        text = text.replace(old, new)
    return text


def _prepare(server: MariaDB) -> None:
    server.sql(
        "CREATE USER 'trilb_check'@'127.0.0.1';"
        "CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'secret';"
        "CREATE DATABASE shop;"
        "GRANT ALL ON shop.* TO 'app'@'127.0.0.1';"
    )


def test_writes_go_to_the_primary_reads_to_the_replicas_and_the_primary_fails_over(
    tmp_path: Path,
) -> None:
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(running_mariadb(tmp_path / "db1"))
        replica = stack.enter_context(running_mariadb(tmp_path / "db2"))
        for server in (primary, replica):
            _prepare(server)
        write_port, read_port, nobody = free_port(), free_port(), free_port()
        config = tmp_path / "trilb.toml"
        config.write_text(
            _rewritten(
                {
                    'bind = "127.0.0.1:3306"': f'bind = "127.0.0.1:{write_port}"',
                    'bind = "127.0.0.1:3307"': f'bind = "127.0.0.1:{read_port}"',
                    "10.0.0.31:3306": f"127.0.0.1:{primary.port}",
                    "10.0.0.32:3306": f"127.0.0.1:{replica.port}",
                    "10.0.0.33:3306": f"127.0.0.1:{nobody}",
                    'interval = "2s"': 'interval = "100ms"',
                }
            )
        )
        out = tmp_path / "trilb.out"
        with out.open("wb") as output:
            proc = subprocess.Popen(
                [*TRILB, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        stack.callback(stop_process, proc)

        def logged(text: str) -> bool:
            if proc.poll() is not None:
                pytest.fail(f"trilb exited with {proc.returncode}:\n{out.read_text()}")
            return text in out.read_text()

        wait_for(lambda: logged("server replicas/db3 is DOWN"), STARTUP_TIMEOUT, "db3 DOWN")

        # writes: on the primary only
        answer = client_query(
            write_port,
            "app",
            "secret",
            "CREATE TABLE shop.orders (id INT); INSERT INTO shop.orders VALUES (1); SELECT @@port",
        )
        assert answer.split() == [str(primary.port)]
        assert primary.sql("SELECT COUNT(*) FROM shop.orders").split() == ["1"]
        assert replica.sql("SHOW TABLES FROM shop").split() == []
        # reads: the replica that is UP, never the primary (a backup there) nor db3 (DOWN)
        for _ in range(4):
            assert client_query(read_port, "app", "secret", "SELECT @@port").split() == [
                str(replica.port)
            ]

        primary.stop()
        wait_for(lambda: logged("server primary/db1 is DOWN"), STARTUP_TIMEOUT, "db1 DOWN")
        # the write port fails over to the backup (in real life: the replica you promoted)
        assert client_query(write_port, "app", "secret", "SELECT @@port").split() == [
            str(replica.port)
        ]

        # the tcplog lines of the relayed connections (written as each connection ends)
        for line in (
            "mysql-write primary/db1 ",
            "mysql-write primary/db2 ",
            "mysql-read replicas/db2 ",
        ):
            wait_for(lambda: logged(line), STARTUP_TIMEOUT, repr(line))  # noqa: B023
        assert "Traceback" not in out.read_text()
