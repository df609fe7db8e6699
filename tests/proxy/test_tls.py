"""TLS termination in one process: real handshakes on 127.0.0.1 with stdlib ``ssl`` clients.

Certificates come from trustme CAs kept in memory and written to a temporary folder once per
module. Exact-protocol checks (SNI, ALPN, versions, ciphers, client certificates) use
:class:`trio.SSLStream` over a TCP stream and a small h11 client; ordinary requests use httpx.
Refusals are asserted on both sides: the client's error and the proxy's log line and counter.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import re
import socket
import ssl
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import h11
import httpx
import pytest
import trio
import trustme
from conftest import (
    WAIT,
    Backend,
    BackendRequest,
    BackendResponse,
    CollectingLog,
    Proxy,
    StartBackend,
    StartProxy,
    generated_chunks,
    generated_sha256,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import trilb
from trilb.http_proxy import close_stream
from trilb.net import TCPStream
from trilb.tls import load_server_tls

MB = 1024 * 1024
KEY_PATH = "frontends.web.tls"

# -- certificates ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Certs:
    """Every certificate these tests use, written once to ``folder``."""

    folder: Path
    ca: trustme.CA  # issues the server certificates
    default: Path  # localhost (and 127.0.0.1, for httpx)
    wildcard: Path  # *.example.test
    exact: Path  # a.example.test
    rsa: Path  # localhost, an RSA key
    client_ca: trustme.CA  # issues client certificates
    client_ca_pem: Path
    alice: trustme.LeafCert  # a client certificate from client_ca
    mallory: trustme.LeafCert  # a client certificate from another CA


def write_cert(cert: trustme.LeafCert, path: Path) -> Path:
    """The single-file PEM trilb loads: key and chain."""
    cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    client_ca = trustme.CA()
    client_ca_pem = folder / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_pem))
    return Certs(
        folder=folder,
        ca=ca,
        default=write_cert(ca.issue_cert("localhost", "127.0.0.1"), folder / "default.pem"),
        wildcard=write_cert(ca.issue_cert("*.example.test"), folder / "wildcard.pem"),
        exact=write_cert(ca.issue_cert("a.example.test"), folder / "exact.pem"),
        rsa=write_cert(
            ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA),
            folder / "rsa.pem",
        ),
        client_ca=client_ca,
        client_ca_pem=client_ca_pem,
        alice=client_ca.issue_cert("alice@example.test", common_name="alice"),
        mallory=trustme.CA().issue_cert("mallory@example.test", common_name="mallory"),
    )


def subject_of(cert: trustme.LeafCert) -> str:
    """A certificate's subject as RFC 4514 text, computed independently of trilb."""
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    return leaf.subject.rfc4514_string()


# -- clients --------------------------------------------------------------------------------------


