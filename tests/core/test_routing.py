"""trilb.core.routing: content switching, table-driven (sans-IO)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from trilb.config.routes import CookieMatch as C
from trilb.config.routes import HeaderMatch as H
from trilb.config.routes import Match, RedirectRule, Route
from trilb.config.routes import QueryMatch as Q
from trilb.core.routing import (
    CompiledRoutes,
    Decision,
    RequestView,
    compile_routes,
    redirect_location,
)
from trilb.errors import ConfigError

Headers = Sequence[tuple[bytes, bytes]]


def view(
    target: bytes = b"/",
    *,
    method: bytes = b"GET",
    host: bytes | None = b"www.example.com",
    headers: Headers = (),
    client_ip: str = "192.0.2.10",
    sni: str | None = None,
    client_cert: bool = False,
) -> RequestView:
    all_headers = [(b"Host", host)] if host is not None else []
    return RequestView(
        method=method,
        target=target,
        headers=[*all_headers, *headers],
        client_ip=client_ip,
        sni=sni,
        client_cert=client_cert,
    )


def hv(*headers: tuple[bytes, bytes]) -> RequestView:
    return view(headers=headers)


def matches(match: Match, request: RequestView) -> bool:
    routes = compile_routes([Route(name="r", match=match, backend="b")], "routes")
    return routes.select(request).route is not None


# ---- the view ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "host_header", "host", "port", "path", "query", "authority"),
    [
        (b"/a/b?c=1&d", b"Example.COM", "example.com", None, b"/a/b", b"c=1&d", b"Example.COM"),
        (b"/a", b"example.com:8080", "example.com", "8080", b"/a", None, b"example.com:8080"),
        (b"/a?", b"example.com.", "example.com", None, b"/a", b"", b"example.com."),
        (b"/", b"[2001:DB8::1]:8443", "[2001:db8::1]", "8443", b"/", None, b"[2001:DB8::1]:8443"),
        (b"/", b"[::1]", "[::1]", None, b"/", None, b"[::1]"),
        (b"/", b"[::1", "[::1", None, b"/", None, b"[::1"),  # broken: compared as it is
        (b"/", b"10.0.0.1:80", "10.0.0.1", "80", b"/", None, b"10.0.0.1:80"),
        (b"/", b"example.com:", "example.com", None, b"/", None, b"example.com:"),
        # absolute-form: its authority wins over the Host header (RFC 9112 section 3.2.2)
        (b"http://A.example:81/p?q", b"b.example", "a.example", "81", b"/p", b"q", b"A.example:81"),
        (
            b"https://user:pw@a.example/p",
            b"b.example",
            "a.example",
            None,
            b"/p",
            None,
            b"a.example",
        ),
        (b"http://a.example", None, "a.example", None, b"/", None, b"a.example"),
        (b"http://a.example?x=1", None, "a.example", None, b"/", b"x=1", b"a.example"),
        (b"*", b"example.com", "example.com", None, b"*", None, b"example.com"),
        (
            b"example.com:443",
            b"example.com:443",
            "example.com",
            "443",
            b"",
            None,
            b"example.com:443",
        ),
        (b"/", None, None, None, b"/", None, None),
        (b"/%2Fa%20b", b"x", "x", None, b"/%2Fa%20b", None, b"x"),  # never percent-decoded
    ],
)
def test_view_parts(
    target: bytes,
    host_header: bytes | None,
    host: str | None,
    port: str | None,
    path: bytes,
    query: bytes | None,
    authority: bytes | None,
) -> None:
    request = view(target, host=host_header)
    assert (request.host, request.port, request.path, request.query) == (host, port, path, query)
    assert request.authority == authority


def test_view_parses_once() -> None:
    request = view(b"/p?a=1", headers=[(b"Cookie", b"x=1")])
    assert request.cookies is request.cookies
    assert request.query_params is request.query_params
    assert request.header_map is request.header_map


def test_view_cookies_and_query_params() -> None:
    request = view(
        b"/?a=1&b&a=2&=x&c=%20",
        headers=[(b"Cookie", b"s=1; t = 2;bad; u="), (b"cookie", b"s=3")],
    )
    assert request.cookies == {b"s": [b"1", b"3"], b"t": [b"2"], b"u": [b""]}
    assert request.query_params == {b"a": [b"1", b"2"], b"b": [b""], b"c": [b"%20"]}


@pytest.mark.parametrize(
    ("client_ip", "expected"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("", None),
        ("unix:/run/x.sock", None),
    ],
)
def test_view_client_address(client_ip: str, expected: str | None) -> None:
    address = view(client_ip=client_ip).client_address
    assert (None if address is None else str(address)) == expected


# ---- each matcher --------------------------------------------------------------------------

HOST = Match(host=["www.example.com", "*.example.org"])
MATCHER_CASES: list[tuple[str, Match, RequestView, bool]] = [
    ("host exact", HOST, view(host=b"www.example.com"), True),
    ("host without case", HOST, view(host=b"WWW.Example.COM"), True),
    ("host port ignored", HOST, view(host=b"www.example.com:8080"), True),
    ("host trailing dot", HOST, view(host=b"www.example.com."), True),
    ("host other", HOST, view(host=b"blog.example.com"), False),
    ("host none", HOST, view(host=None), False),
    ("host wildcard one label", HOST, view(host=b"a.example.org"), True),
    ("host wildcard not two labels", HOST, view(host=b"a.b.example.org"), False),
    ("host wildcard not the apex", HOST, view(host=b"example.org"), False),
    ("host wildcard not an empty label", HOST, view(host=b".example.org"), False),
    ("host absolute-form", HOST, view(b"http://www.example.com/", host=b"x"), True),
    ("host absolute-form wins", HOST, view(b"http://x.net/", host=b"www.example.com"), False),
    ("host config case", Match(host="WWW.Example.COM."), view(), True),
    ("host ipv6", Match(host="[2001:db8::1]"), view(host=b"[2001:DB8::1]:443"), True),
    ("host ipv4", Match(host="10.0.0.1"), view(host=b"10.0.0.1:80"), True),
    ("prefix", Match(path_prefix=["/wp-admin", "/wp-login.php"]), view(b"/wp-admin/x"), True),
    (
        "prefix second",
        Match(path_prefix=["/wp-admin", "/wp-login.php"]),
        view(b"/wp-login.php?a"),
        True,
    ),
    ("prefix case-sensitive", Match(path_prefix="/wp-admin"), view(b"/WP-ADMIN/"), False),
    ("prefix not decoded", Match(path_prefix="/wp-admin"), view(b"/%77p-admin/"), False),
    ("prefix is not on the query", Match(path_prefix="/a?b"), view(b"/a?b"), False),
    ("prefix absolute-form", Match(path_prefix="/p"), view(b"http://a.example/p/q"), True),
    ("exact", Match(path_exact=["/", "/index.php"]), view(b"/index.php?x"), True),
    ("exact not prefix", Match(path_exact="/index"), view(b"/index.php"), False),
    ("exact asterisk", Match(path_exact="*"), view(b"*", method=b"OPTIONS"), True),
    ("regex searched", Match(path_regex=r"\.(css|js)$"), view(b"/static/app.js?v=2"), True),
    ("regex second", Match(path_regex=["^/x", r"\.png$"]), view(b"/a.png"), True),
    ("regex case", Match(path_regex=r"\.PNG$"), view(b"/a.png"), False),
    ("regex flag", Match(path_regex=r"(?i)\.PNG$"), view(b"/a.png"), True),
    ("regex raw bytes", Match(path_regex="%2e%2e"), view(b"/a/%2e%2e/b"), True),
    ("method", Match(method=["GET", "HEAD"]), view(method=b"HEAD"), True),
    ("method other", Match(method=["GET", "HEAD"]), view(method=b"POST"), False),
    ("method case-sensitive", Match(method="get"), view(method=b"GET"), False),
    ("header value", Match(header=[H(name="X-A", value="1")]), hv((b"x-a", b"1")), True),
    ("header value whole", Match(header=[H(name="X-A", value="1")]), hv((b"X-A", b"12")), False),
    ("header value case", Match(header=[H(name="X-A", value="a")]), hv((b"X-A", b"A")), False),
    (
        "header several lines",
        Match(header=[H(name="X-A", value="2")]),
        hv((b"X-A", b"1"), (b"X-A", b"2")),
        True,
    ),
    ("header missing", Match(header=[H(name="X-A", value="2")]), view(), False),
    (
        "header regex",
        Match(header=[H(name="User-Agent", regex="(?i)bot")]),
        hv((b"user-agent", b"GoogleBot/2")),
        True,
    ),
    (
        "header regex no",
        Match(header=[H(name="User-Agent", regex="bot")]),
        hv((b"User-Agent", b"curl")),
        False,
    ),
    ("header regex missing", Match(header=[H(name="User-Agent", regex="bot")]), view(), False),
    (
        "header present",
        Match(header=[H(name="Authorization", present=True)]),
        hv((b"AUTHORIZATION", b"x")),
        True,
    ),
    ("header name only", Match(header=[H(name="X-A")]), hv((b"x-a", b"")), True),
    ("header name only no", Match(header=[H(name="X-A")]), view(), False),
    ("header present no", Match(header=[H(name="Authorization", present=True)]), view(), False),
    ("header absent", Match(header=[H(name="Authorization", present=False)]), view(), True),
    (
        "header absent no",
        Match(header=[H(name="Authorization", present=False)]),
        hv((b"Authorization", b"")),
        False,
    ),
    (
        "header any of",
        Match(header=[H(name="X-A", present=True), H(name="X-B", present=True)]),
        hv((b"X-B", b"1")),
        True,
    ),
    (
        "cookie present",
        Match(cookie=[C(name="wordpress_logged_in")]),
        hv((b"Cookie", b"a=1; wordpress_logged_in=x")),
        True,
    ),
    (
        "cookie second header",
        Match(cookie=[C(name="s")]),
        hv((b"Cookie", b"a=1"), (b"Cookie", b"s=2")),
        True,
    ),
    ("cookie missing", Match(cookie=[C(name="s")]), hv((b"Cookie", b"a=1; ss=1; s")), False),
    ("cookie name case", Match(cookie=[C(name="S")]), hv((b"Cookie", b"s=1")), False),
    ("cookie value", Match(cookie=[C(name="v", value="2")]), hv((b"Cookie", b"v=1; v=2")), True),
    ("cookie value no", Match(cookie=[C(name="v", value="2")]), hv((b"Cookie", b"v=22")), False),
    ("query present", Match(query_param=[Q(name="preview")]), view(b"/?p=1&preview"), True),
    ("query value", Match(query_param=[Q(name="p", value="1")]), view(b"/?p=2&p=1"), True),
    ("query not decoded", Match(query_param=[Q(name="p", value="a b")]), view(b"/?p=a%20b"), False),
    ("query raw", Match(query_param=[Q(name="p", value="a%20b")]), view(b"/?p=a%20b"), True),
    ("query none", Match(query_param=[Q(name="p")]), view(b"/p"), False),
    ("query name whole", Match(query_param=[Q(name="p")]), view(b"/?pp=1"), False),
    ("src v4", Match(src=["10.0.0.0/8", "192.168.0.0/16"]), view(client_ip="192.168.3.4"), True),
    ("src v4 no", Match(src="10.0.0.0/8"), view(client_ip="11.0.0.1"), False),
    ("src host bits", Match(src="10.1.2.3/8"), view(client_ip="10.200.0.1"), True),
    ("src single", Match(src="10.0.0.1"), view(client_ip="10.0.0.1"), True),
    ("src v6", Match(src="2001:db8::/32"), view(client_ip="2001:db8:ffff::1"), True),
    ("src v6 no", Match(src="2001:db8::/32"), view(client_ip="2001:db9::1"), False),
    ("src v6 upper", Match(src="2001:DB8::/32"), view(client_ip="2001:db8::1"), True),
    ("src v4 vs v6 client", Match(src="10.0.0.0/8"), view(client_ip="2001:db8::1"), False),
    ("src mapped client", Match(src="10.0.0.0/8"), view(client_ip="::ffff:10.0.0.1"), True),
    ("src mapped range", Match(src="::ffff:10.0.0.0/104"), view(client_ip="10.1.1.1"), True),
    ("src mapped both", Match(src="::ffff:10.0.0.0/104"), view(client_ip="::ffff:10.1.1.1"), True),
    ("src not an ip", Match(src="0.0.0.0/0"), view(client_ip="unix"), False),
    ("src any v6", Match(src="::/0"), view(client_ip="::1"), True),
    ("sni", Match(sni=["api.example.com", "*.example.net"]), view(sni="API.example.com"), True),
    ("sni wildcard", Match(sni="*.example.net"), view(sni="a.example.net"), True),
    ("sni wildcard one label", Match(sni="*.example.net"), view(sni="a.b.example.net"), False),
    ("sni none", Match(sni="api.example.com"), view(sni=None), False),
    ("client cert", Match(client_cert=True), view(client_cert=True), True),
    ("client cert no", Match(client_cert=True), view(client_cert=False), False),
    ("no client cert", Match(client_cert=False), view(client_cert=False), True),
    ("not", Match(not_=Match(src="10.0.0.0/8")), view(client_ip="192.0.2.1"), True),
    ("not no", Match(not_=Match(src="10.0.0.0/8")), view(client_ip="10.0.0.1"), False),
    ("not all of", Match(not_=Match(method="GET", path_prefix="/a")), view(b"/b"), True),
    ("not not", Match(not_=Match(not_=Match(method="GET"))), view(), True),
    ("all must match", Match(host="www.example.com", path_prefix="/a"), view(b"/b"), False),
    ("all match", Match(host="www.example.com", path_prefix="/a", method="GET"), view(b"/a"), True),
    ("empty match", Match(), view(host=None), True),
]


@pytest.mark.parametrize(
    ("match", "request_", "expected"),
    [case[1:] for case in MATCHER_CASES],
    ids=[case[0] for case in MATCHER_CASES],
)
def test_matcher(match: Match, request_: RequestView, expected: bool) -> None:
    assert matches(match, request_) is expected


# ---- select, explain -----------------------------------------------------------------------

WP = [
    Route(name="admin", match=Match(path_prefix=["/wp-admin", "/wp-login.php"]), backend="admin"),
    Route(name="static", match=Match(path_regex=r"\.(css|js|png)$"), backend="static"),
    Route(name="old", match=Match(path_prefix="/old/"), redirect=RedirectRule(prefix="/new")),
    Route(name="xmlrpc", match=Match(path_exact="/xmlrpc.php"), deny=403),
    Route(name="also-admin", match=Match(path_prefix="/wp-admin/x"), backend="never"),
]
COMPILED = compile_routes(WP, "frontends.web.routes", default_backend="wordpress")


@pytest.mark.parametrize(
    ("target", "route", "backend", "deny", "redirect"),
    [
        (b"/wp-admin/x/y", "admin", "admin", None, None),  # the first match wins
        (b"/wp-login.php", "admin", "admin", None, None),
        (b"/wp-admin/app.js", "admin", "admin", None, None),
        (b"/theme/app.js", "static", "static", None, None),
        (b"/old/page", "old", None, None, RedirectRule(prefix="/new")),
        (b"/xmlrpc.php", "xmlrpc", None, 403, None),
        (b"/blog/", None, "wordpress", None, None),
    ],
)
def test_select(
    target: bytes,
    route: str | None,
    backend: str | None,
    deny: int | None,
    redirect: RedirectRule | None,
) -> None:
    decision = COMPILED.select(view(target))
    assert (decision.route.name if decision.route else None) == route
    assert (decision.backend, decision.deny, decision.redirect) == (backend, deny, redirect)


def test_select_without_routes_or_default() -> None:
    empty = compile_routes([], "routes")
    assert empty.select(view()) == Decision(route=None)
    assert len(empty) == 0
    assert empty.explain(view()) == []


def test_compiled_routes_show_their_state() -> None:
    assert isinstance(COMPILED, CompiledRoutes)
    assert len(COMPILED) == 5
    assert [r.name for r in COMPILED.routes] == ["admin", "static", "old", "xmlrpc", "also-admin"]
    assert repr(COMPILED) == (
        "<CompiledRoutes [admin, static, old, xmlrpc, also-admin] default='wordpress'>"
    )


def test_explain_stops_at_the_first_match() -> None:
    explained = COMPILED.explain(view(b"/xmlrpc.php"))
    assert [(e.index, e.route.name, e.matched) for e in explained] == [
        (0, "admin", False),
        (1, "static", False),
        (2, "old", False),
        (3, "xmlrpc", True),
    ]
    assert explained[0].reason == (
        'path_prefix: "/xmlrpc.php" does not start with any of "/wp-admin", "/wp-login.php"'
    )
    assert explained[1].reason == r'path_regex: "/xmlrpc.php" does not match "\\.(css|js|png)$"'
    assert explained[2].reason == 'path_prefix: "/xmlrpc.php" does not start with "/old/"'
    assert explained[3].reason is None


def test_explain_no_match_lists_every_route() -> None:
    explained = COMPILED.explain(view(b"/blog/"))
    assert len(explained) == len(WP)
    assert not any(e.matched for e in explained)


def reason(match: Match, request: RequestView) -> str | None:
    routes = compile_routes([Route(name="r", match=match, backend="b")], "routes")
    [explained] = routes.explain(request)
    return explained.reason


EXPLAIN_CASES: list[tuple[Match, RequestView, str | None]] = [
    (
        Match(host="www.example.com"),
        view(host=b"blog.example.com"),
        'host: "blog.example.com" is not "www.example.com"',
    ),
    (
        Match(host=["a.com", "b.com"]),
        view(host=b"c.com"),
        'host: "c.com" is not any of "a.com", "b.com"',
    ),
    (
        Match(host="*.example.com"),
        view(host=b"a.b.example.com"),
        'host: "a.b.example.com" is not "*.example.com" (a * stands for exactly one label)',
    ),
    (Match(host="a.com"), view(host=None), "host: the request has no host"),
    (
        Match(host="a.com", path_prefix="/x"),
        view(b"/y", host=b"a.com"),
        'path_prefix: "/y" does not start with "/x"',
    ),
    (
        Match(path_prefix="/x"),
        view(b'/\x01"\\\xff'),
        'path_prefix: "/\\x01\\"\\\\\\xff" does not start with "/x"',
    ),
    (Match(path_exact=["/a", "/b"]), view(b"/c"), 'path_exact: "/c" is not any of "/a", "/b"'),
    (Match(path_regex=["^/a", "b$"]), view(b"/c"), 'path_regex: "/c" matches none of "^/a", "b$"'),
    (Match(method="GET"), view(method=b"POST"), 'method: "POST" is not "GET"'),
    (Match(header=[H(name="X-A", value="1")]), view(), 'header: the request has no "X-A" header'),
    (
        Match(header=[H(name="X-A", value="1")]),
        hv((b"x-a", b"2"), (b"x-a", b"3")),
        'header: "X-A" is "2", "3", not "1"',
    ),
    (
        Match(header=[H(name="X-A", regex="^1")]),
        hv((b"x-a", b"2")),
        'header: "X-A" is "2", which does not match "^1"',
    ),
    (
        Match(header=[H(name="X-A", present=True)]),
        view(),
        'header: the request has no "X-A" header',
    ),
    (
        Match(header=[H(name="X-A", present=False)]),
        hv((b"X-A", b"")),
        'header: the request has a "X-A" header',
    ),
    (
        Match(header=[H(name="X-A", present=True), H(name="X-B", present=True)]),
        view(),
        'header: the request has no "X-A" header; the request has no "X-B" header',
    ),
    (Match(cookie=[C(name="s")]), view(), 'cookie: the request has no "s" cookie'),
    (
        Match(cookie=[C(name="s", value="1")]),
        hv((b"Cookie", b"s=2")),
        'cookie: "s" is "2", not "1"',
    ),
    (
        Match(query_param=[Q(name="p")]),
        view(b"/"),
        'query_param: the request has no "p" query parameter',
    ),
    (
        Match(query_param=[Q(name="p", value="1")]),
        view(b"/?p=2"),
        'query_param: "p" is "2", not "1"',
    ),
    (
        Match(src=["10.0.0.0/8", "2001:db8::/32"]),
        view(client_ip="::ffff:192.0.2.1"),
        "src: 192.0.2.1 is not in 10.0.0.0/8, 2001:db8::/32",
    ),
    (Match(src="10.0.0.0/8"), view(client_ip="unix"), 'src: "unix" is not an IP address'),
    (Match(sni="a.com"), view(sni="b.com"), 'sni: "b.com" is not "a.com"'),
    (Match(sni="a.com"), view(), "sni: no TLS server name"),
    (Match(client_cert=True), view(), "client_cert: the client presented no verified certificate"),
    (
        Match(client_cert=False),
        view(client_cert=True),
        "client_cert: the client presented a verified certificate",
    ),
    (Match(not_=Match(method="GET")), view(), "not: its condition matched"),
    (Match(method="GET"), view(), None),
]


@pytest.mark.parametrize(("match", "request_", "expected"), EXPLAIN_CASES)
def test_explain_reason(match: Match, request_: RequestView, expected: str | None) -> None:
    assert reason(match, request_) == expected


# ---- compile errors ------------------------------------------------------------------------

ERROR_CASES: list[tuple[Route, list[tuple[str, str]]]] = [
    (
        Route(name="r", match=Match(path_regex=["ok", "(unclosed"]), backend="b"),
        [
            (
                "R.path_regex[1]",
                "not a valid regular expression (missing ), unterminated subpattern at "
                'position 0): "(unclosed"',
            )
        ],
    ),
    (
        Route(name="r", match=Match(path_regex="é\u20ac"), backend="b"),
        [("R.path_regex[0]", "must be made of latin-1 characters")],
    ),
    (
        Route(name="r", match=Match(src=["10.0.0.0/8", "10.0.0.0/33", "nope"]), backend="b"),
        [
            (
                "R.src[1]",
                'not an address range like "10.0.0.0/8" or "2001:db8::/32", got "10.0.0.0/33"',
            ),
            ("R.src[2]", 'not an address range like "10.0.0.0/8" or "2001:db8::/32", got "nope"'),
        ],
    ),
    (
        Route(
            name="r",
            match=Match(host=["ok.com", "a.com:80", "", "a b", "*.*.com", "a.*.com", "[::zz]"]),
            backend="b",
        ),
        [
            (
                "R.host[1]",
                'must be a host name without a port (the port is ignored), got "a.com:80"',
            ),
            ("R.host[2]", 'must be a host name like "www.example.com" or "*.example.com", got ""'),
            (
                "R.host[3]",
                'must be a host name like "www.example.com" or "*.example.com", got "a b"',
            ),
            ("R.host[4]", "must be a host name like"),
            ("R.host[5]", "must be a host name like"),
            ("R.host[6]", "must be a host name without a port"),
        ],
    ),
    (
        Route(name="r", match=Match(host="bücher.example"), backend="b"),
        [("R.host[0]", '(did you mean "xn--bcher-kva.example"?)')],
    ),
    (
        Route(name="r", match=Match(host=["*.bücher.example", "a\u2028.example"]), backend="b"),
        [
            ("R.host[0]", 'got "*.b\\xfccher.example" (did you mean "*.xn--bcher-kva.example"?)'),
            ("R.host[1]", 'got "a?.example"'),  # no suggestion when there is none
        ],
    ),
    (
        Route(name="r", match=Match(sni=["*.ok.com", "bad name"]), backend="b"),
        [("R.sni[1]", 'got "bad name"')],
    ),
    (
        Route(
            name="r",
            match=Match(path_prefix=["/ok", "no-slash", "/a b", "/café"], path_exact=["*", "x"]),
            backend="b",
        ),
        [
            (
                "R.path_prefix[1]",
                'must be a path like "/wp-admin", written as clients send it (percent-encoded, '
                'no spaces), got "no-slash"',
            ),
            ("R.path_prefix[2]", 'got "/a b"'),
            ("R.path_prefix[3]", 'got "/caf\\xe9"'),
            ("R.path_exact[1]", 'got "x"'),
        ],
    ),
    (
        Route(name="r", match=Match(method=["GET", "G T", ""]), backend="b"),
        [
            ("R.method[1]", 'must be an HTTP method like "GET", got "G T"'),
            ("R.method[2]", 'got ""'),
        ],
    ),
    (
        Route(
            name="r",
            match=Match(
                header=[
                    H(name="Bad Name", value="x"),
                    H(name="X-A", value="1", present=True),
                    H(name="X-A", regex="("),
                    H(name="X-A", value="\u20ac"),
                    H(name="X-Ok", value="é"),
                ]
            ),
            backend="b",
        ),
        [
            ("R.header[0].name", 'must be a header name like "X-Client-Cert", got "Bad Name"'),
            ("R.header[1]", "must have only one of value, regex or present, got value and present"),
            ("R.header[2].regex", "not a valid regular expression"),
            ("R.header[3].value", "must be made of latin-1 characters"),
        ],
    ),
    (
        Route(
            name="r",
            match=Match(
                cookie=[
                    C(name=""),
                    C(name="a=b"),
                    C(name="ok", value="\u20ac"),
                ],
                query_param=[Q(name="a&b"), Q(name="\u20ac")],
            ),
            backend="b",
        ),
        [
            ("R.cookie[0].name", 'must be a cookie name, got ""'),
            ("R.cookie[1].name", 'must be a cookie name, got "a=b"'),
            ("R.cookie[2].value", "must be made of latin-1 characters"),
            ("R.query_param[0].name", 'must be a query parameter name, got "a&b"'),
            ("R.query_param[1].name", "must be made of latin-1 characters"),
        ],
    ),
    (
        Route(name="r", match=Match(not_=Match(not_=Match(path_regex="["))), backend="b"),
        [("R.not.not.path_regex[0]", "not a valid regular expression")],
    ),
    (Route(name="r"), [("R", "must have one of backend, deny or redirect")]),
    (
        Route(name="r", backend="b", deny=403),
        [("R", "must have only one of backend, deny or redirect, got backend and deny")],
    ),
    (Route(name="r", deny=500), [("R.deny", "must be a 4xx status like 403, got 500")]),
    (Route(name="r", deny=True), [("R.deny", "must be a 4xx status like 403, got True")]),
    (
        Route(name="r", redirect=RedirectRule(code=301)),
        [("R.redirect", "must have one of location, prefix or scheme")],
    ),
    (
        Route(name="r", redirect=RedirectRule(location="/a", prefix="/b", code=200)),
        [
            (
                "R.redirect",
                "must have only one of location, prefix or scheme, got location and prefix",
            ),
            ("R.redirect.code", "must be one of 301, 302, 303, 307, 308, got 200"),
        ],
    ),
    (
        Route(name="r", redirect=RedirectRule(location="https://x/a b")),
        [("R.redirect.location", "must be a URL or path of printable ASCII characters")],
    ),
    (
        Route(name="r", redirect=RedirectRule(prefix="https://x/\r\nSet-Cookie: a=b")),
        [("R.redirect.prefix", 'got "https://x/\\x0d\\x0aSet-Cookie: a=b"')],
    ),
    (
        Route(name="r", redirect=RedirectRule(scheme="ht tp")),
        [("R.redirect.scheme", 'must be a scheme like "https", got "ht tp"')],
    ),
]


@pytest.mark.parametrize(("route", "expected"), ERROR_CASES)
def test_compile_errors(route: Route, expected: list[tuple[str, str]]) -> None:
    with pytest.raises(ConfigError) as raised:
        compile_routes([Route(name="fine", backend="b"), route], "frontends.web.routes")
    problems = raised.value.problems
    assert [p.key_path for p in problems] == [
        path.replace("R", "frontends.web.routes[1]", 1) for path, _ in expected
    ]
    for problem, (_, message) in zip(problems, expected, strict=True):
        assert message in problem.message


def test_compile_errors_are_all_reported_at_once() -> None:
    routes = [
        Route(name="a", match=Match(path_regex="("), backend="b"),
        Route(name="b", match=Match(src="x"), deny=200),
    ]
    with pytest.raises(ConfigError) as raised:
        compile_routes(routes, "frontends.web.routes")
    assert str(raised.value).splitlines() == [
        "frontends.web.routes[0].path_regex[0]: not a valid regular expression (missing ), "
        'unterminated subpattern at position 0): "("',
        'frontends.web.routes[1].src[0]: not an address range like "10.0.0.0/8" or '
        '"2001:db8::/32", got "x"',
        "frontends.web.routes[1].deny: must be a 4xx status like 403, got 200",
    ]


def test_valid_actions_compile() -> None:
    routes = [
        Route(name="a", deny=429),
        Route(name="b", redirect=RedirectRule(location="https://www.example.com/", code=308)),
        Route(name="c", redirect=RedirectRule(prefix="/", code=307)),
        Route(name="d", redirect=RedirectRule(scheme="https", code=301, drop_query=True)),
    ]
    assert len(compile_routes(routes, "r")) == 4


# ---- redirects -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "request_", "tls", "expected"),
    [
        (
            RedirectRule(location="https://www.example.com/"),
            view(b"/a?b"),
            False,
            b"https://www.example.com/",
        ),
        (
            RedirectRule(prefix="https://www.example.com"),
            view(b"/a/b?c=1"),
            False,
            b"https://www.example.com/a/b?c=1",
        ),
        (
            RedirectRule(prefix="https://www.example.com/"),
            view(b"/a"),
            False,
            b"https://www.example.com/a",
        ),
        (
            RedirectRule(prefix="https://www.example.com", drop_query=True),
            view(b"/a?c=1"),
            False,
            b"https://www.example.com/a",
        ),
        (RedirectRule(prefix="/new"), view(b"/old/x?y"), False, b"/new/old/x?y"),
        (RedirectRule(prefix="/"), view(b"/same?q"), False, b"/same?q"),
        (RedirectRule(prefix="/new"), view(b"/x?"), False, b"/new/x?"),
        (RedirectRule(prefix="/new"), view(b"http://a.example/x?q"), False, b"/new/x?q"),
        (RedirectRule(prefix="/new"), view(b"*", method=b"OPTIONS"), False, b"/new/"),
        (
            RedirectRule(scheme="https"),
            view(b"/a?b=1", host=b"Example.com"),
            False,
            b"https://example.com/a?b=1",
        ),
        (
            RedirectRule(scheme="https"),
            view(b"/a", host=b"example.com:8080"),
            False,
            b"https://example.com/a",
        ),
        (
            RedirectRule(scheme="https"),
            view(b"/a", host=b"example.com:8443"),
            True,
            b"https://example.com:8443/a",
        ),
        (
            RedirectRule(scheme="http"),
            view(b"/a", host=b"example.com:8443"),
            True,
            b"http://example.com/a",
        ),
        (RedirectRule(scheme="https"), view(b"/a", host=b"[::1]:8080"), False, b"https://[::1]/a"),
        (
            RedirectRule(scheme="https", drop_query=True),
            view(b"/a?b"),
            False,
            b"https://www.example.com/a",
        ),
        (RedirectRule(scheme="https"), view(b"/a", host=None), False, b"https:///a"),
        (
            RedirectRule(scheme="https"),
            view(b"http://A.example:80/p?q", host=b"x"),
            False,
            b"https://a.example/p?q",
        ),
    ],
)
def test_redirect_location(
    rule: RedirectRule, request_: RequestView, tls: bool, expected: bytes
) -> None:
    assert redirect_location(rule, request_, tls=tls) == expected


def test_redirect_location_needs_a_kind() -> None:
    with pytest.raises(ValueError, match="location, a prefix or a scheme"):
        redirect_location(RedirectRule(), view(), tls=False)
