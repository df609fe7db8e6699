"""Reading ``health_check``'s protocol keys: their checkers, and which keys go with which type.

Every type has ``type``, the intervals, ``timeout``, ``fall``, ``rise``, ``port`` and
``address``; the others belong to one type each (:data:`TYPE_KEYS`), and a key given for
another type is a problem naming both ("is for type "http" (this is "redis")"), since it would
silently do nothing.
"""

from __future__ import annotations

import re

from .model import HealthCheck
from .reader import _show, _str, _Table

__all__ = [
    "TYPE_KEYS",
    "bytes_regex",
    "check_type_keys",
    "ehlo_domain",
    "mysql_user",
    "read_bytes",
]

#: the keys of each check type beyond those every type has ("tcp", "tls", "redis": none)
TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "http": ("method", "path", "host", "expect_status", "expect_body", "expect_body_regex"),
    "send_expect": ("send", "send_hex", "expect", "expect_hex", "expect_regex"),
    "mysql": ("user", "post_41"),
    "smtp": ("domain",),
}

_OWNER = {key: check_type for check_type, keys in TYPE_KEYS.items() for key in keys}

#: MariaDB allows user names of up to 80 characters (MySQL: 32)
_USER_LIMIT = 80

#: what EHLO may name: a domain or an address literal, printable ASCII without spaces
_DOMAIN = re.compile(r"[!-~]+")


def read_bytes(sub: _Table, key: str, hex_key: str) -> bytes | None:
    """``key`` as a TOML string (its UTF-8 bytes; TOML escapes like ``\\r\\n`` work), or
    ``hex_key`` as hex digits for binary; giving both is a problem."""
    text = sub.get(key, _text_bytes, None)
    raw = sub.get(hex_key, _hex_bytes, None)
    if text is not None and raw is not None:
        sub.problem(sub.key_path(hex_key), f"give {key} or {hex_key}, not both")
    return text if text is not None else raw


def check_type_keys(sub: _Table, check: HealthCheck) -> None:
    """Report keys of another type than ``check.type``, and what its type misses. Keys whose
    value was already reported as bad are left alone (one problem at a time), and so is all of
    it when ``type`` itself is bad."""
    if sub.data.get("type", check.type) != check.type:
        return  # an unknown type: reported already, and any key might be meant for it
    reported = {problem.key_path for problem in sub.problems}
    default = "" if "type" in sub.data else ", the default"
    for key in sub.data:
        owner = _OWNER.get(key)
        if owner is None or owner == check.type or sub.key_path(key) in reported:
            continue
        sub.problem(sub.key_path(key), f'is for type "{owner}" (this is "{check.type}"{default})')
    if check.type == "send_expect" and not any(
        key in sub.data for key in ("expect", "expect_hex", "expect_regex")
    ):
        sub.problem(
            sub.key_path("expect"), 'required for type "send_expect" (or expect_hex, expect_regex)'
        )
    if check.type == "mysql" and "post_41" in sub.data and "user" not in sub.data:
        sub.problem(sub.key_path("post_41"), "only with user: it chooses the login packet")


# Checkers: a TOML value in, the model's value out, or ValueError completing "key.path: ...".


def _text_bytes(value: object) -> bytes:
    return _str(value).encode()


def _hex_bytes(value: object) -> bytes:
    try:
        if not isinstance(value, str):
            raise ValueError
        data = bytes.fromhex(value)
        if not data:
            raise ValueError
    except ValueError:
        raise ValueError(
            f'must be bytes in hex like "0d0a" or "50 49 4e 47", got {_show(value)}'
        ) from None
    return data


def bytes_regex(value: object) -> str:
    """A regular expression matched against bytes: its UTF-8 encoding must compile."""
    text = _str(value)
    try:
        re.compile(text.encode())
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc}): {_show(value)}") from None
    return text


def mysql_user(value: object) -> str:
    text = _str(value)
    if "\x00" in text or len(text) > _USER_LIMIT:
        raise ValueError(
            f"must be a MySQL user name (1-{_USER_LIMIT} characters, no NUL), got {_show(value)}"
        )
    return text


def ehlo_domain(value: object) -> str:
    if not isinstance(value, str) or not _DOMAIN.fullmatch(value):
        raise ValueError(
            'must be a domain or an address literal like "lb1.example.com" or "[10.0.0.5]", '
            f"got {_show(value)}"
        )
    return value
