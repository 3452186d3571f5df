"""Weighted reciprocal-rank fusion and the "why" of a fused hit, shared by every store.

Dense and BM25 scores live on different scales, so ranked lists are fused by rank:
``score(d) = sum_l w_l / (rrf_k + rank_l(d))`` (ranks from 1). A hit's `why` names its rank and score in each
list ("dense", "bm25", "entity"; None where it is absent) and what the dialogue context resolved, so that a
prompt can say why a piece of knowledge is in it. `HybridRetriever` (FAISS + BM25) and `ElasticStore` both fuse
here, so their hits read the same.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from knowledge.context import Resolution

Ranked = Sequence[tuple[Any, float]]  # (document, score), best first
LISTS = ("dense", "bm25", "entity")  # the lists a store fuses, in the order a hit's `why` names them


@dataclass(frozen=True)
class FusionWeights:
    """Per-query multipliers of a store's own dense and BM25 weights (1, 1: as the store is configured).

    A persona's ``selection.dense_weight`` / ``bm25_weight`` reach the stores this way; 0 turns a list off."""

    dense: float = 1.0
    bm25: float = 1.0

    def __post_init__(self) -> None:
        if self.dense < 0 or self.bm25 < 0:
            raise ValueError(f"fusion weights must be >= 0, got dense={self.dense}, bm25={self.bm25}")


def rrf(lists: Sequence[tuple[float, Ranked]], rrf_k: int) -> dict[Any, float]:
    """Weighted reciprocal-rank fusion: each list adds ``weight / (rrf_k + rank)`` (rank from 1) to its items."""
    fused: dict[Any, float] = {}
    for weight, ranked in lists:
        if weight == 0:
            continue
        for rank, (doc, _) in enumerate(ranked, start=1):
            fused[doc] = fused.get(doc, 0.0) + weight / (rrf_k + rank)
    return fused


def fuse(
    lists: Mapping[str, tuple[float, Ranked]], rrf_k: int, top_k: int, resolution: Resolution
) -> list[tuple[Hashable, float, dict[str, Any]]]:
    """The `top_k` documents of the named `lists` by weighted RRF, best first (ties: the smaller document key),
    each with its fused score and its why."""
    fused = rrf(list(lists.values()), rrf_k)
    best = sorted(fused, key=lambda d: (-fused[d], d))[:top_k]
    explain = Explainer(lists, resolution)
    return [(doc, fused[doc], explain(doc)) for doc in best]


class Explainer:
    """The why of any document against the fused lists: its rank and score in each (None where absent), and what
    the dialogue context resolved. Also for documents a later stage adds that no list holds."""

    def __init__(self, lists: Mapping[str, tuple[float, Ranked]], resolution: Resolution) -> None:
        self.ranks = {name: {doc: (rank, score) for rank, (doc, score) in enumerate(ranked, start=1)}
                      for name, (_, ranked) in lists.items()}
        self.resolution = resolution

    def __call__(self, doc: Hashable) -> dict[str, Any]:
        why: dict[str, Any] = {}
        for name in LISTS:
            rank, score = self.ranks.get(name, {}).get(doc, (None, None))
            why[f"{name}_rank"] = rank
            why[f"{name}_score"] = None if score is None else round(float(score), 6)
        why["context_entity"] = self.resolution.entity
        why["entity_source"] = self.resolution.source
        why["query"] = self.resolution.query
        return why
