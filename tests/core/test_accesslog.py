"""Access log formatting: HAProxy's httplog line, the JSON form and templates (pure,
deterministic)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from trilb.core.accesslog import (
    HAPROXY_TEMPLATE,
    TEMPLATE_VARIABLES,
    AccessLogFormatter,
    RequestLog,
    TemplateError,
    millis,
)

#: 2023-11-14 22:13:20.125 UTC; .125 is exact in binary, so the milliseconds are no rounding guess
EPOCH = 1_700_000_000.125


@pytest.fixture
def tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the test in a fixed time zone two hours east of UTC (a POSIX TZ: no tzdata needed)."""
    monkeypatch.setenv("TZ", "XYZ-2")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def full_record(**changes: Any) -> RequestLog:
    record = RequestLog(
        client_ip="10.1.2.3",
        client_port=51234,
        accept_date=EPOCH,
        frontend="web",
        backend="app",
        server="s1",
        t_request=1,
        t_queue=0,
        t_connect=2,
        t_response=7,
        t_active=9,
        status=200,
        bytes_out=1536,
        bytes_in=80,
        termination="--",
        actconn=3,
        feconn=2,
        beconn=1,
        srv_conn=1,
        retries=0,
        srv_queue=0,
        backend_queue=0,
        request_line="GET /index.html?q=1 HTTP/1.1",
    )
    return attrs.evolve(record, **changes)


FULL_LINE = (
    "10.1.2.3:51234 [15/Nov/2023:00:13:20.125] web app/s1 1/0/2/7/9 200 1536 - - ---- "
    '3/2/1/1/0 0/0 "GET /index.html?q=1 HTTP/1.1"'
)


@pytest.mark.usefixtures("tz")
@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, FULL_LINE),
        # TLS: "~" after the frontend name, as HAProxy writes it
        ({"tls": True}, FULL_LINE.replace(" web ", " web~ ")),
        (
            {"status": 503, "termination": "SC", "retries": 2, "server": "s2"},
            FULL_LINE.replace(" app/s1 ", " app/s2 ")
            .replace(" 200 ", " 503 ")
            .replace(" ---- ", " SC-- ")
            .replace(" 3/2/1/1/0 ", " 3/2/1/1/2 "),
        ),
        ({"accept_date": EPOCH - 0.125}, FULL_LINE.replace(".125]", ".000]")),
        ({"accept_date": EPOCH + 0.75}, FULL_LINE.replace(".125]", ".875]")),
        # a request line with quotes and a backslash stays one parseable field
        (
            {"request_line": 'GET /a"b\\c HTTP/1.0'},
            FULL_LINE.replace('"GET /index.html?q=1 HTTP/1.1"', '"GET /a\\"b\\\\c HTTP/1.0"'),
        ),
    ],
)
def test_haproxy_line(changes: dict[str, Any], expected: str) -> None:
    assert AccessLogFormatter("haproxy").format(full_record(**changes)) == expected


@pytest.mark.usefixtures("tz")
def test_haproxy_line_of_a_request_that_never_reached_a_server() -> None:
    """The defaults of a fresh record: <NOSRV>, -1 timers and status, <BADREQ>."""
    record = RequestLog(client_ip="::1", client_port=4000, accept_date=EPOCH, frontend="web")
    assert AccessLogFormatter().format(record) == (
        "::1:4000 [15/Nov/2023:00:13:20.125] web -/<NOSRV> -1/-1/-1/-1/-1 -1 0 - - ---- "
        '0/0/0/0/0 0/0 "<BADREQ>"'
    )


@pytest.mark.usefixtures("tz")
def test_haproxy_line_partial_timers() -> None:
    record = full_record(t_connect=-1, t_response=-1, t_active=5000, status=503, termination="SC")
    line = AccessLogFormatter().format(record)
    assert " 1/0/-1/-1/5000 503 1536 - - SC-- " in line


def test_date_uses_the_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    dates = {}
    try:
        for zone in ("UTC0", "XYZ-2", "ABC+5"):
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            line = AccessLogFormatter().format(full_record())
            match = re.search(r"\[([^\]]+)\]", line)
            assert match is not None
            dates[zone] = match.group(1)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert dates == {
        "UTC0": "14/Nov/2023:22:13:20.125",
        "XYZ-2": "15/Nov/2023:00:13:20.125",
        "ABC+5": "14/Nov/2023:17:13:20.125",
    }


