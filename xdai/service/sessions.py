"""Session stores: SQLite (WAL, the default) and Redis (several replicas behind a load balancer), one interface.

A session is its bot, its greeting, its messages and the log of the server frames it was sent (``seq`` ordered),
from which a reconnecting client resumes. What must survive a crash is written before the frame that promises it:
a user message before ``message.ack``, a reply (text, grounding, its frames) before ``response.end``.

Deltas are not written one by one: a reply's frames are written with its end. So that ``seq`` never repeats after a
crash, ``response.start`` durably reserves a window of seqs (``seq_reserved``); a restarted server continues above it.
A reply that was streaming when its server died is found by `recover` and marked ``interrupted`` (no partial text is
kept), with a ``response.end {finish_reason: "interrupted"}`` frame logged in its place.

Each session belongs to a principal (an API key's, or the holder of its resume token; see security.py), stored
as a digest with it. Each server holds a lease (`heartbeat`) under its instance id; a reply whose owner's lease has
lapsed is found by `streaming` and ended by `interrupt`, whatever the new server is called.

The methods are synchronous; the server calls them from one dedicated thread. A store that cannot read or write
raises `StorageError`; one that cannot be used at all (corrupt, unwritable, not a database) raises `StoreUnusable`
at open, with a message naming the file and what to do.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from xdai.service.protocol import server_frame

SEQ_WINDOW = 1024  # seqs reserved per reply; a reply longer than this reserves another window
RESUME_WINDOW = 4096  # frames kept per session for resuming


class StorageError(RuntimeError):
    """A session store could not read or write (disk full, I/O error, corruption, a lost Redis)."""


class StoreUnusable(StorageError):
    """The store cannot be used at all; the message names it and says what to do."""


_F = TypeVar("_F", bound=Callable[..., Any])


def storage_errors(*kinds: type[BaseException]) -> Callable[[_F], _F]:
    """Re-raise the store's own exceptions as `StorageError` (the service answers ``storage_error``)."""
    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except StorageError:
                raise
            except kinds as exc:
                raise StorageError(f"{type(exc).__name__}: {exc}") from exc
        return call  # type: ignore[return-value]
    return wrap


