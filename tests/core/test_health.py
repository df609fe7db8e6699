"""The health-check core: the state machine, the intervals, judging HTTP answers, the log lines."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from trilb.config import HealthCheck
from trilb.core.health import (
    CheckResult,
    HealthState,
    Reason,
    Transition,
    judge_http_response,
    no_server_message,
    transition_message,
    wants_body,
)


def run(state: HealthState, outcomes: str) -> str:
    """Feed outcomes ("+" passed, "-" failed) and return the verdict after each as "U"/"D",
    lowercase where that check changed it."""
    out = []
    for outcome in outcomes:
        transition = state.record(outcome == "+", "why")
        letter = "U" if state.up else "D"
        if transition is not None:
            assert transition.up is state.up
            letter = letter.lower()
        out.append(letter)
    return "".join(out)


def confirmed(rise: int, fall: int) -> HealthState:
    """An UP server whose first check passed (the start's grace is over)."""
    state = HealthState(rise=rise, fall=fall)
    assert state.record(True, "ok") is None
    return state


# -- rise and fall ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rise", "fall", "outcomes", "expected"),
    [
        (2, 3, "---", "UUd"),  # the third failure in a row takes it DOWN
        (2, 3, "--+--", "UUUUU"),  # a success starts the failure count again
        (2, 3, "--+---", "UUUUUd"),
        (2, 3, "---+", "UUdD"),  # one success is not enough with rise=2
        (2, 3, "---++", "UUdDu"),  # the second brings it back
        (2, 3, "---+-++", "UUdDDDu"),  # a failure starts the success count again
        (2, 3, "---++---", "UUdDuUUd"),  # and it falls again after `fall` failures
        (1, 1, "-+-+", "dudu"),
        (3, 2, "--+++", "UdDDu"),
        (2, 3, "+++++", "UUUUU"),
        (2, 3, "-----", "UUdDD"),
    ],
)
def test_rise_and_fall(rise: int, fall: int, outcomes: str, expected: str) -> None:
    assert run(confirmed(rise, fall), outcomes) == expected


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ("-", "d"),  # unconfirmed at start: the first failure takes it DOWN (as HAProxy)
        ("+---", "UUUd"),  # once a check passed, it takes `fall` failures
        ("-++", "dDu"),
    ],
)
def test_start_is_up_but_unconfirmed(outcomes: str, expected: str) -> None:
    state = HealthState(rise=2, fall=3)
    assert state.up
    assert state.failures == 2
    assert run(state, outcomes) == expected


def test_start_down() -> None:
    state = HealthState(rise=2, fall=3, up=False)
    assert (state.up, state.successes, state.failures) == (False, 0, 0)
    assert run(state, "++") == "Du"


def test_counters_and_transition_reason() -> None:
    state = confirmed(rise=2, fall=2)
    assert state.record(False, "Layer4 timeout") is None
    assert (state.successes, state.failures) == (0, 1)
    assert state.record(False, "Layer7 wrong status") == Transition(
        up=False, reason="Layer7 wrong status"
    )
    assert state.record(True, "Layer7 check passed") is None
    assert (state.successes, state.failures) == (1, 0)
    transition = state.record(True, "Layer7 check passed")
    assert transition is not None
    assert (transition.up, transition.state, transition.reason) == (
        True,
        "UP",
        "Layer7 check passed",
    )
    assert Transition(up=False, reason="x").state == "DOWN"
    assert "UP" in repr(state)
    assert "successes=2/2" in repr(state)


