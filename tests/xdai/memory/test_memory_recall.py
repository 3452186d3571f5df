"""A turn recalls the user's memory like a store (issue 15 section 1): relevant items by the slot the utterance
asks about or by cosine (the real default embedder), placed as `memory` parts with their own token budget,
shown in `explain()`, the JSON prompt, `xdai prompt --user`, the chat rendering's reference block and the
grounding (kind "memory"); a persona with ``memory: false`` recalls nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from xdai.cli import main
from xdai.history import History
from xdai.memory.items import Fact
from xdai.memory.recall import MemoryRecall, embed_items
from xdai.memory.store import Provenance, SQLiteMemoryStore
from xdai.persona import load_persona
from xdai.render import ChatRenderer, ChatTemplate
from xdai.turn import Agent

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def embedder() -> Any:
    from knowledge.embed import shared_embedder

    return shared_embedder("default")


@pytest.fixture
def memory(tmp_path: Path, embedder: Any) -> MemoryRecall:
    store = SQLiteMemoryStore(tmp_path / "sessions.sqlite3")
    facts = [Fact("name", "李雷"), Fact("location", "杭州"), Fact("like", "小笼包", aspect="吃", favorite=True)]
    changes = store.apply("lilei", "xiaodai", facts, Provenance("s1", 1, "zh", 1000.0))
    embed_items(store, [c.item for c in changes], embedder)  # as the memory worker caches them
    return MemoryRecall(store, "lilei", "xiaodai")


def _agent(embedder: Any, persona: str = "xiaodai") -> Agent:
    return Agent(load_persona(persona), stores=[], backend=None, embedder=embedder)


def test_recall_by_the_slot_asked_about_and_by_cosine(memory: MemoryRecall, embedder: Any) -> None:
    hits = memory.recall("你还记得我住在哪里吗？", embedder=embedder, k=3, threshold=0.87)
    assert hits[0].item.a == "杭州" and hits[0].cue == "住"
    assert hits[0].item.vector is not None  # the cached embedding was read, not recomputed
    assert 0.5 < hits[0].score < 1.0 and hits[0].why()["session"] == "s1" and hits[0].why()["seq"] == 1
    assert memory.recall("谷爱凌是谁？", embedder=embedder, k=3, threshold=0.87) == []
    everything = memory.recall("你还记得我吗？", embedder=embedder, k=5, threshold=0.87)
    assert {h.item.slot for h in everything} == {"name", "location", "like"}
    food = memory.recall("我想吃点东西，推荐一下", embedder=embedder, k=1, threshold=0.87)
    assert [h.item.a for h in food] == ["小笼包"]
    assert memory.recall("你还记得我住在哪里吗？", embedder=None, k=3, threshold=0.87)[0].item.a == "杭州"


def test_the_turn_injects_memory_as_its_own_part_and_grounding(memory: MemoryRecall, embedder: Any) -> None:
    agent = _agent(embedder)
    history = History()
    history.memory = memory
    prompt = agent.build_prompt(history, "你还记得我住在哪里吗？")
    parts = [p for p in prompt.parts if p.kind == "memory"]
    assert parts and parts[0].text == "小呆记得：用户住在杭州"
    assert parts[0].why["id"].startswith("memory:") and parts[0].why["matched"] == "住"
    assert {"source_id": parts[0].why["id"], "kind": "memory", "score": parts[0].why["score"],
            "text": "用户住在杭州"} in prompt.grounding()
    order = [p.kind for p in prompt.parts]
    assert order.index("memory") < order.index("utterance")
    assert "[memory] memory memory:" in prompt.explain() and "1 memory part(s)" in prompt.explain()
    assert any(p["kind"] == "memory" for p in prompt.to_json()["parts"])
    # the same session without a user, or a bot that keeps no memory: nothing recalled
    assert not [p for p in agent.build_prompt(History(), "你还记得我住在哪里吗？").parts if p.kind == "memory"]
    interviewer = Agent(load_persona(str(Path("bots/interviewer/persona.yaml").resolve())), stores=[], backend=None,
                        embedder=embedder)
    assert interviewer.persona.memory is False
    assert not [p for p in interviewer.build_prompt(history, "你还记得我住在哪里吗？").parts if p.kind == "memory"]


def test_memory_has_its_own_token_budget(memory: MemoryRecall, embedder: Any) -> None:
    agent = _agent(embedder)
    agent.persona.selection.memory_budget_tokens = 14  # room for one memory line only
    history = History()
    history.memory = memory
    prompt = agent.build_prompt(history, "你还记得我吗？")
    kept = [p for p in prompt.parts if p.kind == "memory"]
    dropped = [p for p in prompt.dropped if p.kind == "memory"]
    assert len(kept) == 1 and len(dropped) == 2
    assert all(p.why["dropped_by"] == "memory budget" for p in dropped)
    assert "over the memory budget" in prompt.explain()


def test_the_chat_rendering_puts_memory_in_the_reference_block(memory: MemoryRecall, embedder: Any) -> None:
    agent = _agent(embedder)
    agent.renderer = ChatRenderer(ChatTemplate(TEMPLATE))
    history = History()
    history.memory = memory
    prompt = agent.build_prompt(history, "你还记得我住在哪里吗？")
    user_turn = prompt.rendered.before.rsplit("<|im_start|>user\n", 1)[1]
    assert "【参考资料】" in user_turn and "用户住在杭州" in user_turn


def test_xdai_prompt_shows_a_users_memory(tmp_path: Path, memory: MemoryRecall) -> None:
    env = {"XDAI_SERVER_SQLITE_PATH": memory.store.path}
    result = CliRunner(env=env).invoke(main, ["prompt", "--user", "lilei", "--rendering", "transcript",
                                              "你还记得我住在哪里吗？"])
    assert result.exit_code == 0, result.output
    assert "[memory] memory memory:" in result.stdout and "小呆记得：用户住在杭州" in result.stdout
    as_json = CliRunner(env=env).invoke(main, ["prompt", "--user", "lilei", "--json", "你还记得我住在哪里吗？"])
    data = json.loads(as_json.stdout)
    assert [g["text"] for g in data["grounding"] if g["kind"] == "memory"] == ["用户住在杭州"]
    other = CliRunner(env=env).invoke(main, ["prompt", "--user", "hanmeimei", "--json", "你还记得我住在哪里吗？"])
    assert not [g for g in json.loads(other.stdout)["grounding"] if g["kind"] == "memory"]
