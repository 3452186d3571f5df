"""Where memories live: beside the sessions, in the same SQLite file (the default) or the same Redis.

`MemoryStore` is what the service, the turn and the CLI use. `apply` writes an exchange's facts in one
transaction: a fact whose key (`Fact.key`) is new becomes an item; one that repeats an item's value only refreshes
it; one that contradicts it supersedes it — the item takes the new value and keeps the old version in its
`history` — and a like/dislike of the same thing takes over the opposite item the same way ("我不喜欢小笼包"
after "我最喜欢吃小笼包"). `put_summary` keeps a session's summary as a description (a later summary of the same
session supersedes it). `forget` deletes for good: the items, their histories, their cached embeddings and the
summaries of the sessions they came from; SQLite overwrites the freed pages (``secure_delete``) and checkpoints
its WAL, so the text does not linger in the file.

Embeddings are cached per item version and embedder (`set_vector`), as a session's history caches its exchanges.
Every call is synchronous and may come from any thread (the turn's worker, the memory worker, the store thread);
a failure is a `StorageError`, as for the session store.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from xdai.memory.items import MemoryItem, normalize
from xdai.service.sessions import StorageError, storage_errors, transaction

if TYPE_CHECKING:
    from xdai.memory.items import Fact


@dataclass
class Change:
    """What `apply` did with one fact: "added", "superseded" (the old version is in the item's history) or
    "kept" (the item already said so)."""

    action: str
    item: MemoryItem
    previous: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"action": self.action, "id": self.item.id, "slot": self.item.slot, "q": self.item.q,
               "a": self.item.a, "text": self.item.text}
        if self.previous is not None:
            out["previous"] = self.previous.get("text")
        return out


@dataclass
class Provenance:
    """Where facts come from: the session, the seq of the user's message in it, its language, and when."""

    session: str | None
    seq: int | None
    lang: str = "zh"
    when: float = field(default_factory=time.time)


class MemoryStore(Protocol):
    def apply(self, user: str, bot: str, facts: Sequence[Fact], source: Provenance) -> list[Change]: ...
    def put_summary(self, user: str, bot: str, text: str, source: Provenance) -> Change | None: ...
    def items(self, user: str, bot: str | None = None, *, embedder: str | None = None) -> list[MemoryItem]: ...
    def forget(self, user: str, bot: str | None = None, item: str | None = None) -> int: ...
    def set_vector(self, item: MemoryItem, embedder: str, vector: Any) -> None: ...
    def close(self) -> None: ...


def plan_changes(existing: list[MemoryItem], user: str, bot: str, facts: Sequence[Fact],
                 source: Provenance) -> tuple[list[Change], list[MemoryItem]]:
    """The changes `facts` make to a user's items for one bot (pure: the stores write what this returns).
    Returns (changes, the items to write)."""
    by_key = {item.key: item for item in existing if item.kind == "qa"}
    changes: list[Change] = []
    for fact in facts:
        q, a, text = fact.qa(source.lang)
        target = by_key.get(fact.key)
        if target is None and fact.slot in ("like", "dislike"):  # the same thing liked before, disliked now
            opposite = "dislike" if fact.slot == "like" else "like"
            target = next((i for i in by_key.values() if i.slot == opposite
                           and normalize(i.value) == normalize(fact.value)), None)
        if target is not None and normalize(target.value) == normalize(fact.value) and target.slot == fact.slot:
            changes.append(Change("kept", target))
            continue
        if target is None:
            item = MemoryItem(id=uuid.uuid4().hex[:16], user=user, bot=bot, key=fact.key, kind="qa", slot=fact.slot,
                              text=text, lang=source.lang, q=q, a=a, value=fact.label, session=source.session,
                              seq=source.seq, created=source.when, updated=source.when)
            by_key[item.key] = item
            changes.append(Change("added", item))
            continue
        previous = target.version_of()
        by_key.pop(target.key, None)
        target.history.append({**previous, "superseded": source.when, "by_session": source.session,
                               "by_seq": source.seq})
        target.key, target.slot, target.q, target.a, target.text = fact.key, fact.slot, q, a, text
        target.value, target.lang, target.session, target.seq = fact.label, source.lang, source.session, source.seq
        target.updated, target.version = source.when, target.version + 1
        by_key[target.key] = target
        changes.append(Change("superseded", target, previous))
    written = {c.item.id: c.item for c in changes if c.action != "kept"}
    return changes, list(written.values())


def summary_item(existing: MemoryItem | None, user: str, bot: str, text: str, source: Provenance) -> Change:
    key = f"summary:{source.session}"
    if existing is None:
        item = MemoryItem(id=uuid.uuid4().hex[:16], user=user, bot=bot, key=key, kind="description", slot="summary",
                          text=text, lang=source.lang, session=source.session, seq=source.seq, created=source.when,
                          updated=source.when)
        return Change("added", item)
    previous = existing.version_of()
    existing.history.append({**previous, "superseded": source.when})
    existing.text, existing.seq, existing.updated = text, source.seq, source.when
    existing.version += 1
    return Change("superseded", existing, previous)


def _sessions_of(item: MemoryItem) -> set[str]:
    """Every session a version of `item` came from: their summaries go when it is forgotten."""
    out = {item.session} if item.session else set()
    out.update(h.get("session") for h in item.history if h.get("session"))
    return out


def _vector_bytes(vector: Any) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


# ----------------------------------------------------------------------------------------------------- SQLite
_SCHEMA = """
CREATE TABLE IF NOT EXISTS memory_items (
  id TEXT PRIMARY KEY, user TEXT NOT NULL, bot TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL,
  slot TEXT NOT NULL, body TEXT NOT NULL, session TEXT, updated REAL NOT NULL, version INTEGER NOT NULL,
  UNIQUE (user, bot, key));
CREATE INDEX IF NOT EXISTS memory_items_user ON memory_items (user, bot);
CREATE TABLE IF NOT EXISTS memory_vectors (
  item TEXT NOT NULL, embedder TEXT NOT NULL, version INTEGER NOT NULL, vector BLOB NOT NULL,
  PRIMARY KEY (item, embedder));
"""
_errors = storage_errors(sqlite3.Error, OverflowError)


class SQLiteMemoryStore:
    """Memories in the session database's file (its own connection: WAL lets the two share the file)."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=5000")
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA secure_delete=ON")  # forgotten text is overwritten, not left in free pages
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot open the memory tables ({exc})") from None

    def _tx(self, fn: Any) -> Any:
        return transaction(self._db, self._lock, fn)

    @staticmethod
    def _read(db: sqlite3.Connection, user: str, bot: str | None, embedder: str | None = None) -> list[MemoryItem]:
        where, args = ("user = ? AND bot = ?", (user, bot)) if bot is not None else ("user = ?", (user,))
        rows = db.execute(f"SELECT body FROM memory_items WHERE {where} ORDER BY updated, id", args).fetchall()
        items = [MemoryItem.from_json(json.loads(r[0])) for r in rows]
        if embedder and items:
            vectors = {row[0]: (row[1], row[2]) for row in db.execute(
                "SELECT v.item, v.version, v.vector FROM memory_vectors v JOIN memory_items m ON m.id = v.item "
                f"WHERE v.embedder = ? AND m.{where.replace(' AND ', ' AND m.')}", (embedder, *args))}
            for item in items:
                found = vectors.get(item.id)
                if found is not None and found[0] == item.version:
                    item.vector = np.frombuffer(found[1], dtype=np.float32)
        return items

    @staticmethod
    def _write(db: sqlite3.Connection, item: MemoryItem) -> None:
        db.execute("INSERT OR REPLACE INTO memory_items (id, user, bot, key, kind, slot, body, session, updated, "
                   "version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (item.id, item.user, item.bot, item.key, item.kind, item.slot,
                    json.dumps(item.to_json(), ensure_ascii=False), item.session, item.updated, item.version))

    @_errors
    def apply(self, user: str, bot: str, facts: Sequence[Fact], source: Provenance) -> list[Change]:
        def tx(db: sqlite3.Connection) -> list[Change]:
            changes, written = plan_changes(self._read(db, user, bot), user, bot, facts, source)
            for item in written:
                self._write(db, item)
            return changes

        return self._tx(tx) if facts else []

    @_errors
    def put_summary(self, user: str, bot: str, text: str, source: Provenance) -> Change | None:
        if not text.strip():
            return None

        def tx(db: sqlite3.Connection) -> Change:
            key = f"summary:{source.session}"
            existing = next((i for i in self._read(db, user, bot) if i.key == key), None)
            change = summary_item(existing, user, bot, text, source)
            self._write(db, change.item)
            return change

        return self._tx(tx)

    @_errors
    def items(self, user: str, bot: str | None = None, *, embedder: str | None = None) -> list[MemoryItem]:
        with self._lock:
            return self._read(self._db, user, bot, embedder)

    @_errors
    def forget(self, user: str, bot: str | None = None, item: str | None = None) -> int:
        def tx(db: sqlite3.Connection) -> int:
            items = self._read(db, user, bot)
            chosen = [i for i in items if item is None or i.id == item]
            sessions = set().union(*(_sessions_of(i) for i in chosen)) if chosen else set()
            gone = {i.id for i in chosen} | {i.id for i in items if i.kind == "description" and i.session in sessions}
            for item_id in gone:
                db.execute("DELETE FROM memory_vectors WHERE item = ?", (item_id,))
                db.execute("DELETE FROM memory_items WHERE id = ?", (item_id,))
            return len(gone)

        count = self._tx(tx)
        if count and self.path != ":memory:":
            with self._lock:  # the deleted rows' pages are overwritten; the WAL copies go with the checkpoint
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass  # busy (another connection reading): the next checkpoint takes them
        return count

    @_errors
    def set_vector(self, item: MemoryItem, embedder: str, vector: Any) -> None:
        """Cache `item`'s embedding (this version's; a forgotten or superseded item's is not written)."""
        self._tx(lambda db: db.execute(
            "INSERT OR REPLACE INTO memory_vectors (item, embedder, version, vector) SELECT ?, ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM memory_items WHERE id = ? AND version = ?)",
            (item.id, embedder, item.version, _vector_bytes(vector), item.id, item.version)))

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ------------------------------------------------------------------------------------------------------ Redis
class RedisMemoryStore:
    """The same items in Redis, for replicas: one hash per user (item id -> JSON), one per user for vectors.
    `apply`, `put_summary` and `forget` are optimistic transactions (WATCH the user's hash, retried when another
    replica wrote meanwhile)."""

    def __init__(self, url: str | None = None, *, client: Any = None, prefix: str = "xdai") -> None:
        """`client`: a redis.Redis with ``decode_responses=True`` to share (the session store's)."""
        import redis

        self._redis = redis
        self._r = client if client is not None else redis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix
        guard = storage_errors(redis.RedisError)
        for name in ("apply", "put_summary", "items", "forget", "set_vector"):
            setattr(self, name, guard(getattr(self, name)))

    def _k(self, user: str) -> str:
        return f"{self.prefix}:memory:{user}"

    def _kv(self, user: str) -> str:
        return f"{self.prefix}:memory-vectors:{user}"

    @staticmethod
    def _load(raw: dict[str, str], bot: str | None) -> list[MemoryItem]:
        items = [MemoryItem.from_json(json.loads(v)) for v in raw.values()]
        items = [i for i in items if bot is None or i.bot == bot]
        return sorted(items, key=lambda i: (i.updated, i.id))

    def _transact(self, user: str, fn: Any) -> Any:
        with self._r.pipeline(transaction=True) as pipe:
            for _ in range(50):
                try:
                    pipe.watch(self._k(user))
                    current = pipe.hgetall(self._k(user))
                    pipe.multi()
                    out = fn(pipe, current)
                    pipe.execute()
                    return out
                except self._redis.WatchError:
                    continue
        raise StorageError(f"memory of {user}: too many concurrent writers")

    def _put(self, pipe: Any, item: MemoryItem) -> None:
        pipe.hset(self._k(item.user), item.id, json.dumps(item.to_json(), ensure_ascii=False))

    def apply(self, user: str, bot: str, facts: Sequence[Fact], source: Provenance) -> list[Change]:
        if not facts:
            return []

        def write(pipe: Any, current: dict[str, str]) -> list[Change]:
            changes, written = plan_changes(self._load(current, bot), user, bot, facts, source)
            for item in written:
                self._put(pipe, item)
            return changes

        return self._transact(user, write)

    def put_summary(self, user: str, bot: str, text: str, source: Provenance) -> Change | None:
        if not text.strip():
            return None

        def write(pipe: Any, current: dict[str, str]) -> Change:
            key = f"summary:{source.session}"
            existing = next((i for i in self._load(current, bot) if i.key == key), None)
            change = summary_item(existing, user, bot, text, source)
            self._put(pipe, change.item)
            return change

        return self._transact(user, write)

    def items(self, user: str, bot: str | None = None, *, embedder: str | None = None) -> list[MemoryItem]:
        items = self._load(self._r.hgetall(self._k(user)), bot)
        if embedder and items:
            fields = [f"{i.id}:{embedder}" for i in items]
            for item, raw in zip(items, self._r.hmget(self._kv(user), fields), strict=True):
                if raw:
                    version, vector = raw.split(":", 1)
                    if int(version) == item.version:
                        item.vector = np.frombuffer(base64.b64decode(vector), dtype=np.float32)
        return items

    def forget(self, user: str, bot: str | None = None, item: str | None = None) -> int:
        def write(pipe: Any, current: dict[str, str]) -> int:
            items = self._load(current, bot)
            chosen = [i for i in items if item is None or i.id == item]
            sessions = set().union(*(_sessions_of(i) for i in chosen)) if chosen else set()
            gone = {i.id for i in chosen} | {i.id for i in items if i.kind == "description" and i.session in sessions}
            if gone:
                pipe.hdel(self._k(user), *gone)
                cached = [f for f in self._r.hkeys(self._kv(user)) if f.split(":", 1)[0] in gone]
                if cached:
                    pipe.hdel(self._kv(user), *cached)
            return len(gone)

        return self._transact(user, write)

    def set_vector(self, item: MemoryItem, embedder: str, vector: Any) -> None:
        value = f"{item.version}:{base64.b64encode(_vector_bytes(vector)).decode()}"
        self._r.hset(self._kv(item.user), f"{item.id}:{embedder}", value)

    def close(self) -> None:
        self._r.close()


def memory_store_for(session_store: Any) -> MemoryStore | None:
    """The memory store beside a session store: the same SQLite file (its own connection), or the same Redis
    (the same client). None for a store of another kind (a test's stand-in): no memory."""
    from xdai.service.sessions import RedisSessionStore, SQLiteSessionStore

    if isinstance(session_store, SQLiteSessionStore):
        synchronous = "NORMAL" if getattr(session_store, "inline", False) else "FULL"
        return SQLiteMemoryStore(session_store.path, synchronous=synchronous)
    if isinstance(session_store, RedisSessionStore):
        return RedisMemoryStore(client=session_store._r, prefix=session_store.prefix)
    return None


def open_memory_store(kind: str, *, sqlite_path: str, redis_url: str, create: bool = False) -> MemoryStore:
    """The configured memory store (`server.session_store`), for the CLI; a SQLite file that is not there is
    an error unless `create`."""
    if kind == "sqlite":
        if not create and not Path(sqlite_path).is_file():
            raise StorageError(f"{sqlite_path}: no session database there (server.sqlite_path)")
        Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
        return SQLiteMemoryStore(sqlite_path)
    if kind == "redis":
        return RedisMemoryStore(redis_url)
    raise ValueError(f"server.session_store: unknown store {kind!r} (sqlite | redis)")
