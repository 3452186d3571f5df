"""Entity tracking in dialogue context on the tiny hand-written KB."""

from __future__ import annotations

from knowledge.context import EntityTracker, aliases


def test_pronoun_resolves_to_the_attraction_named_turns_earlier(items):
    tracker = EntityTracker.from_items(items)
    context = ["你知道故宫吗？", "知道，是明清两代的皇宫。", "那里人多吗？", "节假日人很多，最好早点去。"]
    res = tracker.resolve("那它的门票是怎么收费的？", context)
    assert res.entity == "故宫"
    assert res.source == "context" and res.distance == 4
    assert res.query.startswith("故宫") and "门票" in res.query


def test_an_entity_the_utterance_names_wins_over_the_context(items):
    tracker = EntityTracker.from_items(items)
    res = tracker.resolve("天坛的门票呢？", ["你知道故宫吗？", "知道。"])
    assert (res.entity, res.source, res.distance) == ("天坛", "query", 0)
    assert res.query == "天坛的门票呢？"  # already named: not expanded


def test_the_most_recently_named_entity_is_the_focus(items):
    tracker = EntityTracker.from_items(items)
    context = ["你知道故宫吗？", "知道，它旁边还有天坛。", "天坛我去过。"]
    assert tracker.resolve("它的门票多少钱？", context).entity == "天坛"


def test_bracketed_names_are_found_by_their_short_forms(items):
    tracker = EntityTracker.from_items(items)
    assert aliases("鸟巢（国家体育场）") == {"鸟巢(国家体育场)", "鸟巢", "国家体育场"}
    assert tracker.resolve("鸟巢的门票多少钱？").entity == "鸟巢（国家体育场）"
    assert tracker.resolve("门票多少钱？", ["国家体育场你去过吗？"]).entity == "鸟巢（国家体育场）"


def test_a_bracket_word_other_names_share_is_not_an_alias():
    tracker = EntityTracker(["雨中曲（电影）", "卧虎藏龙（电影）", "电影学院"])
    assert tracker.mentions("我喜欢看电影") == ()
    assert tracker.mentions("雨中曲是一部好电影") == ("雨中曲（电影）",)


def test_the_longest_name_wins():
    tracker = EntityTracker(["长城", "八达岭长城"])
    assert tracker.mentions("八达岭长城和长城") == ("八达岭长城", "长城")


def test_a_name_quoted_from_the_focus_knowledge_does_not_change_the_focus(items):
    tracker = EntityTracker.from_items(items)
    context = ["北京大学在哪里？", "地址是北京市海淀区颐和园路5号。"]
    # "颐和园" is named, but inside 北京大学's own address: still about 北京大学.
    assert tracker.resolve("需要门票吗？", context).entity == "北京大学"
    # Named on its own, it does change the focus.
    assert tracker.resolve("需要门票吗？", [*context, "逛完可以去颐和园。"]).entity == "颐和园"
    # Without knowledge (or margin 0) the last name wins.
    assert EntityTracker.from_items(items, margin=0).resolve("需要门票吗？", context).entity == "颐和园"


def test_the_window_bounds_how_far_back_a_name_counts(items):
    tracker = EntityTracker.from_items(items, window=2)
    context = ["你知道故宫吗？", "知道。", "好的。", "嗯。"]
    res = tracker.resolve("门票多少钱？", context)
    assert res.entity is None and res.query == "门票多少钱？" and res.source == "none"
    assert EntityTracker.from_items(items, window=4).resolve("门票多少钱？", context).entity == "故宫"


def test_full_width_text_is_matched_after_normalisation(items):
    tracker = EntityTracker.from_items(items)
    assert tracker.mentions("鸟巢（国家体育场）在哪？") == ("鸟巢（国家体育场）",)


def test_a_short_form_two_names_share_is_no_ones():
    tracker = EntityTracker(["星光（北京店）", "星光（上海店）"])
    assert tracker.mentions("星光怎么样") == ()
    assert tracker.mentions("北京店怎么样") == ("星光（北京店）",)
