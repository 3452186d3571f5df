"""`xdai.race.race` over scripted candidate streams (the rule is flow logic; the real engine's race is in
tests/xdai/turn/test_turn.py): who is cut, that cut streams are closed at once, that scoring overlaps decoding,
and that the outcome depends on token counts, never on timing (`settle` predicts it)."""

from __future__ import annotations

import asyncio
import random

import pytest

from xdai.race import race, settle


class Script:
    """An async stream of `n` one-token pieces, `delay` seconds apart (`n=None`: endless); records how it ended."""

    def __init__(self, n: int | None, delay: float = 0.0, *, fail_at: int | None = None, word: str = "x") -> None:
        self.n, self.delay, self.fail_at, self.word = n, delay, fail_at, word
        self.tokens = 0
        self.closed = self.ended = False
        self._gen = self._pieces()

    async def _pieces(self):
        try:
            i = 0
            while self.n is None or i < self.n:
                await asyncio.sleep(self.delay)
                if self.fail_at is not None and i == self.fail_at:
                    raise RuntimeError("backend failed")
                self.tokens += 1
                yield self.word
                i += 1
            self.ended = True
        finally:
            self.closed = True

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()


async def length(e) -> int:
    return len(e.text)


def everyone(text: str) -> bool:
    return True


async def test_without_slack_every_candidate_ends_and_is_scored():
    streams = [Script(3), Script(9), Script(30)]
    entrants = await race(streams, score=length, eligible=everyone, slack=None)
    assert [e.result for e in entrants] == [3, 9, 30]
    assert all(e.standing for e in entrants) and all(s.ended for s in streams)


async def test_a_rival_past_the_shortest_eligible_candidate_plus_slack_is_cut_and_its_stream_closed():
    streams = [Script(20, 0.001), Script(3, 0.001), Script(5, 0.001), Script(None, 0.001)]
    entrants = await race(streams, score=length, eligible=everyone, slack=2)
    assert [e.cut for e in entrants] == [True, False, False, True]
    assert [e.result for e in entrants if e.standing] == [3, 5]
    assert streams[0].closed and not streams[0].ended and streams[3].closed  # the endless one too
    assert entrants[0].tokens == 6 and entrants[3].tokens == 6  # cut at the first token past 3 + 2


async def test_an_ineligible_candidate_sets_no_limit():
    streams = [Script(2, word="?"), Script(6), Script(40)]
    entrants = await race(streams, score=length, eligible=lambda t: "?" not in t, slack=1)
    assert [e.eligible for e in entrants] == [False, True, False]
    assert [e.cut for e in entrants] == [False, False, True]  # 2 tokens never counted as a reason to stop waiting
    assert entrants[0].standing  # an ineligible candidate still takes part in the choice (its fallback)


async def test_a_finished_candidate_is_scored_while_the_others_decode():
    streams = [Script(2, 0.01), Script(12, 0.01)]
    seen: dict[int, int] = {}

    async def score(e) -> int:
        seen[len(e.text)] = streams[1].tokens  # how far the long candidate had got when this one was scored
        return len(e.text)

    await race(streams, score=score, eligible=everyone, slack=None)
    assert seen[2] < 12 and seen[12] == 12


@pytest.mark.parametrize("trial", range(6))
async def test_the_outcome_depends_on_token_counts_not_on_timing(trial):
    rng = random.Random(trial)
    lengths = [rng.randint(1, 25) for _ in range(4)]
    eligible_words = [rng.random() < 0.7 for _ in range(4)]
    streams = [Script(n, rng.uniform(0, 0.004), word="x" if ok else "?") for n, ok in zip(lengths, eligible_words, strict=True)]
    entrants = await race(streams, score=length, eligible=lambda t: "?" not in t, slack=3)
    assert [e.cut for e in entrants] == settle(lengths, eligible_words, 3)
    assert [e.result for e in entrants if e.standing] == [n for n, cut in zip(lengths, settle(lengths, eligible_words, 3), strict=True) if not cut]


async def test_a_failing_candidate_fails_the_race_and_closes_the_others():
    streams = [Script(None, 0.001), Script(10, 0.001, fail_at=4)]
    with pytest.raises(RuntimeError, match="backend failed"):
        await race(streams, score=length, eligible=everyone, slack=None)
    assert all(s.closed for s in streams)


async def test_cancelling_the_race_closes_every_stream():
    streams = [Script(None, 0.001), Script(None, 0.001)]
    task = asyncio.ensure_future(race(streams, score=length, eligible=everyone, slack=None))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(s.closed for s in streams)


async def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        await race([], score=length, eligible=everyone, slack=None)
    with pytest.raises(ValueError, match="slack"):
        await race([Script(1)], score=length, eligible=everyone, slack=-1)