def client_context(
    ca: trustme.CA,
    *,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    alpn: Sequence[str] = (),
    check_hostname: bool = True,
    cert: trustme.LeafCert | None = None,
) -> ssl.SSLContext:
    """A client context trusting ``ca`` (certificates are always verified)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = check_hostname
    ca.configure_trust(ctx)
    with warnings.catch_warnings():
        # the stdlib warns about TLS 1.0/1.1 being deprecated: we use them on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


TLSStream = trio.SSLStream[trio.SocketStream]


@asynccontextmanager
async def tls_connection(
    port: int, ctx: ssl.SSLContext, server_hostname: str | None = "localhost"
) -> AsyncIterator[TLSStream]:
    """A TLS connection to the proxy, handshake done."""
    stream = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname=server_hostname
    )
    try:
        with trio.fail_after(WAIT):
            await stream.do_handshake()
        yield stream
    finally:
        await trio.aclose_forcefully(stream)


@attrs.define(kw_only=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class H11Client:
    """HTTP/1.1 requests over one stream (keep-alive), for exact control of the connection."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self,
        target: str = "/",
        *,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Reply:
        all_headers = [("Host", "localhost"), *headers]
        if body:
            all_headers.append(("Content-Length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            data = (data or b"") + (self.conn.send(h11.Data(data=body)) or b"")
        data = (data or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
        status = 0
        response_headers: list[tuple[str, str]] = []
        received = bytearray()
        with trio.fail_after(WAIT):
            await self.stream.send_all(data)
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(bytes(await self.stream.receive_some(64 * 1024)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    response_headers = [
                        (n.decode("latin-1"), v.decode("latin-1"))
                        for n, v in event.headers.raw_items()
                    ]
                elif isinstance(event, h11.Data):
                    received += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise AssertionError(f"unexpected {event!r}")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Reply(status=status, headers=response_headers, body=bytes(received))


async def tls_get(
    port: int,
    ctx: ssl.SSLContext,
    server_hostname: str | None = "localhost",
    headers: Sequence[tuple[str, str]] = (),
) -> Reply:
    async with tls_connection(port, ctx, server_hostname) as stream:
        return await H11Client(stream).request(headers=headers)


async def refused(
    port: int, ctx: ssl.SSLContext, server_hostname: str | None = "localhost"
) -> trio.BrokenResourceError:
    """Connect, handshake, send a request and read: the client must see an error (during the
    handshake, or at the first read when TLS 1.3 lets the client finish first). Returns it."""
    stream = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname=server_hostname
    )
    try:
        with trio.fail_after(WAIT):
            try:
                await stream.do_handshake()
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                data = await stream.receive_some(64 * 1024)
            except trio.BrokenResourceError as exc:
                return exc
    finally:
        await trio.aclose_forcefully(stream)
    pytest.fail(f"the connection was not refused; the client received {data!r}")


def https_client(port: int, ctx: ssl.SSLContext) -> httpx.AsyncClient:
    """httpx for the proxy's TLS frontend; the default certificate covers 127.0.0.1."""
    return httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{port}", verify=ctx, trust_env=False, timeout=WAIT
    )


def dns_names(stream: TLSStream) -> tuple[str, ...]:
    """The DNS names of the certificate the proxy presented."""
    cert = stream.getpeercert()
    return tuple(value for kind, value in cert["subjectAltName"] if kind == "DNS")


def peer_key(stream: TLSStream) -> object:
    der = stream.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).public_key()


def echoed_header(reply: Reply | httpx.Response, name: str) -> list[str]:
    """The values of header ``name`` as the echo backend received it."""
    data = reply.json()
    return [v for n, v in data["headers"] if n.lower() == name.lower()]


# -- the proxy ------------------------------------------------------------------------------------


def tls_proxy_config(
    backend: Backend,
    tls: trilb.TLSConfig,
    *,
    timeouts: trilb.Timeouts | None = None,
    forwarded_for: bool = False,
) -> trilb.Config:
    """Frontend ``web`` (TLS, 127.0.0.1:0) -> backend ``app`` -> ``backend``."""
    return trilb.Config(
        frontends=[
            trilb.FrontendConfig(
                name="web",
                bind="127.0.0.1:0",
                default_backend="app",
                forwarded_for=forwarded_for,
                timeouts=timeouts or trilb.Timeouts(),
                tls=tls,
            )
        ],
        backends=[
            trilb.BackendConfig(
                name="app",
                servers=[trilb.ServerConfig(name=backend.name, address=backend.address)],
            )
        ],
        log=trilb.LogConfig(target="none"),
    )


@attrs.frozen
class TLSProxy:
    proxy: Proxy

    @property
    def port(self) -> int:
        return self.proxy.lb.addresses["web"][0].port

    @property
    def log(self) -> CollectingLog:
        return self.proxy.log

    def traffic(self) -> trilb.TrafficStatistics:
        return self.proxy.lb.statistics().frontend("web").traffic


StartTLS = Callable[..., Awaitable[TLSProxy]]


@pytest.fixture
def start_tls(start_backend: StartBackend, start_proxy: StartProxy) -> StartTLS:
    """``await start_tls(certificates, backend=None, timeouts=None, forwarded_for=False,
    **TLSConfig options)``: an echo backend (unless given) behind a TLS frontend ``web``."""

    async def start(
        certificates: Sequence[Path | str],
        *,
        backend: Backend | None = None,
        timeouts: trilb.Timeouts | None = None,
        forwarded_for: bool = False,
        **tls_options: Any,
    ) -> TLSProxy:
        backend = backend or await start_backend()
        tls = trilb.TLSConfig(certificates=[str(c) for c in certificates], **tls_options)
        config = tls_proxy_config(backend, tls, timeouts=timeouts, forwarded_for=forwarded_for)
        return TLSProxy(await start_proxy(config=config))

    return start


async def handshake_failure(log: CollectingLog, count: int = 1) -> list[tuple[str, str]]:
    """Wait for ``count`` "TLS handshake failed" lines; each as (reason, SNI)."""
    pattern = re.compile(r"frontend web: TLS handshake failed: (.+) \(SNI (\S+)\)$")
    with trio.fail_after(WAIT):
        while True:
            found = [m for m in map(pattern.search, log.messages) if m is not None]
            if len(found) >= count:
                return [(m.group(1), m.group(2)) for m in found]
            await log._changed.wait()


# -- SNI ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_hostname", "expected"),
    [
        ("a.example.test", "exact"),
        ("b.example.test", "wildcard"),
        ("x.b.example.test", "default"),  # a wildcard covers one label
        (None, "default"),  # no SNI at all (a client connecting by address)
        ("unknown.test", "default"),
        ("localhost", "default"),
    ],
)
async def test_sni_selects_the_certificate(
    certs: Certs, start_tls: StartTLS, server_hostname: str | None, expected: str
) -> None:
    proxy = await start_tls([certs.default, certs.wildcard, certs.exact])
    names = {
        "default": ("localhost",),
        "wildcard": ("*.example.test",),
        "exact": ("a.example.test",),
    }
    ctx = client_context(certs.ca, check_hostname=False)
    async with tls_connection(proxy.port, ctx, server_hostname) as stream:
        assert dns_names(stream) == names[expected]
        reply = await H11Client(stream).request("/sni")
    assert reply.status == 200
    assert reply.json()["target"] == "/sni"


async def test_rsa_and_ecdsa_for_one_name(certs: Certs, start_tls: StartTLS) -> None:
    tls = load_server_tls(
        trilb.TLSConfig(certificates=[str(certs.rsa), str(certs.default)]), KEY_PATH
    )
    assert [c.key_type for c in tls.certificates] == ["RSA", "ECDSA"]

    proxy = await start_tls([certs.rsa, certs.default])
    for suite, key_class in (
        ("ECDHE-ECDSA-AES128-GCM-SHA256", ec.EllipticCurvePublicKey),
        ("ECDHE-RSA-AES128-GCM-SHA256", rsa.RSAPublicKey),
    ):
        ctx = client_context(certs.ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers=suite)
        async with tls_connection(proxy.port, ctx) as stream:
            assert stream.cipher()[0] == suite
            assert isinstance(peer_key(stream), key_class), suite
            reply = await H11Client(stream).request()
        assert reply.status == 200


# -- ALPN and versions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "selected"),
    [(["h2", "http/1.1"], "http/1.1"), ([], None), (["http/1.1"], "http/1.1")],
    ids=["h2+http1.1", "none", "http1.1"],
)
async def test_alpn(
    certs: Certs, start_tls: StartTLS, offered: list[str], selected: str | None
) -> None:
    proxy = await start_tls([certs.default])
    async with tls_connection(proxy.port, client_context(certs.ca, alpn=offered)) as stream:
        assert stream.selected_alpn_protocol() == selected
        reply = await H11Client(stream).request()
    assert reply.status == 200


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
    ids=["tls1.2", "tls1.3"],
)
async def test_tls_versions_accepted(
    certs: Certs, start_tls: StartTLS, version: ssl.TLSVersion, name: str
) -> None:
    proxy = await start_tls([certs.default])
    ctx = client_context(certs.ca, minimum=version, maximum=version)
    async with tls_connection(proxy.port, ctx) as stream:
        assert stream.version() == name
        reply = await H11Client(stream).request("/v")
    assert reply.status == 200
    assert proxy.traffic().handshake_errors == 0


