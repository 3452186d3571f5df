"""The service's side of long-term memory: which sessions have one, and what happens around their turns.

A session opened with a ``user`` (namespaced under the API key's tenant, see `xdai.memory.items.namespaced`)
carries that user's memory for its bot in its history (`attach`), so the turn recalls from it. After each
completed exchange the user's utterance goes to the memory worker (`observe`), off the reply's path; when the
facts are written the session gets an ``event {name: "memory", data: {saved: [...]}}``: an acknowledged memory
is on disk. A session that idles out or is left at shutdown gets a summary (`summarize`). The protocol's
``memory.list`` / ``memory.forget`` frames read and delete the session's own user's memory for its bot.
A persona with ``memory: false`` (the interviewer) has none of this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from xdai.memory.extract import MODES, Extractor
from xdai.memory.recall import MemoryRecall
from xdai.memory.store import Change, MemoryStore
from xdai.memory.worker import MemoryWorker, Observation

log = logging.getLogger(__name__)


def _agent(responder: Any) -> Any:
    """The `xdai.turn.Agent` inside a responder (a `FlowAgent` wraps one), or the responder itself."""
    return getattr(responder, "agent", None) or responder


class SessionMemory:
    """Memory for the sessions of one server: a store beside the session store and a worker that writes it."""

    def __init__(self, store: MemoryStore, *, extractor: str = "rules") -> None:
        if extractor not in MODES:
            raise ValueError(f"server.memory_extractor {extractor!r}: choose one of {', '.join(MODES)}")
        self.store = store
        self.mode = extractor
        self.worker = MemoryWorker(store)

    @staticmethod
    def enabled(responder: Any) -> bool:
        persona = getattr(responder, "persona", None)
        return bool(getattr(persona, "memory", True))

    def attach(self, history: Any, user: str, bot: str) -> None:
        history.memory = MemoryRecall(self.store, user, bot)

    def observe(self, responder: Any, user: str, bot: str, session: str, seq: int | None, utterance: str,
                done: Callable[[list[Change]], None] | None = None) -> None:
        agent = _agent(responder)
        backend = getattr(agent, "backend", None) if self.mode != "rules" else None
        self.worker.observe(Observation(user, bot, utterance, session, seq),
                            Extractor(self.mode if backend is not None else "rules", backend),
                            getattr(agent, "embedder", None), done)

    def summarize(self, responder: Any, user: str, bot: str, session: str, exchanges: Sequence[tuple[str, str]],
                  *, use_model: bool = True) -> None:
        agent = _agent(responder)
        backend = getattr(agent, "backend", None) if use_model and self.mode != "rules" else None
        lang = getattr(getattr(responder, "persona", None), "language", "zh") or "zh"
        self.worker.summarize(user, bot, session, exchanges, lang=lang, backend=backend,
                              embedder=getattr(agent, "embedder", None))

    def list(self, user: str, bot: str) -> list[dict[str, Any]]:
        wire = []
        for item in self.store.items(user, bot):  # the namespaced user and the internal key stay on the server
            shown = item.to_json()
            for key in ("user", "key"):
                shown.pop(key, None)
            wire.append(shown)
        return wire

    def forget(self, user: str, bot: str, item: str | None = None) -> int:
        return self.store.forget(user, bot, item)

    def close(self, timeout: float = 30.0) -> None:
        self.worker.close(timeout)
        self.store.close()
