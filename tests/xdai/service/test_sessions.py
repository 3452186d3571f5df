"""The session stores (real SQLite in WAL mode, real Redis) behind one interface."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from xdai.service.protocol import server_frame
from xdai.service.sessions import SEQ_WINDOW, RedisSessionStore, SQLiteSessionStore, exchanges


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        s = SQLiteSessionStore(tmp_path / "s.sqlite3")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisSessionStore(url, prefix=f"t{tmp_path.name}")
    yield s
    s.close()


def frame(sid: str, seq: int, kind: str = "message.ack", **fields: Any) -> dict[str, Any]:
    return server_frame(kind, sid, seq, **(fields or {"reply_to": "m1"}))


def test_a_turn_is_stored_and_replayed(store: Any) -> None:
    sid = "s" * 32
    rec = store.create(sid, "smol", "hello")
    assert rec.next_seq == 1 and store.get(sid).greeting == "hello"
    assert store.add_user_message(sid, "m1", "hi", {"k": 1}, [frame(sid, 1)])
    assert not store.add_user_message(sid, "m1", "hi again", None, [])  # idempotent: the id is taken
    store.begin_reply(sid, "r1", "m1", "me", [frame(sid, 2, "response.start", response_id="r1", reply_to="m1")],
                      2 + SEQ_WINDOW)
    assert store.get(sid).next_seq == 3 + SEQ_WINDOW  # a crash now would continue above the reserved window
    deltas = [frame(sid, 3, "response.delta", response_id="r1", text="a"),
              frame(sid, 4, "response.delta", response_id="r1", text="b")]
    store.finish_reply(sid, "r1", text="ab", status="complete", finish_reason="stop", usage={"completion_tokens": 2},
                       grounding=[], frames=deltas)
    assert [f["seq"] for f in store.frames_after(sid, 1)] == [2, 3, 4]
    messages = store.messages(sid)
    assert [(m["role"], m["id"], m["text"], m["status"]) for m in messages] == [
        ("user", "m1", "hi", "acked"), ("bot", "r1", "ab", "complete")]
    assert messages[0]["metadata"] == {"k": 1}
    assert exchanges(messages) == [("hi", "ab")]
    assert store.get("missing" * 5) is None


def test_recover_marks_streaming_replies_interrupted(store: Any) -> None:
    sid = "t" * 32
    store.create(sid, "smol", "")
    store.add_user_message(sid, "m1", "hi", None, [frame(sid, 1)])
    store.begin_reply(sid, "r1", "m1", "me", [frame(sid, 2, "response.start", response_id="r1", reply_to="m1")], 100)
    assert store.recover("someone-else") == []  # another replica's replies are not ours to end
    assert store.recover("me") == [(sid, "r1")]
    assert store.recover("me") == []
    bot = store.messages(sid)[1]
    assert (bot["status"], bot["text"], bot["finish_reason"]) == ("interrupted", "", "interrupted")
    end = store.frames_after(sid, 2)[-1]
    assert end["type"] == "response.end" and end["finish_reason"] == "interrupted" and end["seq"] == 101
    assert exchanges(store.messages(sid)) == []


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    SQLiteSessionStore(tmp_path / "w.sqlite3").close()
    with sqlite3.connect(tmp_path / "w.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
