"""The master/worker message framing (trilb.core.control)."""

from __future__ import annotations

import json
import struct

import pytest

from trilb.core.control import (
    MAX_FRAME,
    ControlProtocolError,
    FrameDecoder,
    encode,
    error_reply,
    event,
    ok_reply,
    request,
)

MESSAGES = [
    request(1, "stats"),
    request(2, "admin", line="set server app/s1 weight 50%"),
    ok_reply(1, {"frontends": [], "backends": [], "nested": [1, 2.5, None, "é"]}),
    error_reply(3, "frontends.web.bind[0]: cannot listen"),
    event("ready", pid=1234),
]


def test_round_trip_whole() -> None:
    data = b"".join(encode(m) for m in MESSAGES)
    assert FrameDecoder().feed(data) == MESSAGES


def test_round_trip_byte_by_byte() -> None:
    decoder = FrameDecoder()
    out = []
    for byte in b"".join(encode(m) for m in MESSAGES):
        out.extend(decoder.feed(bytes([byte])))
    assert out == MESSAGES
    assert decoder.pending == 0


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 20])
def test_a_partial_frame_waits_for_the_rest(cut: int) -> None:
    frame = encode(MESSAGES[1])
    decoder = FrameDecoder()
    assert decoder.feed(frame[:cut]) == []
    assert decoder.pending == cut
    assert decoder.feed(frame[cut:]) == [MESSAGES[1]]
    assert decoder.pending == 0


def test_frame_header_is_a_big_endian_length() -> None:
    frame = encode({"a": 1})
    (length,) = struct.unpack(">I", frame[:4])
    assert frame[4:] == b'{"a":1}'
    assert length == 7


def test_oversized_frame_is_refused_before_buffering_it() -> None:
    decoder = FrameDecoder(max_frame=100)
    with pytest.raises(ControlProtocolError, match="over 100"):
        decoder.feed(struct.pack(">I", 101))
    assert MAX_FRAME >= 1024 * 1024


def test_encoding_an_oversized_message_is_an_error() -> None:
    with pytest.raises(ValueError, match="over"):
        encode({"blob": "x" * (MAX_FRAME + 1)})


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{nope", "not JSON"),
        (b"[1, 2]", "not a JSON object: list"),
        (b'"text"', "not a JSON object: str"),
    ],
)
def test_garbage_is_a_protocol_error(body: bytes, why: str) -> None:
    with pytest.raises(ControlProtocolError, match=why):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)


def test_nan_is_not_sent() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        encode({"x": float("nan")})


def test_unknown_op_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown control op"):
        request(1, "format-disk")


def test_requests_are_plain_json_objects() -> None:
    assert json.loads(encode(request(5, "reload"))[4:]) == {"id": 5, "op": "reload"}
