"""The messages between ``trilb serve``'s master process and its workers (no I/O).

Theory of operation. The master starts each worker with one end of a unix socket pair; both
ends speak the same framing over it: a message is a JSON object, sent as a 4-byte big-endian
length and that many bytes of UTF-8 JSON. Three kinds of message travel:

* requests, master to worker: ``{"id": 7, "op": "stats"}`` (the ops are listed in
  :data:`OPS`); the worker answers each with a reply carrying the same ``id``;
* replies, worker to master: ``{"id": 7, "ok": true, "result": ...}`` or
  ``{"id": 7, "ok": false, "error": "why"}``;
* events, worker to master, unasked: ``{"event": "ready", "pid": 1234}`` once it serves.

The link is local and both ends are trilb, so a malformed frame means a bug (or a version
mix-up after an upgrade): :class:`ControlProtocolError`, and the link is closed. Every frame is
bounded (:data:`MAX_FRAME`), so a confused peer cannot make the other side buffer without end.
"""

from __future__ import annotations

import json
import struct
from typing import Any

__all__ = [
    "MAX_FRAME",
    "OPS",
    "ControlProtocolError",
    "FrameDecoder",
    "encode",
    "error_reply",
    "event",
    "ok_reply",
    "request",
]

#: the largest message, bytes: the statistics of a big configuration (a few thousand servers,
#: each a few hundred bytes of JSON) fit many times over; anything larger is a bug
MAX_FRAME = 64 * 1024 * 1024

#: what the master can ask a worker: its statistics; to run an admin socket command line on its
#: balancer; to reload its configuration file
OPS = frozenset({"stats", "admin", "reload"})

_LENGTH = struct.Struct(">I")

Message = dict[str, Any]


class ControlProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(message: Message) -> bytes:
    """One message as a frame. ValueError when it is too big to send."""
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"control message of {len(body)} bytes is over {MAX_FRAME}")
    return _LENGTH.pack(len(body)) + body


def request(request_id: int, op: str, **arguments: Any) -> Message:
    if op not in OPS:
        raise ValueError(f"unknown control op {op!r}")
    return {"id": request_id, "op": op, **arguments}


def ok_reply(request_id: int, result: Any) -> Message:
    return {"id": request_id, "ok": True, "result": result}


def error_reply(request_id: int, error: str) -> Message:
    return {"id": request_id, "ok": False, "error": error}


def event(name: str, **fields: Any) -> Message:
    return {"event": name, **fields}


class FrameDecoder:
    """Bytes in, messages out: ``feed(data)`` returns the messages completed by ``data``.

    At most one partial frame is buffered, and it is at most ``4 + max_frame`` bytes."""

    __slots__ = ("_buffer", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held (0 between frames)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        buffer = self._buffer
        buffer += data
        messages: list[Message] = []
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > self.max_frame:
                raise ControlProtocolError(f"frame of {length} bytes is over {self.max_frame}")
            end = start + _LENGTH.size + length
            if len(buffer) < end:
                break
            messages.append(_decode(bytes(buffer[start + _LENGTH.size : end])))
            start = end
        del buffer[:start]
        return messages


def _decode(body: bytes) -> Message:
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ControlProtocolError(f"frame is not a JSON object: {type(message).__name__}")
    return message
