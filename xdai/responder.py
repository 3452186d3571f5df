"""What the service, the terminal chat and the evaluation drive: a `Responder`, and the typed stream of one turn.

A turn streams `Delta` pieces of the reply, the `BotEvent`s a bot's flow emits along the way, and exactly one
`Reply` at the end: ``TurnEvent = Delta | BotEvent | Reply``. Whoever consumes a turn matches on these types.
`xdai.turn.Agent` (a persona over knowledge and a model) and `xdai.flows.FlowAgent` (an agent with a flow around
it) are Responders; a test stands in for a bot by writing `respond` alone, the rest have no-op defaults.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xdai.history import History

if TYPE_CHECKING:
    from xdai.prompt import Prompt


@dataclass
class Delta:
    """A piece of the reply as it streams."""

    text: str


@dataclass
class BotEvent:
    """Something for the client besides the reply (a flow's phase, timer, suggestions, summary...): the service
    sends it as a protocol ``event`` frame ``{name, data}``, the terminal chat as a dim line."""

    name: str
    data: Any


@dataclass
class Reply:
    """The finished reply, with what it was grounded on and the prompt that produced it."""

    text: str
    finish_reason: str  # "stop" | "length" | "cancelled" | "error"
    usage: dict[str, int]
    grounding: list[dict[str, Any]]
    prompt: Prompt
    suggestions: list[str] = field(default_factory=list)
    error: str | None = None


TurnEvent = Delta | BotEvent | Reply
EventSink = Callable[[str, Any], None]  # (name, data): where a session's events outside a turn go


class Responder(ABC):
    """A bot as the service and the terminal chat see it. Only `respond` must be written.

    A session is a conversation with an id: `open_session` runs when one starts or is resumed (a flow emits its
    first events there, and may keep emitting through `emit` outside turns, e.g. from timers), `respond` runs one
    turn of it, `close_session` lets go of what it holds. `respond` never appends to `history`: the caller does,
    once the Reply is complete, so a cancelled or failed turn leaves the conversation as it was.
    """

    def greeting(self) -> str:
        """The opening line of a new conversation."""
        return ""

    def new_history(self) -> History:
        return History()

    def condition_text(self, condition: str | None) -> tuple[str, str] | None:
        """(name, post-response) for a condition the client names, or None; ValueError for an unknown one. A
        responder without conditions ignores them."""
        return None

    def open_session(self, session_id: str, history: History, emit: EventSink | None = None, *,
                     resumed: bool = False) -> list[BotEvent]:
        """A session starts (or a client resumes it): the events to show first (also sent through `emit`)."""
        return []

    def close_session(self, session_id: str) -> None:
        """The session is gone from memory (its history stays in the session store)."""
        return None

    @abstractmethod
    def respond(self, history: History, utterance: str, *, condition: str | None = None,
                cancel: asyncio.Event | None = None, session: str | None = None) -> AsyncIterator[TurnEvent]:
        """One turn: `Delta`s and `BotEvent`s, then exactly one `Reply`. Setting `cancel` ends it "cancelled";
        `session` is the id given to `open_session` (None: a conversation without one)."""
