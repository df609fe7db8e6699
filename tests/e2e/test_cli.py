"""``trilb`` as a user runs it: a subprocess driven by curl and httpx, stopped with signals.

The backends are subprocesses too: a small h11 server script (written to the test's tmp_path) that
answers every request with ``<name> <target>`` and an ``X-Served-By: <name>`` header. A request to
``/slow...`` creates ``slow-started`` in tmp_path and answers only once ``release`` exists there,
so a test can hold a request in flight and let it go when it wants.

(Everything lives in this module: a second ``conftest.py`` outside a package would shadow
``tests/proxy/conftest.py`` for ``from conftest import ...``.)
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from e2e_support import (
    PROMPTLY,
    STARTUP_TIMEOUT,
    TRILB,
    TrilbProcess,
    free_port,
    start_backend_process,
    stop_process,
    wait_for,
)

from trilb import __version__

pytestmark = pytest.mark.e2e


@pytest.fixture
def start_backend(tmp_path: Path) -> Iterator[Callable[[str], int]]:
    """``start_backend("b1")`` runs a backend subprocess named b1 and returns its port."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> int:
        proc, port = start_backend_process(tmp_path, name)
        procs.append(proc)
        return port

    yield start
    for proc in procs:
        stop_process(proc)


#: the process must be done within this after being told to stop (grace periods are longer)


