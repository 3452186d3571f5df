"""Racing a reply's candidates: read them side by side, stop the ones that can no longer win in time.

XDAI ranks sampled replies by scores that need a whole reply (the post-response likelihood, inverse prompting, the
facts it asserts: `xdai.rerank`, `xdai.choose`), so no text can be shown before some candidate has ended, and
waiting for all of them costs the longest. `race` reads every candidate as it decodes and scores each the moment it
ends, while the others go on decoding. Once one candidate has ended *eligible* (a reply the choice may pick with no
penalty against it: not empty, asserting nothing the prompt does not support, copying no example line), a rival
still decoding `slack` tokens past that candidate's length is cut: its stream is closed (the engine frees its
cells at once) and it takes no part in the choice. The cut is a deliberate trade, measured in `benchmarks/engine.py` (the reply's latency against how often
the choice changes): a rival that long has usually run on into claims, and its length is what a user waits for.

The rule reads only each candidate's own token count, never the clock, so a seeded race ends the same way on any
machine and under any load: candidate r is cut exactly when its whole length would exceed the shortest eligible
candidate's length plus `slack`. `slack=None` waits for every candidate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class Entrant:
    """One candidate: its text so far, its tokens (the stream's own count where it keeps one, else its pieces),
    the log-probability its stream reports for its tokens (None where it reports none), how it left the race, and
    what `score` returned once it ended."""

    index: int
    text: str = ""
    tokens: int = 0
    logprob: float | None = None
    finished: bool = False
    eligible: bool = False
    cut: bool = False
    result: Any = None

    @property
    def standing(self) -> bool:
        """Ended, scored and not cut: a candidate the choice may take."""
        return self.finished and not self.cut

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "text": self.text, "tokens": self.tokens, "eligible": self.eligible,
                "cut": self.cut}


async def race(
    streams: Sequence[AsyncIterator[str]],
    *,
    score: Callable[[Entrant], Awaitable[Any]],
    eligible: Callable[[str], bool],
    slack: int | None,
) -> list[Entrant]:
    """Read every stream to its end or its cut; return the entrants in stream order once each has ended and been
    scored (`Entrant.result`) or been cut. A failing stream or score fails the race; so does cancelling it. Every
    stream still open is closed before this returns or raises."""
    if not streams:
        raise ValueError("a race needs at least one candidate")
    if slack is not None and slack < 0:
        raise ValueError(f"slack must be >= 0 tokens or None, got {slack}")
    entrants = [Entrant(i) for i in range(len(streams))]
    limit: list[int | None] = [None]  # tokens a rival may reach: the shortest eligible length + slack
    tasks: list[asyncio.Task[None]] = []

    def over(e: Entrant) -> bool:
        return not e.finished and over_limit(e.tokens, limit[0])

    async def follow(e: Entrant, stream: AsyncIterator[str]) -> None:
        try:
            async for piece in stream:
                e.text += piece
                e.tokens = int(getattr(stream, "tokens", 0)) or e.tokens + 1
                if over(e):
                    e.cut = True
                    return
            e.tokens = int(getattr(stream, "tokens", 0)) or e.tokens  # with what the stream held back
            e.logprob = getattr(stream, "logprob", None)
            e.finished = True
            e.eligible = eligible(e.text)
            if e.eligible and slack is not None:
                mark = e.tokens + slack
                limit[0] = mark if limit[0] is None else min(limit[0], mark)
                for rival, task in zip(entrants, tasks, strict=True):
                    if over(rival) and not task.done():
                        rival.cut = True
                        task.cancel()
            e.result = await score(e)
        except asyncio.CancelledError:
            if not e.cut:  # the race itself was cancelled
                raise
        finally:
            if not e.finished:
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()

    tasks.extend(asyncio.ensure_future(follow(e, s)) for e, s in zip(entrants, streams, strict=True))
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for e in entrants:  # one that ended before the limit was known, longer than it (a backend that does not
        e.cut = e.cut or over_limit(e.tokens, limit[0])  # decode side by side), is out as well
    return entrants


def over_limit(tokens: int, limit: int | None) -> bool:
    return limit is not None and tokens > limit


def settle(lengths: Sequence[int], eligible: Sequence[bool], slack: int | None) -> list[bool]:
    """Which candidates a race would cut, from their whole lengths and eligibility: what `race` decides, without
    decoding (the benchmark replays full runs with it)."""
    marks = [n for n, ok in zip(lengths, eligible, strict=True) if ok]
    if slack is None or not marks:
        return [False] * len(lengths)
    limit = min(marks) + slack
    return [n > limit for n in lengths]
