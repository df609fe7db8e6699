"""Hot reload of ``trilb serve`` as an operator does it: rewrite the config file, then SIGHUP (or
``trilb ctl reload``), while clients keep coming.

trilb and four backends run as subprocesses (the backends answer ``NAME TARGET`` with an
``X-Served-By: NAME`` header). Client threads send requests all along -- on keep-alive
connections and on new ones -- and check every answer; a request held in flight on a backend
(``/slow``) spans every reload and must complete too.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
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
[global]
workers = {workers}
{global_extra}

[admin]
socket = "{socket}"

[frontends.web]
bind = "127.0.0.1:{port}"
default_backend = "app"
timeout_server = "30s"

[backends.app]
servers = [
{servers}
]
"""

SERVER = '  {{ name = "{name}", address = "127.0.0.1:{port}", weight = {weight} }},'

#: the servers and weights of each configuration: the first, then ten SIGHUP reloads
PLANS: list[dict[str, int]] = [
    {"b1": 100, "b2": 100},
    {"b2": 50, "b3": 150},
    {"b3": 100, "b4": 100, "b1": 10},
    {"b4": 100},
    {"b1": 100, "b2": 100, "b3": 100, "b4": 100},
    {"b2": 200, "b4": 1},
    {"b1": 1, "b3": 256},
    {"b3": 100},
    {"b4": 30, "b2": 70},
    {"b1": 100, "b4": 100, "b3": 5},
    {"b2": 100, "b1": 100},
]

#: how long one client request may take (a loaded machine; a reload takes milliseconds)
REQUEST_TIMEOUT = 20.0


@attrs.define
class Serve:
    """A running ``trilb serve``, its config file, its output, its backends."""

    proc: subprocess.Popen[bytes] | None
    port: int
    config: Path
    socket: Path
    output: Path
    backends: dict[str, int]
    cwd: Path
    #: 1: one process; 2: a master and two workers (trilb.master)
    workers: int = 1

    @property
    def reloaded(self) -> str:
        """The log line that says a reload is complete (the master's, with workers)."""
        where = "master: " if self.workers > 1 else ""
        return f"info: {where}reloaded: 1 frontends, 1 backends"

    def write(self, plan: dict[str, int], *, extra: str = "", global_extra: str = "") -> None:
        servers = "\n".join(
            SERVER.format(name=name, port=self.backends[name], weight=weight)
            for name, weight in plan.items()
        )
        text = CONFIG.format(
            socket=self.socket,
            port=self.port,
            servers=servers,
            workers=self.workers,
            global_extra=global_extra,
        )
        text += extra
        temporary = self.config.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.config)  # as an editor or a deploy tool saves it

    def log(self) -> str:
        return self.output.read_text()

    def sighup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_log(self, text: str, count: int = 1) -> None:
        wait_for(lambda: self.log().count(text) >= count, STARTUP_TIMEOUT, repr(text))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ctl(self, *words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*TRILB, "ctl", "--socket", str(self.socket), *words],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def serve(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Serve]:
    """``trilb serve`` in front of ``PLANS[0]`` (backends b1..b4 all run), with an admin socket,
    on a free port (another one if someone took it meanwhile); as one process, and as a master
    with two workers."""
    procs: list[subprocess.Popen[bytes]] = []
    backends: dict[str, int] = {}
    started: list[Serve] = []
    try:
        for name in ("b1", "b2", "b3", "b4"):
            proc, backends[name] = start_backend_process(tmp_path, name)
            procs.append(proc)
        for attempt in range(5):
            output = tmp_path / f"trilb-{attempt}.log"
            config = tmp_path / "trilb.toml"
            running = Serve(
                proc=None,
                port=free_port(),
                config=config,
                socket=tmp_path / "admin.sock",
                output=output,
                backends=backends,
                cwd=tmp_path,
                workers=request.param,
            )
            running.write(PLANS[0])
            with output.open("wb") as out:
                running.proc = subprocess.Popen(
                    [*TRILB, "serve", str(config)],
                    cwd=tmp_path,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            started.append(running)
            process = running.proc

            def ready(running: Serve = running, process: subprocess.Popen[bytes] = process) -> bool:
                return process.poll() is not None or "admin socket listening" in running.log()

            wait_for(ready, STARTUP_TIMEOUT, "trilb to start")
            if process.poll() is None:
                break
            assert "in use" in output.read_text(), output.read_text()
        else:
            pytest.fail("no free port found in 5 attempts")
        yield running
    finally:
        (tmp_path / "release").touch()
        for running in started:
            if running.proc is not None:
                stop_process(running.proc)
        for proc in procs:
            stop_process(proc)


@attrs.define
class Load:
    """The client threads' record: requests done, failures, and who answered."""

    done: int = 0
    failures: list[str] = attrs.Factory(list)
    stop: threading.Event = attrs.Factory(threading.Event)
    lock: threading.Lock = attrs.Factory(threading.Lock)

    def record(self, path: str, status: int, served_by: str | None, body: bytes) -> None:
        with self.lock:
            self.done += 1
            expected = f"{served_by} {path}\n".encode()
            if status != 200 or served_by is None or body != expected:
                self.failures.append(f"{path}: {status} {served_by} {body[:200]!r}")

    def fail(self, path: str, exc: BaseException) -> None:
        with self.lock:
            self.done += 1
            self.failures.append(f"{path}: {exc!r}")

    def wait_more(self, count: int) -> None:
        target = self.done + count
        wait_for(lambda: self.done >= target, STARTUP_TIMEOUT, f"{count} more requests")


def keep_alive_client(load: Load, serve: Serve, worker: int) -> None:
    with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT) as client:
        number = 0
        while not load.stop.is_set():
            number += 1
            path = f"/ka/{worker}/{number}"
            try:
                response = client.get(serve.url(path))
            except httpx.HTTPError as exc:
                load.fail(path, exc)
                continue
            load.record(
                path, response.status_code, response.headers.get("x-served-by"), response.content
            )


