"""``trilb certs``: a local development CA and server certificates, checked by real handshakes."""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from trilb.cli import main
from trilb.devcerts import write_dev_certs
from trilb.errors import TrilbError


def handshake(cert: Path, ca: Path, server_hostname: str) -> None:
    """A TLS handshake in memory (no sockets): server loads ``cert``, client trusts only ``ca``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert)
    client_ctx = ssl.create_default_context(cafile=str(ca))  # cafile given: no system CAs
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, to_server, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(to_server, to_client, server_side=True)
    pending = [client, server]
    for _ in range(10):
        for conn in list(pending):
            try:
                conn.do_handshake()
                pending.remove(conn)
            except ssl.SSLWantReadError:
                pass
        if not pending:
            client.write(b"ping")
            assert server.read(4) == b"ping"
            return
    raise AssertionError("handshake did not finish")


def pem_blocks(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("-----BEGIN")]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["certs", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_ca_and_chain_that_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--dir", str(tmp_path), "localhost", "127.0.0.1")
    assert (code, err) == (0, "")
    ca, ca_key, cert = tmp_path / "ca.pem", tmp_path / "ca-key.pem", tmp_path / "localhost.pem"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca-key.pem", "ca.pem", "localhost.pem"]
    assert (mode(ca), mode(ca_key), mode(cert)) == (0o644, 0o600, 0o600)
    # One file: the leaf, then the CA, then the leaf's private key.
    assert pem_blocks(cert) == [
        "-----BEGIN CERTIFICATE-----",
        "-----BEGIN CERTIFICATE-----",
        "-----BEGIN EC PRIVATE KEY-----",
    ]
    leaf, chained_ca = x509.load_pem_x509_certificates(cert.read_bytes())
    assert chained_ca == x509.load_pem_x509_certificate(ca.read_bytes())
    assert leaf.issuer == chained_ca.subject
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]

    handshake(cert, ca, "localhost")
    handshake(cert, ca, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(cert, ca, "example.com")
    other = write_dev_certs(tmp_path / "other", ["localhost"])
    with pytest.raises(
        ssl.SSLCertVerificationError, match=r"self.signed certificate in certificate chain"
    ):
        handshake(cert, other.ca_path, "localhost")  # another dev CA does not vouch for it

    assert f"curl --cacert {ca} https://localhost:8443/" in out
    assert "DEVELOPMENT-ONLY" in out
    assert "update-ca-certificates" in out
    assert f'tls = {{ certificates = ["{cert}"] }}' in out


def test_defaults_to_localhost_and_loopback_in_certs_dev(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys)
    assert code == 0
    cert, ca = Path("certs/dev/localhost.pem"), Path("certs/dev/ca.pem")
    for hostname in ("localhost", "127.0.0.1", "::1"):
        handshake(cert, ca, hostname)
    assert "curl --cacert certs/dev/ca.pem https://localhost:8443/" in out


def test_second_run_reuses_the_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write_dev_certs(tmp_path, ["localhost"])
    assert not first.reused_ca
    ca_bytes, key_bytes = first.ca_path.read_bytes(), first.ca_key_path.read_bytes()
    second = write_dev_certs(tmp_path, ["app.test", "localhost"])
    assert second.reused_ca
    assert second.cert_path == tmp_path / "app.test.pem"
    assert (first.ca_path.read_bytes(), first.ca_key_path.read_bytes()) == (ca_bytes, key_bytes)
    handshake(second.cert_path, second.ca_path, "app.test")
    handshake(first.cert_path, second.ca_path, "localhost")  # the first certificate still verifies
    code, out, _ = run(capsys, "--dir", str(tmp_path), "third.test")
    assert code == 0
    assert "(reused, unchanged)" in out
    assert first.ca_path.read_bytes() == ca_bytes


def test_rsa_key_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(capsys, "--dir", str(tmp_path), "--key-type", "rsa", "localhost")
    assert code == 0
    cert, ca = tmp_path / "localhost.pem", tmp_path / "ca.pem"
    assert pem_blocks(cert)[-1] == "-----BEGIN RSA PRIVATE KEY-----"
    ca_key = load_pem_private_key((tmp_path / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    assert isinstance(
        x509.load_pem_x509_certificate(cert.read_bytes()).public_key(), rsa.RSAPublicKey
    )
    handshake(cert, ca, "localhost")


def test_ecdsa_is_the_default_key_type(tmp_path: Path) -> None:
    certs = write_dev_certs(tmp_path, ["localhost"])
    leaf = x509.load_pem_x509_certificate(certs.cert_path.read_bytes())
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    with pytest.raises(TrilbError, match="unknown key type 'dsa'"):
        write_dev_certs(tmp_path, ["localhost"], key_type="dsa")


def test_wildcard_name_gives_a_safe_file_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "--dir", str(tmp_path), "*.example.test")
    assert code == 0
    cert, ca = tmp_path / "wildcard.example.test.pem", tmp_path / "ca.pem"
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["*.example.test"]
    handshake(cert, ca, "api.example.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(cert, ca, "example.test")  # a wildcard does not cover the bare domain


def test_international_name_is_written_as_an_a_label(tmp_path: Path) -> None:
    certs = write_dev_certs(tmp_path, ["café.test"])
    assert certs.cert_path.name == "café.test.pem"
    leaf = x509.load_pem_x509_certificate(certs.cert_path.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["xn--caf-dma.test"]


@pytest.mark.parametrize(
    "name", ["bad name", "user@example.com", "10.0.0.0/8", "x-.test", "a..test", "*", "é x.test"]
)
def test_invalid_name_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    target = tmp_path / "dev"
    code, out, err = run(capsys, "--dir", str(target), "localhost", name)
    assert code == 1
    assert out == ""
    assert err.startswith("trilb: error: invalid name")
    assert err.count("\n") == 1
    assert not target.exists()  # checked before anything is written


def test_unwritable_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = run(capsys, "--dir", str(blocker / "dev"))
    assert (code, out) == (1, "")
    assert err == f"trilb: error: cannot write certificates in {blocker / 'dev'}: Not a directory\n"


def test_half_a_ca_or_a_foreign_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = write_dev_certs(tmp_path, ["localhost"])
    ca_bytes = certs.ca_path.read_bytes()
    key_bytes = certs.ca_key_path.read_bytes()
    certs.ca_key_path.unlink()
    code, _, err = run(capsys, "--dir", str(tmp_path))
    assert code == 1
    assert f"{certs.ca_path} exists but {certs.ca_key_path} does not" in err
    assert certs.ca_path.read_bytes() == ca_bytes  # never silently replaced

    foreign = write_dev_certs(tmp_path / "other", ["localhost"]).ca_key_path.read_bytes()
    certs.ca_key_path.write_bytes(foreign)
    code, _, err = run(capsys, "--dir", str(tmp_path))
    assert code == 1
    assert err == f"trilb: error: {certs.ca_key_path} is not the private key of {certs.ca_path}\n"

    certs.ca_key_path.write_bytes(key_bytes)
    certs.ca_path.write_text("not a certificate\n")
    code, _, err = run(capsys, "--dir", str(tmp_path))
    assert code == 1
    assert err.startswith(f"trilb: error: cannot reuse the CA in {tmp_path}: ")
    assert err.count("\n") == 1


def test_openssl_is_not_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_subprocesses(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"ran a program: {args}")

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no openssl (or anything) on PATH
    monkeypatch.setattr(subprocess, "Popen", no_subprocesses)
    monkeypatch.setattr(os, "posix_spawn", no_subprocesses)
    monkeypatch.setattr(os, "execv", no_subprocesses)
    code, _, _ = run(capsys, "--dir", str(tmp_path / "dev"), "--key-type", "rsa")
    assert code == 0
    handshake(tmp_path / "dev" / "localhost.pem", tmp_path / "dev" / "ca.pem", "localhost")
