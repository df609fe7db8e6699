"""trilb in front of two real WordPress servers (examples/wordpress), driven only through trilb.

``examples/wordpress/stack.py up`` brings up MariaDB, two Apache + mod_php servers sharing one
WordPress and one database, and trilb (HTTPS for blog.test, plain HTTP redirected), installing the
Debian packages it lacks (as root). Every request here is made with curl, as a user would, through
trilb's frontends (``--resolve blog.test:PORT:127.0.0.1`` and the stack's development CA), from
the source address 127.0.0.2 so that the servers' access logs can show the real client apart from
trilb (127.0.0.1).

The tests run in file order on one stack and one WordPress site (module fixtures): install,
log in, post, upload, links, stickiness, spreading, access logs, and last a server killed and
brought back. Run them with ``nox -s e2e`` (or ``pytest -m wordpress``); the default test run
leaves them out (pyproject's addopts), since they install packages and take a minute or two.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.wordpress]

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "examples" / "wordpress" / "stack.py"
SITE = "blog.test"
#: the test's own client address: trilb and Apache see 127.0.0.1 for trilb, this for the client
CLIENT_IP = "127.0.0.2"
SERVERS = ("wp1", "wp2")
ADMIN_USER = "admin"
ADMIN_PASSWORD = "trilb-" + secrets.token_urlsafe(12)
#: `stack.py up` may have to install Debian packages first
UP_TIMEOUT = 900.0
#: a server that dies must be taken out by the health checks (1s interval, fall 2) within this
HEALTH_DEADLINE = 30.0


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


def free_ports(count: int) -> list[int]:
    """Ports free right now (all held open together, so they differ)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# --- the stack --------------------------------------------------------------------------------


