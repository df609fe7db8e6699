"""TLS termination: certificates read from PEM files, SNI selection, the protocol policy, and the
handshake of one client connection.

Every certificate file is checked when the balancer starts (and by ``trilb check``): unreadable,
expired, not yet valid, a key that does not match, a password-protected key — each is a config
error naming the file and the reason. Certificates with the same names share one
``ssl.SSLContext``, so an RSA and an ECDSA certificate for one site coexist there and OpenSSL
serves ECDSA to the clients that support it. The SNI map (:class:`trilb.core.sni.SniMap`) is an
immutable value: a reload can build a new :class:`ServerTLS` and swap it whole.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
from collections.abc import Iterable
from contextvars import ContextVar

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from .config import TLSConfig
from .core.sni import SniMap
from .errors import ConfigError, ConfigProblem

__all__ = [
    "Certificate",
    "HandshakeFailed",
    "HandshakeRecord",
    "ServerTLS",
    "load_server_tls",
    "read_certificate",
    "server_handshake",
]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_KEY_MARKER = b"PRIVATE KEY-----"
_CERT_SUFFIXES = (".pem", ".crt", ".cer")


@attrs.frozen
class Certificate:
    """One certificate chain and its key, as checked at start."""

    path: str
    key_path: str
    names: tuple[str, ...]
    key_type: str  # "ECDSA", "RSA", "Ed25519", ...
    not_after: datetime.datetime


def read_certificate(path: str, now: datetime.datetime | None = None) -> Certificate:
    """Read and check a PEM certificate chain and its key; ValueError says what is wrong."""
    now = now or datetime.datetime.now(datetime.UTC)
    data = _read(path)
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{path}: no PEM certificate in it") from None
    leaf = chain[0]
    key_path = path
    if _KEY_MARKER not in data:
        key_path = os.path.splitext(path)[0] + ".key"
        if not os.path.exists(key_path):
            raise ValueError(f"{path}: no private key in it, and no {os.path.basename(key_path)}")
        key_data = _read(key_path)
    else:
        key_data = data
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise ValueError(
            f"{key_path}: the private key is encrypted (use an unencrypted key)"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{key_path}: cannot read the private key ({exc})") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise ValueError(f"{key_path}: the private key does not match the certificate")
    if leaf.not_valid_after_utc < now:
        raise ValueError(f"{path}: the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    if leaf.not_valid_before_utc > now:
        raise ValueError(
            f"{path}: the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d}"
        )
    return Certificate(
        path=path,
        key_path=key_path,
        names=_names(leaf),
        key_type=_key_type(key),
        not_after=leaf.not_valid_after_utc,
    )


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names of the subjectAltName extension, else the subject's common name."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [
            str(attribute.value).lower()
            for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    return tuple(names)


def _key_type(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ECDSA"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return "EdDSA"
    return type(key).__name__


def certificate_files(entry: str) -> list[str]:
    """A file stands for itself; a directory for its server certificates, in name order: the
    ``*.pem``, ``*.crt`` and ``*.cer`` files that hold a certificate and have a private key (in
    them or in a ``.key`` file beside them). Others there — a CA certificate, a key file, a
    chain — are not server certificates and are passed over, as ``trilb certs`` writes
    ``ca.pem`` and ``ca-key.pem`` next to the certificates it issues."""
    if not os.path.isdir(entry):
        return [entry]
    files = []
    for name in sorted(os.listdir(entry)):
        path = os.path.join(entry, name)
        if not name.endswith(_CERT_SUFFIXES) or not os.path.isfile(path):
            continue
        data = _read(path)
        has_key = _KEY_MARKER in data or os.path.exists(os.path.splitext(path)[0] + ".key")
        if b"-----BEGIN CERTIFICATE-----" in data and has_key:
            files.append(path)
    if not files:
        raise ValueError(
            f"{entry}: a directory with no server certificates "
            "(*.pem, *.crt or *.cer files with their private key)"
        )
    return files


@attrs.define
class HandshakeRecord:
    """What the SNI callback learns during one connection's handshake."""

    server_name: str | None = None


# The SNI callback runs inside do_handshake(), in the connection's own task: a context variable
# carries the per-connection record to it without any shared state.
_CURRENT_HANDSHAKE: ContextVar[HandshakeRecord | None] = ContextVar("trilb_handshake", default=None)


