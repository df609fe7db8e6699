"""``trilb serve`` with a TLS frontend, driven by curl and ``openssl s_client``.

One trilb subprocess serves the whole module: frontend ``web`` (TLS, two trustme certificates:
``site.example.test`` first, so the default, and ``a.example.test``) and frontend ``plain`` (HTTP),
both to one backend subprocess that answers ``<name> <target> <X-Forwarded-Proto>`` (without
Content-Length, so chunked, for targets starting with ``/no-length``).

(The helpers are copied from ``test_cli.py`` on purpose: a ``conftest.py`` here would shadow
``tests/proxy/conftest.py``.)
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import httpx
import pytest
import trustme
from cryptography import x509
from e2e_support import (
    STARTUP_TIMEOUT,
    TRILB,
    free_port,
    start_backend_process,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.e2e


#: bound on one run of curl or openssl
TOOL_TIMEOUT = 30.0


CONFIG = """
[frontends.web]
bind = "127.0.0.1:{tls_port}"
default_backend = "app"
forwarded_for = true

[frontends.web.tls]
certificates = ["site.pem", "a.pem"]

[frontends.plain]
bind = "127.0.0.1:{plain_port}"
default_backend = "app"
forwarded_for = true

[backends.app]
servers = [{{ name = "b1", address = "127.0.0.1:{backend_port}" }}]
"""


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: these tests need curl and openssl on the PATH")
    return path


def run(args: Sequence[str], *, cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        cwd=cwd,
        input=stdin.decode("latin-1"),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )


# -- certificates and the running trilb -----------------------------------------------------------


def write_site_certificates(folder: Path) -> trustme.CA:
    """ca.pem, site.pem (site.example.test, localhost) and a.pem (a.example.test)."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    site = ca.issue_cert("site.example.test", "localhost", common_name="site.example.test")
    site.private_key_and_cert_chain_pem.write_to_path(str(folder / "site.pem"))
    exact = ca.issue_cert("a.example.test", common_name="a.example.test")
    exact.private_key_and_cert_chain_pem.write_to_path(str(folder / "a.pem"))
    return ca


@attrs.frozen
class Site:
    """The module's running trilb: its TLS and plain ports, its folder and its output."""

    folder: Path
    tls_port: int
    plain_port: int
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    def wait_output(self, pattern: str) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.stdout, re.MULTILINE)
            if match is not None:
                found.append(match)
            return match is not None

        wait_for(seen, STARTUP_TIMEOUT, f"{pattern!r} in the output of trilb")
        return found[0]


def start_backend(folder: Path, name: str) -> tuple[subprocess.Popen[bytes], int]:
    return start_backend_process(folder, name, echo_proto=True)


def plain_http_works(port: int) -> bool:
    try:
        with httpx.Client(trust_env=False, timeout=2) as client:
            client.get(f"http://127.0.0.1:{port}/ready")
    except httpx.TransportError:
        return False
    return True


def start_trilb(folder: Path, attempt: int, backend_port: int) -> Site | None:
    """``trilb serve`` on two free ports; None if it lost the race for one of them."""
    tls_port, plain_port = free_port(), free_port()
    config = folder / f"trilb-{attempt}.toml"
    config.write_text(
        CONFIG.format(tls_port=tls_port, plain_port=plain_port, backend_port=backend_port)
    )
    out, err = folder / f"trilb-{attempt}.out", folder / f"trilb-{attempt}.err"
    with out.open("wb") as out_file, err.open("wb") as err_file:
        proc = subprocess.Popen(
            [*TRILB, "serve", str(config)],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
        )
    # up once the plain frontend answers (both frontends listen before either accepts)
    wait_for(
        lambda: proc.poll() is not None or plain_http_works(plain_port),
        STARTUP_TIMEOUT,
        "trilb to start",
    )
    if proc.poll() is None:
        return Site(folder, tls_port, plain_port, proc, out, err)
    assert proc.returncode == 1, err.read_text()
    assert "in use" in err.read_text(), err.read_text()
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tool("curl")
    tool("openssl")
    folder = tmp_path_factory.mktemp("tls-site")
    write_site_certificates(folder)
    backend, backend_port = start_backend(folder, "b1")
    try:
        for attempt in range(5):
            started = start_trilb(folder, attempt, backend_port)
            if started is not None:
                try:
                    yield started
                finally:
                    stop_process(started.proc)
                return
        pytest.fail("no free ports found in 5 attempts")
    finally:
        stop_process(backend)


