"""Protocol-aware TCP health checks, the decisions: what each check type sends and what the
answers mean. No I/O here: :mod:`trilb.health` pumps the bytes (see :mod:`trilb.core.dialog`).

============  ================================================================  ================
type          the dialog                                                        HAProxy's
============  ================================================================  ================
send_expect   send ``send`` (if any), read until the answer contains ``expect``  ``tcp-check``
              and/or matches ``expect_regex`` (within :data:`ANSWER_LIMIT`)
redis         send ``PING``, expect ``+PONG``                                   ``redis-check``
smtp          read the 220 greeting, send ``EHLO domain``, expect 250; ``QUIT``  ``smtpchk``
mysql         read the greeting, log in if ``user`` (:mod:`.mysql_check`)        ``mysql-check``
============  ================================================================  ================

The reasons, in HAProxy's words: ``Layer7 check passed`` (L7OK); ``Layer7 wrong status`` (L7STS)
when the server answered in its protocol but said no (a Redis ``-LOADING``, an SMTP 421 or 554,
a MySQL error packet), with its status code and words; ``Layer7 invalid response`` (L7RSP) when
the answer is not what the protocol says (or, for ``send_expect``, did not match) or the server
closed first; ``Layer7 timeout`` (L7TOUT, decided by the shell) when the answer did not come, or
did not match, within the check's timeout.
"""

from __future__ import annotations

import re

import attrs

from ..config import HealthCheck
from .dialog import ANSWER_LIMIT, CONTINUE, Dialog, Step, closed, server_words
from .health import CheckResult, Reason
from .mysql_check import MySQLDialog

__all__ = [
    "REDIS_PING",
    "RedisDialog",
    "SMTPDialog",
    "SMTPProtocolError",
    "SMTPReply",
    "SMTPReplyReader",
    "SendExpectDialog",
    "compile_expect_regex",
    "dialog_for",
    "judge_redis_reply",
]


def dialog_for(check: HealthCheck, *, pattern: re.Pattern[bytes] | None = None) -> Dialog:
    """A new dialog for one check of type ``send_expect``, ``redis``, ``mysql`` or ``smtp``.
    ``pattern`` is ``check.expect_regex`` compiled (:func:`compile_expect_regex`; compiled here
    if not given: the shell compiles it once per server).

    ValueError for another type, or a ``send_expect`` check without an expectation (the loader
    refuses it; only a check built in code can have none)."""
    if check.type == "send_expect":
        if pattern is None and check.expect_regex is not None:
            pattern = compile_expect_regex(check.expect_regex)
        return SendExpectDialog(send=check.send, expect=check.expect, pattern=pattern)
    if check.type == "redis":
        return RedisDialog()
    if check.type == "smtp":
        return SMTPDialog(domain=check.domain)
    if check.type == "mysql":
        return MySQLDialog(user=check.user, post_41=check.post_41)
    raise ValueError(f"a {check.type!r} check is not a dialog")


def compile_expect_regex(text: str) -> re.Pattern[bytes]:
    """``expect_regex`` as the dialog uses it: its UTF-8 encoding, a bytes pattern searched in
    the answer's bytes (so ``\\x00``-style escapes match any byte, and non-ASCII text matches
    its UTF-8 spelling)."""
    return re.compile(text.encode())


# -- send_expect ----------------------------------------------------------------------------------


class SendExpectDialog(Dialog):
    """Send ``send``, then read until the answer contains ``expect`` and matches ``pattern``
    (both, when both are given), looking at its first :data:`ANSWER_LIMIT` bytes."""

    def __init__(
        self,
        *,
        send: bytes | None,
        expect: bytes | None,
        pattern: re.Pattern[bytes] | None,
        limit: int = ANSWER_LIMIT,
    ) -> None:
        if expect is None and pattern is None:
            raise ValueError("a send_expect check needs expect or expect_regex")
        self._send = send or b""
        self._expect = expect
        self._pattern = pattern
        self._limit = limit
        self._answer = bytearray()

    def start(self) -> Step:
        return Step(send=self._send)

    def _matched(self) -> bool:
        answer = self._answer
        if self._expect is not None and self._expect not in answer:
            return False
        return self._pattern is None or self._pattern.search(answer) is not None

    def _wanted(self) -> str:
        wanted = []
        if self._expect is not None:
            wanted.append(f"contain {_shown(self._expect)}")
        if self._pattern is not None:
            wanted.append(f"match {_shown(self._pattern.pattern)}")
        return " and ".join(wanted)

    def receive(self, data: bytes) -> Step:
        if not data:
            if not self._answer:
                return Step(outcome=closed(False))
            return Step(outcome=self._mismatch("connection closed: "))
        self._answer += data[: self._limit - len(self._answer)]
        if self._matched():
            return Step(outcome=CheckResult(reason=Reason.L7_OK))
        if len(self._answer) >= self._limit:
            return Step(outcome=self._mismatch(f"in its first {self._limit} bytes, "))
        return CONTINUE

    def _mismatch(self, prefix: str) -> CheckResult:
        info = f"{prefix}the answer {_shown(bytes(self._answer))} does not {self._wanted()}"
        return CheckResult(reason=Reason.L7_INVALID, info=info)


def _shown(data: bytes) -> str:
    """Bytes in an info: as Python writes them, without the ``b`` (escapes show binary)."""
    return server_words(repr(data)[1:], limit=80)


# -- redis ----------------------------------------------------------------------------------------

#: ``PING`` as Redis clients send commands (a RESP array of bulk strings), as HAProxy's
#: ``redis-check`` does; inline ``PING\r\n`` works with Redis itself, but not with every server
#: that speaks its protocol
REDIS_PING = b"*1\r\n$4\r\nPING\r\n"


