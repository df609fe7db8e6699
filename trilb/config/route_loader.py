"""Reading content switching, header rules and error pages from TOML (see ``routes.py``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from .limit_keys import read_rate_limit
from .reader import _bool, _int, _show, _str, _Table, _token
from .routes import CookieMatch, HeaderMatch, HeaderRule, Match, QueryMatch, RedirectRule, Route

__all__ = ["read_error_pages", "read_header_rules", "read_routes"]

_MATCHERS = (
    "host",
    "path_prefix",
    "path_exact",
    "path_regex",
    "method",
    "header",
    "cookie",
    "query_param",
    "src",
    "sni",
    "client_cert",
    "not",
)
_ACTIONS = ("backend", "deny", "redirect")
_REDIRECT_CODES = (301, 302, 303, 307, 308)


def _strings(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise ValueError(
            f'must be a string or an array of strings like ["a", "b"], got {_show(value)}'
        )
    return tuple(items)


def _tables(value: object) -> list[Mapping[str, Any]]:
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise ValueError(f"must be a table or an array of tables, got {_show(value)}")
    return items


def _string_or_tables(value: object) -> list[str | Mapping[str, Any]]:
    items = [value] if isinstance(value, str | Mapping) else value
    if not isinstance(items, list) or not all(isinstance(i, str | Mapping) for i in items):
        raise ValueError(
            'must be a name, a table like { name = "x", value = "y" } or an array of them, '
            f"got {_show(value)}"
        )
    return items


def read_routes(table: _Table) -> tuple[Route, ...]:
    """``[[frontends.NAME.routes]]``: each a match (its matcher keys) and one action."""
    routes: list[Route] = []
    no_routes: list[Any] = []
    for index, item in enumerate(table.get("routes", _route_list, no_routes)):
        sub = _Table(item, f"{table.key_path('routes')}[{index}]", table.problems)
        routes.append(_route(sub, index))
    return tuple(routes)


def _route_list(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(i, Mapping) for i in value):
        raise ValueError(
            f"must be an array of tables ([[frontends.NAME.routes]]), got {_show(value)}"
        )
    return value


def _route(table: _Table, index: int) -> Route:
    name = table.get("name", _token, f"#{index}")
    match = _match(table)
    backend = table.get("backend", _str, None)
    deny = table.get("deny", _int(400, 499), None)
    redirect = _redirect(table) if "redirect" in table.data else None
    if "redirect" in table.data:
        table.known.append("redirect")
    rate_limit = read_rate_limit(table)
    given = [a for a in _ACTIONS if a in table.data]
    if len(given) != 1:
        table.problem(
            table.path,
            "needs exactly one action: backend, deny or redirect"
            + (f" (has {', '.join(given)})" if given else ""),
        )
    table.finish()
    return Route(
        name=name,
        match=match,
        backend=backend,
        deny=deny,
        redirect=redirect,
        rate_limit=rate_limit,
    )


def _match(table: _Table) -> Match:
    """The matcher keys of a route (or of its ``not`` table)."""
    none: tuple[str, ...] = ()
    no_tables: list[Mapping[str, Any]] = []
    no_items: list[str | Mapping[str, Any]] = []
    headers = [_header(table, i, t) for i, t in enumerate(table.get("header", _tables, no_tables))]
    cookies = [
        _named(table, "cookie", i, item, CookieMatch)
        for i, item in enumerate(table.get("cookie", _string_or_tables, no_items))
    ]
    params = [
        _named(table, "query_param", i, item, QueryMatch)
        for i, item in enumerate(table.get("query_param", _string_or_tables, no_items))
    ]
    negated = None
    if "not" in table.data:
        sub = table.table("not")
        negated = _match(sub)
        sub.finish()
    return Match(
        host=table.get("host", _strings, none),
        path_prefix=table.get("path_prefix", _strings, none),
        path_exact=table.get("path_exact", _strings, none),
        path_regex=table.get("path_regex", _strings, none),
        method=table.get("method", _strings, none),
        header=[h for h in headers if h is not None],
        cookie=[c for c in cookies if c is not None],
        query_param=[q for q in params if q is not None],
        src=table.get("src", _strings, none),
        sni=table.get("sni", _strings, none),
        client_cert=table.get("client_cert", _bool, None),
        not_=negated,
    )


def _header(table: _Table, index: int, item: Mapping[str, Any]) -> HeaderMatch | None:
    sub = _Table(item, f"{table.key_path('header')}[{index}]", table.problems)
    match = HeaderMatch(
        name=sub.get("name", _token, "", required=True),
        value=sub.get("value", _str, None),
        regex=sub.get("regex", _str, None),
        present=sub.get("present", _bool, None),
    )
    given = [k for k in ("value", "regex", "present") if k in item]
    if len(given) > 1:
        sub.problem(sub.path, f"give one of value, regex or present, not {' and '.join(given)}")
    sub.finish()
    return match if not given or len(given) == 1 else None


def _named(
    table: _Table, key: str, index: int, item: str | Mapping[str, Any], kind: Callable[..., Any]
) -> Any:
    if isinstance(item, str):
        return kind(name=item)
    sub = _Table(item, f"{table.key_path(key)}[{index}]", table.problems)
    result = kind(name=sub.get("name", _str, "", required=True), value=sub.get("value", _str, None))
    sub.finish()
    return result


def _redirect(table: _Table) -> RedirectRule | None:
    sub = table.table("redirect")
    rule = RedirectRule(
        location=sub.get("location", _str, None),
        prefix=sub.get("prefix", _str, None),
        scheme=sub.get("scheme", _scheme, None),
        code=sub.get("code", _redirect_code, 302),
        drop_query=sub.get("drop_query", _bool, False),
    )
    given = [k for k in ("location", "prefix", "scheme") if k in sub.data]
    if len(given) != 1:
        sub.problem(sub.path, "needs exactly one of location, prefix or scheme")
    sub.finish()
    return rule


def _scheme(value: object) -> str:
    if value not in ("http", "https"):
        raise ValueError(f'must be "http" or "https", got {_show(value)}')
    assert isinstance(value, str)
    return value


def _redirect_code(value: object) -> int:
    if isinstance(value, bool) or value not in _REDIRECT_CODES:
        raise ValueError(f"must be one of 301, 302, 303, 307, 308, got {_show(value)}")
    assert isinstance(value, int)
    return value


def read_header_rules(table: _Table, key: str) -> tuple[HeaderRule, ...]:
    """``request_headers`` / ``response_headers``: ``[{ set = ["Name", "value"] }, ...]``."""
    rules: list[HeaderRule] = []
    no_rules: list[Mapping[str, Any]] = []
    for index, item in enumerate(table.get(key, _rule_list, no_rules)):
        path = f"{table.key_path(key)}[{index}]"
        rule = _header_rule(item, path, table)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _rule_list(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(i, Mapping) for i in value):
        raise ValueError(
            f'must be an array of tables like [{{ set = ["X-A", "1"] }}], got {_show(value)}'
        )
    return value


_RULE_SHAPES = {
    "set": ('["Name", "value"]', 2),
    "add": ('["Name", "value"]', 2),
    "delete": ('"Name"', 1),
    "replace": ('["Name", "regex", "replacement"]', 3),
}


def _header_rule(item: Mapping[str, Any], path: str, table: _Table) -> HeaderRule | None:
    if len(item) != 1 or next(iter(item)) not in _RULE_SHAPES:
        table.problem(
            path,
            "must be one of { set = ... }, { add = ... }, { delete = ... }, { replace = ... }, "
            f"got {_show(item)}",
        )
        return None
    action, value = next(iter(item.items()))
    shape, size = _RULE_SHAPES[action]
    parts = [value] if isinstance(value, str) and size == 1 else value
    if (
        not isinstance(parts, list)
        or len(parts) != size
        or not all(isinstance(p, str) for p in parts)
        or not parts[0]
    ):
        table.problem(f"{path}.{action}", f"must be {shape}, got {_show(value)}")
        return None
    name = parts[0]
    if action == "set":
        return HeaderRule(action="set", name=name, value=parts[1])
    if action == "add":
        return HeaderRule(action="add", name=name, value=parts[1])
    if action == "delete":
        return HeaderRule(action="delete", name=name)
    return HeaderRule(action="replace", name=name, regex=parts[1], replacement=parts[2])


def read_error_pages(table: _Table, resolve: Callable[[str], str]) -> dict[int, str]:
    """``error_pages = { 503 = "errors/503.html" }``: each file must be readable now."""
    pages: dict[int, str] = {}
    sub = table.table("error_pages")
    for key in list(sub.data):
        path = sub.key_path(key)
        sub.known.append(key)
        if not key.isdigit() or not 400 <= int(key) <= 599:
            sub.problem(path, "the key must be a status code 400-599")
            continue
        file = sub.data[key]
        if not isinstance(file, str) or not file:
            sub.problem(path, f"must be a file path, got {_show(file)}")
            continue
        resolved = resolve(file)
        if not os.access(resolved, os.R_OK) or os.path.isdir(resolved):
            sub.problem(path, f"cannot read {resolved}")
            continue
        pages[int(key)] = resolved
    sub.finish()
    return pages
