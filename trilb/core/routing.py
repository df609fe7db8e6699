"""Content switching (sans-IO): which route a request takes. HAProxy's ACLs with ``use_backend``,
``http-request deny`` and ``redirect``.

Theory of operation: a frontend's routes are compiled once (:func:`compile_routes`), when the
configuration is loaded: regular expressions, address ranges and host patterns become matcher
objects, and every problem in the list is reported at once, with its key path, as one
:class:`~trilb.errors.ConfigError`. Per request the shell builds a :class:`RequestView` and calls
:meth:`CompiledRoutes.select`: the first route whose matchers all match decides, else the default
backend. :meth:`CompiledRoutes.explain` runs the very same matchers and also says why each earlier
route did not match (``trilb route``). The view parses what the matchers need (host, path, query,
cookies, the client address) once, on first use, so a route list costs a few dict and ``startswith``
look-ups per request.

Matching rules, and why:

* The path is matched on the bytes as sent, before the ``?``, *not* percent-decoded (HAProxy's
  ``path``). Decoding would be a guess at what the server decodes: ``/%2577p-admin`` is
  ``/%77p-admin`` after one decoding and ``/wp-admin`` after two, so any choice here can differ
  from the server's (the double-decoding trick). Raw bytes make a rule predictable: write paths
  the way clients send them. The flip side: ``path_prefix = "/wp-admin"`` does not catch
  ``/%77p-admin``, so a route that *denies* by path is not a security boundary on its own.
* Configuration strings become bytes one character per byte (latin-1), the way h11 carries header
  values; paths and host names must be ASCII (percent-encoding and IDNA, the way clients send them).
* The host comes from the authority of an absolute-form target (``GET http://a.example/ HTTP/1.1``),
  which RFC 9112 section 3.2.2 says wins over the Host header, else from the first Host header. It
  is compared without case, without its port and without a trailing dot; IPv6 literals keep their
  brackets (``[::1]``). ``*.example.com`` stands for exactly one label, as in certificate selection.
* Methods are case-sensitive tokens (RFC 9110 section 9.1) and are compared exactly: ``"get"``
  does not match ``GET``.
* Header names compare without case, values exactly; each header line is one value (comma lists are
  not split). Cookie names and query parameter names compare exactly; query parameters are split on
  ``&`` and not decoded.
* All matchers given in a route must match; within one, any value may: any of its hosts, any of
  its ``header``/``cookie``/``query_param`` conditions (the model's rule). ``not`` negates its
  whole sub-match.
* An IPv4-mapped IPv6 client (``::ffff:10.0.0.1``, a dual-stack listener) matches IPv4 ranges.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from typing import Any, Generic, NamedTuple, TypeVar

import attrs

from ..config.model import REDIRECT_CODES
from ..config.routes import CookieMatch, HeaderMatch, Match, QueryMatch, RedirectRule, Route
from ..errors import ConfigError, ConfigProblem
from .sni import normalise_name

__all__ = [
    "CompiledRoutes",
    "Decision",
    "RequestView",
    "RouteExplanation",
    "compile_routes",
    "redirect_location",
]

Header = tuple[bytes, bytes]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_PATH = re.compile(r"/[\x21-\x7e]*")
_URL = re.compile(r"[\x21-\x7e]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")
T = TypeVar("T")


class _lazy(Generic[T]):  # named like functools.cached_property, which it stands for
    """``functools.cached_property`` without its lock (which Python 3.11 takes on every first
    access): a view lives in one task, and a request pays for each parsed part once."""

    def __init__(self, compute: Callable[[Any], T]) -> None:
        self.compute = compute
        self.name = compute.__name__

    def __get__(self, instance: Any, owner: type | None = None) -> T:
        value = self.compute(instance)
        instance.__dict__[self.name] = value  # found before this descriptor from now on
        return value


@attrs.frozen(kw_only=True, slots=False)  # not slotted: the parsed parts are cached in __dict__
class RequestView:
    """What the matchers look at: one request as received, plus what the connection knows."""

    method: bytes
    target: bytes  # origin-form "/p?q" or absolute-form "http://host/p?q"
    headers: Sequence[Header] = ()  # as received, names in any case
    client_ip: str = ""  # "" or anything not an IP (a unix socket) matches no ``src``
    sni: str | None = None  # the TLS server name the client asked for
    client_cert: bool = False  # a verified client certificate was presented

    @_lazy
    def _target_parts(self) -> tuple[bytes | None, bytes, bytes | None]:
        """(authority of an absolute-form target, path, query or None when there is no ``?``)."""
        target = self.target
        if target[:1] != b"/":
            absolute = _ABSOLUTE.fullmatch(target)
            if absolute is None:  # asterisk-form (OPTIONS *) or authority-form (CONNECT)
                return None, (b"*" if target == b"*" else b""), None
            authority = absolute[2].rpartition(b"@")[2]  # userinfo is no part of the host
            target = absolute[3] if absolute[3][:1] == b"/" else b"/" + absolute[3]
            path, sep, query = target.partition(b"?")
            return authority, path, (query if sep else None)
        path, sep, query = target.partition(b"?")
        return None, path, (query if sep else None)

    @property
    def path(self) -> bytes:
        """The path, before any ``?``, not percent-decoded; ``*`` or empty for the other forms."""
        return self._target_parts[1]

    @property
    def query(self) -> bytes | None:
        """What follows the first ``?``; None when there is no ``?`` at all."""
        return self._target_parts[2]

    @_lazy
    def header_map(self) -> dict[bytes, list[bytes]]:
        """Lower-cased name -> every value of that name, in order."""
        found: dict[bytes, list[bytes]] = {}
        for name, value in self.headers:
            found.setdefault(name.lower(), []).append(value.strip(b" \t"))
        return found

    @property
    def authority(self) -> bytes | None:
        """The host as sent, port included: of an absolute-form target, else the Host header."""
        authority = self._target_parts[0]
        if authority is None:
            hosts = self.header_map.get(b"host")
            authority = hosts[0] if hosts else None
        return authority

    @_lazy
    def _host_port(self) -> tuple[str | None, str | None]:
        raw = self.authority
        if raw is None:
            return None, None
        raw = raw.strip().lower()
        port: bytes = b""
        if raw.startswith(b"["):  # [v6] or [v6]:port
            end = raw.find(b"]")
            if end >= 0:
                raw, rest = raw[: end + 1], raw[end + 1 :]
                port = rest[1:] if rest.startswith(b":") else b""
        elif raw.count(b":") == 1:
            raw, _, port = raw.partition(b":")
        host = raw.rstrip(b".").decode("latin-1")
        return (host or None), (port.decode("latin-1") or None)

    @property
    def host(self) -> str | None:
        """Lower-cased, without port or trailing dot; IPv6 literals keep their brackets."""
        return self._host_port[0]

    @property
    def port(self) -> str | None:
        """The port the client wrote after the host, if any."""
        return self._host_port[1]

    @_lazy
    def server_name(self) -> str | None:
        return normalise_name(self.sni) if self.sni else None

    @_lazy
    def cookies(self) -> dict[bytes, list[bytes]]:
        """Every cookie of every Cookie header: name -> values (a name may come more than once)."""
        found: dict[bytes, list[bytes]] = {}
        for header in self.header_map.get(b"cookie", ()):
            for part in header.split(b";"):
                name, eq, value = part.strip().partition(b"=")
                if eq and name:
                    found.setdefault(name.rstrip(), []).append(value.lstrip())
        return found

    @_lazy
    def query_params(self) -> dict[bytes, list[bytes]]:
        """``a=1&b&a=2`` -> ``{a: [1, 2], b: [""]}``; split on ``&`` only, nothing decoded."""
        found: dict[bytes, list[bytes]] = {}
        if self.query:
            for part in self.query.split(b"&"):
                name, _, value = part.partition(b"=")
                if name:
                    found.setdefault(name, []).append(value)
        return found

    @_lazy
    def client_address(self) -> IPAddress | None:
        try:
            address = ipaddress.ip_address(self.client_ip)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address


@attrs.frozen(kw_only=True)
class Decision:
    """What to do with a request: exactly one of ``backend``, ``deny`` and ``redirect`` is set,
    or none of them when no route matched and the frontend has no default backend (answer 503).
    ``route`` is None when no route matched."""

    route: Route | None
    backend: str | None = None
    deny: int | None = None  # the status to answer with
    redirect: RedirectRule | None = None  # answer with redirect_location(...) and redirect.code


@attrs.frozen(kw_only=True)
class RouteExplanation:
    """One route as ``trilb route`` shows it; ``reason`` says why it did not match."""

    index: int
    route: Route
    matched: bool
    reason: str | None = None


class _Matcher(NamedTuple):
    test: Callable[[RequestView], bool]
    why: Callable[[RequestView], str]  # why ``test`` is False, for a human; asked only then


def _matches(matchers: tuple[_Matcher, ...], view: RequestView) -> bool:
    for matcher in matchers:  # noqa: SIM110 -- a loop: no generator per request
        if not matcher.test(view):
            return False
    return True


def _show(value: bytes | str) -> str:
    """A value in double quotes; bytes outside printable ASCII as ``\\xNN``, so that what a
    client sent cannot disguise itself in ``trilb route`` output."""
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    return '"' + "".join(_SHOWN[b] for b in raw) + '"'


_SHOWN = [chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in range(256)]
_SHOWN[ord('"')] = '\\"'
_SHOWN[ord("\\")] = "\\\\"


def _any_of(values: Iterable[bytes | str]) -> str:
    shown = [_show(v) for v in values]
    return shown[0] if len(shown) == 1 else "any of " + ", ".join(shown)


def _names_matcher(key: str, names: tuple[str, ...]) -> _Matcher:
    """``host`` or ``sni``: exact names, and one-label wildcards by their parent domain."""
    exact = frozenset(n for n in names if not n.startswith("*."))
    wildcard = frozenset(n[2:] for n in names if n.startswith("*."))
    get: Callable[[RequestView], str | None] = attrgetter(
        "host" if key == "host" else "server_name"
    )

    def test(view: RequestView) -> bool:
        name = get(view)
        if name is None:
            return False
        if name in exact:
            return True
        label, _, parent = name.partition(".")
        return bool(label) and parent in wildcard

    def why(view: RequestView) -> str:
        name = get(view)
        if name is None:
            return "host: the request has no host" if key == "host" else "sni: no TLS server name"
        deeper = any(name.endswith("." + parent) for parent in wildcard)
        hint = " (a * stands for exactly one label)" if deeper else ""
        return f"{key}: {_show(name)} is not {_any_of(names)}{hint}"

    return _Matcher(test, why)


def _prefix_matcher(prefixes: tuple[bytes, ...]) -> _Matcher:
    def why(view: RequestView) -> str:
        return f"path_prefix: {_show(view.path)} does not start with {_any_of(prefixes)}"

    return _Matcher(lambda view: view.path.startswith(prefixes), why)


def _exact_matcher(key: str, values: tuple[bytes, ...]) -> _Matcher:
    """``path_exact`` or ``method``."""
    get: Callable[[RequestView], bytes] = attrgetter("path" if key == "path_exact" else "method")
    allowed = frozenset(values)

    def why(view: RequestView) -> str:
        return f"{key}: {_show(get(view))} is not {_any_of(values)}"

    return _Matcher(lambda view: get(view) in allowed, why)


def _regex_matcher(patterns: tuple[re.Pattern[bytes], ...]) -> _Matcher:
    def test(view: RequestView) -> bool:
        path = view.path
        return any(p.search(path) for p in patterns)

    def why(view: RequestView) -> str:
        verb = "does not match" if len(patterns) == 1 else "matches none of"
        shown = ", ".join(_show(p.pattern) for p in patterns)
        return f"path_regex: {_show(view.path)} {verb} {shown}"

    return _Matcher(test, why)


def _header_condition(header: HeaderMatch, regex: re.Pattern[bytes] | None) -> _Matcher:
    """One ``header = {...}``: present, absent, a value exactly, or a regex searched. Only a
    name (``{ name = "X" }``) means present, like ``cookie = "NAME"``."""
    name = header.name.lower().encode("ascii")
    value = None if header.value is None else header.value.encode("latin-1")
    present = header.present
    if value is None and regex is None and present is None:
        present = True
    shown = _show(header.name)

    def test(view: RequestView) -> bool:
        values = view.header_map.get(name)
        if present is not None:
            return bool(values) is present
        if not values:
            return False
        if regex is not None:
            return any(regex.search(v) for v in values)
        return value in values

    def why(view: RequestView) -> str:
        values = view.header_map.get(name)
        if present is False:
            return f"the request has a {shown} header"
        if not values:
            return f"the request has no {shown} header"
        got = ", ".join(map(_show, values))
        if regex is not None:
            return f"{shown} is {got}, which does not match {_show(regex.pattern)}"
        return f"{shown} is {got}, not {_show(value or b'')}"

    return _Matcher(test, why)


def _pair_condition(kind: str, name: bytes, value: bytes | None) -> _Matcher:
    """A cookie or a query parameter: present, or with this value exactly."""
    get: Callable[[RequestView], dict[bytes, list[bytes]]] = attrgetter(
        "cookies" if kind == "cookie" else "query_params"
    )

    def test(view: RequestView) -> bool:
        values = get(view).get(name)
        return values is not None and (value is None or value in values)

    def why(view: RequestView) -> str:
        values = get(view).get(name)
        if not values:
            return f"the request has no {_show(name)} {kind}"
        return f"{_show(name)} is {', '.join(map(_show, values))}, not {_show(value or b'')}"

    return _Matcher(test, why)


def _any_matcher(key: str, conditions: tuple[_Matcher, ...]) -> _Matcher:
    """``header``, ``cookie``, ``query_param``: any one of the conditions."""

    def why(view: RequestView) -> str:
        return f"{key}: " + "; ".join(c.why(view) for c in conditions)

    return _Matcher(lambda view: any(c.test(view) for c in conditions), why)


def _src_matcher(networks: tuple[IPNetwork, ...]) -> _Matcher:
    def test(view: RequestView) -> bool:
        address = view.client_address
        return address is not None and any(address in n for n in networks)

    def why(view: RequestView) -> str:
        address = view.client_address
        if address is None:
            return f"src: {_show(view.client_ip)} is not an IP address"
        return f"src: {address} is not in {', '.join(map(str, networks))}"

    return _Matcher(test, why)


def _cert_matcher(want: bool) -> _Matcher:
    reason = "presented no" if want else "presented a"
    return _Matcher(
        lambda view: view.client_cert is want,
        lambda view: f"client_cert: the client {reason} verified certificate",
    )


def _not_matcher(inner: tuple[_Matcher, ...]) -> _Matcher:
    return _Matcher(
        lambda view: not _matches(inner, view), lambda view: "not: its condition matched"
    )


@attrs.frozen
class _CompiledRoute:
    matchers: tuple[_Matcher, ...]
    decision: Decision
    route: Route


class CompiledRoutes:
    """A frontend's routes, ready for :meth:`select` on every request. Immutable."""

    __slots__ = ("_default", "_routes")

    def __init__(self, routes: Iterable[_CompiledRoute], default_backend: str | None) -> None:
        self._routes = tuple(routes)
        self._default = Decision(route=None, backend=default_backend)

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(compiled.route for compiled in self._routes)

    def __len__(self) -> int:
        return len(self._routes)

    def __repr__(self) -> str:
        names = ", ".join(route.name for route in self.routes)
        return f"<CompiledRoutes [{names}] default={self._default.backend!r}>"

    def select(self, view: RequestView) -> Decision:
        """The first route that matches, else the default backend."""
        for compiled in self._routes:
            if _matches(compiled.matchers, view):
                return compiled.decision
        return self._default

    def explain(self, view: RequestView) -> list[RouteExplanation]:
        """Each route in order up to the first that matches, with why the others did not."""
        explained: list[RouteExplanation] = []
        for index, compiled in enumerate(self._routes):
            failed = next((m for m in compiled.matchers if not m.test(view)), None)
            reason = None if failed is None else failed.why(view)
            explained.append(
                RouteExplanation(
                    index=index, route=compiled.route, matched=failed is None, reason=reason
                )
            )
            if failed is None:
                break
        return explained