async def test_tls_1_1_refused(certs: Certs, start_tls: StartTLS) -> None:
    proxy = await start_tls([certs.default])
    ctx = client_context(
        certs.ca,
        minimum=ssl.TLSVersion.TLSv1_1,
        maximum=ssl.TLSVersion.TLSv1_1,
        ciphers="DEFAULT:@SECLEVEL=0",  # OpenSSL 3 offers TLS 1.1 only at security level 0
    )
    error = await refused(proxy.port, ctx)
    assert isinstance(error.__cause__, ssl.SSLError)
    [(reason, _)] = await handshake_failure(proxy.log)
    assert reason == "UNSUPPORTED_PROTOCOL"
    assert proxy.traffic().handshake_errors == 1


async def test_min_version_1_3_refuses_tls_1_2(certs: Certs, start_tls: StartTLS) -> None:
    proxy = await start_tls([certs.default], min_version="1.3")
    only_12 = client_context(certs.ca, maximum=ssl.TLSVersion.TLSv1_2)
    await refused(proxy.port, only_12)
    [(reason, _)] = await handshake_failure(proxy.log)
    assert reason == "UNSUPPORTED_PROTOCOL"
    # TLS 1.3 still works
    reply = await tls_get(proxy.port, client_context(certs.ca))
    assert reply.status == 200
    assert proxy.traffic().handshake_errors == 1


