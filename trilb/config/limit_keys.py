"""Reading ``rate_limit`` tables (a frontend's and a route's) from TOML; see ``limits.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .limits import (
    DEFAULT_RATE_TABLE_SIZE,
    RATE_LIMIT_ACTIONS,
    RateLimit,
    key_problem,
    status_problem,
)
from .reader import _choice, _duration, _int, _show, _Table

__all__ = ["read_rate_limit"]

_SHAPE = '{ requests = 100, period = "10s" }'
_ACTION = _choice(RATE_LIMIT_ACTIONS)


def read_rate_limit(table: _Table) -> RateLimit | None:
    """``rate_limit = { requests, period, key, action, status, size }`` in ``table``, or None
    when it is absent (or so broken that it was reported and nothing more can be read)."""
    data = table.get("rate_limit", _mapping, None)
    if data is None:
        return None
    sub = _Table(data, table.key_path("rate_limit"), table.problems)
    result = RateLimit(
        requests=sub.get("requests", _int(1), 1, required=True),
        period=sub.get("period", _duration, 1.0, required=True),
        key=sub.get("key", _key, "src"),
        action=sub.get("action", _ACTION, "deny"),
        status=sub.get("status", _status, 429),
        size=sub.get("size", _int(1), DEFAULT_RATE_TABLE_SIZE),
    )
    sub.finish()
    return result


def _mapping(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a table like {_SHAPE}, got {_show(value)}")
    return value


def _key(value: object) -> str:
    message = key_problem(value)
    if message is not None:
        raise ValueError(message)
    assert isinstance(value, str)
    return value


def _status(value: object) -> int:
    message = status_problem(value)
    if message is not None:
        raise ValueError(message)
    assert isinstance(value, int)
    return value
