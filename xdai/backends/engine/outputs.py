"""What the engine hands back: a `Stream` of `TokenEvent`s per generated sequence, ending in a `Completion`,
and a `ScoreResult` per scored continuation. Streams are read from any thread, sync or async.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum


class Finish(str, Enum):
    EOG = "eog"  # the model ended its text
    STOP = "stop"  # a stop string appeared
    LENGTH = "length"  # max_tokens reached
    ENDED = "ended"  # the caller ended it (`Stream.end`): its cells stay cached as a prefix
    CANCELLED = "cancelled"  # the caller dropped it (`Stream.cancel`): its cells were freed at once


@dataclass(frozen=True)
class TokenEvent:
    token: int
    text: str  # the text this token completes ("" while a UTF-8 character is still split)
    logprob: float | None = None  # log P(token), when the request asked for logprobs


@dataclass(frozen=True)
class Completion:
    tokens: list[int]
    text: str
    finish: Finish
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache
    logprobs: list[float] | None = None


@dataclass(frozen=True)
class ScoreResult:
    logprob: float  # sum of log P(tokens[i]) for i >= start
    token_logprobs: list[float] = field(default_factory=list)
    cached_tokens: int = 0


class EngineError(RuntimeError):
    """The engine could not run a request (it does not fit, or llama.cpp failed); the message says why."""


Control = Callable[["Stream", Finish], None]


class Stream:
    """One generated sequence as the caller sees it: iterate its `TokenEvent`s (sync or async), read its
    `Completion`, or end it early. Written by the engine's thread only."""

    def __init__(self, control: Control) -> None:
        self._control = control
        self._events: deque[TokenEvent] = deque()
        self._cond = threading.Condition()
        self._completion: Completion | None = None
        self._requested: Finish | None = None
        self._error: BaseException | None = None
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    # -- caller side ----------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Drop the sequence: its KV cells are freed before the engine's next step."""
        self._request(Finish.CANCELLED)

    def end(self) -> None:
        """End the sequence normally (e.g. the caller's own stop rule fired): its cells stay as a cached prefix."""
        self._request(Finish.ENDED)

    def _request(self, finish: Finish) -> None:
        with self._cond:  # the first request wins; a finished sequence ignores them
            if self.done or self._requested is not None:
                return
            self._requested = finish
        self._control(self, finish)

    @property
    def done(self) -> bool:
        return self._completion is not None or self._error is not None

    def __iter__(self) -> Iterator[TokenEvent]:
        while True:
            with self._cond:
                while not self._events and not self.done:
                    self._cond.wait()
                if self._events:
                    event = self._events.popleft()
                elif self._error is not None:
                    raise self._error
                else:
                    return
            yield event

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[TokenEvent]:
        try:
            while True:
                event = await self._next_async()
                if event is None:
                    return
                yield event
        finally:
            self.cancel()  # a consumer that stops listening frees the sequence

    async def _next_async(self) -> TokenEvent | None:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._events:
                    return self._events.popleft()
                if self._error is not None:
                    raise self._error
                if self._completion is not None:
                    return None
                waker: asyncio.Future[None] = loop.create_future()
                self._wakers.append((loop, waker))
            await waker

    def result(self, timeout: float | None = None) -> Completion:
        """Block until the sequence is done; its events stay readable."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.done, timeout):
                raise TimeoutError("sequence still running")
            if self._error is not None:
                raise self._error
            assert self._completion is not None
            return self._completion

    async def aresult(self) -> Completion:
        while True:
            with self._cond:
                if self._error is not None:
                    raise self._error
                if self._completion is not None:
                    return self._completion
                waker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._wakers.append((asyncio.get_running_loop(), waker))
            await waker

    # -- engine side ----------------------------------------------------------------------------------------

    def _push(self, event: TokenEvent) -> None:
        with self._cond:
            self._events.append(event)
            self._wake()

    def _finish(self, completion: Completion | None, error: BaseException | None = None) -> None:
        with self._cond:
            self._completion, self._error = completion, error
            self._wake()

    def _wake(self) -> None:
        self._cond.notify_all()
        wakers, self._wakers = self._wakers, []
        for loop, waker in wakers:
            try:
                loop.call_soon_threadsafe(_resolve, waker)
            except RuntimeError:  # that event loop is closed: nobody waits there any more
                pass


def _resolve(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)
