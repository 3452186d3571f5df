"""The Agent: one turn with real stores and a real bundled model (SmolLM2 for speed, Qwen for the seed's case)."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from click.testing import CliRunner

from knowledge.embed import CachingEmbedder
from knowledge.fusion import FusionWeights
from knowledge.source import KnowledgeSource
from knowledge.store import Store
from xdai.cli import main
from xdai.persona import load_persona
from xdai.race import settle
from xdai.turn import Agent, Delta, NamedStore, Reply, StoreNotFound, open_knowledge

ROBO = """\
name: Robo
language: en
description: Robo is a friendly robot who answers every message in one short sentence.
first_mes: Hello! I am Robo.
conditions:
  angry: Why are you so angry with me?
knowledge:
  qa:
    - q: What is the capital of France?
      a: Paris is the capital of France.
selection:
  budget_tokens: 400
generation:
  temperature: 0.7
  max_tokens: 16
  seed: 1
"""


@pytest.fixture()
def robo(tmp_path):
    path = tmp_path / "robo.yaml"
    path.write_text(ROBO, encoding="utf-8")
    return load_persona(path)


def run(agent, history, utterance, **kw) -> list:
    async def collect():
        return [event async for event in agent.respond(history, utterance, **kw)]

    return asyncio.run(collect())


def test_respond_streams_deltas_then_exactly_one_reply(robo, smollm2):
    agent = Agent(robo, backend=smollm2)
    history = agent.new_history()
    history.append("Hi Robo!", "Hello! I am Robo.")
    events = run(agent, history, "Do you know the capital of France?")
    assert isinstance(events[-1], Reply) and all(isinstance(e, Delta) for e in events[:-1])
    reply = events[-1]
    assert reply.text and reply.text == "".join(e.text for e in events[:-1]).strip()
    assert reply.finish_reason in ("stop", "length")
    assert reply.usage["prompt_tokens"] > 50 and reply.usage["completion_tokens"] >= 1
    assert "\n" not in reply.text and "User:" not in reply.text  # trimmed to the bot's turn
    assert any("Paris" in g["text"] for g in reply.grounding)  # the persona's inline QA, found and injected
    assert reply.prompt.render().before.endswith("User: Do you know the capital of France?\nRobo:")
    assert len(history) == 1  # the caller appends, not the agent


def test_empty_and_huge_utterances_never_crash(robo, smollm2):
    agent = Agent(robo, backend=smollm2)
    for utterance in ("", "word " * 2000):
        reply = run(agent, agent.new_history(), utterance)[-1]
        assert reply.finish_reason in ("stop", "length"), reply.error
        assert reply.prompt.tokens <= robo.selection.budget_tokens


def test_cancel_ends_the_turn_as_cancelled(robo, smollm2):
    agent = Agent(robo, backend=smollm2)
    cancel = asyncio.Event()

    async def collect():
        events = []
        async for event in agent.respond(agent.new_history(), "Tell me a long story about the sea.", cancel=cancel):
            events.append(event)
            cancel.set()
        return events

    events = asyncio.run(collect())
    assert events[-1].finish_reason == "cancelled"
    assert sum(isinstance(e, Reply) for e in events) == 1

    early = asyncio.Event()
    early.set()  # cancelled while the model is still reading the prompt: no piece is waited for
    events = run(agent, agent.new_history(), "Tell me a long story about the sea.", cancel=early)
    assert len(events) == 1 and events[0].finish_reason == "cancelled" and events[0].text == ""


def test_conditions_named_free_and_unknown(robo):
    agent = Agent(robo, backend=None)
    history = agent.new_history()
    prompt = agent.build_prompt(history, "You broke my vase.", condition="angry")
    assert prompt.render().after == "\nUser: Why are you so angry with me?"
    free = agent.build_prompt(history, "Hi", condition="text:That is so kind of you!")
    assert free.render().after == "\nUser: That is so kind of you!"
    with pytest.raises(ValueError, match="unknown condition 'sleepy'.*known: angry"):
        agent.build_prompt(history, "Hi", condition="sleepy")


class CountingFills:
    """The real backend, with its fill calls counted (to see the reranker sample n candidates)."""

    def __init__(self, inner):
        self.inner, self.name, self.fills = inner, inner.name, 0
        self.count_tokens = inner.count_tokens

    def fill(self, infill, settings):
        self.fills += 1
        return self.inner.fill(infill, settings)

    def score(self, context, continuation):
        return self.inner.score(context, continuation)


@pytest.mark.parametrize("inverse", [False, True], ids=["post-response", "inverse-prompting"])
def test_rerankers_run_through_the_agent(robo, smollm2, inverse):
    robo.generation.update({"rerank": 2, "inverse_prompting": inverse, "max_tokens": 12})
    backend = CountingFills(smollm2)
    agent = Agent(robo, backend=backend)
    reply = run(agent, agent.new_history(), "I am upset about my exam.", condition="angry")[-1]
    assert backend.fills == 2
    assert reply.finish_reason == "stop" and reply.text


def test_a_reranked_turn_races_its_candidates_on_the_real_engine(robo, smollm2):
    """`rerank_slack: 0`: a candidate still decoding past the shortest ended, faithful one is cut (its cells freed)
    and left out of the choice; the record on the prompt says who stood, who was cut and at how many tokens."""
    robo.generation.update({"rerank": 4, "max_tokens": 40, "temperature": 1.2, "rerank_slack": 0})
    agent = Agent(robo, backend=smollm2)
    cuts = 0
    for seed in range(1, 7):
        robo.generation["seed"] = seed
        reply = run(agent, agent.new_history(), "Tell me about your day.")[-1]
        assert reply.finish_reason == "stop" and reply.text, reply.error
        record = reply.prompt.rerank
        entrants = record["entrants"]
        assert len(entrants) == 4 and len(record["candidates"]) == sum(not e["cut"] for e in entrants)
        assert [e["cut"] for e in entrants] == settle([e["tokens"] for e in entrants],
                                                      [e["eligible"] for e in entrants], 0)
        for e in entrants:
            if e["cut"]:  # past the shortest eligible candidate
                assert e["tokens"] > min(x["tokens"] for x in entrants if x["eligible"])
        if record["how"] == "rerank":
            assert record["text"] == record["candidates"][record["chosen"]]["text"]
        cuts += sum(e["cut"] for e in entrants)
    assert cuts, "no candidate was ever cut at slack 0 over six turns of four candidates"
    deadline = time.monotonic() + 5
    while smollm2.engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert smollm2.engine.stats().running == 0  # the cut candidates were cancelled, not left decoding


def test_cancelling_a_reranked_turn_stops_every_candidate(robo, smollm2):
    robo.generation.update({"rerank": 3, "max_tokens": 200, "temperature": 1.2, "rerank_slack": None,
                            "stop": ["User:"]})  # long candidates, so the cancel lands while they decode
    agent = Agent(robo, backend=smollm2)

    async def turn():
        cancel = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, cancel.set)
        return [e async for e in agent.respond(agent.new_history(), "Tell me a long story about the sea.",
                                               cancel=cancel)]

    reply = asyncio.run(turn())[-1]
    assert reply.finish_reason == "cancelled"
    deadline = time.monotonic() + 5
    while smollm2.engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert smollm2.engine.stats().running == 0  # no candidate left decoding, its cells freed


def test_a_missing_store_is_a_clear_error(tmp_path):
    path = tmp_path / "needs_store.yaml"
    text = ROBO.replace("knowledge:\n", "knowledge:\n  stores: [no_such_store_here]\n")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StoreNotFound, match=rf"persona {re.escape(str(path))} names knowledge store 'no_such_store_here'"):
        Agent.from_names(str(path), backend=None)


def test_injection_from_a_real_store_and_one_encode_per_turn(gu_store, embedder):
    class Counting:
        def __init__(self, inner):
            self.inner, self.name, self.dim, self.calls = inner, inner.name, inner.dim, 0

        def encode(self, texts, **kw):
            self.calls += 1
            return self.inner.encode(texts, **kw)

    counting = Counting(embedder.inner)
    cached = CachingEmbedder(counting)
    store = NamedStore(str(gu_store), Store.open(gu_store, embedder=cached))
    agent = Agent(load_persona("xiaodai"), stores=[store], backend=None, embedder=cached)
    history = agent.new_history()
    per_turn = []
    for user, bot in [("故宫门票多少钱呀？", "好像是六十元吧。"), ("你喜欢吃什么？", "我最喜欢火锅啦！")]:
        counting.calls = 0
        agent.build_prompt(history, user)
        per_turn.append(counting.calls)
        history.append(user, bot)
    counting.calls = 0
    prompt = agent.build_prompt(history, "谷爱凌好厉害呀")
    per_turn.append(counting.calls)
    assert per_turn == [1, 1, 1]  # one encode call per turn: selection and retrieval share it
    lines = prompt.render().before.split("\n")
    at = lines.index("用户：谷爱凌好厉害呀")
    assert lines[at - 2].startswith("用户：谷爱凌是谁")  # the QA pair, in QA form, right before the utterance
    assert lines[at - 1].startswith("小呆：谷爱凌") and "2003年出生于美国加利福尼亚州旧金山市" in lines[at - 1]
    gugong = lines.index("用户：故宫门票多少钱呀？")
    assert lines[gugong - 2].startswith("用户：故宫的门票多少钱")  # the exchange's best QA pair, right before it
    assert lines[gugong - 1].startswith("小呆：旺季60元")
    why = next(p.why for p in prompt.parts if p.kind == "knowledge" and p.why["for"] == "utterance")
    assert why["store"] == str(gu_store) and why["source_file"].endswith("gu.jsonl") and why["score"] >= 0.45


def test_the_turn_asks_its_stores_only_through_the_protocol_with_the_personas_weights(gu_store, embedder):
    """Retrieval goes through `KnowledgeSource` alone (no index internals), with the persona's selection weights."""

    class Recording:
        """A real store behind the protocol's three methods, recording what the turn asks."""

        def __init__(self, inner: Store) -> None:
            self.inner, self.embedder, self.asked = inner, inner.embedder, []

        def query(self, query, **kw):
            self.asked.append(("query", kw["weights"]))
            return self.inner.query(query, **kw)

        def nearest_qa(self, vector, **kw):
            self.asked.append(("nearest_qa", kw["text"]))
            return self.inner.nearest_qa(vector, **kw)

        def resolve(self, text, context=None):
            self.asked.append(("resolve", text))
            return self.inner.resolve(text, context)

    persona = load_persona("xiaodai")
    persona.selection.dense_weight, persona.selection.bm25_weight = 0.5, 2.0
    store = Recording(Store.open(gu_store, embedder=embedder))
    assert isinstance(store, KnowledgeSource)
    agent = Agent(persona, stores=[NamedStore("gu", store)], backend=None, embedder=embedder)
    history = agent.new_history()
    history.append("谷爱凌是谁？", "一位滑雪运动员。")
    prompt = agent.build_prompt(history, "她几岁了？")
    assert ("query", FusionWeights(dense=0.5, bm25=2.0)) in store.asked
    assert ("resolve", "她几岁了？") in store.asked and ("nearest_qa", "谷爱凌是谁？\n一位滑雪运动员。") in store.asked
    assert any(p.kind == "knowledge" and p.why["store"] == "gu" for p in prompt.parts)


