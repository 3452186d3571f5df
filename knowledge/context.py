"""Resolve a dialogue utterance against its context by tracking the knowledge base's entities.

"那它的门票是怎么收费的？" names no attraction: "它" is the one named a few turns earlier. `EntityTracker` finds
entity names (and their short forms: "鸟巢（国家体育场）" is also "鸟巢" and "国家体育场") in the utterance and in
the dialogue before it and picks the entity the utterance is about: reading the last messages oldest first, each
name becomes the focus, unless it sits in words quoted from the current focus's own knowledge (an address or a
ticket rule that names another place). The retriever then searches with the focus's name added to the query and
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


def _shared_forms(derived: dict[str, str], exact: dict[str, str]) -> set[str]:
    """Short forms that also occur inside another entity's name: "电影" of "雨中曲（电影）" is a word, not a name."""
    lengths = sorted({len(f) for f in derived})
    shared: set[str] = set()
    for form_of_name, name in exact.items():
        for n in lengths:
            for i in range(len(form_of_name) - n + 1):
                form = form_of_name[i : i + n]
                if form in derived and derived[form] != name:
                    shared.add(form)
    return shared


class EntityTracker:
    """Longest-match entity mentions over a name dictionary, and the entity an utterance in context is about."""

    def __init__(
        self,
        names: Iterable[str],
        knowledge: dict[str, str] | None = None,
        *,
        window: int = 15,
        margin: int = 2,
        min_cjk_chars: int = 2,
        min_latin_chars: int = 3,
    ):
        self.window = window
        self.margin = margin
        self._canonical: dict[str, str] = {}
        exact = {normalize(n).strip(): n for n in names if n and n.strip()}
        for form, name in exact.items():  # a name's own form wins over another name's short form
            self._canonical[form] = name
        owners: dict[str, set[str]] = {}
        for name in exact.values():
            for form in aliases(name) - exact.keys():
                owners.setdefault(form, set()).add(name)
        derived = {form: next(iter(names)) for form, names in owners.items() if len(names) == 1}
        generic = _shared_forms(derived, exact)
        for form, name in derived.items():
            long_enough = len(form) >= (min_cjk_chars if _HAS_CJK.search(form) else min_latin_chars)
            if long_enough and form not in generic:
                self._canonical[form] = name
        lengths: dict[str, set[int]] = {}
        for form in self._canonical:
            lengths.setdefault(form[0], set()).add(len(form))
        self._lengths = {ch: sorted(ls, reverse=True) for ch, ls in lengths.items()}
        self._knowledge = {name: normalize(text) for name, text in (knowledge or {}).items()}
        self._scan = lru_cache(maxsize=65536)(self._scan_uncached)

    @classmethod
    def from_items(cls, items: Sequence[Item], **kwargs) -> EntityTracker:
        """Names from the items' entities and titles; each entity's knowledge is the text of its items."""
        knowledge: dict[str, list[str]] = {}
        for it in items:
            for name in {it.entity, it.title} - {None, ""}:
                knowledge.setdefault(name, []).append(it.text)
        return cls(entity_names(items), {name: "\n".join(texts) for name, texts in knowledge.items()}, **kwargs)

    def __len__(self) -> int:
        return len(self._canonical)

    def mentions(self, text: str) -> tuple[str, ...]:
        """Entity names mentioned in ``text``, in order, longest match first, non-overlapping."""
        return tuple(name for name, _, _ in self._scan(text)[1])

    def _scan_uncached(self, text: str) -> tuple[str, tuple[tuple[str, int, int], ...]]:
        text = normalize(text)
        found: list[tuple[str, int, int]] = []
        i = 0
        while i < len(text):
            for n in self._lengths.get(text[i], ()):
                name = self._canonical.get(text[i : i + n])
                if name is not None:
                    found.append((name, i, i + n))
                    i += n
                    break
            else:
                i += 1
        return text, tuple(found)

    def _quotes_knowledge(self, focus: str, text: str, start: int, end: int) -> bool:
        """Whether the mention at text[start:end] sits in words quoted from the focus entity's own knowledge.

        "地址在北京市海淀区颐和园路5号" names 颐和园 while giving 北京大学's address: a value, not a change of topic.
        """
        known = self._knowledge.get(focus)
        if not known or self.margin <= 0:
            return False
        left = text[max(0, start - self.margin) : end]
        right = text[start : end + self.margin]
        return (len(left) > end - start and left in known) or (len(right) > end - start and right in known)

    def resolve(self, query: str, context: Sequence[str] | None = None) -> Resolution:
        """The entity ``query`` is about: the focus after reading the last ``window`` messages and the query.

        Reading oldest first, each entity a message names becomes the focus, unless the mention is quoted from
        the current focus's knowledge (an address, a ticket rule naming another place).
        """
        recent = list(context or [])[-self.window :] if self.window > 0 else []
        messages = [*recent, query]
        focus: str | None = None
        at = 0
        for index, message in enumerate(messages):
            text, found = self._scan(message)
            for name, start, end in found:
                if focus is not None and name != focus and self._quotes_knowledge(focus, text, start, end):
                    continue
                focus, at = name, index
        if focus is None:
            return Resolution(query)
        distance = len(messages) - 1 - at
        return Resolution(self._expand(query, focus), focus, "query" if distance == 0 else "context", distance)

    @staticmethod
    def _expand(query: str, entity: str) -> str:
        return query if normalize(entity) in normalize(query) else f"{entity} {query}"
