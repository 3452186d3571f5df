"""The virtual front desk: an FAQ question is answered grounded on the right item; a question its knowledge does
not hold gets an honest "I don't know" and a hand-off offer as an event; asking for a person hands off. Whether
the pack can answer is `xdai.answerability`'s calibrated call (bots/frontdesk/answerability.json), checked here
against the labelled set it was calibrated on (tests/bots/data/answerability_frontdesk.jsonl)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import decisions_agree
from xdai.answerability import Answerability, calibrate, read_labels

from .conftest import BOTS_DIR

LABELS = Path(__file__).with_name("data") / "answerability_frontdesk.jsonl"
KNOWN = ["请问早餐是几点到几点？", "我几点能入住", "停车要钱吗", "怎么从东站过来", "有健身房吗", "wifi密码多少",
         "能寄存行李吗", "可以带狗吗", "附近好玩的地方", "会议室可以订吗", "湖景房在几楼", "酒店在哪里", "前台电话是多少"]
UNKNOWN = ["你们经理叫什么名字", "帮我订一张去北京的机票", "你们有没有儿童乐园", "你们有接机服务吗",
           "附近哪家医院最好", "附近有地铁站吗"]
# Questions the pack cannot answer that scored above the old cosine threshold (0.87) with the bundled embedder
# (its scale is compressed: 0.88-0.89), so they were answered from the nearest item; and the new-user trial's
# inventions. Answerability declines them all.
NEAR_MISSES = ["明天杭州天气怎么样", "酒店有几个电梯", "房间有浴缸吗", "可以用支付宝付款吗", "你们酒店有直升机停机坪吗？",
               "能帮我订一张去北京的机票吗？", "酒店总经理叫什么名字？"]


@pytest.fixture(scope="module")
def desk(served: Callable[..., Any]) -> Any:
    return served("frontdesk", max_tokens=12)


def test_answerability_separates_what_the_pack_knows(desk: Any) -> None:
    model = sys.modules[type(desk.flow).__module__].ANSWERABILITY
    stores = desk.agent.stores
    verdicts = {q: model.judge(q, stores) for q in KNOWN + UNKNOWN + NEAR_MISSES}
    print("\nfront desk answerability: " + "; ".join(f"{q} {v.probability:.2f}" for q, v in verdicts.items()))
    assert all(verdicts[q].answerable for q in KNOWN), {q: verdicts[q].to_json() for q in KNOWN}
    assert not any(verdicts[q].answerable for q in UNKNOWN + NEAR_MISSES), {
        q: verdicts[q].to_json() for q in UNKNOWN + NEAR_MISSES}


def test_answerability_is_calibrated_on_the_labelled_set_and_holds_out_a_third(desk: Any) -> None:
    labels = read_labels(LABELS)
    assert sum(r["answerable"] for r in labels) >= 40 and sum(not r["answerable"] for r in labels) >= 40
    refit = calibrate(labels, desk.agent.stores, source="tests/bots/data/answerability_frontdesk.jsonl")
    shipped = Answerability.load(BOTS_DIR / "frontdesk" / "answerability.json")
    # The shipped model is the calibration's: the two decide alike. (Not weight by weight: the embedder's matmuls
    # run in bf16 on CPUs that have it and in fp32 elsewhere, which moves a refit's weights by ~1e-2.)
    assert decisions_agree(refit, shipped, labels, desk.agent.stores) >= 0.97
    held = refit.report["held_out"]
    print(f"\nheld out ({held['n']}): answer P={held['answer_precision']:.2f} R={held['answer_recall']:.2f}, "
          f"decline P={held['decline_precision']:.2f} R={held['decline_recall']:.2f}")
    for key in ("answer_precision", "answer_recall", "decline_precision", "decline_recall"):
        assert held[key] >= 0.9, held


async def test_faq_answer_is_grounded_on_the_right_item(desk: Any) -> None:
    history = desk.new_history()
    desk.open_session("desk-1", history)
    reply, events = await desk.turn(history, "请问早餐几点开始供应？", session="desk-1")
    assert reply.finish_reason in ("stop", "length") and reply.text
    assert "handoff" not in [e.name for e in events]
    top = max(reply.grounding, key=lambda g: g["score"])  # the prompt orders them background first
    assert top["kind"] == "qa" and "早餐在二楼云间餐厅" in top["text"], reply.grounding
    faq = (BOTS_DIR / "frontdesk" / "knowledge" / "faq.yaml").name
    assert any(faq in str(p.why.get("source_file", "")) for p in reply.prompt.parts if p.kind == "knowledge")


async def test_unknown_question_gets_an_honest_answer_and_a_handoff_offer(desk: Any) -> None:
    module = sys.modules[type(desk.flow).__module__]
    history = desk.new_history()
    desk.open_session("desk-2", history)
    reply, events = await desk.turn(history, "你们经理叫什么名字？", session="desk-2")
    assert reply.text == module.DONT_KNOW and reply.grounding == []
    offer = [e.data for e in events if e.name == "handoff"]
    assert offer and offer[0]["offer"] is True and offer[0]["actions"] == [{"label": "转人工", "send": "转人工"}]
    assert desk.session("desk-2").state["unknown"] == 1

    reply, events = await desk.turn(history, "转人工", session="desk-2")
    handoff = [e.data for e in events if e.name == "handoff"][0]
    assert handoff["accepted"] is True and handoff["contact"]["phone"] == "0571-8888 6666"
    assert handoff["transcript"] == [{"user": "你们经理叫什么名字？", "bot": module.DONT_KNOW}]
    assert reply.text == module.HANDING_OFF

