"""Hybrid retrieval: reciprocal-rank fusion, dialogue context, filters, batch = single, hit shape.

Dense retrieval uses the real bundled default embedder and a real FAISS index over the tiny KB.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from knowledge.bm25 import BM25Index, default_tokenizer_spec
from knowledge.context import Resolution
from knowledge.embed import get_embedder
from knowledge.fusion import FusionWeights, fuse, rrf
from knowledge.item import Item
from knowledge.retrieve import HybridRetriever

from .conftest import kb_items


@pytest.fixture(scope="module")
def parts():
    items = kb_items()
    embedder = get_embedder("default")
    vectors = embedder.encode([it.text for it in items], role="passage")
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    bm25 = BM25Index.build([it.text for it in items], default_tokenizer_spec(items))
    return items, index, bm25, embedder


def test_rrf_matches_hand_computed_weighted_sums():
    fused = rrf([(1.0, [(0, 9.0), (1, 8.0)]), (2.0, [(1, 0.5), (2, 0.4)]), (0.0, [(3, 1.0)])], rrf_k=60)
    assert fused == pytest.approx({0: 1 / 61, 1: 1 / 62 + 2 / 61, 2: 2 / 62})
    assert 3 not in fused  # a zero-weight list adds nothing


def test_fuse_ranks_by_rrf_and_says_why():
    """The one fusion both stores use: documents by weighted RRF (ties: the smaller key), each with its rank and
    score in every list (None where absent) and what the dialogue resolved."""
    lists = {"dense": (1.0, [("a", 0.9123456789), ("b", 0.8)]), "bm25": (1.0, [("b", 3.0), ("c", 1.0)]),
             "entity": (1.0, [("c", 5.0)])}
    res = Resolution("天坛 门票", "天坛", "context", 2)
    (b, c, a) = fuse(lists, rrf_k=60, top_k=3, resolution=res)
    assert [b[0], c[0], a[0]] == ["b", "c", "a"]  # b and c tie at 1/61 + 1/62: the smaller key first
    assert b[1] == c[1] == pytest.approx(1 / 62 + 1 / 61) and a[1] == pytest.approx(1 / 61)
    assert b[2] == {"dense_rank": 2, "dense_score": 0.8, "bm25_rank": 1, "bm25_score": 3.0, "entity_rank": None,
                    "entity_score": None, "context_entity": "天坛", "entity_source": "context", "query": "天坛 门票"}
    assert a[2]["dense_score"] == 0.912346 and a[2]["bm25_rank"] is None and c[2]["entity_rank"] == 1
    assert len(fuse(lists, rrf_k=60, top_k=1, resolution=res)) == 1
    with pytest.raises(ValueError, match=">= 0"):
        FusionWeights(dense=-1.0)


def test_per_query_weights_scale_the_retrievers_own(parts):
    items, index, bm25, embedder = parts
    retriever = HybridRetriever(items, index, bm25, embedder, dense_weight=1.0, bm25_weight=1.0)
    both = retriever.search("颐和园的门票多少钱？", top_k=5)
    dense_only = retriever.search("颐和园的门票多少钱？", top_k=5, weights=FusionWeights(bm25=0.0))
    assert any(h.why["bm25_rank"] for h in both) and all(h.why["bm25_rank"] is None for h in dense_only)
    assert all(h.why["dense_rank"] for h in dense_only)
    assert retriever.bm25_weight == 1.0  # the retriever's own weights are untouched


def test_the_pronoun_query_finds_the_entity_named_turns_earlier(parts):
    items, index, bm25, embedder = parts
    retriever = HybridRetriever(items, index, bm25, embedder)
    context = ["你知道故宫吗？", "知道，是明清两代的皇宫。", "那里人多吗？", "节假日人很多，最好早点去。"]
    hits = retriever.search("那它的门票是怎么收费的？", context=context, top_k=3)
    assert hits[0].item.id == "故宫-门票"
    assert hits[0].why["context_entity"] == "故宫" and hits[0].why["entity_rank"] == 1
    assert hits[0].score > hits[1].score > hits[2].score
    assert {h.item.entity for h in hits} == {"故宫"}


def test_without_a_predicate_cue_the_description_leads(parts):
    items, index, bm25, embedder = parts
    hits = HybridRetriever(items, index, bm25, embedder).search("你知道天坛吗？", top_k=2)
    assert hits[0].item.id == "天坛-d"


@pytest.mark.parametrize("dense_weight,bm25_weight", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_every_mode_answers_a_direct_question(parts, dense_weight, bm25_weight):
    items, index, bm25, embedder = parts
    retriever = HybridRetriever(items, index, bm25, embedder, dense_weight=dense_weight, bm25_weight=bm25_weight)
    hits = retriever.search("颐和园的门票多少钱？", top_k=5)
    assert hits[0].item.id == "颐和园-门票"
    assert (hits[0].why["dense_rank"] is None) == (dense_weight == 0)
    assert (hits[0].why["bm25_rank"] is None) == (bm25_weight == 0)


def test_context_weight_zero_turns_entity_ranking_off(parts):
    items, index, bm25, embedder = parts
    retriever = HybridRetriever(items, index, bm25, embedder, context_weight=0.0)
    hits = retriever.search("门票多少钱？", context=["你知道颐和园吗？"], top_k=5)
    assert all(h.why["entity_rank"] is None for h in hits)
    assert hits[0].why["context_entity"] == "颐和园"  # still resolved, and the query still expanded


def test_kind_and_tag_filters(parts):
    items, index, bm25, embedder = parts
    retriever = HybridRetriever(items, index, bm25, embedder)
    descriptions = retriever.search("故宫的门票", top_k=20, kind="description")
    assert descriptions and all(h.item.kind == "description" for h in descriptions)
    assert descriptions[0].item.id == "故宫-d"
    addresses = retriever.search("在哪里？", context=["故宫怎么样？"], top_k=20, tags=["地址"])
    assert addresses and all(h.item.predicate == "地址" for h in addresses)
    assert addresses[0].item.id == "故宫-地址"
    assert retriever.search("故宫", top_k=5, tags=["no-such-tag"]) == []
    with pytest.raises(ValueError, match="kind"):
        retriever.search("故宫", kind="faq")


def test_batch_equals_one_by_one(parts):
    items, index, bm25, embedder = parts
    retriever = HybridRetriever(items, index, bm25, embedder)
    queries = [
        {"query": "那它的门票是怎么收费的？", "context": ["你知道天坛吗？"]},
        {"query": "北京大学在哪里？"},
        {"query": "鸟巢开放吗", "context": []},
    ]
    batch = retriever.search_batch(queries, top_k=4)
    single = [retriever.search(q["query"], context=q.get("context"), top_k=4) for q in queries]
    assert [[h.item.id for h in hs] for hs in batch] == [[h.item.id for h in hs] for hs in single]
    for b, s in zip(batch, single, strict=True):
        # The second stage's scores hold dense cosines: bf16 matmuls of a batch and of a single query differ in
        # the fourth decimal (the ranking above is identical), so the scores agree to 1e-3 relative.
        np.testing.assert_allclose([h.score for h in b], [h.score for h in s], rtol=1e-3)


def test_hits_carry_the_wire_shape_and_provenance(parts):
    items, index, bm25, embedder = parts
    hit = HybridRetriever(items, index, bm25, embedder).search("天坛的地址", top_k=1)[0]
    wire = hit.to_json()
    assert set(wire) == {"id", "kind", "text", "q", "a", "title", "entity", "predicate", "score", "source"}
    assert wire["id"] == "天坛-地址" and wire["entity"] == "天坛" and wire["predicate"] == "地址"
    assert wire["source"] == {"file": "kb.json", "record": "entity 天坛 triple 3"}


def test_misaligned_indexes_are_refused(parts):
    items, index, bm25, embedder = parts
    with pytest.raises(ValueError, match="dense index holds"):
        HybridRetriever(items[:-1], index, BM25Index.build([it.text for it in items[:-1]], {"name": "char_ngram"}),
                        embedder)
    with pytest.raises(ValueError, match="BM25 index holds"):
        HybridRetriever(items[:-1], None, bm25, None, dense_weight=0.0)


def test_malformed_batch_entries_are_named(parts):
    items, _, bm25, _ = parts
    retriever = HybridRetriever(items, None, bm25, None, dense_weight=0.0)
    with pytest.raises(ValueError, match="query 2: expected"):
        retriever.search_batch([{"query": "故宫"}, {"text": "天坛"}])
    with pytest.raises(ValueError, match="query 1: 'context' must be a list"):
        retriever.search("门票多少钱？", context="你知道故宫吗？")


def test_a_hand_written_qa_pair_belongs_to_the_entity_its_question_names(parts):
    _, _, _, embedder = parts
    items = [
        Item(id="d", kind="description", text="故宫又称紫禁城，是明清两代的皇宫。", title="故宫"),
        Item(id="q1", kind="qa", text="故宫的门票多少钱？\n旺季60元。", q="故宫的门票多少钱？", a="旺季60元。"),
        Item(id="q2", kind="qa", text="天坛在哪里？\n天坛路甲1号。", q="天坛在哪里？", a="天坛路甲1号。"),
    ]
    vectors = embedder.encode([it.text for it in items], role="passage")
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    bm25 = BM25Index.build([it.text for it in items], default_tokenizer_spec(items))
    hits = HybridRetriever(items, index, bm25, embedder).search("那它的门票呢？", context=["你知道故宫吗？"], top_k=3)
    assert [h.item.id for h in hits][:2] == ["q1", "d"]