async def test_weak_cipher_refused(certs: Certs, start_tls: StartTLS) -> None:
    proxy = await start_tls([certs.default, certs.exact])
    # RSA key exchange: not forward secret, not in the default list
    weak = client_context(
        certs.ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA", check_hostname=False
    )
    await refused(proxy.port, weak, "a.example.test")
    [(reason, sni)] = await handshake_failure(proxy.log)
    assert reason == "NO_SHARED_CIPHER"
    assert sni == "a.example.test"
    assert proxy.traffic().handshake_errors == 1


def refusing_client(certs: Certs, case: str) -> ssl.SSLContext:
    """A client context the proxy (verify_client = "required") must refuse, by ``case``."""
    if case == "old-version":
        return client_context(
            certs.ca,
            minimum=ssl.TLSVersion.TLSv1_1,
            maximum=ssl.TLSVersion.TLSv1_1,
            ciphers="DEFAULT:@SECLEVEL=0",
            cert=certs.alice,
        )
    if case == "no-shared-cipher":
        return client_context(
            certs.ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA", cert=certs.alice
        )
    if case == "no-client-cert":
        return client_context(certs.ca)
    assert case == "unknown-client-ca"
    return client_context(certs.ca, cert=certs.mallory)


@pytest.mark.parametrize(
    ("case", "alert"),
    [
        ("old-version", "TLSV1_ALERT_PROTOCOL_VERSION"),
        ("no-shared-cipher", "SSLV3_ALERT_HANDSHAKE_FAILURE"),
        ("no-client-cert", "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
        ("unknown-client-ca", "TLSV1_ALERT_UNKNOWN_CA"),
    ],
)
async def test_refused_handshake_sends_an_alert(
    certs: Certs, start_tls: StartTLS, case: str, alert: str
) -> None:
    """A refusal is a TLS alert, not a bare close (RFC 8446 section 6, RFC 5246 appendix E.1:
    a server that does not speak the client's version MUST send "protocol_version"): only the
    alert lets a client tell "your TLS is too old" or "bad certificate" from a network failure.
    (The expected alerts are what OpenSSL sends for the same server context over a socket.)"""
    proxy = await start_tls(
        [certs.default], client_ca=str(certs.client_ca_pem), verify_client="required"
    )
    stream = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", proxy.port),
        refusing_client(certs, case),
        server_hostname="localhost",
    )

    async def handshake_then_read() -> None:
        await stream.do_handshake()
        # TLS 1.3: the client finishes first, then reads the server's verdict on its cert
        await stream.receive_some(64 * 1024)

    try:
        with trio.fail_after(WAIT), pytest.raises(trio.BrokenResourceError) as caught:
            await handshake_then_read()
    finally:
        await trio.aclose_forcefully(stream)
    await handshake_failure(proxy.log)
    cause = caught.value.__cause__
    assert isinstance(cause, ssl.SSLError)
    assert cause.reason == alert, cause


# -- client certificates --------------------------------------------------------------------------


async def test_client_certificate_required(certs: Certs, start_tls: StartTLS) -> None:
    proxy = await start_tls(
        [certs.default], client_ca=str(certs.client_ca_pem), verify_client="required"
    )

    # no certificate: refused
    await refused(proxy.port, client_context(certs.ca))
    [(reason, sni)] = await handshake_failure(proxy.log)
    assert reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert sni == "localhost"
    assert proxy.traffic().handshake_errors == 1

    # a certificate from another CA: refused
    await refused(proxy.port, client_context(certs.ca, cert=certs.mallory))
    [_, (reason, _)] = await handshake_failure(proxy.log, 2)
    assert reason == "CERTIFICATE_VERIFY_FAILED"
    assert proxy.traffic().handshake_errors == 2

    # a certificate from the right CA: the server learns its subject (whatever the client says)
    async with https_client(proxy.port, client_context(certs.ca, cert=certs.alice)) as client:
        response = await client.get("/", headers={"X-Client-Cert-Subject": "CN=forged"})
    assert response.status_code == 200
    assert echoed_header(response, "X-Client-Cert-Subject") == [subject_of(certs.alice)]
    assert subject_of(certs.alice).startswith("CN=alice,")
    assert proxy.traffic().handshake_errors == 2


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
async def test_client_certificate_required_refusal_per_version(
    certs: Certs, start_tls: StartTLS, version: ssl.TLSVersion
) -> None:
    proxy = await start_tls(
        [certs.default], client_ca=str(certs.client_ca_pem), verify_client="required"
    )
    await refused(proxy.port, client_context(certs.ca, minimum=version, maximum=version))
    [(reason, _)] = await handshake_failure(proxy.log)
    assert reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    ctx = client_context(certs.ca, minimum=version, maximum=version, cert=certs.alice)
    reply = await tls_get(proxy.port, ctx)
    assert reply.status == 200
    assert echoed_header(reply, "X-Client-Cert-Subject") == [subject_of(certs.alice)]


