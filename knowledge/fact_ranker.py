"""The second stage of retrieval: the right fact of the right entity first.

The first stage (`knowledge.retrieve`) finds the entity's items and a few dozen neighbours; it cannot tell the
entity's 周边景点 pair from its 建议游玩时间 pair when the question is "那里面能游玩多长时间？". Generation copies what
it is given first, so the order matters. `FactRanker` re-scores a pool (the first stage's top `depth`, the focus
entity's items and the items of the other entities the dialogue named) by a weighted sum of features, each in
[0, 1] or close to it:

=========================  ====================================================================================
focus                      the item is the focus entity's (`EntityTracker.resolve`)
candidate                  the item is another entity the window named, 1/(1 + its place after the focus)
candidate_quoted           the same, for an entity named only inside the focus's knowledge (a value)
predicate_words            share of the predicate name's bigrams the question spells out (`knowledge.predicates`)
predicate_words_anywhere   the same over the whole utterance ("旗下有不少歌手，你知道都有谁吗？")
predicate_meaning          cosine of the query and the predicate name's embedding, minus the pool's mean
answer_type                the question asks for a date/duration/price/place/person... and the value is one
said_here                  the value is already in the utterance (an answer, not what is needed next)
said_before                the value is already in the last messages
said_earlier               the value was said earlier in the dialogue
asked_before               the predicate was named in the last messages (asked and answered)
dense                      cosine of the query and the item
bm25                       the item's BM25 score over the pool's best
first_stage                1 / the item's rank in the first stage
description_new_entity     the focus's description when the utterance brings the entity up for the first time
description_nothing_asked  the focus's description when no predicate and no answer type is asked for
description_answers        a description holding a value of the type asked for (a birth date in a biography)
=========================  ====================================================================================

The weights were fitted on half of the KdConv travel, film and music dev dialogues and are measured on the other
half (benchmarks/retrieval_kdconv.py --fit prints both; docs/retrieval.md has the figures). The cost is a few
dozen string tests and dot products per query, and one embedding per predicate name the first time it is seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from knowledge.context import EntityTracker, Resolution
from knowledge.item import Item
from knowledge.predicates import (
    already_said,
    list_said,
    predicate_coverage,
    question_part,
    question_types,
    stripped,
    value_types,
)

FEATURES = ("focus", "candidate", "candidate_quoted", "predicate_words", "predicate_words_anywhere",
            "predicate_meaning", "answer_type",
            "said_here", "said_before", "said_earlier", "asked_before", "dense", "bm25", "first_stage",
            "description_new_entity", "description_nothing_asked", "description_answers")
RECENT = 4  # messages before the utterance that count as "just said"
QUOTE = 8  # characters of a description an utterance must repeat to have "said" it


@dataclass(frozen=True)
class RankerWeights:
    """One weight per feature (see the module docstring); fitted by benchmarks/retrieval_kdconv.py --fit."""

    focus: float = 2.462
    candidate: float = 4.064
    candidate_quoted: float = 2.081
    predicate_words: float = 1.745
    predicate_words_anywhere: float = 0.181
    predicate_meaning: float = 1.426
    answer_type: float = 2.14
    said_here: float = -0.836
    said_before: float = -0.645
    said_earlier: float = -1.028
    asked_before: float = -1.491
    dense: float = 1.503
    bm25: float = 1.545
    first_stage: float = 1.325
    description_new_entity: float = 0.632
    description_nothing_asked: float = 1.12
    description_answers: float = 0.691

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, f) for f in FEATURES], dtype=np.float32)

    @classmethod
    def from_vector(cls, values: Sequence[float]) -> RankerWeights:
        return cls(**{f: round(float(v), 3) for f, v in zip(FEATURES, values, strict=True)})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Pool:
    """The candidates of one query: item rows, their first-stage rank (None: not in the first stage's list),
    their BM25 score and their feature matrix [n, len(FEATURES)]."""

    rows: list[int]
    first_rank: list[int | None]
    features: np.ndarray


class FactRanker:
    """Re-scores a first-stage pool; `Encode` embeds predicate names (as queries) once each."""

    def __init__(self, items: Sequence[Item], tracker: EntityTracker, vectors: Callable[[list[int]], np.ndarray],
                 encode: Callable[[list[str]], np.ndarray] | None, weights: RankerWeights | None = None) -> None:
        self.items = items
        self.tracker = tracker
        self.vectors = vectors  # item rows -> their (normalised) embeddings
        self.encode = encode
        self.weights = weights or RankerWeights()
        self._predicate_vectors: dict[str, np.ndarray] = {}

    def pool(self, utterance: str, context: Sequence[str] | None, res: Resolution, qvec: np.ndarray | None,
             ranked: Sequence[tuple[int, float, dict]], by_entity: dict[str, list[int]],
             bm25: dict[int, float]) -> Pool:
        """Features of the first stage's `ranked` (doc, fused score, why) and of the dialogue's entities' items."""
        rows = [doc for doc, _, _ in ranked]
        first_rank: list[int | None] = list(range(1, len(rows) + 1))
        seen = set(rows)
        entities = [e for e in res.candidates if e] or ([res.entity] if res.entity else [])
        place = {}
        for k, name in enumerate(entities[:3]):
            place[name] = k
            for doc in by_entity.get(name, []):
                if doc not in seen:
                    seen.add(doc)
                    rows.append(doc)
                    first_rank.append(None)
        return Pool(rows, first_rank, self._features(utterance, list(context or []), res, qvec, rows, first_rank,
                                                     by_entity, place, bm25))

    def scores(self, pool: Pool) -> np.ndarray:
        return pool.features @ self.weights.vector()

    def order(self, pool: Pool, weights: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
        """Pool positions best first, and the scores. The dialogue's own entities (the focus and the others it
        named) come before any other entity's items; within each group the weighted features decide (ties: the
        first stage's order). Measured: travel recall@5 0.943 -> 0.951, film and music unchanged."""
        scores = pool.features @ (self.weights.vector() if weights is None else weights)
        return order_pool(pool, scores), scores

    # -- the features --------------------------------------------------------------------------------------------
    def _features(self, utterance: str, context: list[str], res: Resolution, qvec: np.ndarray | None,
                  rows: list[int], first_rank: list[int | None], by_entity: dict[str, list[int]],
                  place: dict[str, int], bm25: dict[int, float]) -> np.ndarray:
        f = np.zeros((len(rows), len(FEATURES)), dtype=np.float32)
        if not rows:
            return f
        col = {name: j for j, name in enumerate(FEATURES)}
        question = self._without_names(question_part(utterance))
        whole = self._without_names(utterance)
        asks = question_types(question)
        here = stripped(utterance)
        recent = context[-RECENT:]
        before = stripped("".join(recent))
        earlier = stripped("".join(context[:-RECENT]))
        recent_words = "".join(self._without_names(m) for m in recent)
        focus_rows = set(by_entity.get(res.entity, [])) if res.entity else set()
        owner: dict[int, int] = {}
        for name, k in place.items():
            for doc in by_entity.get(name, []):
                owner.setdefault(doc, k)
        new_entity = res.source == "query" and res.entity is not None and not any(
            res.entity in self.tracker.mentions(m) for m in recent)
        best_bm25 = max([bm25.get(r, 0.0) for r in rows] + [1e-9])
        vecs = self.vectors(rows) if qvec is not None else None
        predicates = [self.items[r].predicate if self.items[r].kind == "qa" else None for r in rows]
        meaning = self._predicate_meaning(qvec, predicates)
        asked_any = False
        for i, r in enumerate(rows):
            it = self.items[r]
            k = owner.get(r)
            f[i, col["focus"]] = r in focus_rows
            if r not in focus_rows and k is not None and k > 0:
                quoted = res.candidates[k] in res.quoted if k < len(res.candidates) else False
                f[i, col["candidate_quoted" if quoted else "candidate"]] = 1.0 / (1 + k)
            if vecs is not None:
                f[i, col["dense"]] = float(vecs[i] @ qvec)
            f[i, col["bm25"]] = bm25.get(r, 0.0) / best_bm25
            f[i, col["first_stage"]] = 0.0 if first_rank[i] is None else 1.0 / first_rank[i]
            if it.kind == "qa":
                value = stripped(it.a or it.text)
                if it.predicate:
                    cover = predicate_coverage(question, it.predicate)
                    f[i, col["predicate_words"]] = cover
                    f[i, col["predicate_words_anywhere"]] = predicate_coverage(whole, it.predicate)
                    asked_any |= cover >= 0.5 and r in focus_rows
                    f[i, col["asked_before"]] = predicate_coverage(recent_words, it.predicate) >= 1.0 and cover < 1.0
                f[i, col["predicate_meaning"]] = meaning[i]
                f[i, col["answer_type"]] = bool(asks & value_types(it.a or it.text))
                raw = it.a or it.text
                f[i, col["said_here"]] = already_said(value, here) or list_said(raw, here)
                f[i, col["said_before"]] = already_said(value, before) or list_said(raw, before)
                f[i, col["said_earlier"]] = already_said(value, earlier) or list_said(raw, earlier)
            else:
                text = stripped(it.text)
                f[i, col["said_here"]] = _quotes(here, text)
                f[i, col["said_before"]] = _quotes(before, text)
                f[i, col["said_earlier"]] = _quotes(earlier, text)
                f[i, col["description_answers"]] = bool(asks & value_types(it.text))
        if res.entity is not None:
            for i, r in enumerate(rows):
                if r in focus_rows and self.items[r].kind == "description":
                    f[i, col["description_new_entity"]] = new_entity
                    f[i, col["description_nothing_asked"]] = not asked_any and not asks
        return f

    def _without_names(self, text: str) -> str:
        """The utterance without the entity names in it: a name's characters are no evidence of a predicate."""
        normal, found = self.tracker._scan(text)
        if not found:
            return normal
        out, at = [], 0
        for _, start, end in found:
            out.append(normal[at:start])
            at = end
        out.append(normal[at:])
        return " ".join(out)

    def _predicate_meaning(self, qvec: np.ndarray | None, predicates: list[str | None]) -> np.ndarray:
        out = np.zeros(len(predicates), dtype=np.float32)
        named = [p for p in predicates if p]
        if qvec is None or self.encode is None or not named:
            return out
        missing = sorted({p for p in named if p not in self._predicate_vectors})
        if missing:
            for p, v in zip(missing, self.encode(missing), strict=True):
                self._predicate_vectors[p] = np.asarray(v, dtype=np.float32)
        sims = np.array([float(self._predicate_vectors[p] @ qvec) if p else np.nan for p in predicates])
        mean = np.nanmean(sims)
        return np.where(np.isnan(sims), 0.0, sims - mean).astype(np.float32)


def order_pool(pool: Pool, scores: np.ndarray) -> list[int]:
    """See `FactRanker.order`."""
    col = [FEATURES.index(f) for f in ("focus", "candidate", "candidate_quoted")]
    ours = (pool.features[:, col] > 0).any(axis=1)
    tiered = bool(ours.any())
    return sorted(range(len(pool.rows)), key=lambda j: (-int(tiered and bool(ours[j])), -scores[j],
                                                        pool.first_rank[j] or 10**9, pool.rows[j]))


def _quotes(said: str, text: str, size: int = QUOTE) -> bool:
    """Whether `said` repeats `size` consecutive characters of `text` (both `stripped`)."""
    return any(said[i : i + size] in text for i in range(0, max(len(said) - size + 1, 0)))
