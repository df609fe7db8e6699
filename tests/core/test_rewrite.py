"""trilb.core.rewrite: header rules, variables and the request id (sans-IO, table-driven)."""

from __future__ import annotations

import pytest

from trilb.config.routes import HeaderRule
from trilb.core.rewrite import (
    MAX_REQUEST_ID,
    Variables,
    apply_header_rules,
    compile_header_rules,
    take_request_id,
    unique_id,
    valid_request_id,
    variables_for,
)
from trilb.core.routing import RequestView
from trilb.errors import ConfigError

Headers = list[tuple[bytes, bytes]]

BASE: Headers = [
    (b"Host", b"example.com"),
    (b"X-A", b"1"),
    (b"Accept", b"*/*"),
    (b"x-a", b"2"),
]
VARIABLES = Variables(src="10.0.0.7", ssl_fc=True, req_host=b"example.com:8443", unique_id=b"abc")


def rule(action: str, name: str, *args: str) -> HeaderRule:
    """``rule("set", name, value)``, ``rule("replace", name, regex, replacement)``."""
    if action == "replace":
        regex, replacement = args
        return HeaderRule(action="replace", name=name, regex=regex, replacement=replacement)
    return HeaderRule(action=action, name=name, value=args[0] if args else "")  # type: ignore[arg-type]


def apply(rules: list[HeaderRule], headers: Headers, variables: Variables = VARIABLES) -> Headers:
    return apply_header_rules(compile_header_rules(rules, "r"), headers, variables)


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([], BASE),
        (
            [rule("set", "X-A", "new")],
            [(b"Host", b"example.com"), (b"Accept", b"*/*"), (b"X-A", b"new")],
        ),
        ([rule("set", "X-New", "v")], [*BASE, (b"X-New", b"v")]),
        ([rule("add", "x-a", "3")], [*BASE, (b"x-a", b"3")]),
        ([rule("delete", "X-A")], [(b"Host", b"example.com"), (b"Accept", b"*/*")]),
        ([rule("delete", "X-Missing")], BASE),
        (
            [rule("replace", "X-A", "^(\\d)$", "n\\1n")],
            [(b"Host", b"example.com"), (b"X-A", b"n1n"), (b"Accept", b"*/*"), (b"x-a", b"n2n")],
        ),
        (
            [rule("replace", "Host", "^(?P<name>[^:]+)\\.com$", "\\g<name>.org")],
            [(b"Host", b"example.org"), *BASE[1:]],
        ),
        (  # every match in the value, like re.sub
            [rule("replace", "Accept", "\\*", "x")],
            [*BASE[:2], (b"Accept", b"x/x"), BASE[3]],
        ),
        (  # \g<0> is the whole match, \\ a backslash
            [rule("replace", "Accept", "^.*$", "[\\g<0>]\\\\")],
            [*BASE[:2], (b"Accept", b"[*/*]\\"), BASE[3]],
        ),
        (  # a group that did not take part is empty, as in re.sub
            [rule("replace", "Host", "^(x)?(example)", "\\1\\2")],
            BASE,
        ),
        (  # no match: unchanged
            [rule("replace", "Host", "^nomatch$", "x")],
            BASE,
        ),
        (  # the result loses leading and trailing whitespace (h11 would refuse it)
            [rule("replace", "Host", "example.com", " x ")],
            [(b"Host", b"x"), *BASE[1:]],
        ),
        (  # in order: later rules see what earlier ones did
            [rule("delete", "X-A"), rule("add", "X-A", "9"), rule("set", "Accept", "a/b")],
            [(b"Host", b"example.com"), (b"X-A", b"9"), (b"Accept", b"a/b")],
        ),
    ],
)
def test_actions(rules: list[HeaderRule], expected: Headers) -> None:
    before = list(BASE)
    assert apply(rules, BASE) == expected
    assert before == BASE  # the input list is not changed


