"""The shape of a protocol-aware health check: a *dialog* with the server, without I/O.

Theory of operation
-------------------

A check that speaks a protocol over TCP (``send_expect``, ``redis``, ``mysql``, ``smtp``) is a
:class:`Dialog`. The shell (:mod:`trilb.health`) connects, then pumps bytes::

    step = dialog.start()
    while step.outcome is None:
        send step.send (if any)
        step = dialog.receive(next chunk from the server)   # b"" when the server closed
    send step.send, best effort (a goodbye such as QUIT), close, report step.outcome

Each :class:`Step` says what to send now and, once the dialog has made up its mind, the
outcome, a :class:`~trilb.core.health.CheckResult` (its ``duration_ms`` is the shell's to fill
in). A dialog never waits: the whole check is bounded by ``health_check.timeout`` in the shell,
which reports ``Layer7 timeout`` when a dialog was still waiting for bytes. Every buffer a
dialog keeps is bounded (:data:`ANSWER_LIMIT`), so a server that streams without end costs
nothing but the check.

A dialog is used for one connection, then dropped.
"""

from __future__ import annotations

import abc

import attrs

from .health import CheckResult, Reason

__all__ = [
    "ANSWER_LIMIT",
    "INFO_LIMIT",
    "Dialog",
    "Step",
    "closed",
    "server_words",
]

#: a dialog keeps at most this much of an answer (HAProxy's checks read into one buffer, 16 KiB
#: by default). The answers checks look for are a line or a packet of some hundred bytes; a
#: multi-line EHLO reply is well under 1 KiB.
ANSWER_LIMIT = 16 * 1024

#: the server's words quoted in a check's info (logs, statistics) are cut to this many characters
INFO_LIMIT = 200


@attrs.frozen(kw_only=True)
class Step:
    """What to do next: send ``send``, then read more; or, with an ``outcome``, the check is
    over: ``send`` is a goodbye, sent best effort (its failure does not change the outcome)."""

    send: bytes = b""
    outcome: CheckResult | None = None


#: nothing to send, nothing decided: read more
CONTINUE = Step()


class Dialog(abc.ABC):
    """One check's conversation with a server (see the module docstring)."""

    def start(self) -> Step:
        """What to send first, once connected (nothing, by default: the server speaks first)."""
        return CONTINUE

    @abc.abstractmethod
    def receive(self, data: bytes) -> Step:
        """The next bytes from the server; ``b""`` when it closed the connection. Once a step
        with an outcome was returned, the dialog is over and must not be fed again."""


def server_words(data: bytes | str, limit: int = INFO_LIMIT) -> str:
    """Text from the server made fit for one log line: UTF-8 (invalid bytes replaced), control
    characters escaped, surrounding blanks stripped, cut to ``limit`` characters."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def closed(started: bool, what: str = "response") -> CheckResult:
    """The outcome when the server closed before the dialog was decided: ``Layer7 invalid
    response`` with "connection closed without a response", or "... in the middle of a
    response" once some of it had come (``started``)."""
    where = f"in the middle of a {what}" if started else f"without a {what}"
    return CheckResult(reason=Reason.L7_INVALID, info=f"connection closed {where}")
