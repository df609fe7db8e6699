"""Log targets: where :class:`~trilb.logsink.LogSink` writes its lines.

A target takes a batch of ``(severity, line)`` pairs and writes them, synchronously, and returns
how many lines it could not write (dropped: it never raises for a failing destination). Whether
that call may block decides where the sink makes it: ``blocking`` targets (files, stdout/stderr)
are written from a worker thread, the others (syslog over non-blocking datagram sockets) from the
Trio thread. Either way the data path never waits: it only appends to the sink's queue.

* :class:`StreamTarget` -- stdout / stderr.
* :class:`FileTarget` -- ``file:PATH``, appended to, reopened on request (SIGUSR2) and when the
  path no longer names the open file (renamed or removed by logrotate).
* :class:`SyslogTarget` -- ``syslog:HOST:PORT`` (UDP) and ``syslog:unix:PATH`` (``/dev/log``):
  one RFC 5424 datagram per line, ``<PRI>1 TIMESTAMP HOSTNAME trilb PID - - MESSAGE``.

:func:`open_target` turns a ``log.target`` string into one of them; what can't be opened is a
:class:`~trilb.errors.StartupError` naming ``log.target``.
"""

from __future__ import annotations

import datetime
import os
import socket
import stat
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .config.values import parse_address
from .errors import ConfigError, StartupError

if TYPE_CHECKING:
    from typing import TextIO

__all__ = [
    "FACILITIES",
    "SEVERITIES",
    "FileTarget",
    "Line",
    "StreamTarget",
    "SyslogTarget",
    "Target",
    "open_target",
]

#: RFC 5424 severities of trilb's lines: access lines are "info"
SEVERITIES = {"error": 3, "warning": 4, "info": 6, "debug": 7}
#: RFC 5424 facility codes by name (``log.facility``)
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "local0": 16, "local1": 17, "local2": 18,
    "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip

#: how often a file target checks that its path still names the open file (logrotate renamed
#: it?): a stat() per second is nothing, and a rotated log is picked up within about a second
ROTATION_CHECK = 1.0
#: a syslog datagram is cut to this many bytes: rsyslog's default maxMessageSize (8 KiB) --
#: longer lines (huge request URIs) are truncated rather than lost
MAX_DATAGRAM = 8192

#: (RFC 5424 severity, the line without its newline)
Line = tuple[int, str]


class Target(Protocol):
    """What :class:`~trilb.logsink.LogSink` writes to (an embedder may pass its own)."""

    #: whether :meth:`write` may block: then the sink calls it from a worker thread
    blocking: bool
    #: call :meth:`write` with no lines at least this often (seconds) when idle; None: never
    check_interval: float | None

    def write(self, lines: Sequence[Line]) -> int:
        """Write ``lines`` (maybe none: then just check the target); return how many were not
        written. Never raises for a failing destination."""
        ...

    def reopen(self) -> None:
        """Reopen before the next write (SIGUSR2). Called from the Trio thread while a worker
        thread may be writing: it may only set a flag."""
        ...

    def close(self) -> None:
        """Release what is open; a later :meth:`write` opens it again."""
        ...


def open_target(spec: str, *, facility: str = "local0") -> Target | None:
    """The target a ``log.target`` string names; None for ``"none"``.

    Raises :class:`~trilb.errors.ConfigError` for a malformed string and
    :class:`~trilb.errors.StartupError` for one that can't be opened (a file in a missing
    folder, a syslog host that does not resolve, no socket at ``syslog:unix:PATH``)."""
    if spec == "none":
        return None
    if spec in ("stdout", "stderr"):
        return StreamTarget(sys.stdout if spec == "stdout" else sys.stderr)
    if spec.startswith("file:") and len(spec) > len("file:"):
        return FileTarget(spec[len("file:") :])
    if facility not in FACILITIES:
        raise ConfigError.single("log.facility", f"unknown syslog facility {facility!r}")
    if spec.startswith("syslog:unix:") and len(spec) > len("syslog:unix:"):
        return SyslogTarget.unix(spec[len("syslog:unix:") :], facility=facility)
    if spec.startswith("syslog:"):
        try:
            (address,) = parse_address(spec[len("syslog:") :], bind=False)
        except ValueError as exc:
            raise ConfigError.single("log.target", f"the syslog address {exc}") from None
        assert address.host is not None  # bind=False: a host is required
        return SyslogTarget.udp(address.host, address.port, facility=facility)
    raise ConfigError.single(
        "log.target",
        'must be "stdout", "stderr", "none", "file:PATH", "syslog:HOST:PORT" or '
        f'"syslog:unix:PATH", got {spec!r}',
    )


def _joined(lines: Sequence[Line]) -> str:
    return "".join([f"{text}\n" for _, text in lines])


class StreamTarget:
    """stdout or stderr (any text stream).

    Written from a worker thread: a pipe to a slow reader blocks ``write``, and making the
    descriptor non-blocking instead would change it for every process sharing it (O_NONBLOCK
    belongs to the open file description: the shell that started trilb would get EAGAIN on its
    own terminal afterwards)."""

    blocking = True
    check_interval: float | None = None

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, lines: Sequence[Line]) -> int:
        if not lines:
            return 0
        try:
            self.stream.write(_joined(lines))
            self.stream.flush()
        except (OSError, ValueError):  # closed, broken pipe, unencodable: the lines are lost
            return len(lines)
        return 0

    def reopen(self) -> None:
        pass  # nothing to reopen

    def close(self) -> None:
        pass  # never trilb's to close


