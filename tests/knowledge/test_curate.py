"""Curation: normalisation, length limits, language tags, ids, exact and near-duplicate removal."""

from __future__ import annotations

import faiss

from knowledge.curate import CurationReport, clean, item_id, near_duplicates, normalise_text
from knowledge.item import Item


def qa(q: str, a: str, **kw) -> Item:
    return Item(id="", kind="qa", text=f"{q}\n{a}", q=q, a=a, source_file="t.jsonl", **kw)


def desc(text: str, **kw) -> Item:
    return Item(id="", kind="description", text=text, source_file="t.jsonl", **kw)


def test_normalise_width_whitespace_and_invisibles():
    assert normalise_text("ＡＢＣ１２３　ｘ\u200b  y\t z") == "ABC123 x y z"
    # Chinese keeps its full-width punctuation; full-width digits and letters become half-width
    assert normalise_text("谷爱凌，２００３年出生？ 是的！") == "谷爱凌，2003年出生？ 是的！"
    assert normalise_text("Ｈｅｌｌｏ，ｗｏｒｌｄ！") == "Hello,world!"
    assert normalise_text("  a \r\n\r\n\r\n\n b  ") == "a\n\nb"
    assert normalise_text("a\n\nb", keep_paragraphs=False) == "a b"


def test_clean_tags_language_ids_and_exact_duplicates():
    report = CurationReport()
    items = [
        qa("谷爱凌是谁？", "中国自由式滑雪运动员", tags=["sports", " sports "]),
        qa("谷爱凌是谁？ ", "中国自由式滑雪运动员\u3000"),  # the same after normalisation
        qa("Who is Eileen Gu?", "A freestyle skier."),
        desc("   "),
    ]
    out = clean(items, max_chars=2000, report=report)
    assert [it.lang for it in out] == ["zh", "en"]
    assert out[0].tags == ["sports"]
    assert report.exact_duplicates == 1 and report.read == 4
    assert report.dropped == [{"where": "t.jsonl:", "reason": "empty description after normalisation"}]
    assert out[0].id == item_id(out[0]) and len(out[0].id) == 16
    again = clean([qa("谷爱凌是谁？", "中国自由式滑雪运动员")], max_chars=2000, report=CurationReport())
    assert again[0].id == out[0].id  # ids are content hashes: stable across builds


def test_length_limit_splits_descriptions_and_drops_long_qa():
    report = CurationReport()
    long_text = "这是第一句话，内容比较长。" * 20
    out = clean([desc(long_text, title="长文", source_record="line 1"), qa("问？", "答" * 300)], max_chars=100, report=report)
    assert len(out) > 1 and all(it.kind == "description" and len(it.text) <= 100 for it in out)
    assert out[0].source_record == "line 1 part 1" and report.split == 1
    assert report.dropped[0]["reason"].startswith("QA pair longer than 100")


def _dedup(items, embedder, threshold):
    report = CurationReport()
    items = clean(items, max_chars=2000, report=report)
    vectors = embedder.encode([it.search_text for it in items])
    index = faiss.IndexFlatIP(embedder.dim)
    index.add(vectors)
    keep = near_duplicates(items, vectors, index, threshold=threshold, report=report)
    return [it for it, k in zip(items, keep, strict=True) if k], report


def test_near_duplicates_removed_and_reported(embedder):
    items = [
        qa("谷爱凌是谁？", "谷爱凌，2003年出生于美国加利福尼亚州旧金山市，中国自由式滑雪运动员"),
        qa("谷爱凌是谁?!", "谷爱凌,2003年出生于美国加利福尼亚州旧金山市, 中国自由式滑雪运动员。"),
        qa("故宫的门票多少钱？", "旺季60元。"),
    ]
    kept, report = _dedup(items, embedder, threshold=0.97)
    assert [it.q for it in kept] == ["谷爱凌是谁？", "故宫的门票多少钱？"]
    (pair,) = report.near_duplicates
    assert pair["kept"] == kept[0].id and pair["cosine"] > 0.97


def test_near_duplicate_guards_entities_and_numbers(embedder):
    # Embeddings put these very close; they are different facts and must both survive.
    items = [
        qa("故宫的门票是什么？", "免费开放。", entity="故宫", predicate="门票"),
        qa("天坛的门票是什么？", "免费开放。", entity="天坛", predicate="门票"),
        qa("中南海的门票是什么？", "不对外开放", entity="中南海", predicate="门票"),  # cos 0.971 in the travel KB
        qa("中南海的开放时间是什么？", "不对外开放", entity="中南海", predicate="开放时间"),
        qa("颐和园的门票多少钱？", "旺季30元。"),
        qa("颐和园的门票多少钱？", "旺季20元。"),
    ]
    kept, report = _dedup(items, embedder, threshold=0.5)
    assert len(kept) == 6 and report.near_duplicates == []
