"""Active health checks, the Trio shell: one task per checked server, in the balancer's nursery.

::

    serve()                              the balancer's nursery
    ├── frontend.run() ...
    ├── health check backend/server      one per server of a backend with ``health_check``
    └── connections nursery ...

Each task checks its server, feeds the outcome to the server's
:class:`~trilb.core.health.HealthState` and, when the verdict changes, sets ``server.up`` (which
takes the server out of, or back into, the balancing) and logs HAProxy's line (one line)::

    server wordpress/wp2 is DOWN, reason: Layer7 wrong status, code: 500, check duration: 3ms.
    1 active and 0 backup servers left.

The decisions (state machine, intervals, judging an answer, the wording) are in
:mod:`trilb.core.health`; this module only opens connections and moves bytes.

The checks, each bounded as a whole by ``health_check.timeout``:

* ``tcp``: connect, then close.
* ``tls``: connect, TLS handshake, close. With the server's own context when it re-encrypts
  (verification as configured), else with one that verifies nothing: the check is that TLS works.
* ``http``: connect (TLS too when the server re-encrypts and the check goes to the traffic
  address, as HAProxy's checks inherit ``ssl`` unless ``port``/``addr`` are overridden), send
  ``METHOD PATH HTTP/1.1`` with ``Host``, ``User-Agent: trilb-check`` and ``Connection: close``,
  and judge the status, and the body's first :data:`~trilb.core.health.BODY_LIMIT` bytes when
  ``expect_body`` / ``expect_body_regex`` ask for it.
* ``send_expect``, ``redis``, ``smtp``, ``mysql``: connect (with TLS as for ``http``), then
  pump the bytes of the type's :class:`~trilb.core.dialog.Dialog` (the decisions, in
  :mod:`trilb.core.tcp_checks` and :mod:`trilb.core.mysql_check`) until it decides; its goodbye
  (SMTP ``QUIT``, MySQL ``COM_QUIT``) is sent best effort before closing.

The check goes to the server's traffic address unless ``health_check.address`` / ``port`` say
otherwise; an ``address`` hostname is resolved once, at the first check that needs it. A check
to the traffic address of a ``send_proxy`` server starts with a PROXY header too (v1 ``UNKNOWN``,
v2 ``LOCAL``), since that port expects one (HAProxy's default as well).
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import ssl
from collections.abc import Iterable, Mapping

import h11
import trio

from .backend import BackendRuntime, ServerRuntime
from .config import HealthCheck
from .core.dialog import Dialog
from .core.health import (
    BODY_LIMIT,
    CheckResult,
    HealthState,
    Reason,
    judge_http_response,
    no_server_message,
    transition_message,
    wants_body,
)
from .core.tcp_checks import compile_expect_regex, dialog_for
from .logsink import LogSink
from .net import connect
from .proxy_header import local_header

__all__ = ["USER_AGENT", "ServerChecker", "start_health_checks"]

#: the User-Agent of HTTP checks, so servers can keep them out of their access logs
USER_AGENT = "trilb-check"

#: bytes asked of the stream per read while reading a check's answer
RECEIVE_SIZE = 16 * 1024

#: h11's bound on an incomplete response head (its default; a health answer's head is small)
MAX_HEAD_SIZE = 16 * 1024


def start_health_checks(
    nursery: trio.Nursery,
    backends: Iterable[BackendRuntime],
    log: LogSink,
    states: Mapping[tuple[str, str], HealthState] | None = None,
) -> list[ServerChecker]:
    """Start one check task in ``nursery`` for every server of every backend that has a
    ``health_check``; returns their checkers (to pause and resume them). ``states``: the health
    states servers start from, by (backend, server) name (carried over by a reload); the others
    start as a new server does.

    Cancellation: the tasks run until ``nursery`` is cancelled (the balancer stops).
    Resource handling: every check closes its connection, however it ends.
    Error handling: a check never raises: errors are failed checks, logged with their reason.
    """
    insecure: ssl.SSLContext | None = None
    checkers = []
    for backend in backends:
        check = backend.config.health_check
        if check is None:
            continue
        if insecure is None:
            insecure = _insecure_context()
        for server in backend.servers:
            state = None if states is None else states.get((backend.name, server.name))
            checker = ServerChecker(
                backend, server, check, log, insecure_context=insecure, state=state
            )
            nursery.start_soon(checker.run, name=f"health check {backend.name}/{server.name}")
            checkers.append(checker)
    return checkers


def _insecure_context() -> ssl.SSLContext:
    """For ``tls`` checks of servers trilb does not re-encrypt to: no verification, the check is
    only that a TLS server answers the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # (loads no CA certificates: none needed)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class ServerChecker:
    """The health checks of one server (one task: :meth:`run`)."""

    def __init__(
        self,
        backend: BackendRuntime,
        server: ServerRuntime,
        check: HealthCheck,
        log: LogSink,
        *,
        insecure_context: ssl.SSLContext,
        state: HealthState | None = None,
    ) -> None:
        self.backend = backend
        self.server = server
        self.check = check
        self.log = log
        # ``state``: where to start from (a reload carries it over); else a new server's start
        if state is None:
            state = HealthState(check.rise, check.fall, up=server.up)
        self.state = state
        server.up = self.state.up
        self._insecure_context = insecure_context
        self._pattern = (
            re.compile(check.expect_body_regex) if check.expect_body_regex is not None else None
        )
        self._expect_pattern = (
            compile_expect_regex(check.expect_regex) if check.expect_regex is not None else None
        )
        self._target: tuple[int, object] | None = None  # (family, sockaddr) once known
        self._host = check.host or (
            "localhost" if server.config.address.is_unix else str(server.config.address)
        )
        # the check speaks TLS for traffic-address checks of a re-encrypting server (all types
        # but "tcp", which only connects), or always for type "tls"
        overridden = check.address is not None or check.port is not None
        self._tls_context: ssl.SSLContext | None = None
        if check.type == "tls":
            self._tls_context = server.tls_context or insecure_context
        elif check.type != "tcp" and server.tls_context is not None and not overridden:
            self._tls_context = server.tls_context
        # the reason a timed-out check gets: the phase it was in
        self._phase = Reason.L4_TIMEOUT
        self._last: CheckResult | None = None
        self._last_internal_error = ""
        # the operator's pause (``disable health``): the scope of the checks under way, and the
        # event that ends the pause
        self._paused = False
        self._resumed = trio.Event()
        self._scope: trio.CancelScope | None = None
        server.mark_down = self.force_down

    @property
    def name(self) -> str:
        return f"{self.backend.name}/{self.server.name}"

    @property
    def paused(self) -> bool:
        """The operator stopped this server's checks (:meth:`pause`)."""
        return self._paused

    def pause(self) -> None:
        """Stop checking until :meth:`resume` (HAProxy's ``disable health``). A check under way
        is abandoned and its outcome ignored. The server keeps its current UP or DOWN meanwhile:
        passive checks (``observe``) do not take it DOWN either, since nothing would bring it
        back."""
        if self._paused:
            return
        self._paused = True
        self._resumed = trio.Event()
        if self._scope is not None:
            self._scope.cancel()

    def resume(self) -> None:
        """Check again (the next check within an interval); the rise/fall counts go on from
        where they were."""
        if self._paused:
            self._paused = False
            self._resumed.set()

    async def run(self) -> None:
        """Check until cancelled, pausing while the operator says so (:meth:`pause`)."""
        while True:
            if self._paused:
                await self._resumed.wait()
            with trio.CancelScope() as self._scope:
                await self._check_forever()
            self._scope = None

    async def _check_forever(self) -> None:
        """Check forever, each check ``next_interval`` after the previous one ended.

        The first check comes at a random moment within the first interval (``fast_interval``:
        a server starts UP but unconfirmed), so that the checks of many servers, or of balancers
        started together, are spread out instead of running in lockstep."""
        await trio.sleep(random.uniform(0, self.state.next_interval(self.check)))
        while True:
            result = await self.check_once()
            self.apply(result)
            await trio.sleep(self.state.next_interval(self.check))

    def apply(self, result: CheckResult) -> None:
        """Count a check's outcome; on a change of verdict, update the server and log it."""
        server = self.server
        server.check_status = result.describe()
        transition = self.state.record(result.ok, result.reason.value)
        last, self._last = self._last, result
        if transition is None:
            if last is None or last.reason is not result.reason:
                self._log_progress(result)
            return
        server.up = transition.up
        active = backup = 0
        for other in self.backend.servers:
            if other.usable:
                if other.config.backup:
                    backup += 1
                else:
                    active += 1
        message = transition_message(
            self.backend.name, server.name, transition, result, active, backup
        )
        if transition.up:
            self.log.info(message)
        else:
            self.log.warning(message)
            if active + backup == 0:
                self.log.error(no_server_message(self.backend.name))

    def force_down(self, why: str) -> None:
        """Passive checks saw too many errors: the server is DOWN now, and stays so until its
        active checks have passed ``rise`` times (HAProxy's ``on-error mark-down``). Not while
        the checks are paused: nothing would bring the server back."""
        if not self.state.up or self._paused:
            return
        self.state = HealthState(self.check.rise, self.check.fall, up=False)
        self.server.up = False
        active = sum(1 for s in self.backend.servers if s.usable and not s.config.backup)
        backup = sum(1 for s in self.backend.servers if s.usable and s.config.backup)
        self.log.warning(
            f"server {self.name} is DOWN, reason: Health analyze, info: {why}. "
            f"{active} active and {backup} backup servers left."
        )
        if active + backup == 0:
            self.log.error(no_server_message(self.backend.name))

    def _log_progress(self, result: CheckResult) -> None:
        """A debug line when a check's outcome changes without changing the verdict (HAProxy's
        ``option log-health-checks``), e.g. "... failed, ..., status: 2/3 UP"."""
        state = self.state
        if state.up:
            status = f"{state.fall - state.failures}/{state.fall} UP"
        else:
            status = f"{state.successes}/{state.rise} DOWN"
        verb = "succeeded" if result.ok else "failed"
        self.log.debug(
            f"health check for server {self.name} {verb}, reason: {result.describe()}, "
            f"status: {status}"
        )

    async def check_once(self) -> CheckResult:
        """Run one check under the check timeout. Never raises (but lets cancellation through)."""
        started = trio.current_time()
        self._phase = Reason.L4_TIMEOUT
        code: int | None = None
        info: str | None = None
        with trio.move_on_after(self.check.timeout) as scope:
            try:
                reason, code, info = await self._attempt()
            except Exception as exc:  # noqa: BLE001 -- a failed check, never the balancer's end
                reason, info = self._classify(exc)
        if scope.cancelled_caught:
            reason, code, info = self._phase, None, None
        duration_ms = round((trio.current_time() - started) * 1000)
        return CheckResult(reason=reason, code=code, info=info, duration_ms=duration_ms)

    def _classify(self, exc: Exception) -> tuple[Reason, str | None]:
        if isinstance(exc, OSError):
            return Reason.L4_CONNECTION, exc.strerror or str(exc)
        if isinstance(exc, trio.BrokenResourceError):
            return Reason.L4_CONNECTION, _error_text(exc)
        if isinstance(exc, h11.RemoteProtocolError):
            return Reason.L7_INVALID, str(exc)
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_internal_error:  # once, not at every interval
            self._last_internal_error = text
            self.log.error(f"health check of server {self.name} failed unexpectedly: {text}")
        return Reason.INTERNAL, text

    async def _attempt(self) -> tuple[Reason, int | None, str | None]:
        family, sockaddr = await self._resolve()
        transport = await connect(family, sockaddr)
        try:
            send_proxy = self.server.config.send_proxy
            if send_proxy is not None and self.check.address is None and self.check.port is None:
                # the server expects a PROXY header first on this port (HAProxy does the same)
                await transport.send_all(local_header(send_proxy))
            if self.check.type == "tcp":
                return Reason.L4_OK, None, None
            stream: trio.abc.Stream = transport
            if self._tls_context is not None:
                self._phase = Reason.L6_TIMEOUT
                tls = trio.SSLStream(
                    transport, self._tls_context, server_hostname=self.server.tls_name
                )
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as exc:
                    return Reason.L6_INVALID, None, _error_text(exc)
                if self.check.type == "tls":
                    return Reason.L6_OK, None, None
                stream = tls
            self._phase = Reason.L7_TIMEOUT
            if self.check.type == "http":
                return await self._http(stream)
            return await self._converse(
                stream, dialog_for(self.check, pattern=self._expect_pattern)
            )
        finally:
            # Closing the socket is enough for TLS too: like HAProxy, no close_notify for a check.
            transport.close()

    async def _resolve(self) -> tuple[int, object]:
        """Where checks connect to: the server's own address unless the check overrides it."""
        if self._target is not None:
            return self._target
        check, server = self.check, self.server
        address = server.config.address
        if check.address is None and check.port is None:
            target = (server.family, server.sockaddr)
        elif check.address is None:
            if not isinstance(server.sockaddr, tuple):
                raise OSError(f"a check port needs a check address for {address}")
            target = (server.family, (server.sockaddr[0], check.port, *server.sockaddr[2:]))
        else:
            port = check.port if check.port is not None else address.port
            if address.is_unix and check.port is None:
                raise OSError(f"a check address needs a check port for {address}")
            try:
                infos = await trio.socket.getaddrinfo(check.address, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise OSError(f"cannot resolve {check.address!r}: {exc.strerror}") from None
            family, _, _, _, sockaddr = infos[0]
            target = (family, sockaddr)
        self._target = target
        return target

    async def _http(self, stream: trio.abc.Stream) -> tuple[Reason, int | None, str | None]:
        check = self.check
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_SIZE)
        request = h11.Request(
            method=check.method,
            target=check.path,
            headers=[
                ("Host", self._host),
                ("User-Agent", USER_AGENT),
                ("Connection", "close"),
            ],
        )
        await stream.send_all((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        status: int | None = None
        body = bytearray()
        need_body = wants_body(check)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await _receive(stream)
                if not data and status is None:
                    return Reason.L7_INVALID, None, "connection closed without a response"
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                if not need_body:
                    break
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) >= BODY_LIMIT:
                    break
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
            # (h11.InformationalResponse: 1xx, the real answer follows)
        assert status is not None  # h11 yields Data / EndOfMessage only after the Response
        reason, info = judge_http_response(
            check, status, bytes(body[:BODY_LIMIT]), pattern=self._pattern
        )
        return reason, status, info

    @staticmethod
    async def _converse(
        stream: trio.abc.Stream, dialog: Dialog
    ) -> tuple[Reason, int | None, str | None]:
        """Pump bytes between the server and ``dialog`` until it decides."""
        step = dialog.start()
        while step.outcome is None:
            if step.send:
                await stream.send_all(step.send)
            step = dialog.receive(await _receive(stream))
        if step.send:  # a goodbye: the verdict stands whether or not it goes through
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(step.send)
        outcome = step.outcome
        return outcome.reason, outcome.code, outcome.info


async def _receive(stream: trio.abc.Stream) -> bytes:
    return bytes(await stream.receive_some(RECEIVE_SIZE))


def _error_text(exc: BaseException) -> str:
    """The words of a stream error: the OS's or OpenSSL's (a failed verification's reason)."""
    cause = exc.__cause__
    if cause is None:
        return str(exc)
    verify = getattr(cause, "verify_message", None)
    if verify:
        return f"certificate verify failed: {verify}"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause) or type(cause).__name__
