"""`xdai.responder.Responder`: a bot written as `respond` alone gets the rest as no-ops, so drivers (the service,
the terminal chat) call every part of it without asking whether it exists."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from xdai.history import History
from xdai.prompt import Prompt
from xdai.responder import BotEvent, Delta, Reply, Responder, TurnEvent


class Echo(Responder):
    async def respond(self, history: History, utterance: str, *, condition: str | None = None, cancel=None,
                      session: str | None = None) -> AsyncIterator[TurnEvent]:
        yield BotEvent("heard", {"session": session})
        yield Delta(utterance)
        yield Reply(text=utterance, finish_reason="stop", usage={}, grounding=[],
                    prompt=Prompt(parts=[], dropped=[], budget_tokens=0, bot_speaker="b", user_speaker="u"))


async def test_respond_alone_makes_a_responder() -> None:
    echo = Echo()
    history = echo.new_history()
    assert isinstance(history, History) and len(history) == 0
    assert echo.greeting() == "" and echo.condition_text("anything") is None
    assert echo.open_session("s", history, lambda name, data: None) == [] and echo.close_session("s") is None
    events = [e async for e in echo.respond(history, "hi", session="s")]
    assert [type(e) for e in events] == [BotEvent, Delta, Reply] and events[0].data == {"session": "s"}


def test_respond_is_required() -> None:
    class Silent(Responder):
        pass

    with pytest.raises(TypeError):
        Silent()  # type: ignore[abstract]