def run_trilb(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRILB, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def get(url: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=20) as client:
        return client.get(url)


def curl(*urls: str) -> str:
    result = subprocess.run(
        ["curl", "-s", "-S", "--noproxy", "*", "--max-time", "20", "-D", "-", *urls],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


class Trilb(TrilbProcess):
    """A running ``trilb`` subprocess and the port it serves on."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, out: Path, err: Path) -> None:
        super().__init__(proc, out, err)
        self.port = port

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def access_lines(self, request_line: str) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.endswith(f'"{request_line}"')]


Launch = Callable[[Callable[[int], Sequence[str]], str], Trilb]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """``launch(args_for_port, ready)`` starts ``trilb <args_for_port(port)>`` on a free port and
    waits until it is ready: ``ready`` is "http" (a request through it answers) or a regex for
    its output. A port someone else took meanwhile is replaced by another one."""
    started: list[Trilb] = []

    def start(args_for_port: Callable[[int], Sequence[str]], ready: str) -> Trilb:
        for attempt in range(5):
            port = free_port()
            out, err = tmp_path / f"trilb-{attempt}.out", tmp_path / f"trilb-{attempt}.err"
            with out.open("wb") as out_file, err.open("wb") as err_file:
                proc = subprocess.Popen(
                    [*TRILB, *args_for_port(port)],
                    cwd=tmp_path,
                    stdin=subprocess.DEVNULL,
                    stdout=out_file,
                    stderr=err_file,
                )
            lb = Trilb(proc, port, out, err)
            started.append(lb)
            if _wait_ready(lb, ready):
                return lb
            assert "in use" in lb.stderr, lb.stderr  # lost the race for the port: try another
        pytest.fail("no free port found in 5 attempts")

    yield start
    for lb in started:
        stop_process(lb.proc)


def _wait_ready(lb: Trilb, ready: str) -> bool:
    """True once ready; False if it exited (with 1) before."""
    up: list[bool] = []

    def check() -> bool:
        if lb.proc.poll() is not None:
            assert lb.proc.returncode == 1, (lb.proc.returncode, lb.stderr)
            up.append(False)
            return True
        if ready != "http":
            if re.search(ready, lb.stdout) is None:
                return False
            up.append(True)
            return True
        try:
            with httpx.Client(trust_env=False, timeout=2) as client:
                client.get(lb.url("/ready"))
        except httpx.TransportError:
            return False
        up.append(True)
        return True

    wait_for(check, STARTUP_TIMEOUT, "trilb to start")
    return up[0]


CONFIG = """
[frontends.web]
bind = "127.0.0.1:{port}"
default_backend = "app"

[backends.app]
servers = [
{servers}
]
"""


def write_config(tmp_path: Path, port: int, backend_ports: Sequence[int]) -> Path:
    servers = ",\n".join(
        f'  {{ name = "b{i + 1}", address = "127.0.0.1:{p}" }}' for i, p in enumerate(backend_ports)
    )
    path = tmp_path / f"trilb-{port}.toml"
    path.write_text(CONFIG.format(port=port, servers=servers))
    return path


ServeFactory = Callable[..., Trilb]


@pytest.fixture
def serve(tmp_path: Path, launch: Launch, start_backend: Callable[[str], int]) -> ServeFactory:
    """``serve("-q", grace=5)``: backends b1 and b2 and ``trilb [options] serve cfg.toml``."""
    backend_ports = [start_backend("b1"), start_backend("b2")]

    def start(*options: str, grace: float | None = None) -> Trilb:
        def args(port: int) -> list[str]:
            config = write_config(tmp_path, port, backend_ports)
            extra = [] if grace is None else ["--grace", str(grace)]
            return [*options, "serve", str(config), *extra]

        return launch(args, "http")

    return start


# -- trilb --version / check ---------------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    result = run_trilb("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"trilb {__version__}\n"
    assert __version__ == "0.1.0"


GOOD = """
[frontends.web]
bind = ["127.0.0.1:8080"]
default_backend = "app"

[backends.app]
servers = [{ name = "s1", address = "127.0.0.1:9001", weight = 10 }]
"""

BAD = """
[frontends.web]
bind = "127.0.0.1:8080"
default_backend = "nowhere"
timeout_clinet = "5s"

[backends.app]
servers = [{ name = "s1", address = "127.0.0.1:9001", weight = "heavy" }]
"""


def test_check_valid(tmp_path: Path) -> None:
    (tmp_path / "good.toml").write_text(GOOD)
    result = run_trilb("check", "good.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert "valid" in lines[0]
    assert result.stderr == ""


def test_check_reports_every_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(BAD)
    result = run_trilb("check", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    err = result.stderr
    assert re.search(
        r"frontends\.web\.timeout_clinet: unknown key.*did you mean 'timeout_client'", err
    )
    assert re.search(r'backends\.app\.servers\[0\]\.weight: .*"heavy"', err)
    assert re.search(r"frontends\.web\.default_backend: .*'nowhere'", err)
    problems = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(problems) == 3, err


def test_check_toml_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "syntax.toml").write_text(
        '[frontends.web]\ndefault_backend = "app"\nbind = = "127.0.0.1:80"\n\n[backends.app]\n'
    )
    result = run_trilb("check", "syntax.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "syntax.toml" in result.stderr
    assert re.search(r"line 3\b", result.stderr), result.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    result = run_trilb("check", "missing.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "missing.toml" in result.stderr


# -- trilb serve ------------------------------------------------------------------------------


def test_serve_with_curl_and_httpx_then_sigterm(serve: ServeFactory) -> None:
    lb = serve()
    assert re.search(r"info: frontend web listening on 127\.0\.0\.1:\d+", lb.stdout)

    # curl, two requests on one keep-alive connection: round-robin over both backends
    out = curl(lb.url("/curl-1"), lb.url("/curl-2"))
    heads = re.findall(r"^HTTP/1\.1 (\d{3})", out, re.MULTILINE)
    assert heads == ["200", "200"], out
    assert sorted(re.findall(r"^X-Served-By: (\S+)", out, re.MULTILINE | re.IGNORECASE)) == [
        "b1",
        "b2",
    ]
    assert re.search(r"^b\d /curl-1$", out, re.MULTILINE)
    assert re.search(r"^b\d /curl-2$", out, re.MULTILINE)

    response = get(lb.url("/httpx?x=1"))
    assert response.status_code == 200
    assert re.fullmatch(r"b\d /httpx\?x=1\n", response.text)

    for request_line in ("GET /curl-1 HTTP/1.1", "GET /curl-2 HTTP/1.1", "GET /httpx?x=1 HTTP/1.1"):
        lb.wait_output(re.escape(f'"{request_line}"') + "$")
        lines = lb.access_lines(request_line)
        assert len(lines) == 1, lines
        assert re.search(r" web app/b\d \S+ 200 \d+ - - ---- ", lines[0]), lines[0]

    lb.signal(signal.SIGTERM)
    assert lb.wait() == 0
    assert "Traceback" not in lb.stdout + lb.stderr
    assert "info: stopped" in lb.stdout


def test_graceful_stop_with_request_in_flight(serve: ServeFactory, tmp_path: Path) -> None:
    lb = serve(grace=30)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future: Future[httpx.Response] = pool.submit(get, lb.url("/slow"))
        try:
            wait_for((tmp_path / "slow-started").exists, PROMPTLY, "the request to reach a backend")
            lb.signal(signal.SIGTERM)
            wait_for(lambda: refuses_connections(lb.port), PROMPTLY, "the listener to close")
            assert lb.proc.poll() is None  # still running: draining
        finally:
            (tmp_path / "release").touch()
        response = future.result(timeout=30)
    assert response.status_code == 200
    assert re.fullmatch(r"b\d /slow\n", response.text)
    assert response.headers["connection"] == "close"
    assert lb.wait() == 0
    assert len(lb.access_lines("GET /slow HTTP/1.1")) == 1
    assert "SIGTERM received: draining" in lb.stdout
    assert "Traceback" not in lb.stdout + lb.stderr


def test_second_sigint_stops_at_once(serve: ServeFactory, tmp_path: Path) -> None:
    lb = serve(grace=60)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future: Future[httpx.Response] = pool.submit(get, lb.url("/slow"))
        try:
            wait_for((tmp_path / "slow-started").exists, PROMPTLY, "the request to reach a backend")
            lb.signal(signal.SIGINT)
            lb.wait_output("SIGINT received: draining", PROMPTLY)
            lb.signal(signal.SIGINT)
            assert lb.wait() == 0  # long before the 60 s grace period
        finally:
            (tmp_path / "release").touch()
        with pytest.raises(httpx.TransportError):
            future.result(timeout=30)  # cut: the request never completed
    assert "SIGINT received again: stopping now" in lb.stdout
    assert "Traceback" not in lb.stdout + lb.stderr


def test_quiet_logs_requests_but_no_info(serve: ServeFactory) -> None:
    lb = serve("-q")
    assert get(lb.url("/quiet")).status_code == 200
    lb.wait_output(re.escape('"GET /quiet HTTP/1.1"') + "$")
    lb.signal(signal.SIGTERM)
    assert lb.wait() == 0
    assert " info: " not in lb.stdout
    assert len(lb.access_lines("GET /quiet HTTP/1.1")) == 1


def test_serve_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, port, [9])
        result = run_trilb("serve", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "frontends.web.bind" in lines[0]
    assert str(port) in lines[0]


def test_serve_bad_config_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(BAD)
    result = run_trilb("serve", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "frontends.web.timeout_clinet" in result.stderr


# -- trilb demo ----------------------------------------------------------------------------------


def test_demo(launch: Launch) -> None:
    lb = launch(lambda port: ["demo", "--port", str(port)], r"open http://\S+/")
    url = lb.wait_output(r"open (http://127\.0\.0\.1:(\d+)/)")
    assert int(url.group(2)) == lb.port
    first, second = get(url.group(1)), get(url.group(1))
    assert (first.status_code, second.status_code) == (200, 200)
    assert [first.headers["x-served-by"], second.headers["x-served-by"]] == ["demo-1", "demo-2"]
    assert "Served by demo-1" in first.text
    assert "Served by demo-2" in second.text
    lb.signal(signal.SIGINT)
    assert lb.wait() == 0
    assert "Traceback" not in lb.stdout + lb.stderr


def test_demo_over_tls_with_its_dev_certificate(launch: Launch, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    lb = launch(
        lambda port: ["demo", "--tls", "--certs-dir", str(certs), "--port", str(port)],
        r"open https://\S+/",
    )
    url = lb.wait_output(r"open (https://localhost:(\d+)/)")
    https = curl("--cacert", str(certs / "ca.pem"), url.group(1))
    assert "Served by demo-" in https
    write_out = ["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"]
    redirect = subprocess.run(
        ["curl", "-s", "--noproxy", "*", *write_out, f"http://127.0.0.1:{lb.port + 1}/page?q=1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert redirect == f"301 https://127.0.0.1:{lb.port}/page?q=1"
    lb.signal(signal.SIGINT)
    assert lb.wait() == 0


def test_sighup_reloads(serve: ServeFactory) -> None:
    # (reloading under load, and invalid files: test_reload_serve.py)
    lb = serve()
    lb.signal(signal.SIGHUP)
    lb.wait_output(r"SIGHUP received: reloading the configuration")
    lb.wait_output(r"reloaded: 1 frontends, 1 backends")
    assert get(lb.url("/after-hup")).status_code == 200  # still serving
    lb.signal(signal.SIGTERM)
    assert lb.wait() == 0
