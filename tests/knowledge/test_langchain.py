"""langchain-core interop: a store as a BaseRetriever; Documents as a source."""

from __future__ import annotations

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from knowledge.store import Store


def test_as_retriever_is_a_langchain_retriever(built):
    store, _ = built
    retriever = store.as_retriever(top_k=2)
    assert isinstance(retriever, BaseRetriever)
    docs = retriever.invoke("谷爱凌是谁？")
    assert len(docs) == 2 and isinstance(docs[0], Document)
    assert docs[0].page_content.startswith("谷爱凌是谁？") and docs[0].metadata["q"] == "谷爱凌是谁？"
    assert docs[0].metadata["source"]["record"] == "line 1" and docs[0].id == docs[0].metadata["id"]
    only = store.as_retriever(top_k=5, kind="description").invoke("故宫")
    assert {d.metadata["kind"] for d in only} == {"description"}


def test_dialogue_context_through_the_retriever(built):
    store, _ = built
    docs = store.as_retriever(top_k=1, context=["你去过天坛吗？", "去过。"]).invoke("那它的门票是怎么收费的？")
    assert (docs[0].metadata["entity"], docs[0].metadata["predicate"]) == ("天坛", "门票")


def test_documents_are_ingested_as_a_source(tmp_path, embedder, settings):
    docs = [
        Document(page_content="西湖位于杭州西部，是中国著名的风景名胜区。", metadata={"title": "西湖", "source": "hangzhou.md"}),
        Document(page_content="", metadata={"q": "西湖门票多少钱？", "a": "西湖免费开放。"}),
    ]
    report = Store.build([docs], tmp_path / "kb", embedder=embedder, progress=False, settings=settings)
    assert report.by_kind == {"description": 1, "qa": 1}
    store = Store.open(tmp_path / "kb", settings=settings)
    (hit,) = store.query("西湖要门票吗", kind="qa", top_k=1)
    assert hit.item.a == "西湖免费开放。" and hit.item.source_record == "document 2"
    assert store.manifest["sources"] == ["<2 in-process records>"]