def transaction(db: sqlite3.Connection, lock: threading.Lock, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    """Run `fn(db)` in one write transaction (BEGIN IMMEDIATE ... COMMIT) under `lock`; roll back on any error.

    Shared by the session store and the memory store that lives in the same database file."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(db)
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:  # SQLite may have rolled back already (a full disk does)
                pass
            raise
        return out


@dataclass
class SessionRecord:
    session_id: str
    bot: str
    greeting: str
    created: float
    last_seq: int  # highest seq written to the frame log
    seq_reserved: int  # highest seq that may have been sent
    principal: str | None = None  # who owns it (a digest, see security.py); None: made before sessions had owners
    user: str | None = None  # whose long-term memory it uses (namespaced, see xdai.memory); None: no memory

    @property
    def next_seq(self) -> int:
        return max(self.last_seq, self.seq_reserved) + 1


@dataclass(frozen=True)
class Lease:
    """A server's claim to be alive: renewed every few seconds while it runs."""

    owner: str
    host: str
    pid: int
    heartbeat: float  # time.time() of the last renewal


class SessionStore(Protocol):
    def create(self, session_id: str, bot: str, greeting: str, principal: str | None = None,
               user: str | None = None) -> SessionRecord: ...
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
    def heartbeat(self, owner: str, host: str, pid: int) -> None: ...
    def release(self, owner: str) -> None: ...
    def leases(self) -> dict[str, Lease]: ...
    def streaming(self) -> list[tuple[str, str, str]]: ...
    def interrupt(self, session_id: str, response_id: str, owner: str) -> dict[str, Any] | None: ...
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
CREATE TABLE IF NOT EXISTS leases (
  owner TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, heartbeat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_sqlite_errors = storage_errors(sqlite3.Error, OverflowError)


class SQLiteSessionStore:
    """One SQLite file in WAL mode. ``synchronous=FULL`` by default: a commit is on disk before its frame is sent.

    Opening checks the file (``PRAGMA quick_check`` and a test write) and refuses a corrupt, unwritable or empty
    one with `StoreUnusable`, rather than failing at the first message."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = str(path)
        # Without an fsync per commit (NORMAL: still safe against a process crash, not against power loss) a
        # commit takes microseconds, so the server runs it on its event loop rather than paying two thread hops.
        self.inline = synchronous.upper() in ("OFF", "NORMAL")
        self._lock = threading.Lock()
        if self.path != ":memory:":
            _check_file(Path(self.path))
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise _unusable(self.path, exc) from None
        try:
            self._db.execute("PRAGMA busy_timeout=5000")
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise StoreUnusable(_corrupt(self.path, "; ".join(problems)))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SQLITE_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
            if "principal" not in columns:  # a database from before sessions had owners
                self._db.execute("ALTER TABLE sessions ADD COLUMN principal TEXT")
            if "user" not in columns:  # ... or users with a memory
                self._db.execute("ALTER TABLE sessions ADD COLUMN user TEXT")
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened', ?)", (str(time.time()),))
        except StoreUnusable:
            self._db.close()
            raise
        except sqlite3.Error as exc:
            self._db.close()
            raise _unusable(self.path, exc) from None

    def _tx(self, fn: Any) -> Any:
        return transaction(self._db, self._lock, fn)

    @staticmethod
    def _log(db: sqlite3.Connection, session_id: str, frames: Sequence[dict[str, Any]]) -> None:
        if not frames:
            return
        db.executemany("INSERT OR REPLACE INTO frames (session_id, seq, frame) VALUES (?, ?, ?)",
                       [(session_id, f["seq"], _dump(f)) for f in frames])
        db.execute("UPDATE sessions SET last_seq = MAX(last_seq, ?), updated = ? WHERE session_id = ?",
                   (max(f["seq"] for f in frames), time.time(), session_id))

    @_sqlite_errors
    def create(self, session_id: str, bot: str, greeting: str, principal: str | None = None,
               user: str | None = None) -> SessionRecord:
        now = time.time()
        self._tx(lambda db: db.execute(
            "INSERT INTO sessions (session_id, bot, greeting, created, updated, principal, user) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", (session_id, bot, greeting, now, now, principal, user)))
        return SessionRecord(session_id, bot, greeting, now, 0, 0, principal, user)

    @_sqlite_errors
    def get(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            row = self._db.execute("SELECT session_id, bot, greeting, created, last_seq, seq_reserved, principal, "
                                   "user FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        return SessionRecord(*row) if row else None

    @_sqlite_errors
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

    @_sqlite_errors
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

    @_sqlite_errors
    def reserve_seq(self, session_id: str, seq_reserved: int) -> None:
        self._tx(lambda db: db.execute("UPDATE sessions SET seq_reserved = MAX(seq_reserved, ?) WHERE session_id = ?",
                                       (seq_reserved, session_id)))

    @_sqlite_errors
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

    @_sqlite_errors
    def log_frames(self, session_id: str, frames: Sequence[dict[str, Any]]) -> None:
        self._tx(lambda db: self._log(db, session_id, frames))

    @_sqlite_errors
    def frames_after(self, session_id: str, seq: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT frame FROM frames WHERE session_id = ? AND seq > ? ORDER BY seq",
                                    (session_id, seq)).fetchall()
        return [json.loads(r[0]) for r in rows]

    @_sqlite_errors
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

    @staticmethod
    def _interrupt(db: sqlite3.Connection, session_id: str, response_id: str) -> dict[str, Any] | None:
        row = db.execute("SELECT m.reply_to, s.last_seq, s.seq_reserved FROM messages m JOIN sessions s "
                         "USING (session_id) WHERE m.session_id = ? AND m.role = 'bot' AND m.id = ? "
                         "AND m.status = 'streaming'", (session_id, response_id)).fetchone()
        if row is None:
            return None
        reply_to, last_seq, reserved = row
        db.execute("UPDATE messages SET status = 'interrupted', finish_reason = 'interrupted', text = '' "
                   "WHERE session_id = ? AND role = 'bot' AND id = ?", (session_id, response_id))
        end = interrupted_end(session_id, max(last_seq, reserved) + 1, response_id, reply_to)
        SQLiteSessionStore._log(db, session_id, [end])
        return end

    @_sqlite_errors
    def interrupt(self, session_id: str, response_id: str, owner: str) -> dict[str, Any] | None:
        """End a reply still ``streaming`` as interrupted; the logged ``response.end``, or None if it was not."""
        return self._tx(lambda db: self._interrupt(db, session_id, response_id))

    @_sqlite_errors
    def recover(self, owner: str) -> list[tuple[str, str]]:
        def tx(db: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = db.execute("SELECT session_id, id FROM messages WHERE status = 'streaming' AND owner = ?",
                              (owner,)).fetchall()
            return [(sid, rid) for sid, rid in rows if self._interrupt(db, sid, rid) is not None]

        return self._tx(tx)

    @_sqlite_errors
    def heartbeat(self, owner: str, host: str, pid: int) -> None:
        self._tx(lambda db: db.execute("INSERT OR REPLACE INTO leases (owner, host, pid, heartbeat) VALUES "
                                       "(?, ?, ?, ?)", (owner, host, pid, time.time())))

    @_sqlite_errors
    def release(self, owner: str) -> None:
        self._tx(lambda db: db.execute("DELETE FROM leases WHERE owner = ?", (owner,)))

    @_sqlite_errors
    def leases(self) -> dict[str, Lease]:
        with self._lock:
            rows = self._db.execute("SELECT owner, host, pid, heartbeat FROM leases").fetchall()
        return {row[0]: Lease(*row) for row in rows}

    @_sqlite_errors
    def streaming(self) -> list[tuple[str, str, str]]:
        """(session_id, response_id, owner) of every reply marked streaming."""
        with self._lock:
            rows = self._db.execute("SELECT session_id, id, owner FROM messages WHERE status = 'streaming'").fetchall()
        return [(sid, rid, owner or "") for sid, rid, owner in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _check_file(path: Path) -> None:
    """Refuse, before SQLite sees it, what SQLite would silently take for a new database or fail on obscurely."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnusable(f"{path}: cannot create the directory for the session database ({exc.strerror or exc}). "
                            "Set server.sqlite_path to a writable place, or create the directory.") from None
    if path.is_dir():
        raise StoreUnusable(f"{path}: is a directory, not a session database. Set server.sqlite_path to a file.")
    if path.exists() and path.stat().st_size == 0:
        raise StoreUnusable(f"{path}: the file is empty (0 bytes), so it is not a session database (it may have been "
                            "truncated). Restore it from a backup, or delete it to start with a new, empty one.")


def _corrupt(path: str, detail: str) -> str:
    return (f"{path}: the session database is corrupt ({detail}). Stop every server using it, then restore it "
            f"from a backup, or move it (with its -wal and -shm files) aside to start with an empty one; "
            f"'sqlite3 {path} .recover' may salvage its rows.")


def _unusable(path: str, exc: sqlite3.Error) -> StoreUnusable:
    detail = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in detail or "malformed" in detail):
        return StoreUnusable(_corrupt(path, detail))
    return StoreUnusable(f"{path}: cannot use the session database ({detail}). Check that the file and its directory "
                         "are writable by this user and the disk is not full, or set server.sqlite_path elsewhere.")


