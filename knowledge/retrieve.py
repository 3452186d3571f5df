"""Hybrid retrieval: dense (FAISS) + BM25, fused by weighted reciprocal-rank fusion, resolved in dialogue context.

For each query: `EntityTracker` resolves the entity it is about (named in it, or earlier in the dialogue), the
entity-expanded query is searched densely and lexically, and the two ranked lists are fused by weighted
reciprocal-rank fusion (`knowledge.fusion`). When an entity is resolved, a third list joins the fusion: that
entity's own items, ranked by the same dense + BM25 fusion among themselves, with weight ``context_weight`` (a
large weight puts the entity's items first; 0 turns the list off). The same object serves the dialogue engine in
process and the CLI's batch queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from knowledge.bm25 import BM25Index
from knowledge.context import EntityTracker, Resolution
from knowledge.embed import Embedder
from knowledge.fact_ranker import FEATURES, FactRanker, Pool, RankerWeights
from knowledge.fusion import Explainer, FusionWeights, fuse, rrf
from knowledge.item import Hit, Item

Ranked = list[tuple[int, float]]  # (item index, score), best first
NEAREST_QA_DEPTH = 32  # dense neighbours scanned for a vector's nearest QA pair


class HybridRetriever:
    """Dense + BM25 + dialogue-context retrieval over ``items`` (aligned with the FAISS and BM25 rows)."""

    def __init__(
        self,
        items: Sequence[Item],
        dense_index: Any,
        bm25: BM25Index,
        embedder: Embedder | None,
        dense_weight: float = 1.0,
        bm25_weight: float = 1.0,
        rrf_k: int = 60,
        *,
        context_weight: float = 10.0,
        description_prior: float = 0.5,
        candidates: int = 100,
        tracker: EntityTracker | None = None,
        ranker: RankerWeights | bool = True,
        depth: int = 20,
    ):
        if dense_index is not None and dense_index.ntotal != len(items):
            raise ValueError(f"dense index holds {dense_index.ntotal} vectors for {len(items)} items")
        if len(bm25) != len(items):
            raise ValueError(f"BM25 index holds {len(bm25)} documents for {len(items)} items")
        self.items = list(items)
        self.dense_index = dense_index
        self.bm25 = bm25
        self.embedder = embedder
        self.dense_weight = dense_weight
        self.bm25_weight = bm25_weight
        self.rrf_k = rrf_k
        self.context_weight = context_weight
        self.description_prior = description_prior
        self.candidates = candidates
        self.tracker = tracker if tracker is not None else EntityTracker.from_items(self.items)
        self.depth = depth  # first-stage hits the second stage re-scores (with the dialogue's entities' items)
        self.ranker: FactRanker | None = None
        if ranker is not False and dense_index is not None:
            encode = (lambda texts: self.embedder.encode(texts, role="query")) if embedder is not None else None
            self.ranker = FactRanker(self.items, self.tracker, self._item_vectors, encode,
                                     ranker if isinstance(ranker, RankerWeights) else None)
        self._kind = np.array([it.kind for it in self.items])
        self._by_entity: dict[str, list[int]] = {}
        for i, it in enumerate(self.items):
            names = {it.entity, it.title} - {None, ""}
            if not names and it.q:  # a hand-written QA pair belongs to the entities its question names
                names = set(self.tracker.mentions(it.q))
            for name in names:
                self._by_entity.setdefault(name, []).append(i)

    # -- public face -------------------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        context: Sequence[str] | None = None,
        top_k: int = 5,
        kind: str | None = None,
        tags: Sequence[str] | None = None,
        weights: FusionWeights | None = None,
    ) -> list[Hit]:
        """The ``top_k`` items for ``query``; ``context`` is the dialogue before it, oldest first."""
        return self.search_batch([{"query": query, "context": context}], top_k=top_k, kind=kind, tags=tags,
                                 weights=weights)[0]

    def search_batch(
        self,
        queries: Sequence[dict],
        *,
        top_k: int = 5,
        kind: str | None = None,
        tags: Sequence[str] | None = None,
        weights: FusionWeights | None = None,
    ) -> list[list[Hit]]:
        """One ranked hit list per ``{"query": str, "context": [str, ...]}``; the queries are encoded as one batch.

        `weights` scale this retriever's dense and BM25 weights for these queries (a persona's preference)."""
        if not self.items:
            return [[] for _ in queries]
        allowed = self.filter_mask(kind, tags)
        for n, q in enumerate(queries, start=1):
            _check_query(n, q)
        scale = weights or FusionWeights()
        w_dense, w_bm25 = self.dense_weight * scale.dense, self.bm25_weight * scale.bm25
        resolved = [self.tracker.resolve(q["query"], q.get("context")) for q in queries]
        texts = [r.query for r in resolved]
        n_cand = max(self.candidates, top_k)
        use_dense = w_dense > 0 and self.dense_index is not None
        qvecs = np.asarray(self.embedder.encode(texts, role="query"), dtype=np.float32) if use_dense and texts else None
        dense_lists = self._dense_search(qvecs, n_cand, allowed) if qvecs is not None else [[] for _ in texts]
        results = []
        for i, (res, text) in enumerate(zip(resolved, texts, strict=True)):
            lists = self._lists(queries[i]["query"], res, text, qvecs[i] if qvecs is not None else None,
                                dense_lists[i], n_cand, allowed, w_dense, w_bm25)
            if self.ranker is None:
                hits = [Hit(self.items[doc], score, why) for doc, score, why in fuse(lists, self.rrf_k, top_k, res)]
            else:
                hits = self._second_stage(queries[i], res, qvecs[i] if qvecs is not None else None, lists, top_k,
                                          allowed)
            results.append(hits)
        return results

    def pools(self, queries: Sequence[dict], *, weights: FusionWeights | None = None) -> list[Pool]:
        """The second stage's pool and features per query (what `search_batch` ranks): for fitting its weights."""
        if self.ranker is None:
            raise ValueError("this retriever has no second stage (ranker=False or no dense index)")
        scale = weights or FusionWeights()
        w_dense, w_bm25 = self.dense_weight * scale.dense, self.bm25_weight * scale.bm25
        resolved = [self.tracker.resolve(q["query"], q.get("context")) for q in queries]
        texts = [r.query for r in resolved]
        n_cand = self.candidates
        qvecs = np.asarray(self.embedder.encode(texts, role="query"), dtype=np.float32)
        dense_lists = self._dense_search(qvecs, n_cand, None)
        out = []
        for q, res, text, qvec, dense in zip(queries, resolved, texts, qvecs, dense_lists, strict=True):
            lists = self._lists(q["query"], res, text, qvec, dense, n_cand, None, w_dense, w_bm25)
            out.append(self._pool(q, res, qvec, lists, None))
        return out

    def _lists(self, utterance: str, res: Resolution, text: str, qvec: np.ndarray | None, dense: Ranked,
               n_cand: int, allowed: np.ndarray | None, w_dense: float, w_bm25: float) -> dict:
        bm25_list = self.bm25.search(text, n_cand, allowed) if w_bm25 > 0 else []
        entity_list = self._entity_list(res, utterance, qvec, allowed, w_dense, w_bm25)
        return {"dense": (w_dense, dense), "bm25": (w_bm25, bm25_list), "entity": (self.context_weight, entity_list)}

    def _pool(self, query: dict, res: Resolution, qvec: np.ndarray | None, lists: dict,
              allowed: np.ndarray | None) -> Pool:
        assert self.ranker is not None
        ranked = fuse(lists, self.rrf_k, self.depth, res)
        by_entity = self._by_entity if allowed is None else {
            name: [d for d in docs if allowed[d]] for name, docs in self._by_entity.items()
            if name in res.candidates}
        bm25 = dict(lists["bm25"][1])
        return self.ranker.pool(query["query"], query.get("context"), res, qvec, ranked, by_entity, bm25)

    def _second_stage(self, query: dict, res: Resolution, qvec: np.ndarray | None, lists: dict, top_k: int,
                      allowed: np.ndarray | None) -> list[Hit]:
        """The first stage's top `depth` and the dialogue's entities' items, re-scored by the `FactRanker`."""
        assert self.ranker is not None
        pool = self._pool(query, res, qvec, lists, allowed)
        if not pool.rows:
            return []
        order, scores = self.ranker.order(pool)
        explain = Explainer(lists, res)
        dense_col = pool.features[:, FEATURES.index("dense")]  # the cosine of query and item, for the whole pool
        hits = []
        for j in order[:top_k]:
            why = explain(pool.rows[j])
            if why["dense_score"] is None and qvec is not None:
                why["dense_score"] = round(float(dense_col[j]), 6)
            why["first_stage_rank"] = pool.first_rank[j]
            why["second_stage_score"] = round(float(scores[j]), 6)
            hits.append(Hit(self.items[pool.rows[j]], float(scores[j]), why))
        return hits

    def nearest_qa(self, vector: np.ndarray, *, text: str = "", context: Sequence[str] | None = None,
                   depth: int = NEAREST_QA_DEPTH) -> Hit | None:
        """The QA item nearest to `vector` among its `depth` dense neighbours (score: the cosine), or None.

        When `text` in `context` resolves to an entity, only that entity's QA pairs qualify: "那它那里需要门票吗？"
        must not get another place's ticket price."""
        index = self.dense_index
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if index is None or not self.items or index.d != query.shape[1]:
            return None
        res = self.tracker.resolve(text, context)
        scores, ids = index.search(query, min(depth, index.ntotal))
        for rank, (score, i) in enumerate(zip(scores[0], ids[0], strict=True), start=1):
            item = self.items[i] if i >= 0 else None
            if item is None or item.kind != "qa" or (res.entity and res.entity not in (item.entity, item.title)):
                continue
            why = {"dense_rank": rank, "dense_score": round(float(score), 6), "context_entity": res.entity,
                   "entity_source": res.source, "query": text}
            return Hit(item, float(score), why)
        return None

    def filter_mask(self, kind: str | None = None, tags: Sequence[str] | None = None) -> np.ndarray | None:
        """Boolean mask of the items a kind/tags filter lets through (None: no filter). Tags: any of them."""
        if kind is None and not tags:
            return None
        if kind is not None and kind not in ("qa", "description"):
            raise ValueError(f"kind must be 'qa' or 'description', got {kind!r}")
        mask = np.ones(len(self.items), dtype=bool) if kind is None else self._kind == kind
        if tags:
            wanted = set(tags)
            mask &= np.array([bool(wanted.intersection(it.tags)) for it in self.items], dtype=bool)
        return mask

    # -- the parts ---------------------------------------------------------------------------------------------

    def _dense_search(self, qvecs: np.ndarray, k: int, allowed: np.ndarray | None) -> list[Ranked]:
        """FAISS top-k per query; under a filter, fetch more until k allowed items are found or all were seen."""
        total = self.dense_index.ntotal
        fetch = min(k, total)
        while True:
            scores, ids = self.dense_index.search(qvecs, fetch)
            lists = [
                [(int(j), float(s)) for j, s in zip(row_ids, row_scores, strict=True) if j >= 0 and (allowed is None or allowed[j])][:k]
                for row_ids, row_scores in zip(ids, scores, strict=True)
            ]
            if allowed is None or fetch >= total or all(len(x) >= k for x in lists):
                return lists
            fetch = min(fetch * 4, total)

    def _entity_list(self, res: Resolution, utterance: str, qvec: np.ndarray | None, allowed: np.ndarray | None,
                     w_dense: float, w_bm25: float) -> Ranked:
        """The resolved entity's items, ranked among themselves by the same dense + BM25 fusion.

        BM25 scores the bare utterance with only the terms that tell the entity's items apart (not its name, not
        the question template they share) and ranks just the items with such evidence. When the utterance asks
        nothing specific (no such evidence for any of its QA pairs: "你知道故宫吗？"), the entity's description, the
        default answer about it, joins as a list of its own weighted ``description_prior``, in every mode.
        """
        if res.entity is None or self.context_weight == 0:
            return []
        ids = [i for i in self._by_entity.get(res.entity, []) if allowed is None or allowed[i]]
        if not ids:
            return []
        lists: list[tuple[float, Ranked]] = []
        evidence = self.bm25.scores_among(utterance, ids)
        if w_bm25 > 0:
            ranked = [(ids[j], float(evidence[j])) for j in np.argsort(-evidence, kind="stable") if evidence[j] > 0]
            lists.append((w_bm25, ranked))
        if qvec is not None:
            s = self._item_vectors(ids) @ qvec
            lists.append((w_dense, [(ids[j], float(s[j])) for j in np.argsort(-s, kind="stable")]))
        asks_nothing_specific = not any(e > 0 and self._kind[i] != "description" for i, e in zip(ids, evidence, strict=True))
        if asks_nothing_specific:
            lists.append((self.description_prior, [(i, 0.0) for i in ids if self._kind[i] == "description"]))
        fused = rrf(lists, self.rrf_k)
        order = sorted(ids, key=lambda d: (-fused.get(d, 0.0), self._kind[d] != "description", d))
        return [(d, fused.get(d, 0.0)) for d in order]

    def _item_vectors(self, ids: list[int]) -> np.ndarray:
        """The entity's item vectors, read back from the index (flat and HNSW indexes, CPU or GPU, keep them)."""
        return np.asarray(self.dense_index.reconstruct_batch(np.asarray(ids, dtype=np.int64)), dtype=np.float32)


def _check_query(n: int, query: dict) -> None:
    """A batch entry must be ``{"query": str, "context": [str, ...]}`` (context optional); say which one is not."""
    if not isinstance(query, dict) or not isinstance(query.get("query"), str):
        raise ValueError(f"query {n}: expected {{\"query\": str, \"context\": [str, ...]}}, got {str(query)[:80]}")
    context = query.get("context")
    if context is not None and not (isinstance(context, (list, tuple)) and all(isinstance(m, str) for m in context)):
        raise ValueError(f"query {n}: 'context' must be a list of strings (the dialogue before it, oldest first)")
