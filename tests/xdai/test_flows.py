"""`xdai.flows.FlowAgent` around a real Agent (the shipped xiaodai persona, the bundled embedder) on a scripted
backend: flow state is kept per session id, the turn streams typed events (BotEvents before the one Reply), a
scripted line skips the model, and the wrapper forwards only what it names."""

from __future__ import annotations

import pytest

from tests.fakes import ScriptedBackend
from xdai.flows import Flow, FlowAgent, FlowContext, ManualClock
from xdai.persona import load_persona
from xdai.responder import BotEvent, Delta, Reply, Responder
from xdai.turn import Agent


class Counter(Flow):
    """Counts a session's turns; "停" is answered by the flow itself; a timer ends the session."""

    uses_timers = True

    def on_open(self, ctx: FlowContext) -> None:
        ctx.state["turns"] = 0
        ctx.emit("phase", {"name": "start"})
        ctx.start_timer("limit", 60, "限时")

    def before_turn(self, ctx: FlowContext) -> None:
        ctx.state["turns"] += 1
        if ctx.utterance == "停":
            ctx.say("好的，停下。")

    def after_turn(self, ctx: FlowContext) -> None:
        ctx.emit("count", {"turns": ctx.state["turns"]})

    def on_timer(self, ctx: FlowContext, name: str) -> None:
        ctx.end("timer")


@pytest.fixture
def bot() -> FlowAgent:
    backend = ScriptedBackend(["你好呀。"])
    return FlowAgent(Agent(load_persona("xiaodai"), backend=backend), Counter(), name="counter",
                     clock=ManualClock(0.0))


async def test_state_is_kept_per_session_id_and_the_stream_is_typed(bot: FlowAgent) -> None:
    first, second = bot.new_history(), bot.new_history()
    opened = bot.open_session("a", first)
    assert [e.name for e in opened] == ["phase", "timer"] and all(isinstance(e, BotEvent) for e in opened)
    bot.open_session("b", second)

    events = [e async for e in bot.respond(first, "嗨", session="a")]
    assert isinstance(events[-1], Reply) and events[-1].text == "你好呀。"
    assert all(isinstance(e, Delta | BotEvent) for e in events[:-1])
    assert [e.data for e in events if isinstance(e, BotEvent)] == [{"turns": 1}]
    assert bot.session("a").state["turns"] == 1 and bot.session("b").state["turns"] == 0

    reopened = bot.open_session("a", first, resumed=True)  # a reconnecting page gets the running timer again
    assert [e.name for e in reopened] == ["timer"] and bot.session("a").state["turns"] == 1


async def test_a_turn_must_name_its_session(bot: FlowAgent) -> None:
    with pytest.raises(ValueError, match="pass session="):
        [e async for e in bot.respond(bot.new_history(), "嗨")]


async def test_a_scripted_line_skips_the_model_and_timers_end_the_session(bot: FlowAgent) -> None:
    history = bot.new_history()
    bot.open_session("s", history)
    reply, events = await bot.turn(history, "停", session="s")
    assert reply.text == "好的，停下。" and bot.agent.backend.fills == []
    assert history.exchanges[-1].bot == "好的，停下。"
    bot.clock.advance(60)
    assert [e.name for e in bot.tick(bot.session("s"))] == ["timer", "session.end"]
    assert bot.session("s").ended
    bot.close_session("s")
    assert "s" not in bot.sessions


def test_the_wrapper_is_a_responder_that_forwards_only_what_it_names(bot: FlowAgent) -> None:
    assert isinstance(bot, Responder)
    assert bot.persona is bot.agent.persona and bot.builder is bot.agent.builder
    assert bot.backend is bot.agent.backend and bot.greeting() == bot.agent.greeting()
    assert not hasattr(bot, "stores")  # no __getattr__ forwarding: the agent's parts are reached through .agent
