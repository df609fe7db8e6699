"""``trilb route``: the explanation of where a request goes, from the same code as the proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from trilb.cli import main
from trilb.core.sticky import default_cookie_value

CONFIG = """
[frontends.web]
bind = "*:80"
redirect_https = { port = 443 }
[frontends.websecure]
bind = "*:443"
default_backend = "wordpress"
forwarded_for = true
tls = { certificates = ["site.pem"] }
request_headers = [{ set = ["X-Via", "trilb %[src]"] }]
[[frontends.websecure.routes]]
name = "www"
host = "example.com"
redirect = { prefix = "https://www.example.com", code = 301 }
[[frontends.websecure.routes]]
name = "admin"
backend = "wp-admin"
path_prefix = ["/wp-admin", "/wp-login.php"]
[[frontends.websecure.routes]]
name = "trace"
method = "TRACE"
deny = 405
[backends.wordpress]
cookie = { name = "SERVERID" }
servers = [{ name = "wp1", address = "10.0.0.11:80" }, { name = "wp2", address = "10.0.0.12:80" }]
[backends.wp-admin]
servers = [{ name = "admin1", address = "10.0.0.21:80" }]
"""


@pytest.fixture
def config(tmp_path: Path) -> str:
    import trustme

    trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "site.pem")
    )
    path = tmp_path / "trilb.toml"
    path.write_text(CONFIG)
    return str(path)


def route(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["route", *args])
    return code, capsys.readouterr().out.splitlines()


def test_a_route_with_the_reasons_of_the_ones_before(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = route(capsys, config, "GET https://blog.example.com/wp-admin/ HTTP/1.1")
    assert code == 0
    assert lines[:5] == [
        "frontend: websecure (https, port 443)",
        'route www: no: host: "blog.example.com" is not "example.com"',
        "route admin: matches",
        "backend: wp-admin (balance roundrobin)",
        "server: admin1 (10.0.0.21:80; the first pick, all servers UP and idle)",
    ]
    assert "  + X-Forwarded-Proto: https" in lines
    assert "  + X-Via: trilb 192.0.2.1" in lines


def test_a_sticky_client_and_its_hidden_cookie(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cookie = f"Cookie: a=1; SERVERID={default_cookie_value('wordpress', 'wp2')}"
    code, lines = route(
        capsys, config, "GET https://blog.example.com/p/1", "-H", cookie, "--src", "10.1.2.3"
    )
    assert code == 0
    assert "no route matched: default_backend" in lines
    assert "server: wp2 (its SERVERID cookie)" in lines
    assert "  + Cookie: a=1" in lines
    assert "  + X-Forwarded-For: 10.1.2.3" in lines


@pytest.mark.parametrize(
    ("request_line", "answer"),
    [
        (
            "GET https://example.com/a?b=1 HTTP/1.1",
            "answer: 301 redirect to https://www.example.com/a?b=1",
        ),
        ("TRACE https://blog.example.com/ HTTP/1.1", "answer: 405 (deny)"),
        (
            "GET http://blog.example.com/x HTTP/1.1",
            "answer: 301 redirect to https://blog.example.com/x (redirect_https)",
        ),
    ],
)
def test_local_answers(
    config: str, capsys: pytest.CaptureFixture[str], request_line: str, answer: str
) -> None:
    code, lines = route(capsys, config, request_line)
    assert (code, lines[-1]) == (0, answer)


def test_a_request_it_cannot_read_is_one_error_line(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["route", config, "nonsense"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("trilb: error: the request must look like")
    assert main(["route", config, "GET https://x/", "-H", "no colon"]) == 1
    assert "Name: value" in capsys.readouterr().err


def test_forwarded_host_and_port_follow_the_url(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = route(capsys, config, "GET https://blog.example.com:8443/p HTTP/1.1")
    assert code == 0
    assert "  + X-Forwarded-Host: blog.example.com:8443" in lines
    assert "  + X-Forwarded-Port: 8443" in lines


TCP_CONFIG = """
[frontends.passthrough]
bind = "*:443"
mode = "tcp"
default_backend = "other"
[[frontends.passthrough.routes]]
name = "a"
sni = ["a.example"]
backend = "a"
[[frontends.passthrough.routes]]
name = "office"
src = ["10.0.0.0/8"]
backend = "other"
[backends.a]
mode = "tcp"
servers = [{ name = "a1", address = "10.0.0.31:443", send_proxy = "v2" }]
[backends.other]
mode = "tcp"
balance = "source"
servers = [{ name = "o1", address = "10.0.0.41:443" }, { name = "o2", address = "10.0.0.42:443" }]
"""


@pytest.fixture
def tcp_config(tmp_path: Path) -> str:
    path = tmp_path / "tcp.toml"
    path.write_text(TCP_CONFIG)
    return str(path)


def test_a_tls_connection_routed_by_its_server_name(
    tcp_config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = route(capsys, tcp_config, "tls://A.example.:443")
    assert code == 0
    assert lines == [
        "frontend: passthrough (tcp, port 443)",
        "route a: matches",
        "backend: a (balance roundrobin)",
        "server: a1 (10.0.0.31:443; the first pick, all servers UP and idle)",
        "(relayed byte for byte, after a PROXY protocol v2 header)",
    ]


def test_a_connection_without_a_server_name(
    tcp_config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = route(capsys, tcp_config, "tcp://db:443", "--src", "192.0.2.7")
    assert code == 0
    assert lines[:4] == [
        "frontend: passthrough (tcp, port 443)",
        "route a: no: sni: no TLS server name",
        "route office: no: src: 192.0.2.7 is not in 10.0.0.0/8",
        "no route matched: default_backend",
    ]
    assert lines[-1] == "(relayed byte for byte)"


def test_no_tcp_frontend_on_that_port(tcp_config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", tcp_config, "tcp://db:3306"]) == 1
    assert 'no "tcp" frontend listens on port 3306' in capsys.readouterr().err
