"""Protocol v1 frames against the JSON Schema: precise codes and fields for each kind of bad frame."""

from __future__ import annotations

import json

import pytest
from jsonschema import ValidationError

from xdai.service.protocol import ProtocolError, parse_client_frame, server_frame, validate_server_frame


def problem(data: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(data)
    return info.value


def test_valid_client_frames_parse() -> None:
    frame = parse_client_frame(json.dumps({"v": 1, "type": "message.create", "id": "m1", "text": "你好"}))
    assert frame["text"] == "你好"
    assert parse_client_frame('{"v":1,"type":"session.open","bot":"xiaodai","resume_from_seq":3}')["bot"] == "xiaodai"
    assert parse_client_frame('{"v":1,"type":"ping"}')["type"] == "ping"


@pytest.mark.parametrize(
    ("data", "code", "field"),
    [
        ("not json", "invalid_json", None),
        ("[1, 2]", "invalid_frame", "<frame>"),
        ('{"type": "ping"}', "missing_field", "v"),
        ('{"v": 2, "type": "ping"}', "unsupported_version", "v"),
        ('{"v": 1}', "missing_field", "type"),
        ('{"v": 1, "type": "message.delete"}', "unknown_type", "type"),
        ('{"v": 1, "type": "message.create", "id": "m1"}', "missing_field", "text"),
        ('{"v": 1, "type": "message.create", "text": "hi"}', "missing_field", "id"),
        ('{"v": 1, "type": "message.create", "id": "m1", "text": 5}', "invalid_frame", "text"),
        ('{"v": 1, "type": "session.open", "bot": "Bad Name!"}', "invalid_frame", "bot"),
        ('{"v": 1, "type": "session.open", "bot": "x", "resume_from_seq": -1}', "invalid_frame", "resume_from_seq"),
        ('{"v": 1, "type": "response.cancel"}', "missing_field", "reply_to"),
        ('{"v": 1, "type": "session.open", "bot": "x", "resume_from_seq": 9223372036854775808}', "invalid_frame",
         "resume_from_seq"),
        ('{"v": 1, "type": "message.create", "id": "m1", "text": "hi", "condition": {}}', "invalid_frame", "condition"),
        ('{"v": 1, "type": "\\ud800"}', "invalid_frame", "type"),
        ('{"v": 1, "type": "ping", "n": ' + "1" * 5000 + "}", "invalid_frame", "<frame>"),
        ('{"v": 1, "type": "ping", "n": ' + "[" * 32000 + "]" * 32000 + "}", "invalid_frame", "<frame>"),
    ],
)
def test_bad_client_frames_name_the_problem(data: str, code: str, field: str | None) -> None:
    p = problem(data)
    assert p.code == code, p.message
    assert p.field == field
    assert p.message


def test_binary_and_message_errors_carry_reply_to() -> None:
    assert problem(b"\x00\x01").code == "binary_not_supported"
    p = problem('{"v": 1, "type": "message.create", "id": "m9", "text": ""}')
    assert (p.code, p.field, p.reply_to) == ("invalid_frame", "text", "m9")


def test_server_frames_follow_the_schema() -> None:
    validate_server_frame(server_frame("message.ack", "a" * 32, 3, reply_to="m1"))
    validate_server_frame(server_frame("pong", None, None))
    end = server_frame("response.end", "a" * 32, 9, response_id="r-1", finish_reason="stop", usage={},
                       timings={"ttft_ms": 1.5, "total_ms": 9.0},
                       grounding=[{"source_id": "s", "kind": "qa", "score": 0.5, "text": "t"}])
    validate_server_frame(end)
    with pytest.raises(ValidationError):
        validate_server_frame({**end, "finish_reason": "maybe"})
    with pytest.raises(ValidationError):
        validate_server_frame(server_frame("error", None, None, code="nope", message="x", retryable=False))
