"""Parsers for the small value syntaxes of the config: addresses, port ranges, durations, sizes.

Each parser raises :class:`ValueError` with a message that completes the sentence
"<key path>: ..."; the loader adds the key path.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable

import attrs

from ..errors import ConfigError

__all__ = ["Address", "parse_binds", "parse_duration", "parse_size"]

#: the most ports one range may open, so a typo like 1-65535 is caught rather than obeyed
MAX_PORT_RANGE = 1024

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(?:([kmg])(?:i?b)?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _quote(value: object) -> str:
    """A value as the user wrote it in TOML: strings in double quotes, true/false lowercase."""
    return json.dumps(value, ensure_ascii=False, default=str)


def parse_duration(text: str) -> float:
    """ "250ms", "5s", "2m", "1h", "1d" -> seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f'must be a duration like "250ms", "5s", "2m" or "1h", got {_quote(text)}')
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(value: int | str) -> int:
    """A byte count: an integer, or a string like "64k" / "16MiB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'must be a byte count like 65536 or "64k", got {_quote(value)}')
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]


@attrs.frozen(kw_only=True)
class Address:
    """Where to listen or connect: a host and port, or a unix socket path.

    ``host=None`` (written "*:80" or ":80") means every local address, IPv4 and IPv6.
    """

    host: str | None = None
    port: int = 0
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        if self.host is None:
            return f"*:{self.port}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def for_server(cls, value: str | Address) -> Address:
        """Converter for a server address: "host:port", "[v6]:port" or "unix:/path"."""
        if isinstance(value, Address):
            return value
        try:
            (address,) = _parse(value, bind=False)
        except ValueError as exc:
            raise ConfigError.single("address", str(exc)) from None
        return address


def parse_address(text: str, *, bind: bool) -> list[Address]:
    """Parse one address; for a bind a port range gives several. Raises ValueError."""
    return _parse(text, bind=bind)


def _parse(text: str, *, bind: bool) -> list[Address]:
    if not isinstance(text, str):
        raise ValueError(f'must be an address string like "127.0.0.1:8080", got {_quote(text)}')
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise ValueError(
                f'a unix socket address needs a path, like "unix:/run/x.sock", got {_quote(text)}'
            )
        return [Address(path=path)]
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f'an IPv6 address must look like "[::1]:8443", got {_quote(text)}')
        _check_ip(host, text, version=6)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f'must be "host:port", got {_quote(text)} (no port)')
        if ":" in host:
            raise ValueError(
                f'an IPv6 address must be in brackets, like "[::1]:8443", got {_quote(text)}'
            )
    if host in ("", "*"):
        if not bind:
            raise ValueError(f"a server address needs a host, got {_quote(text)}")
        host_or_any: str | None = None
    else:
        host_or_any = host
    first, last = _ports(port_text, text, allow_range=bind)
    return [Address(host=host_or_any, port=port) for port in range(first, last + 1)]


def _check_ip(host: str, text: str, *, version: int) -> None:
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{_quote(host)} is not a valid IP address in {_quote(text)}") from None
    if parsed.version != version:
        raise ValueError(f"{_quote(host)} is not an IPv{version} address in {_quote(text)}")


def _ports(port_text: str, text: str, *, allow_range: bool) -> tuple[int, int]:
    low, dash, high = port_text.partition("-")
    if dash and not allow_range:
        raise ValueError(f"a port range is only allowed for bind addresses, got {_quote(text)}")
    try:
        first = int(low)
        last = int(high) if dash else first
    except ValueError:
        raise ValueError(f"the port must be a number 0-65535, got {_quote(text)}") from None
    if not (0 <= first <= 65535 and 0 <= last <= 65535):
        raise ValueError(f"the port must be a number 0-65535, got {_quote(text)}")
    if last < first:
        raise ValueError(f"the port range is backwards in {_quote(text)}")
    if last - first + 1 > MAX_PORT_RANGE:
        raise ValueError(
            f"a port range may span at most {MAX_PORT_RANGE} ports, got {_quote(text)}"
        )
    if dash and first == 0:
        raise ValueError(f"a port range cannot start at port 0, got {_quote(text)}")
    if first == 0 and not allow_range:
        # port 0 means "any free port" when listening; a connection to it can only fail
        raise ValueError(f"a server address needs a port 1-65535, got {_quote(text)}")
    return first, last


def parse_binds(value: str | Address | Iterable[str | Address]) -> tuple[Address, ...]:
    """Converter for ``bind``: one or more addresses; port ranges expand to one address a port."""
    items: Iterable[str | Address] = [value] if isinstance(value, str | Address) else value
    result: list[Address] = []
    for index, item in enumerate(items):
        if isinstance(item, Address):
            result.append(item)
            continue
        try:
            result.extend(_parse(item, bind=True))
        except ValueError as exc:
            raise ConfigError.single(f"bind[{index}]", str(exc)) from None
    return tuple(result)