def redirect_location(rule: RedirectRule, view: RequestView, *, tls: bool) -> bytes:
    """The ``Location`` of a redirect route, as HAProxy builds it.

    * ``location``: the URL as configured.
    * ``prefix``: prefix + the path (+ ``?query`` unless ``drop_query``). A trailing ``/`` of the
      prefix is dropped, so ``prefix = "/"`` redirects to the same path and
      ``"https://www.example.com/"`` does not double the slash.
    * ``scheme``: ``scheme://host[:port]`` + path (+ query), the host from the request. The
      client's port is kept only when the scheme stays the one the request came in with
      (``tls``): the port of ``http://example.com:8080`` means nothing for ``https``. To name
      another port, use ``prefix = "https://example.com:8443"``. Without a host the authority is
      empty (``https:///path``), which browsers read as the same host, as in HAProxy.

    A path that is not one (``*``, CONNECT's authority) becomes ``/``.
    """
    if rule.location is not None:
        return rule.location.encode("latin-1")
    path = view.path if view.path[:1] == b"/" else b"/"
    if not rule.drop_query and view.query is not None:
        path += b"?" + view.query
    if rule.prefix is not None:
        return rule.prefix.rstrip("/").encode("latin-1") + path
    if rule.scheme is None:
        raise ValueError("a redirect needs a location, a prefix or a scheme")
    authority = view.host or ""
    if view.port and rule.scheme.lower() == ("https" if tls else "http"):
        authority += ":" + view.port
    return f"{rule.scheme}://{authority}".encode("latin-1") + path


