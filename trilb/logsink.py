"""Where log lines go: the access log and trilb's own messages share one target.

Theory of operation. The data path never waits for logging: :meth:`LogSink.access` (and the
message methods) format the line and append it to a bounded queue (a ``deque`` of at most
``log.queue`` lines; beyond that, lines are dropped and counted in :attr:`LogSink.dropped`).
A writer task, :meth:`LogSink.run` -- started in the balancer's nursery, or by an embedder --
takes the queued lines in batches and hands them to the target (:mod:`trilb.logtargets`):
files and stdout/stderr from a worker thread (their writes may block), syslog's non-blocking
datagram sockets directly. When it has caught up after dropping lines it logs one warning,
"N log lines dropped".

Without a running writer -- before the balancer starts, after it stopped, ``trilb check``, tests
and embedders that never start one -- each line is written synchronously, at once, as it is
logged: nothing is lost while starting or stopping. When the writer stops, it writes what is
still queued and closes the target; lines logged after that open it for themselves.

A file target is reopened by :meth:`LogSink.reopen` (``trilb serve`` calls it on SIGUSR2) and by
itself when logrotate renamed or removed it.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

import trio

from .core.accesslog import AccessLogFormatter, RequestLog, TemplateError
from .errors import ConfigError
from .logtargets import SEVERITIES, Line, StreamTarget, SyslogTarget, Target, open_target

if TYPE_CHECKING:
    from .config import LogConfig

__all__ = ["LogSink"]

QUIET, NORMAL, VERBOSE = -1, 0, 1

#: default ``log.queue``: some seconds of access lines at thousands of requests per second, a
#: few MB at most -- enough to ride out a slow disk or syslog hiccup, bounded when one is dead
DEFAULT_QUEUE = 10_000
#: lines handed to the target at once: large enough that a thread hop per batch costs nothing per
#: line, small enough that syslog's sends (in the Trio thread) never hold it up for long
MAX_BATCH = 512
#: a stopping writer waits this long (seconds) for a write in progress before giving it up: a
#: stalled target must not hold up the balancer's shutdown
STOP_WAIT = 1.0
#: how long a synchronous write (no writer running) waits for the target's lock
WRITE_NOW_WAIT = 0.1

_INFO = SEVERITIES["info"]


class LogSink:
    """Formats log lines and writes them to a target without ever blocking its caller.

    ``target``: a ``log.target`` string ("stdout", "stderr", "none", "file:PATH",
    "syslog:HOST:PORT", "syslog:unix:PATH") or a :class:`~trilb.logtargets.Target`.
    ``fmt``: "haproxy" or "json"; a ``template`` (HAProxy's log-format variables) overrides it.
    ``verbosity``: -1 errors only, 0 info, 1 debug. ``queue``: lines waiting at most.

    Raises :class:`~trilb.errors.ConfigError` for a bad template (``log.template``) and
    :class:`~trilb.errors.StartupError` for a target that can't be opened (``log.target``).
    """

    __slots__ = (
        "_formatter",
        "_in_flight",
        "_json",
        "_limit",
        "_lock",
        "_queue",
        "_syslog",
        "_target",
        "_unreported",
        "_wakeup",
        "_writer_done",
        "_writer_ran",
        "_writing",
        "dropped",
        "prefix",
        "verbosity",
    )

    def __init__(
        self,
        target: str | Target = "stdout",
        fmt: str = "haproxy",
        *,
        verbosity: int = NORMAL,
        template: str | None = None,
        facility: str = "local0",
        queue: int = DEFAULT_QUEUE,
    ) -> None:
        if queue < 1:
            raise ValueError(f"queue must be at least 1, got {queue}")
        try:
            self._formatter = AccessLogFormatter(fmt, template)
        except TemplateError as exc:
            raise ConfigError.single("log.template", str(exc)) from None
        self._json = fmt == "json" and template is None
        self._target = open_target(target, facility=facility) if isinstance(target, str) else target
        self._syslog = isinstance(self._target, SyslogTarget)
        self.verbosity = verbosity
        #: put before every message (not access log lines): "worker 2: " in a worker process
        self.prefix = ""
        #: lines dropped so far: the queue was full, or the target failed to take them
        self.dropped = 0
        self._unreported = 0  # dropped since the last "log lines dropped" warning
        self._limit = queue
        self._queue: deque[Line] = deque()
        # Held while the target is written to (by a worker thread or synchronously): a
        # synchronous write never waits behind a stuck thread, it drops its line instead.
        self._lock = threading.Lock()
        self._in_flight: list[Line] | None = None  # the batch handed to a worker thread
        self._writing = False  # a writer task runs (then lines are queued)
        self._writer_done: trio.Event | None = None
        self._writer_ran = False
        self._wakeup: trio.Event | None = None  # set when the writer sleeps, for lines to wake it

    @classmethod
    def from_config(cls, config: LogConfig, *, verbosity: int = NORMAL) -> LogSink:
        """The sink a ``[log]`` table describes."""
        return cls(
            config.target,
            config.format,
            verbosity=verbosity,
            template=config.template,
            facility=config.facility,
            queue=config.queue,
        )

    # -- logging (the hot path: format, append, never wait) --------------------------------------

    def access(self, record: RequestLog) -> None:
        if self._target is not None:
            self._emit(_INFO, self._formatter.format(record))

    def debug(self, message: str) -> None:
        if self.verbosity >= VERBOSE:
            self._message("debug", message)

    def info(self, message: str) -> None:
        if self.verbosity >= NORMAL:
            self._message("info", message)

    def warning(self, message: str) -> None:
        if self.verbosity >= NORMAL:
            self._message("warning", message)

    def error(self, message: str) -> None:
        self._message("error", message)

    def _message(self, level: str, message: str) -> None:
        if self._target is None:
            return
        message = self.prefix + message
        if self._json:
            line = _json_message(level, message)
        elif self._syslog:  # the syslog header has the time and "trilb"
            line = f"{level}: {message}"
        else:
            line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} trilb {level}: {message}"
        self._emit(SEVERITIES[level], line)

    def _emit(self, severity: int, line: str) -> None:
        if not self._writing:
            self._write_now([(severity, line)])
            return
        if len(self._queue) >= self._limit:
            self.dropped += 1
            self._unreported += 1
            return
        self._queue.append((severity, line))
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    # -- control ---------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Lines waiting for the writer."""
        return len(self._queue)

    def reopen(self) -> None:
        """Reopen a file target (after logrotate renamed it): at once without a writer, else
        by the writer, before its next line."""
        if self._target is None:
            return
        self._target.reopen()
        if not self._writing:
            self._write_now([])
        elif self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def close(self) -> None:
        """Release the target (a file, a socket). Lines logged later open it again; a running
        writer closes it when it stops anyway."""
        if self._target is not None and self._lock.acquire(blocking=False):
            try:
                self._target.close()
            finally:
                self._lock.release()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued lines to the target until cancelled (``await nursery.start(log.run)``).

        Cancellation: stops at once; what is still queued is written synchronously (a write
        in progress gets :data:`STOP_WAIT` seconds to finish, else the queued lines are dropped
        and counted), then the target is closed. Resource handling: one worker thread at a
        time writes blocking targets. Error handling: a failing target never raises here; its
        lines are counted as dropped. A second writer for the same sink (a sink shared by two
        balancers) waits, and takes over when the first stops."""
        task_status.started()
        target = self._target
        if target is None:
            return
        while self._writer_done is not None:
            await self._writer_done.wait()
        self._writing = True
        self._writer_done = done = trio.Event()
        self._writer_ran = True
        try:
            await self._write_forever(target)
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(target)
            self._writer_done = None
            done.set()

    async def _write_forever(self, target: Target) -> None:
        queue = self._queue
        interval = target.check_interval if target.check_interval is not None else math.inf
        while True:
            if not queue:
                self._wakeup = wakeup = trio.Event()
                with trio.move_on_after(interval):
                    await wakeup.wait()
                self._wakeup = None
            batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
            if target.blocking:
                self._in_flight = batch
                failed = await trio.to_thread.run_sync(
                    self._write_in_thread, target, batch, abandon_on_cancel=True
                )
            else:
                failed = self._write_locked(target, batch)
                await trio.lowlevel.checkpoint()
            if failed:
                self._count_dropped(failed)
            elif self._unreported and not queue:
                self._report_dropped()

    def _write_in_thread(self, target: Target, batch: list[Line]) -> int:
        with self._lock:
            if self._in_flight is not batch:  # abandoned before it ran: the writer's stop wrote it
                return 0
            try:
                return _write(target, batch)
            finally:
                self._in_flight = None

    def _write_locked(self, target: Target, batch: Sequence[Line]) -> int:
        with self._lock:
            return _write(target, batch)

    async def _stop(self, target: Target) -> None:
        """Writer stopping: flush the queue synchronously and close the target -- unless a
        write is stuck in its thread (a stalled target): then drop what is queued."""
        acquired = self._lock.acquire(blocking=False)
        if not acquired:
            acquired = await trio.to_thread.run_sync(
                self._lock.acquire, True, STOP_WAIT, abandon_on_cancel=True
            )
        self._writing = False
        lines = list(self._queue)
        self._queue.clear()
        if acquired and self._in_flight is not None:  # cancelled before its thread ran
            lines[:0] = self._in_flight
            self._in_flight = None
        if not acquired:
            self._count_dropped(len(lines))
            return
        try:
            failed = _write(target, lines)
            if failed:
                self._count_dropped(failed)
            target.close()
        finally:
            self._lock.release()
        if self._unreported:
            self._report_dropped()

    def _write_now(self, lines: Sequence[Line]) -> None:
        """No writer runs: write synchronously (never behind a write stuck in a thread)."""
        target = self._target
        assert target is not None
        # Another holder can only be a writer thread the stopped writer abandoned: it finds its
        # batch written and lets go at once, unless the target is stalled (then drop the lines).
        if not self._lock.acquire(timeout=WRITE_NOW_WAIT):
            self._count_dropped(len(lines))
            return
        try:
            failed = _write(target, lines)
            if self._writer_ran:  # the balancer stopped: don't keep a file open for stray lines
                target.close()
        finally:
            self._lock.release()
        if failed:
            self._count_dropped(failed)
        elif self._unreported and lines:
            self._report_dropped()

    def _count_dropped(self, count: int) -> None:
        self.dropped += count
        self._unreported += count

    def _report_dropped(self) -> None:
        count, self._unreported = self._unreported, 0
        self.warning(
            f"{count} log lines dropped (the log target was too slow or failing; "
            f"{self.dropped} since start)"
        )

    # -- compatibility ---------------------------------------------------------------------------

    @property
    def _file(self) -> TextIO | None:
        """The stream of a stdout/stderr target (for tests that swap it for another stream)."""
        return self._target.stream if isinstance(self._target, StreamTarget) else None

    @_file.setter
    def _file(self, stream: TextIO | None) -> None:
        self._target = StreamTarget(stream) if stream is not None else None


def _write(target: Target, lines: Sequence[Line]) -> int:
    try:
        return target.write(lines)
    except Exception:  # noqa: BLE001 -- a log target (an embedder's too) never takes trilb down
        return len(lines)


def _json_message(level: str, message: str) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%S")
    return json.dumps({"time": when, "level": level, "message": message}, separators=(",", ":"))