@pytest.mark.parametrize(("rise", "fall"), [(0, 1), (1, 0)])
def test_rise_and_fall_must_be_positive(rise: int, fall: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HealthState(rise=rise, fall=fall)


# -- intervals --------------------------------------------------------------------------------

FULL = HealthCheck(interval=2.0, fast_interval=0.5, down_interval=10.0, fall=3, rise=2)
PLAIN = HealthCheck(interval=2.0, fall=3, rise=2)


@pytest.mark.parametrize(
    ("start_up", "outcomes", "phase", "full", "plain"),
    [
        (True, "", "UP, unconfirmed at start", 0.5, 2.0),
        (True, "+", "UP, settled", 2.0, 2.0),
        (True, "+-", "UP, going DOWN", 0.5, 2.0),
        (True, "+--", "UP, going DOWN", 0.5, 2.0),
        (True, "+---", "DOWN, settled", 10.0, 2.0),
        (True, "+---+", "DOWN, coming UP", 0.5, 2.0),
        (True, "+---+-", "DOWN, settled again", 10.0, 2.0),
        (True, "+---++", "UP again, settled", 2.0, 2.0),
        (False, "", "DOWN from the start", 10.0, 2.0),
    ],
)
def test_next_interval(
    start_up: bool, outcomes: str, phase: str, full: float, plain: float
) -> None:
    state = HealthState(rise=2, fall=3, up=start_up)
    for outcome in outcomes:
        state.record(outcome == "+", "")
    assert state.next_interval(FULL) == full, phase
    assert state.next_interval(PLAIN) == plain, phase


# -- judging an HTTP answer -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "status", "body", "reason", "info"),
    [
        (HealthCheck(type="http"), 200, b"", Reason.L7_OK, None),
        (HealthCheck(type="http"), 399, b"", Reason.L7_OK, None),
        (HealthCheck(type="http"), 500, b"", Reason.L7_STATUS, None),
        (HealthCheck(type="http"), 404, b"", Reason.L7_STATUS, None),
        (
            HealthCheck(type="http", expect_status=((200, 200), (302, 302))),
            302,
            b"",
            Reason.L7_OK,
            None,
        ),
        (
            HealthCheck(type="http", expect_status=((200, 200), (302, 302))),
            301,
            b"",
            Reason.L7_STATUS,
            None,
        ),
        (HealthCheck(type="http", expect_body="ok"), 200, b"all ok", Reason.L7_OK, None),
        (
            HealthCheck(type="http", expect_body="ok"),
            200,
            b"failing",
            Reason.L7_RESPONSE,
            "body does not contain 'ok'",
        ),
        # the status is judged first
        (HealthCheck(type="http", expect_body="ok"), 503, b"ok", Reason.L7_STATUS, None),
        (
            HealthCheck(type="http", expect_body="d\u00e9j\u00e0"),
            200,
            "d\u00e9j\u00e0 vu".encode(),
            Reason.L7_OK,
            None,
        ),
        (
            HealthCheck(type="http", expect_body_regex=r"^up \d+$"),
            200,
            b"up 42",
            Reason.L7_OK,
            None,
        ),
        (
            HealthCheck(type="http", expect_body_regex=r"^up \d+$"),
            200,
            b"down 42",
            Reason.L7_RESPONSE,
            "body does not match '^up \\\\d+$'",
        ),
        # invalid UTF-8 is replaced, not an error
        (
            HealthCheck(type="http", expect_body_regex="alive"),
            200,
            b"\xff alive",
            Reason.L7_OK,
            None,
        ),
        (
            HealthCheck(type="http", expect_body="a", expect_body_regex="b"),
            200,
            b"a",
            Reason.L7_RESPONSE,
            "body does not match 'b'",
        ),
    ],
)
def test_judge_http_response(
    check: HealthCheck, status: int, body: bytes, reason: Reason, info: str | None
) -> None:
    assert judge_http_response(check, status, body) == (reason, info)
    if check.expect_body_regex is not None:
        pattern = re.compile(check.expect_body_regex)
        assert judge_http_response(check, status, body, pattern=pattern) == (reason, info)


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (HealthCheck(type="http"), False),
        (HealthCheck(type="http", expect_body=""), True),
        (HealthCheck(type="http", expect_body_regex="x"), True),
    ],
)
def test_wants_body(check: HealthCheck, expected: bool) -> None:
    assert wants_body(check) is expected


# -- results and log lines --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "ok"),
    [
        (Reason.L4_OK, True),
        (Reason.L6_OK, True),
        (Reason.L7_OK, True),
        (Reason.L4_CONNECTION, False),
        (Reason.L4_TIMEOUT, False),
        (Reason.L6_INVALID, False),
        (Reason.L6_TIMEOUT, False),
        (Reason.L7_STATUS, False),
        (Reason.L7_INVALID, False),
        (Reason.L7_RESPONSE, False),
        (Reason.L7_TIMEOUT, False),
        (Reason.INTERNAL, False),
    ],
)
def test_result_ok(reason: Reason, ok: bool) -> None:
    assert CheckResult(reason=reason).ok is ok


DOWN = Transition(up=False, reason="")
UP = Transition(up=True, reason="")