def test_open_knowledge_names_what_is_missing():
    with pytest.raises(StoreNotFound, match="--knowledge names knowledge store 'nowhere/store'"):
        open_knowledge("nowhere/store")


SEED = 0


@pytest.mark.slow
def test_done_when_the_default_bot_answers_grounded(gu_store, qwen):
    """The seed's exchange: a store holding the 谷爱凌 QA pair, the default persona and the bundled Qwen model."""
    persona = load_persona("xiaodai")
    # the persona's own sampling settings, made reproducible, with its per-persona reranking of 3 samples
    persona.generation.update({"seed": SEED, "rerank": 3})
    # a seed reproduces its samples on the same KV-cache layout (tests/xdai/backends/test_engine.py): start from an
    # empty cache of the engine the session's earlier tests shared
    qwen.engine.clear_cache()
    agent = Agent(persona, stores=[open_knowledge(str(gu_store))], backend=qwen)
    reply = run(agent, agent.new_history(), "谷爱凌好厉害呀")[-1]
    assert reply.finish_reason == "stop", reply.error
    facts = re.findall("2003|旧金山|加利福尼亚|自由式滑雪|滑雪运动员|运动员|美国", reply.text)
    assert facts, f"reply not grounded: {reply.text!r}"
    assert any("谷爱凌" in g["text"] and g["kind"] == "qa" for g in reply.grounding)
    # ...and `xdai prompt --json` shows why.
    result = CliRunner().invoke(main, ["prompt", "--knowledge", str(gu_store), "--json", "谷爱凌好厉害呀"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    knowledge = [p for p in data["parts"] if p["kind"] == "knowledge"]
    assert knowledge and knowledge[0]["why"]["for"] == "utterance"
    assert knowledge[0]["why"]["source_file"].endswith("gu.jsonl") and "谷爱凌" in knowledge[0]["text"]
    assert data["infill"]["before"].endswith("用户：谷爱凌好厉害呀\n小呆：")


@pytest.mark.slow  # `xdai chat` end to end on the real SmolLM2
def test_chat_streams_explains_resets_and_saves(tmp_path):
    persona = tmp_path / "robo.yaml"
    persona.write_text(ROBO, encoding="utf-8")
    saved = tmp_path / "chat.jsonl"
    result = CliRunner().invoke(
        main,
        ["chat", "--persona", str(persona), "--model", "smollm2", "--history", str(saved), "--seed", "3"],
        input="/explain\nWhat is the capital of France?\n/explain\n/condition sleepy\n/reset\n/quit\n",
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("Robo: Hello! I am Robo.")
    assert "(no turn yet)" in out
    assert "[knowledge] qa" in out and "for utterance from persona:Robo" in out  # /explain after the turn
    assert "unknown condition 'sleepy'" in out
    assert "(history cleared)" in out
    rows = [json.loads(line) for line in saved.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1 and rows[0]["user"] == "What is the capital of France?" and rows[0]["bot"]


def test_prompt_command_reads_history_and_reports_bad_lines(tmp_path, gu_store):
    good = tmp_path / "h.jsonl"
    good.write_text('{"user": "你喜欢什么运动？", "bot": "我最喜欢滑雪啦！"}\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["prompt", "--knowledge", str(gu_store), "--history", str(good), "谷爱凌好厉害呀"])
    assert result.exit_code == 0, result.output
    assert "history selection: score = alpha^(t-i)" in result.stdout and "#0   kept" in result.stdout
    assert "[lore] lorebook entry keys=['滑雪', 'ski', 'skiing']" in result.stdout  # triggered by the history
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user": "a", "bot": "b"}\n{"usr": "x"}\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["prompt", "--history", str(bad), "hi"])
    assert result.exit_code != 0 and f"{bad}:2: unknown key(s) ['usr']" in result.output