# ------------------------------------------------------------------------------------------------------ Redis
class RedisSessionStore:
    """The same records in Redis, so that several server replicas share sessions. Durability is Redis's own
    (run it with ``appendonly yes``); each write below is one MULTI/EXEC transaction."""

    def __init__(self, url: str, *, prefix: str = "xdai") -> None:
        import redis

        self._r = redis.Redis.from_url(url, decode_responses=True)
        try:
            self._r.ping()
        except redis.RedisError as exc:
            raise StoreUnusable(f"cannot reach Redis at server.redis_url ({exc}): start it, or fix the URL") from None
        self.prefix = prefix
        guard = storage_errors(redis.RedisError)  # every Redis failure is a StorageError to the service
        for name in ("create", "get", "add_user_message", "begin_reply", "reserve_seq", "finish_reply", "log_frames",
                     "frames_after", "messages", "interrupt", "recover", "heartbeat", "release", "leases",
                     "streaming"):
            setattr(self, name, guard(getattr(self, name)))

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

    def create(self, session_id: str, bot: str, greeting: str, principal: str | None = None,
               user: str | None = None) -> SessionRecord:
        now = time.time()
        created = self._r.hsetnx(self._k(session_id), "bot", bot)
        if not created:
            raise ValueError(f"session {session_id} already exists")
        mapping: dict[str, Any] = {"greeting": greeting, "created": now, "updated": now, "last_seq": 0,
                                   "seq_reserved": 0}
        if principal is not None:
            mapping["principal"] = principal
        if user is not None:
            mapping["user"] = user
        self._r.hset(self._k(session_id), mapping=mapping)
        return SessionRecord(session_id, bot, greeting, now, 0, 0, principal, user)

    def get(self, session_id: str) -> SessionRecord | None:
        h = self._r.hgetall(self._k(session_id))
        if not h or "greeting" not in h:
            return None
        return SessionRecord(session_id, h["bot"], h["greeting"], float(h["created"]), int(h["last_seq"]),
                             int(h["seq_reserved"]), h.get("principal"), h.get("user"))

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

    def interrupt(self, session_id: str, response_id: str, owner: str) -> dict[str, Any] | None:
        """End a reply still streaming as interrupted. Taking it out of its owner's set first makes one replica
        (the one whose SREM removed it) the only one to end it."""
        entry = f"{session_id}\t{response_id}"
        if not self._r.srem(f"{self.prefix}:streaming:{owner}", entry):
            return None
        record = self.get(session_id)
        raw = self._r.hget(self._k(session_id, "messages"), self._message_key("bot", response_id))
        if record is None or raw is None or json.loads(raw).get("status") != "streaming":
            return None
        end = interrupted_end(session_id, record.next_seq, response_id, json.loads(raw)["reply_to"])
        pipe = self._r.pipeline(transaction=True)
        self._update_reply(pipe, session_id, response_id, text="", status="interrupted", finish_reason="interrupted")
        self._log(pipe, session_id, [end])
        pipe.execute()
        return end

    def recover(self, owner: str) -> list[tuple[str, str]]:
        done = []
        for entry in self._r.smembers(f"{self.prefix}:streaming:{owner}"):
            session_id, response_id = entry.split("\t", 1)
            if self.interrupt(session_id, response_id, owner) is not None:
                done.append((session_id, response_id))
        return done

    def heartbeat(self, owner: str, host: str, pid: int) -> None:
        self._r.hset(f"{self.prefix}:leases", owner, _dump({"host": host, "pid": pid, "heartbeat": time.time()}))

    def release(self, owner: str) -> None:
        self._r.hdel(f"{self.prefix}:leases", owner)

    def leases(self) -> dict[str, Lease]:
        out = {}
        for owner, raw in self._r.hgetall(f"{self.prefix}:leases").items():
            d = json.loads(raw)
            out[owner] = Lease(owner, d["host"], int(d["pid"]), float(d["heartbeat"]))
        return out

    def streaming(self) -> list[tuple[str, str, str]]:
        head = f"{self.prefix}:streaming:"
        rows = []
        for key in self._r.scan_iter(match=head + "*", count=500):
            owner = key[len(head):]
            for entry in self._r.smembers(key):
                session_id, response_id = entry.split("\t", 1)
                rows.append((session_id, response_id, owner))
        return rows

    def close(self) -> None:
        self._r.close()


def open_store(kind: str, *, sqlite_path: str, redis_url: str, synchronous: str = "FULL") -> SessionStore:
    """The configured store, checked: `StoreUnusable` (naming it and what to do) when it cannot be used."""
    if kind == "sqlite":
        return SQLiteSessionStore(sqlite_path, synchronous=synchronous)
    if kind == "redis":
        return RedisSessionStore(redis_url)
    raise ValueError(f"server.session_store: unknown store {kind!r} (sqlite | redis)")
