"""Where raters' answers live: the session store's database (SQLite by default, Redis when replicas share it).

A `Judgment` is kept once per (study, rater, task, question, judge): the first answer stands and a second one is
ignored, so answering twice does not count twice and a rater who failed a known-answer check cannot answer it
again to undo that. A rater reads back only their own answers (`answered`); everyone's (`judgments`) is for the
report, which runs outside the page. An automatic judge's answers are flagged and kept apart from people's.

The methods are synchronous and short; the service calls them from a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from xdai.eval.pairs import Judgment
from xdai.service.sessions import StorageError, StoreUnusable


class JudgmentStore(Protocol):
    def record(self, judgments: Sequence[Judgment]) -> int:
        """Keep the answers not given before (atomically); returns how many were new."""
        ...

    def answered(self, study: str, rater: str, *, judge: bool = False) -> list[Judgment]:
        """This rater's own answers in `study`, oldest first."""
        ...

    def judgments(self, study: str) -> list[Judgment]:
        """Every answer in `study`, people's and judges', oldest first (for the report)."""
        ...

    def close(self) -> None: ...


def _encode(j: Judgment) -> str:
    return json.dumps({"answer": j.answer, "scores": list(j.scores) if j.scores else None, "at": time.time()},
                      separators=(",", ":"))


def _decode(study: str, task: str, rater: str, question: str, judge: bool, raw: str) -> tuple[float, Judgment]:
    data = json.loads(raw)
    scores = (int(data["scores"][0]), int(data["scores"][1])) if data.get("scores") else None
    return float(data.get("at", 0.0)), Judgment(study, task, rater, question, data["answer"], scores, judge)


# ----------------------------------------------------------------------------------------------------- SQLite
_SCHEMA = """
CREATE TABLE IF NOT EXISTS eval_judgments (
  study TEXT NOT NULL, rater TEXT NOT NULL, task TEXT NOT NULL, question TEXT NOT NULL, judge INTEGER NOT NULL,
  value TEXT NOT NULL, ord INTEGER NOT NULL,
  PRIMARY KEY (study, rater, task, question, judge));
CREATE INDEX IF NOT EXISTS eval_judgments_study ON eval_judgments (study, ord);
"""


class SQLiteJudgmentStore:
    """A table in the session database (its own connection; WAL lets it share the file with the session store)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreUnusable(f"{self.path}: cannot keep judgments here ({exc}); set server.sqlite_path to a "
                                "writable SQLite file") from None

    def record(self, judgments: Sequence[Judgment]) -> int:
        rows = [(j.study, j.rater, j.task, j.question, int(j.judge), _encode(j)) for j in judgments]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    top = self._db.execute("SELECT COALESCE(MAX(ord), 0) FROM eval_judgments").fetchone()[0]
                    new = 0
                    for n, row in enumerate(rows, 1):
                        cur = self._db.execute("INSERT OR IGNORE INTO eval_judgments VALUES (?, ?, ?, ?, ?, ?, ?)",
                                               (*row, top + n))
                        new += cur.rowcount
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StorageError(f"{type(exc).__name__}: {exc}") from exc
        return new

    def _select(self, where: str, args: tuple[Any, ...]) -> list[Judgment]:
        with self._lock:
            try:
                rows = self._db.execute("SELECT study, task, rater, question, judge, value FROM eval_judgments "
                                        f"WHERE {where} ORDER BY ord", args).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"{type(exc).__name__}: {exc}") from exc
        return [_decode(s, t, r, q, bool(jd), v)[1] for s, t, r, q, jd, v in rows]

    def answered(self, study: str, rater: str, *, judge: bool = False) -> list[Judgment]:
        return self._select("study = ? AND rater = ? AND judge = ?", (study, rater, int(judge)))

    def judgments(self, study: str) -> list[Judgment]:
        return self._select("study = ?", (study,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ------------------------------------------------------------------------------------------------------ Redis
class RedisJudgmentStore:
    """Per rater a hash ``<prefix>:eval:<study>:<people|judge>:<rater>`` of ``task\\x1fquestion`` -> answer,
    written with HSETNX inside MULTI (first answer stands, all or nothing), and a set of the study's raters."""

    def __init__(self, url: str, *, prefix: str = "xdai") -> None:
        import redis

        self.prefix = prefix
        self._errors = redis.RedisError
        self._r = redis.Redis.from_url(url, decode_responses=True)
        try:
            self._r.ping()
        except redis.RedisError as exc:
            raise StoreUnusable(f"cannot reach Redis at server.redis_url ({exc}): start it, or fix the URL") from None

    def _key(self, study: str, judge: bool, rater: str) -> str:
        return f"{self.prefix}:eval:{study}:{'judge' if judge else 'people'}:{rater}"

    def _raters(self, study: str) -> str:
        return f"{self.prefix}:eval:{study}:raters"

    def record(self, judgments: Sequence[Judgment]) -> int:
        try:
            pipe = self._r.pipeline(transaction=True)
            for j in judgments:
                pipe.hsetnx(self._key(j.study, j.judge, j.rater), f"{j.task}\x1f{j.question}", _encode(j))
                pipe.sadd(self._raters(j.study), json.dumps([j.judge, j.rater]))
            results = pipe.execute()
        except self._errors as exc:
            raise StorageError(f"{type(exc).__name__}: {exc}") from exc
        return sum(int(r) for r in results[0::2])

    def _read(self, study: str, judge: bool, rater: str) -> list[tuple[float, Judgment]]:
        out = []
        for field, raw in self._r.hgetall(self._key(study, judge, rater)).items():
            task, _, question = field.partition("\x1f")
            out.append(_decode(study, task, rater, question, judge, raw))
        return out

    def answered(self, study: str, rater: str, *, judge: bool = False) -> list[Judgment]:
        try:
            return [j for _, j in sorted(self._read(study, judge, rater), key=lambda x: x[0])]
        except self._errors as exc:
            raise StorageError(f"{type(exc).__name__}: {exc}") from exc

    def judgments(self, study: str) -> list[Judgment]:
        try:
            rows = []
            for member in self._r.smembers(self._raters(study)):
                judge, rater = json.loads(member)
                rows.extend(self._read(study, bool(judge), str(rater)))
        except self._errors as exc:
            raise StorageError(f"{type(exc).__name__}: {exc}") from exc
        return [j for _, j in sorted(rows, key=lambda x: x[0])]

    def close(self) -> None:
        self._r.close()


def open_judgments(kind: str, *, sqlite_path: str, redis_url: str) -> JudgmentStore:
    """The judgment store beside the configured session store (server.session_store, sqlite_path, redis_url)."""
    if kind == "sqlite":
        return SQLiteJudgmentStore(sqlite_path)
    if kind == "redis":
        return RedisJudgmentStore(redis_url)
    raise ValueError(f"server.session_store: unknown store {kind!r} (sqlite | redis)")


def open_judgments_at(where: str) -> JudgmentStore:
    """A store named on the command line: ``redis://...`` or a SQLite file path (``sqlite:`` prefix optional)."""
    if where.startswith(("redis://", "rediss://", "unix://")):
        return RedisJudgmentStore(where)
    return SQLiteJudgmentStore(where.removeprefix("sqlite:"))
