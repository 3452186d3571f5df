"""The right fact first: what a question asks for, kinds of referents, and the second stage on a small KB.

The KB mixes a travel entity, a film and its cast, as items made the way KdConv triples make them; dense retrieval
uses the real default embedder and a real FAISS index.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from knowledge.bm25 import BM25Index, default_tokenizer_spec
from knowledge.context import EntityTracker, entity_kind, names_an_entity, referent_kinds
from knowledge.embed import get_embedder
from knowledge.fact_ranker import FEATURES, RankerWeights
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
from knowledge.retrieve import HybridRetriever

TRIPLES = {
    "故宫": [("Information", "故宫又称紫禁城，是明、清两代的皇宫，是中国保存最完整的木质结构古建筑群。"),
             ("门票", "旺季60元，淡季40元。"), ("开放时间", "8:30-17:00，周一闭馆。"),
             ("建议游玩时间", "2小时 - 4小时"), ("周边景点", "景山公园、北海公园、南锣鼓巷"),
             ("地址", "北京市东城区景山前街4号"), ("电话", "010-85007938")],
    "雨人": [("Information", "《雨人》是巴瑞·莱文森执导的剧情片，讲述自闭症患者雷蒙和弟弟查理的故事。"),
             ("导演", "巴瑞·莱文森"), ("主演", "达斯汀·霍夫曼，汤姆·克鲁斯"), ("上映时间", "1988年12月16日"),
             ("片长", "133分钟"), ("票房", "3.54亿美元")],
    "达斯汀·霍夫曼": [("Information", "达斯汀·霍夫曼，美国演员，两度获得奥斯卡最佳男主角奖。"),
                      ("出生日期", "1937年08月08日"), ("出生地", "美国加利福尼亚州洛杉矶"), ("职业", "演员、导演"),
                      ("代表作品", "毕业生、雨人、克莱默夫妇")],
    "汤姆·克鲁斯": [("Information", "汤姆·克鲁斯，美国演员、制片人，代表作有《碟中谍》系列。"),
                    ("出生日期", "1962年07月03日"), ("国籍", "美国"), ("职业", "演员、制片人")],
}


def kb_items() -> list[Item]:
    items = []
    for entity, triples in TRIPLES.items():
        for n, (p, o) in enumerate(triples, 1):
            if p == "Information":
                items.append(Item(id=f"{entity}-d", kind="description", text=o, title=entity, entity=entity,
                                  predicate=p, source_file="kb.json", source_record=f"entity {entity} triple {n}"))
            else:
                q = f"{entity}的{p}是什么？"
                items.append(Item(id=f"{entity}-{p}", kind="qa", text=f"{q}\n{o}", q=q, a=o, entity=entity,
                                  predicate=p, source_file="kb.json", source_record=f"entity {entity} triple {n}"))
    return items


@pytest.fixture(scope="module")
def kb():
    items = kb_items()
    embedder = get_embedder("default")
    vectors = embedder.encode([it.search_text for it in items], role="passage")
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    bm25 = BM25Index.build([it.search_text for it in items], default_tokenizer_spec(items))
    return items, index, bm25, embedder


def first(retriever: HybridRetriever, query: str, context: list[str] | None = None) -> str:
    return retriever.search(query, context=context, top_k=5)[0].item.id


# -- what a question asks for -------------------------------------------------------------------------------------
def test_answer_types_of_questions_and_values():
    assert question_types("那里面能游玩多长时间？") == {"duration"}
    assert "money" in question_types("需要门票吗？多少钱？") and "date" in question_types("是哪年上映的？")
    assert question_types("导演是谁？") == {"person"} and question_types("它在哪里？") == {"place"}
    assert question_types("你好呀") == set()
    assert value_types("2小时 - 4小时") == {"duration"}
    assert "clock" in value_types("8:30-17:00，周一闭馆。") and "money" in value_types("旺季60元，淡季40元。")
    assert "date" in value_types("1988年12月16日") and "phone" in value_types("010-85007938")
    assert "person" in value_types("达斯汀·霍夫曼，汤姆·克鲁斯") and "person" not in value_types("133分钟")


def test_the_question_part_is_what_asks():
    assert question_part("门票旺季60元，淡季40元，那它周边还有什么景点？") == "那它周边还有什么景点？"
    assert question_part("旺季：07:00-19:00；淡季：10:00-17:00，你知道这个景点的地址不？") == "你知道这个景点的地址不？"
    assert question_part("8:30-18:00。") == "8:30-18:00。"  # nothing asks: the whole utterance


def test_predicate_words_and_what_was_already_said():
    assert predicate_coverage("导演是谁？", "导演") == 1.0
    assert predicate_coverage("哪年上映的？", "上映时间") == pytest.approx(1 / 3)
    assert predicate_coverage("你好", "门票") == 0.0
    said = stripped("门票旺季60元，淡季40元，挺便宜。")
    assert already_said(stripped("旺季60元，淡季40元。"), said) and not already_said(stripped("2小时 - 4小时"), said)
    assert list_said("声乐、钢琴", stripped("他擅长声乐和钢琴"))
    cast = "三船敏郎、志村乔、津岛惠子"  # at least half of the names said
    assert list_said(cast, stripped("三船敏郎和志村乔都演了")) and not list_said(cast, stripped("三船敏郎演得好"))


# -- kinds of entities and of referring words ---------------------------------------------------------------------
def test_entity_kinds_come_from_predicates_and_referring_words_ask_for_one():
    assert entity_kind(["出生日期", "职业", "Information"]) == "person"
    assert entity_kind(["导演", "主演", "上映时间"]) == "work"
    assert entity_kind(["门票", "地址"]) == "place" and entity_kind(["Information"]) is None
    assert referent_kinds("她今年多大了？") == {"person"} and referent_kinds("其他名字呢？") == frozenset()
    assert referent_kinds("他弹吉他") == {"person"} and referent_kinds("吉他好学吗") == frozenset()
    assert referent_kinds("这部电影哪年上映的？") == {"work"} and referent_kinds("这里好玩吗") == {"place"}


def test_he_means_the_person_and_this_film_the_film():
    tracker = EntityTracker.from_items(kb_items())
    context = ["你看过雨人吗？", "看过，主演是达斯汀·霍夫曼，汤姆·克鲁斯。"]
    # the cast list quotes 雨人's 主演 value: the focus stays the film, the actors are candidates
    res = tracker.resolve("这部电影哪年上映的？", context)
    assert res.entity == "雨人" and set(res.candidates) == {"雨人", "达斯汀·霍夫曼", "汤姆·克鲁斯"}
    assert res.quoted == {"达斯汀·霍夫曼", "汤姆·克鲁斯"}
    # 他 means a person: the most recent one the window named
    assert tracker.resolve("他是哪年出生的？", context).entity == "汤姆·克鲁斯"
    # without kinds, 他 is the focus
    assert EntityTracker.from_items(kb_items(), kinds={}).resolve("他是哪年出生的？", context).entity == "雨人"
    # named after the film, the actor is the focus; "这部电影" brings the film back
    context = ["你看过雨人吗？", "看过。", "达斯汀·霍夫曼演得真好。"]
    assert tracker.resolve("他还演过什么？", context).entity == "达斯汀·霍夫曼"
    assert tracker.resolve("这部电影的票房呢？", context).entity == "雨人"


def test_punctuation_does_not_hide_a_quoted_value():
    tracker = EntityTracker.from_items(kb_items())
    context = ["你看过雨人吗？", "由达斯汀·霍夫曼、汤姆·克鲁斯主演的。"]  # 、 where the KB writes ，
    assert tracker.resolve("片长多少？", context).entity == "雨人"


def test_a_heading_is_a_referent_only_when_it_names_an_entity():
    assert names_an_entity("黄山") and names_an_entity("Kyoto") and names_an_entity("故宫", "故宫又称紫禁城")
    assert not names_an_entity("表演") and not names_an_entity("交通") and not names_an_entity("北京旅游小贴士")
    items = [Item(id="a", kind="description", text="奶奶年轻时喜欢表演，唱过黄梅戏。", title="表演"),
             Item(id="b", kind="description", text="黄山位于安徽省南部，以奇松、怪石著称。", title="黄山")]
    tracker = EntityTracker.from_items(items)
    assert tracker.mentions("我喜欢表演，也去过黄山") == ("黄山",)
    assert tracker.resolve("你有孙女吗？她在做什么？", ["你平时喜欢表演吗？"]).entity is None


# -- the second stage ----------------------------------------------------------------------------------------------
def test_how_long_brings_the_suggested_visit_time_first(kb):
    retriever = HybridRetriever(*kb)
    context = ["你知道故宫吗？", "知道，是明清两代的皇宫。"]
    assert first(retriever, "那里面能游玩多长时间？", context) == "故宫-建议游玩时间"
    assert first(retriever, "门票多少钱？", context) == "故宫-门票"
    assert first(retriever, "几点开门？", context) == "故宫-开放时间"
    assert first(retriever, "电话是多少？", context) == "故宫-电话"
    assert first(retriever, "在哪里？", context) == "故宫-地址"


def test_film_questions_find_the_predicate_and_the_person(kb):
    retriever = HybridRetriever(*kb)
    context = ["你看过雨人吗？", "看过，主演是达斯汀·霍夫曼，汤姆·克鲁斯。"]
    assert first(retriever, "导演是谁？", context) == "雨人-导演"
    assert first(retriever, "这部电影哪年上映的？", context) == "雨人-上映时间"
    assert first(retriever, "片长多长？", context) == "雨人-片长"
    assert first(retriever, "他是哪年出生的？", [*context, "汤姆·克鲁斯演弟弟。"]) == "汤姆·克鲁斯-出生日期"


def test_a_value_just_said_is_not_offered_again(kb):
    retriever = HybridRetriever(*kb)
    context = ["你知道故宫吗？", "知道。"]
    hits = retriever.search("门票旺季60元，淡季40元，那它周边还有什么景点？", context=context, top_k=3)
    assert hits[0].item.id == "故宫-周边景点"
    assert "故宫-门票" not in [h.item.id for h in hits[:1]]


def test_the_second_stage_says_why_and_can_be_turned_off(kb):
    items, index, bm25, embedder = kb
    on = HybridRetriever(items, index, bm25, embedder)
    off = HybridRetriever(items, index, bm25, embedder, ranker=False)
    context = ["你知道故宫吗？", "知道，是明清两代的皇宫。"]
    hit = on.search("那里面能游玩多长时间？", context=context, top_k=3)[0]
    assert hit.why["second_stage_score"] == pytest.approx(hit.score, abs=1e-5)
    assert hit.why["first_stage_rank"] >= 1 and hit.why["context_entity"] == "故宫"
    assert hit.why["dense_score"] == pytest.approx(float(index.reconstruct(items.index(hit.item)) @ embedder.encode(
        ["故宫 那里面能游玩多长时间？"], role="query")[0]), abs=2e-3)
    assert off.ranker is None and "second_stage_score" not in off.search("门票多少钱？", context=context)[0].why
    [pool] = on.pools([{"query": "那里面能游玩多长时间？", "context": context}])
    assert pool.features.shape == (len(pool.rows), len(FEATURES)) and len(pool.first_rank) == len(pool.rows)
    focus = pool.features[:, FEATURES.index("focus")]
    assert {items[r].entity for r, f in zip(pool.rows, focus, strict=True) if f} == {"故宫"}
    # weights are one per feature, and zero weights leave only the dialogue-entity tiers and first-stage order
    zero = HybridRetriever(items, index, bm25, embedder, ranker=RankerWeights.from_vector(np.zeros(len(FEATURES))))
    firsts = [h.item.id for h in off.search("门票多少钱？", context=context, top_k=5)]
    assert [h.item.id for h in zero.search("门票多少钱？", context=context, top_k=5)] == firsts
