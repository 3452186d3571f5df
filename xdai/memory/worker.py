"""Writing memories off the reply's path: one thread with an event loop of its own, fed by a queue.

After an exchange completes, the service hands the user's utterance to `MemoryWorker.observe` and moves on: the
next turn never waits for extraction (the model's part of it may take a second). The worker extracts the
facts (`xdai.memory.extract.Extractor`), writes them in one transaction (`MemoryStore.apply`), caches their
embeddings, and only then reports them (`done`): what was reported is on disk. A session that ends or idles out
gets a summary the same way (`summarize`). Jobs of one user run in order; a failure is logged, never raised
into the service.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

from xdai.memory.extract import Extractor, detect_language, summarize
from xdai.memory.recall import embed_items
from xdai.memory.store import Change, MemoryStore, Provenance

log = logging.getLogger(__name__)


@dataclass
class Observation:
    """One finished exchange of a user with a bot: the utterance to read, and where it came from."""

    user: str
    bot: str
    utterance: str
    session: str | None
    seq: int | None
    lang: str | None = None  # None: detected from the utterance


class MemoryWorker:
    """Extraction and summaries on a thread of their own; `done(changes)` is called there after each write."""

    def __init__(self, store: MemoryStore, *, name: str = "xdai-memory") -> None:
        self.store = store
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()
        self.pending: set[Future[Any]] = set()
        self._lock = threading.Lock()
        self._order: asyncio.Lock | None = None  # jobs run one at a time, in the order they came

    async def _in_order(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._order is None:
            self._order = asyncio.Lock()
        async with self._order:
            return await coro

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        future = asyncio.run_coroutine_threadsafe(self._in_order(coro), self.loop)
        with self._lock:
            self.pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self.pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("memory job failed", exc_info=future.exception())

    def observe(self, job: Observation, extractor: Extractor, embedder: Any = None,
                done: Callable[[list[Change]], None] | None = None) -> Future[Any]:
        return self._submit(self._observe(job, extractor, embedder, done))

    async def _observe(self, job: Observation, extractor: Extractor, embedder: Any,
                       done: Callable[[list[Change]], None] | None) -> list[Change]:
        lang = job.lang or detect_language(job.utterance)
        facts = await extractor.extract(job.utterance, lang)
        if not facts:
            return []
        source = Provenance(job.session, job.seq, detect_language(job.utterance), time.time())
        changes = self.store.apply(job.user, job.bot, facts, source)
        written = [c.item for c in changes if c.action != "kept"]
        try:
            embed_items(self.store, written, embedder)
        except Exception as exc:  # the memory is kept; its embedding is computed when it is next recalled
            log.warning("memory: could not cache embeddings: %s", exc)
        if done is not None and written:
            done(changes)
        return changes

    def summarize(self, user: str, bot: str, session: str, exchanges: Sequence[tuple[str, str]], *, lang: str,
                  backend: Any = None, embedder: Any = None,
                  done: Callable[[list[Change]], None] | None = None) -> Future[Any]:
        return self._submit(self._summarize(user, bot, session, list(exchanges), lang, backend, embedder, done))

    async def _summarize(self, user: str, bot: str, session: str, exchanges: list[tuple[str, str]], lang: str,
                         backend: Any, embedder: Any, done: Callable[[list[Change]], None] | None) -> Change | None:
        when = time.strftime("%Y-%m-%d")
        text = await summarize(exchanges, lang, when, backend)
        change = self.store.put_summary(user, bot, text, Provenance(session, None, lang, time.time()))
        if change is not None:
            try:
                embed_items(self.store, [change.item], embedder)
            except Exception as exc:
                log.warning("memory: could not cache a summary's embedding: %s", exc)
            if done is not None:
                done([change])
        return change

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait for the jobs queued so far (True when they all finished in time)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = list(self.pending)
            if not pending:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                pending[0].exception(timeout=left)
            except (TimeoutError, CancelledError):
                pass

    def close(self, timeout: float = 30.0) -> None:
        self.drain(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
