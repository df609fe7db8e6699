"""SNI selection: exact, then wildcard of one label, else the default."""

from __future__ import annotations

import pytest

from trilb.core.sni import SniMap

MAP = SniMap(
    "default",
    [
        (["example.com", "www.example.com"], "site"),
        (["*.example.com"], "wild"),
        (["API.Example.com."], "api"),
        (["*.example.com", "example.org"], "later"),  # a later wildcard for a name does not win
    ],
)


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("example.com", "site"),
        ("www.example.com", "site"),  # exact beats wildcard
        ("WWW.EXAMPLE.COM.", "site"),  # case and the trailing dot do not matter
        ("a.example.com", "wild"),
        ("api.example.com", "api"),
        ("a.b.example.com", "default"),  # a wildcard covers one label only
        ("example.org", "later"),
        ("other.net", "default"),
        ("", "default"),
        (None, "default"),
        ("com", "default"),
        (".example.com", "default"),
    ],
)
def test_select(server_name: str | None, expected: str) -> None:
    assert MAP.select(server_name) == expected


def test_names_and_default() -> None:
    assert MAP.default == "default"
    assert MAP.names() == [
        "*.example.com",
        "api.example.com",
        "example.com",
        "example.org",
        "www.example.com",
    ]