async def test_client_certificate_optional(certs: Certs, start_tls: StartTLS) -> None:
    proxy = await start_tls(
        [certs.default], client_ca=str(certs.client_ca_pem), verify_client="optional"
    )
    forged = {"X-Client-Cert-Subject": "CN=forged"}
    async with https_client(proxy.port, client_context(certs.ca)) as client:
        anonymous = await client.get("/", headers=forged)
    assert anonymous.status_code == 200
    assert echoed_header(anonymous, "X-Client-Cert-Subject") == []

    async with https_client(proxy.port, client_context(certs.ca, cert=certs.alice)) as client:
        known = await client.get("/", headers=forged)
    assert known.status_code == 200
    assert echoed_header(known, "X-Client-Cert-Subject") == [subject_of(certs.alice)]
    assert proxy.traffic().handshake_errors == 0


async def test_client_certificate_custom_header(certs: Certs, start_tls: StartTLS) -> None:
    proxy = await start_tls(
        [certs.default],
        client_ca=str(certs.client_ca_pem),
        verify_client="required",
        client_cert_header="X-SSL-Client-DN",
    )
    async with https_client(proxy.port, client_context(certs.ca, cert=certs.alice)) as client:
        response = await client.get(
            "/", headers={"x-ssl-client-dn": "CN=forged", "X-Client-Cert-Subject": "other"}
        )
    assert response.status_code == 200
    assert echoed_header(response, "X-SSL-Client-DN") == [subject_of(certs.alice)]
    names = [n for n, _ in response.json()["headers"]]
    assert "X-SSL-Client-DN" in names  # the configured spelling
    # only the configured name is trilb's: another header passes as the client sent it
    assert echoed_header(response, "X-Client-Cert-Subject") == ["other"]


# -- forwarded headers and the access log ---------------------------------------------------------


async def test_forwarded_proto_is_https_and_log_marks_tls(
    certs: Certs, start_tls: StartTLS
) -> None:
    proxy = await start_tls([certs.default], forwarded_for=True)
    async with https_client(proxy.port, client_context(certs.ca)) as client:
        response = await client.get("/fwd", headers={"X-Forwarded-Proto": "http"})
    assert response.status_code == 200
    assert echoed_header(response, "X-Forwarded-Proto") == ["https"]
    assert echoed_header(response, "X-Forwarded-Port") == [str(proxy.port)]
    assert echoed_header(response, "X-Forwarded-For") == ["127.0.0.1"]
    await proxy.log.wait_access_lines(1)
    [line] = proxy.log.access_lines
    assert re.search(r"\] web~ app/s1 .* 200 ", line), line
    assert line.endswith('"GET /fwd HTTP/1.1"'), line


# -- the handshake deadline -----------------------------------------------------------------------


def client_hello(server_hostname: str) -> bytes:
    """A real ClientHello, as the stdlib would send it first."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything until the proxy closes (a reset counts as closed)."""
    data = bytearray()
    with trio.fail_after(WAIT):
        try:
            while chunk := await stream.receive_some(64 * 1024):
                data += chunk
        except trio.BrokenResourceError:
            pass
    return bytes(data)