# ---- compilation ---------------------------------------------------------------------------


def compile_routes(
    routes: Sequence[Route], key_path: str, *, default_backend: str | None = None
) -> CompiledRoutes:
    """Compile a frontend's routes (``key_path`` like ``"frontends.web.routes"``), or raise one
    :class:`ConfigError` listing every problem: bad regexes, address ranges, host names, methods,
    deny statuses and redirects. Whether ``backend`` names a backend is the loader's to check."""
    problems: list[ConfigProblem] = []
    compiled = []
    for index, route in enumerate(routes):
        path = f"{key_path}[{index}]"
        match = _compile_match(route.match, path, problems)
        _check_action(route, path, problems)
        decision = Decision(
            route=route, backend=route.backend, deny=route.deny, redirect=route.redirect
        )
        compiled.append(_CompiledRoute(match, decision, route))
    if problems:
        raise ConfigError(problems)
    return CompiledRoutes(compiled, default_backend)


def _compile_match(match: Match, path: str, problems: list[ConfigProblem]) -> tuple[_Matcher, ...]:
    def each(key: str, check: Callable[[str], T]) -> tuple[T, ...]:
        out = []
        for index, value in enumerate(getattr(match, key)):
            try:
                out.append(check(value))
            except ValueError as exc:
                problems.append(ConfigProblem(f"{path}.{key}[{index}]", str(exc)))
        return tuple(out)

    matchers: list[_Matcher] = []
    if match.host:
        matchers.append(_names_matcher("host", each("host", _host_pattern)))
    if match.path_prefix:
        matchers.append(_prefix_matcher(each("path_prefix", _path(star=False))))
    if match.path_exact:
        matchers.append(_exact_matcher("path_exact", each("path_exact", _path(star=True))))
    if match.path_regex:
        matchers.append(_regex_matcher(each("path_regex", _regex)))
    if match.method:
        matchers.append(_exact_matcher("method", each("method", _method)))
    if match.header:
        matchers.append(_any_matcher("header", _headers(match, path, problems)))
    if match.cookie:
        cookies = _pairs("cookie", match.cookie, path, problems)
        matchers.append(_any_matcher("cookie", cookies))
    if match.query_param:
        params = _pairs("query_param", match.query_param, path, problems)
        matchers.append(_any_matcher("query_param", params))
    if match.src:
        matchers.append(_src_matcher(each("src", _network)))
    if match.sni:
        matchers.append(_names_matcher("sni", each("sni", _host_pattern)))
    if match.client_cert is not None:
        matchers.append(_cert_matcher(match.client_cert))
    if match.not_ is not None:
        matchers.append(_not_matcher(_compile_match(match.not_, f"{path}.not", problems)))
    return tuple(matchers)


