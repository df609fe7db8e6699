"""Which certificate answers a TLS ClientHello's server name (sans-IO).

The rules of HAProxy's and nginx's certificate selection: an exact name first, then a wildcard
(``*.example.com`` stands for exactly one label: ``a.example.com``, not ``a.b.example.com`` nor
``example.com``), else the default (the first certificate configured). Names compare without case
and without a trailing dot. The map is an immutable value, so a reload can swap it whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

__all__ = ["SniMap", "normalise_name"]

T = TypeVar("T")


def normalise_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


class SniMap(Generic[T]):
    """Server name -> value (a TLS context), built once, read on every handshake."""

    __slots__ = ("_default", "_exact", "_wildcard")

    def __init__(self, default: T, entries: Iterable[tuple[Iterable[str], T]]) -> None:
        exact: dict[str, T] = {}
        wildcard: dict[str, T] = {}
        for names, value in entries:
            for raw in names:
                name = normalise_name(raw)
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], value)  # the first certificate for a name wins
                else:
                    exact.setdefault(name, value)
        self._default = default
        self._exact: Mapping[str, T] = exact
        self._wildcard: Mapping[str, T] = wildcard

    @property
    def default(self) -> T:
        return self._default

    def select(self, server_name: str | None) -> T:
        """The value for ``server_name``; no name (an IP-address client, an old one) -> default."""
        if not server_name:
            return self._default
        name = normalise_name(server_name)
        found = self._exact.get(name)
        if found is not None:
            return found
        label, _, parent = name.partition(".")
        if label and parent:
            found = self._wildcard.get(parent)
            if found is not None:
                return found
        return self._default

    def names(self) -> list[str]:
        """Every name the map answers for, wildcards as ``*.domain``."""
        return sorted([*self._exact, *(f"*.{d}" for d in self._wildcard)])
