"""Streaming with reranking: n candidates decode in parallel, a judge scores each as soon as it finishes, and
the winner's text streams the moment the scores allow.

The decision is sound, never a guess: the best scored candidate wins once no unscored candidate can beat it,
by the judge's own upper `bound` on a candidate's final score (log-probabilities only fall as tokens are added,
so a sum of them is bounded by its current value). A judge without a bound (`math.inf`) waits for every
candidate. Losers are cancelled at once, freeing their KV cells.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from xdai.backends.engine.outputs import Stream


class TextFilter(Protocol):
    """What a candidate's raw text goes through (e.g. `xdai.backends.stream.TurnFilter`): `done` ends it."""

    done: bool

    def feed(self, text: str) -> str: ...

    def finish(self) -> str: ...


@dataclass(eq=False)
class Candidate:
    index: int
    stream: Stream
    text: str = ""  # what the filter let through so far
    tokens: int = 0
    logprob: float = 0.0  # sum of log P(token) of its sampled tokens (when the request asked for logprobs)
    finished: bool = False
    score: float | None = None


class Judge(Protocol):
    async def score(self, candidate: Candidate) -> float:
        """The final score of a finished candidate."""
        ...

    def bound(self, candidate: Candidate) -> float:
        """An upper bound on the final score of a candidate not scored yet (math.inf: unknown)."""
        ...


class LogprobJudge:
    """Score = the log-likelihood of the sampled tokens; it only falls as a candidate grows, so its current value
    bounds its final one and the race can end before the slower candidates finish."""

    async def score(self, candidate: Candidate) -> float:
        return candidate.logprob

    def bound(self, candidate: Candidate) -> float:
        return candidate.logprob


class Race:
    """`async for piece in Race(streams, judge)`: the winner's text (the whole text so far in one piece when the
    winner is decided); `.winner`, `.candidates` and `.early` afterwards. One candidate streams as it decodes."""

    def __init__(self, streams: Sequence[Stream], judge: Judge,
                 make_filter: Callable[[], TextFilter] | None = None) -> None:
        if not streams:
            raise ValueError("a race needs at least one candidate")
        self.candidates = [Candidate(i, s) for i, s in enumerate(streams)]
        self.judge = judge
        self.make_filter = make_filter
        self.winner: Candidate | None = None
        self.early = False  # decided while some candidate was still decoding

    def __aiter__(self) -> AsyncIterator[str]:
        return self._run()

    async def _run(self) -> AsyncIterator[str]:
        changed = asyncio.Event()
        pieces: asyncio.Queue[str | None] | None = asyncio.Queue() if len(self.candidates) == 1 else None
        tasks = [asyncio.ensure_future(self._follow(c, changed, pieces)) for c in self.candidates]
        try:
            if pieces is not None:  # nothing to compare: stream the only candidate as it decodes
                while (piece := await pieces.get()) is not None:
                    yield piece
                await tasks[0]
                self.winner = self.candidates[0]
                return
            while self.winner is None:
                await changed.wait()
                changed.clear()
                for task in tasks:  # a failed candidate fails the race
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                self.winner = self._decide()
            for c in self.candidates:
                if c is not self.winner:
                    c.stream.cancel()
            if self.winner.text:
                yield self.winner.text
        finally:
            for task in tasks:
                task.cancel()
            for c in self.candidates:
                if c is not self.winner:
                    c.stream.cancel()

    async def _follow(self, c: Candidate, changed: asyncio.Event, pieces: asyncio.Queue[str | None] | None) -> None:
        """Read one candidate to its end (its filter's or its stream's), then score it."""
        turn = self.make_filter() if self.make_filter is not None else None
        try:
            async for event in c.stream:
                c.tokens += 1
                c.logprob += event.logprob or 0.0
                shown = turn.feed(event.text) if turn is not None else event.text
                c.text += shown
                if pieces is not None and shown:
                    pieces.put_nowait(shown)
                if turn is not None and turn.done:
                    c.stream.end()  # its cells stay cached: scoring its text reuses them
                    break
                if pieces is None:
                    changed.set()  # its bound moved
            tail = turn.finish() if turn is not None else ""
            c.text += tail
            if pieces is not None:
                if tail:
                    pieces.put_nowait(tail)
                pieces.put_nowait(None)
                return
            c.finished = True
            changed.set()
            c.score = -math.inf if not c.text.strip() else await self.judge.score(c)
        finally:
            changed.set()

    def _decide(self) -> Candidate | None:
        scored = [c for c in self.candidates if c.score is not None]
        if not scored:
            return None
        best = max(scored, key=lambda c: c.score)  # type: ignore[arg-type, return-value]
        rest = [c for c in self.candidates if c.score is None]
        if not rest:
            return best
        assert best.score is not None
        if best.score > -math.inf and all(self.judge.bound(c) <= best.score for c in rest):
            self.early = any(not c.finished for c in rest)
            return best
        return None
