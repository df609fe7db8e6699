"""``trilb serve`` logging to a file, rotated as logrotate does it: rename, then SIGUSR2 -- or
rename alone, which trilb notices by itself within about a second.

The frontend answers every request itself (``redirect_https``), so each request makes one access
line without any backend.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from e2e_support import free_port
from e2e_support import wait_for as poll

pytestmark = pytest.mark.e2e

#: how long trilb may take to start, or a condition to come true, on a loaded machine
TIMEOUT = 15.0

CONFIG = """
[log]
target = "file:logs/trilb.log"

[frontends.web]
bind = ["127.0.0.1:{port}"]
redirect_https = {{ port = 8443 }}
"""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    poll(condition, timeout, what)


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, folder: Path) -> None:
        self.proc = proc
        self.port = port
        self.folder = folder
        self.log = folder / "logs" / "trilb.log"

    def get(self, path: str) -> None:
        with httpx.Client(trust_env=False, timeout=20) as client:
            assert client.get(f"http://127.0.0.1:{self.port}{path}").status_code == 301

    def output(self) -> str:
        return (self.folder / "out").read_text() + (self.folder / "err").read_text()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``trilb serve`` on a free port, logging to logs/trilb.log, ready (its first line is in)."""
    (tmp_path / "logs").mkdir()
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(5):
            port = free_port()
            (tmp_path / "config.toml").write_text(CONFIG.format(port=port))
            with (tmp_path / "out").open("wb") as out, (tmp_path / "err").open("wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "trilb", "serve", "config.toml"],
                    cwd=tmp_path,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                )
            lb = Served(proc, port, tmp_path)

            def started(proc: subprocess.Popen[bytes] = proc, lb: Served = lb) -> bool:
                return proc.poll() is not None or "listening on" in text(lb.log)

            wait_for(started, "trilb to start")
            if proc.poll() is None:
                yield lb
                break
            assert "in use" in lb.output(), lb.output()  # lost the port to someone: again
        else:
            pytest.fail("no free port found in 5 attempts")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(lb: Served) -> None:
    lb.proc.send_signal(signal.SIGTERM)
    assert lb.proc.wait(timeout=10) == 0
    assert lb.output() == ""  # everything went to the file


def test_rename_then_sigusr2(served: Served) -> None:
    logs = served.folder / "logs"
    served.get("/before")
    wait_for(lambda: '"GET /before HTTP/1.1"' in text(served.log), "the first access line")
    served.log.rename(logs / "trilb.log.1")
    served.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: "SIGUSR2 received" in text(served.log), "a new file at the old path")
    served.get("/after")
    wait_for(lambda: '"GET /after HTTP/1.1"' in text(served.log), "the access line after")
    stop(served)
    old, new = text(logs / "trilb.log.1"), text(served.log)
    assert "listening on" in old
    assert '"GET /before HTTP/1.1"' in old
    assert "/after" not in old
    assert "/before" not in new
    assert new.rstrip("\n").endswith("trilb info: stopped")


def test_rename_alone_is_noticed(served: Served) -> None:
    logs = served.folder / "logs"
    served.get("/before")
    wait_for(lambda: '"GET /before HTTP/1.1"' in text(served.log), "the first access line")
    served.log.rename(logs / "trilb.log.1")
    count = 0

    def reopened() -> bool:
        nonlocal count
        count += 1
        served.get(f"/probe-{count}")
        return '"GET /probe-' in text(served.log)

    # lines keep going to the renamed file until trilb checks (about every second)
    wait_for(reopened, "trilb to reopen the renamed log file", timeout=5)
    stop(served)
    old, new = text(logs / "trilb.log.1"), text(served.log)
    assert '"GET /before HTTP/1.1"' in old
    assert "/before" not in new
    probes = [line for line in (old + new).splitlines() if "/probe-" in line]
    assert len(probes) == count  # not a line lost in the switch
