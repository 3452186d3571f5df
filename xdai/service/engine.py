"""Sessions and turns: the part of the service that knows what a frame means, but not how it travels.

`GenerationPool` runs turns off the event loop: each worker thread owns an event loop of its own and drives
a bot's `Responder.respond` there (retrieval, prompt assembly and the model all run in the worker), handing its
typed turn stream (`Delta`, `BotEvent`, `Reply`) back to the server's loop. In front of the workers sits a bounded queue; when it is full a new message is refused with
``busy`` at once. `Hub` owns the live sessions: it orders every session frame with ``seq``, writes what must be
durable before the frame that promises it, keeps one response in flight per session, makes message ids
idempotent and replays the frame log to a resuming client. A session belongs to the principal that opened it
(security.py); anyone else is refused with ``forbidden`` and changes nothing. Every turn ends in a frame: a
failed store write ends it with ``response.end {finish_reason: "error"}`` and ``error {code: "storage_error"}``,
a turn whose client is gone is cancelled after a grace period, a turn whose server died is ended "interrupted" by
whichever server finds its lease lapsed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from xdai.responder import BotEvent, Delta, Reply, Responder, TurnEvent
from xdai.service.memory import SessionMemory
from xdai.service.metrics import Metrics
from xdai.service.protocol import ProtocolError, scrub_paths, server_frame
from xdai.service.security import TurnQuota, new_resume_token, same_principal, token_principal
from xdai.service.sessions import SEQ_WINDOW, Lease, SessionRecord, SessionStore, StorageError, exchanges

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where a session's frames go: a connection (see server.Connection)."""

    def push(self, frame: dict[str, Any], t0: float | None = None) -> None:
        """Queue `frame`; `t0` (perf_counter) is when its cause happened, for the ack/delta latency metrics."""
        ...


# ------------------------------------------------------------------------------------------ generation pool
class JobCancelled(Exception):
    """A job cancelled before it started: it never reaches the bot."""


class Job:
    """One turn for a worker. `cancel` may be called from any thread, before or while it runs."""

    def __init__(self, agent: Responder, history: Any, utterance: str, condition: str | None,
                 emit: Callable[[TurnEvent | BaseException, float], None], *, session: str | None = None) -> None:
        self.agent, self.history, self.utterance, self.condition, self.emit = agent, history, utterance, condition, emit
        self.session = session
        self._lock = threading.Lock()
        self._cancelled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._loop is not None and self._event is not None:
                self._loop.call_soon_threadsafe(self._event.set)

    async def run(self) -> None:
        """On a worker's loop: stream the turn to `emit` (Deltas and BotEvents, then one Reply or the exception)."""
        event = asyncio.Event()
        with self._lock:
            self._loop, self._event = asyncio.get_running_loop(), event
            if self._cancelled:  # cancelled while queued (its client left): free the worker at once
                self.emit(JobCancelled("cancelled before it started"), time.perf_counter())
                return
        try:
            async for item in self.agent.respond(self.history, self.utterance, condition=self.condition, cancel=event,
                                                 session=self.session):
                self.emit(item, time.perf_counter())
        except Exception as exc:  # a failure before the agent could answer still ends the turn, never the server
            log.exception("turn failed")
            self.emit(exc, time.perf_counter())


class GenerationPool:
    """`workers` threads, each with its own event loop, behind a queue of at most `queue_size` waiting turns.

    Nothing here serialises on the model: each worker's turn submits to its backend, and the llama_cpp backend's
    engine decodes the turns of all workers together (continuous batching), so more workers means more sessions
    in one batch, not more contention."""

    def __init__(self, workers: int, queue_size: int) -> None:
        self.capacity = max(workers, 1) + max(queue_size, 0)
        self.queue: asyncio.Queue[Job] | None = None
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.threads: list[threading.Thread] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.admitted = 0  # turns queued or running
        self.running = 0
        self.workers = max(workers, 1)

    @property
    def depth(self) -> int:
        """Turns waiting for a worker."""
        return self.queue.qsize() if self.queue is not None else 0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        for i in range(self.workers):
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name=f"xdai-gen-{i}", daemon=True)
            thread.start()
            self.loops.append(loop)
            self.threads.append(thread)
            self.tasks.append(asyncio.create_task(self._dispatch(loop)))

    def admit(self) -> bool:
        """Reserve room for one turn; False when queue and workers are full (the caller answers ``busy``)."""
        if self.admitted >= self.capacity:
            return False
        self.admitted += 1
        return True

    def release(self) -> None:
        self.admitted -= 1

    def submit(self, job: Job) -> None:
        assert self.queue is not None, "GenerationPool.start() first"
        self.queue.put_nowait(job)

    async def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.queue is not None
        while True:
            job = await self.queue.get()
            self.running += 1
            try:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(job.run(), loop))
            except Exception:
                log.exception("generation worker failed")
            finally:
                self.running -= 1

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for loop in self.loops:  # end turns still running there, then the loop itself
            done = asyncio.run_coroutine_threadsafe(_cancel_all(), loop)
            await asyncio.wrap_future(done)
            loop.call_soon_threadsafe(loop.stop)
        for thread in self.threads:
            thread.join(timeout=5)


