"""Memory stores, SQLite (beside the sessions, in the same file) and a real Redis: facts become items, a
contradiction supersedes (the old version kept in the item's history), a like turned dislike takes the item
over, summaries are descriptions per session, embeddings are cached per item version, and forgetting deletes
for good — the items, their histories, their vectors and the summaries of their sessions; in SQLite the text
is gone from the database file too."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.xdai.service.conftest import redis_url  # noqa: F401  (the real redis-server fixture)
from xdai.memory.items import Fact
from xdai.memory.store import Provenance, RedisMemoryStore, SQLiteMemoryStore, memory_store_for
from xdai.service.sessions import RedisSessionStore, SQLiteSessionStore


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        s = SQLiteMemoryStore(tmp_path / "sessions.sqlite3")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisMemoryStore(url, prefix=f"t{uuid.uuid4().hex[:8]}")
    yield s
    s.close()


def _src(session: str, seq: int, when: float = 1000.0) -> Provenance:
    return Provenance(session, seq, "zh", when)


def test_facts_become_items_with_provenance_and_a_repeat_changes_nothing(store: Any) -> None:
    facts = [Fact("name", "李雷"), Fact("location", "杭州"), Fact("like", "小笼包", aspect="吃", favorite=True)]
    changes = store.apply("lilei", "xiaodai", facts, _src("s1", 1))
    assert [c.action for c in changes] == ["added"] * 3
    items = {i.slot: i for i in store.items("lilei", "xiaodai")}
    assert (items["location"].q, items["location"].a, items["location"].text) == ("用户住在哪里？", "杭州", "用户住在杭州")
    assert (items["location"].session, items["location"].seq, items["location"].updated) == ("s1", 1, 1000.0)
    again = store.apply("lilei", "xiaodai", [Fact("location", "杭州")], _src("s2", 5, 2000.0))
    assert [c.action for c in again] == ["kept"] and store.items("lilei", "xiaodai")[1].version == 1
    assert store.items("lilei", "other-bot") == [] and store.items("someone", "xiaodai") == []


def test_a_contradiction_supersedes_and_keeps_the_old_version(store: Any) -> None:
    store.apply("u", "b", [Fact("location", "杭州")], _src("s1", 1))
    [change] = store.apply("u", "b", [Fact("location", "上海")], _src("s2", 3, 2000.0))
    assert change.action == "superseded" and change.previous["text"] == "用户住在杭州"
    [item] = store.items("u", "b")
    assert (item.a, item.session, item.seq, item.version) == ("上海", "s2", 3, 2)
    assert [(h["a"], h["session"], h["seq"], h["by_session"]) for h in item.history] == [("杭州", "s1", 1, "s2")]


def test_a_like_turned_dislike_takes_the_item_over(store: Any) -> None:
    store.apply("u", "b", [Fact("like", "小笼包", aspect="吃", favorite=True)], _src("s1", 1))
    [change] = store.apply("u", "b", [Fact("dislike", "小笼包", aspect="吃")], _src("s2", 2, 2000.0))
    assert change.action == "superseded"
    [item] = store.items("u", "b")
    assert (item.slot, item.text) == ("dislike", "用户不喜欢吃小笼包")
    assert item.history[0]["text"] == "用户最喜欢吃小笼包"


def test_summaries_are_descriptions_per_session(store: Any) -> None:
    store.put_summary("u", "b", "2025-01-01聊过：谷爱凌是谁？", _src("s1", None))
    store.put_summary("u", "b", "2025-01-01聊过：谷爱凌是谁？；滑雪", _src("s1", None, 2000.0))
    store.put_summary("u", "b", "2025-01-02聊过：故宫", _src("s2", None))
    items = store.items("u", "b")
    assert sorted((i.kind, i.session) for i in items) == [("description", "s1"), ("description", "s2")]
    s1 = next(i for i in items if i.session == "s1")
    assert s1.text.endswith("滑雪") and s1.history[0]["text"].endswith("谷爱凌是谁？")


def test_embeddings_are_cached_per_item_version_and_embedder(store: Any) -> None:
    [change] = store.apply("u", "b", [Fact("location", "杭州")], _src("s1", 1))
    store.set_vector(change.item, "e5-small", np.arange(4, dtype=np.float32))
    [item] = store.items("u", "b", embedder="e5-small")
    assert np.array_equal(item.vector, np.arange(4, dtype=np.float32))
    assert store.items("u", "b", embedder="another")[0].vector is None
    store.apply("u", "b", [Fact("location", "上海")], _src("s2", 2))  # a new version: the old vector is stale
    assert store.items("u", "b", embedder="e5-small")[0].vector is None


def test_forget_deletes_items_their_vectors_and_their_sessions_summaries(store: Any) -> None:
    [name] = store.apply("u", "b", [Fact("name", "李雷")], _src("s1", 1))
    store.apply("u", "b", [Fact("location", "杭州")], _src("s2", 1))
    store.set_vector(name.item, "e5", np.ones(4))
    store.put_summary("u", "b", "聊过：我叫李雷", _src("s1", None))
    store.put_summary("u", "b", "聊过：我住在杭州", _src("s2", None))
    store.apply("u", "other", [Fact("name", "李雷")], _src("s3", 1))
    assert store.forget("u", "b", name.item.id) == 2  # the item and the summary of the session it came from
    assert sorted(i.text for i in store.items("u", "b")) == ["用户住在杭州", "聊过：我住在杭州"]
    assert store.forget("u", "b") == 2 and store.items("u", "b") == []
    assert [i.text for i in store.items("u")] == ["用户叫李雷"]  # another bot's memory is its own
    assert store.forget("u") == 1 and store.forget("u") == 0


def test_sqlite_forgetting_leaves_no_trace_of_the_text_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    sessions = SQLiteSessionStore(path)  # the memory shares the session database's file
    store = memory_store_for(sessions)
    assert isinstance(store, SQLiteMemoryStore) and store.path == str(path)
    secret = "独一无二的秘密小区名"
    store.apply("u", "b", [Fact("location", secret)], _src("s1", 1))
    store.put_summary("u", "b", f"聊过：我住在{secret}", _src("s1", None))
    assert secret.encode() in b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert store.forget("u", "b") == 2
    store.close()
    sessions.close()
    leftovers = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in leftovers


def test_the_redis_memory_shares_the_session_stores_client(redis_url: str) -> None:  # noqa: F811
    sessions = RedisSessionStore(redis_url, prefix=f"t{uuid.uuid4().hex[:8]}")
    store = memory_store_for(sessions)
    assert isinstance(store, RedisMemoryStore) and store.prefix == sessions.prefix
    store.apply("u", "b", [Fact("name", "Emily")], Provenance("s1", 1, "en", 1.0))
    assert [i.text for i in store.items("u", "b")] == ["The user's name is Emily"]
    assert memory_store_for(object()) is None
    sessions.close()
