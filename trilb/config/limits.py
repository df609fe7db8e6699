"""The configuration of request rate limits: ``rate_limit`` on a frontend or a route.

``rate_limit = { requests = 100, period = "10s", key = "src", action = "deny", status = 429 }``
is HAProxy's ``http-request track-sc0 src`` + ``http-request deny deny_status 429 if
{ sc_http_req_rate(0) gt 100 }`` in one line. How the rate is computed is
:mod:`trilb.core.ratelimit`'s business; this module only holds and checks the values (no I/O).
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Literal

import attrs

from ..errors import ConfigProblem

__all__ = [
    "DEFAULT_RATE_TABLE_SIZE",
    "RATE_LIMIT_ACTIONS",
    "RateLimit",
    "RateLimitAction",
    "key_problem",
    "rate_limit_problems",
    "status_problem",
]

RateLimitAction = Literal["deny", "tarpit"]
RATE_LIMIT_ACTIONS: tuple[RateLimitAction, ...] = ("deny", "tarpit")

#: keys tracked at most per rate limit (HAProxy's ``stick-table size``): a flood of distinct keys
#: costs about 100 bytes each up to this, and no more (the least recently seen make room)
DEFAULT_RATE_TABLE_SIZE = 100_000

#: RFC 9110 token: what a header or cookie name may be made of
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@attrs.frozen(kw_only=True)
class RateLimit:
    """At most ``requests`` per ``period`` seconds for each value of ``key``; the requests over
    it get ``status`` at once (``deny``) or after ``timeout_tarpit`` (``tarpit``)."""

    #: requests allowed per period and key (>= 1)
    requests: int
    #: the period, seconds
    period: float
    #: what a client is: "src" (its address), "header:NAME" or "cookie:NAME" (that value). A
    #: request without the header or cookie is not limited
    key: str = "src"
    action: RateLimitAction = "deny"
    #: the answer to a request over the limit (a 4xx or 5xx)
    status: int = 429
    #: keys tracked at most
    size: int = DEFAULT_RATE_TABLE_SIZE


def key_problem(key: object) -> str | None:
    """What is wrong with a ``key`` value, or None."""
    if key == "src":
        return None
    if isinstance(key, str):
        kind, colon, name = key.partition(":")
        if colon and kind in ("header", "cookie") and _TOKEN.fullmatch(name):
            return None
        if colon and kind in ("header", "cookie"):
            return f'needs a {kind} name after "{kind}:", got {_quoted(key)}'
    return f'must be "src", "header:NAME" or "cookie:NAME", got {_quoted(key)}'


def status_problem(status: object) -> str | None:
    """What is wrong with a ``status`` value (a known 4xx or 5xx status), or None."""
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
        try:
            HTTPStatus(status)
        except ValueError:
            pass
        else:
            return None
    return f"must be a 4xx or 5xx status like 429 or 503, got {_quoted(status)}"


def rate_limit_problems(limit: RateLimit, path: str) -> list[ConfigProblem]:
    """The problems of a RateLimit built in code (the TOML loader checks each value as it reads
    it, so a loaded one has none)."""
    problems = []
    if isinstance(limit.requests, bool) or limit.requests < 1:
        problems.append(ConfigProblem(f"{path}.requests", f"must be >= 1, got {limit.requests}"))
    if not limit.period > 0:
        problems.append(
            ConfigProblem(f"{path}.period", f"must be longer than 0, got {limit.period}")
        )
    if (message := key_problem(limit.key)) is not None:
        problems.append(ConfigProblem(f"{path}.key", message))
    if limit.action not in RATE_LIMIT_ACTIONS:
        problems.append(
            ConfigProblem(
                f"{path}.action", f'must be "deny" or "tarpit", got {_quoted(limit.action)}'
            )
        )
    if (message := status_problem(limit.status)) is not None:
        problems.append(ConfigProblem(f"{path}.status", message))
    if isinstance(limit.size, bool) or limit.size < 1:
        problems.append(ConfigProblem(f"{path}.size", f"must be >= 1, got {limit.size}"))
    return problems


def _quoted(value: object) -> str:
    """A value as TOML writes it: strings in double quotes, true/false lowercase."""
    return json.dumps(value, ensure_ascii=False, default=str)
