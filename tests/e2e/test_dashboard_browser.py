"""The stats dashboard in a real browser: Debian's chromium, headless, against ``trilb serve``.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: file
descriptors 3 and 4, NUL-separated JSON), which reports every console message, uncaught
exception and failed load, so that "no console errors" is checked rather than assumed. The test
loads the dashboard (basic auth), waits for the page's own script to refresh it in place, and
takes screenshots at a desktop and a phone size; they are kept in the test's tmp_path.

Chromium must be installed (``apt-get install chromium``; ``.ci/run`` does it): without it this
test fails, it does not skip.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import free_port, start_backend_process, stop_process
from e2e_support import wait_for as poll

pytestmark = pytest.mark.e2e

#: how long any one step may take on a loaded machine
STEP_TIMEOUT = 30.0

USER, PASSWORD = "admin", "s3cret"


def wait_for(condition: Any, what: str, timeout: float = STEP_TIMEOUT) -> None:
    poll(condition, timeout, what)


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc)


def refused_port() -> int:
    """A port nothing listens on (a server there is DOWN)."""
    return free_port()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in reversed(started):
        stop(proc)


def start_backend(tmp_path: Path, name: str, processes: list[subprocess.Popen[bytes]]) -> int:
    proc, port = start_backend_process(tmp_path, name)
    processes.append(proc)
    return port


def start_trilb(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> tuple[str, str]:
    """``trilb serve`` with a stats section; the frontend's and the dashboard's URLs."""
    web1 = start_backend(tmp_path, "web-1", processes)
    web2 = start_backend(tmp_path, "web-2", processes)
    config = tmp_path / "trilb.toml"
    config.write_text(
        f"""
[log]
target = "stdout"

[frontends.web]
bind = "127.0.0.1:0"
default_backend = "app"

[backends.app]
servers = [
  {{ name = "web-1", address = "127.0.0.1:{web1}" }},
  {{ name = "web-2", address = "127.0.0.1:{web2}", weight = 50 }},
  {{ name = "web-3", address = "127.0.0.1:{refused_port()}" }},
]
health_check = {{ type = "tcp", interval = "500ms", fall = 1, rise = 1 }}