@pytest.mark.parametrize(
    ("value", "variables", "expected"),
    [
        ("%[src]", VARIABLES, b"10.0.0.7"),
        ("%[ssl_fc]", VARIABLES, b"1"),
        ("%[ssl_fc]", Variables(), b"0"),
        ("%[req.host]", VARIABLES, b"example.com:8443"),
        ("%[unique_id]", VARIABLES, b"abc"),
        ("id=%[unique_id]; from %[src] tls=%[ssl_fc]", VARIABLES, b"id=abc; from 10.0.0.7 tls=1"),
        ("100%", VARIABLES, b"100%"),
        ("%%[src] %%", VARIABLES, b"%[src] %"),
        ("  padded  ", VARIABLES, b"padded"),
        ("", VARIABLES, b""),
        ("caf\u00e9", VARIABLES, b"caf\xe9"),
        ("a\tb", VARIABLES, b"a\tb"),
        ("%[req.host]", Variables(), b""),
    ],
)
def test_variables(value: str, variables: Variables, expected: bytes) -> None:
    assert apply([rule("add", "X-V", value)], [], variables) == [(b"X-V", expected)]


def test_variables_for_a_request() -> None:
    view = RequestView(
        method=b"GET",
        target=b"http://Abs.example:81/x",
        headers=[(b"Host", b"other")],
        client_ip="2001:db8::1",
    )
    assert variables_for(view, tls=False, unique_id=b"id") == Variables(
        src="2001:db8::1", ssl_fc=False, req_host=b"Abs.example:81", unique_id=b"id"
    )
    no_host = RequestView(method=b"GET", target=b"/", client_ip="10.0.0.1")
    assert variables_for(no_host, tls=True).req_host == b""


ERROR_CASES: list[tuple[HeaderRule, list[tuple[str, str]]]] = [
    (
        rule("set", "X-A", "%[nope]"),
        [("r[1].set[1]", "has an unknown variable %[nope]; known: %[src], %[ssl_fc]")],
    ),
    (rule("add", "X-A", "%[scr]"), [("r[1].add[1]", "%[scr] (did you mean %[src]?)")]),
    (rule("add", "X-A", "a %[src"), [("r[1].add[1]", 'has a "%[" without its "]"')]),
    (
        rule("set", "X-A", "a\r\nSet-Cookie: x=1"),
        [("r[1].set[1]", "must not contain CR, LF, NUL or other control characters")],
    ),
    (rule("set", "X-A", "a\nb"), [("r[1].set[1]", "must not contain CR, LF")]),
    (rule("set", "X-A", "a\x00b"), [("r[1].set[1]", "must not contain CR, LF, NUL")]),
    (rule("set", "X-A", "a\x7fb"), [("r[1].set[1]", "control characters")]),
    (rule("set", "X-A", "\u20ac"), [("r[1].set[1]", "must be made of latin-1 characters")]),
    (
        rule("set", "Bad Name", "x"),
        [("r[1].set[0]", 'must be a header name like "X-Request-ID", got "Bad Name"')],
    ),
    (rule("add", "", "x"), [("r[1].add[0]", "must be a header name")]),
    (rule("delete", "X:A"), [("r[1].delete", "must be a header name")]),
    (rule("delete", "content-length"), [("r[1].delete", "frames the body")]),
    (rule("set", "Transfer-Encoding", "chunked"), [("r[1].set[0]", "frames the body")]),
    (rule("replace", "Content-Length", "1", "2"), [("r[1].replace[0]", "frames the body")]),
    (rule("replace", "X-A", "(", "x"), [("r[1].replace[1]", "not a valid regular expression")]),
    (
        rule("replace", "X-A", "(a)", "\\2"),
        [("r[1].replace[2]", "refers to group 2, but the regex has 1")],
    ),
    (
        rule("replace", "X-A", "(a)", "\\g<n>"),
        [("r[1].replace[2]", "refers to group <n>, which the regex does not name")],
    ),
    (rule("replace", "X-A", "a", "\\n"), [("r[1].replace[2]", "has an unsupported escape \\n")]),
    (rule("replace", "X-A", "a", "\\0"), [("r[1].replace[2]", "unsupported escape \\0")]),
    (rule("replace", "X-A", "a", "x\\"), [("r[1].replace[2]", "unsupported escape \\ in")]),
    (rule("replace", "X-A", "a", "x\r\n"), [("r[1].replace[2]", "must not contain CR, LF")]),
    (rule("replace", "X-A", "(a)", "\\1\n"), [("r[1].replace[2]", "must not contain CR, LF")]),
    (rule("move", "X-A"), [("r[1]", 'must be one of set, add, delete or replace, got "move"')]),
    (
        rule("set", "Bad Name", "%[nope]"),
        [("r[1].set[0]", "must be a header name"), ("r[1].set[1]", "unknown variable")],
    ),
]