def _headers(match: Match, path: str, problems: list[ConfigProblem]) -> tuple[_Matcher, ...]:
    out = []
    for index, header in enumerate(match.header):
        where = f"{path}.header[{index}]"
        if not _TOKEN.fullmatch(header.name):
            message = f'must be a header name like "X-Client-Cert", got {_show(header.name)}'
            problems.append(ConfigProblem(f"{where}.name", message))
            continue
        given = [k for k in ("value", "regex", "present") if getattr(header, k) is not None]
        if len(given) > 1:
            problems.append(ConfigProblem(where, _one_of(given, "value", "regex", "present")))
            continue
        try:
            if header.value is not None:
                _latin1(header.value)
            regex = None if header.regex is None else _regex(header.regex)
        except ValueError as exc:
            problems.append(ConfigProblem(f"{where}.{given[0]}", str(exc)))  # value or regex
            continue
        out.append(_header_condition(header, regex))
    return tuple(out)


def _pairs(
    key: str,
    conditions: Sequence[CookieMatch | QueryMatch],
    path: str,
    problems: list[ConfigProblem],
) -> tuple[_Matcher, ...]:
    kind, forbidden = ("cookie", ";=, \t") if key == "cookie" else ("query parameter", "&=#")
    out = []
    for index, condition in enumerate(conditions):
        where = f"{path}.{key}[{index}]"
        try:
            name = _latin1(condition.name)
            if not name or any(c in condition.name for c in forbidden):
                raise ValueError(f"must be a {kind} name, got {_show(condition.name)}")
        except ValueError as exc:
            problems.append(ConfigProblem(f"{where}.name", str(exc)))
            continue
        try:
            value = None if condition.value is None else _latin1(condition.value)
        except ValueError as exc:
            problems.append(ConfigProblem(f"{where}.value", str(exc)))
            continue
        out.append(_pair_condition(kind, name, value))
    return tuple(out)