[stats]
bind = "127.0.0.1:0"
refresh = "1s"
auth = {{ user = "{USER}", password = "{PASSWORD}" }}
"""
    )
    out = tmp_path / "trilb.out"
    with out.open("wb") as out_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trilb", "serve", str(config)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=subprocess.STDOUT,
        )
    processes.append(proc)
    found: dict[str, str] = {}

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"trilb exited with {proc.returncode}:\n{out.read_text()}")
        text = out.read_text()
        stats = re.search(r"stats listening on (http://\S+)", text)
        web = re.search(r"frontend web listening on (\S+)", text)
        if stats and web:
            found["stats"], found["web"] = stats.group(1), f"http://{web.group(1)}"
        return bool(found)

    wait_for(ready, "trilb to listen")
    return found["web"], found["stats"]


# -- the browser ----------------------------------------------------------------------------------


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "chromium is not installed: this test needs Debian's chromium "
            "(apt-get install -y chromium; .ci/run installs it)"
        )
    return path


class Browser:
    """Headless chromium driven over the DevTools protocol on a pipe; one page (a target).

    Every event is kept; :attr:`problems` lists the console errors, uncaught exceptions and
    failed loads seen so far."""

    def __init__(self, profile: Path) -> None:
        to_browser_read, to_browser = os.pipe()
        from_browser, from_browser_write = os.pipe()
        # The browser expects the pipe on its fds 3 (commands) and 4 (answers); bash moves them
        # there (from high numbers, so that no redirection overwrites another's source; dash
        # takes single-digit descriptors only).
        high_read = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
        high_write = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
        os.close(to_browser_read)
        os.close(from_browser_write)
        args = [
            chromium_path(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{high_read} 4>&{high_write}', "bash", *args],
            pass_fds=(high_read, high_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # (dbus complaints of a machine without a session bus)
        )
        os.close(high_read)
        os.close(high_write)
        self._write_fd = to_browser
        self._read_fd = from_browser
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""
        try:
            target = self.call("Target.createTarget", url="about:blank", session=False)
            attached = self.call(
                "Target.attachToTarget", targetId=target["targetId"], flatten=True, session=False
            )
            self.session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("Browser.close", session=False)
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired, AssertionError):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
            os.close(self._write_fd)
            os.close(self._read_fd)

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read_fd], [], [], left)[0]:
                raise AssertionError("chromium did not answer in time")
            data = os.read(self._read_fd, 1 << 20)
            if not data:
                raise AssertionError(f"chromium exited ({self.proc.poll()})")
            self._buffer += data
        message, _, self._buffer = self._buffer.partition(b"\0")
        result: dict[str, Any] = json.loads(message)
        return result

    def call(self, method: str, *, session: bool = True, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            answer = self._receive(deadline)
            if answer.get("id") != self._next_id:
                if "method" in answer:
                    self.events.append(answer)
                continue
            assert "error" not in answer, f"{method}: {answer['error']}"
            result: dict[str, Any] = answer.get("result", {})
            return result

    def wait_event(self, method: str, since: int) -> dict[str, Any]:
        """The first ``method`` event after the first ``since`` events (waiting for it)."""
        deadline = time.monotonic() + STEP_TIMEOUT
        seen = since
        while True:
            for event in self.events[seen:]:
                if event["method"] == method:
                    return event
            seen = len(self.events)
            message = self._receive(deadline)
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def open(self, url: str, *, width: int, height: int, mobile: bool = False) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=2 if mobile else 1,
            mobile=mobile,
        )
        since = len(self.events)
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", since)

    def screenshot(self, path: Path) -> bytes:
        """The whole page (beyond the viewport) as a PNG."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
        )
        data = base64.b64decode(shot["data"])
        path.write_bytes(data)
        return data

    @property
    def problems(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                found.append(f"uncaught exception: {text}")
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                found.append(f"console.{params['type']}: {args}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"{entry['source']}: {entry['text']} ({entry.get('url', '')})")
            elif method == "Network.loadingFailed":
                found.append(f"load failed: {params.get('errorText')}")
        return found


@contextlib.contextmanager
def open_browser(profile: Path) -> Iterator[Browser]:
    instance = Browser(profile)
    try:
        yield instance
    finally:
        instance.close()


def is_png(data: bytes) -> bool:
    return data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_the_dashboard_renders_and_refreshes_without_console_errors(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    chromium_path()  # fails the test with a clear message when chromium is missing
    web, stats = start_trilb(tmp_path, processes)
    with httpx.Client(trust_env=False, timeout=20) as client:
        assert client.get(stats).status_code == 401  # the browser below sends credentials
        for path in ["/", "/a", "/b", "/missing", "/fail", "/", "/c"] * 4:
            client.get(web + path)

        def web3_down() -> bool:
            page = client.get(stats + "stats.json", auth=(USER, PASSWORD)).json()
            servers = {s["name"]: s for s in page["backends"][0]["servers"]}
            return bool(servers["web-3"]["state"] == "DOWN")

        wait_for(web3_down, "the health checks to take web-3 DOWN")

    with open_browser(tmp_path / "chromium-profile") as browser:
        look_at_the_dashboard(browser, stats, tmp_path)


def look_at_the_dashboard(browser: Browser, stats: str, tmp_path: Path) -> None:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    browser.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})

    # A desktop: every server with its state; the script refreshes the page in place.
    browser.open(stats, width=1280, height=900)
    assert browser.evaluate("document.title") == "trilb statistics"
    text = browser.evaluate("document.getElementById('stats').innerText")
    for expected in ("web-1", "web-2", "web-3", "UP", "DOWN", "Frontends", "Backend app"):
        assert expected in text
    wait_for(
        lambda: str(browser.evaluate("document.getElementById('updated').textContent")).startswith(
            "updated "
        ),
        "the dashboard to refresh itself",
    )
    assert browser.evaluate("document.body.classList.contains('stale')") is False
    desktop = browser.screenshot(tmp_path / "dashboard-desktop.png")
    assert is_png(desktop)

    # A phone: no horizontal scrolling needed, every row a card.
    browser.open(stats, width=390, height=844, mobile=True)
    width = browser.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width}px wide on a 390px screen"
    assert browser.evaluate("getComputedStyle(document.querySelector('thead')).display") == "none"
    phone = browser.screenshot(tmp_path / "dashboard-phone.png")
    assert is_png(phone)

    assert browser.problems == []
    # ... and the check would have seen one (the canary proves the listening works)
    browser.evaluate("setTimeout(function () { throw new Error('canary'); }, 0); 1")
    wait_for(lambda: bool(browser.evaluate("1")) and bool(browser.problems), "the canary")
    assert "canary" in " ".join(browser.problems)
