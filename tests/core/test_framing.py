"""trilb.core.framing: finding and checking raw request heads (sans-IO, table-driven)."""

from __future__ import annotations

import pytest

from trilb.core.framing import (
    HeadProblem,
    check_incomplete_head,
    check_parsed_head,
    check_raw_head,
    find_head_end,
)

HEAD = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
LF_HEAD = b"GET / HTTP/1.1\nHost: a\n\n"

# -- find_head_end --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buffer", "expected"),
    [
        pytest.param(HEAD, len(HEAD), id="crlf"),
        pytest.param(LF_HEAD, len(LF_HEAD), id="bare-lf"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\n\r\n", 26, id="lf-then-crlf"),
        pytest.param(b"GET / HTTP/1.1\nHost: a\r\n\n", 25, id="crlf-then-lf"),
        pytest.param(HEAD + b"hello body", len(HEAD), id="body-follows"),
        pytest.param(HEAD + HEAD, len(HEAD), id="pipelined-first-head"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n", -1, id="incomplete"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n\r", -1, id="incomplete-cr"),
        pytest.param(b"", -1, id="empty"),
        pytest.param(b"\r\n\r\n", 4, id="only-terminator"),
    ],
)
def test_find_head_end(buffer: bytes, expected: int) -> None:
    assert find_head_end(buffer) == expected
    assert find_head_end(bytearray(buffer)) == expected


@pytest.mark.parametrize("split", range(1, len(HEAD)))
def test_find_head_end_split_across_reads(split: int) -> None:
    """A caller searches the first part, then resumes at ``start=len(first part)``: the
    terminator is found wherever the split falls, even inside it."""
    first = HEAD[:split]
    buffer = bytearray(first)
    assert find_head_end(buffer) == -1
    buffer += HEAD[split:]
    assert find_head_end(buffer, len(first)) == len(HEAD)


@pytest.mark.parametrize("split", range(1, len(LF_HEAD)))
def test_find_head_end_split_bare_lf(split: int) -> None:
    buffer = bytearray(LF_HEAD[:split])
    assert find_head_end(buffer) == -1
    buffer += LF_HEAD[split:]
    assert find_head_end(buffer, split) == len(LF_HEAD)


def test_find_head_end_start_past_terminator_skips_it() -> None:
    """``start`` means "already searched": a terminator wholly before start - 3 is not found."""
    buffer = HEAD + b"X-Junk"
    assert find_head_end(buffer, len(buffer)) == -1


# -- check_incomplete_head ------------------------------------------------------------------------

LIMITS = {"max_header_size": 1000, "max_uri_length": 100}


