"""The admin socket's command parser and answer layout (sans-IO): the grammar as a table."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from trilb.core.admin_commands import (
    COMMANDS,
    MAX_LINE,
    STAT_COLUMNS,
    Command,
    CommandError,
    DisableHealth,
    EnableHealth,
    GetWeight,
    Help,
    Quit,
    Reload,
    ServerRef,
    SetState,
    SetWeight,
    ShowInfo,
    ShowServersState,
    ShowSessions,
    ShowStat,
    StatRow,
    answer_lines,
    check_code,
    error_answer,
    format_duration,
    help_lines,
    is_error_answer,
    parse_command,
    render_csv,
    render_json,
    render_table,
)
from trilb.core.health import CheckResult, Reason

WEB_S1 = ServerRef("web", "s1")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"help\n", Help()),
        (b"help", Help()),
        (b"help\r\n", Help()),
        (b"  help  \n", Help()),
        (b"quit\n", Quit()),
        (b"show info\n", ShowInfo()),
        (b"show\tinfo\n", ShowInfo()),
        (b"show stat\n", ShowStat("csv")),
        (b"show stat csv\n", ShowStat("csv")),
        (b"show stat json\n", ShowStat("json")),
        (b"show servers state\n", ShowServersState(None)),
        (b"show servers state web\n", ShowServersState("web")),
        (b"show sessions\n", ShowSessions()),
        (b"show sess\n", ShowSessions()),
        (b"set server web/s1 state ready\n", SetState(WEB_S1, "ready")),
        (b"set server web/s1 state drain\n", SetState(WEB_S1, "drain")),
        (b"set server web/s1 state maint\n", SetState(WEB_S1, "maint")),
        (b"set server web/s1 weight 0\n", SetWeight(WEB_S1, 0)),
        (b"set server web/s1 weight 256\n", SetWeight(WEB_S1, 256)),
        (b"set server web/s1 weight 050\n", SetWeight(WEB_S1, 50)),
        (b"set server web/s1 weight 50%\n", SetWeight(WEB_S1, 50, percent=True)),
        (b"set server web/s1 weight 0%\n", SetWeight(WEB_S1, 0, percent=True)),
        (b"set server web/s1 weight 400%\n", SetWeight(WEB_S1, 400, percent=True)),
        (b"get weight web/s1\n", GetWeight(WEB_S1)),
        (b"disable server web/s1\n", SetState(WEB_S1, "maint")),
        (b"enable server web/s1\n", SetState(WEB_S1, "ready")),
        (b"disable health web/s1\n", DisableHealth(WEB_S1)),
        (b"enable health web/s1\n", EnableHealth(WEB_S1)),
        (b"reload\n", Reload()),
        # names are the config's: anything but "/" and spaces
        (
            b"set server wp-admin/wp_1.x state drain\n",
            SetState(ServerRef("wp-admin", "wp_1.x"), "drain"),
        ),
        ("enable health bäck/sérver\n".encode(), EnableHealth(ServerRef("bäck", "sérver"))),
    ],
)
def test_commands(line: bytes, expected: Command) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize("line", [b"", b"\n", b"\r\n", b"   \n", b"\t\n"])
def test_blank_lines_are_no_command(line: bytes) -> None:
    assert parse_command(line) is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"foo\n", "Unknown command: foo. Try 'help'."),
        (b"show\n", "Unknown command: show. Try 'help'."),
        (b"show foo bar\n", "Unknown command: show foo bar. Try 'help'."),
        (b"SHOW INFO\n", "Unknown command: SHOW INFO. Try 'help'."),
        (b"restart\n", "Unknown command: restart. Try 'help'."),
        (b"reload now\n", "Unexpected argument 'now'. Try 'help'."),
        (b"set weight web/s1 50\n", "Unknown command: set weight web/s1 50. Try 'help'."),
        (b"help me\n", "Unexpected argument 'me'. Try 'help'."),
        (b"show info now\n", "Unexpected argument 'now'. Try 'help'."),
        (b"show stat xml\n", "Usage: show stat [json]."),
        (b"show stat json csv\n", "Usage: show stat [json]."),
        (b"show servers state a b\n", "Usage: show servers state [BACKEND]."),
        (
            b"set server\n",
            "Usage: set server BACKEND/SERVER state ready|drain|maint"
            " | set server BACKEND/SERVER weight N|N%.",
        ),
        (b"set server web/s1\n", "Usage: set server"),
        (b"set server web/s1 state\n", "Usage: set server"),
        (b"set server web/s1 state drain now\n", "Usage: set server"),
        (b"set server web/s1 colour red\n", "Usage: set server"),
        (b"set server web state drain\n", "Expected BACKEND/SERVER, got 'web'."),
        (b"set server /s1 state drain\n", "Expected BACKEND/SERVER, got '/s1'."),
        (b"set server web/ state drain\n", "Expected BACKEND/SERVER, got 'web/'."),
        (b"set server a/b/c state drain\n", "Expected BACKEND/SERVER, got 'a/b/c'."),
        (
            b"set server web/s1 state up\n",
            "Unknown state 'up': expected ready, drain or maint.",
        ),
        (b"set server web/s1 state DRAIN\n", "Unknown state 'DRAIN'"),
        (b"set server web/s1 weight 257\n", "Weight must be 0-256, got 257."),
        (b"set server web/s1 weight 9999\n", "Weight must be 0-256, got 9999."),
        (b"set server web/s1 weight -1\n", "Weight must be an integer 0-256 or a percentage"),
        (b"set server web/s1 weight 1.5\n", "got '1.5'"),
        (b"set server web/s1 weight heavy\n", "got 'heavy'"),
        (b"set server web/s1 weight %\n", "got '%'"),
        (b"set server web/s1 weight 50%%\n", "got '50%%'"),
        (b"set server web/s1 weight 12345\n", "got '12345'"),
        (b"get weight\n", "Usage: get weight BACKEND/SERVER."),
        (b"get weight web/s1 web/s2\n", "Usage: get weight BACKEND/SERVER."),
        (b"disable health\n", "Usage: disable health BACKEND/SERVER."),
        (b"enable health web\n", "Expected BACKEND/SERVER, got 'web'."),
        (b"disable server\n", "Usage: enable|disable server BACKEND/SERVER."),
        (b"quit now\n", "Unexpected argument 'now'."),
        # input that is not a command line at all
        (b"\xff\xfe garbage\n", "Not a command: the line is not UTF-8 text."),
        (b"show\x00info\n", "Not a command: the line has unprintable characters."),
        (b"\x1b[A\n", "Not a command: the line has unprintable characters."),
        (b"show info\rshow stat\n", "Not a command: the line has unprintable characters."),
        (b"x" * (MAX_LINE + 1), f"Line too long (more than {MAX_LINE} bytes)."),
    ],
)
def test_errors(line: bytes, message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(line)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_long_words_are_shortened_in_messages() -> None:
    with pytest.raises(CommandError) as info:
        parse_command(b"x" * 1000 + b"\n")
    assert len(str(info.value)) < 100
    assert str(info.value).endswith("... Try 'help'.")


def test_a_line_of_exactly_max_line_is_accepted() -> None:
    line = b"help" + b" " * (MAX_LINE - 5) + b"\n"
    assert len(line) == MAX_LINE
    assert parse_command(line) == Help()


@pytest.mark.parametrize(
    ("value", "percent", "configured", "expected"),
    [
        (50, False, 100, 50),
        (0, False, 100, 0),
        (256, False, 10, 256),  # absolute: the configured weight does not matter
        (50, True, 100, 50),
        (50, True, 10, 5),
        (50, True, 3, 2),  # rounded to the nearest (1.5 -> 2)
        (33, True, 100, 33),
        (0, True, 100, 0),
        (100, True, 77, 77),
        (200, True, 128, 256),
        (256, True, 100, 256),
    ],
)
def test_weight_resolution(value: int, percent: bool, configured: int, expected: int) -> None:
    assert SetWeight(WEB_S1, value, percent).resolve(configured) == expected


def test_a_percentage_beyond_the_largest_weight_is_an_error() -> None:
    with pytest.raises(CommandError, match=r"Weight 300 \(150% of 200\) is out of range 0-256"):
        SetWeight(WEB_S1, 150, percent=True).resolve(200)


def test_help_lists_every_command_once_and_no_aliases() -> None:
    lines = help_lines()
    assert lines[0] == "Commands:"
    text = "\n".join(lines)
    for spec in COMMANDS:
        if spec.help:
            assert text.count(f"  {spec.usage} ") == 1, spec.usage
    assert "show sess " not in text  # the alias
    assert all(line.strip() for line in lines)
    # every listed usage parses (with names filled in)
    for spec in COMMANDS:
        example = spec.usage.replace("BACKEND/SERVER", "b/s").replace("[json]", "json")
        example = example.replace("[BACKEND]", "b").replace("ready|drain|maint", "drain")
        example = example.replace("N|N%", "5%")
        assert parse_command(example.encode()) is not None, example


def test_answers_end_with_one_empty_line_and_have_none_inside() -> None:
    assert answer_lines([]) == b"\n"
    assert answer_lines(["a", "", "  ", "b"]) == b"a\nb\n\n"
    assert answer_lines(["two\nlines", "cr\rhere"]) == b"two lines\ncr here\n\n"
    assert answer_lines(["naïve"]) == "naïve\n\n".encode()


def test_error_answers() -> None:
    answer = error_answer("No such server: web/x.")
    assert answer == b"Error: No such server: web/x.\n\n"
    assert is_error_answer(answer.decode()) == "No such server: web/x."
    assert is_error_answer("Error: partial") == "partial"  # (closed before the empty line)
    assert is_error_answer("Server web/s1 set to drain\n\n") is None
    assert is_error_answer("Error: one\nsecond line\n\n") is None
    assert is_error_answer("\n") is None


def test_render_csv_is_haproxy_layout_and_parses() -> None:
    rows: list[StatRow] = [
        {"pxname": "web", "svname": "FRONTEND", "scur": 3, "status": "OPEN"},
        {"pxname": "app", "svname": "s1", "last_chk": 'Layer7 wrong status, info: "x"'},
    ]
    lines = render_csv(rows)
    assert lines[0] == "# " + ",".join(STAT_COLUMNS)
    assert lines[0].startswith("# pxname,svname,qcur,scur,smax,stot,bin,bout,")
    parsed = list(csv.DictReader([lines[0][2:], *lines[1:]]))
    assert len(parsed) == 2
    assert parsed[0]["scur"] == "3"
    assert parsed[0]["qcur"] == ""  # missing: an empty field
    assert parsed[1]["last_chk"] == 'Layer7 wrong status, info: "x"'
    assert set(parsed[0]) == set(STAT_COLUMNS)


def test_render_json_has_every_column() -> None:
    (line,) = render_json([{"pxname": "web", "scur": 3}])
    (row,) = json.loads(line)
    assert list(row) == list(STAT_COLUMNS)
    assert row["scur"] == 3
    assert row["qcur"] is None


def test_render_table() -> None:
    lines = render_table(["a", "b", "c"], [("x y", None, 3), ("", "z", 0)])
    assert lines == ["# a b c", "x_y - 3", "- z 0"]


def test_haproxy_stat_columns_requested_by_the_issue() -> None:
    wanted = [
        *("scur", "smax", "stot", "bin", "bout", "ereq", "econ", "eresp", "status", "weight"),
        *("act", "bck", "chkfail", "downtime", "qcur", "rate"),
        *("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx"),
    ]
    assert set(wanted) <= set(STAT_COLUMNS)
    assert STAT_COLUMNS[:2] == ("pxname", "svname")


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (Reason.L4_OK, "L4OK"),
        (Reason.L4_CONNECTION, "L4CON"),
        (Reason.L4_TIMEOUT, "L4TOUT"),
        (Reason.L6_OK, "L6OK"),
        (Reason.L6_INVALID, "L6RSP"),
        (Reason.L6_TIMEOUT, "L6TOUT"),
        (Reason.L7_OK, "L7OK"),
        (Reason.L7_STATUS, "L7STS"),
        (Reason.L7_INVALID, "L7RSP"),
        (Reason.L7_RESPONSE, "L7RSP"),
        (Reason.L7_TIMEOUT, "L7TOUT"),
        (Reason.INTERNAL, "SOCKERR"),
    ],
)
def test_check_codes(reason: Reason, code: str) -> None:
    status = CheckResult(reason=reason, code=500, info="x", duration_ms=3).describe()
    assert check_code(status) == code


def test_no_check_code_before_any_check() -> None:
    assert check_code("") is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0d 0h00m00s"),
        (62.9, "0d 0h01m02s"),
        (3600, "0d 1h00m00s"),
        (2 * 86400 + 3 * 3600 + 4 * 60 + 5, "2d 3h04m05s"),
        (-1, "0d 0h00m00s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_the_module_imports_no_io() -> None:
    code = (
        "import importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('trilb')\n"
        "package = types.ModuleType('trilb')\n"
        "package.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['trilb'] = package\n"
        "import trilb.core.admin_commands\n"
        "print(sorted(m for m in ('trio', 'socket', 'ssl', 'asyncio') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