@pytest.mark.usefixtures("tz")
def test_date_cache_follows_the_seconds() -> None:
    """One formatter, many records: the cached date text never leaks into another second."""
    formatter = AccessLogFormatter()
    seen = []
    for epoch in (EPOCH, EPOCH + 0.5, EPOCH + 1, EPOCH - 60, EPOCH + 86400):
        line = formatter.format(full_record(accept_date=epoch))
        match = re.search(r"\[([^\]]+)\]", line)
        assert match is not None
        seen.append(match.group(1))
    assert seen == [
        "15/Nov/2023:00:13:20.125",
        "15/Nov/2023:00:13:20.625",
        "15/Nov/2023:00:13:21.125",
        "15/Nov/2023:00:12:20.125",
        "16/Nov/2023:00:13:20.125",
    ]


#: the HAProxy line, field by field (what log tools expect)
HAPROXY_LINE = re.compile(
    r"^(?P<client>\S+):(?P<port>\d+) \[(?P<date>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\.\d{3})\] "
    r"(?P<frontend>\S+?)(?P<tls>~?) (?P<backend>\S+)/(?P<server>\S+) "
    r"(?P<tr>-?\d+)/(?P<tw>-?\d+)/(?P<tc>-?\d+)/(?P<trs>-?\d+)/(?P<ta>-?\d+) "
    r"(?P<status>-?\d+) (?P<bytes>\d+) - - (?P<term>\S\S)-- "
    r"(?P<act>\d+)/(?P<fe>\d+)/(?P<be>\d+)/(?P<srv>\d+)/(?P<retries>\d+) "
    r"(?P<srvq>\d+)/(?P<beq>\d+) (?P<request>\".*\")$"
)


@pytest.mark.parametrize("tls", [False, True])
def test_haproxy_line_matches_the_field_grammar_in_any_time_zone(tls: bool) -> None:
    match = HAPROXY_LINE.match(AccessLogFormatter().format(full_record(tls=tls)))
    assert match is not None
    assert match["tls"] == ("~" if tls else "")
    assert match["frontend"] == "web"
    assert json.loads(match["request"]) == "GET /index.html?q=1 HTTP/1.1"


# -- JSON ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("tz")
def test_json_has_every_field() -> None:
    record = full_record(tls=True, termination="SD")
    parsed = json.loads(AccessLogFormatter("json").format(record))
    expected = attrs.asdict(record)
    expected["accept_date"] = "15/Nov/2023:00:13:20.125"
    assert parsed == expected
    assert set(parsed) == {field.name for field in attrs.fields(RequestLog)}


@pytest.mark.usefixtures("tz")
def test_json_carries_the_same_values_as_the_haproxy_line() -> None:
    record = full_record(status=502, termination="SH", tls=True)
    line = AccessLogFormatter("haproxy").format(record)
    parsed = json.loads(AccessLogFormatter("json").format(record))
    match = HAPROXY_LINE.match(line)
    assert match is not None
    assert parsed["accept_date"] == match["date"]
    assert parsed["tls"] is True
    assert match["tls"] == "~"
    assert (parsed["backend"], parsed["server"]) == (match["backend"], match["server"])
    assert [parsed[k] for k in ("t_request", "t_queue", "t_connect", "t_response", "t_active")] == [
        int(match[k]) for k in ("tr", "tw", "tc", "trs", "ta")
    ]
    assert parsed["status"] == int(match["status"]) == 502
    assert parsed["bytes_out"] == int(match["bytes"])
    assert parsed["termination"] == match["term"] == "SH"
    assert parsed["request_line"] == json.loads(match["request"])


def test_json_is_one_line_even_with_odd_request_lines() -> None:
    record = full_record(request_line='GET /\u00e9"\n HTTP/1.1')
    text = AccessLogFormatter("json").format(record)
    assert "\n" not in text
    assert json.loads(text)["request_line"] == 'GET /\u00e9"\n HTTP/1.1'


