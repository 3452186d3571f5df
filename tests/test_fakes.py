"""The fakes in tests/fakes.py do what they promise, and plug into the real code that drives a backend or a bot."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes import ScriptedBackend, ScriptedResponder
from xdai.backends.base import Backend
from xdai.generation import GenerationSettings, Infill
from xdai.history import History
from xdai.responder import BotEvent, Delta, Reply, Responder


async def pieces(backend: ScriptedBackend, infill: Infill, settings: GenerationSettings) -> list[str]:
    return [p async for p in backend.fill(infill, settings)]


async def turn(responder: ScriptedResponder, history: History, utterance: str, **kwargs) -> list[Delta | Reply]:
    return [event async for event in responder.respond(history, utterance, **kwargs)]


async def test_scripted_backend_is_a_backend_and_streams_one_script_per_fill() -> None:
    backend = ScriptedBackend([["你好", "呀"], "ok"])
    assert isinstance(backend, Backend)
    settings = GenerationSettings()
    assert await pieces(backend, Infill("A：嗨\nB："), settings) == ["你好", "呀"]
    assert await pieces(backend, Infill("x", after="y"), settings) == ["o", "k"]  # a string streams by character
    assert await pieces(backend, Infill("z"), settings) == ["o", "k"]  # the last script repeats
    assert [i for i, _ in backend.fills] == [Infill("A：嗨\nB："), Infill("x", after="y"), Infill("z")]
    assert all(s is settings for _, s in backend.fills)


async def test_scripted_backend_stops_at_max_tokens() -> None:
    backend = ScriptedBackend(["一二三四五"])
    assert await pieces(backend, Infill(""), GenerationSettings(max_tokens=3)) == ["一", "二", "三"]


def test_scripted_backend_scores_from_its_table() -> None:
    backend = ScriptedBackend(scores={"北京": -1.5}, default_score=-9.0)
    assert backend.score("首都是", "北京") == -1.5
    assert backend.score("首都是", "上海") == -9.0
    assert backend.scored == [("首都是", "北京"), ("首都是", "上海")]
    with pytest.raises(ValueError):
        ScriptedBackend([])


async def test_scripted_responder_streams_deltas_then_one_reply() -> None:
    bot = ScriptedResponder(["你好呀！", "再见。"], pieces=2, grounding=[{"source_id": "k1"}])
    assert isinstance(bot, Responder) and bot.greeting() == "你好！"
    history = bot.new_history()
    assert isinstance(history, History) and len(history) == 0
    events = await turn(bot, history, "嗨", condition="text:友好")
    *deltas, reply = events
    assert [d.text for d in deltas] == ["你好", "呀！"] and all(isinstance(d, Delta) for d in deltas)
    assert isinstance(reply, Reply) and reply.finish_reason == "stop" and reply.text == "你好呀！"
    assert reply.grounding == [{"source_id": "k1"}] and reply.usage["completion_tokens"] == 4
    assert reply.prompt.condition == "text:友好" and reply.prompt.text.endswith("小呆：[MASK]")
    history.append("嗨", reply.text)
    *_, second = await turn(bot, history, "走了")
    assert second.text == "再见。"
    assert [(c.utterance, c.history) for c in bot.calls] == [("嗨", []), ("走了", [("嗨", "你好呀！")])]
    assert bot.calls[0].condition == "text:友好" and bot.calls[1].condition is None
    assert "用户：嗨\n小呆：你好呀！" in second.prompt.text


async def test_scripted_responder_reply_can_depend_on_the_utterance() -> None:
    bot = ScriptedResponder(lambda u: f"你说了{u}", pieces=100)
    *_, reply = await turn(bot, bot.new_history(), "天气")
    assert reply.text == "你说了天气"


async def test_scripted_responder_cancel_and_failure() -> None:
    cancel = asyncio.Event()
    cancel.set()
    events = await turn(ScriptedResponder(["很长的回答"]), History(), "嗨", cancel=cancel)
    assert len(events) == 1 and events[0].finish_reason == "cancelled" and events[0].text == ""
    *deltas, reply = await turn(ScriptedResponder(["坏了"], fail_with=RuntimeError("boom")), History(), "嗨")
    assert [d.text for d in deltas] == ["坏"]
    assert reply.finish_reason == "error" and reply.error == "RuntimeError: boom" and reply.text == "坏"
    *deltas, reply = await turn(ScriptedResponder(["坏"], pieces=5, fail_with=RuntimeError("boom")), History(), "嗨")
    assert [d.text for d in deltas] == ["坏"] and reply.finish_reason == "error"  # a one-piece reply fails too


async def test_scripted_responder_streams_its_events_before_the_reply_and_names_the_session() -> None:
    bot = ScriptedResponder(["好"], events=[BotEvent("phase", {"name": "qa"})])
    events = await turn(bot, History(), "嗨", session="s-1")
    assert events[0] == BotEvent("phase", {"name": "qa"})
    assert [type(e) for e in events[1:]] == [Delta, Reply] and bot.calls[0].session == "s-1"


async def test_scripted_responder_runs_in_the_services_generation_job() -> None:
    """The service's own Job drives the fake as it drives an Agent: every Delta, then the Reply."""
    from xdai.service.engine import Job

    bot = ScriptedResponder(["好的"], delay_s=0.001)
    seen: list[object] = []
    await Job(bot, bot.new_history(), "嗨", None, lambda item, _t0: seen.append(item), session="s-9").run()
    assert [type(x) for x in seen] == [Delta, Delta, Reply]
    assert seen[-1].text == "好的" and bot.calls[0].session == "s-9"
