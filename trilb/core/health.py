"""Active health checks, the decisions: a server's health state machine, what a check's answer
means, and the log lines, as HAProxy words them. No I/O here: :mod:`trilb.health` runs the checks.

Theory of operation
-------------------

Each checked server has a :class:`HealthState`. Every check ends in a :class:`CheckResult`
(passed or failed, with a :class:`Reason` naming the layer that decided it) which the shell feeds
to :meth:`HealthState.record`:

* an UP server goes DOWN after ``fall`` failed checks in a row; a passed check in between starts
  the count again;
* a DOWN server comes back UP after ``rise`` passed checks in a row; a failed check in between
  starts that count again.

``record`` returns a :class:`Transition` exactly when the verdict changes, and the shell logs it
with :func:`transition_message`. The wait before the next check depends on the phase
(:meth:`HealthState.next_interval`, HAProxy's ``inter`` / ``fastinter`` / ``downinter``):

=============================================  ===================
phase                                          wait
=============================================  ===================
UP, no failure counted                         ``interval``
UP with failures counted (maybe going DOWN)    ``fast_interval``
DOWN, no success counted                       ``down_interval``
DOWN with successes counted (maybe coming UP)  ``fast_interval``
=============================================  ===================

(``fast_interval`` and ``down_interval`` default to ``interval``.)

**Start.** As in HAProxy, a server starts UP -- traffic flows from the first second -- but it is
not yet *confirmed*: its state starts with ``fall - 1`` failures counted, so the first check that
fails takes it DOWN at once, while the first that passes confirms it (HAProxy's "up, but will fall
down at first failure"). So a server that is dead when trilb starts leaves the rotation after one
check instead of ``fall``, and until its first check the server is in the "going DOWN" phase,
checked at ``fast_interval``. ``HealthState(..., up=False)`` starts a server fully DOWN instead.
"""

from __future__ import annotations

import enum
import re

import attrs

from ..config import HealthCheck

__all__ = [
    "BODY_LIMIT",
    "CheckResult",
    "HealthState",
    "Reason",
    "Transition",
    "judge_http_response",
    "no_server_message",
    "status_expected",
    "transition_message",
    "wants_body",
]

#: an HTTP check reads at most this much of a response body to match ``expect_body`` /
#: ``expect_body_regex`` against; what comes after is ignored. Health pages are small, and a
#: bound keeps a misbehaving server (an endless stream) from costing memory. (HAProxy's limit is
#: its buffer size, 16 KiB by default; 64 KiB leaves room for verbose status pages.)
BODY_LIMIT = 64 * 1024


class Reason(enum.Enum):
    """Why a check passed or failed, in HAProxy's words (its ``check_status`` code in comments)."""

    L4_OK = "Layer4 check passed"  # L4OK: connected
    L4_CONNECTION = "Layer4 connection problem"  # L4CON: refused, reset, unreachable...
    L4_TIMEOUT = "Layer4 timeout"  # L4TOUT: no connection within the check timeout
    L6_OK = "Layer6 check passed"  # L6OK: TLS handshake completed
    L6_INVALID = "Layer6 invalid response"  # L6RSP: TLS handshake failed
    L6_TIMEOUT = "Layer6 timeout"  # L6TOUT: no complete handshake within the timeout
    L7_OK = "Layer7 check passed"  # L7OK: expected status (and body)
    L7_STATUS = "Layer7 wrong status"  # L7STS: a status outside expect_status
    L7_INVALID = "Layer7 invalid response"  # L7RSP: not HTTP
    L7_RESPONSE = "Layer7 response error"  # the body did not match expect_body(_regex)
    L7_TIMEOUT = "Layer7 timeout"  # L7TOUT: connected, but no (complete) answer in time
    #: a bug or an unforeseen error in the check itself (logged as an error, once)
    INTERNAL = "Internal check error"

    @property
    def passed(self) -> bool:
        return self in _PASSED


_PASSED = frozenset({Reason.L4_OK, Reason.L6_OK, Reason.L7_OK})


@attrs.frozen(kw_only=True)
class CheckResult:
    """The outcome of one check."""

    reason: Reason
    #: the HTTP status of an HTTP check's answer, if one came
    code: int | None = None
    #: details: the OS or TLS error, what the body was expected to hold
    info: str | None = None
    #: how long the check took, in whole milliseconds
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.reason.passed

    def describe(self) -> str:
        """ "Layer7 wrong status, code: 500, check duration: 3ms": the reason part of the log
        line, also kept as the server's ``check_status``."""
        parts = [self.reason.value]
        if self.code is not None:
            parts.append(f"code: {self.code}")
        if self.info:
            parts.append(f'info: "{self.info}"')
        parts.append(f"check duration: {self.duration_ms}ms")
        return ", ".join(parts)


