"""Where log lines go: the access log and trilb's own messages share one target.

Writing is synchronous and line-buffered: one ``write`` per line keeps lines whole when several
processes share a file descriptor. (Non-blocking targets with drop counters — files, syslog — come
with the observability work; stdout/stderr are what a daemon under systemd or a container uses.)
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .core.accesslog import AccessLogFormatter, RequestLog
from .errors import StartupError

__all__ = ["LogSink"]

QUIET, NORMAL, VERBOSE = -1, 0, 1


class LogSink:
    """Formats and writes log lines. ``verbosity``: -1 errors only, 0 info, 1 debug."""

    __slots__ = ("_file", "_formatter", "verbosity")

    def __init__(
        self, target: str = "stdout", fmt: str = "haproxy", *, verbosity: int = NORMAL
    ) -> None:
        if target not in ("stdout", "stderr", "none"):
            raise StartupError(f"log.target: {target!r} is not available in this build yet")
        self._file: TextIO | None = {"stdout": sys.stdout, "stderr": sys.stderr}.get(target)
        self._formatter = AccessLogFormatter(fmt)
        self.verbosity = verbosity

    def access(self, record: RequestLog) -> None:
        if self._file is not None:
            self._write(self._formatter.format(record))

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
        if self._file is not None:
            self._write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} trilb {level}: {message}")

    def _write(self, line: str) -> None:
        assert self._file is not None
        try:
            self._file.write(line + "\n")
            self._file.flush()
        except (OSError, ValueError):
            # A closed or broken log target must never take a connection down with it.
            pass