# -- curl -----------------------------------------------------------------------------------------


def curl(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return run(
        [tool("curl"), "-s", "-S", "--noproxy", "*", "--max-time", "20", "-D", "-", *args],
        cwd=site.folder,
    )


def test_curl_https_and_plain(site: Site) -> None:
    url = f"https://site.example.test:{site.tls_port}/x"
    resolve = f"site.example.test:{site.tls_port}:127.0.0.1"
    trusted = curl(site, "--cacert", "ca.pem", "--resolve", resolve, url)
    assert trusted.returncode == 0, trusted.stderr
    assert re.match(r"HTTP/1\.1 200 ", trusted.stdout), trusted.stdout
    # (text mode turned CRLF into LF)
    assert trusted.stdout.endswith("\n\nb1 /x https\n"), trusted.stdout

    untrusted = curl(site, "--resolve", resolve, url)
    assert untrusted.returncode == 60, (untrusted.returncode, untrusted.stderr)

    plain = curl(site, f"http://127.0.0.1:{site.plain_port}/y")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.endswith("\n\nb1 /y http\n"), plain.stdout

    # the access log marks TLS with a "~" after the frontend name
    tls_line = site.wait_output(r'^.* web~ app/b1 .* 200 .*"GET /x HTTP/1\.1"$').group(0)
    assert " web~ " in tls_line
    assert site.wait_output(r'^.* plain app/b1 .* 200 .*"GET /y HTTP/1\.1"$')


# -- openssl s_client -----------------------------------------------------------------------------


def s_client(site: Site, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return run(
        [tool("openssl"), "s_client", "-connect", f"127.0.0.1:{site.tls_port}", *args],
        cwd=site.folder,
        stdin=stdin,
    )


def served_names(output: str) -> tuple[str, ...]:
    """The DNS names of the server certificate s_client printed."""
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", output, re.S)
    assert pem is not None, output
    cert = x509.load_pem_x509_certificate(pem.group(0).encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return tuple(san.get_values_for_type(x509.DNSName))


@pytest.mark.parametrize(
    ("sni", "subject", "names"),
    [
        (["-servername", "a.example.test"], "a.example.test", ("a.example.test",)),
        (
            ["-servername", "site.example.test"],
            "site.example.test",
            ("site.example.test", "localhost"),
        ),
        (["-noservername"], "site.example.test", ("site.example.test", "localhost")),
        (
            ["-servername", "b.example.test"],
            "site.example.test",
            ("site.example.test", "localhost"),
        ),
    ],
    ids=["a", "site", "no-sni", "unknown"],
)
def test_s_client_sni(site: Site, sni: list[str], subject: str, names: tuple[str, ...]) -> None:
    result = s_client(site, *sni, "-CAfile", "ca.pem")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout
    assert re.search(rf"^subject=.*CN ?= ?{re.escape(subject)}$", result.stdout, re.M), (
        result.stdout
    )
    assert served_names(result.stdout) == names


def test_s_client_alpn(site: Site) -> None:
    args = ["-servername", "a.example.test", "-CAfile", "ca.pem"]
    offered = s_client(site, *args, "-alpn", "h2,http/1.1")
    assert offered.returncode == 0, offered.stdout + offered.stderr
    assert "ALPN protocol: http/1.1" in offered.stdout
    assert "Verify return code: 0 (ok)" in offered.stdout

    none = s_client(site, *args)
    assert none.returncode == 0, none.stdout + none.stderr
    assert "No ALPN negotiated" in none.stdout


def test_s_client_tls_versions(site: Site) -> None:
    for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        result = s_client(site, flag, "-servername", "a.example.test", "-CAfile", "ca.pem")
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(rf"^New, {name}, Cipher is ", result.stdout, re.M), result.stdout

    # OpenSSL 3 offers TLS 1.1 only at security level 0; trilb must say no
    old = s_client(
        site, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-servername", "old.example.test"
    )
    output = old.stdout + old.stderr
    assert old.returncode != 0, output
    assert re.search(r"^New, \(NONE\), Cipher is \(NONE\)$", old.stdout, re.M), output
    site.wait_output(r"TLS handshake failed: UNSUPPORTED_PROTOCOL \(SNI -\)$")
    # ... and says so with a protocol_version alert (RFC 5246 appendix E.1: MUST), not a close
    assert "alert protocol version" in output, output


REQUEST = b"GET /resumed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_session_resumption(site: Site, version: str, tmp_path: Path) -> None:
    session = tmp_path / "session.pem"
    args = [f"-{version}", "-servername", "a.example.test", "-CAfile", "ca.pem", "-ign_eof"]
    # a request, read to its end, before the close: TLS 1.3 tickets come after the handshake
    # (the exit status is test_s_client_clean_close's business)
    first = s_client(site, *args, "-sess_out", str(session), stdin=REQUEST)
    assert "b1 /resumed https" in first.stdout, first.stdout + first.stderr
    assert session.exists()

    second = s_client(site, *args, "-sess_in", str(session), stdin=REQUEST)
    assert "b1 /resumed https" in second.stdout, second.stdout + second.stderr
    name = {"tls1_2": "TLSv1.2", "tls1_3": "TLSv1.3"}[version]
    assert re.search(rf"^Reused, {name}, Cipher is ", second.stdout, re.M), second.stdout


def test_curl_http_1_0_body_until_close(site: Site) -> None:
    """An HTTP/1.0 client over TLS gets a body of unknown length, delimited by the close."""
    resolve = f"site.example.test:{site.tls_port}:127.0.0.1"
    url = f"https://site.example.test:{site.tls_port}/no-length"
    result = curl(site, "--http1.0", "--cacert", "ca.pem", "--resolve", resolve, url)
    assert result.stdout.endswith("\n\nb1 /no-length https\n"), result.stdout
    assert "Content-Length" not in result.stdout
    assert result.returncode == 0, (result.returncode, result.stderr)


@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_s_client_clean_close(site: Site, version: str) -> None:
    """After ``Connection: close`` trilb ends TLS with close_notify (RFC 8446 section 6.1), so
    OpenSSL 3 reads a clean end instead of "unexpected eof while reading" and exits 0."""
    result = s_client(
        site,
        f"-{version}",
        "-servername",
        "a.example.test",
        "-CAfile",
        "ca.pem",
        "-ign_eof",
        stdin=REQUEST,
    )
    assert "b1 /resumed https" in result.stdout, result.stdout + result.stderr
    assert "unexpected eof" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stdout + result.stderr


# -- trilb check ----------------------------------------------------------------------------------


def test_check_and_serve_refuse_an_expired_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    expired = ca.issue_cert(
        "site.example.test",
        not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC),
    )
    expired.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "expired.pem"))
    (tmp_path / "expired.toml").write_text(
        '[frontends.web]\nbind = "127.0.0.1:0"\ndefault_backend = "app"\n\n'
        '[frontends.web.tls]\ncertificates = ["expired.pem"]\n\n'
        '[backends.app]\nservers = [{ name = "s1", address = "127.0.0.1:9" }]\n'
    )
    for command in ("check", "serve"):
        result = run([*TRILB, command, "expired.toml"], cwd=tmp_path)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
        problems = [line for line in result.stderr.splitlines() if line.startswith("  ")]
        assert len(problems) == 1, result.stderr
        assert re.fullmatch(
            r"  frontends\.web\.tls\.certificates\[0\]: .*expired\.pem: "
            r"the certificate expired on 2021-01-01",
            problems[0],
        ), problems[0]
