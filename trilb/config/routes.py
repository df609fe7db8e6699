"""The configuration model of content switching and header rules (HAProxy's ACLs, ``use_backend``,
``http-request``/``http-response`` header actions, ``redirect``).

Values are as written in the config; the routing core (:mod:`trilb.core.routing`) compiles
regular expressions and address ranges once, when the balancer starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import attrs

from .limits import RateLimit

__all__ = [
    "CookieMatch",
    "HeaderMatch",
    "HeaderRule",
    "Match",
    "QueryMatch",
    "RedirectRule",
    "Route",
]


def _strings(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _headers(value: Iterable[HeaderMatch]) -> tuple[HeaderMatch, ...]:
    return tuple(value)


def _cookies(value: Iterable[CookieMatch]) -> tuple[CookieMatch, ...]:
    return tuple(value)


def _params(value: Iterable[QueryMatch]) -> tuple[QueryMatch, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class HeaderMatch:
    """``header = { name, value | regex | present }``: exactly one of the three."""

    name: str
    value: str | None = None  # the whole value, exactly
    regex: str | None = None  # searched in the value
    present: bool | None = None  # True: must be there; False: must not


@attrs.frozen(kw_only=True)
class CookieMatch:
    """``cookie = "NAME"`` (present) or ``{ name, value }``."""

    name: str
    value: str | None = None


@attrs.frozen(kw_only=True)
class QueryMatch:
    """``query_param = "NAME"`` (present) or ``{ name, value }``."""

    name: str
    value: str | None = None


@attrs.frozen(kw_only=True)
class Match:
    """What a request must look like; every matcher given must match (an empty Match matches
    everything). Within one matcher, any of its values may match."""

    #: host names (exact, or ``*.example.com`` for one label), without case, port ignored
    host: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    path_prefix: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    path_exact: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    path_regex: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    method: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    header: tuple[HeaderMatch, ...] = attrs.field(default=(), converter=_headers)
    cookie: tuple[CookieMatch, ...] = attrs.field(default=(), converter=_cookies)
    query_param: tuple[QueryMatch, ...] = attrs.field(default=(), converter=_params)
    #: client address ranges (CIDR, IPv4 and IPv6)
    src: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: TLS server names the client asked for
    sni: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: True: the client presented a verified certificate; False: it did not
    client_cert: bool | None = None
    #: this must NOT match
    not_: Match | None = None


@attrs.frozen(kw_only=True)
class RedirectRule:
    """``redirect = { location | prefix | scheme, code, drop_query }``."""

    location: str | None = None  # the whole new URL
    prefix: str | None = None  # put before the path: "https://www.example.com" or "/new"
    scheme: str | None = None  # the same URL with this scheme ("https")
    code: int = 302
    drop_query: bool = False


@attrs.frozen(kw_only=True)
class Route:
    """One ``[[frontends.NAME.routes]]`` entry: when ``match`` matches, send the request to
    ``backend``, or answer it with ``deny`` (a 4xx) or ``redirect``."""

    name: str  # "#0", "#1", ... unless named; used by ``trilb route`` and the log
    match: Match = Match()
    backend: str | None = None
    deny: int | None = None
    redirect: RedirectRule | None = None
    #: a rate limit for the requests this route takes, on top of the frontend's
    rate_limit: RateLimit | None = None


HeaderAction = Literal["set", "add", "delete", "replace"]


@attrs.frozen(kw_only=True)
class HeaderRule:
    """One header edit, applied in order: ``{ set = ["Name", "value"] }``, ``{ add = [...] }``,
    ``{ delete = "Name" }``, ``{ replace = ["Name", "regex", "replacement"] }``. Values may use
    ``%[src]``, ``%[ssl_fc]``, ``%[req.host]`` and ``%[unique_id]``."""

    action: HeaderAction
    name: str
    value: str = ""  # set / add
    regex: str = ""  # replace
    replacement: str = ""  # replace


def routes_tuple(value: Iterable[Route]) -> tuple[Route, ...]:
    """Converter for ``FrontendConfig.routes``."""
    return tuple(value)


def rules_tuple(value: Iterable[HeaderRule]) -> tuple[HeaderRule, ...]:
    """Converter for the header rule lists."""
    return tuple(value)
