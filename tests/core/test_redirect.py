"""http -> https redirects: the Location and the status."""

from __future__ import annotations

import pytest

from trilb.core.redirect import https_location, redirect_status


@pytest.mark.parametrize(
    ("host", "target", "port", "expected"),
    [
        (b"example.com", b"/a/b?c=1", 443, b"https://example.com/a/b?c=1"),
        (b"example.com:80", b"/", 443, b"https://example.com/"),
        (b"example.com:8080", b"/x", 8443, b"https://example.com:8443/x"),
        (b"[::1]:8080", b"/x", 8443, b"https://[::1]:8443/x"),
        (b"[::1]", b"/x", 443, b"https://[::1]/x"),
        (None, b"/x", 443, b"https://10.0.0.1/x"),
        (b"example.com", b"http://example.com/p?q", 443, b"https://example.com/p?q"),
        (b"example.com", b"http://example.com", 443, b"https://example.com/"),
        (b"example.com", b"*", 443, b"https://example.com/"),
    ],
)
def test_https_location(host: bytes | None, target: bytes, port: int, expected: bytes) -> None:
    assert https_location(host, target, port, "10.0.0.1") == expected


@pytest.mark.parametrize(
    ("method", "code", "expected"),
    [
        (b"GET", None, 301),
        (b"HEAD", None, 301),
        (b"POST", None, 308),
        (b"PUT", None, 308),
        (b"GET", 302, 302),
        (b"POST", 307, 307),
    ],
)
def test_redirect_status(method: bytes, code: int | None, expected: int) -> None:
    assert redirect_status(method, code) == expected