async def test_handshake_deadline(certs: Certs, start_tls: StartTLS) -> None:
    proxy = await start_tls([certs.default], timeouts=trilb.Timeouts(handshake=0.5))
    hello = client_hello("localhost")
    stalls = [b"", b"\x16\x03\x01", hello[:10], hello]
    streams = [await trio.open_tcp_stream("127.0.0.1", proxy.port) for _ in stalls]
    try:
        for stream, data in zip(streams, stalls, strict=True):
            if data:
                await stream.send_all(data)
        # meanwhile, other clients are served
        reply = await tls_get(proxy.port, client_context(certs.ca))
        assert reply.status == 200
        received = [await read_until_closed(stream) for stream in streams]
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)
    assert received[:3] == [b"", b"", b""]
    assert received[3].startswith(b"\x16\x03\x03")  # the ServerHello came, then the close
    failures = await handshake_failure(proxy.log, 4)
    assert sorted(failures) == [
        ("no handshake within 0.5s", "-"),
        ("no handshake within 0.5s", "-"),
        ("no handshake within 0.5s", "-"),
        ("no handshake within 0.5s", "localhost"),
    ]
    assert proxy.traffic().handshake_errors == 4


# -- requests and bodies over TLS -----------------------------------------------------------------


async def test_keep_alive_over_tls(certs: Certs, start_tls: StartTLS) -> None:
    proxy = await start_tls([certs.default])
    async with tls_connection(proxy.port, client_context(certs.ca)) as stream:
        client = H11Client(stream)
        for index in range(3):
            reply = await client.request(f"/k{index}", method="POST", body=b"x" * index * 1000)
            assert reply.status == 200
            assert reply.json()["target"] == f"/k{index}"
            assert reply.json()["body_length"] == index * 1000
    traffic = proxy.traffic()
    assert (traffic.total_connections, traffic.total_requests) == (1, 3)


async def test_connection_close_ends_with_close_notify(certs: Certs, start_tls: StartTLS) -> None:
    """After ``Connection: close`` the proxy ends TLS properly: a close_notify alert before the
    TCP close (RFC 8446 section 6.1), so a strict client reads a clean end of stream instead of
    a truncation error ("unexpected eof while reading" in OpenSSL 3)."""
    proxy = await start_tls([certs.default])
    async with tls_connection(proxy.port, client_context(certs.ca)) as stream:
        # a client SSLStream is not https_compatible: EOF without close_notify is an error
        reply = await H11Client(stream).request(headers=[("Connection", "close")])
        assert reply.status == 200
        with trio.fail_after(WAIT):
            assert await stream.receive_some(64 * 1024) == b""


