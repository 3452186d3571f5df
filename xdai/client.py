"""A small async client for the xdai WebSocket protocol v1 (docs/protocol.md).

    async with await Client.connect("ws://127.0.0.1:8765/ws") as client:
        opened = await client.open("xiaodai")
        reply = await client.chat("谷爱凌是谁？")
        print(reply.text, reply.end["grounding"])

The client remembers the session id, its resume token (without API keys, the proof that the session is this
client's) and the highest ``seq`` it has seen, so `reconnect` resumes where it left off without losing or
repeating frames.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

Frame = dict[str, Any]


class ServerError(RuntimeError):
    """An ``error`` frame, raised by the helpers that wait for one specific answer."""

    def __init__(self, frame: Frame) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.frame = frame
        self.code = frame.get("code")


@dataclass
class ChatResult:
    """Everything the server sent for one message, in order."""

    id: str
    frames: list[Frame] = field(default_factory=list)
    ack_s: float | None = None  # send -> message.ack
    first_delta_s: float | None = None

    @property
    def text(self) -> str:
        return "".join(f["text"] for f in self.frames if f["type"] == "response.delta")

    @property
    def end(self) -> Frame | None:
        return next((f for f in self.frames if f["type"] == "response.end"), None)

    @property
    def errors(self) -> list[Frame]:
        return [f for f in self.frames if f["type"] == "error"]


class Client:
    def __init__(self, ws: ClientConnection, url: str, connect_kwargs: dict[str, Any],
                 on_frame: Callable[[Frame], None] | None = None) -> None:
        self.ws, self.url, self._connect_kwargs, self.on_frame = ws, url, connect_kwargs, on_frame
        self.session_id: str | None = None
        self.resume_token: str | None = None  # sent by the server when it opens a new session (no API keys)
        self.bot: str | None = None
        self.last_seq = 0
        self.greeting = ""
        self._backlog: deque[Frame] = deque()
        self._replies: dict[str, str] = {}  # response_id -> the message it answers

    @classmethod
    async def connect(cls, url: str, *, api_key: str | None = None, origin: str | None = None,
                      on_frame: Callable[[Frame], None] | None = None, **kwargs: Any) -> Client:
        """Open the socket. `api_key` goes in the Authorization header; `on_frame` sees every frame received."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        kwargs = {"additional_headers": headers, "origin": origin, "max_size": 2**22, "compression": None,
                  "open_timeout": 30, **kwargs}
        return cls(await connect(url, **kwargs), url, kwargs, on_frame)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.ws.close()

    # -- frames ----------------------------------------------------------------------------------------------
    async def send_frame(self, kind: str, **fields: Any) -> Frame:
        frame = {"v": 1, "type": kind, **fields}
        if self.session_id and kind != "session.open":
            frame.setdefault("session_id", self.session_id)
        await self.ws.send(json.dumps(frame, ensure_ascii=False))
        return frame

    async def send_raw(self, data: str | bytes) -> None:
        """Send anything at all (the fault tests use it)."""
        await self.ws.send(data)

    async def _read(self, timeout: float | None) -> Frame:
        """The next new frame from the socket; frames with a seq already seen are dropped (a resume overlap)."""
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
            frame = json.loads(raw)
            if self.on_frame is not None:
                self.on_frame(frame)
            seq = frame.get("seq")
            if seq is not None:
                if seq <= self.last_seq:
                    continue
                self.last_seq = seq
            if frame.get("type") == "response.start":
                self._replies[frame["response_id"]] = frame["reply_to"]
            return frame

    async def recv(self, timeout: float | None = 60.0) -> Frame:
        """The next frame, oldest first (frames set aside while waiting for a specific one come first)."""
        if self._backlog:
            return self._backlog.popleft()
        return await self._read(timeout)

    async def recv_matching(self, wanted: Callable[[Frame], bool], timeout: float | None = 60.0) -> Frame:
        """The next frame for which `wanted` is true; the others are kept, in order, for `recv`."""
        for i, frame in enumerate(self._backlog):
            if wanted(frame):
                del self._backlog[i]
                return frame
        while True:
            frame = await self._read(timeout)
            if wanted(frame):
                return frame
            self._backlog.append(frame)

    # -- protocol --------------------------------------------------------------------------------------------
    async def open(self, bot: str, *, session_id: str | None = None, resume_from_seq: int | None = None,
                   auth: str | None = None, resume_token: str | None = None, user: str | None = None,
                   timeout: float = 60.0) -> Frame:
        """``session.open``; returns ``session.opened`` or raises `ServerError`. Reopening a session needs its
        `resume_token` (the one this client was given for it is used when none is passed) or the API key that
        opened it. `user` gives a new session that user's long-term memory."""
        fields: dict[str, Any] = {"bot": bot}
        if user is not None:
            fields["user"] = user
        if session_id:
            fields["session_id"] = session_id
            token = resume_token or (self.resume_token if session_id == self.session_id else None)
            if token:
                fields["resume_token"] = token
        if resume_from_seq is not None:
            fields["resume_from_seq"] = resume_from_seq
        if auth:
            fields["auth"] = auth
        await self.send_frame("session.open", **fields)
        frame = await self.recv_matching(
            lambda f: f["type"] == "session.opened" or (f["type"] == "error" and f.get("seq") is None), timeout)
        if frame["type"] == "error":
            raise ServerError(frame)
        if frame["session_id"] != self.session_id or "resume_token" in frame:
            self.resume_token = frame.get("resume_token") or (resume_token if session_id else None)
        self.session_id, self.bot, self.greeting = frame["session_id"], frame["bot"], frame["greeting"]
        return frame

    async def reconnect(self, timeout: float = 60.0) -> Frame:
        """A new socket for the same session, resuming after the last seq seen."""
        if self.session_id is None or self.bot is None:
            raise RuntimeError("reconnect needs an opened session")
        await self.ws.close()
        self.ws = await connect(self.url, **self._connect_kwargs)
        return await self.open(self.bot, session_id=self.session_id, resume_from_seq=self.last_seq, timeout=timeout)

    async def send(self, text: str, *, id: str | None = None, metadata: dict[str, Any] | None = None,
                   condition: str | None = None) -> str:
        """``message.create``; returns the message id (pass the same id again to retry safely)."""
        msg_id = id or f"m-{uuid.uuid4().hex[:12]}"
        fields: dict[str, Any] = {"id": msg_id, "text": text}
        if metadata is not None:
            fields["metadata"] = metadata
        if condition is not None:
            fields["condition"] = condition
        await self.send_frame("message.create", **fields)
        return msg_id

    async def cancel(self, reply_to: str) -> None:
        await self.send_frame("response.cancel", reply_to=reply_to)

    async def memory_list(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """``memory.list``: this session's user's memories for its bot (`ServerError` without a memory)."""
        await self.send_frame("memory.list")
        return (await self._answer("memory.items", timeout))["items"]

    async def memory_forget(self, item: str | None = None, timeout: float = 30.0) -> int:
        """``memory.forget``: delete them all (or `item`) for good; how many items went."""
        await self.send_frame("memory.forget", **({"item": item} if item else {}))
        return (await self._answer("memory.forgotten", timeout))["count"]

    async def _answer(self, kind: str, timeout: float) -> Frame:
        frame = await self.recv_matching(
            lambda f: f["type"] == kind or (f["type"] == "error" and f.get("seq") is None), timeout)
        if frame["type"] == "error":
            raise ServerError(frame)
        return frame

    async def ping(self, timeout: float = 30.0) -> Frame:
        await self.send_frame("ping")
        return await self.recv_matching(lambda f: f["type"] == "pong", timeout)

    async def stream(self, msg_id: str, timeout: float = 120.0) -> AsyncIterator[Frame]:
        """Frames about message `msg_id` until its reply ends, it is refused, or it is acknowledged as a duplicate.
        Frames about anything else are kept for `recv`."""
        def about(f: Frame) -> bool:
            return f.get("reply_to") == msg_id or self._replies.get(f.get("response_id", "")) == msg_id

        while True:
            frame = await self.recv_matching(about, timeout)
            kind = frame["type"]
            yield frame
            if kind == "message.ack" and frame.get("duplicate"):
                return
            if kind == "response.end" and frame["finish_reason"] != "error":
                return
            if kind == "error" and (frame["code"] in ("backend_error", "storage_error")
                                    or msg_id not in self._replies.values()):
                return

    async def chat(self, text: str, *, id: str | None = None, timeout: float = 120.0, **fields: Any) -> ChatResult:
        """Send one message and collect everything about it until its reply ends."""
        started = time.perf_counter()
        msg_id = await self.send(text, id=id, **fields)
        result = ChatResult(msg_id)
        async for frame in self.stream(msg_id, timeout):
            now = time.perf_counter() - started
            if frame["type"] == "message.ack" and result.ack_s is None:
                result.ack_s = now
            if frame["type"] == "response.delta" and result.first_delta_s is None:
                result.first_delta_s = now
            result.frames.append(frame)
        return result
