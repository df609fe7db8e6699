"""``trilb ctl`` against ``trilb serve`` as a user runs them: every admin command end to end.

trilb runs as a subprocess with ``[admin] socket`` in the test's tmp_path, in front of two real
backends (subprocesses too: a small h11 server answering ``<name> <target>``). A request to
``/slow...`` creates ``<name>.slow`` in tmp_path and is answered only once ``release`` exists
there, so a test can hold a request in flight on a known server.

(The helpers are copied from ``test_cli.py``, small on purpose: a second ``conftest.py`` outside
a package would shadow ``tests/proxy/conftest.py``.)
"""

from __future__ import annotations

import csv
import http.client
import json
import os
import re
import signal
import stat
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import attrs
import httpx
import pytest
from e2e_support import (
    STARTUP_TIMEOUT,
    TRILB,
    free_port,
    start_backend_process,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.e2e


CONFIG = """
[admin]
socket = "{socket}"

[frontends.web]
bind = "127.0.0.1:{port}"
default_backend = "app"

[backends.app]
health_check = {{ type = "http", path = "/health", interval = "100ms" }}
servers = [
  {{ name = "b1", address = "127.0.0.1:{b1}" }},
  {{ name = "b2", address = "127.0.0.1:{b2}" }},
]
"""


def get(url: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=20) as client:
        return client.get(url)


def served_by(url: str, count: int) -> list[str]:
    """Who answered each of ``count`` requests (each on a new connection); "503" for a 503."""
    names = []
    for _ in range(count):
        response = get(url)
        names.append(response.headers["x-served-by"] if response.status_code == 200 else "503")
    return names


@attrs.define
class Result:
    code: int
    out: str
    err: str


@attrs.define
class Balancer:
    """A running ``trilb serve`` with an admin socket."""

    proc: subprocess.Popen[bytes]
    port: int
    socket: Path
    config: Path
    log: Path
    cwd: Path

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ctl(self, *words: str, socket_path: Path | None = None) -> Result:
        """``trilb ctl --socket SOCKET WORDS...``"""
        where = ["--socket", str(socket_path or self.socket)]
        return run_trilb("ctl", *where, *words, cwd=self.cwd)

    def ok(self, *words: str) -> str:
        """The output of a command that must succeed."""
        result = self.ctl(*words)
        assert result.code == 0, result
        assert result.err == ""
        return result.out

    def error(self, *words: str) -> str:
        """The one error line of a command that must fail (exit 1, nothing on stdout)."""
        result = self.ctl(*words)
        assert result.code == 1, result
        assert result.out == ""
        assert "Traceback" not in result.err
        lines = result.err.splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith("trilb: error: ")
        return lines[0].removeprefix("trilb: error: ")


def run_trilb(*args: str, cwd: Path) -> Result:
    result = subprocess.run(
        [*TRILB, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    return Result(result.returncode, result.stdout, result.stderr)


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[dict[str, int]]:
    """Backends b1 and b2 as subprocesses: their ports by name."""
    procs: list[subprocess.Popen[bytes]] = []
    ports = {}
    try:
        for name in ("b1", "b2"):
            proc, ports[name] = start_backend_process(tmp_path, name)
            procs.append(proc)
        yield ports
    finally:
        for proc in procs:
            stop_process(proc)


@pytest.fixture
def lb(tmp_path: Path, backends: dict[str, int]) -> Iterator[Balancer]:
    """``trilb serve`` with ``[admin] socket = "<tmp>/admin.sock"`` in front of b1 and b2, both
    UP (checked), on a free port (another one if someone took it meanwhile)."""
    sock = tmp_path / "admin.sock"
    started: list[Balancer] = []
    try:
        for attempt in range(5):
            port = free_port()
            config = tmp_path / "trilb.toml"
            config.write_text(
                CONFIG.format(socket=sock, port=port, b1=backends["b1"], b2=backends["b2"])
            )
            log = tmp_path / f"trilb-{attempt}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [*TRILB, "serve", str(config)],
                    cwd=tmp_path,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            balancer = Balancer(proc, port, sock, config, log, tmp_path)
            started.append(balancer)

            def ready(balancer: Balancer = balancer) -> bool:
                if balancer.proc.poll() is not None:
                    return True
                return "admin socket listening on" in balancer.log.read_text()

            wait_for(ready, STARTUP_TIMEOUT, "trilb to start")
            if proc.poll() is None:
                break
            assert "in use" in log.read_text(), log.read_text()
        else:
            pytest.fail("no free port found in 5 attempts")
        # both servers confirmed UP by their checks
        wait_for(
            lambda: balancer.ok("show servers state").count(" enabled L7OK ") == 2,
            STARTUP_TIMEOUT,
            "the servers' first checks",
        )
        yield balancer
    finally:
        (tmp_path / "release").touch()
        for balancer in started:
            stop_process(balancer.proc)


# -- every command ------------------------------------------------------------------------------


def test_help_info_and_stat(lb: Balancer) -> None:
    assert served_by(lb.url("/x"), 4).count("b1") == 2
    help_text = lb.ok("help")
    assert help_text.startswith("Commands:\n")
    for usage in ("show info", "show stat [json]", "show servers state", "show sessions"):
        assert f"  {usage} " in help_text
    for usage in ("set server BACKEND/SERVER state ready|drain|maint", "disable health"):
        assert f"  {usage}" in help_text

    info = dict(line.split(": ", 1) for line in lb.ok("show", "info").splitlines())
    assert info["Name"] == "trilb"
    assert info["Pid"] == str(lb.proc.pid)
    assert info["CumReq"] == "4"
    assert info["Backend"] == "app roundrobin (2/2 servers UP)"
    assert info["Frontend"].startswith(f"web 127.0.0.1:{lb.port} ")

    # show stat: HAProxy's CSV layout, parseable with the csv module
    text = lb.ok("show stat")
    assert text.startswith("# pxname,svname,qcur,scur,smax,stot,bin,bout,")
    assert text.endswith("\n")
    rows = {(r["pxname"], r["svname"]): r for r in csv.DictReader(text[2:].splitlines())}
    assert list(rows) == [("web", "FRONTEND"), ("app", "b1"), ("app", "b2"), ("app", "BACKEND")]
    assert rows["web", "FRONTEND"]["req_tot"] == "4"
    assert rows["app", "b1"]["stot"] == "2"
    assert rows["app", "b1"]["hrsp_2xx"] == "2"
    assert rows["app", "b1"]["status"] == "UP"
    assert rows["app", "b1"]["check_status"] == "L7OK"
    assert rows["app", "BACKEND"]["act"] == "2"

    records = json.loads(lb.ok("show", "stat", "json"))
    assert [(r["pxname"], r["svname"]) for r in records] == list(rows)
    assert records[1]["stot"] == 2

    sessions = lb.ok("show sessions")
    assert sessions == "# 0 sessions\n"


def test_weight_shifts_traffic(lb: Balancer) -> None:
    assert lb.ok("get weight app/b1") == "100 (initial 100)\n"
    assert lb.ok("set server app/b1 weight 0") == "Server app/b1 weight is now 0 (was 100).\n"
    assert set(served_by(lb.url(), 4)) == {"b2"}
    assert lb.ok("set", "server", "app/b1", "weight", "100%") == (
        "Server app/b1 weight is now 100 (was 0).\n"
    )
    assert lb.ok("set", "server", "app/b2", "weight", "25%") == (
        "Server app/b2 weight is now 25 (was 100).\n"
    )
    names = served_by(lb.url(), 10)
    assert 7 <= names.count("b1") <= 9, names  # 4:1
    assert lb.ok("get weight app/b2") == "25 (initial 100)\n"
    assert "server app/b2 weight 100 -> 25 (set by the operator)" in lb.log.read_text()


def test_maint_then_503_then_back(lb: Balancer) -> None:
    assert lb.ok("set server app/b1 state maint") == (
        "Server app/b1 set to maint: now MAINT (was UP).\n"
    )
    assert set(served_by(lb.url(), 4)) == {"b2"}
    assert lb.ok("disable server app/b2") == "Server app/b2 set to maint: now MAINT (was UP).\n"
    assert served_by(lb.url(), 2) == ["503", "503"]
    state = lb.ok("show servers state").splitlines()
    assert state[0] == "1"
    assert state[1].startswith("# be_name srv_name srv_addr srv_state srv_admin_state ")
    assert [line.split()[3:5] for line in state[2:]] == [["MAINT", "maint"], ["MAINT", "maint"]]
    assert lb.ok("enable server app/b2") == "Server app/b2 set to ready: now UP (was MAINT).\n"
    assert lb.ok("set server app/b1 state ready") == (
        "Server app/b1 set to ready: now UP (was MAINT).\n"
    )
    assert sorted(served_by(lb.url(), 4)) == ["b1", "b1", "b2", "b2"]


def test_disable_and_enable_health(lb: Balancer) -> None:
    assert lb.ok("disable health app/b1") == "Health checks of app/b1 disabled; it stays UP.\n"
    b1 = lb.ok("show servers state app").splitlines()[2].split()
    assert b1[:2] == ["app", "b1"]
    assert b1[-3:-1] == ["disabled", "L7OK"]
    assert lb.ok("enable health app/b1") == "Health checks of app/b1 enabled.\n"
    assert lb.ok("show servers state app").splitlines()[2].split()[-3] == "enabled"


def test_drain_lets_keep_alive_clients_finish(lb: Balancer, tmp_path: Path) -> None:
    """A keep-alive client with a request in flight on b1; b1 is drained: new requests go to
    b2, the one in flight finishes on b1, and the client's next request goes to b2."""
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=30)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:

            def slow() -> tuple[int, str]:
                conn.request("GET", "/slow")
                response = conn.getresponse()
                return response.status, response.read().decode()

            future: Future[tuple[int, str]] = pool.submit(slow)
            try:
                wait_for(lambda: any(tmp_path.glob("*.slow")), STARTUP_TIMEOUT, "the slow request")
                (marker,) = tmp_path.glob("*.slow")
                busy = marker.name.removesuffix(".slow")
                other = "b2" if busy == "b1" else "b1"

                sessions = lb.ok("show sessions").splitlines()
                assert sessions[0] == "# 1 session"
                assert f' server={busy} request="GET /slow HTTP/1.1"' in sessions[1]

                assert lb.ok(f"set server app/{busy} state drain") == (
                    f"Server app/{busy} set to drain: now DRAIN (was UP).\n"
                )
                assert set(served_by(lb.url("/new"), 4)) == {other}
                assert future.running()  # still in flight
            finally:
                (tmp_path / "release").touch()
            status, body = future.result(timeout=30)
        assert (status, body) == (200, f"{busy} /slow\n")
        conn.request("GET", "/again")  # the same connection: kept alive
        response = conn.getresponse()
        assert (response.status, response.read().decode()) == (200, f"{other} /again\n")
    finally:
        conn.close()
    assert f"server app/{busy} is now DRAIN (set by the operator)" in lb.log.read_text()


# -- errors ---------------------------------------------------------------------------------------


def test_errors_are_one_line_and_exit_1(lb: Balancer, tmp_path: Path) -> None:
    assert lb.error("foo") == "Unknown command: foo. Try 'help'."
    assert lb.error("set server app/x state drain") == "No such server: app/x."
    assert lb.error("set server web/b1 state drain") == "No such backend: web."
    assert lb.error("set server app/b1 weight 300") == "Weight must be 0-256, got 300."
    assert lb.error("set server app/b1 state up") == (
        "Unknown state 'up': expected ready, drain or maint."
    )
    assert lb.error("show stat xml") == "Usage: show stat [json]."
    missing = tmp_path / "nothing.sock"
    result = lb.ctl("show info", socket_path=missing)
    assert result.code == 1
    assert result.err.startswith(f"trilb: error: cannot reach the admin socket {missing}: ")
    assert "No such file or directory" in result.err
    assert len(result.err.splitlines()) == 1


def test_socket_from_config_mode_and_removal(lb: Balancer, tmp_path: Path) -> None:
    assert stat.S_IMODE(os.stat(lb.socket).st_mode) == 0o600
    result = run_trilb("ctl", "-c", str(lb.config), "get", "weight", "app/b1", cwd=tmp_path)
    assert (result.code, result.out, result.err) == (0, "100 (initial 100)\n", "")

    no_admin = tmp_path / "no-admin.toml"
    no_admin.write_text(
        '[frontends.web]\nbind = "127.0.0.1:1"\ndefault_backend = "app"\n\n'
        '[backends.app]\nservers = [{ name = "b1", address = "127.0.0.1:2" }]\n'
    )
    result = run_trilb("ctl", "-c", str(no_admin), "show", "info", cwd=tmp_path)
    assert result.code == 1
    assert result.err == f"trilb: error: {no_admin} has no [admin] socket; use --socket PATH\n"

    lb.proc.send_signal(signal.SIGTERM)
    assert lb.proc.wait(timeout=10) == 0
    assert not lb.socket.exists()
    assert "Traceback" not in lb.log.read_text()
    result = lb.ctl("show info")
    assert result.code == 1
    assert "cannot reach the admin socket" in result.err


def test_a_file_in_the_way_is_a_startup_error(tmp_path: Path) -> None:
    in_the_way = tmp_path / "admin.sock"
    in_the_way.write_text("not a socket")
    config = tmp_path / "trilb.toml"
    config.write_text(CONFIG.format(socket=in_the_way, port=free_port(), b1=1, b2=2))
    result = run_trilb("serve", str(config), cwd=tmp_path)
    assert result.code == 1
    assert "Traceback" not in result.out + result.err
    assert re.search(r"trilb: error: admin\.socket: .* exists and is not a socket", result.err)
    assert in_the_way.read_text() == "not a socket"
