"""Resolve a dialogue utterance against its context by tracking the knowledge base's entities.

"那它的门票是怎么收费的？" names no attraction: "它" is the one named a few turns earlier. `EntityTracker` finds
entity names (and their short forms: "鸟巢（国家体育场）" is also "鸟巢" and "国家体育场") in the utterance and in
the dialogue before it, and picks the entity the utterance is about: one it names itself, else the most recently
named one within a window of messages. The retriever then searches with the entity's name added to the query and
ranks that entity's items first. What was measured and chosen is in docs/retrieval.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from knowledge.bm25 import entity_names, normalize
from knowledge.item import Item

_PAREN = re.compile(r"[(\[（【《〈「『](.*?)[)\]）】》〉」』]")
_HAS_CJK = re.compile(r"[\u3400-\u9fff]")


@dataclass(frozen=True)
class Resolution:
    """What an utterance is about. ``query`` is the text to retrieve with (the utterance, entity-expanded)."""

    query: str
    entity: str | None = None
    source: str = "none"  # "query": named in the utterance; "context": named earlier; "none"
    distance: int | None = None  # messages back where the entity was named (0: the utterance itself)


def aliases(name: str) -> set[str]:
    """The forms a name is written in: itself, without its bracketed part, and the bracketed part alone."""
    name = normalize(name).strip()
    forms = {name}
    inner = _PAREN.findall(name)
    if inner:
        forms.add(_PAREN.sub("", name).strip())
        forms.update(x.strip() for x in inner)
    return {f for f in forms if f}


class EntityTracker:
    """Longest-match entity mentions over a name dictionary, and the entity an utterance in context is about."""

    def __init__(self, names: Iterable[str], window: int = 9, min_cjk_chars: int = 2, min_latin_chars: int = 3):
        self.window = window
        self._canonical: dict[str, str] = {}
        exact = {normalize(n).strip(): n for n in names if n and n.strip()}
        for form, name in exact.items():  # a name's own form wins over another name's short form
            self._canonical[form] = name
        derived = {form: name for name in exact.values() for form in aliases(name) if form not in exact}
        for form, name in derived.items():
            long_enough = len(form) >= (min_cjk_chars if _HAS_CJK.search(form) else min_latin_chars)
            # A short form that is part of other names ("电影" in "雨中曲（电影）") is a common word, not a name.
            generic = any(form in other for other in exact if other != normalize(name).strip())
            if long_enough and not generic:
                self._canonical[form] = name
        lengths: dict[str, set[int]] = {}
        for form in self._canonical:
            lengths.setdefault(form[0], set()).add(len(form))
        self._lengths = {ch: sorted(ls, reverse=True) for ch, ls in lengths.items()}
        self.mentions = lru_cache(maxsize=65536)(self._mentions)

    @classmethod
    def from_items(cls, items: Sequence[Item], **kwargs) -> EntityTracker:
        return cls(entity_names(items), **kwargs)

    def __len__(self) -> int:
        return len(self._canonical)

    def _mentions(self, text: str) -> tuple[str, ...]:
        """Entity names mentioned in ``text``, in order, longest match first, non-overlapping."""
        text = normalize(text)
        found: list[str] = []
        i = 0
        while i < len(text):
            for n in self._lengths.get(text[i], ()):
                name = self._canonical.get(text[i : i + n])
                if name is not None:
                    found.append(name)
                    i += n
                    break
            else:
                i += 1
        return tuple(found)

    def resolve(self, query: str, context: Sequence[str] | None = None) -> Resolution:
        """The entity ``query`` is about: the last one it names, else the last named in the ``window`` before it."""
        named = self.mentions(query)
        if named:
            entity = named[-1]
            return Resolution(self._expand(query, entity), entity, "query", 0)
        recent = list(context or [])[-self.window :] if self.window > 0 else []
        for back, message in enumerate(reversed(recent), start=1):
            named = self.mentions(message)
            if named:
                entity = named[-1]
                return Resolution(self._expand(query, entity), entity, "context", back)
        return Resolution(query)

    @staticmethod
    def _expand(query: str, entity: str) -> str:
        return query if normalize(entity) in normalize(query) else f"{entity} {query}"
