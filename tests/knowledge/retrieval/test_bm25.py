"""BM25: tokenisation of Chinese, scores against hand-computed values, filters, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from knowledge.bm25 import BM25Index, default_tokenizer_spec, make_tokenizer

CHAR = {"name": "char_ngram", "n": [1, 2]}


def test_char_ngrams_split_cjk_runs_and_keep_latin_words():
    tokens = make_tokenizer(CHAR)("故宫的门票 Ticket 50元，ＡＢ")
    assert tokens == ["故", "宫", "的", "门", "票", "故宫", "宫的", "的门", "门票", "ticket", "50", "元", "ab"]


def test_jieba_keeps_entity_names_whole():
    spec = {"name": "jieba", "user_words": ["百雅轩798艺术中心"]}
    tokens = make_tokenizer(spec)("百雅轩798艺术中心的门票多少钱？")
    assert tokens[0] == "百雅轩798艺术中心"
    assert "门票" in tokens and "？" not in tokens


def test_default_spec_is_char_ngrams_and_jieba_carries_the_entity_names(items):
    assert default_tokenizer_spec(items) == CHAR
    jieba = default_tokenizer_spec(items, "jieba")
    assert jieba["name"] == "jieba" and "故宫" in jieba["user_words"] and "鸟巢（国家体育场）" in jieba["user_words"]
    with pytest.raises(ValueError, match="unknown BM25 tokenizer"):
        default_tokenizer_spec(items, "whitespace")
    with pytest.raises(ValueError, match="unknown BM25 tokenizer"):
        make_tokenizer({"name": "nope"})


def _bm25(tf: float, df: int, n: int, dl: float, avgdl: float, k1: float = 1.2, b: float = 0.75) -> float:
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))


def test_scores_match_hand_computed_okapi_bm25():
    index = BM25Index.build(["apple banana", "apple cherry cherry", "durian"], CHAR)
    avgdl = (2 + 3 + 1) / 3
    expected = [
        _bm25(1, 2, 3, 2, avgdl),
        _bm25(1, 2, 3, 3, avgdl) + _bm25(2, 1, 3, 3, avgdl),
        0.0,
    ]
    np.testing.assert_allclose(index.scores("apple cherry"), expected, rtol=1e-5)
    # A repeated query term counts twice; an unknown one not at all.
    np.testing.assert_allclose(index.scores("cherry cherry kiwi"), [0.0, 2 * _bm25(2, 1, 3, 3, avgdl), 0.0], rtol=1e-5)


def test_search_orders_by_score_drops_zero_and_respects_the_mask():
    index = BM25Index.build(["apple banana", "apple cherry cherry", "durian", "apple"], CHAR)
    hits = index.search("apple cherry", k=10)
    assert [doc for doc, _ in hits] == [1, 3, 0]  # durian scores 0 and is not a hit
    assert all(a[1] >= b[1] for a, b in zip(hits, hits[1:], strict=False))
    assert [doc for doc, _ in index.search("apple cherry", k=1)] == [1]
    mask = np.array([True, False, True, True])
    assert [doc for doc, _ in index.search("apple cherry", k=10, allowed=mask)] == [3, 0]
    assert index.search("", k=5) == [] and index.search("kiwi", k=5) == []


def test_chinese_query_finds_the_right_item(items):
    index = BM25Index.build([it.text for it in items], CHAR)
    (best, _), *_ = index.search("天坛的门票多少钱", k=3)
    assert items[best].id == "天坛-门票"


def test_scores_among_ignores_terms_most_rows_share(items):
    index = BM25Index.build([it.text for it in items], CHAR)
    rows = [i for i, it in enumerate(items) if it.entity == "故宫"]
    among = index.scores_among("故宫的门票是什么", rows)
    by_id = dict(zip((items[i].id for i in rows), among, strict=True))
    assert max(by_id, key=by_id.get) == "故宫-门票"
    # "故宫", "的", "是什么" are in most of 故宫's items: alone they tell nothing apart.
    assert not index.scores_among("故宫的是什么", rows).any()


def test_save_and_load_round_trip(tmp_path, items):
    texts = [it.text for it in items]
    for spec in (CHAR, default_tokenizer_spec(items, "jieba")):
        index = BM25Index.build(texts, spec)
        index.save(tmp_path / spec["name"])
        loaded = BM25Index.load(tmp_path / spec["name"])
        assert loaded.tokenizer_spec == spec and len(loaded) == len(items)
        for query in ("故宫门票", "北京大学在哪里", "鸟巢"):
            np.testing.assert_array_equal(loaded.scores(query), index.scores(query))


def test_load_names_the_folder_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "missing")):
        BM25Index.load(tmp_path / "missing")