def judge_redis_reply(line: bytes) -> CheckResult:
    """What a Redis server's one-line reply to PING means (``line`` without its CRLF)."""
    if line == b"+PONG":
        return CheckResult(reason=Reason.L7_OK)
    if line[:1] and line[:1] in _RESP_TYPES:  # an error (-LOADING, -NOAUTH...) or another reply
        return CheckResult(reason=Reason.L7_STATUS, info=server_words(line))
    return CheckResult(reason=Reason.L7_INVALID, info=f"not a Redis reply: {_shown(line)}")


#: the first byte of each kind of RESP reply (RESP2 and RESP3)
_RESP_TYPES = b"+-:$*_#,(!=%~>|"


class RedisDialog(Dialog):
    """``PING`` -> ``+PONG`` (HAProxy's ``option redis-check``). Another answer fails, with the
    server's words (``-LOADING Redis is loading the dataset in memory``)."""

    def __init__(self, limit: int = ANSWER_LIMIT) -> None:
        self._limit = limit
        self._buffer = bytearray()

    def start(self) -> Step:
        return Step(send=REDIS_PING)

    def receive(self, data: bytes) -> Step:
        if not data:
            return Step(outcome=closed(bool(self._buffer), "reply"))
        self._buffer += data[: self._limit - len(self._buffer)]
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) >= self._limit:
                info = f"no end of line in the first {self._limit} bytes"
                return Step(outcome=CheckResult(reason=Reason.L7_INVALID, info=info))
            return CONTINUE
        line = bytes(self._buffer[:end]).removesuffix(b"\r")
        return Step(outcome=judge_redis_reply(line))


# -- smtp -----------------------------------------------------------------------------------------


class SMTPProtocolError(ValueError):
    """The server's answer is not an SMTP reply (its fault: ``Layer7 invalid response``)."""


@attrs.frozen(kw_only=True)
class SMTPReply:
    """A complete SMTP reply: one code, one or more lines of text (RFC 5321, 4.2)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The first line's text, fit for an info."""
        return server_words(self.lines[0])


#: a reply line: three digits, then "-" (more lines follow), " " or nothing (the last line)
_REPLY_LINE = re.compile(rb"([0-9]{3})([- ]?)(.*)", re.DOTALL)


class SMTPReplyReader:
    """Reads SMTP replies, multi-line ones included (``250-first``, ..., ``250 last``), from
    bytes as they come. Lines end with CRLF (a bare LF is accepted too). At most ``limit`` bytes
    of an unfinished reply are kept: RFC 5321 allows 512 bytes a line, and an EHLO reply lists
    a dozen extensions."""

    def __init__(self, limit: int = ANSWER_LIMIT) -> None:
        self._limit = limit
        self._buffer = bytearray()
        #: the current reply so far: its code, its lines, their bytes
        self._code: int | None = None
        self._lines: list[str] = []
        self._size = 0

    @property
    def pending(self) -> bool:
        """Part of a reply came, not all of it."""
        return bool(self._buffer or self._lines)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_reply(self) -> SMTPReply | None:
        """The next complete reply, or None until more bytes come. SMTPProtocolError when the
        bytes are not a reply, or an unfinished one grew past the limit."""
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end]).removesuffix(b"\r")
            del self._buffer[: end + 1]
            self._size += end + 1
            if self._size > self._limit:
                break
            match = _REPLY_LINE.fullmatch(line)
            if match is None or (match.group(2) == b"" and match.group(3)):
                raise SMTPProtocolError(f"not an SMTP reply: {server_words(line, 80)}")
            code = int(match.group(1))
            if self._code is not None and code != self._code:
                raise SMTPProtocolError(
                    f"a reply's lines have different codes: {self._code} and {code}"
                )
            self._code = code
            self._lines.append(match.group(3).decode("utf-8", "replace"))
            if match.group(2) != b"-":
                reply = SMTPReply(code=code, lines=tuple(self._lines))
                self._code, self._lines, self._size = None, [], 0
                return reply
        if self._size + len(self._buffer) > self._limit:
            raise SMTPProtocolError(f"a reply longer than {self._limit} bytes")
        return None


class SMTPDialog(Dialog):
    """HAProxy's ``option smtpchk EHLO domain``: the greeting must be 220, the answer to
    ``EHLO domain`` 250; then ``QUIT`` (not waited for), so the server sees a clean goodbye.
    Another code fails with ``Layer7 wrong status`` and that code."""

    def __init__(self, *, domain: str = "localhost") -> None:
        self._ehlo = f"EHLO {domain}\r\n".encode()
        self._reader = SMTPReplyReader()
        self._greeted = False

    def receive(self, data: bytes) -> Step:
        if not data:
            return Step(outcome=closed(self._reader.pending, "reply"))
        self._reader.feed(data)
        try:
            reply = self._reader.next_reply()
        except SMTPProtocolError as exc:
            return Step(outcome=CheckResult(reason=Reason.L7_INVALID, info=str(exc)))
        if reply is None:
            return CONTINUE
        if not self._greeted:
            if reply.code != 220:  # 554: no service here; 421: not now
                return self._end(Reason.L7_STATUS, reply)
            self._greeted = True
            return Step(send=self._ehlo)
        if reply.code != 250:
            return self._end(Reason.L7_STATUS, reply)
        return self._end(Reason.L7_OK, reply)

    @staticmethod
    def _end(reason: Reason, reply: SMTPReply) -> Step:
        outcome = CheckResult(reason=reason, code=reply.code, info=reply.text or None)
        return Step(send=b"QUIT\r\n", outcome=outcome)