@pytest.mark.parametrize("fmt", ["clf", "", "JSON", "HAProxy"])
def test_unknown_format(fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        AccessLogFormatter(fmt)


# -- millis -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (None, 1.0, -1),
        (1.0, None, -1),
        (None, None, -1),
        (1.0, 1.0, 0),
        (1.0, 1.5, 500),
        (10.0, 10.25, 250),
        (0.0, 0.0009765625, 0),  # under a millisecond: truncated, never rounded up
        (0.0, 2.0, 2000),
        (100.0, 3700.0, 3_600_000),
        (2.0, 1.0, 0),  # a clock that went backwards never gives a negative timer
    ],
)
def test_millis(start: float | None, end: float | None, expected: int) -> None:
    assert millis(start, end) == expected


# -- templates (HAProxy's log-format variables) ---------------------------------------------------


@pytest.mark.usefixtures("tz")
def test_haproxy_template_gives_the_haproxy_line() -> None:
    """HAProxy's own definition of ``option httplog`` as a template: the same line."""
    for record in (full_record(), full_record(tls=True, status=503, termination="SC")):
        templated = AccessLogFormatter(template=HAPROXY_TEMPLATE).format(record)
        assert templated == AccessLogFormatter("haproxy").format(record)


@pytest.mark.usefixtures("tz")
@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("%ci %cp %ST %Ta %r", "10.1.2.3 51234 200 9 GET /index.html?q=1 HTTP/1.1"),
        ("[%t] [%tr] %Ts", "[15/Nov/2023:00:13:20.125] [15/Nov/2023:00:13:20.125] 1700000000"),
        ("%f %ft %b %s", "web web app s1"),
        ("%TR/%Tw/%Tc/%Tr/%Ta", "1/0/2/7/9"),
        ("%B %U %CC %CS", "1536 80 - -"),
        ("%ts %tsc", "-- ----"),
        ("%ac/%fc/%bc/%sc/%rc %sq/%bq", "3/2/1/1/0 0/0"),
        ("%HM|%HU|%HP|%HQ|%HV", "GET|/index.html?q=1|/index.html|?q=1|HTTP/1.1"),
        ("%ID", "-"),
        ("%{+Q}r", '"GET /index.html?q=1 HTTP/1.1"'),
        ("%{+Q}ci:%{+E}s", '"10.1.2.3":s1'),
        ("%{+Q,+E}b", '"app"'),
        ("100%% of %ST", "100% of 200"),
        ("no variables", "no variables"),
        ("", ""),
        ('{"client":"%ci","status":%ST,"ms":%Ta}', '{"client":"10.1.2.3","status":200,"ms":9}'),
    ],
)
def test_template_variables(template: str, expected: str) -> None:
    assert AccessLogFormatter(template=template).format(full_record()) == expected


@pytest.mark.usefixtures("tz")
def test_template_values_that_vary() -> None:
    record = full_record(
        tls=True,
        request_id="abc-123",
        request_line='GET /a"b HTTP/1.0',
        server="<NOSRV>",
        t_connect=-1,
        termination="CD",
    )
    formatter = AccessLogFormatter(template="%ft %s %Tc %tsc %ID %{+Q}r %HP %HQ")
    assert formatter.format(record) == 'web~ <NOSRV> -1 CD-- abc-123 "GET /a\\"b HTTP/1.0" /a"b '
    bad = full_record(request_line="<BADREQ>")
    # (%HQ is empty without a query string, as in HAProxy)
    assert AccessLogFormatter(template="%HM|%HU|%HP|%HQ|%HV").format(bad) == "-|-|-||-"


def test_every_documented_variable_compiles() -> None:
    template = " ".join(f"%{name}" for name in TEMPLATE_VARIABLES)
    assert len(AccessLogFormatter(template=template).format(full_record()).split(" ")) >= len(
        TEMPLATE_VARIABLES
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("%ci %xyz", "unknown variable %xyz (at position 5)"),
        ("%cix", "unknown variable %cix"),
        ("%Tx", "unknown variable %Tx"),
        ("%hr", "unknown variable %hr"),
        ("50%", "a % must start a variable (at position 3); write %% for a percent sign"),
        ("% ST", "a % must start a variable (at position 1)"),
        ("%[src]", "sample expressions %[...] are not supported"),
        ("%{+X}r", "unknown flag '+X' for %r"),
        ("%{}r", "unknown flag '' for %r"),
        ("a\nb", "must be one line"),
    ],
)
def test_template_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        AccessLogFormatter(template=template)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_template_error_lists_the_known_variables() -> None:
    with pytest.raises(TemplateError, match="known: %ci %cp %t "):
        AccessLogFormatter(template="%nope")
