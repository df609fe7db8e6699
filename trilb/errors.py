"""The exceptions trilb raises to its callers.

One root, :class:`TrilbError`, so an embedding application can catch everything trilb means to raise
with one ``except``. Callers distinguish errors by type, never by message text.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


class TrilbError(Exception):
    """Root of every error trilb raises on purpose."""


@attrs.frozen
class ConfigProblem:
    """One thing wrong with a configuration: where (``key_path``) and what."""

    key_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.key_path}: {self.message}" if self.key_path else self.message


class ConfigError(TrilbError):
    """A configuration is invalid. ``problems`` lists every problem found, not only the first."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(cls, key_path: str, message: str) -> ConfigError:
        return cls([ConfigProblem(key_path, message)])


class StartupError(TrilbError):
    """The balancer could not start: a listener could not be opened, a name not resolved."""
