"""Retrieving a user's memories for one turn, like retrieving from a knowledge store.

`MemoryRecall` is one user's memory for one bot, attached to a session's `History` (``history.memory``) by
whoever opens the session (the service, ``xdai prompt --user``). The turn asks it for the memories relevant to
the utterance: an item is relevant when the utterance asks about its slot ("你还记得我住在哪里吗？" asks about
where the user lives; "what do you know about me?" about everything) or when its embedding is close enough to
the utterance's (cosine at least the persona's memory threshold). Items are read afresh every turn (a memory
written through another replica counts at once); their embeddings come from the store's cache, else are
computed once per item version and kept in the recall (and in the store, when it may write).
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from xdai.memory.items import MemoryItem

if TYPE_CHECKING:
    from knowledge.embed import Embedder
    from xdai.memory.store import MemoryStore

log = logging.getLogger(__name__)

# What an utterance asking about a slot looks like (the user asks the bot to remember, or talks about it).
_CUES: dict[str, re.Pattern[str]] = {
    "name": re.compile(r"名字|叫什么|叫我|我是谁|\bmy name\b|\bcall me\b|who am i", re.IGNORECASE),
    "age": re.compile(r"几岁|多大|年龄|岁数|\bhow old\b|\bmy age\b|birthday|生日", re.IGNORECASE),
    "location": re.compile(r"住|家在|哪里|哪儿|城市|\blive\b|\bwhere\b|\bcity\b|\bhome\b", re.IGNORECASE),
    "hometown": re.compile(r"老家|家乡|哪里人|出生|长大|\bfrom\b|hometown|grew up|born", re.IGNORECASE),
    "occupation": re.compile(r"工作|职业|做什么|上班|\bjob\b|\bwork\b|profession|do for a living", re.IGNORECASE),
    "workplace": re.compile(r"工作|公司|上班|学校|上学|读书|\bwork\b|company|school|university|study",
                            re.IGNORECASE),
    "like": re.compile(r"喜欢|爱吃|爱喝|爱看|吃什么|喝什么|推荐|口味|爱好|兴趣|\blike\b|\blove\b|favou?rite|"
                       r"\beat\b|\bfood\b|hobby|hobbies|recommend", re.IGNORECASE),
    "dislike": re.compile(r"讨厌|不喜欢|不吃|忌口|推荐|吃什么|\bhate\b|dislike|\bavoid\b|recommend|\beat\b",
                          re.IGNORECASE),
    "plan": re.compile(r"打算|计划|准备|安排|周末|明天|下周|\bplans?\b|planning|going to|weekend|tomorrow",
                       re.IGNORECASE),
    "family": re.compile(r"家人|女儿|儿子|老婆|老公|妻子|丈夫|孩子|妈妈|爸爸|朋友|family|daughter|\bson\b|wife|"
                         r"husband|kids?|children|mom|dad|friend", re.IGNORECASE),
    "pet": re.compile(r"宠物|猫|狗|\bpets?\b|\bcat\b|\bdog\b", re.IGNORECASE),
    "summary": re.compile(r"上次|之前|以前|聊过|说过|记得|\blast time\b|\bbefore\b|talked about|we discussed",
                          re.IGNORECASE),
}
# "Do you remember me?", "what do you know about me": every fact is relevant.
_ALL = re.compile(r"记得我吗|认识我吗|了解我|关于我|你对我|知道我什么|remember me|know about me|what do you know of me",
                  re.IGNORECASE)
_SELF = re.compile(r"我(?!们)|\b(?:i|me|my|mine|i'm)\b", re.IGNORECASE)


@dataclass
class MemoryHit:
    """A memory chosen for a turn, and why: its cosine to the utterance and the cue that asked for it."""

    item: MemoryItem
    score: float
    cue: str | None = None

    @property
    def text(self) -> str:
        return self.item.text

    @property
    def id(self) -> str:
        return f"memory:{self.item.id}"

    def why(self) -> dict[str, Any]:
        item = self.item
        when = _dt.datetime.fromtimestamp(item.updated).strftime("%Y-%m-%d %H:%M") if item.updated else ""
        return {"id": self.id, "item_kind": "memory", "memory_kind": item.kind, "slot": item.slot,
                "score": round(float(self.score), 6), "matched": self.cue, "q": item.q, "a": item.a,
                "text": item.text, "session": item.session, "seq": item.seq, "time": when,
                "version": item.version, "store": "memory"}


@dataclass
class MemoryRecall:
    """One user's memory for one bot, as a turn retrieves from it."""

    store: MemoryStore
    user: str  # namespaced (see xdai.memory.items.namespaced)
    bot: str
    _vectors: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict, repr=False)

    def items(self, embedder: str | None = None) -> list[MemoryItem]:
        return self.store.items(self.user, self.bot, embedder=embedder)

    def recall(self, utterance: str, *, embedder: Embedder | None = None, k: int = 3,
               threshold: float = 0.87) -> list[MemoryHit]:
        """The memories relevant to `utterance`, best first, at most `k`. A store that cannot be read costs
        this turn its memories, never the turn."""
        try:
            items = self.items(getattr(embedder, "name", None))
        except Exception as exc:
            log.warning("memory of %s: cannot be read: %s", self.user, exc)
            return []
        if not items or not utterance.strip() or k <= 0:
            return []
        cosines = self._cosines(items, utterance, embedder)
        everything = bool(_ALL.search(utterance))
        about_self = bool(_SELF.search(utterance))
        hits = []
        for item, cosine in zip(items, cosines, strict=True):
            cue = None
            if everything and item.kind == "qa":
                cue = "about me"
            else:
                m = _CUES.get(item.slot, _CUES["summary"]).search(utterance)
                # a slot's words count when the user talks about themselves ("我住在哪"), or for a summary
                if m is not None and (about_self or item.kind == "description"):
                    cue = m.group(0)
            if cue is not None or (cosine is not None and cosine >= threshold):
                hits.append(MemoryHit(item, cosine if cosine is not None else 1.0, cue))
        hits.sort(key=lambda h: (h.cue is None, -h.score, -h.item.updated))
        return hits[:k]

    def _cosines(self, items: list[MemoryItem], utterance: str, embedder: Embedder | None) -> list[float | None]:
        if embedder is None:
            return [None] * len(items)
        name = embedder.name
        missing = [i for i in items if i.vector is None and (i.id, i.version, name) not in self._vectors]
        texts = [utterance] + [i.embed_text() for i in missing]
        query = np.asarray(embedder.encode([utterance], role="query")[0], dtype=np.float32)
        if missing:
            encoded = embedder.encode(texts[1:], role="passage")
            for item, row in zip(missing, encoded, strict=True):
                self._vectors[(item.id, item.version, name)] = np.asarray(row, dtype=np.float32)
        out: list[float | None] = []
        qn = float(np.linalg.norm(query)) or 1.0
        for item in items:
            vector = item.vector if item.vector is not None else self._vectors[(item.id, item.version, name)]
            out.append(float(np.dot(vector, query) / ((float(np.linalg.norm(vector)) or 1.0) * qn)))
        return out


def embed_items(store: MemoryStore, items: list[MemoryItem], embedder: Embedder | None) -> None:
    """Compute and cache the embeddings of new or changed items (the memory worker, after writing them)."""
    if embedder is None or not items:
        return
    vectors = embedder.encode([i.embed_text() for i in items], role="passage")
    for item, row in zip(items, vectors, strict=True):
        store.set_vector(item, embedder.name, np.asarray(row, dtype=np.float32))