def _check_action(route: Route, path: str, problems: list[ConfigProblem]) -> None:
    given = [k for k in ("backend", "deny", "redirect") if getattr(route, k) is not None]
    if len(given) != 1:
        problems.append(ConfigProblem(path, _one_of(given, "backend", "deny", "redirect")))
    deny = route.deny
    if deny is not None and (isinstance(deny, bool) or not 400 <= deny <= 499):
        problems.append(ConfigProblem(f"{path}.deny", f"must be a 4xx status like 403, got {deny}"))
    redirect = route.redirect
    if redirect is None:
        return
    where = f"{path}.redirect"
    kinds = [k for k in ("location", "prefix", "scheme") if getattr(redirect, k) is not None]
    if len(kinds) != 1:
        problems.append(ConfigProblem(where, _one_of(kinds, "location", "prefix", "scheme")))
    if isinstance(redirect.code, bool) or redirect.code not in REDIRECT_CODES:
        codes = ", ".join(map(str, REDIRECT_CODES))
        problems.append(
            ConfigProblem(f"{where}.code", f"must be one of {codes}, got {redirect.code}")
        )
    for key in ("location", "prefix"):
        url = getattr(redirect, key)
        if url is not None and (not _URL.fullmatch(url)):
            problems.append(
                ConfigProblem(
                    f"{where}.{key}",
                    "must be a URL or path of printable ASCII characters without spaces "
                    f"(percent-encode the others), got {_show(url)}",
                )
            )
    if redirect.scheme is not None and not _SCHEME.fullmatch(redirect.scheme):
        problems.append(
            ConfigProblem(
                f"{where}.scheme", f'must be a scheme like "https", got {_show(redirect.scheme)}'
            )
        )


