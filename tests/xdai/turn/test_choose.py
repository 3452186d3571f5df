"""Choosing the reply: the reranking terms and the fallback on fixed candidates, the persona's weights, and the
whole path end to end on the real SmolLM2."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from xdai.choose import DECLINE, ChoiceWeights, PromptFacts, choose, score, trim_unsupported
from xdai.eval.faithfulness import check_reply
from xdai.persona import load_persona
from xdai.prompt import Knowledge, PromptBuilder
from xdai.turn import Agent

GU = Knowledge(kind="qa", text="谷爱凌是谁？ 谷爱凌，2003年出生于美国加利福尼亚州旧金山市，中国自由式滑雪运动员",
               q="谷爱凌是谁？", a="谷爱凌，2003年出生于美国加利福尼亚州旧金山市，中国自由式滑雪运动员", score=0.93, id="gu")
PARKING = Knowledge(kind="qa", text="酒店有停车场吗？ 有，地下停车场共一百二十个车位。", q="酒店有停车场吗？",
                    a="有，地下停车场共一百二十个车位。", score=0.9, id="park")


@dataclass
class Cand:  # what xdai.rerank gives: a text and the model's total
    text: str
    total: float


@pytest.fixture()
def xiaodai():
    return load_persona("xiaodai")


def gu_prompt(persona, knowledge=GU):
    return PromptBuilder(persona).build("谷爱凌好厉害呀", utterance_knowledge=knowledge)


def test_an_invention_loses_to_a_grounded_reply_the_model_likes_less(xiaodai):
    invented = Cand("是啊，我也是自由式滑雪运动员。从2013年8月开始就参加了全国锦标赛！", -0.8)
    grounded = Cand("对呀，她是2003年出生在旧金山的自由式滑雪运动员呢！", -1.6)
    choice = choose([invented, grounded], gu_prompt(xiaodai), ChoiceWeights())
    assert choice.how == "rerank" and choice.text == grounded.text and choice.chosen == 1
    scored = {s.text: s for s in choice.candidates}
    assert {c.text for c in scored[invented.text].verdict.unsupported} >= {"2013年", "8月"}
    assert scored[grounded.text].grounded > scored[invented.text].grounded > 0
    # total = model + 5 x grounded - 2 x unsupported - 4 x contradictions - 2 x copied
    s = scored[invented.text]
    assert s.total == pytest.approx(-0.8 + 5 * s.grounded - 2 * len(s.verdict.unsupported))


def test_contradictions_and_copied_examples_cost_what_the_persona_says(xiaodai):
    prompt = PromptBuilder(xiaodai).build("停车场有多少车位？", utterance_knowledge=PARKING)
    facts = PromptFacts(prompt)
    wrong, copied = Cand("有的，共两百个车位。", 0.0), Cand("看啦看啦！自由式滑雪太精彩了，我看得手心都出汗了。", 0.0)
    low, high = score([wrong, copied], facts, ChoiceWeights()), score([wrong, copied], facts, ChoiceWeights(
        contradiction=10.0, copy=7.0))
    assert low[0].verdict.contradictions and low[1].copied and not low[0].copied
    assert high[0].total - low[0].total == pytest.approx(-6.0 * len(low[0].verdict.contradictions))
    assert high[1].total - low[1].total == pytest.approx(-5.0)
    # a persona that weighs likelihood alone picks the likelier invention
    blind = ChoiceWeights(grounding=0, unsupported=0, contradiction=0, copy=0)
    invented, grounded = Cand("她从2013年开始比赛。", -0.5), Cand("她是旧金山出生的自由式滑雪运动员。", -1.0)
    assert [s.total for s in score([invented, grounded], PromptFacts(gu_prompt(xiaodai)), blind)] == [-0.5, -1.0]


def test_weights_come_from_the_persona_generation_keys(xiaodai):
    xiaodai.override_generation({"grounding_weight": 2.5, "unsupported_weight": 9, "must_not_guess": True,
                                 "decline": "这个我真不知道呀。"}, "test")
    weights = ChoiceWeights.of(xiaodai)
    assert (weights.grounding, weights.unsupported, weights.contradiction) == (2.5, 9.0, 4.0)
    assert weights.must_not_guess and weights.decline_text("zh") == "这个我真不知道呀。"
    assert ChoiceWeights().decline_text("en") == DECLINE["en"]


def test_when_every_candidate_invents_the_reply_states_the_retrieved_fact(xiaodai):
    bad = [Cand("她2013年就拿了世界冠军！", -0.5), Cand("她有三个金牌，1998年出生。", -0.7)]
    choice = choose(bad, gu_prompt(xiaodai), ChoiceWeights())
    assert choice.how == "fact" and choice.chosen is None
    assert choice.text == "谷爱凌，2003年出生于美国加利福尼亚州旧金山市，中国自由式滑雪运动员"
    assert check_reply(choice.text, [GU.text]).faithful


def test_with_nothing_retrieved_a_must_not_guess_persona_declines_and_others_keep_what_is_supported(xiaodai):
    prompt = PromptBuilder(xiaodai).build("你们酒店有直升机停机坪吗？")
    bad = [Cand("有，直升机停机坪共一百个车位。", -0.2), Cand("有的，停一次收费500元。", -0.4)]
    assert choose(bad, prompt, ChoiceWeights(must_not_guess=True)).how == "decline"
    assert choose(bad, prompt, ChoiceWeights(must_not_guess=True, decline="不清楚。")).text == "不清楚。"
    assert choose(bad, prompt, ChoiceWeights()).how == "decline"  # nothing worth keeping once "一百个" goes
    chatty = [Cand("哈哈，我也想去看看！停机坪共一百个车位。", -0.2), *bad]
    casual = choose(chatty, prompt, ChoiceWeights())
    assert casual.how == "trim" and casual.text == "哈哈，我也想去看看！" and check_reply(casual.text, []).faithful
    assert choose([Cand("", -1.0)], prompt, ChoiceWeights()).how == "decline"  # nothing usable at all


def test_trim_keeps_the_clauses_without_unsupported_claims():
    text = "哈哈，她好厉害！她2013年拿了冠军，我也想学滑雪。"
    verdict = check_reply(text, [], [])
    assert trim_unsupported(text, verdict) == "哈哈，她好厉害！我也想学滑雪。"


@pytest.mark.slow  # sampling and scoring on the real SmolLM2
def test_reranking_end_to_end_on_smollm2(smollm2, tmp_path):
    persona_file = tmp_path / "desk.yaml"
    persona_file.write_text(
        "name: Desk\nlanguage: en\ndescription: Desk is a hotel front desk that answers in one short sentence.\n"
        "knowledge:\n  qa:\n    - q: When is breakfast served?\n      a: Breakfast is served from 6:30 to 10:00 on the"
        " second floor.\nselection:\n  budget_tokens: 500\ngeneration:\n  max_tokens: 24\n  seed: 3\n  rerank: 3\n"
        "  must_not_guess: true\n  decline: I'm sorry, I don't know that.\n", encoding="utf-8")
    persona = load_persona(persona_file)
    agent = Agent(persona, backend=smollm2)
    assert agent.renderer.name == "transcript"  # SmolLM2's measured default (benchmarks/rendering.py)

    async def ask(text):
        return [e async for e in agent.respond(agent.new_history(), text)][-1]

    for question in ("When is breakfast served?", "Do you have a helipad on the roof?"):
        reply = asyncio.run(ask(question))
        rerank = reply.prompt.rerank
        assert reply.finish_reason == "stop" and rerank is not None and len(rerank["entrants"]) == 3
        # the candidates the race did not cut (xdai.race: the persona's rerank_slack) are the ones chosen among
        assert len(rerank["candidates"]) == sum(not e["cut"] for e in rerank["entrants"]) >= 1
        assert all({"model", "grounded", "unsupported", "contradictions", "total"} <= set(c) for c in rerank["candidates"])
        if rerank["how"] == "rerank":  # the chosen candidate is one that asserts nothing unsupported
            chosen = rerank["candidates"][rerank["chosen"]]
            assert not chosen["unsupported"] and not chosen["contradictions"] and reply.text == chosen["text"]
        else:  # every candidate invented something: the fact, or the persona's honest "don't know"
            assert all(c["unsupported"] or c["contradictions"] or not c["text"] for c in rerank["candidates"])
            assert reply.text in ("Breakfast is served from 6:30 to 10:00 on the second floor.",
                                  "I'm sorry, I don't know that.")


def test_a_fact_that_does_not_answer_the_question_is_said_as_what_the_bot_knows(xiaodai):
    prompt = PromptBuilder(xiaodai).build("谷爱凌有多高？", utterance_knowledge=GU)
    choice = choose([Cand("她身高1.79米。", -0.5)], prompt, ChoiceWeights())
    assert choice.how == "fact" and choice.text == "这个我不太清楚，我只知道：" + GU.a


def test_an_echo_of_the_reference_label_is_not_part_of_the_reply(xiaodai):
    echoed = Cand("谷爱凌是谁？ 答：谷爱凌是中国自由式滑雪运动员。", -0.5)
    choice = choose([echoed], gu_prompt(xiaodai), ChoiceWeights())
    assert choice.text == "谷爱凌是中国自由式滑雪运动员。"


def test_an_echo_of_a_numbered_english_reference_line_is_dropped():
    from xdai.choose import unecho

    assert unecho("2. Q: What time is breakfast served? A: Breakfast is at 6:30.") == "Breakfast is at 6:30."
    assert unecho("3.5 hours is fine.") == "3.5 hours is fine."
