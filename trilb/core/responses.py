"""trilb's own answers: short error pages that reveal no version and no server address."""

from __future__ import annotations

from functools import cache
from http import HTTPStatus

__all__ = ["error_body", "error_headers", "raw_error_response"]


@cache
def error_body(status: int) -> bytes:
    phrase = HTTPStatus(status).phrase
    return (
        f"<!DOCTYPE html>\n<html><head><title>{status} {phrase}</title></head>"
        f"<body><h1>{status} {phrase}</h1></body></html>\n"
    ).encode("ascii")


def error_headers(status: int, *, close: bool) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Content-Length", str(len(error_body(status))).encode("ascii")),
        (b"Cache-Control", b"no-cache"),
    ]
    if close:
        headers.append((b"Connection", b"close"))
    return headers


@cache
def raw_error_response(status: int) -> bytes:
    """A complete response that closes the connection, for when no HTTP state can be trusted
    (the request could not be parsed, so h11 has nothing to answer)."""
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode("ascii")
    fields = b"".join(
        name + b": " + value + b"\r\n" for name, value in error_headers(status, close=True)
    )
    return head + fields + b"\r\n" + error_body(status)
