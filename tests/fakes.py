"""Stand-ins for a model and for a bot, so that protocol, flow and service tests need no real model.

`ScriptedBackend` speaks `xdai.backends.base.Backend` (fill / score) and yields the pieces it was given;
`ScriptedResponder` speaks what the service needs from a bot (greeting, new_history, respond) and streams each
scripted reply as `Delta` pieces and one final `Reply`, entirely in memory. Both record what they were asked,
so a test can assert on the calls. Use them for the logic around a model; keep end-to-end tests on real models.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from xdai.generation import GenerationSettings, Infill
from xdai.history import History
from xdai.prompt import Part, Prompt
from xdai.responder import BotEvent, Delta, Reply, Responder, TurnEvent


class ScriptedBackend:
    """A `Backend` whose n-th `fill` yields the n-th script (the last one repeats); `score` reads a table.

    A script is a list of pieces, or a string (streamed one character at a time). `settings.max_tokens` caps the
    number of pieces, as a real backend's token limit would; stop sequences are the caller's business (the Agent's
    ReplyFilter trims them), so the pieces are yielded as scripted.
    """

    name = "scripted"

    def __init__(self, scripts: Sequence[str | Sequence[str]] = ("好的。",), *,
                 scores: dict[str, float] | None = None, default_score: float = -10.0,
                 delay_s: float = 0.0) -> None:
        if not scripts:
            raise ValueError("ScriptedBackend needs at least one script")
        self.scripts = [list(s) if isinstance(s, str) else list(s) for s in scripts]
        self.scores = dict(scores or {})
        self.default_score = default_score
        self.delay_s = delay_s
        self.fills: list[tuple[Infill, GenerationSettings]] = []  # every fill's arguments, in order
        self.scored: list[tuple[str, str]] = []

    async def fill(self, infill: Infill, settings: GenerationSettings) -> AsyncIterator[str]:
        script = self.scripts[min(len(self.fills), len(self.scripts) - 1)]
        self.fills.append((infill, settings))
        for piece in script[: settings.max_tokens]:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield piece

    def score(self, context: str, continuation: str) -> float:
        self.scored.append((context, continuation))
        return self.scores.get(continuation, self.default_score)


@dataclass
class Call:
    """One `respond` call as the responder saw it."""

    utterance: str
    condition: str | None
    history: list[tuple[str, str]]  # the exchanges before this turn
    session: str | None = None


@dataclass
class ScriptedResponder(Responder):
    """A bot in memory: `replies` is a list (the n-th turn gets the n-th, the last repeats) or a function of the
    utterance. Each turn streams `events` (`BotEvent`s, as a flow emits them), then the reply in `pieces`-character
    `Delta`s `delay_s` apart, then one `Reply`. Setting the `cancel` event ends the turn with "cancelled"; with
    `fail_with` the turn fails after its first piece and ends with finish_reason "error" and the exception's text,
    as the Agent reports a backend failure."""

    replies: Sequence[str] | Callable[[str], str] = ("好的。",)
    greeting_text: str = "你好！"
    pieces: int = 1
    delay_s: float = 0.0
    grounding: list[dict[str, Any]] = field(default_factory=list)
    events: list[BotEvent] = field(default_factory=list)
    fail_with: Exception | None = None
    bot_speaker: str = "小呆"
    user_speaker: str = "用户"
    calls: list[Call] = field(default_factory=list)

    def greeting(self) -> str:
        return self.greeting_text

    def new_history(self) -> History:
        return History()

    def _reply(self, turn: int, utterance: str) -> str:
        if callable(self.replies):
            return self.replies(utterance)
        if not self.replies:
            raise ValueError("ScriptedResponder needs at least one reply")
        return self.replies[min(turn, len(self.replies) - 1)]

    async def respond(self, history: History, utterance: str, *, condition: str | None = None,
                      cancel: asyncio.Event | None = None, session: str | None = None,
                      ) -> AsyncIterator[TurnEvent]:
        text = self._reply(len(self.calls), utterance)
        self.calls.append(Call(utterance, condition, [(e.user, e.bot) for e in history.exchanges], session))
        prompt = self.prompt(history, utterance, condition)
        for event in self.events:
            yield event
        sent, finish, error = "", "stop", None
        for chunk in _chunks(text, self.pieces):
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            sent += chunk
            yield Delta(chunk)
            if self.fail_with is not None:
                finish, error = "error", f"{type(self.fail_with).__name__}: {self.fail_with}"
                break
        usage = {"prompt_tokens": len(prompt.text), "completion_tokens": len(sent)}
        yield Reply(text=sent.strip(), finish_reason=finish, usage=usage, grounding=list(self.grounding),
                    prompt=prompt, error=error)

    def prompt(self, history: History, utterance: str, condition: str | None) -> Prompt:
        """A plain prompt (exchanges, utterance, the bot's tag), so that a Reply carries one as the Agent's does."""
        parts = [Part("exchange", f"{self.user_speaker}：{e.user}\n{self.bot_speaker}：{e.bot}")
                 for e in history.exchanges]
        parts += [Part("utterance", f"{self.user_speaker}：{utterance}"), Part("mask", f"{self.bot_speaker}：")]
        return Prompt(parts=parts, dropped=[], budget_tokens=0, bot_speaker=self.bot_speaker,
                      user_speaker=self.user_speaker, condition=condition)


def _chunks(text: str, size: int) -> Iterable[str]:
    return (text[i:i + size] for i in range(0, len(text), max(1, size)))