async def _cancel_all() -> None:
    """On a worker's loop: cancel every other task and wait for them to unwind."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --------------------------------------------------------------------------------------------------- sessions
@dataclass
class Turn:
    msg_id: str
    response_id: str
    text: str
    received: float  # perf_counter when the message arrived
    job: Job | None = None
    task: asyncio.Task[None] | None = None
    reason: str | None = None  # set when the server ends the turn itself ("interrupted", "cancelled")
    finished: bool = False  # response.end written (exactly once)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    tags: tuple[tuple[str, str], ...] = ()  # whose quota of turns in flight it counts against
    seq: int | None = None  # the seq of the message's ack: where a memory taken from it came from


@dataclass
class LiveSession:
    record: SessionRecord
    agent: Responder
    history: Any
    seen: set[str]  # user message ids already stored
    next_seq: int
    seq_reserved: int
    sink: Sink | None = None
    turn: Turn | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)  # sent frames not yet in the store
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    touched: float = field(default_factory=time.monotonic)
    # replies whose end could not be stored: (response_id, the frames sent for it), written before the next turn
    unsettled: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    summarized: int = 0  # exchanges a summary of this session covers (memory: summarised again when there are more)

    @property
    def id(self) -> str:
        return self.record.session_id


class Hub:
    """Live sessions over a `SessionStore`, turns over a `GenerationPool`."""

    def __init__(self, store: SessionStore, agents: dict[str, Responder], pool: GenerationPool, metrics: Metrics,
                 *, owner: str, max_message_chars: int, quota: TurnQuota | None = None,
                 orphan_grace_s: float = 30.0, lease_s: float = 30.0, memory: SessionMemory | None = None) -> None:
        self.store, self.agents, self.pool, self.metrics = store, agents, pool, metrics
        self.memory = memory  # long-term memory of sessions opened with a user (None: no memory at all)
        self.owner, self.max_message_chars = owner, max_message_chars
        self.quota = quota or TurnQuota({})
        self.orphan_grace_s, self.lease_s = orphan_grace_s, lease_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.sessions: dict[str, LiveSession] = {}
        self._db = ThreadPoolExecutor(1, thread_name_prefix="xdai-store")
        self.closing = False
        self.storage_error: str | None = None  # the last write failure, until a write succeeds (/healthz)

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store call on the store's own thread, or right here when the store says its writes are cheap.
        Keeps `storage_error` current: set by a failure, cleared by the next write that succeeds."""
        try:
            if getattr(self.store, "inline", False):
                out = fn(*args, **kwargs)
            else:
                out = await asyncio.get_running_loop().run_in_executor(self._db, lambda: fn(*args, **kwargs))
        except StorageError as exc:
            self.storage_error = str(exc)
            raise
        if getattr(fn, "__name__", "") in _WRITES:
            self.storage_error = None
        return out

    async def recover(self) -> list[tuple[str, str]]:
        """At start: take a lease, then end as interrupted every reply still streaming whose server is gone (this
        instance's earlier life, or any whose lease lapsed), whatever that server was called."""
        await self.db(self.store.heartbeat, self.owner, self.host, self.pid)
        return await self.sweep(startup=True)

    def _alive(self, lease: Lease | None, now: float) -> bool:
        if lease is None or now - lease.heartbeat > self.lease_s:
            return False
        return lease.host != self.host or lease.pid == self.pid or _pid_alive(lease.pid)

    async def sweep(self, *, startup: bool = False) -> list[tuple[str, str]]:
        """End the replies of servers that are gone: each gets a logged ``response.end {finish_reason:
        "interrupted"}``, also sent at once when its session is attached here."""
        leases = await self.db(self.store.leases)
        now, done = time.time(), []
        for session_id, response_id, owner in await self.db(self.store.streaming):
            if owner == self.owner and not startup:
                continue  # ours, live (a reply in flight, or one whose end is waiting to be stored)
            if owner != self.owner and self._alive(leases.get(owner), now):
                continue
            s = self.sessions.get(session_id)
            if s is None:
                end = await self.db(self.store.interrupt, session_id, response_id, owner)
            else:
                async with s.lock:
                    end = await self.db(self.store.interrupt, session_id, response_id, owner)
                    if end is not None:
                        s.next_seq = max(s.next_seq, end["seq"] + 1)
                        s.seq_reserved = max(s.seq_reserved, end["seq"])
                        self._send(s, end)
            if end is not None:
                done.append((session_id, response_id))
        return done

    async def housekeeping(self, idle_s: float) -> None:
        """Periodically: renew the lease (also a write probe for /healthz), end dead servers' replies, store the
        ends of replies that could not be stored before, forget idle sessions."""
        try:
            await self.db(self.store.heartbeat, self.owner, self.host, self.pid)
            await self.sweep()
            for s in [s for s in self.sessions.values() if s.unsettled]:
                async with s.lock:
                    await self._settle(s)
        except (StorageError, ProtocolError) as exc:
            log.warning("session store: %s", exc)
        self.evict_idle(idle_s)

    async def release(self) -> None:
        """Give up the lease at a clean shutdown (every reply has ended)."""
        try:
            await self.db(self.store.release, self.owner)
        except StorageError as exc:
            log.warning("session store: could not release the lease: %s", exc)

    # -- frames ----------------------------------------------------------------------------------------------
    def _frame(self, s: LiveSession, kind: str, **fields: Any) -> dict[str, Any]:
        frame = server_frame(kind, s.id, s.next_seq, **fields)
        s.next_seq += 1
        return frame

    def _send(self, s: LiveSession, frame: dict[str, Any], t0: float | None = None) -> None:
        if frame["type"] == "error":
            self.metrics.errors.inc(code=frame["code"])
        if s.sink is not None:
            s.sink.push(frame, t0)

    async def error(self, s: LiveSession, problem: ProtocolError) -> None:
        """A logged error frame (it concerns a message of this session); sent even when it cannot be logged."""
        async with s.lock:
            frame = self._frame(s, "error", **problem.fields())
            try:
                await self.db(self.store.log_frames, s.id, [frame])
            except StorageError as exc:
                log.warning("session %s: error frame not logged: %s", s.id, exc)
            self._send(s, frame)

    # -- opening and resuming --------------------------------------------------------------------------------
    async def open(self, sink: Sink, bot: str, session_id: str | None, resume_from_seq: int | None, *,
                   principal: str | None = None, resume_token: str | None = None,
                   user: str | None = None) -> LiveSession:
        """Create or reopen a session, attach `sink`, send ``session.opened`` and replay frames after the seq.

        A new session belongs to `principal` (an API key's) or, without one, to whoever holds the resume token
        sent in its ``session.opened``. Reopening needs the same: otherwise ``forbidden``, and nothing changes
        (the owner's connection stays, nothing is replayed). Nothing stays attached to `sink` when this fails."""
        if self.closing:
            raise ProtocolError("shutting_down", "the server is shutting down; reconnect shortly", retryable=True)
        if bot not in self.agents:
            raise ProtocolError("bot_not_found", f"no bot named {bot!r} (hosted: {', '.join(sorted(self.agents))})",
                                field="bot")
        resumed = session_id is not None
        token = None
        if session_id is None:
            agent = self.agents[bot]
            owner = principal
            if owner is None:
                token, owner = new_resume_token()
            mine = {"user": user} if user is not None and self.memory is not None else {}
            record = await self.db(self.store.create, uuid.uuid4().hex, bot, agent.greeting(), owner, **mine)
            s = LiveSession(record, agent, agent.new_history(), set(), record.next_seq, record.seq_reserved)
            self._attach_memory(s)
            self.sessions[s.id] = s
        else:
            s = await self._load(session_id, principal, resume_token)
            if s.record.bot != bot:
                raise ProtocolError("bot_mismatch", f"session {session_id} belongs to bot {s.record.bot!r}, not {bot!r}",
                                    field="bot")
            if user is not None and self.memory is not None and user != s.record.user:
                raise ProtocolError("invalid_frame", f"session {session_id} was opened for another user (or none): "
                                    "resume it without 'user', or open a new session", field="user")
        async with s.lock:
            replay: list[dict[str, Any]] = []
            if resume_from_seq is not None:
                logged = await self.db(self.store.frames_after, s.id, resume_from_seq)
                seqs = {f["seq"] for f in logged}
                unlogged = [f for f in s.pending if f["seq"] > resume_from_seq and f["seq"] not in seqs]
                replay = sorted(logged + unlogged, key=lambda f: f["seq"])
            # nothing below can fail: the session changes hands only now
            if s.sink is not None and s.sink is not sink:
                s.sink.push(server_frame("error", s.id, None, code="session_taken_over", retryable=False,
                                         message="this session was opened on another connection"))
                close = getattr(s.sink, "taken_over", None)
                if close is not None:
                    close()
            s.sink = sink
            s.touched = time.monotonic()
            opened = server_frame("session.opened", s.id, None, resumed=resumed, bot=bot,
                                  greeting=s.record.greeting, last_seq=s.next_seq - 1)
            if token is not None:
                opened["resume_token"] = token
            if getattr(s.history, "memory", None) is not None:
                opened["memory"] = True
            sink.push(opened)
            for frame in replay:
                sink.push(frame)
        try:  # a bot with a flow (xdai.flows) runs its on_open hook and timers here; its events come back as frames
            s.agent.open_session(s.id, s.history, lambda name, data: self.emit_event(s, name, data), resumed=resumed)
        except BaseException:
            self.detach(s, sink)
            raise
        return s

    def _authorize(self, record: SessionRecord, principal: str | None, resume_token: str | None) -> None:
        owner = record.principal
        if owner is not None and owner.startswith("key:"):
            allowed = same_principal(owner, principal)
        else:
            allowed = owner is not None and resume_token is not None and same_principal(
                owner, token_principal(resume_token))
        if not allowed:
            how = "the API key" if owner is not None and owner.startswith("key:") else "the resume_token"
            raise ProtocolError("forbidden", f"session {record.session_id} belongs to another client: only {how} "
                                "that opened it may resume it (open a new session instead)", field="session_id")

    def emit_event(self, s: LiveSession, name: str, data: Any) -> None:
        """Send a bot's ``event`` outside a turn (a flow's on_open, a timer), from the server's loop."""
        asyncio.ensure_future(self._event(s, name, data))

    async def _event(self, s: LiveSession, name: str, data: Any) -> None:
        async with s.lock:
            frame = self._frame(s, "event", name=name, data=data)
            try:
                await self.db(self.store.log_frames, s.id, [frame])
            except StorageError as exc:
                log.warning("session %s: event %r not logged: %s", s.id, name, exc)
            self._send(s, frame)

    async def lookup(self, session_id: str) -> SessionRecord | None:
        cached = self.sessions.get(session_id)
        return cached.record if cached is not None else await self.db(self.store.get, session_id)

    async def _load(self, session_id: str, principal: str | None, resume_token: str | None) -> LiveSession:
        cached = self.sessions.get(session_id)
        if cached is not None and (cached.sink is not None or cached.turn is not None or cached.unsettled):
            self._authorize(cached.record, principal, resume_token)
            return cached
        # not in use here: read it afresh, since another replica may have served it meanwhile (shared store)
        record = await self.db(self.store.get, session_id)
        if record is None:
            raise ProtocolError("session_not_found", f"session {session_id} does not exist (open a new one without "
                                "session_id)", field="session_id")
        self._authorize(record, principal, resume_token)
        if record.bot not in self.agents:
            raise ProtocolError("bot_not_found", f"session {session_id} belongs to bot {record.bot!r}, which this "
                                "server does not host", field="session_id")
        agent = self.agents[record.bot]
        messages = await self.db(self.store.messages, session_id)
        history = agent.new_history()
        for user, bot in exchanges(messages):
            history.append(user, bot)
        seen = {m["id"] for m in messages if m["role"] == "user"}
        current = self.sessions.get(session_id)
        if current is not None and current is not cached:  # loaded meanwhile by another connection
            return current
        s = LiveSession(record, agent, history, seen, record.next_seq, record.next_seq - 1, summarized=len(history))
        self._attach_memory(s)
        self.sessions[session_id] = s
        return s

    def detach(self, s: LiveSession, sink: Sink) -> None:
        """`sink` is gone. A reply still in flight gets `orphan_grace_s` for its client to resume, then is
        cancelled, so that no one's abandoned turns hold the workers."""
        if s.sink is sink:
            s.sink = None
            s.touched = time.monotonic()
            if s.turn is not None and not s.turn.finished:
                asyncio.get_running_loop().call_later(self.orphan_grace_s, self._orphaned, s, s.turn)

    def _orphaned(self, s: LiveSession, turn: Turn) -> None:
        if s.sink is not None or s.turn is not turn or turn.finished or turn.reason is not None:
            return
        left = self.orphan_grace_s - (time.monotonic() - s.touched)
        if left > 0.01:  # it was resumed and left again meanwhile: its own grace counts from then
            asyncio.get_running_loop().call_later(left, self._orphaned, s, turn)
            return
        log.info("session %s: no connection for %.1fs; cancelling reply %s", s.id, self.orphan_grace_s,
                 turn.response_id)
        turn.reason = "cancelled"
        if turn.job is not None:
            turn.job.cancel()

    def evict_idle(self, idle_s: float) -> int:
        """Forget sessions with no connection and no turn for `idle_s` (they stay in the store)."""
        now = time.monotonic()
        stale = [sid for sid, s in self.sessions.items()
                 if s.sink is None and s.turn is None and not s.unsettled and now - s.touched > idle_s]
        for sid in stale:
            s = self.sessions.pop(sid)
            self._summarize(s)
            s.agent.close_session(sid)
        return len(stale)

    # -- long-term memory (xdai.service.memory) --------------------------------------------------------------
    def _attach_memory(self, s: LiveSession) -> None:
        """A session with a user carries the user's memory for its bot, unless the bot keeps none."""
        if self.memory is not None and s.record.user and self.memory.enabled(s.agent):
            self.memory.attach(s.history, s.record.user, s.record.bot)

    def _remember(self, s: LiveSession, turn: Turn) -> None:
        """After a completed exchange: extract its facts off the reply's path; once written, tell the client
        (``event {name: "memory"}``), so that what it was told is on disk."""
        if self.memory is None or getattr(s.history, "memory", None) is None or s.record.user is None:
            return
        loop = asyncio.get_running_loop()

        def done(changes: list[Any]) -> None:
            data = {"saved": [c.to_json() for c in changes if c.action != "kept"], "seq": turn.seq}
            loop.call_soon_threadsafe(self._memory_event, s, data)

        self.memory.observe(s.agent, s.record.user, s.record.bot, s.id, turn.seq, turn.text, done)

    def _memory_event(self, s: LiveSession, data: dict[str, Any]) -> None:
        if self.sessions.get(s.id) is s:  # a session let go meanwhile is reloaded from the store: not this one
            self.emit_event(s, "memory", data)

    def _summarize(self, s: LiveSession, *, use_model: bool = True) -> None:
        """A session that idles out (or is left at shutdown) with exchanges not yet summarised: its summary."""
        if self.memory is None or getattr(s.history, "memory", None) is None or s.record.user is None:
            return
        if len(s.history) <= s.summarized:
            return
        s.summarized = len(s.history)
        pairs = [(e.user, e.bot) for e in s.history.exchanges]
        self.memory.summarize(s.agent, s.record.user, s.record.bot, s.id, pairs, use_model=use_model)

    async def memory_list(self, s: LiveSession) -> dict[str, Any]:
        """``memory.list``: the session's own user's memories for its bot."""
        user = self._memory_user(s)
        return server_frame("memory.items", s.id, None, items=await self.db(self.memory.list, user, s.record.bot))

    async def memory_forget(self, s: LiveSession, item: str | None) -> dict[str, Any]:
        """``memory.forget``: delete the session's own user's memories for its bot (or the one `item`), for good."""
        user = self._memory_user(s)
        count = await self.db(self.memory.forget, user, s.record.bot, item)
        frame = server_frame("memory.forgotten", s.id, None, count=count)
        if item is not None:
            frame["item"] = item
        return frame

    def _memory_user(self, s: LiveSession) -> str:
        if self.memory is None or s.record.user is None or getattr(s.history, "memory", None) is None:
            raise ProtocolError("memory_off", "this session has no long-term memory: open it with a 'user' (and a bot "
                                "whose persona keeps memory) to have one")
        return s.record.user

    # -- one message -----------------------------------------------------------------------------------------
    async def message(self, s: LiveSession, frame: dict[str, Any], received: float,
                      tags: tuple[tuple[str, str], ...] = ()) -> None:
        """Handle ``message.create``: ack durably, then run the turn in the background. `tags` name the client
        (address, key) whose quota of turns in flight the turn counts against."""
        msg_id, text = frame["id"], frame["text"]
        s.touched = time.monotonic()
        if msg_id in s.seen or (s.turn is not None and s.turn.msg_id == msg_id):  # a retry: never reply twice
            async with s.lock:
                frame = self._frame(s, "message.ack", reply_to=msg_id, duplicate=True)
                await self._write(self.store.log_frames, s.id, [frame], reply_to=msg_id)
                self._send(s, frame)
            return
        if len(text) > self.max_message_chars:
            raise ProtocolError("message_too_long", f"text has {len(text)} characters; the limit is "
                                f"{self.max_message_chars}", reply_to=msg_id, field="text")
        condition = frame.get("condition")
        if condition is not None:
            try:
                s.agent.condition_text(condition)
            except ValueError as exc:
                raise ProtocolError("invalid_frame", str(exc), reply_to=msg_id, field="condition") from None
        if s.turn is not None:
            raise ProtocolError("response_in_flight", f"a reply to {s.turn.msg_id!r} is still streaming: wait for its "
                                "response.end or cancel it", retryable=True, reply_to=msg_id)
        if self.closing:
            raise ProtocolError("shutting_down", "the server is shutting down; send again after reconnecting",
                                retryable=True, reply_to=msg_id)
        full = self.quota.acquire(tags)
        if full is not None:
            raise ProtocolError("too_many_turns", f"too many replies in flight for this {_QUOTA_NAMES.get(full, full)}"
                                "; wait for one to end", retryable=True, reply_to=msg_id, retry_after_ms=1000)
        if not self.pool.admit():
            self.quota.release(tags)
            raise ProtocolError("busy", "all generation workers and the queue are full; retry shortly",
                                retryable=True, reply_to=msg_id, retry_after_ms=1000)
        turn = Turn(msg_id, f"r-{uuid.uuid4().hex[:16]}", text, received, tags=tags)
        s.turn = turn
        try:
            async with s.lock:
                await self._settle(s, reply_to=msg_id)
                ack = self._frame(s, "message.ack", reply_to=msg_id)
                turn.seq = ack["seq"]
                stored = await self._write(self.store.add_user_message, s.id, msg_id, text, frame.get("metadata"),
                                           [ack], reply_to=msg_id)
                s.seen.add(msg_id)
                if not stored:  # stored earlier through another replica: a retry after all
                    ack["duplicate"] = True
                    await self._write(self.store.log_frames, s.id, [ack], reply_to=msg_id)
                    self._send(s, ack)
                    s.turn = None
                    self._release(turn)
                    return
                self._send(s, ack, received)
                start = self._frame(s, "response.start", response_id=turn.response_id, reply_to=msg_id)
                s.seq_reserved = start["seq"] + SEQ_WINDOW
                await self._write(self.store.begin_reply, s.id, turn.response_id, msg_id, self.owner, [start],
                                  s.seq_reserved, reply_to=msg_id)
                self._send(s, start)
        except BaseException:
            if s.turn is turn:
                s.turn = None
                self._release(turn)
            raise
        turn.task = asyncio.create_task(self._run_turn(s, turn, condition))

    def _release(self, turn: Turn) -> None:
        self.pool.release()
        self.quota.release(turn.tags)

    async def _write(self, fn: Callable[..., Any], *args: Any, reply_to: str | None = None, **kwargs: Any) -> Any:
        """A store write a client is waiting on: its failure is a retryable ``storage_error`` about `reply_to`."""
        try:
            return await self.db(fn, *args, **kwargs)
        except StorageError as exc:
            raise ProtocolError("storage_error", f"the session store failed ({_storage_words(exc)}); nothing was "
                                "changed: retry shortly", retryable=True, reply_to=reply_to) from None

    async def _settle(self, s: LiveSession, reply_to: str | None = None) -> None:
        """Store the ends of replies that could not be stored when they ended (under `s.lock`), oldest first,
        so that the next turn starts from what the client was told."""
        while s.unsettled:
            response_id, frames = s.unsettled[0]
            await self._write(self.store.finish_reply, s.id, response_id, text="", status="error",
                              finish_reason="error", usage={}, grounding=[], frames=frames, reply_to=reply_to)
            s.unsettled.pop(0)

    async def _run_turn(self, s: LiveSession, turn: Turn, condition: str | None) -> None:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[TurnEvent | BaseException, float]] = asyncio.Queue()
        turn.job = Job(s.agent, s.history, turn.text, condition,
                       lambda item, t0: loop.call_soon_threadsafe(items.put_nowait, (item, t0)), session=s.id)
        if turn.reason is not None:  # ended before it started (its client left)
            turn.job.cancel()
        first: float | None = None
        try:
            self.pool.submit(turn.job)
            while True:
                item, t0 = await items.get()
                match item:
                    case Reply():  # the turn is over
                        await self._finish(s, turn, item, None, first)
                        return
                    case BaseException():  # the turn failed before the agent could answer
                        await self._finish(s, turn, None, item, first)
                        return
                    case BotEvent(name=name, data=data):  # a flow's event during the turn, logged with the reply
                        await self._stream(s, t0, "event", name=name, data=data)
                    case Delta(text=text):
                        if first is None:
                            first = time.perf_counter()
                            self.metrics.ttft.observe(first - turn.received)
                        await self._stream(s, t0, "response.delta", response_id=turn.response_id, text=text)
                    case _:
                        raise TypeError(f"a responder's turn yields Delta, BotEvent or Reply, not {type(item).__name__}")
        except Exception as exc:
            if isinstance(exc, StorageError):
                log.error("turn %s: the session store failed: %s", turn.response_id, exc)
                turn.job.cancel()  # nothing more of it can be stored
            else:
                log.exception("turn %s failed", turn.response_id)
            await self._finish(s, turn, None, exc, first)
        finally:
            self._release(turn)
            if s.turn is turn:
                s.turn = None
            turn.done.set()

    async def _stream(self, s: LiveSession, t0: float, kind: str, **fields: Any) -> None:
        """Send a frame of the reply in flight. It is stored with the reply when the reply ends (`pending`), so its
        seq is reserved in the store first, a window at a time: a crash never reuses a seq a client has seen."""
        async with s.lock:
            if s.next_seq > s.seq_reserved:
                s.seq_reserved = s.next_seq + SEQ_WINDOW
                await self.db(self.store.reserve_seq, s.id, s.seq_reserved)
            frame = self._frame(s, kind, **fields)
            s.pending.append(frame)
            self._send(s, frame, t0)

    async def _finish(self, s: LiveSession, turn: Turn, reply: Reply | None, exc: BaseException | None,
                      first: float | None) -> None:
        """Write the reply and its frames, then send ``response.end`` (and an ``error`` when it failed)."""
        if turn.finished:
            return
        turn.finished = True
        now = time.perf_counter()
        if reply is not None:
            reason, error = reply.finish_reason, reply.error
            text, usage, grounding = reply.text, dict(reply.usage), list(reply.grounding)
            suggestions = list(reply.suggestions)
        else:
            error = f"{type(exc).__name__}: {exc}" if exc is not None else None
            reason, text, usage, grounding, suggestions = "error", "", {}, [], []
            if isinstance(exc, JobCancelled):
                reason, error = "cancelled", None
        if turn.reason is not None:
            reason = turn.reason
        status = {"stop": "complete", "length": "complete", "cancelled": "cancelled", "error": "error",
                  "interrupted": "interrupted"}.get(reason, "error")
        if status == "interrupted":
            text = ""
        timings = {"ttft_ms": None if first is None else round((first - turn.received) * 1000, 3),
                   "total_ms": round((now - turn.received) * 1000, 3)}
        async with s.lock:
            end = self._frame(s, "response.end", response_id=turn.response_id, reply_to=turn.msg_id,
                              finish_reason=reason, text=text, usage=usage, timings=timings,
                              grounding=[_grounding(g) for g in grounding], suggestions=suggestions)
            frames = [*s.pending, end]
            if reason == "error":
                frames.append(self._frame(s, "error", code="backend_error", retryable=True, reply_to=turn.msg_id,
                                          message=scrub_paths(f"the reply failed: {error or 'unknown error'}")))
                if isinstance(exc, StorageError):
                    frames[-1].update(code="storage_error", message=f"the reply could not be stored "
                                      f"({_storage_words(exc)}); the session is as before it: send again")
            try:
                await self.db(self.store.finish_reply, s.id, turn.response_id, text=text, status=status,
                              finish_reason=reason, usage=usage, grounding=end["grounding"], frames=frames)
            except StorageError as failure:  # the end is sent anyway, as an error; stored before the next turn
                log.error("turn %s: its end could not be stored: %s", turn.response_id, failure)
                reason = "error"
                end = {**end, "finish_reason": "error", "text": "", "grounding": [], "suggestions": []}
                seq = end["seq"] + 1
                if seq == s.next_seq:
                    s.next_seq += 1
                problem = server_frame("error", s.id, seq, code="storage_error", retryable=True, reply_to=turn.msg_id,
                                       message=f"the reply could not be stored ({_storage_words(failure)}); the "
                                       "session is as before it: send again")
                frames = [end, problem]
                s.unsettled.append((turn.response_id, frames))
            else:
                if status == "complete":
                    s.history.append(turn.text, text)
                    self._remember(s, turn)
            finally:
                s.pending.clear()
                s.seq_reserved = s.next_seq - 1
            for frame in frames[-2:] if reason == "error" else frames[-1:]:
                self._send(s, frame)
        self.metrics.turns.inc(bot=s.record.bot, finish_reason=reason)
        self.metrics.reply_seconds.observe(now - turn.received)

    def cancel(self, s: LiveSession, reply_to: str) -> None:
        """Handle ``response.cancel``: the turn ends with finish_reason "cancelled"."""
        if s.turn is None or s.turn.msg_id != reply_to:
            current = f"the reply in flight answers {s.turn.msg_id!r}" if s.turn else "no reply is in flight"
            raise ProtocolError("not_in_flight", f"nothing to cancel for {reply_to!r}: {current}", reply_to=reply_to,
                                field="reply_to")
        if s.turn.job is not None:
            s.turn.job.cancel()

    # -- shutdown --------------------------------------------------------------------------------------------
    async def drain(self, grace_s: float) -> int:
        """Refuse new turns, give in-flight ones `grace_s` to finish, end the rest "interrupted". Returns how many."""
        self.closing = True
        turns = [s.turn for s in self.sessions.values() if s.turn is not None]
        if turns:
            await asyncio.wait([asyncio.create_task(t.done.wait()) for t in turns], timeout=grace_s)
        late = [t for t in turns if not t.done.is_set()]
        for t in late:
            t.reason = "interrupted"
            if t.job is not None:
                t.job.cancel()
        if late:
            await asyncio.wait([asyncio.create_task(t.done.wait()) for t in late], timeout=max(grace_s, 5.0))
        owners = {id(s.turn): s for s in self.sessions.values() if s.turn is not None}
        for t in late:  # still generating (a long prompt evaluation, say): end them here
            if not t.done.is_set() and id(t) in owners:
                await self._finish(owners[id(t)], t, None, None, None)
                if t.task is not None:
                    t.task.cancel()
        return len(late)

    def close(self) -> None:
        if self.memory is not None:  # sessions still here get their summary (the user's own lines: no model now)
            for s in list(self.sessions.values()):
                self._summarize(s, use_model=False)
            self.memory.close()
        self._db.submit(self.store.close).result()
        self._db.shutdown(wait=True)


_WRITES = frozenset({"create", "add_user_message", "begin_reply", "reserve_seq", "finish_reply", "log_frames",
                     "heartbeat", "interrupt", "recover", "release"})
_QUOTA_NAMES = {"ip": "address", "key": "API key"}


def _storage_words(exc: BaseException) -> str:
    """What went wrong in the store, for a client: its words, no paths."""
    return scrub_paths(str(exc).split(": ", 1)[-1])[:200] or "unknown error"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _grounding(g: Any) -> dict[str, Any]:
    """The wire shape of one grounding source, whatever mapping the agent gave."""
    get = g.get if isinstance(g, dict) else lambda k, d=None: getattr(g, k, d)
    return {"source_id": str(get("source_id", "") or ""), "kind": str(get("kind", "") or ""),
            "score": float(get("score", 0.0) or 0.0), "text": str(get("text", "") or "")}
