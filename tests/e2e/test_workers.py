"""``trilb serve`` with ``global.workers = 2``: a master and two worker processes.

Real processes all the way: trilb as an operator runs it, two backends, the admin socket and
the stats server of the master, clients on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest
from e2e_support import (
    PROMPTLY,
    STARTUP_TIMEOUT,
    TRILB,
    free_port,
    start_backend_process,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.e2e

CONFIG = """
[global]
workers = 2
timeout_drain = "5s"
pidfile = "trilb.pid"

[admin]
socket = "{socket}"

[stats]
bind = "127.0.0.1:{stats_port}"

[frontends.web]
bind = "127.0.0.1:{port}"
default_backend = "app"

[backends.app]
servers = [
  {{ name = "b1", address = "127.0.0.1:{b1}" }},
  {{ name = "b2", address = "127.0.0.1:{b2}" }},
]
"""


@attrs.define
class Cluster:
    proc: subprocess.Popen[bytes]
    port: int
    stats_port: int
    socket: Path
    output: Path
    cwd: Path

    def log(self) -> str:
        return self.output.read_text()

    def wait_log(self, text: str, count: int = 1) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"trilb exited with {self.proc.returncode}:\n{self.log()}")
            return self.log().count(text) >= count

        wait_for(seen, STARTUP_TIMEOUT, repr(text))

    def ctl(self, *words: str) -> str:
        result = subprocess.run(
            [*TRILB, "ctl", "--socket", str(self.socket), *words],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def stat_rows(self) -> list[dict[str, str]]:
        text = self.ctl("show", "stat").removeprefix("# ")
        return list(csv.DictReader(io.StringIO(text)))

    def worker_pids(self) -> dict[str, int]:
        """Worker number -> pid, from the master's per-worker figures (/stats.json)."""
        data = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats.json", timeout=30).json()
        return {str(w["index"]): w["pid"] for w in data["workers"] if w["pid"] is not None}

    def get(self, path: str) -> tuple[int, str]:
        """One request on a new connection (so that the kernel picks a worker each time)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()


def frontend_rows(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """The FRONTEND rows of ``show stat`` by their ``pid`` column ("" or "0" for the total)."""
    return {r["pid"] or "0": r for r in rows if r["svname"] == "FRONTEND"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return False
    return True


#: an abstract unix socket for systemd's notifications (one per test run)
NOTIFY_NAME = f"trilb-workers-test-{os.getpid()}"


@pytest.fixture
def cluster_env() -> dict[str, str]:
    """Extra environment for ``trilb serve`` (a test parametrizes it to set its own)."""
    return {}


@pytest.fixture
def cluster(tmp_path: Path, cluster_env: dict[str, str]) -> Iterator[Cluster]:
    backends = [start_backend_process(tmp_path, name) for name in ("b1", "b2")]
    started: list[subprocess.Popen[bytes]] = []
    try:
        for attempt in range(5):
            port, stats_port = free_port(), free_port()
            config = tmp_path / "trilb.toml"
            config.write_text(
                CONFIG.format(
                    socket=tmp_path / "admin.sock",
                    stats_port=stats_port,
                    port=port,
                    b1=backends[0][1],
                    b2=backends[1][1],
                )
            )
            output = tmp_path / f"trilb-{attempt}.log"
            with output.open("wb") as out:
                proc = subprocess.Popen(
                    [*TRILB, "serve", str(config)],
                    cwd=tmp_path,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **cluster_env},
                )
            started.append(proc)

            def up(proc: subprocess.Popen[bytes] = proc, output: Path = output) -> bool:
                return proc.poll() is not None or "2 workers serving" in output.read_text()

            wait_for(up, STARTUP_TIMEOUT * 2, "trilb's workers to start")
            if proc.poll() is None:
                break
            assert "in use" in output.read_text(), output.read_text()
        else:
            pytest.fail("no free ports found in 5 attempts")
        yield Cluster(proc, port, stats_port, tmp_path / "admin.sock", output, tmp_path)
    finally:
        for proc in started:
            stop_process(proc)
        for backend, _ in backends:
            stop_process(backend)


def test_both_workers_take_connections_and_the_totals_add_up(cluster: Cluster) -> None:
    requests = 200
    for number in range(requests):
        status, body = cluster.get(f"/n/{number}")
        assert status == 200
        assert body.endswith(f" /n/{number}\n"), body

    def counted() -> bool:
        return frontend_rows(cluster.stat_rows())["0"]["req_tot"] == str(requests)

    wait_for(counted, STARTUP_TIMEOUT, "the master's totals")
    rows = frontend_rows(cluster.stat_rows())
    per_worker = {pid: int(rows[pid]["req_tot"]) for pid in ("1", "2")}
    # the kernel spreads new connections over both workers' sockets (all 200 on one: 2**-199)
    assert all(count > 0 for count in per_worker.values()), per_worker
    assert sum(per_worker.values()) == requests
    assert int(rows["0"]["stot"]) == sum(int(rows[p]["stot"]) for p in ("1", "2")) == requests
    servers = [r for r in cluster.stat_rows() if r["pxname"] == "app" and r["svname"] == "b1"]
    assert len(servers) == 3  # the total, then one row per worker

    metrics = httpx.get(f"http://127.0.0.1:{cluster.stats_port}/metrics", timeout=30).text
    assert 'trilb_worker_up{worker="1"} 1' in metrics
    assert 'trilb_worker_up{worker="2"} 1' in metrics
    info = cluster.ctl("show", "info")
    assert "Nbproc: 2" in info
    assert f"CumReq: {requests}" in info
    assert "Traceback" not in cluster.log()


def test_a_killed_worker_is_restarted_and_nothing_is_lost(cluster: Cluster) -> None:
    for number in range(40):
        assert cluster.get(f"/before/{number}")[0] == 200
    wait_for(
        lambda: frontend_rows(cluster.stat_rows())["0"]["req_tot"] == "40",
        STARTUP_TIMEOUT,
        "the first 40 requests counted",
    )
    pids = cluster.worker_pids()
    assert len(pids) == 2
    os.kill(pids["1"], signal.SIGKILL)
    cluster.wait_log(f"worker 1 (pid {pids['1']}) was killed by SIGKILL; restarting it")
    cluster.wait_log("worker 1 restarted (pid ")
    wait_for(
        lambda: len(cluster.worker_pids()) == 2 and cluster.worker_pids()["1"] != pids["1"],
        STARTUP_TIMEOUT,
        "a new worker 1",
    )
    assert cluster.worker_pids()["2"] == pids["2"]
    for number in range(40):
        assert cluster.get(f"/after/{number}")[0] == 200
    # the totals keep what the killed worker had counted (its last report)
    wait_for(
        lambda: frontend_rows(cluster.stat_rows())["0"]["req_tot"] == "80",
        STARTUP_TIMEOUT,
        "80 requests in the totals",
    )
    rows = {r["index"]: r for r in _workers_json(cluster)}
    assert rows[1]["restarts"] == 1
    assert rows[2]["restarts"] == 0
    assert cluster.proc.poll() is None


def test_operator_changes_reach_every_worker_and_survive_a_restart(cluster: Cluster) -> None:
    answer = cluster.ctl("set", "server", "app/b2", "state", "maint")
    assert "now MAINT" in answer
    assert "worker" not in answer  # the same answer from both: given once
    for number in range(30):
        status, body = cluster.get(f"/m/{number}")
        assert (status, body.split()[0]) == (200, "b1")
    pids = cluster.worker_pids()
    os.kill(pids["2"], signal.SIGKILL)
    cluster.wait_log("worker 2 restarted (pid ")
    for number in range(30):
        status, body = cluster.get(f"/m2/{number}")
        assert (status, body.split()[0]) == (200, "b1")
    state = cluster.ctl("show", "servers", "state", "app")
    assert "MAINT" in state
    assert "worker" not in state


def test_sigterm_stops_the_master_and_every_worker(cluster: Cluster) -> None:
    pids = cluster.worker_pids()
    pidfile = cluster.cwd / "trilb.pid"
    assert pidfile.read_text() == f"{cluster.proc.pid}\n"  # the master's
    cluster.proc.send_signal(signal.SIGTERM)
    assert cluster.proc.wait(timeout=PROMPTLY + 5) == 0
    assert not pidfile.exists()
    wait_for(lambda: not any(alive(pid) for pid in pids.values()), PROMPTLY, "workers to exit")
    log = cluster.log()
    assert "SIGTERM received: forwarded to the workers, which drain" in log
    assert "every worker has stopped" in log
    assert "Traceback" not in log


def test_sigusr1_lets_requests_in_flight_finish_in_every_worker(cluster: Cluster) -> None:
    results: list[tuple[int, str]] = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(cluster.get(f"/slow/{n}")))
        for n in range(6)
    ]
    for thread in threads:
        thread.start()
    # six connections: both workers hold some (all on one: 2**-5, and the test still holds)
    wait_for(
        lambda: frontend_rows(cluster.stat_rows())["0"]["scur"] == "6",
        STARTUP_TIMEOUT,
        "six requests in flight",
    )
    cluster.proc.send_signal(signal.SIGUSR1)
    cluster.wait_log("draining until every connection has ended", count=2)
    assert cluster.proc.poll() is None
    (cluster.cwd / "release").touch()
    for thread in threads:
        thread.join(timeout=PROMPTLY)
    assert sorted(status for status, _ in results) == [200] * 6
    assert sorted(body.split()[1] for _, body in results) == [f"/slow/{n}" for n in range(6)]
    assert cluster.proc.wait(timeout=PROMPTLY) == 0


@pytest.fixture
def notifications() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + NOTIFY_NAME.encode())
        sock.settimeout(STARTUP_TIMEOUT * 2)
        yield sock


@pytest.mark.parametrize("cluster_env", [{"NOTIFY_SOCKET": f"@{NOTIFY_NAME}"}])
def test_systemd_hears_the_master_only(
    notifications: socket.socket, cluster: Cluster, cluster_env: dict[str, str]
) -> None:
    # READY=1 once both workers serve (the fixture saw "2 workers serving"), from the master
    assert notifications.recv(4096) == b"READY=1"
    (cluster.cwd / "trilb.toml").write_text(
        (cluster.cwd / "trilb.toml").read_text().replace('"5s"', '"6s"')
    )
    cluster.proc.send_signal(signal.SIGHUP)
    reloading = notifications.recv(4096).split(b"\n")
    assert reloading[0] == b"RELOADING=1"
    assert reloading[1].startswith(b"MONOTONIC_USEC=")
    assert notifications.recv(4096) == b"READY=1"
    cluster.wait_log("master: reloaded: 1 frontends, 1 backends in 2 workers")
    cluster.proc.send_signal(signal.SIGTERM)
    assert notifications.recv(4096) == b"STOPPING=1"
    assert cluster.proc.wait(timeout=PROMPTLY + 5) == 0
    notifications.settimeout(0.5)
    with pytest.raises(TimeoutError):  # (nothing from the workers, then or ever)
        notifications.recv(4096)


def test_workers_drain_and_exit_when_the_master_is_killed(cluster: Cluster) -> None:
    pids = cluster.worker_pids()
    cluster.proc.kill()
    cluster.proc.wait(timeout=PROMPTLY)
    wait_for(lambda: not any(alive(pid) for pid in pids.values()), PROMPTLY * 2, "orphans to exit")
    assert cluster.log().count("the master process is gone: draining, then exiting") == 2


def test_a_worker_that_cannot_start_fails_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "trilb.toml"
        config.write_text(
            "[global]\nworkers = 2\n[frontends.web]\n"
            f'bind = "127.0.0.1:{port}"\ndefault_backend = "app"\n'
            '[backends.app]\nservers = [{ name = "s", address = "127.0.0.1:9" }]\n'
        )
        result = subprocess.run(
            [*TRILB, "serve", str(config)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT * 2,
            check=False,
        )
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1:" in result.stderr
    assert "before it could serve" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def _workers_json(cluster: Cluster) -> list[dict[str, object]]:
    data = httpx.get(f"http://127.0.0.1:{cluster.stats_port}/stats.json", timeout=30).json()
    workers: list[dict[str, object]] = data["workers"]
    return workers
