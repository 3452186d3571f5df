"""The nouns every store shares: `Item` (a curated QA pair or description, with provenance) and `Hit`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["qa", "description"]


@dataclass
class Item:
    """One unit of knowledge. `text` is what is indexed and what a prompt shows."""

    id: str
    kind: Kind
    text: str
    q: str | None = None
    a: str | None = None
    title: str | None = None
    entity: str | None = None
    predicate: str | None = None
    lang: str = "zh"
    tags: list[str] = field(default_factory=list)
    source_file: str = ""
    source_record: str = ""  # "line 12", "record 3", "row 7", "entity 故宫 triple 2" ...
    reference: str | None = None  # the `source` a record itself names (a URL, a book), kept verbatim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def search_text(self) -> str:
        """What stores embed and index: `text`, headed by the title for a description that does not start with it."""
        if self.kind == "description" and self.title and not self.text.startswith(self.title):
            return f"{self.title}\n{self.text}"
        return self.text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Item:
        return cls(**data)


@dataclass
class Hit:
    """An item returned by a query, its fused score, and why it ranked (per-retriever ranks/scores)."""

    item: Item
    score: float
    why: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The wire/CLI shape: {id, kind, text, q, a, title, entity, predicate, score, source: {file, record}}."""
        it = self.item
        return {
            "id": it.id,
            "kind": it.kind,
            "text": it.text,
            "q": it.q,
            "a": it.a,
            "title": it.title,
            "entity": it.entity,
            "predicate": it.predicate,
            "score": round(float(self.score), 6),
            "source": {"file": it.source_file, "record": it.source_record},
        }
