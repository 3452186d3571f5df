"""ElasticStore against a real Elasticsearch 8.x/9.x named by $XDAI_ES_URL (skipped without one: no fake server).

The analyzer choice and the index body are plain functions and are checked everywhere.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from knowledge.elastic import ElasticStore, choose_analyzer, index_body
from knowledge.source import KnowledgeSource
from knowledge.store import Store, StoreError

DATA = Path(__file__).parent / "data"
ES_URL = os.environ.get("XDAI_ES_URL")
needs_es = pytest.mark.skipif(not ES_URL, reason="no Elasticsearch server: set XDAI_ES_URL to run these against a real one")


def test_analyzer_choice_prefers_plugins_then_cjk_bigrams():
    assert choose_analyzer([]) == "cjk"
    assert choose_analyzer(["analysis-ik"]) == "ik"
    assert choose_analyzer(["analysis-ik", "analysis-smartcn"]) == "smartcn"
    assert choose_analyzer([], "cjk") == "cjk"
    with pytest.raises(StoreError, match="needs the Elasticsearch plugin analysis-smartcn"):
        choose_analyzer([], "smartcn")


def test_index_body_has_analysed_text_and_a_dense_vector():
    body = index_body(384, "ik", {"format": "xdai-es/1"})
    props = body["mappings"]["properties"]
    assert props["vector"] == {"type": "dense_vector", "dims": 384, "index": True, "similarity": "dot_product"}
    assert props["search_text"]["analyzer"] == "ik_max_word" and props["search_text"]["search_analyzer"] == "ik_smart"
    assert props["kind"]["type"] == "keyword" and body["mappings"]["_meta"]["format"] == "xdai-es/1"


def test_store_name_must_be_a_valid_index_name():
    with pytest.raises(StoreError, match="must be lower case"):
        ElasticStore.build([DATA / "qa.jsonl"], "Travel KB", url="http://127.0.0.1:1")


@pytest.fixture()
def alias():
    name = f"xdai-test-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        ElasticStore.open(name, url=ES_URL).drop()
    except StoreError:
        pass


@needs_es
@pytest.mark.es
def test_build_query_add_and_alias_swap(alias, embedder, settings):
    report = ElasticStore.build([DATA / "qa.jsonl", DATA / "kb.json"], alias, url=ES_URL, embedder=embedder,
                                progress=False, settings=settings)
    assert report.items == 10
    store = ElasticStore.open(alias, url=ES_URL, settings=settings)
    first_index = store.manifest["index"]
    assert store.manifest["analyzer"] in ("smartcn", "ik", "cjk")
    (hit, *_) = store.query("谷爱凌是谁？", top_k=3)
    assert hit.item.q == "谷爱凌是谁？" and hit.item.source_record == "line 1" and hit.why["bm25_rank"]
    hits = store.query("那它的门票是怎么收费的？", context=["你去过天坛吗？", "去过。"], top_k=1)
    assert (hits[0].item.entity, hits[0].item.predicate) == ("天坛", "门票")
    assert {h.item.kind for h in store.query("故宫", kind="description", top_k=5)} == {"description"}
    batch = store.query_batch([{"query": "谷爱凌是谁？"}, {"query": "景山公园门票"}], top_k=2)
    assert [len(b) for b in batch] == [2, 2]

    added = store.add([DATA / "qa.jsonl", DATA / "descriptions.jsonl"], progress=False)
    assert added.added == 2 and added.curation.exact_duplicates == 3
    assert store.manifest["index"] != first_index and store.stats()["items"] == 12
    assert len(store.items) == 12 and store.item(store.items[0].id).id == store.items[0].id


@needs_es
@pytest.mark.es
def test_failed_build_leaves_the_alias_in_place(alias, embedder, settings, tmp_path):
    ElasticStore.build([DATA / "qa.jsonl"], alias, url=ES_URL, embedder=embedder, progress=False, settings=settings)
    before = ElasticStore.open(alias, url=ES_URL, settings=settings).manifest["index"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "a?"}\n', encoding="utf-8")
    with pytest.raises(Exception, match="bad.jsonl:line 1"):
        ElasticStore.build([bad], alias, url=ES_URL, embedder=embedder, progress=False, settings=settings)
    store = ElasticStore.open(alias, url=ES_URL, settings=settings)
    assert store.manifest["index"] == before and store.stats()["items"] == 3


@needs_es
@pytest.mark.es
def test_an_elastic_store_serves_a_turn_as_a_store_does(alias, embedder, settings, tmp_path):
    """The `KnowledgeSource` protocol on both: the same nearest QA pair by cosine, dense scores as cosines (not
    Elasticsearch's (1 + cos) / 2), the entity resolved from the dialogue."""
    sources = [DATA / "qa.jsonl", DATA / "kb.json"]
    ElasticStore.build(sources, alias, url=ES_URL, embedder=embedder, progress=False, settings=settings)
    es = ElasticStore.open(alias, url=ES_URL, settings=settings)
    Store.build(sources, tmp_path / "kb", embedder=embedder, progress=False, settings=settings)
    local = Store.open(tmp_path / "kb", settings=settings)
    assert isinstance(es, KnowledgeSource) and isinstance(local, KnowledgeSource)
    vec = embedder.encode(["门票多少钱？"], role="query")[0]
    for text, context in [("", None), ("那它的门票多少钱？", ["你知道天坛吗？"])]:
        a, b = es.nearest_qa(vec, text=text, context=context), local.nearest_qa(vec, text=text, context=context)
        assert a.item.id == b.item.id and a.score == pytest.approx(b.score, abs=1e-3)
    assert es.nearest_qa(vec, text="那它的门票多少钱？", context=["你知道天坛吗？"]).item.entity == "天坛"
    assert es.resolve("那它的门票多少钱？", ["你知道天坛吗？"]).entity == "天坛"
    cosine = {h.item.id: h.why["dense_score"] for h in local.query("天坛的门票多少钱？", top_k=50)}
    for hit in es.query("天坛的门票多少钱？", top_k=3):
        if hit.why["dense_score"] is not None:
            assert hit.why["dense_score"] == pytest.approx(cosine[hit.item.id], abs=1e-3)
    assert len(es.query("天坛的门票多少钱？")) == settings.top_k