async def test_close_does_not_wait_for_a_client_that_does_not_read(certs: Certs) -> None:
    """Closing a TLS connection whose client reads nothing (its socket buffers full) does not
    wait for it: the close_notify that does not fit is dropped, and the socket is closed."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(certs.default))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    transport = TCPStream(ours)
    server = trio.SSLStream(transport, server_ctx, server_side=True)
    client = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(theirs)),
        client_context(certs.ca),
        server_hostname="localhost",
    )
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)
        chunk = b"x" * 65536
        with contextlib.suppress(BlockingIOError):
            while True:  # the client reads nothing: fill what lies between
                ours.send(chunk)
        await close_stream(server)
    assert ours.fileno() == -1
    await trio.aclose_forcefully(client)


async def test_large_bodies_over_tls(
    certs: Certs, start_tls: StartTLS, start_backend: StartBackend
) -> None:
    upload, download = 6 * MB, 8 * MB

    async def handler(request: BackendRequest) -> BackendResponse:
        if request.method == "POST":
            body = json.dumps({"length": request.body_length, "sha256": request.body_sha256})
            return BackendResponse(body=body.encode())
        return BackendResponse(
            headers=[("Content-Length", str(download))],
            body=lambda: generated_chunks(download),
        )

    backend = await start_backend(handler, keep_body=False)
    proxy = await start_tls([certs.default], backend=backend)
    async with https_client(proxy.port, client_context(certs.ca)) as client:
        response = await client.post("/up", content=generated_chunks(upload))
        assert response.status_code == 200
        assert response.json() == {"length": upload, "sha256": generated_sha256(upload)}
        digest = hashlib.sha256()
        size = 0
        async with client.stream("GET", "/down") as streamed:
            assert streamed.status_code == 200
            async for chunk in streamed.aiter_raw():
                digest.update(chunk)
                size += len(chunk)
    assert size == download
    assert digest.hexdigest() == generated_sha256(download)
    assert proxy.traffic().total_connections == 1


# -- directories of certificates ------------------------------------------------------------------


def write_separately(cert: trustme.LeafCert, pem: Path) -> Path:
    """The chain in ``pem`` and the key beside it in ``<stem>.key``."""
    for blob in cert.cert_chain_pems:
        with pem.open("ab") as file:
            file.write(blob.bytes())
    cert.private_key_pem.write_to_path(str(pem.with_suffix(".key")))
    return pem


async def test_directory_of_certificates(certs: Certs, start_tls: StartTLS, tmp_path: Path) -> None:
    folder = tmp_path / "certs.d"
    folder.mkdir()
    # written in the reverse of name order: the load order is the names'
    write_cert(certs.ca.issue_cert("second.example.test"), folder / "b-second.crt")
    write_separately(certs.ca.issue_cert("first.example.test"), folder / "a-first.pem")
    (folder / "README.txt").write_text("not a certificate\n")
    certs.ca.cert_pem.write_to_path(str(folder / "0-ca.pem"))  # no key: not a server certificate

    tls = load_server_tls(trilb.TLSConfig(certificates=[str(folder)]), KEY_PATH)
    assert [Path(c.path).name for c in tls.certificates] == ["a-first.pem", "b-second.crt"]
    assert Path(tls.certificates[0].key_path).name == "a-first.key"

    ctx = client_context(certs.ca, check_hostname=False)
    alone = await start_tls([folder])
    for name, expected in [(None, "first"), ("second.example.test", "second")]:
        async with tls_connection(alone.port, ctx, name) as stream:
            assert dns_names(stream) == (f"{expected}.example.test",)

    after_default = await start_tls([certs.default, folder])
    for name, expected_name in [
        (None, "localhost"),
        ("first.example.test", "first.example.test"),
        ("second.example.test", "second.example.test"),
    ]:
        async with tls_connection(after_default.port, ctx, name) as stream:
            assert dns_names(stream) == (expected_name,)
            reply = await H11Client(stream).request()
        assert reply.status == 200


async def test_certificate_and_key_in_separate_files(
    certs: Certs, start_tls: StartTLS, tmp_path: Path
) -> None:
    pem = write_separately(certs.ca.issue_cert("localhost"), tmp_path / "site.pem")
    tls = load_server_tls(trilb.TLSConfig(certificates=[str(pem)]), KEY_PATH)
    [cert] = tls.certificates
    assert (cert.path, cert.key_path) == (str(pem), str(tmp_path / "site.key"))
    assert cert.names == ("localhost",)
    proxy = await start_tls([pem])
    reply = await tls_get(proxy.port, client_context(certs.ca))
    assert reply.status == 200


# -- configuration errors from certificate files --------------------------------------------------

UTC = datetime.UTC


def broken_files(certs: Certs, folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken certificate entries: name -> (path, the reason trilb must give, as a regex)."""
    ca = certs.ca
    files: dict[str, tuple[Path, str]] = {}

    missing = folder / "missing.pem"
    files["missing"] = (missing, r"missing\.pem: cannot read it \(No such file or directory\)")

    empty = folder / "empty.d"
    empty.mkdir()
    (empty / "site.key").write_text("a key is no certificate\n")
    files["empty directory"] = (empty, r"empty\.d: a directory with no .*certificates")

    no_key = folder / "nokey.pem"
    no_key.write_bytes(ca.issue_cert("localhost").cert_chain_pems[0].bytes())
    files["no key"] = (no_key, r"nokey\.pem: no private key in it, and no nokey\.key")

    mismatch = folder / "mismatch.pem"
    mismatch.write_bytes(
        ca.issue_cert("localhost").cert_chain_pems[0].bytes()
        + ca.issue_cert("localhost").private_key_pem.bytes()
    )
    files["key mismatch"] = (mismatch, r"mismatch\.pem: the private key does not match")

    leaf = ca.issue_cert("localhost")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = folder / "encrypted.pem"
    encrypted.write_bytes(
        leaf.cert_chain_pems[0].bytes()
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    files["encrypted key"] = (encrypted, r"encrypted\.pem: the private key is encrypted")

    expired = write_cert(
        ca.issue_cert(
            "localhost",
            not_before=datetime.datetime(2020, 1, 1, tzinfo=UTC),
            not_after=datetime.datetime(2021, 1, 1, tzinfo=UTC),
        ),
        folder / "expired.pem",
    )
    files["expired"] = (expired, r"expired\.pem: the certificate expired on 2021-01-01")

    start = datetime.datetime.now(UTC) + datetime.timedelta(days=30)
    future = write_cert(
        ca.issue_cert("localhost", not_before=start, not_after=start + datetime.timedelta(days=30)),
        folder / "future.pem",
    )
    files["not yet valid"] = (
        future,
        rf"future\.pem: the certificate is not valid before {start:%Y-%m-%d}",
    )
    return files


BROKEN = [
    "missing",
    "empty directory",
    "no key",
    "key mismatch",
    "encrypted key",
    "expired",
    "not yet valid",
]


def problems_of(exc: trilb.ConfigError) -> list[tuple[str, str]]:
    return [(p.key_path, p.message) for p in exc.problems]


@pytest.mark.parametrize("case", BROKEN)
async def test_broken_certificate_is_a_config_error(
    certs: Certs, tmp_path: Path, start_backend: StartBackend, case: str
) -> None:
    path, reason = broken_files(certs, tmp_path)[case]
    tls = trilb.TLSConfig(certificates=[str(certs.default), str(path)])
    with pytest.raises(trilb.ConfigError) as direct:
        load_server_tls(tls, KEY_PATH)
    [(key_path, message)] = problems_of(direct.value)
    assert key_path == f"{KEY_PATH}.certificates[1]"
    assert re.search(reason, message), message
    assert str(path) in message

    # trilb.serve refuses the same before it listens: a port held by us stays ours (otherwise
    # the start would end with a StartupError for the port, not the ConfigError)
    backend = await start_backend()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        config = tls_proxy_config(backend, tls)
        config = attrs.evolve(
            config,
            frontends=[
                attrs.evolve(config.frontends[0], bind=f"127.0.0.1:{held.getsockname()[1]}")
            ],
        )
        with pytest.raises(trilb.ConfigError) as served:
            await trilb.serve(config, log=CollectingLog())
    assert problems_of(served.value) == problems_of(direct.value)


@pytest.mark.parametrize(
    ("options", "key", "reason"),
    [
        ({"ciphers": "NO-SUCH-CIPHER"}, "ciphers", r"not accepted by OpenSSL"),
        (
            {"client_ca": "missing-ca.pem", "verify_client": "required"},
            "client_ca",
            r"cannot load it .*No such file or directory",
        ),
        (
            {"client_ca": "garbage-ca.pem", "verify_client": "optional"},
            "client_ca",
            r"cannot load it",
        ),
    ],
)
def test_bad_ciphers_or_client_ca(
    certs: Certs, tmp_path: Path, options: dict[str, str], key: str, reason: str
) -> None:
    (tmp_path / "garbage-ca.pem").write_text("this is not a PEM file\n")
    if "client_ca" in options:
        options = {**options, "client_ca": str(tmp_path / options["client_ca"])}
    tls = trilb.TLSConfig(certificates=[str(certs.default)], **options)  # type: ignore[arg-type]
    with pytest.raises(trilb.ConfigError) as caught:
        load_server_tls(tls, KEY_PATH)
    [(key_path, message)] = problems_of(caught.value)
    assert key_path == f"{KEY_PATH}.{key}"
    assert re.search(reason, message), message


def test_every_problem_reported_together(certs: Certs, tmp_path: Path) -> None:
    files = broken_files(certs, tmp_path)
    entries = [files[case][0] for case in ("missing", "expired", "empty directory")]
    tls = trilb.TLSConfig(
        certificates=[str(certs.default), *map(str, entries)], ciphers="NO-SUCH-CIPHER"
    )
    with pytest.raises(trilb.ConfigError) as caught:
        load_server_tls(tls, KEY_PATH)
    problems = problems_of(caught.value)
    assert [key_path for key_path, _ in problems] == [
        f"{KEY_PATH}.certificates[1]",
        f"{KEY_PATH}.certificates[2]",
        f"{KEY_PATH}.certificates[3]",
        f"{KEY_PATH}.ciphers",
    ]
    assert "missing.pem" in problems[0][1]
    assert "expired" in problems[1][1]
    assert "empty.d" in problems[2][1]
    # and the error's text lists them all, one per line
    assert str(caught.value).splitlines() == [f"{k}: {m}" for k, m in problems]


def test_bad_ciphers_and_bad_client_ca_both_reported(certs: Certs, tmp_path: Path) -> None:
    tls = trilb.TLSConfig(
        certificates=[str(certs.default)],
        ciphers="NO-SUCH-CIPHER",
        client_ca=str(tmp_path / "missing-ca.pem"),
        verify_client="required",
    )
    with pytest.raises(trilb.ConfigError) as caught:
        load_server_tls(tls, KEY_PATH)
    assert [key_path for key_path, _ in problems_of(caught.value)] == [
        f"{KEY_PATH}.ciphers",
        f"{KEY_PATH}.client_ca",
    ]
