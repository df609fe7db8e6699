"""Reading TOML tables with key paths: the typed getters and value checkers of the loader.

A :class:`_Table` never raises for a bad value: it records a :class:`ConfigProblem` with the full
key path and hands back the default, so one reading finds every problem. The checkers take a
TOML value and return the model's value, or raise ValueError with a message that completes
"key.path: ...". (Names keep their leading underscore: they are the config package's own.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

from .._version import __version__
from ..errors import ConfigProblem
from .model import REDIRECT_CODES, did_you_mean
from .values import parse_duration, parse_size

T = TypeVar("T")


S = TypeVar("S", bound=str)


_PLANNED = "not supported yet in trilb {}.{} (planned)".format(*__version__.split(".")[:2])


#: HAProxy's rule for names; they appear in logs, stats and (later) cookies, so no spaces or quotes
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


_EMPTY: Mapping[str, Any] = {}


#: error messages show at most this much of a value, so a huge inline table stays one line
_SHOW_LIMIT = 60


def _show(value: object) -> str:
    """A value spelled the way TOML writes it (strings in double quotes), so users can find it."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = "{ " + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + " }"
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(item) for item in value) + "]"
    else:  # numbers, dates and times print as TOML writes them
        text = str(value)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


@attrs.define
class _Table:
    """One TOML table being read. Getters record problems instead of raising, so one pass finds all.

    Every key a getter is asked for is a key valid here; :meth:`finish` reports the others.
    """

    data: Mapping[str, Any]
    path: str
    problems: list[ConfigProblem]
    planned: tuple[str, ...] = ()
    known: list[str] = attrs.field(factory=list, init=False)

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key_path: str, message: str) -> None:
        self.problems.append(ConfigProblem(key_path, message))

    def get(self, key: str, check: Callable[[Any], T], default: T, *, required: bool = False) -> T:
        """``check(value)`` for a key that is present, else ``default``; problems are recorded."""
        self.known.append(key)
        if key not in self.data:
            if required:
                self.problem(self.key_path(key), "required")
            return default
        try:
            return check(self.data[key])
        except ValueError as exc:
            self.problem(self.key_path(key), str(exc))
            return default

    def table(self, key: str) -> _Table:
        """A sub-table; an empty one when it is absent or not a table."""
        return _Table(self.get(key, _mapping, _EMPTY), self.key_path(key), self.problems)

    def named(self, key: str, planned: tuple[str, ...]) -> list[tuple[str, _Table | None]]:
        """The entries of a table of named tables (``[frontends.NAME]``); None for a broken one."""
        entries = self.table(key)
        result: list[tuple[str, _Table | None]] = []
        for name, value in entries.data.items():
            path = entries.key_path(name)
            try:
                _name(name)
            except ValueError as exc:
                self.problem(path, f"the name {exc}")
            if isinstance(value, Mapping):
                result.append((name, _Table(value, path, self.problems, planned)))
            else:
                self.problem(path, f"must be a table ([{path}]), got {_show(value)}")
                result.append((name, None))
        return result

    def flag_or_table(self, key: str, shape: str) -> _Table | bool:
        """``key = true | false | { ... }``: the flag (absent: False), or the table to read."""

        def check(value: object) -> bool | Mapping[str, Any]:
            if isinstance(value, bool | Mapping):
                return value
            raise ValueError(f"must be true, false or a table like {shape}, got {_show(value)}")

        off: bool | Mapping[str, Any] = False
        value = self.get(key, check, off)
        if isinstance(value, bool):
            return value
        return _Table(value, self.key_path(key), self.problems)

    def finish(self) -> None:
        """Report every key no getter asked for."""
        for key in self.data:
            if key in self.known:
                continue
            if key in self.planned:
                self.problem(self.key_path(key), _PLANNED)
            else:
                hint = did_you_mean(key, [*self.known, *self.planned])
                self.problem(self.key_path(key), f"unknown key{hint}")


# Checkers: take a TOML value, return the model's value or raise ValueError with a message that
# completes "key.path: ...".


def _mapping(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a table, got {_show(value)}")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {_show(value)}")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(
            f'must be made of letters, digits, "-", "_", "." and ":", got {_show(value)}'
        )
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_show(value)}")
    return value


def _int(low: int, high: int | None = None) -> Callable[[object], int]:
    want = f"an integer {low}-{high}" if high is not None else f"an integer >= {low}"

    def check(value: object) -> int:
        # TOML's true is a Python bool, which is an int: refuse it explicitly
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            raise ValueError(f"must be {want}, got {_show(value)}")
        return value

    return check


def _duration(value: object) -> float:
    if not isinstance(value, str):
        raise ValueError(f'must be a duration string like "5s" or "250ms", got {_show(value)}')
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be longer than 0, got {_show(value)}")
    return seconds


def _size(low: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f'must be a byte count like 65536 or "64k", got {_show(value)}')
        size = parse_size(value)
        if size < low:
            raise ValueError(f"must be at least {low} bytes, got {_show(value)}")
        return size

    return check


def _choice(choices: tuple[S, ...], planned: tuple[str, ...] = ()) -> Callable[[object], S]:
    """One of ``choices``; a ``planned`` value (or prefix, when it ends with ":") is not-yet."""
    supported = ", ".join(_show(choice) for choice in choices)

    def check(value: object) -> S:
        for choice in choices:
            if value == choice:
                return choice
        if isinstance(value, str) and any(
            value == p or (p.endswith(":") and value.startswith(p)) for p in planned
        ):
            raise ValueError(f"{_show(value)} is {_PLANNED}; supported now: {supported}")
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"must be one of {supported}, got {_show(value)}{hint}")

    return check


def _seconds(value: object) -> int:
    """A number of seconds, or a duration string ("1h")."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        return int(parse_duration(value))
    raise ValueError(f'must be seconds or a duration like "1h", got {_show(value)}')


def _status_ranges(value: object) -> tuple[tuple[int, int], ...]:
    """ "200-399", "200,301-302", or a number."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise ValueError(f'must be status codes like "200-399" or "200,302", got {_show(value)}')
    ranges = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise ValueError(
                f'must be status codes like "200-399" or "200,302", got {_show(value)}'
            ) from None
        if not 100 <= first <= last <= 599:
            raise ValueError(f"must be status codes within 100-599, got {_show(value)}")
        ranges.append((first, last))
    return tuple(ranges)


def _method(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(f'must be an HTTP method like "GET" or "HEAD", got {_show(value)}')
    return value


def _check_path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in " \r\n"):
        raise ValueError(f'must be a path like "/health", got {_show(value)}')
    return value


def _regex(value: object) -> str:
    text = _str(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc}): {_show(value)}") from None
    return text


def _redirect_code(value: object) -> int:
    if isinstance(value, bool) or value not in REDIRECT_CODES:
        codes = ", ".join(map(str, REDIRECT_CODES))
        raise ValueError(f"must be one of {codes}, got {_show(value)}")
    assert isinstance(value, int)
    return value


def _token(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(
            f"must be a token (letters, digits and !#$%&'*+.^_`|~-), got {_show(value)}"
        )
    return value


def _header_name(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(f'must be a header name like "X-Client-Cert", got {_show(value)}')
    return value


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
