"""Session stores: SQLite (WAL, the default) and Redis (several replicas behind a load balancer), one interface.

A session is its bot, its greeting, its messages and the log of the server frames it was sent (``seq`` ordered),
from which a reconnecting client resumes. What must survive a crash is written before the frame that promises it:
a user message before ``message.ack``, a reply (text, grounding, its frames) before ``response.end``.

Deltas are not written one by one: a reply's frames are written with its end. So that ``seq`` never repeats after a
crash, ``response.start`` durably reserves a window of seqs (``seq_reserved``); a restarted server continues above it.
A reply that was streaming when its server died is found by `recover` and marked ``interrupted`` (no partial text is
kept), with a ``response.end {finish_reason: "interrupted"}`` frame logged in its place.

The methods are synchronous; the server calls them from one dedicated thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from xdai.service.protocol import server_frame

SEQ_WINDOW = 1024  # seqs reserved per reply; a reply longer than this reserves another window
RESUME_WINDOW = 4096  # frames kept per session for resuming


@dataclass
class SessionRecord:
    session_id: str
    bot: str
    greeting: str
    created: float
    last_seq: int  # highest seq written to the frame log
    seq_reserved: int  # highest seq that may have been sent

    @property
    def next_seq(self) -> int:
        return max(self.last_seq, self.seq_reserved) + 1


class SessionStore(Protocol):
    def create(self, session_id: str, bot: str, greeting: str) -> SessionRecord: ...
    def get(self, session_id: str) -> SessionRecord | None: ...
    def add_user_message(self, session_id: str, msg_id: str, text: str, metadata: dict[str, Any] | None,
                         frames: Sequence[dict[str, Any]]) -> bool: ...
    def begin_reply(self, session_id: str, response_id: str, reply_to: str, owner: str,
                    frames: Sequence[dict[str, Any]], seq_reserved: int) -> None: ...
    def reserve_seq(self, session_id: str, seq_reserved: int) -> None: ...
    def finish_reply(self, session_id: str, response_id: str, *, text: str, status: str, finish_reason: str,
                     usage: dict[str, Any], grounding: list[dict[str, Any]], frames: Sequence[dict[str, Any]]) -> None: ...
    def log_frames(self, session_id: str, frames: Sequence[dict[str, Any]]) -> None: ...
    def frames_after(self, session_id: str, seq: int) -> list[dict[str, Any]]: ...
    def messages(self, session_id: str) -> list[dict[str, Any]]: ...
    def recover(self, owner: str) -> list[tuple[str, str]]: ...
    def close(self) -> None: ...


def exchanges(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (user, bot) pairs whose reply completed: what the next turn's history is made of."""
    users = {m["id"]: m["text"] for m in messages if m["role"] == "user"}
    return [(users[m["reply_to"]], m["text"]) for m in messages
            if m["role"] == "bot" and m["status"] == "complete" and m["reply_to"] in users]


def interrupted_end(session_id: str, seq: int, response_id: str, reply_to: str) -> dict[str, Any]:
    return server_frame("response.end", session_id, seq, response_id=response_id, reply_to=reply_to,
                        finish_reason="interrupted", usage={}, timings={"ttft_ms": None, "total_ms": None},
                        grounding=[])


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------------- SQLite
_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
  session_id TEXT PRIMARY KEY, bot TEXT NOT NULL, greeting TEXT NOT NULL, created REAL NOT NULL,
  updated REAL NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0, seq_reserved INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS messages (
  ord INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL, id TEXT NOT NULL, role TEXT NOT NULL,
  text TEXT NOT NULL, status TEXT NOT NULL, reply_to TEXT, finish_reason TEXT, usage TEXT, grounding TEXT,
  metadata TEXT, owner TEXT, created REAL NOT NULL, UNIQUE (session_id, role, id));
CREATE INDEX IF NOT EXISTS messages_streaming ON messages (status) WHERE status = 'streaming';
CREATE TABLE IF NOT EXISTS frames (
  session_id TEXT NOT NULL, seq INTEGER NOT NULL, frame TEXT NOT NULL, PRIMARY KEY (session_id, seq));