@dataclass
class Stack:
    state_dir: Path
    data: dict[str, Any]

    @property
    def https_port(self) -> int:
        return int(self.data["ports"]["https"])

    @property
    def http_port(self) -> int:
        return int(self.data["ports"]["http"])

    @property
    def site_url(self) -> str:
        return str(self.data["site_url"])

    def url(self, path: str) -> str:
        return self.site_url + path

    def reload(self) -> None:
        self.data = json.loads((self.state_dir / "state.json").read_text())

    def pid(self, name: str) -> int:
        self.reload()
        return int(self.data["pids"][name])

    def trilb_log(self) -> str:
        return Path(self.data["trilb_log"]).read_text(errors="replace")

    def access_log(self, server: str) -> list[str]:
        text = Path(self.data["apache"][server]["access_log"]).read_text(errors="replace")
        return text.splitlines()

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(STACK), "--state-dir", str(self.state_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if shutil.which("curl") is None and os.geteuid() != 0:
        pytest.fail("these tests need curl (apt-get install curl), or root to install it")
    # not pytest's tmp_path: as root the servers run as www-data and mysql, who must be able to
    # reach the folder (pytest's base folder is private to its user)
    state_dir = Path(tempfile.mkdtemp(prefix="trilb-wordpress-e2e-"))
    http, https, wp1, wp2, db, stats = free_ports(6)
    up = subprocess.run(
        [
            sys.executable,
            str(STACK),
            "--state-dir",
            str(state_dir),
            "up",
            f"--http-port={http}",
            f"--https-port={https}",
            f"--wp-ports={wp1},{wp2}",
            f"--db-port={db}",
            f"--stats-port={stats}",
        ],
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT,
        check=False,
    )
    if up.returncode != 0:
        shutil.rmtree(state_dir, ignore_errors=True)
        pytest.fail(f"stack.py up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    stack = Stack(state_dir, {})
    stack.reload()
    try:
        yield stack
    finally:
        down = stack.run("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not state_dir.exists()


# --- a client: curl -----------------------------------------------------------------------------


@dataclass
class Response:
    url: str
    status: int
    headers: dict[str, str]
    set_cookies: list[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def backend(self) -> str:
        return self.headers.get("x-backend", "-")

    def __repr__(self) -> str:
        return f"<{self.status} from {self.backend} for {self.url}>"


@dataclass
class Browser:
    """curl through trilb; with ``cookies=True`` a cookie jar keeps state between requests,
    without, every request is a new visitor."""

    stack: Stack
    workdir: Path
    cookies: bool = True
    jar: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.jar = self.workdir / "cookies.txt"

    def request(
        self,
        method: str,
        url: str,
        *,
        form: Mapping[str, str] | None = None,
        body: Path | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        if url.startswith("/"):
            url = self.stack.url(url)
        head_file, body_file = self.workdir / "head", self.workdir / "body"
        argv = [
            "curl",
            "--silent",
            "--show-error",
            "--http1.1",
            "--max-time",
            "120",
            "--cacert",
            str(self.stack.data["ca"]),
            "--resolve",
            f"{SITE}:{self.stack.https_port}:127.0.0.1",
            "--resolve",
            f"{SITE}:{self.stack.http_port}:127.0.0.1",
            "--interface",
            CLIENT_IP,
            "--request",
            method,
            "--dump-header",
            str(head_file),
            "--output",
            str(body_file),
        ]
        if self.cookies:
            argv += ["--cookie", str(self.jar), "--cookie-jar", str(self.jar)]
        for name, value in (headers or {}).items():
            argv += ["--header", f"{name}: {value}"]
        for name, value in (form or {}).items():
            argv += ["--data-urlencode", f"{name}={value}"]
        if body is not None:
            argv += ["--data-binary", f"@{body}"]
        argv.append(url)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=150, check=False)
        if done.returncode != 0:
            pytest.fail(f"curl {method} {url} failed ({done.returncode}): {done.stderr.strip()}")
        # the last head: before it may come a "100 Continue" (curl sends Expect with big bodies)
        heads = [
            head for head in head_file.read_bytes().decode("latin-1").split("\r\n\r\n") if head
        ]
        lines = heads[-1].splitlines()
        status = int(lines[0].split()[1])
        response_headers: dict[str, str] = {}
        set_cookies = []
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                response_headers[name.strip().lower()] = value.strip()
                if name.strip().lower() == "set-cookie":
                    set_cookies.append(value.strip())
        return Response(url, status, response_headers, set_cookies, body_file.read_bytes())

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Response:
        return self.request("POST", url, **kwargs)

    def cookie(self, name: str) -> str | None:
        """A cookie's value from the jar (curl's Netscape format)."""
        if not self.jar.exists():
            return None
        for line in self.jar.read_text().splitlines():
            fields = line.removeprefix("#HttpOnly_").split("\t")
            if len(fields) == 7 and fields[5] == name:
                return fields[6]
        return None

    def cookie_names(self) -> list[str]:
        if not self.jar.exists():
            return []
        return [
            fields[5]
            for line in self.jar.read_text().splitlines()
            if len(fields := line.removeprefix("#HttpOnly_").split("\t")) == 7
        ]

    def rest_nonce(self) -> str:
        """The nonce WordPress wants with cookie-authenticated REST requests."""
        response = self.get("/wp-admin/admin-ajax.php?action=rest-nonce")
        assert response.status == 200, response
        assert re.fullmatch(r"[0-9a-f]{10}", response.text), response.text[:200]
        return response.text


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="trilb-wordpress-clients-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def new_visitor(stack: Stack, workdir: Path) -> Browser:
    """A browser without cookies: each request is someone new."""
    return Browser(stack, workdir / "anonymous", cookies=False)


# --- WordPress ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(stack: Stack, new_visitor: Browser) -> Stack:
    """WordPress, installed through trilb as its installer's form does it."""
    first = new_visitor.get("/")
    assert first.status == 302, first
    # WordPress builds the address from WP_HOME: the https site, whichever server answered
    assert first.headers["location"] == stack.url("/wp-admin/install.php"), first.headers
    installed = new_visitor.post(
        "/wp-admin/install.php?step=2",
        form={
            "weblog_title": "trilb blog",
            "user_name": ADMIN_USER,
            "admin_password": ADMIN_PASSWORD,
            "admin_password2": ADMIN_PASSWORD,
            "pw_weak": "1",
            "admin_email": "admin@blog.test",
            "blog_public": "0",
            "language": "",
        },
    )
    assert installed.status == 200, installed
    assert "<h1>Success!</h1>" in installed.text, installed.text[:2000]
    return stack


@pytest.fixture(scope="module")
def admin(site: Stack, workdir: Path) -> Browser:
    """The administrator, logged in to wp-admin (a cookie jar: WordPress's and trilb's cookies)."""
    browser = Browser(site, workdir / "admin")
    form = browser.get("/wp-login.php")  # sets WordPress's test cookie
    assert form.status == 200, form
    login = browser.post(
        "/wp-login.php",
        form={
            "log": ADMIN_USER,
            "pwd": ADMIN_PASSWORD,
            "rememberme": "forever",
            "wp-submit": "Log In",
            "redirect_to": site.url("/wp-admin/"),
            "testcookie": "1",
        },
    )
    assert login.status == 302, (login, login.text[:2000])
    assert login.headers["location"] == site.url("/wp-admin/"), login.headers
    return browser


@dataclass
class Post:
    id: int
    title: str
    link: str


@pytest.fixture(scope="module")
def post(admin: Browser) -> Post:
    """A post published through the REST API (cookie authentication with its nonce)."""
    title = f"Hello from behind trilb {secrets.token_hex(4)}"
    created = admin.post(
        "/?rest_route=/wp/v2/posts",
        headers={"X-WP-Nonce": admin.rest_nonce(), "Content-Type": "application/json"},
        body=write_json(
            admin.workdir / "post.json",
            {"title": title, "content": "<p>Served over HTTPS by trilb.</p>", "status": "publish"},
        ),
    )
    assert created.status == 201, (created, created.text[:2000])
    data = json.loads(created.body)
    return Post(int(data["id"]), title, str(data["link"]))


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def noise_png(path: Path, side: int) -> bytes:
    """A PNG of random pixels (it does not compress: about side*side*3 bytes)."""
    raw = b"".join(b"\0" + os.urandom(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(png)
    return png


def from_each_server(fetch: Callable[[], Response], tries: int = 12) -> dict[str, Response]:
    """Fetch as new visitors until both servers have answered once."""
    seen: dict[str, Response] = {}
    for _ in range(tries):
        response = fetch()
        seen.setdefault(response.backend, response)
        if set(SERVERS) <= set(seen):
            return seen
    pytest.fail(f"not answered by both servers in {tries} requests: {seen}")


# --- the tests ----------------------------------------------------------------------------------


def test_plain_http_is_redirected_to_the_https_site(stack: Stack, new_visitor: Browser) -> None:
    response = new_visitor.get(f"http://{SITE}:{stack.http_port}/?p=1&x=y")
    assert response.status == 301, response
    assert response.headers["location"] == stack.url("/?p=1&x=y")


def test_logged_in_admin_reaches_wp_admin_through_its_route(admin: Browser, site: Stack) -> None:
    dashboard = admin.get("/wp-admin/")
    assert dashboard.status == 200, dashboard
    assert "Dashboard" in dashboard.text
    # WordPress knew it was served over HTTPS: it gave the secure wp-admin cookie
    assert any(name.startswith("wordpress_sec_") for name in admin.cookie_names())
    assert any(name.startswith("wordpress_logged_in_") for name in admin.cookie_names())
    # the admin pages went through the route to the wp-admin backend, the rest did not
    log = site.trilb_log()
    assert re.search(r' https~ wp-admin/wp[12] .* "GET /wp-admin/ HTTP/1\.1"', log), log[-3000:]
    assert re.search(r' https~ wp-admin/wp[12] .* "POST /wp-login\.php HTTP/1\.1"', log)
    assert re.search(r' https~ wordpress/wp[12] .* "GET / HTTP/1\.1"', log)


def test_a_post_is_created_and_read_publicly_from_both_servers(
    post: Post, site: Stack, new_visitor: Browser
) -> None:
    assert post.link == site.url(f"/?p={post.id}")
    pages = from_each_server(lambda: new_visitor.get(f"/?p={post.id}"))
    for page in pages.values():
        assert page.status == 200, page
        assert post.title in page.text
        assert "Served over HTTPS by trilb." in page.text


def test_a_large_upload_comes_back_byte_identical(
    admin: Browser, site: Stack, new_visitor: Browser
) -> None:
    image = admin.workdir / "noise.png"
    original = noise_png(image, 1300)
    assert len(original) > 5_000_000
    uploaded = admin.post(
        "/?rest_route=/wp/v2/media",
        headers={
            "X-WP-Nonce": admin.rest_nonce(),
            "Content-Type": "image/png",
            "Content-Disposition": 'attachment; filename="trilb-noise.png"',
        },
        body=image,
    )
    assert uploaded.status == 201, (uploaded, uploaded.text[:2000])
    media = json.loads(uploaded.body)
    source = str(media["source_url"])
    assert source.startswith(site.url("/wp-content/uploads/")), source
    assert source.endswith(".png")
    # both servers share the uploads folder; each must hand the very same bytes back
    downloads = from_each_server(lambda: new_visitor.get(source))
    for download in downloads.values():
        assert download.status == 200, download
        assert download.headers["content-length"] == str(len(original))
        assert hashlib.sha256(download.body).digest() == hashlib.sha256(original).digest()


#: an attribute that makes a browser load or send something over plain HTTP (xmlns:... are names)
HTTP_LINK = re.compile(r"""(?<![\w:-])(?:src|href|action)\s*=\s*["']http://[^"']*""", re.I)


def test_pages_link_to_the_https_site_only(
    admin: Browser, post: Post, site: Stack, new_visitor: Browser
) -> None:
    pages = [
        new_visitor.get("/"),
        new_visitor.get(f"/?p={post.id}"),
        new_visitor.get("/wp-login.php"),
        new_visitor.get("/?feed=rss2"),
        admin.get("/wp-admin/"),
        admin.get("/wp-admin/post-new.php"),
    ]
    for page in pages:
        assert page.status == 200, page
        assert site.url("/") in page.text, page
        assert f"http://{SITE}" not in page.text, page
        assert "http://127.0.0.1" not in page.text, page
        assert not HTTP_LINK.findall(page.text), (page, HTTP_LINK.findall(page.text)[:5])


def test_a_logged_in_session_stays_on_one_server(admin: Browser, post: Post) -> None:
    server = admin.cookie("TRILBSRV")
    assert server in SERVERS, admin.cookie_names()
    paths = ["/", f"/?p={post.id}", "/wp-admin/", "/wp-admin/edit.php", "/?feed=rss2"] * 4
    answered = [admin.get(path) for path in paths]
    assert all(response.status == 200 for response in answered), answered
    assert {response.backend for response in answered} == {server}, answered
    # the public pages know the visitor is logged in (the admin bar)
    assert "wp-admin-bar" in answered[0].text


def test_new_visitors_are_spread_over_both_servers(site: Stack, new_visitor: Browser) -> None:
    answered = [new_visitor.get("/") for _ in range(10)]
    assert all(response.status == 200 for response in answered), answered
    counts = Counter(response.backend for response in answered)
    assert set(counts) == set(SERVERS), counts
    assert min(counts.values()) >= 3, counts  # round robin: about half each
    # and each is given the cookie that will keep it where it landed
    for response in answered:
        assert f"TRILBSRV={response.backend};" in " ".join(response.set_cookies), response


def test_the_access_logs_show_the_real_client_address(site: Stack, new_visitor: Browser) -> None:
    marker = secrets.token_hex(6)
    # a client that claims another address in X-Forwarded-For: trilb appends the real one,
    # and the servers trust only what trilb (127.0.0.1) says
    forged = {"X-Forwarded-For": "203.0.113.9"}
    from_each_server(lambda: new_visitor.get(f"/?marker={marker}", headers=forged))
    for server in SERVERS:
        lines = [line for line in site.access_log(server) if marker in line]
        assert lines, f"no request with the marker in {server}'s access log"
        for line in lines:
            client, peer = line.split()[:2]
            assert (client, peer) == (CLIENT_IP, "127.0.0.1"), line
        # every request these tests made came from CLIENT_IP; only trilb's health checks (and
        # Apache's wake-up calls to its own children) from elsewhere
        for line in site.access_log(server):
            if '"trilb-check"' not in line and "(internal dummy connection)" not in line:
                assert line.split()[0] == CLIENT_IP, line
    # trilb's own log names the same client
    assert re.search(
        rf"^{re.escape(CLIENT_IP)}:\d+ .* \"GET /\?marker={marker} ", site.trilb_log(), re.M
    )


def test_the_stats_page_shows_both_servers(site: Stack) -> None:
    if not site.data.get("stats_url"):
        pytest.skip("the [stats] section of examples/wordpress/trilb.toml is commented out")
    url = str(site.data["stats_url"])
    page = subprocess.run(
        ["curl", "-sS", "--fail", url + "stats.json"], capture_output=True, text=True, check=False
    )
    assert page.returncode == 0, page.stderr
    stats = json.dumps(json.loads(page.stdout))
    for name in ("wordpress", "wp-admin", *SERVERS):
        assert f'"{name}"' in stats, stats[:2000]
    html = subprocess.run(["curl", "-sS", "--fail", url], capture_output=True, check=False)
    assert html.returncode == 0, html.stderr


def log_count(stack: Stack, pattern: str) -> int:
    return len(re.findall(pattern, stack.trilb_log()))


def test_a_killed_server_is_taken_out_and_rejoins(
    admin: Browser, post: Post, site: Stack, new_visitor: Browser
) -> None:
    victim = admin.cookie("TRILBSRV")
    assert victim in SERVERS
    survivor = next(name for name in SERVERS if name != victim)
    down = rf"server wordpress/{victim} is DOWN"
    up = rf"server wordpress/{victim} is UP"
    downs_before, ups_before = log_count(site, down), log_count(site, up)

    def visitors_get_pages() -> None:
        """Sticky and new visitors alike get their pages, all from the surviving server."""
        for response in (
            new_visitor.get("/"),
            new_visitor.get(f"/?p={post.id}"),
            admin.get(f"/?p={post.id}"),
            admin.get("/wp-admin/"),
        ):
            assert response.status == 200, response
            assert response.backend == survivor, response

    # crash it: SIGKILL to the Apache parent and its children (its own process group)
    os.killpg(site.pid(victim), signal.SIGKILL)

    # from the first request on (before the health checks notice) nobody sees an error:
    # a refused connection is retried on the other server
    refused = rf"backend wordpress/{victim}: connect failed"
    refused_before = log_count(site, refused)
    deadline = time.monotonic() + HEALTH_DEADLINE
    while log_count(site, down) == downs_before:
        assert time.monotonic() < deadline, "trilb's health checks did not take the server out"
        visitors_get_pages()
    # (the sticky visitor's first request went to the dead server and was passed on)
    assert log_count(site, refused) > refused_before
    visitors_get_pages()
    # the logged-in visitor was moved to the survivor, is still logged in and stays there
    assert admin.cookie("TRILBSRV") == survivor
    assert "Dashboard" in admin.get("/wp-admin/").text

    started = site.run("start", victim)
    assert started.returncode == 0, started.stdout + started.stderr
    wait_for(lambda: log_count(site, up) > ups_before, HEALTH_DEADLINE, f"{victim} to be UP")

    # new visitors reach it again; the moved session stays where it is now
    seen: set[str] = set()
    deadline = time.monotonic() + HEALTH_DEADLINE
    while victim not in seen:
        assert time.monotonic() < deadline, f"no new visitor reached {victim} again"
        response = new_visitor.get("/")
        assert response.status == 200, response
        seen.add(response.backend)
    for _ in range(4):
        response = admin.get(f"/?p={post.id}")
        assert (response.status, response.backend) == (200, survivor), response
