"""Protocol v1: JSON text frames, an envelope ``{v, type, id, session_id, seq, ts}`` with each type's fields beside it.

The JSON Schema in ``schema/protocol-v1.json`` is the contract: client frames are checked against it on the way in
(a failure becomes a `ProtocolError` with a precise code and the offending field), and the tests check every server
frame against it on the way out. docs/protocol.md is the prose version.
"""

from __future__ import annotations

import dataclasses
import json
import re
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
MAX_DEPTH = 16  # objects and arrays nested in one client frame (only metadata is free-form)
MAX_INT_DIGITS = 20  # an integer literal longer than this is refused before it is converted
MAX_SEQ = 2**53 - 1  # the documented range of seq and resume_from_seq (a JavaScript client's safe integers)
MAX_FIELD_CHARS = 128  # an echoed field name is cut to this
MAX_MESSAGE_CHARS = 512  # an error message is cut to this


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
        """The error frame's fields. Message and field may echo what a client sent: they are made encodable
        (a lone surrogate becomes U+FFFD) and cut short, so that an error frame can always be sent."""
        message = clean(scrub_paths(self.message), MAX_MESSAGE_CHARS)
        out: dict[str, Any] = {"code": self.code, "message": message or self.code,
                               "retryable": self.retryable}
        if self.reply_to is not None:
            out["reply_to"] = self.reply_to
        if self.field is not None:
            out["field"] = clean(self.field, MAX_FIELD_CHARS)
        if self.retry_after_ms is not None:
            out["retry_after_ms"] = self.retry_after_ms
        return out


@cache
def _validator(kind: str, server: bool) -> Draft202012Validator:
    parts: list[dict[str, Any]] = [{"$ref": "#/$defs/envelope"}, {"$ref": f"#/$defs/{kind}"}]
    if server:
        parts.append({"$ref": "#/$defs/server_envelope"})
    return Draft202012Validator({"$defs": schema()["$defs"], "allOf": parts})


def clean(text: str, limit: int) -> str:
    """`text` as something that can be encoded as UTF-8 (lone surrogates become U+FFFD), at most `limit` chars."""
    if not text.isascii():
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])(?:[A-Za-z]:[\\/]|/)(?:[^\s'\"`,;:()\[\]{}<>]+[\\/])+"
                            r"(?=[^\s\\/'\"`,;:()\[\]{}<>]*)")


def scrub_paths(text: str) -> str:
    """`text` with the directories of absolute paths cut off (``/srv/models/x.gguf`` -> ``x.gguf``): what the
    server shows a client never says where its files live."""
    return _ABSOLUTE_PATH.sub("", text) if ("/" in text or "\\" in text) else text


def shown(value: Any, limit: int = 60) -> str:
    """A client's value quoted in an error message: JSON, encodable, short."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return clean(text, limit)


def _where(error: ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<frame>"


class _BadNumber(ValueError):
    """A number literal the server will not convert (too many digits, NaN, Infinity)."""


def _parse_int(literal: str) -> int:
    if len(literal) - literal.startswith("-") > MAX_INT_DIGITS:
        raise _BadNumber(f"an integer of {len(literal)} digits (at most {MAX_INT_DIGITS})")
    return int(literal)


def _parse_constant(name: str) -> Any:
    raise _BadNumber(f"{name} is not a JSON number")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_structure(frame: dict[str, Any]) -> None:
    """Depth at most MAX_DEPTH and every string (keys too) valid Unicode; else `invalid_frame` naming the field."""
    stack: list[tuple[Any, str, int]] = [(frame, "", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, dict):
            if depth > MAX_DEPTH:
                raise ProtocolError("invalid_frame", f"field {where!r}: nested more than {MAX_DEPTH} levels deep",
                                    field=where)
            for key, item in value.items():
                path = f"{where}.{key}" if where else key
                if not key.isascii() and _SURROGATE.search(key):
                    raise ProtocolError("invalid_frame", f"field name {clean(path, 80)!r} is not valid Unicode (a "
                                        "lone surrogate)", field=path)
                stack.append((item, path, depth + 1))
        elif isinstance(value, list):
            if depth > MAX_DEPTH:
                raise ProtocolError("invalid_frame", f"field {where!r}: nested more than {MAX_DEPTH} levels deep",
                                    field=where)
            stack.extend((item, f"{where}.{i}", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str) and not value.isascii() and _SURROGATE.search(value):
            raise ProtocolError("invalid_frame", f"field {clean(where, 80)!r} is not valid Unicode (a lone "
                                "surrogate)", field=where)


def _explain(error: ValidationError) -> ProtocolError:
    if error.validator == "required":
        missing = next((name for name in error.validator_value if name not in (error.instance or {})), "?")
        prefix = _where(error)
        name = missing if prefix == "<frame>" else f"{prefix}.{missing}"
        return ProtocolError("missing_field", f"missing required field {name!r}", field=name)
    where = _where(error)
    message = error.message if len(error.message) < 160 else f"{shown(error.instance)} is not valid"
    return ProtocolError("invalid_frame", f"field {where!r}: {message}", field=where)


def parse_client_frame(data: str | bytes) -> dict[str, Any]:
    """Decode and validate one client frame, or raise `ProtocolError` saying exactly what is wrong."""
    if isinstance(data, bytes):
        raise ProtocolError("binary_not_supported", "binary frames are not supported: send JSON in text frames")
    try:
        frame = json.loads(data, parse_int=_parse_int, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"frame is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _BadNumber as exc:
        raise ProtocolError("invalid_frame", f"frame holds {exc}", field="<frame>") from None
    except RecursionError:
        raise ProtocolError("invalid_frame", f"frame is nested more than {MAX_DEPTH} levels deep",
                            field="<frame>") from None
    if not isinstance(frame, dict):
        raise ProtocolError("invalid_frame", f"frame must be a JSON object, got {type(frame).__name__}", field="<frame>")
    try:
        _check_structure(frame)
    except ProtocolError as problem:
        problem.reply_to = _reply_to(frame, problem)
        raise
    if "v" not in frame:
        raise ProtocolError("missing_field", "missing required field 'v' (protocol version, 1)", field="v")
    if frame["v"] != VERSION or isinstance(frame["v"], bool):
        raise ProtocolError("unsupported_version", f"protocol version {shown(frame['v'])} is not supported (this "
                            "server speaks 1)", field="v")
    kind = frame.get("type")
    if kind is None:
        raise ProtocolError("missing_field", "missing required field 'type'", field="type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown frame type {shown(kind)} (client types: "
                            f"{', '.join(CLIENT_TYPES)})", field="type")
    error = best_match(_validator(kind, False).iter_errors(frame))
    if error is not None:
        problem = _explain(error)
        problem.reply_to = _reply_to(frame, problem)
        raise problem
    return frame


_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def _reply_to(frame: dict[str, Any], problem: ProtocolError) -> str | None:
    """A bad message.create with a valid id gets an error about that message (logged in its session)."""
    msg_id = frame.get("id")
    if frame.get("type") == "message.create" and isinstance(msg_id, str) and _ID.match(msg_id) \
            and problem.field != "id":
        return msg_id
    return None


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
        """The description, with any path cut to its last part (a model given as a file, say)."""
        out = dataclasses.asdict(self)
        for key in ("persona", "backend", "model", "flow"):
            value = out[key]
            if isinstance(value, str) and ("/" in value or "\\" in value):
                out[key] = re.split(r"[\\/]", value.rstrip("\\/"))[-1]
        out["description"] = scrub_paths(out["description"])
        return out


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