@pytest.mark.parametrize(("bad", "expected"), ERROR_CASES)
def test_compile_errors(bad: HeaderRule, expected: list[tuple[str, str]]) -> None:
    with pytest.raises(ConfigError) as raised:
        compile_header_rules([rule("set", "X-Fine", "ok"), bad], "r")
    problems = raised.value.problems
    assert [p.key_path for p in problems] == [path for path, _ in expected]
    for problem, (_, message) in zip(problems, expected, strict=True):
        assert message in problem.message


def test_compile_reports_every_rule_at_once() -> None:
    rules = [rule("set", "X-A", "%[x]"), rule("delete", "A B"), rule("replace", "X", "[", "")]
    with pytest.raises(ConfigError) as raised:
        compile_header_rules(rules, "frontends.web.request_headers")
    assert [p.key_path for p in raised.value.problems] == [
        "frontends.web.request_headers[0].set[1]",
        "frontends.web.request_headers[1].delete",
        "frontends.web.request_headers[2].replace[1]",
    ]


def test_compiled_rule_keeps_its_config() -> None:
    configured = rule("set", "X-Forwarded-Host", "%[req.host]")
    [compiled] = compile_header_rules([configured], "r")
    assert compiled.rule is configured
    assert (compiled.name, compiled.lower) == (b"X-Forwarded-Host", b"x-forwarded-host")


def test_unique_id() -> None:
    first, second = unique_id(), unique_id()
    assert first != second
    assert len(first) == 32
    assert int(first, 16) >= 0
    assert valid_request_id(first)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (b"0f8fad5b-d9cb-469f-a165-70867728950e", True),
        (b"01ARZ3NDEKTSV4RRFFQ69G5FAV", True),
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
        (b"YWJj+/==", True),
        (b"a" * MAX_REQUEST_ID, True),
        (b"a" * (MAX_REQUEST_ID + 1), False),
        (b"", False),
        (b"has space", False),
        (b'quote"', False),
        (b"semi;colon", False),
        (b"comma,", False),
        (b"new\nline", False),
        (b"\x80", False),
    ],
)
def test_valid_request_id(value: bytes, valid: bool) -> None:
    assert valid_request_id(value) is valid


@pytest.mark.parametrize(
    ("headers", "trust", "kept"),
    [
        ([(b"X-Request-ID", b"client-id")], True, b"client-id"),
        ([(b"x-request-id", b"client-id"), (b"X-Request-Id", b"second")], True, b"client-id"),
        ([(b"X-Request-ID", b"client-id")], False, None),
        ([(b"X-Request-ID", b"bad id")], True, None),
        ([], True, None),
    ],
)
def test_take_request_id(headers: Headers, trust: bool, kept: bytes | None) -> None:
    request_id, out = take_request_id([(b"Host", b"h"), *headers], trust=trust)
    if kept is not None:
        assert request_id == kept
    else:
        assert len(request_id) == 32
        assert valid_request_id(request_id)
    assert out == [(b"Host", b"h"), (b"X-Request-ID", request_id)]


def test_take_request_id_other_header_name() -> None:
    request_id, out = take_request_id(
        [(b"x-correlation-id", b"abc")], name=b"X-Correlation-ID", trust=True
    )
    assert (request_id, out) == (b"abc", [(b"X-Correlation-ID", b"abc")])