def new_connection_client(load: Load, serve: Serve, worker: int) -> None:
    number = 0
    while not load.stop.is_set():
        number += 1
        path = f"/nc/{worker}/{number}"
        conn = http.client.HTTPConnection("127.0.0.1", serve.port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
            load.record(path, response.status, response.getheader("X-Served-By"), body)
        except (OSError, http.client.HTTPException) as exc:
            load.fail(path, exc)
        finally:
            conn.close()


def served_by(serve: Serve, count: int) -> set[str]:
    names = set()
    for _ in range(count):
        with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT) as client:
            response = client.get(serve.url("/who"))
        assert response.status_code == 200
        names.add(response.headers["x-served-by"])
    return names


def test_sighup_reloads_under_load_without_a_failure(serve: Serve) -> None:
    load = Load()
    slow: dict[str, object] = {}

    def slow_request() -> None:
        try:
            with httpx.Client(trust_env=False, timeout=STARTUP_TIMEOUT * 4) as client:
                response = client.get(serve.url("/slow-long"))
            slow["status"] = response.status_code
            slow["body"] = response.content
            slow["server"] = response.headers.get("x-served-by")
        except httpx.HTTPError as exc:
            slow["error"] = repr(exc)

    threads = [threading.Thread(target=slow_request)]
    threads += [threading.Thread(target=keep_alive_client, args=(load, serve, w)) for w in range(3)]
    threads += [
        threading.Thread(target=new_connection_client, args=(load, serve, w)) for w in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: (serve.cwd / "slow-started").exists(), STARTUP_TIMEOUT, "/slow")
        for number, plan in enumerate(PLANS[1:], start=1):
            load.wait_more(30)
            serve.write(plan)
            serve.sighup()
            serve.wait_log(serve.reloaded, number)
        load.wait_more(30)
        assert served_by(serve, 6) <= set(PLANS[-1])
    finally:
        (serve.cwd / "release").touch()
        load.stop.set()
        for thread in threads:
            thread.join(timeout=STARTUP_TIMEOUT * 4)
    print(f"\n{load.done} requests through {len(PLANS) - 1} SIGHUP reloads: {load.failures}")
    assert load.failures == []
    assert load.done >= 30 * len(PLANS)
    assert slow.get("status") == 200, slow
    assert slow["body"] == f"{slow['server']} /slow-long\n".encode()
    log = serve.log()
    assert log.count("SIGHUP received: reloading the configuration") == len(PLANS) - 1
    assert "Traceback" not in log
    assert serve.alive()


def test_an_invalid_file_keeps_the_running_configuration(serve: Serve) -> None:
    assert served_by(serve, 4) == {"b1", "b2"}
    serve.write({"b3": 100}, global_extra='max_conections = 3\ntimeout_drain = "soon"\n')
    serve.sighup()
    serve.wait_log("reload failed (2 errors); the running configuration is unchanged")
    log = serve.log()
    assert "reload: global.max_conections: unknown key" in log
    assert "reload: global.timeout_drain:" in log
    assert served_by(serve, 4) == {"b1", "b2"}
    assert serve.alive()
    # fixed: the next SIGHUP applies it
    serve.write({"b3": 100})
    serve.sighup()
    serve.wait_log(serve.reloaded)
    assert served_by(serve, 4) == {"b3"}


def test_ctl_reload(serve: Serve) -> None:
    serve.write({"b4": 100})
    result = serve.ctl("reload")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "Reloaded: 1 frontends, 1 backends.\n",
        "",
    )
    assert served_by(serve, 3) == {"b4"}
    serve.write({"b1": 100}, extra='\n[stats]\nbind = "127.0.0.1:0"\nrefresh = "never"\n')
    result = serve.ctl("reload")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        "trilb: error: Reload failed (1 error; still running the previous configuration): "
        "stats.refresh: "
    ), result.stderr
    assert served_by(serve, 3) == {"b4"}
    # a section a reload does not apply: a warning, and the rest is applied
    serve.write({"b1": 100}, extra='\n[stats]\nbind = "127.0.0.1:0"\n')
    assert serve.ctl("reload").returncode == 0
    serve.wait_log("reload: [stats] changed: that needs a restart (not applied)")
    assert served_by(serve, 3) == {"b1"}
