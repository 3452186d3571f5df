"""Protocol v1: JSON text frames, an envelope ``{v, type, id, session_id, seq, ts}`` with each type's fields beside it.

The JSON Schema in ``schema/protocol-v1.json`` is the contract: client frames are checked against it on the way in
(a failure becomes a `ProtocolError` with a precise code and the offending field), and the tests check every server
frame against it on the way out. docs/protocol.md is the prose version.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("schema") / "protocol-v1.json"


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


CLIENT_TYPES: tuple[str, ...] = tuple(schema()["client_types"])
SERVER_TYPES: tuple[str, ...] = tuple(schema()["server_types"])


class ProtocolError(Exception):
    """A frame the server cannot act on. Becomes an ``error`` frame; the connection stays open."""

    def __init__(self, code: str, message: str, *, retryable: bool = False, reply_to: str | None = None,
                 field: str | None = None, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retryable = code, message, retryable
        self.reply_to, self.field, self.retry_after_ms = reply_to, field, retry_after_ms

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message, "retryable": self.retryable}
        if self.reply_to is not None:
            out["reply_to"] = self.reply_to
        if self.field is not None:
            out["field"] = self.field
        if self.retry_after_ms is not None:
            out["retry_after_ms"] = self.retry_after_ms
        return out


@cache
def _validator(kind: str, server: bool) -> Draft202012Validator:
    parts: list[dict[str, Any]] = [{"$ref": "#/$defs/envelope"}, {"$ref": f"#/$defs/{kind}"}]
    if server:
        parts.append({"$ref": "#/$defs/server_envelope"})
    return Draft202012Validator({"$defs": schema()["$defs"], "allOf": parts})


def _where(error: ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<frame>"


def _explain(error: ValidationError) -> ProtocolError:
    if error.validator == "required":
        missing = next((name for name in error.validator_value if name not in (error.instance or {})), "?")
        prefix = _where(error)
        name = missing if prefix == "<frame>" else f"{prefix}.{missing}"
        return ProtocolError("missing_field", f"missing required field {name!r}", field=name)
    where = _where(error)
    value = json.dumps(error.instance, ensure_ascii=False)
    value = value if len(value) <= 60 else value[:57] + "..."
    message = error.message if len(error.message) < 160 else f"{value} is not valid"
    return ProtocolError("invalid_frame", f"field {where!r}: {message}", field=where)


def parse_client_frame(data: str | bytes) -> dict[str, Any]:
    """Decode and validate one client frame, or raise `ProtocolError` saying exactly what is wrong."""
    if isinstance(data, bytes):
        raise ProtocolError("binary_not_supported", "binary frames are not supported: send JSON in text frames")
    try:
        frame = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"frame is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(frame, dict):
        raise ProtocolError("invalid_frame", f"frame must be a JSON object, got {type(frame).__name__}", field="<frame>")
    if "v" not in frame:
        raise ProtocolError("missing_field", "missing required field 'v' (protocol version, 1)", field="v")
    if frame["v"] != VERSION:
        raise ProtocolError("unsupported_version", f"protocol version {frame['v']!r} is not supported (this server speaks 1)",
                            field="v")
    kind = frame.get("type")
    if kind is None:
        raise ProtocolError("missing_field", "missing required field 'type'", field="type")
    if kind not in CLIENT_TYPES:
        shown = json.dumps(kind, ensure_ascii=False)[:64]
        raise ProtocolError("unknown_type", f"unknown frame type {shown} (client types: {', '.join(CLIENT_TYPES)})",
                            field="type")
    error = best_match(_validator(kind, False).iter_errors(frame))
    if error is not None:
        problem = _explain(error)
        if kind == "message.create" and isinstance(frame.get("id"), str) and problem.field != "id":
            problem.reply_to = frame["id"]
        raise problem
    return frame


@dataclass(frozen=True)
class BotInfo:
    """What the service shows about a hosted bot (``GET /bots``): no paths, no backend options (they may hold
    secrets). The server takes these plain descriptions; whoever declares bots (``bots/``) builds them."""

    name: str
    persona: str = ""
    description: str = ""
    backend: str = ""
    model: str = ""
    flow: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def server_frame(kind: str, session_id: str | None, seq: int | None, **fields: Any) -> dict[str, Any]:
    """A server frame: envelope first, then the type's fields. ``ts`` is milliseconds since the epoch."""
    frame: dict[str, Any] = {"v": VERSION, "type": kind, "id": uuid.uuid4().hex[:16], "session_id": session_id,
                             "seq": seq, "ts": round(time.time() * 1000.0, 3)}
    frame.update(fields)
    return frame


def validate_server_frame(frame: dict[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` when a server frame breaks the schema (used by the tests)."""
    if frame.get("type") not in SERVER_TYPES:
        raise ValidationError(f"not a server frame type: {frame.get('type')!r}")
    _validator(frame["type"], True).validate(frame)


def validate_client_frame(frame: dict[str, Any]) -> None:
    """Raise `ProtocolError` when a client frame breaks the schema (the client checks before sending)."""
    parse_client_frame(json.dumps(frame, ensure_ascii=False))


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


# Close codes used beside error frames (RFC 6455, and the private 4000-4999 range).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TAKEN_OVER = 4409
