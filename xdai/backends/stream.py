"""Streaming plumbing shared by the backends: the bot-turn post-filter and a blocking generator run as async.

llama.cpp and transformers generate in blocking loops. `stream_in_thread` runs such a loop in a worker thread and
hands its pieces to the event loop through a queue; when the consumer stops iterating (or closes the iterator) the
worker sees a cancel flag before its next token, so generation stops promptly and the model lock is released.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

Emit = Callable[[str], None]


class TurnFilter:
    """Trims a streamed continuation to the bot's turn.

    The reply ends at the first stop string (the next speaker tags) or, with `single_line`, at the first line
    break after the reply began: in the XDAI format every utterance is one speaker-tagged line, so a line break
    means the model has started writing someone else's turn. Leading whitespace is dropped and trailing
    whitespace is never emitted. Text that might be the start of a stop string is held back until it is not.
    """

    def __init__(self, stop: Sequence[str] = (), single_line: bool = True):
        self.stop = [s for s in stop if s]
        self.single_line = single_line
        self.done = False
        self._pending = ""
        self._started = False

    def feed(self, text: str) -> str:
        """Take the next piece of raw model text; return what can be shown now."""
        if self.done or not text:
            return ""
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        buf = self._pending + text
        cut = self._end_of_turn(buf)
        if cut is not None:
            self.done = True
            self._pending = ""
            return buf[:cut].rstrip()
        keep = max(self._stop_prefix_len(buf), len(buf) - len(buf.rstrip()))
        self._pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def finish(self) -> str:
        """The generation ended: release what was held back (never trailing whitespace)."""
        out = "" if self.done else self._pending.rstrip()
        self._pending = ""
        self.done = True
        return out

    def _end_of_turn(self, buf: str) -> int | None:
        cuts = [i for i in (buf.find(s) for s in self.stop) if i >= 0]
        if self.single_line:
            cuts += [i for i in (buf.find("\n"), buf.find("\r")) if i >= 0]
        return min(cuts) if cuts else None

    def _stop_prefix_len(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best


def pump(pieces: Iterator[str], stop: Sequence[str], emit: Emit, cancel: threading.Event) -> None:
    """Feed raw pieces through a `TurnFilter` into `emit` until the turn ends, the pieces run out or `cancel`."""
    turn = TurnFilter(stop)
    try:
        for piece in pieces:
            if cancel.is_set():
                return
            shown = turn.feed(piece)
            if shown:
                emit(shown)
            if turn.done:
                return
        tail = turn.finish()
        if tail and not cancel.is_set():
            emit(tail)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


class TokenStream:
    """A backend's stream of text pieces that also counts the tokens the model generated for them: `tokens`.

    A piece is not a token (the turn filter merges pieces and holds text back; a server event may carry several
    tokens), so usage is counted where the tokens are known. `tokens` is final once the stream has ended."""

    def __init__(self) -> None:
        self.tokens = 0
        # log P of the tokens that carry the turn's text, summed as they were decoded, where the backend reports
        # them (llama_cpp); None where it does not. Final once the stream has ended.
        self.logprob: float | None = None
        self._pieces: AsyncIterator[str] | None = None

    def of(self, pieces: AsyncIterator[str]) -> TokenStream:
        """Stream `pieces`, whose producer counts into this object's `tokens`."""
        self._pieces = pieces
        return self

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> str:
        assert self._pieces is not None, "TokenStream.of(pieces) first"
        return await self._pieces.__anext__()

    async def aclose(self) -> None:
        close = getattr(self._pieces, "aclose", None)
        if close is not None:
            await close()


_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


async def stream_in_thread(work: Callable[[Emit, threading.Event], None]) -> AsyncIterator[str]:
    """Run `work(emit, cancel)` in a worker thread and yield what it emits, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    cancel = threading.Event()

    def put(item: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            cancel.set()

    def target() -> None:
        try:
            work(put, cancel)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))
        else:
            put(_END)

    thread = threading.Thread(target=target, name="xdai-generate", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        cancel.set()
