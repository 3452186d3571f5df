"""The emotion demo: every turn is conditioned on the persona's ``angry`` post-response unless the client names
another condition, and the page is told which post-response shaped the reply."""

from __future__ import annotations

from xdai.flows import Flow, FlowContext

CONDITION = "angry"


class EmotionDemo(Flow):
    def on_open(self, ctx: FlowContext) -> None:
        ctx.suggest(["最近我发现羽毛球很有意思欸"], intro="试试种子里的那句话：")

    def before_turn(self, ctx: FlowContext) -> None:
        if not ctx.condition:
            ctx.condition = CONDITION
        name, post_response = ctx.agent.condition_text(ctx.condition) or ("", "")
        ctx.emit("condition", {"name": name, "post_response": post_response,
                               "exchange": [ctx.utterance, "[MASK]", post_response]})
