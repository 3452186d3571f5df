"""The front desk's flow: answer only from the knowledge pack, say so when it cannot answer, and offer a hand-off
to a person (a ``handoff`` event the page shows as a button).

Whether the pack can answer is `xdai.answerability`'s call (dense and question-to-question similarity and
IDF-weighted lexical overlap with the best items, in a logistic model calibrated on
tests/bots/data/answerability_frontdesk.jsonl by benchmarks/answerability.py): the single cosine threshold it
replaces (0.87) answered a helipad question from the parking item, because the embedder's scale is compressed.
"""

from __future__ import annotations

from pathlib import Path

from xdai.answerability import Answerability
from xdai.flows import Flow, FlowContext

ANSWERABILITY = Answerability.load(Path(__file__).with_name("answerability.json"))
HANDOFF_WORDS = ("转人工", "人工服务", "找人工", "人工客服", "真人")
SMALL_TALK = ("你好", "您好", "谢谢", "多谢", "再见", "拜拜", "好的", "嗯")  # answered by the model, never "I don't know"
DONT_KNOW = "抱歉，这个问题我这里没有确切的信息，不敢乱说。需要的话我可以为您转接人工前台。"
HANDING_OFF = "好的，正在为您转接人工前台，请稍候；您也可以拨打前台电话 0571-8888 6666。"
CONTACT = {"phone": "0571-8888 6666", "desk": "一楼大堂前台（24小时）"}


class FrontDesk(Flow):
    def on_open(self, ctx: FlowContext) -> None:
        ctx.state["unknown"] = 0
        ctx.suggest(["早餐几点供应？", "从杭州东站怎么到酒店？", "酒店有停车场吗？"], intro="您可以这样问我：")

    def before_turn(self, ctx: FlowContext) -> None:
        text = (ctx.utterance or "").strip()
        if any(word in text for word in HANDOFF_WORDS):
            ctx.say(HANDING_OFF)
            ctx.emit("handoff", {"offer": False, "accepted": True, "reason": "asked", "contact": CONTACT,
                                 "transcript": [{"user": e.user, "bot": e.bot} for e in ctx.history.exchanges]})
            return
        if not text or (len(text) <= 6 and any(text.startswith(word) for word in SMALL_TALK)):
            return
        verdict = ANSWERABILITY.judge(text, ctx.agent.agent.stores)
        if not verdict.answerable:
            ctx.state["unknown"] = ctx.state.get("unknown", 0) + 1
            ctx.state["last_unknown"] = {"question": text, **verdict.to_json()}
            self.decline(ctx)

    def after_turn(self, ctx: FlowContext) -> None:
        """The model's reply fell back to "I don't know" (`xdai.choose`: every candidate invented something and
        nothing relevant was retrieved): offer the hand-off as for a question the pack cannot answer."""
        reply = ctx.reply
        if reply is not None and ctx.scripted is None and (reply.prompt.rerank or {}).get("how") == "decline":
            ctx.state["unknown"] = ctx.state.get("unknown", 0) + 1
            self.offer(ctx)

    def decline(self, ctx: FlowContext) -> None:
        ctx.say(DONT_KNOW)
        self.offer(ctx)

    @staticmethod
    def offer(ctx: FlowContext) -> None:
        ctx.emit("handoff", {"offer": True, "reason": "unknown", "text": "转人工前台",
                             "actions": [{"label": "转人工", "send": "转人工"}], "contact": CONTACT})