def _one_of(given: list[str], *keys: str) -> str:
    wanted = ", ".join(keys[:-1]) + " or " + keys[-1]
    if not given:
        return f"must have one of {wanted}"
    return f"must have only one of {wanted}, got {' and '.join(given)}"


def _latin1(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(
            f"must be made of latin-1 characters (bytes as HTTP carries them), got {_show(text)}"
        ) from None


def _regex(text: str) -> re.Pattern[bytes]:
    try:
        return re.compile(_latin1(text))
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc}): {_show(text)}") from None


def _method(text: str) -> bytes:
    if not _TOKEN.fullmatch(text):
        raise ValueError(f'must be an HTTP method like "GET", got {_show(text)}')
    return text.encode("ascii")


def _path(*, star: bool) -> Callable[[str], bytes]:
    def check(text: str) -> bytes:
        if _PATH.fullmatch(text) or (star and text == "*"):
            return text.encode("ascii")
        raise ValueError(
            f'must be a path like "/wp-admin", written as clients send it (percent-encoded, '
            f"no spaces), got {_show(text)}"
        )

    return check


def _host_pattern(text: str) -> str:
    """``www.example.com``, ``*.example.com``, ``10.0.0.1`` or ``[2001:db8::1]``, normalised."""
    name = normalise_name(text)
    if name.startswith("[") and name.endswith("]"):
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            pass
        else:
            return name
    base = name[2:] if name.startswith("*.") else name
    if _HOST_NAME.fullmatch(base):
        return name
    if ":" in base:
        reason = "must be a host name without a port (the port is ignored)"
    else:
        reason = 'must be a host name like "www.example.com" or "*.example.com"'
    hint = ""
    if not base.isascii():
        try:
            hint = f" (did you mean {_show(name.encode('idna'))}?)"
        except UnicodeError:
            pass
    raise ValueError(f"{reason}, got {_show(text)}{hint}")


def _network(text: str) -> IPNetwork:
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f'not an address range like "10.0.0.0/8" or "2001:db8::/32", got {_show(text)}'
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED_V4):
        # clients arrive as plain IPv4 (mapped addresses are unmapped), so match them as such
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network