class ServerTLS:
    """A frontend's TLS: the default context (which selects the others by SNI) and the policy."""

    def __init__(
        self,
        config: TLSConfig,
        groups: list[tuple[ssl.SSLContext, tuple[str, ...]]],
        certificates: list[Certificate],
    ) -> None:
        self.config = config
        self.certificates = tuple(certificates)
        default = groups[0][0]
        self.sni: SniMap[ssl.SSLContext] = SniMap(default, [(names, ctx) for ctx, names in groups])
        self.context = default
        #: a client certificate is asked for (``verify_client``), so the handshake may yield one
        self.verifies_clients = config.verify_client != "none"
        #: one context for every name: the callback only notes the name, nothing to select
        self._one_context = len(groups) == 1
        default.sni_callback = self._on_server_name

    def _on_server_name(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        record = _CURRENT_HANDSHAKE.get()
        if record is not None:
            record.server_name = server_name
        if self._one_context:
            return
        chosen = self.sni.select(server_name)
        if chosen is not connection.context:
            connection.context = chosen


def _context(config: TLSConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[config.min_version]
    ctx.maximum_version = _VERSIONS[config.max_version]
    ctx.set_ciphers(config.ciphers)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(list(config.alpn))
    if config.verify_client != "none":
        assert config.client_ca is not None  # checked with the config
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if config.verify_client == "required" else ssl.CERT_OPTIONAL
        )
        ctx.load_verify_locations(cafile=config.client_ca)
    return ctx


def load_server_tls(config: TLSConfig, key_path: str) -> ServerTLS:
    """Read and check every certificate and build the contexts; ConfigError lists all problems,
    each with its key path (``frontends.web.tls.certificates[1]``) and the file's own reason."""
    problems: list[ConfigProblem] = []
    certificates: list[Certificate] = []
    for index, entry in enumerate(config.certificates):
        path = f"{key_path}.certificates[{index}]"
        try:
            files = certificate_files(entry)
        except ValueError as exc:
            problems.append(ConfigProblem(path, str(exc)))
            continue
        for file in files:
            try:
                certificates.append(read_certificate(file))
            except ValueError as exc:
                problems.append(ConfigProblem(path, str(exc)))
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(config.ciphers)
    except ssl.SSLError as exc:
        problems.append(ConfigProblem(f"{key_path}.ciphers", f"not accepted by OpenSSL ({exc})"))
    if config.client_ca is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=config.client_ca)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            problems.append(ConfigProblem(f"{key_path}.client_ca", f"cannot load it ({exc})"))
    if problems:
        raise ConfigError(problems)
    groups: dict[tuple[str, ...], ssl.SSLContext] = {}
    for cert in certificates:
        names = tuple(sorted(set(cert.names)))
        ctx = groups.get(names)
        if ctx is None:
            ctx = groups[names] = _context(config)
        try:
            ctx.load_cert_chain(cert.path, cert.key_path)
        except ssl.SSLError as exc:
            problems.append(
                ConfigProblem(
                    f"{key_path}.certificates", f"{cert.path}: OpenSSL refused it ({exc})"
                )
            )
    if problems:
        raise ConfigError(problems)
    return ServerTLS(config, [(ctx, names) for names, ctx in groups.items()], certificates)


class HandshakeFailed(Exception):
    """A client's TLS handshake failed or timed out; ``reason`` is for the log."""

    def __init__(self, reason: str, server_name: str | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.server_name = server_name


async def server_handshake(
    transport: trio.abc.Stream, tls: ServerTLS, record: HandshakeRecord
) -> tuple[trio.SSLStream[trio.abc.Stream], str | None]:
    """Terminate TLS on ``transport`` (the caller bounds the wait): the TLS stream and the
    verified client certificate's subject (RFC 4514), if any. ``record`` learns the server name
    as soon as the client sends it, for the log even of a failed or timed-out handshake.
    Raises :class:`HandshakeFailed`; the caller closes the transport.
    """
    token = _CURRENT_HANDSHAKE.set(record)
    # Not "https_compatible": closing sends a close_notify, so clients can tell a complete
    # read-until-close body from a cut one. A client that just drops the TCP connection shows
    # up as a broken stream, which the session treats as the client leaving.
    stream = trio.SSLStream(transport, tls.context, server_side=True)
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        reason = getattr(cause, "reason", None) or str(cause or exc)
        await _send_alert(stream, transport)
        raise HandshakeFailed(str(reason), record.server_name) from None
    finally:
        _CURRENT_HANDSHAKE.reset(token)
    subject = None
    if tls.verifies_clients:  # (without a certificate request there is no client certificate)
        der = stream.getpeercert(binary_form=True)
        if der:
            subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    return stream, subject


async def _send_alert(stream: trio.SSLStream[trio.abc.Stream], transport: trio.abc.Stream) -> None:
    """Tell the client why (protocol version, handshake failure, unknown CA, ...). OpenSSL writes
    the alert when the handshake fails, but trio's SSLStream marks itself broken without sending
    it; without this the client sees only an unexpected EOF. Best effort: trio keeps its outgoing
    buffer in a private attribute, so when that is not there, nothing is sent."""
    outgoing = getattr(stream, "_outgoing", None)
    alert = outgoing.read() if isinstance(outgoing, ssl.MemoryBIO) else b""
    if alert:
        with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError):
            await transport.send_all(alert)


def describe(certificates: Iterable[Certificate]) -> str:
    """For the start-up log: which names each certificate answers."""
    return "; ".join(
        f"{os.path.basename(c.path)} ({c.key_type}): {', '.join(c.names) or '-'}"
        for c in certificates
    )
