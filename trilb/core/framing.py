"""Checks on a raw HTTP/1 request head before and after h11 parses it.

h11 is a fine parser but lenient in ways a proxy must not be (request smuggling): it joins
obs-folded lines, collapses duplicate ``Content-Length`` headers, accepts ``Content-Length``
together with ``Transfer-Encoding`` and applies its size limit only to *incomplete* heads. trilb
therefore finds the end of each head itself, bounds it, and inspects the raw bytes; h11 then parses
a head that is known to be unambiguous.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from .http1 import HeadInfo, inspect_head

__all__ = [
    "HeadProblem",
    "check_head_info",
    "check_incomplete_head",
    "check_parsed_head",
    "check_raw_head",
    "find_head_end",
]

# A head ends at the first empty line; RFC 9112 section 2.2 lets a recipient accept bare LF too.
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# A line that starts with whitespace continues the previous one (obs-fold, RFC 9112 section 5.2).
_OBS_FOLD = re.compile(rb"\n[ \t]")
_CONTENT_LENGTH = re.compile(rb"\ncontent-length[ \t]*:([^\r\n]*)", re.IGNORECASE)
_LINE_END = re.compile(rb"\r?\n")


@attrs.frozen
class HeadProblem:
    """Why a request head is refused, and the status that says so."""

    status: int
    reason: str


def find_head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """Index just past the empty line that ends the head in ``buffer``, or -1 if it has not ended.

    ``start`` lets a caller skip what it already searched (minus 3 bytes for a split terminator).
    """
    match = _HEAD_END.search(buffer, max(0, start - 3))
    return -1 if match is None else match.end()


def check_incomplete_head(
    buffer: bytes | bytearray, *, max_header_size: int, max_uri_length: int
) -> HeadProblem | None:
    """Called while a head is still arriving: is it already too large?"""
    line_end = buffer.find(b"\n")
    request_line_length = line_end if line_end >= 0 else len(buffer)
    if request_line_length > max_uri_length + 32:  # method, spaces and version need a few bytes
        return HeadProblem(414, "request line too long")
    if len(buffer) > max_header_size:
        return HeadProblem(431, "request head too large")
    return None


def check_raw_head(
    head: bytes, *, max_header_size: int, max_uri_length: int, max_headers: int
) -> HeadProblem | None:
    """Refuse what h11 would accept but a proxy must not forward.

    ``head`` is a complete head, ending with its empty line."""
    lines = _LINE_END.split(head, maxsplit=1)
    request_line = lines[0]
    parts = request_line.split(b" ")
    if len(parts) == 3 and len(parts[1]) > max_uri_length:
        return HeadProblem(414, "URI too long")
    if len(head) > max_header_size:
        return HeadProblem(431, "request head too large")
    if _OBS_FOLD.search(head):
        return HeadProblem(400, "obsolete line folding in headers")
    # Lines minus the request line and the two empty-line terminators' split products.
    if head.count(b"\n") - 2 > max_headers:
        return HeadProblem(431, "too many headers")
    lengths = _CONTENT_LENGTH.findall(head)
    if len(lengths) > 1:
        return HeadProblem(400, "duplicate Content-Length headers")
    if lengths and b"," in lengths[0]:
        return HeadProblem(400, "list-valued Content-Length")
    return None


def check_parsed_head(headers: Sequence[tuple[bytes, bytes]]) -> HeadProblem | None:
    """Checks on the header fields h11 parsed."""
    return check_head_info(inspect_head(b"1.1", headers))


def check_head_info(info: HeadInfo) -> HeadProblem | None:
    """Checks on what :func:`~trilb.core.http1.inspect_head` found."""
    if info.length >= 0 and info.chunked:
        return HeadProblem(400, "both Content-Length and Transfer-Encoding")
    return None
