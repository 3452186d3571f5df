"""Extraction of durable facts (issue 15 section 1): the rules on a labelled set of Chinese and English user
utterances (precision >= 0.9: a wrong memory is worse than none), the cases that must yield nothing, and the
model's answer kept only when it validates against the schema and is grounded in what the user wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import ScriptedBackend
from xdai.memory.evaluate import evaluate, load_labelled, value_match
from xdai.memory.extract import Extractor, ModelExtractor, RuleExtractor, parse_facts, self_disclosure
from xdai.memory.items import Fact

DATA = Path(__file__).with_name("data")
SETS = ("extraction.jsonl", "extraction_heldout.jsonl")


def _rows():
    return [row for name in SETS for row in load_labelled(DATA / name)]


def test_the_labelled_set_is_large_enough_and_bilingual() -> None:
    rows = _rows()
    assert len(rows) >= 60
    zh, en = [r for r in rows if r.lang == "zh"], [r for r in rows if r.lang == "en"]
    assert len(zh) >= 30 and len(en) >= 30
    assert sum(1 for r in rows if not r.facts) >= 40  # plenty of utterances that must yield nothing


def test_rules_precision_on_the_labelled_set_is_at_least_0_9() -> None:
    rules = RuleExtractor()
    score = evaluate(_rows(), lambda text, lang: rules.extract(text, lang))
    assert score.precision >= 0.9, score.errors
    assert score.recall >= 0.7, score.errors  # and it finds most of them
    for lang in ("zh", "en"):
        per_language = evaluate([r for r in _rows() if r.lang == lang], lambda text, lang: rules.extract(text, lang))
        assert per_language.precision >= 0.9, (lang, per_language.errors)


def test_the_headline_utterance() -> None:
    facts = RuleExtractor().extract("我叫李雷，住在杭州，最喜欢吃小笼包")
    assert [(f.slot, f.value) for f in facts] == [("name", "李雷"), ("location", "杭州"), ("like", "小笼包")]
    assert facts[2].favorite and facts[2].aspect == "吃" and facts[2].key == "favorite:吃"
    assert facts[1].qa("zh") == ("用户住在哪里？", "杭州", "用户住在杭州")
    assert Fact("like", "xiaolongbao", aspect="food", favorite=True).qa("en")[0] == "What is the user's favorite food?"


@pytest.mark.parametrize("text", [
    "我朋友住在深圳", "他叫张伟，住在广州", "如果我住在北京就好了", "你还记得我住在哪里吗？", "我喜欢你说话的方式",
    "My friend lives in London.", "If I lived in Paris I would eat croissants every day.", "Do you remember where I live?",
    "I like your answer.", "I'm going to the kitchen.", "She is a teacher and lives in Boston.",
])
def test_other_people_questions_hypotheticals_and_opinions_of_the_bot_yield_nothing(text: str) -> None:
    assert RuleExtractor().extract(text) == []


def test_a_later_value_in_one_utterance_wins_and_subjects_carry_over() -> None:
    facts = RuleExtractor().extract("我搬到深圳了，现在住在南山")
    assert [(f.slot, f.value) for f in facts] == [("location", "南山")]
    # the second clause is about the daughter, not the user
    assert [(f.slot, f.label) for f in RuleExtractor().extract("我女儿叫小美，今年五岁")] == [("family", "女儿:小美")]


def test_keys_say_what_supersedes_what() -> None:
    assert Fact("location", "杭州").key == Fact("location", "上海").key == "location"
    assert Fact("like", "咖啡").key == Fact("dislike", "咖啡").key == "pref:咖啡"
    assert Fact("family", "小美", relation="女儿").key != Fact("family", "乐乐", relation="儿子").key


def test_value_match_is_relaxed_but_not_loose() -> None:
    assert value_match("去日本旅游", "下个月去日本旅游") and value_match("Seattle", "seattle.")
    assert not value_match("旅游", "去日本旅游")  # less than half of it
    assert not value_match("hiking", "hiking on weekends and climbing")


# ------------------------------------------------------------------------------------------------ the model
def test_a_model_answer_is_kept_only_when_schema_valid_and_grounded() -> None:
    said = "我叫王芳，在医院当护士"
    ok = '{"facts": [{"slot": "name", "value": "王芳"}, {"slot": "occupation", "value": "护士"}]}'
    assert [(f.slot, f.value, f.source) for f in parse_facts(ok, said, "zh")] == [
        ("name", "王芳", "model"), ("occupation", "护士", "model")]
    invented = '{"facts": [{"slot": "location", "value": "北京"}]}'  # the user never said 北京
    assert parse_facts(invented, said, "zh") == []
    wrong_slot = '{"facts": [{"slot": "salary", "value": "护士"}]}'
    assert parse_facts(wrong_slot, said, "zh") == []
    extra_field = '{"facts": [{"slot": "name", "value": "王芳", "confidence": 1}]}'
    assert parse_facts(extra_field, said, "zh") == []
    assert parse_facts("I think her name is 王芳", said, "zh") == []
    cut_short = '{"facts": [{"slot": "name", "value": "王芳"}'  # the reply ran out of tokens: closed, then read
    assert [f.value for f in parse_facts(cut_short, said, "zh")] == ["王芳"]
    not_a_name = '{"facts": [{"slot": "name", "value": "Microsoft"}]}'  # said, but not as the user's name
    assert parse_facts(not_a_name, "I'm a software engineer at Microsoft.", "en") == []
    assert parse_facts('{"facts": [{"slot": "name", "value": "旺财"}]}', "我家有只狗叫旺财", "zh") == []  # the dog's
    no_evidence = '{"facts": [{"slot": "location", "value": "医院"}]}'  # said, but nothing says they live there
    assert parse_facts(no_evidence, said, "zh") == []
    no_relation = '{"facts": [{"slot": "family", "value": "小美"}]}'
    assert parse_facts(no_relation, "我女儿叫小美", "zh") == []
    assert [f.label for f in parse_facts('{"facts": [{"slot": "family", "value": "小美", "relation": "女儿"}]}',
                                         "我女儿叫小美", "zh")] == ["女儿:小美"]


OPEN, MORE, END = '{"slot": "', ', {"slot": "', "]}"


async def test_the_decoder_writes_the_structure_and_the_model_only_the_strings() -> None:
    # the model prefers a first fact to an empty list, then the end of the list to a second fact
    backend = ScriptedBackend(["occupation", "护士"], scores={OPEN: -1.0, END: -5.0, MORE: -9.0})
    model = ModelExtractor(backend)
    assert await model.extract("你喜欢吃什么？", "zh") == [] and backend.fills == []  # a question: not asked
    assert await model.extract("我朋友是护士", "zh") == [] and backend.fills == []  # someone else's fact
    assert not self_disclosure("如果我是护士就好了") and self_disclosure("我在医院当护士")
    assert await model.decode("我在医院当护士", "zh") == (
        '{"facts": [{"slot": "occupation", "value": "护士"}]}')
    before = [infill.before for infill, _ in backend.fills]
    assert before[0].endswith('JSON: {"facts": [{"slot": "')  # the slot, written after the decoder's opening
    assert before[1].endswith('{"slot": "occupation", "value": "')
    assert all(settings.stop[0] == '"' and settings.temperature == 0.0 for _, settings in backend.fills)
    assert set(backend.scored[:2]) == {(before[0][: -len(OPEN)], END), (before[0][: -len(OPEN)], OPEN)}


async def test_a_slot_outside_the_schema_ends_the_answer_and_nothing_ungrounded_survives() -> None:
    backend = ScriptedBackend(["location", "北京", "salary"], scores={OPEN: -1.0, MORE: -2.0, END: -5.0})
    model = ModelExtractor(backend)
    assert await model.decode("我在杭州的医院当护士", "zh") == '{"facts": [{"slot": "location", "value": "北京"}]}'
    assert await ModelExtractor(ScriptedBackend(["location", "北京", "salary"], scores={
        OPEN: -1.0, MORE: -2.0, END: -5.0})).extract("我在杭州的医院当护士", "zh") == []  # 北京 was never said


async def test_both_keeps_the_rules_facts_and_adds_what_only_the_model_found() -> None:
    backend = ScriptedBackend(["location", "西湖边", "name", "小李", "salary"], scores={OPEN: -1.0, MORE: -2.0, END: -5.0})
    combined = Extractor("both", backend)
    facts = await combined.extract("我叫李雷，家就在西湖边上", "zh")
    # the rules found the name; the model's other name is not taken (nor said), its location (said) is
    assert [(f.slot, f.value, f.source) for f in facts] == [("name", "李雷", "rules"), ("location", "西湖边", "model")]


async def test_a_failing_model_costs_only_its_own_facts() -> None:
    class Broken(ScriptedBackend):
        def score(self, context, continuation):  # noqa: ANN001, ANN201
            raise RuntimeError("model gone")

    facts = await Extractor("both", Broken()).extract("我叫李雷", "zh")
    assert [(f.slot, f.value) for f in facts] == [("name", "李雷")]
