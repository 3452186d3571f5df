"""The judgment stores (real SQLite beside the session tables, real Redis): the first answer stands, a rater
reads back only their own answers, a judge's answers are kept apart, and everything survives a reopen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xdai.eval.pairs import Judgment
from xdai.service.judgments import RedisJudgmentStore, SQLiteJudgmentStore, open_judgments, open_judgments_at
from xdai.service.sessions import SQLiteSessionStore


def opener(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if kind == "sqlite":
        return lambda: SQLiteJudgmentStore(tmp_path / "sessions.sqlite3")
    url = request.getfixturevalue("redis_url")
    return lambda: RedisJudgmentStore(url, prefix=f"t{tmp_path.name}")


@pytest.fixture(params=["sqlite", "redis"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return opener(request.param, request, tmp_path)


def test_first_answer_stands_and_raters_see_only_their_own(reopen: Any) -> None:
    store = reopen()
    a1 = [Judgment("s", "t1", "alice", "human", "left"), Judgment("s", "t1", "alice", "engaging", "tie", (4, 2))]
    assert store.record(a1) == 2
    assert store.record([Judgment("s", "t1", "alice", "human", "right")]) == 0  # answering twice: ignored
    assert store.record([Judgment("s", "t1", "bob", "human", "right"), Judgment("s", "t2", "bob", "human", "skip")]) == 2
    assert store.record([Judgment("other", "t1", "alice", "human", "right")]) == 1  # another study
    assert store.answered("s", "alice") == a1
    assert [j.task for j in store.answered("s", "bob")] == ["t1", "t2"]
    assert store.answered("s", "carol") == []
    judge = Judgment("s", "t1", "judge:x", "human", "left", judge=True)
    assert store.record([judge]) == 1 and store.record([judge]) == 0
    assert store.answered("s", "judge:x") == [] and store.answered("s", "judge:x", judge=True) == [judge]
    everyone = store.judgments("s")
    assert len(everyone) == 5 and sum(j.judge for j in everyone) == 1
    assert Judgment("s", "t1", "alice", "human", "left") in everyone
    assert Judgment("s", "t1", "alice", "human", "right") not in everyone
    store.close()
    again = reopen()  # durable: a new connection (a restarted server, another replica) reads the same answers
    assert again.judgments("s") == everyone
    again.close()


def test_sqlite_judgments_share_the_session_database(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    sessions = SQLiteSessionStore(path)
    sessions.create("s" * 32, "smol", "hi")
    store = open_judgments("sqlite", sqlite_path=str(path), redis_url="")
    assert store.record([Judgment("s", "t", "r", "human", "left")]) == 1
    assert sessions.get("s" * 32) is not None  # the session tables are untouched
    sessions.close()
    store.close()
    cli = open_judgments_at(f"sqlite:{path}")
    assert [j.answer for j in cli.judgments("s")] == ["left"]
    cli.close()
    with pytest.raises(ValueError, match="unknown store 'mongo'"):
        open_judgments("mongo", sqlite_path="", redis_url="")