@attrs.frozen(kw_only=True)
class Transition:
    """A server's health verdict changed: it is now UP (``up``) or DOWN, because of ``reason``."""

    up: bool
    reason: str

    @property
    def state(self) -> str:
        return "UP" if self.up else "DOWN"


class HealthState:
    """One server's health verdict and the counts that move it (see the module docstring)."""

    __slots__ = ("failures", "fall", "rise", "successes", "up")

    def __init__(self, rise: int, fall: int, up: bool = True) -> None:
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be at least 1, got rise={rise}, fall={fall}")
        self.rise = rise
        self.fall = fall
        self.up = up
        #: consecutive failed checks counted towards ``fall`` (UP: not yet confirmed at start)
        self.failures = fall - 1 if up else 0
        #: consecutive passed checks counted towards ``rise``
        self.successes = 0

    def __repr__(self) -> str:
        return (
            f"<HealthState {'UP' if self.up else 'DOWN'} successes={self.successes}/{self.rise}"
            f" failures={self.failures}/{self.fall}>"
        )

    @property
    def transitioning(self) -> bool:
        """UP with failures counted, or DOWN with successes counted."""
        return self.failures > 0 if self.up else self.successes > 0

    def record(self, ok: bool, reason: str) -> Transition | None:
        """Count one check's outcome; the transition if the verdict changed, else None."""
        if ok:
            self.failures = 0
            self.successes += 1
            if not self.up and self.successes >= self.rise:
                self.up = True
                return Transition(up=True, reason=reason)
        else:
            self.successes = 0
            self.failures += 1
            if self.up and self.failures >= self.fall:
                self.up = False
                return Transition(up=False, reason=reason)
        return None

    def next_interval(self, check: HealthCheck) -> float:
        """Seconds to wait before the next check."""
        if self.transitioning:
            return check.interval if check.fast_interval is None else check.fast_interval
        if not self.up:
            return check.interval if check.down_interval is None else check.down_interval
        return check.interval


def status_expected(check: HealthCheck, status: int) -> bool:
    return any(low <= status <= high for low, high in check.expect_status)


def wants_body(check: HealthCheck) -> bool:
    """Whether judging the answer needs its body (else the status line decides)."""
    return check.expect_body is not None or check.expect_body_regex is not None


def judge_http_response(
    check: HealthCheck, status: int, body: bytes, *, pattern: re.Pattern[str] | None = None
) -> tuple[Reason, str | None]:
    """What an HTTP check's answer means: a reason and the info to log with it.

    ``body`` is the start of the body (at most :data:`BODY_LIMIT` bytes; only read when
    :func:`wants_body`). ``pattern`` is ``check.expect_body_regex`` compiled (compiled here if not
    given; the shell compiles it once per server). The body is matched as UTF-8, invalid bytes
    replaced."""
    if not status_expected(check, status):
        return Reason.L7_STATUS, None
    if check.expect_body is not None and check.expect_body.encode() not in body:
        return Reason.L7_RESPONSE, f"body does not contain {check.expect_body!r}"
    if check.expect_body_regex is not None:
        if pattern is None:
            pattern = re.compile(check.expect_body_regex)
        if pattern.search(body.decode("utf-8", "replace")) is None:
            return Reason.L7_RESPONSE, f"body does not match {check.expect_body_regex!r}"
    return Reason.L7_OK, None


def transition_message(
    backend: str, server: str, transition: Transition, result: CheckResult, active: int, backup: int
) -> str:
    """HAProxy's log line for a state change; ``active`` / ``backup`` count the backend's regular
    and backup servers still usable afterwards. For example::

        server wordpress/wp2 is DOWN, reason: Layer7 wrong status, code: 500, check duration: 3ms.
        1 active and 0 backup servers left.

    (one line in the log)."""
    if transition.up:
        tail = f"{active} active and {backup} backup servers online."
    else:
        tail = f"{active} active and {backup} backup servers left."
    if active == 0 and backup > 0:
        tail += " Running on backup."
    return f"server {backend}/{server} is {transition.state}, reason: {result.describe()}. {tail}"


def no_server_message(backend: str) -> str:
    """Logged after the last usable server of a backend went DOWN (HAProxy's words)."""
    return f"backend {backend} has no server available!"
