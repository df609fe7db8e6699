"""Header rules (sans-IO): HAProxy's ``http-request``/``http-response`` ``set-header``,
``add-header``, ``del-header`` and ``replace-header``, and the request id.

Rules are compiled once (:func:`compile_header_rules`): names checked, regular expressions compiled,
``%[...]`` variables resolved, so an unknown variable or a value that could split a header (CR,
LF, NUL) is a configuration error, not a surprise on the wire. Per request the shell fills a
:class:`Variables` and calls :func:`apply_header_rules`, in order:

* ``set``: every header of that name goes, one with the value is appended (HAProxy does the same);
* ``add``: one more header, appended;
* ``delete``: every header of that name goes;
* ``replace``: ``re.sub(regex, replacement, value)`` on each header of that name; the replacement
  may use ``\\1`` or ``\\g<name>`` for groups and ``\\\\`` for a backslash, nothing else, so it can
  never produce a control character.

Names compare without case. Values are bytes, one configuration character per byte (latin-1).
``Content-Length`` and ``Transfer-Encoding`` are refused: the body's framing is trilb's (and
h11's) to write, and a rule that changed it would make the two hops disagree on where a message
ends — request smuggling.

Variables: ``%[src]`` (the client's address), ``%[ssl_fc]`` (``1`` over TLS, else ``0``),
``%[req.host]`` (the host as the client sent it, port included), ``%[unique_id]`` (the request
id); ``%%`` is a literal ``%``.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs

from ..config.routes import HeaderRule
from ..errors import ConfigError, ConfigProblem
from .routing import _TOKEN, RequestView, _latin1, _regex, _show

__all__ = [
    "CompiledHeaderRule",
    "Variables",
    "apply_header_rules",
    "compile_header_rules",
    "take_request_id",
    "unique_id",
    "valid_request_id",
    "variables_for",
]

Header = tuple[bytes, bytes]
T = TypeVar("T")

#: a request id may be this long: room for any UUID, ULID or trace id, and no more in every log line
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z/=:@-]+")
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every control character but HTAB
_VARIABLE = re.compile(r"%%|%\[([^\]]*)\]|%\[")
_GROUP = re.compile(r"\\(?:([1-9][0-9]?)|g<([^>]*)>|(\\)|(.?))", re.DOTALL)


@attrs.frozen(kw_only=True)
class Variables:
    """What ``%[...]`` expands to for one request (the shell fills it: :func:`variables_for`)."""

    src: str = ""  # the client's IP address
    ssl_fc: bool = False  # the client connection is TLS
    req_host: bytes = b""  # the host as sent, port included; empty without one
    unique_id: bytes = b""  # the request id


def variables_for(view: RequestView, *, tls: bool, unique_id: bytes = b"") -> Variables:
    """The variables of the request ``view`` describes, over TLS or not."""
    return Variables(
        src=view.client_ip, ssl_fc=tls, req_host=view.authority or b"", unique_id=unique_id
    )


_VARIABLES: dict[str, Callable[[Variables], bytes]] = {
    "src": lambda v: v.src.encode("latin-1"),
    "ssl_fc": lambda v: b"1" if v.ssl_fc else b"0",
    "req.host": lambda v: v.req_host,
    "unique_id": lambda v: v.unique_id,
}

#: a value: literal bytes and variables
Template = tuple[bytes | Callable[[Variables], bytes], ...]
#: a replacement: literal bytes and group references (a number or a name)
Replacement = tuple[bytes | int | str, ...]


@attrs.frozen(kw_only=True)
class CompiledHeaderRule:
    rule: HeaderRule
    name: bytes  # as configured, for set and add
    lower: bytes
    value: Template = ()  # set / add
    regex: re.Pattern[bytes] | None = None  # replace
    replacement: Replacement = ()  # replace

    def expand(self, variables: Variables) -> bytes:
        return b"".join(p if isinstance(p, bytes) else p(variables) for p in self.value)

    def replace(self, value: bytes) -> bytes:
        assert self.regex is not None
        return self.regex.sub(self._substitute, value).strip(b" \t")

    def _substitute(self, match: re.Match[bytes]) -> bytes:
        return b"".join(
            p if isinstance(p, bytes) else match.group(p) or b"" for p in self.replacement
        )


def apply_header_rules(
    rules: Sequence[CompiledHeaderRule], headers: list[Header], variables: Variables
) -> list[Header]:
    """``headers`` with the rules applied in order; a new list (``headers`` is not changed)."""
    out = list(headers)
    for rule in rules:
        action, lower = rule.rule.action, rule.lower
        if action == "add":
            out.append((rule.name, rule.expand(variables)))
        elif action == "replace":
            for index, (name, value) in enumerate(out):
                if name.lower() == lower:
                    out[index] = (name, rule.replace(value))
        else:  # set, delete
            out = [(name, value) for name, value in out if name.lower() != lower]
            if action == "set":
                out.append((rule.name, rule.expand(variables)))
    return out


def compile_header_rules(
    rules: Sequence[HeaderRule], key_path: str
) -> tuple[CompiledHeaderRule, ...]:
    """Compile ``request_headers``/``response_headers`` rules (``key_path`` like
    ``"frontends.web.request_headers"``), or raise one :class:`ConfigError` with every problem,
    at the key path of the TOML element: ``...[2].set[1]`` is the value of the third rule."""
    problems: list[ConfigProblem] = []
    compiled = []
    for index, rule in enumerate(rules):
        count = len(problems)
        compiled_rule = _compile_rule(rule, f"{key_path}[{index}]", problems)
        if len(problems) == count:
            compiled.append(compiled_rule)
    if problems:
        raise ConfigError(problems)
    return tuple(compiled)


def _compile_rule(
    rule: HeaderRule, where: str, problems: list[ConfigProblem]
) -> CompiledHeaderRule:
    def check(path: str, compile_: Callable[[str], T], text: str, default: T) -> T:
        try:
            return compile_(text)
        except ValueError as exc:
            problems.append(ConfigProblem(path, str(exc)))
            return default

    if rule.action not in ("set", "add", "delete", "replace"):
        message = f"must be one of set, add, delete or replace, got {_show(rule.action)}"
        problems.append(ConfigProblem(where, message))
    where += f".{rule.action}"
    name_path = where if rule.action == "delete" else f"{where}[0]"
    lower = rule.name.lower().encode("latin-1", "replace")
    if not _TOKEN.fullmatch(rule.name):
        message = f'must be a header name like "X-Request-ID", got {_show(rule.name)}'
        problems.append(ConfigProblem(name_path, message))
    elif lower in _FRAMING:
        message = f"{rule.name} frames the body: trilb writes it, a header rule must not"
        problems.append(ConfigProblem(name_path, message))
    value: Template = ()
    regex = None
    replacement: Replacement = ()
    if rule.action in ("set", "add"):
        value = check(f"{where}[1]", _template, rule.value, ())
    elif rule.action == "replace":
        regex = check(f"{where}[1]", _regex, rule.regex, None)
        if regex is not None:
            compile_ = functools.partial(_replacement, regex=regex)
            replacement = check(f"{where}[2]", compile_, rule.replacement, ())
    return CompiledHeaderRule(
        rule=rule,
        name=rule.name.encode("latin-1", "replace"),
        lower=lower,
        value=value,
        regex=regex,
        replacement=replacement,
    )


def _literal(text: str) -> bytes:
    if _CONTROL.search(text):
        raise ValueError(f"must not contain CR, LF, NUL or other control characters: {_show(text)}")
    return _latin1(text)


def _template(text: str) -> Template:
    """``"id=%[unique_id]; tls=%[ssl_fc]"`` -> literal bytes and variable getters."""
    text = text.strip(" \t")  # h11 refuses a value with leading or trailing whitespace
    parts: list[bytes | Callable[[Variables], bytes]] = []
    start = 0
    for found in _VARIABLE.finditer(text):
        parts.append(_literal(text[start : found.start()]))
        start = found.end()
        if found[0] == "%%":
            parts.append(b"%")
        elif found[1] is None:
            raise ValueError(f'has a "%[" without its "]": {_show(text)}')
        elif found[1] not in _VARIABLES:
            close = difflib.get_close_matches(found[1], _VARIABLES, n=1)
            hint = f" (did you mean %[{close[0]}]?)" if close else ""
            known = ", ".join(f"%[{name}]" for name in _VARIABLES)
            raise ValueError(f"has an unknown variable %[{found[1]}]{hint}; known: {known}")
        else:
            parts.append(_VARIABLES[found[1]])
    parts.append(_literal(text[start:]))
    merged: list[bytes | Callable[[Variables], bytes]] = []
    for part in parts:  # "a" "%" "b" -> "a%b": fewer pieces to join per request
        if isinstance(part, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += part
        else:
            merged.append(part)
    return tuple(p for p in merged if p != b"")


def _replacement(text: str, *, regex: re.Pattern[bytes]) -> Replacement:
    """``"\\1; path=/"`` -> literal bytes and group references, checked against ``regex``."""
    parts: list[bytes | int | str] = []
    start = 0
    for found in _GROUP.finditer(text):
        parts.append(_literal(text[start : found.start()]))
        start = found.end()
        number, name, backslash, other = found.groups()
        if backslash:
            parts.append(b"\\")
        elif number or (name and name.isdigit()):
            group = int(number or name)
            if group > regex.groups:
                raise ValueError(f"refers to group {group}, but the regex has {regex.groups}")
            parts.append(group)
        elif name:
            if name not in regex.groupindex:
                raise ValueError(f"refers to group <{name}>, which the regex does not name")
            parts.append(name)
        else:
            raise ValueError(
                f"has an unsupported escape \\{other} in {_show(text)}: use \\1 or \\g<name> "
                "for a group and \\\\ for a backslash"
            )
    parts.append(_literal(text[start:]))
    return tuple(p for p in parts if p != b"")


def unique_id() -> bytes:
    """A new request id: 128 random bits as 32 hex digits."""
    return os.urandom(16).hex().encode("ascii")


def valid_request_id(value: bytes) -> bool:
    """Whether a client's own request id may be kept (``trust_request_id``): 1 to 128 token
    characters (and ``/=:@``, for base64 and trace ids), nothing that could break a log line."""
    return len(value) <= MAX_REQUEST_ID and _REQUEST_ID.fullmatch(value) is not None


def take_request_id(
    headers: list[Header], *, name: bytes = b"X-Request-ID", trust: bool = False
) -> tuple[bytes, list[Header]]:
    """The request id and the headers to forward with exactly one ``name`` header carrying it:
    the client's first one when ``trust`` and it is valid, else a new :func:`unique_id`."""
    lower = name.lower()
    theirs = [value for header, value in headers if header.lower() == lower]
    keep = trust and theirs and valid_request_id(theirs[0])
    request_id = theirs[0] if keep else unique_id()
    out = [(header, value) for header, value in headers if header.lower() != lower]
    out.append((name, request_id))
    return request_id, out