@pytest.mark.parametrize(
    ("transition", "result", "active", "backup", "expected"),
    [
        (
            DOWN,
            CheckResult(reason=Reason.L7_STATUS, code=500, duration_ms=3),
            1,
            0,
            "server wordpress/wp2 is DOWN, reason: Layer7 wrong status, code: 500, "
            "check duration: 3ms. 1 active and 0 backup servers left.",
        ),
        (
            UP,
            CheckResult(reason=Reason.L7_OK, code=200, duration_ms=2),
            2,
            0,
            "server wordpress/wp2 is UP, reason: Layer7 check passed, code: 200, "
            "check duration: 2ms. 2 active and 0 backup servers online.",
        ),
        (
            DOWN,
            CheckResult(reason=Reason.L4_CONNECTION, info="Connection refused", duration_ms=0),
            0,
            1,
            'server wordpress/wp2 is DOWN, reason: Layer4 connection problem, info: "Connection '
            'refused", check duration: 0ms. 0 active and 1 backup servers left. Running on backup.',
        ),
        (
            DOWN,
            CheckResult(reason=Reason.L4_TIMEOUT, duration_ms=1001),
            0,
            0,
            "server wordpress/wp2 is DOWN, reason: Layer4 timeout, check duration: 1001ms. "
            "0 active and 0 backup servers left.",
        ),
        (
            DOWN,
            CheckResult(
                reason=Reason.L6_INVALID,
                info="certificate verify failed: unable to get local issuer certificate",
                duration_ms=4,
            ),
            1,
            0,
            'server wordpress/wp2 is DOWN, reason: Layer6 invalid response, info: "certificate '
            'verify failed: unable to get local issuer certificate", check duration: 4ms. '
            "1 active and 0 backup servers left.",
        ),
        (
            DOWN,
            CheckResult(reason=Reason.L6_TIMEOUT, duration_ms=1000),
            1,
            0,
            "server wordpress/wp2 is DOWN, reason: Layer6 timeout, check duration: 1000ms. "
            "1 active and 0 backup servers left.",
        ),
        (
            DOWN,
            CheckResult(reason=Reason.L7_INVALID, info="bad status line", duration_ms=1),
            1,
            0,
            'server wordpress/wp2 is DOWN, reason: Layer7 invalid response, info: "bad status '
            'line", check duration: 1ms. 1 active and 0 backup servers left.',
        ),
        (
            DOWN,
            CheckResult(
                reason=Reason.L7_RESPONSE,
                code=200,
                info="body does not contain 'ok'",
                duration_ms=2,
            ),
            1,
            0,
            "server wordpress/wp2 is DOWN, reason: Layer7 response error, code: 200, info: "
            "\"body does not contain 'ok'\", check duration: 2ms. 1 active and 0 backup servers "
            "left.",
        ),
        (
            DOWN,
            CheckResult(reason=Reason.L7_TIMEOUT, duration_ms=1000),
            1,
            0,
            "server wordpress/wp2 is DOWN, reason: Layer7 timeout, check duration: 1000ms. "
            "1 active and 0 backup servers left.",
        ),
        (
            UP,
            CheckResult(reason=Reason.L4_OK, duration_ms=0),
            1,
            2,
            "server wordpress/wp2 is UP, reason: Layer4 check passed, check duration: 0ms. "
            "1 active and 2 backup servers online.",
        ),
        (
            UP,
            CheckResult(reason=Reason.L6_OK, duration_ms=5),
            0,
            1,
            "server wordpress/wp2 is UP, reason: Layer6 check passed, check duration: 5ms. "
            "0 active and 1 backup servers online. Running on backup.",
        ),
    ],
)
def test_transition_message(
    transition: Transition, result: CheckResult, active: int, backup: int, expected: str
) -> None:
    assert transition_message("wordpress", "wp2", transition, result, active, backup) == expected


def test_no_server_message() -> None:
    assert no_server_message("wordpress") == "backend wordpress has no server available!"


def test_core_imports_no_io() -> None:
    """Like tests/core/test_sans_io.py: importing the module pulls in no trio, socket or ssl."""
    code = (
        "import importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('trilb')\n"
        "package = types.ModuleType('trilb')\n"
        "package.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['trilb'] = package\n"  # skip trilb/__init__, which imports the shell
        "import trilb.core.health\n"
        "print(sorted(m for m in ('trio', 'socket', 'ssl', 'asyncio') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
