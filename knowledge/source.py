"""`KnowledgeSource`: what a dialogue turn asks of a store, and nothing more.

A turn needs three things of its knowledge: the hits for an utterance in its dialogue context, the QA pair nearest
to an earlier exchange (whose embedding the turn already holds), and the entity an utterance is about. `Store`
(FAISS + BM25 on disk or in memory) and `ElasticStore` (an Elasticsearch cluster) both implement it, so the turn
never reaches into an index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from knowledge.context import Resolution
from knowledge.embed import Embedder
from knowledge.fusion import FusionWeights
from knowledge.item import Hit


@runtime_checkable
class KnowledgeSource(Protocol):
    """Hybrid retrieval in dialogue context, nearest QA pair by vector, entity resolution."""

    embedder: Embedder  # the model a source's vectors come from: `nearest_qa` takes vectors of this model

    def query(
        self,
        query: str,
        *,
        context: Sequence[str] | None = None,
        top_k: int | None = None,
        kind: str | None = None,
        tags: Sequence[str] | None = None,
        weights: FusionWeights | None = None,
    ) -> list[Hit]:
        """The best hits for `query` said after `context` (oldest first); `top_k` None: the configured default.

        A hit's ``why["dense_score"]`` is the cosine of query and item (None when only BM25 or the dialogue's
        entity found it), so callers can hold every source to one threshold."""
        ...

    def nearest_qa(self, vector: Any, *, text: str = "", context: Sequence[str] | None = None) -> Hit | None:
        """The QA item nearest to `vector` by cosine (the hit's score), or None.

        When `text` (said after `context`) resolves to an entity, only that entity's QA pairs qualify. A vector of
        another dimension than the source's embedder finds nothing."""
        ...

    def resolve(self, text: str, context: Sequence[str] | None = None) -> Resolution:
        """The entity `text` is about in `context`, and the entity-expanded query the source will search with."""
        ...