class FileTarget:
    """``file:PATH``: appended to (O_APPEND: each batch is one write, whole lines, even with
    several processes on the same file), reopened when asked (SIGUSR2) and when the path stops
    naming the open file -- renamed or removed, as logrotate does -- checked every
    :data:`ROTATION_CHECK` seconds. A reopen that fails keeps the old file and tries again."""

    blocking = True
    check_interval: float | None = ROTATION_CHECK

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._file: _BinaryFile | None = None
        self._identity = (0, 0)  # (st_dev, st_ino) of the open file
        self._checked = 0.0
        self._reopen = False
        try:
            self._open()
        except OSError as exc:
            raise StartupError(
                f"log.target: cannot open {self.path}: {exc.strerror or exc}"
            ) from None

    def _open(self) -> None:
        new = open(self.path, "ab", buffering=0, opener=_open_for_append)  # noqa: SIM115
        status = os.fstat(new.fileno())
        old, self._file = self._file, new
        self._identity = (status.st_dev, status.st_ino)
        self._checked = time.monotonic()
        if old is not None:
            old.close()

    def _moved(self) -> bool:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (status.st_dev, status.st_ino) != self._identity

    def write(self, lines: Sequence[Line]) -> int:
        try:
            if self._file is None:
                self._open()
            elif self._reopen or time.monotonic() - self._checked >= ROTATION_CHECK:
                self._checked = time.monotonic()
                if self._reopen or self._moved():
                    self._reopen = False
                    self._open()
        except OSError:
            if self._file is None:
                return len(lines)
            # (could not reopen, e.g. the folder is gone: keep the old file, retry later)
        if not lines:
            return 0
        assert self._file is not None
        data = memoryview(_joined(lines).encode("utf-8", "backslashreplace"))
        try:
            while data:
                written = self._file.write(data)
                data = data[written or 0 :]
        except OSError:  # disk full, I/O error: what was not written is lost (a cut line too)
            return bytes(data).count(b"\n")
        return 0

    def reopen(self) -> None:
        self._reopen = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _BinaryFile(Protocol):
    def write(self, data: memoryview, /) -> int | None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


def _open_for_append(path: str, flags: int) -> int:
    # rw-r----- before the umask: access logs hold client addresses
    return os.open(path, flags | os.O_APPEND | os.O_CREAT, 0o640)


class SyslogTarget:
    """RFC 5424 syslog over datagrams: UDP (``syslog:HOST:PORT``, RFC 5426) or a local unix
    socket (``syslog:unix:/dev/log``). One datagram per line; the socket is non-blocking, so a
    full socket buffer (EAGAIN) or an error drops the line (counted) instead of waiting. The
    address is resolved once, when the target is made; the unix socket's path is sent to each
    time, so a restarted syslog daemon is found again."""

    blocking = False
    check_interval: float | None = None

    def __init__(
        self, family: int, address: tuple[Any, ...] | str, *, facility: str = "local0"
    ) -> None:
        self._family = family
        self._address = address
        self._facility = FACILITIES[facility] * 8
        name = socket.gethostname().split()  # RFC 5424 HOSTNAME: printable, no spaces
        self._hostname = name[0] if name else "-"
        self._socket: socket.socket | None = None

    @classmethod
    def udp(cls, host: str, port: int, *, facility: str = "local0") -> SyslogTarget:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise StartupError(
                f"log.target: cannot resolve the syslog host {host!r}: {exc.strerror or exc}"
            ) from None
        family, _, _, _, address = infos[0]
        return cls(family, address, facility=facility)

    @classmethod
    def unix(cls, path: str, *, facility: str = "local0") -> SyslogTarget:
        try:
            is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
        except OSError as exc:
            raise StartupError(
                f"log.target: no syslog socket at {path} ({exc.strerror or exc}): is a syslog "
                "daemon running?"
            ) from None
        if not is_socket:
            raise StartupError(f"log.target: {path} is not a socket")
        return cls(socket.AF_UNIX, path, facility=facility)

    def _open(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        self._socket = sock
        return sock

    def header(self, severity: int) -> str:
        """``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA`` and a space."""
        now = datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")
        return f"<{self._facility + severity}>1 {now} {self._hostname} trilb {os.getpid()} - - "

    def write(self, lines: Sequence[Line]) -> int:
        if not lines:
            return 0
        try:
            sock = self._socket or self._open()
        except OSError:
            return len(lines)
        failed = 0
        headers: dict[int, bytes] = {}  # one timestamp per batch: it was queued a moment ago
        for severity, text in lines:
            header = headers.get(severity)
            if header is None:
                header = headers[severity] = self.header(severity).encode("ascii")
            datagram = header + text.encode("utf-8", "backslashreplace")
            if len(datagram) > MAX_DATAGRAM:
                datagram = datagram[:MAX_DATAGRAM].decode("utf-8", "ignore").encode("utf-8")
            try:
                sock.sendto(datagram, self._address)
            except OSError:  # EAGAIN (buffer full), ECONNREFUSED/ENOENT (no daemon), ...
                failed += 1
        return failed

    def reopen(self) -> None:
        pass  # datagrams: nothing to reopen

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