@pytest.mark.parametrize(
    ("buffer", "expected"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n", None, id="clean"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"GET /" + b"a" * 95, None, id="long-line-within-limit"),
        pytest.param(b"GET /" + b"a" * 127, None, id="line-at-limit-plus-32"),
        pytest.param(b"GET /" + b"a" * 128, 414, id="line-without-end-too-long"),
        pytest.param(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n", 414, id="line-with-end-too-long"),
        pytest.param(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 164, None, id="head-at-limit"),
        pytest.param(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 165, 431, id="head-too-large"),
        pytest.param(b"GET / HTTP/1.1\r\nX: " + b"y" * 2000, 431, id="one-huge-header"),
    ],
)
def test_check_incomplete_head(buffer: bytes, expected: int | None) -> None:
    problem = check_incomplete_head(buffer, **LIMITS)
    assert (problem.status if problem else None) == expected


def test_check_incomplete_head_long_line_wins_over_size() -> None:
    problem = check_incomplete_head(b"GET /" + b"a" * 5000, **LIMITS)
    assert problem is not None
    assert problem.status == 414


# -- check_raw_head -------------------------------------------------------------------------------

RAW_LIMITS = {"max_header_size": 2000, "max_uri_length": 100, "max_headers": 10}


def _head(*lines: bytes, request_line: bytes = b"GET / HTTP/1.1", eol: bytes = b"\r\n") -> bytes:
    return eol.join([request_line, *lines]) + eol + eol


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        pytest.param(_head(b"Host: a"), None, id="clean"),
        pytest.param(_head(b"Host: a", eol=b"\n"), None, id="clean-bare-lf"),
        pytest.param(_head(b"Host: a", b"Content-Length: 5"), None, id="one-content-length"),
        pytest.param(
            _head(b"Host: a", b"Transfer-Encoding: chunked"), None, id="transfer-encoding"
        ),
        pytest.param(
            _head(b"Host: a", request_line=b"GET /" + b"a" * 99 + b" HTTP/1.1"),
            None,
            id="uri-at-limit",
        ),
        pytest.param(
            _head(b"Host: a", request_line=b"GET /" + b"a" * 100 + b" HTTP/1.1"),
            414,
            id="uri-too-long",
        ),
        pytest.param(_head(b"Host: a", b"X: " + b"y" * 2000), 431, id="head-too-large"),
        pytest.param(_head(b"Host: a", b"X-A: 1", b"  continued"), 400, id="obs-fold-space"),
        pytest.param(_head(b"Host: a", b"X-A: 1", b"\tcontinued"), 400, id="obs-fold-tab"),
        pytest.param(
            _head(b"Host: a", b"X-A: 1", b" continued", eol=b"\n"), 400, id="obs-fold-bare-lf"
        ),
        pytest.param(_head(*[b"X-%d: 1" % i for i in range(10)]), None, id="max-headers-exactly"),
        pytest.param(_head(*[b"X-%d: 1" % i for i in range(11)]), 431, id="too-many-headers"),
        pytest.param(
            _head(*[b"X-%d: 1" % i for i in range(11)], eol=b"\n"),
            431,
            id="too-many-headers-bare-lf",
        ),
        pytest.param(
            _head(b"Host: a", b"Content-Length: 5", b"Content-Length: 5"),
            400,
            id="duplicate-equal-content-length",
        ),
        pytest.param(
            _head(b"Host: a", b"Content-Length: 5", b"content-length: 6"),
            400,
            id="duplicate-content-length-other-case",
        ),
        pytest.param(
            _head(b"Host: a", b"Content-Length : 5", b"Content-Length: 5"),
            400,
            id="duplicate-content-length-space-before-colon",
        ),
        pytest.param(_head(b"Host: a", b"Content-Length: 5, 5"), 400, id="list-content-length"),
        pytest.param(_head(b"Host: a", b"Content-Length: 5,5"), 400, id="list-no-space"),
        pytest.param(
            _head(b"Host: a", b"X-Content-Length: 5", b"Content-Length: 5"),
            None,
            id="other-header-ending-in-content-length",
        ),
    ],
)
def test_check_raw_head(head: bytes, expected: int | None) -> None:
    problem = check_raw_head(head, **RAW_LIMITS)
    assert (problem.status if problem else None) == expected
    if problem is not None:
        assert problem.reason


def test_head_problem_is_a_frozen_value() -> None:
    assert HeadProblem(400, "x") == HeadProblem(400, "x")
    with pytest.raises(AttributeError):
        HeadProblem(400, "x").status = 500  # type: ignore[misc]


# -- check_parsed_head ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([(b"host", b"a")], None, id="no-body"),
        pytest.param([(b"host", b"a"), (b"content-length", b"5")], None, id="length"),
        pytest.param([(b"host", b"a"), (b"transfer-encoding", b"chunked")], None, id="chunked"),
        pytest.param(
            [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], 400, id="cl-then-te"
        ),
        pytest.param(
            [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")], 400, id="te-then-cl"
        ),
        pytest.param([], None, id="empty"),
    ],
)
def test_check_parsed_head(headers: list[tuple[bytes, bytes]], expected: int | None) -> None:
    problem = check_parsed_head(headers)
    assert (problem.status if problem else None) == expected
