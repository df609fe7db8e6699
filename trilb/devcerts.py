"""A local CA and server certificates for development (``trilb certs``), made with trustme.

Later runs reuse the CA (its key is kept beside it); never trust it outside this machine.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

import attrs
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .errors import TrilbError

__all__ = ["DEFAULT_NAMES", "DevCerts", "describe", "write_dev_certs"]

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
KEY_TYPES = {"ecdsa": trustme.KeyType.ECDSA, "rsa": trustme.KeyType.RSA}
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)


@attrs.frozen
class DevCerts:
    """What :func:`write_dev_certs` wrote: the CA certificate and key, and the server PEM file."""

    ca_path: Path
    ca_key_path: Path
    cert_path: Path  # certificate chain (leaf, then CA) followed by the private key
    names: tuple[str, ...]
    reused_ca: bool  # True when ca.pem and ca-key.pem already existed and signed this certificate


def write_dev_certs(directory: Path, names: Sequence[str], *, key_type: str = "ecdsa") -> DevCerts:
    """Write ``ca.pem``, ``ca-key.pem`` and ``<first name>.pem`` into ``directory`` (made if new).

    An existing ``ca.pem`` + ``ca-key.pem`` pair is reused, else a new CA is made. ``names``
    (default :data:`DEFAULT_NAMES`) are host names, ``*.`` wildcards or IP addresses; the first
    names the file. Keys get mode 0600. Raises :class:`TrilbError` for a bad name or key type, an
    unusable existing CA, or a directory that cannot be written.
    """
    identities = tuple(names) or DEFAULT_NAMES
    for name in identities:
        _check_name(name)
    if (kind := KEY_TYPES.get(key_type)) is None:
        raise TrilbError(f"unknown key type {key_type!r} (expected one of: {', '.join(KEY_TYPES)})")
    ca_path, ca_key_path = directory / "ca.pem", directory / "ca-key.pem"
    cert_path = directory / f"{_file_stem(identities[0])}.pem"
    try:  # everything is made in memory first, so that a bad name writes nothing
        if reused := (ca_path.exists() or ca_key_path.exists()):
            ca = _load_ca(ca_path, ca_key_path)
        else:
            ca = trustme.CA(
                key_type=kind,
                organization_name="trilb development CA",
                organization_unit_name=f"{socket.gethostname()} (development only)",
            )
        leaf = ca.issue_cert(*identities, organization_name="trilb development", key_type=kind)
        # trustme's cert_chain_pems stops below the root CA, so the CA certificate is added here.
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems) + ca.cert_pem.bytes()
        directory.mkdir(parents=True, exist_ok=True)
        if not reused:
            _write(ca_key_path, ca.private_key_pem.bytes(), 0o600)
            _write(ca_path, ca.cert_pem.bytes(), 0o644)
        _write(cert_path, chain + leaf.private_key_pem.bytes(), 0o600)
    except OSError as exc:
        raise TrilbError(f"cannot write certificates in {directory}: {exc.strerror}") from exc
    except ValueError as exc:  # from trustme's IDNA encoding of a non-ASCII name
        raise TrilbError(f"invalid name in {', '.join(identities)}: {exc}") from exc
    return DevCerts(ca_path, ca_key_path, cert_path, identities, reused)


def describe(certs: DevCerts) -> str:
    """What ``trilb certs`` prints: the files written and how to trust the CA (it does neither)."""
    ca, names = certs.ca_path, ", ".join(certs.names)
    host = next((n for n in certs.names if not n.startswith("*.")), "www." + certs.names[0][2:])
    host = f"[{host}]" if ":" in host else host
    return f"""\
DEVELOPMENT-ONLY certificates; never trust this CA outside this machine:
  {ca}  CA certificate ({"reused, unchanged" if certs.reused_ca else "new"}): trust this one
  {certs.ca_key_path}  CA private key (mode 0600): keep it private, never commit it
  {certs.cert_path}  chain + private key for {names} (mode 0600)

For a TLS frontend (paths resolve against the config file's folder):
  tls = {{ certificates = ["{certs.cert_path}"] }}

To trust the CA (trilb has done none of this):
  curl:     curl --cacert {ca} https://{host}:8443/
  Firefox:  Settings > Privacy & Security > Certificates > View Certificates > Authorities
            > Import {ca}, tick "Trust this CA to identify websites"
  Chrome:   Settings > Privacy and security > Security > Manage certificates > Authorities
            > Import {ca} (on Linux; on macOS/Windows Chrome uses the system store)
  Debian/Ubuntu system store (as root):
            cp {ca} /usr/local/share/ca-certificates/trilb-dev.crt && update-ca-certificates
            (undo: rm that file, then update-ca-certificates --fresh)"""


def _check_name(name: str) -> None:
    try:
        ipaddress.ip_address(name)
    except ValueError:  # then a host name or *.wildcard; trustme's IDNA checks non-ASCII labels
        host = name.removeprefix("*.").removesuffix(".")
        labels = (_LABEL.fullmatch(label) or not label.isascii() for label in host.split("."))
        if len(host) > 253 or "@" in host or not all(labels):
            msg = f"invalid name {name!r}: expected a host name, *.wildcard or IP address"
            raise TrilbError(msg) from None


def _file_stem(name: str) -> str:
    stem = "wildcard." + name[2:] if name.startswith("*.") else name
    return re.sub(r"[^\w.-]", "_", stem.lower().rstrip("."))


def _load_ca(ca_path: Path, ca_key_path: Path) -> trustme.CA:
    for present, absent in ((ca_path, ca_key_path), (ca_key_path, ca_path)):
        if not absent.exists():
            raise TrilbError(f"{present} exists but {absent} does not: restore it or remove both")
    cert_pem, key_pem = ca_path.read_bytes(), ca_key_path.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TrilbError(f"cannot reuse the CA in {ca_path.parent}: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) or (
        key.public_key() != cert.public_key()
    ):
        raise TrilbError(f"{ca_key_path} is not the private key of {ca_path}")
    return trustme.CA.from_pem(cert_bytes=cert_pem, private_key_bytes=key_pem)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically, with ``mode`` from the start (never briefly world-readable)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
