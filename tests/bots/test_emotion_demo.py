"""The seed's emotion demo: "最近我发现羽毛球很有意思欸" -> [MASK] -> "你不能好好说话吗，怎么突然生气了". The flow sets the
persona's `angry` condition; the prompt carries it as the grounded post-response and the reply is reranked by it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

SEED = "最近我发现羽毛球很有意思欸"
ANGRY = "你不能好好说话吗，怎么突然生气了"


@pytest.mark.slow
async def test_badminton_exchange_is_conditioned_on_the_angry_post_response(served: Callable[..., Any]) -> None:
    demo = served("emotion_demo", max_tokens=10, rerank=2)
    history = demo.new_history()
    opened = demo.open_session("emotion-1", history)
    assert [e.data["items"] for e in opened if e.name == "suggestions"] == [[SEED]]
    reply, events = await demo.turn(history, SEED, session="emotion-1")
    condition = [e.data for e in events if e.name == "condition"][0]
    assert condition == {"name": "angry", "post_response": ANGRY, "exchange": [SEED, "[MASK]", ANGRY]}
    assert reply.prompt.render().after is not None and ANGRY in reply.prompt.render().after
    assert reply.finish_reason in ("stop", "length")
    assert any("羽毛球" in g["text"] for g in reply.grounding)

    # a condition the client names wins over the demo's default
    prompt_events = [e async for e in demo.respond(history, "今天考试考砸了", condition="comforting",
                                                     session="emotion-1")
                     if getattr(e, "name", "") == "condition"]
    assert prompt_events[0].data["name"] == "comforting"