"""


class SQLiteSessionStore:
    """One SQLite file in WAL mode. ``synchronous=FULL`` by default: a commit is on disk before its frame is sent."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = str(path)
        # Without an fsync per commit (NORMAL: still safe against a process crash, not against power loss) a
        # commit takes microseconds, so the server runs it on its event loop rather than paying two thread hops.
        self.inline = synchronous.upper() in ("OFF", "NORMAL")
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SQLITE_SCHEMA)

    def _tx(self, fn: Any) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return out

    @staticmethod
    def _log(db: sqlite3.Connection, session_id: str, frames: Sequence[dict[str, Any]]) -> None:
        if not frames:
            return
        db.executemany("INSERT OR REPLACE INTO frames (session_id, seq, frame) VALUES (?, ?, ?)",
                       [(session_id, f["seq"], _dump(f)) for f in frames])
        db.execute("UPDATE sessions SET last_seq = MAX(last_seq, ?), updated = ? WHERE session_id = ?",
                   (max(f["seq"] for f in frames), time.time(), session_id))

    def create(self, session_id: str, bot: str, greeting: str) -> SessionRecord:
        now = time.time()
        self._tx(lambda db: db.execute(
            "INSERT INTO sessions (session_id, bot, greeting, created, updated) VALUES (?, ?, ?, ?, ?)",
            (session_id, bot, greeting, now, now)))
        return SessionRecord(session_id, bot, greeting, now, 0, 0)

    def get(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            row = self._db.execute("SELECT session_id, bot, greeting, created, last_seq, seq_reserved FROM sessions "
                                   "WHERE session_id = ?", (session_id,)).fetchone()
        return SessionRecord(*row) if row else None

    def add_user_message(self, session_id: str, msg_id: str, text: str, metadata: dict[str, Any] | None,
                         frames: Sequence[dict[str, Any]]) -> bool:
        def tx(db: sqlite3.Connection) -> bool:
            cur = db.execute("INSERT OR IGNORE INTO messages (session_id, id, role, text, status, metadata, created) "
                             "VALUES (?, ?, 'user', ?, 'acked', ?, ?)",
                             (session_id, msg_id, text, _dump(metadata or {}), time.time()))
            if cur.rowcount == 0:
                return False
            self._log(db, session_id, frames)
            return True

        return self._tx(tx)

    def begin_reply(self, session_id: str, response_id: str, reply_to: str, owner: str,
                    frames: Sequence[dict[str, Any]], seq_reserved: int) -> None:
        def tx(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO messages (session_id, id, role, text, status, reply_to, owner, created) "
                       "VALUES (?, ?, 'bot', '', 'streaming', ?, ?, ?)",
                       (session_id, response_id, reply_to, owner, time.time()))
            db.execute("UPDATE sessions SET seq_reserved = MAX(seq_reserved, ?) WHERE session_id = ?",
                       (seq_reserved, session_id))
            self._log(db, session_id, frames)

        self._tx(tx)

    def reserve_seq(self, session_id: str, seq_reserved: int) -> None:
        self._tx(lambda db: db.execute("UPDATE sessions SET seq_reserved = MAX(seq_reserved, ?) WHERE session_id = ?",
                                       (seq_reserved, session_id)))

    def finish_reply(self, session_id: str, response_id: str, *, text: str, status: str, finish_reason: str,
                     usage: dict[str, Any], grounding: list[dict[str, Any]], frames: Sequence[dict[str, Any]]) -> None:
        def tx(db: sqlite3.Connection) -> None:
            db.execute("UPDATE messages SET text = ?, status = ?, finish_reason = ?, usage = ?, grounding = ? "
                       "WHERE session_id = ? AND role = 'bot' AND id = ?",
                       (text, status, finish_reason, _dump(usage), _dump(grounding), session_id, response_id))
            self._log(db, session_id, frames)
            if frames:  # release the unused part of the reserved seq window; trim the resume log
                top = max(f["seq"] for f in frames)
                db.execute("UPDATE sessions SET seq_reserved = ? WHERE session_id = ?", (top, session_id))
                db.execute("DELETE FROM frames WHERE session_id = ? AND seq <= ?", (session_id, top - RESUME_WINDOW))

        self._tx(tx)

    def log_frames(self, session_id: str, frames: Sequence[dict[str, Any]]) -> None:
        self._tx(lambda db: self._log(db, session_id, frames))

    def frames_after(self, session_id: str, seq: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT frame FROM frames WHERE session_id = ? AND seq > ? ORDER BY seq",
                                    (session_id, seq)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT id, role, text, status, reply_to, finish_reason, usage, grounding, "
                                    "metadata FROM messages WHERE session_id = ? ORDER BY ord", (session_id,)).fetchall()
        keys = ("id", "role", "text", "status", "reply_to", "finish_reason", "usage", "grounding", "metadata")
        out = []
        for row in rows:
            m = dict(zip(keys, row, strict=True))
            for k in ("usage", "grounding", "metadata"):
                m[k] = json.loads(m[k]) if m[k] else None
            out.append(m)
        return out

    def recover(self, owner: str) -> list[tuple[str, str]]:
        def tx(db: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = db.execute("SELECT m.session_id, m.id, m.reply_to, s.last_seq, s.seq_reserved FROM messages m "
                              "JOIN sessions s USING (session_id) WHERE m.status = 'streaming' AND m.owner = ?",
                              (owner,)).fetchall()
            done = []
            for session_id, response_id, reply_to, last_seq, reserved in rows:
                db.execute("UPDATE messages SET status = 'interrupted', finish_reason = 'interrupted', text = '' "
                           "WHERE session_id = ? AND role = 'bot' AND id = ?", (session_id, response_id))
                seq = max(last_seq, reserved) + 1
                self._log(db, session_id, [interrupted_end(session_id, seq, response_id, reply_to)])
                done.append((session_id, response_id))
            return done

        return self._tx(tx)

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ------------------------------------------------------------------------------------------------------ Redis
class RedisSessionStore:
    """The same records in Redis, so that several server replicas share sessions. Durability is Redis's own
    (run it with ``appendonly yes``); each write below is one MULTI/EXEC transaction."""

    def __init__(self, url: str, *, prefix: str = "xdai") -> None:
        import redis

        self._r = redis.Redis.from_url(url, decode_responses=True)
        self._r.ping()
        self.prefix = prefix

    def _k(self, session_id: str, part: str = "") -> str:
        return f"{self.prefix}:session:{session_id}{':' + part if part else ''}"

    def _log(self, pipe: Any, session_id: str, frames: Sequence[dict[str, Any]]) -> None:
        if not frames:
            return
        pipe.zadd(self._k(session_id, "frames"), {_dump(f): f["seq"] for f in frames})
        top = max(f["seq"] for f in frames)
        pipe.eval("local v = tonumber(redis.call('HGET', KEYS[1], 'last_seq') or '0') "
                  "if tonumber(ARGV[1]) > v then redis.call('HSET', KEYS[1], 'last_seq', ARGV[1]) end "
                  "redis.call('HSET', KEYS[1], 'updated', ARGV[2]) return 1", 1, self._k(session_id), top, time.time())

    def create(self, session_id: str, bot: str, greeting: str) -> SessionRecord:
        now = time.time()
        created = self._r.hsetnx(self._k(session_id), "bot", bot)
        if not created:
            raise ValueError(f"session {session_id} already exists")
        self._r.hset(self._k(session_id), mapping={"greeting": greeting, "created": now, "updated": now,
                                                   "last_seq": 0, "seq_reserved": 0})
        return SessionRecord(session_id, bot, greeting, now, 0, 0)

    def get(self, session_id: str) -> SessionRecord | None:
        h = self._r.hgetall(self._k(session_id))
        if not h or "greeting" not in h:
            return None
        return SessionRecord(session_id, h["bot"], h["greeting"], float(h["created"]), int(h["last_seq"]),
                             int(h["seq_reserved"]))

    def _message_key(self, role: str, msg_id: str) -> str:
        return f"{role}:{msg_id}"

    def add_user_message(self, session_id: str, msg_id: str, text: str, metadata: dict[str, Any] | None,
                         frames: Sequence[dict[str, Any]]) -> bool:
        key = self._message_key("user", msg_id)
        record = {"id": msg_id, "role": "user", "text": text, "status": "acked", "reply_to": None,
                  "finish_reason": None, "usage": None, "grounding": None, "metadata": metadata or {}}
        if not self._r.hsetnx(self._k(session_id, "messages"), key, _dump(record)):
            return False
        pipe = self._r.pipeline(transaction=True)
        pipe.rpush(self._k(session_id, "order"), key)
        self._log(pipe, session_id, frames)
        pipe.execute()
        return True

    def begin_reply(self, session_id: str, response_id: str, reply_to: str, owner: str,
                    frames: Sequence[dict[str, Any]], seq_reserved: int) -> None:
        key = self._message_key("bot", response_id)
        record = {"id": response_id, "role": "bot", "text": "", "status": "streaming", "reply_to": reply_to,
                  "finish_reason": None, "usage": None, "grounding": None, "metadata": None, "owner": owner}
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._k(session_id, "messages"), key, _dump(record))
        pipe.rpush(self._k(session_id, "order"), key)
        pipe.sadd(f"{self.prefix}:streaming:{owner}", f"{session_id}\t{response_id}")
        self._reserve(pipe, session_id, seq_reserved)
        self._log(pipe, session_id, frames)
        pipe.execute()

    def _reserve(self, pipe: Any, session_id: str, seq_reserved: int) -> None:
        pipe.eval("local v = tonumber(redis.call('HGET', KEYS[1], 'seq_reserved') or '0') "
                  "if tonumber(ARGV[1]) > v then redis.call('HSET', KEYS[1], 'seq_reserved', ARGV[1]) end return 1",
                  1, self._k(session_id), seq_reserved)

    def reserve_seq(self, session_id: str, seq_reserved: int) -> None:
        pipe = self._r.pipeline(transaction=True)
        self._reserve(pipe, session_id, seq_reserved)
        pipe.execute()

    def _update_reply(self, pipe: Any, session_id: str, response_id: str, **changes: Any) -> None:
        """Rewrite a reply's record and drop it from its owner's streaming set."""
        key = self._message_key("bot", response_id)
        record = json.loads(self._r.hget(self._k(session_id, "messages"), key) or "{}")
        record.update(changes)
        pipe.hset(self._k(session_id, "messages"), key, _dump(record))
        if record.get("owner"):
            pipe.srem(f"{self.prefix}:streaming:{record['owner']}", f"{session_id}\t{response_id}")

    def finish_reply(self, session_id: str, response_id: str, *, text: str, status: str, finish_reason: str,
                     usage: dict[str, Any], grounding: list[dict[str, Any]], frames: Sequence[dict[str, Any]]) -> None:
        pipe = self._r.pipeline(transaction=True)
        self._update_reply(pipe, session_id, response_id, text=text, status=status, finish_reason=finish_reason,
                           usage=usage, grounding=grounding)
        self._log(pipe, session_id, frames)
        if frames:  # release the unused part of the reserved seq window; trim the resume log
            top = max(f["seq"] for f in frames)
            pipe.hset(self._k(session_id), "seq_reserved", top)
            pipe.zremrangebyscore(self._k(session_id, "frames"), "-inf", top - RESUME_WINDOW)
        pipe.execute()

    def log_frames(self, session_id: str, frames: Sequence[dict[str, Any]]) -> None:
        pipe = self._r.pipeline(transaction=True)
        self._log(pipe, session_id, frames)
        pipe.execute()

    def frames_after(self, session_id: str, seq: int) -> list[dict[str, Any]]:
        return [json.loads(m) for m in self._r.zrangebyscore(self._k(session_id, "frames"), f"({seq}", "+inf")]

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        keys = self._r.lrange(self._k(session_id, "order"), 0, -1)
        if not keys:
            return []
        values = self._r.hmget(self._k(session_id, "messages"), keys)
        out = [json.loads(v) for v in values if v]
        for m in out:
            m.pop("owner", None)
        return out

    def recover(self, owner: str) -> list[tuple[str, str]]:
        done = []
        for entry in self._r.smembers(f"{self.prefix}:streaming:{owner}"):
            session_id, response_id = entry.split("\t", 1)
            record = self.get(session_id)
            key = self._message_key("bot", response_id)
            raw = self._r.hget(self._k(session_id, "messages"), key)
            if record is None or raw is None:
                self._r.srem(f"{self.prefix}:streaming:{owner}", entry)
                continue
            reply_to = json.loads(raw)["reply_to"]
            pipe = self._r.pipeline(transaction=True)
            self._update_reply(pipe, session_id, response_id, text="", status="interrupted",
                               finish_reason="interrupted")
            self._log(pipe, session_id, [interrupted_end(session_id, record.next_seq, response_id, reply_to)])
            pipe.execute()
            done.append((session_id, response_id))
        return done

    def close(self) -> None:
        self._r.close()


def open_store(kind: str, *, sqlite_path: str, redis_url: str, synchronous: str = "FULL") -> SessionStore:
    if kind == "sqlite":
        return SQLiteSessionStore(sqlite_path, synchronous=synchronous)
    if kind == "redis":
        return RedisSessionStore(redis_url)
    raise ValueError(f"server.session_store: unknown store {kind!r} (sqlite | redis)")
