"""The AI interviewer's phases, held as server-side session state and pushed to the page as events.

    greeting  the persona's greeting asks for a self-introduction
    questions each question of the bank (interview.yaml), then one follow-up the model writes from the
              candidate's answer (the answer is the utterance of that turn, so the follow-up is grounded on it)
    qa        a countdown (``timer`` events: "答疑环节 剩余时间 04:00"); the candidate asks about the company, the
              model answers from the company pack; suggested questions come as ``suggestions`` events (chips)
    end       "结束面试" / "再见" (the page's end button sends "结束面试") or the timer running out: a closing line
              and a ``summary`` event with the transcript and a short summary, then ``session.end``

Events: ``phase`` {name, label, index, total}, ``actions`` {items: [{label, send}]}, ``timer``, ``suggestions``,
``summary`` {closing, summary, transcript, answers}, ``session.end``.

Only the flow announces questions, and only those its bank holds: a model-written reply that announces one ("第4个
问题", "下一个问题") is replaced by a follow-up on the candidate's own words (follow-ups) or cut before the
announcement (Q&A). In the Q&A phase a question the company pack cannot answer (`xdai.answerability`, calibrated on
tests/bots/data/answerability_interviewer.jsonl) gets an honest "I don't know" instead of the model's guess.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from knowledge import safe_yaml
from xdai.answerability import Answerability
from xdai.flows import Flow, FlowContext, clock_text

CONFIG = Path(__file__).with_name("interview.yaml")
ANSWERABILITY = Answerability.load(Path(__file__).with_name("answerability.json"))
DONT_KNOW = "这个问题我这边没有确切的信息，不敢乱说；你可以在后面的 HR 面里再问问。"
# A model-written announcement of a question ("第4个问题", "下一道题"): only the flow announces bank questions.
ANNOUNCES = re.compile(r"第\s*[0-9０-９一二三四五六七八九十百]+\s*[个道]?\s*(?:问题|题)|下一[个道]?(?:问题|题)")
GREETING = re.compile(r"^(?:你好|您好|大家好|面试官好|面试官你好|老师好|hi|hello|嗨|哈喽|谢谢|好的|嗯|啊)[啊呀！!，,。.～~\s]*$",
                      re.IGNORECASE)
SMALL_TALK = ("你好", "您好", "谢谢", "好的", "嗯", "明白了", "了解了", "没有了", "没问题")
PHASE_LABELS = {"greeting": "自我介绍", "questions": "提问", "followup": "追问", "qa": "答疑环节", "end": "面试结束"}
QA_TIMER = "qa"
ENDED_REPLY = "本次面试已经结束了，感谢你的参与！结果会在两周内通知你。"


def load_interview(path: Path = CONFIG) -> dict[str, Any]:
    """interview.yaml, checked: a clear error naming the file and key when it is wrong."""
    text = path.read_text(encoding="utf-8")
    try:
        node, data = safe_yaml.compose(text), safe_yaml.load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ValueError(f"{path}:{mark.line + 1 if mark else 1}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}:1: expected a mapping of interview settings")

    def line(key: str) -> int:
        for k, v in node.value:
            if k.value == key:
                return v.start_mark.line + 1
        return 1

    questions = data.get("questions")
    if not isinstance(questions, list) or not questions or not all(
            isinstance(q, dict) and isinstance(q.get("q"), str) and q["q"].strip() for q in questions):
        raise ValueError(f"{path}:{line('questions')}: questions: expected a non-empty list of {{topic, q}}")
    seconds = data.get("qa_seconds", 240)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ValueError(f"{path}:{line('qa_seconds')}: qa_seconds: expected a positive number of seconds, "
                         f"got {seconds!r}")
    data.setdefault("company", "")
    data.setdefault("role", "")
    data.setdefault("follow_ups", True)
    data.setdefault("qa_label", "答疑环节")
    data.setdefault("suggestions_intro", "比如你可以问我以下问题...")
    data.setdefault("suggested_questions", [])
    data.setdefault("end_words", ["结束面试", "再见"])
    return data


def first_clause(text: str, limit: int = 24) -> str:
    """The candidate's own words to quote in a follow-up or a summary: the first clause that is not a greeting
    ("你好，我是李雷" -> "我是李雷"), cut to `limit` characters."""
    clauses = [c.strip() for c in re.split(r"[。！？!?；;，,\n]", text.strip()) if c.strip()]
    clause = next((c for c in clauses if not GREETING.match(c)), clauses[0] if clauses else "")
    return clause if len(clause) <= limit else clause[:limit] + "…"


def is_small_talk(text: str) -> bool:
    """A greeting or thanks, not a question about the company."""
    text = text.strip()
    return not text or bool(GREETING.match(text)) or (len(text) <= 6 and text.startswith(SMALL_TALK))


class Interview(Flow):
    uses_timers = True

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = config or load_interview()

    # -- helpers ------------------------------------------------------------------------------------------------
    @property
    def questions(self) -> list[dict[str, Any]]:
        return self.config["questions"]

    def _phase(self, ctx: FlowContext, name: str, **extra: Any) -> None:
        """Tell the page the phase; a follow-up is a step inside the questions phase, not a phase of its own."""
        if name != "followup":
            ctx.state["phase"] = name
        ctx.emit("phase", {"name": name, "label": PHASE_LABELS[name], "total": len(self.questions), **extra})

    def _ask(self, ctx: FlowContext, index: int, lead: str) -> None:
        ctx.state["index"], ctx.state["step"] = index, "answer"
        question = self.questions[index]
        ctx.state["answers"].append({"topic": question.get("topic", ""), "question": question["q"], "answer": "",
                                     "follow_up": "", "follow_up_answer": ""})
        self._phase(ctx, "questions", index=index + 1, topic=question.get("topic", ""))
        ctx.say(f"{lead}第{index + 1}个问题：{question['q']}")

    def _unasked_suggestions(self, ctx: FlowContext) -> list[str]:
        asked = set(ctx.state.get("asked", []))
        return [q for q in self.config["suggested_questions"] if q not in asked][:3]

    def _is_end(self, text: str) -> bool:
        return any(word in text for word in self.config["end_words"])

    # -- hooks --------------------------------------------------------------------------------------------------
    def on_open(self, ctx: FlowContext) -> None:
        ctx.state.update(phase="greeting", index=-1, step="", answers=[], asked=[], transcript=[],
                         started=ctx.now, ending="", role=self.config["role"], company=self.config["company"])
        ctx.state["transcript"].append({"role": "interviewer", "text": ctx.agent.greeting(), "phase": "greeting"})
        self._phase(ctx, "greeting")
        ctx.emit("actions", {"items": [{"label": "结束面试", "send": "结束面试"}]})

    def before_turn(self, ctx: FlowContext) -> None:
        state, text = ctx.state, (ctx.utterance or "").strip()
        if "phase" not in state:  # a terminal chat has no session opening: open it here
            self.on_open(ctx)
        if ctx.ended:
            ctx.say(ENDED_REPLY)
            return
        if self._is_end(text):
            state["ending"] = "candidate"
            ctx.say(f"好的，今天的面试就到这里。感谢你参加{self.config['company']}{self.config['role']}的面试，"
                    "结果会在两周内通知你，再见！")
            return
        phase = state["phase"]
        if phase == "greeting":
            state["introduction"] = text
            self._ask(ctx, 0, "好的，谢谢你的介绍。")
        elif phase == "questions":
            answer = state["answers"][state["index"]]
            if state["step"] == "answer":
                answer["answer"] = text
                if self.config["follow_ups"]:
                    state["step"] = "follow_up"
                    self._phase(ctx, "followup", index=state["index"] + 1)
                    return  # the model writes the follow-up from this answer (after_turn checks it asks something)
            else:
                answer["follow_up_answer"] = text
            if state["index"] + 1 < len(self.questions):
                self._ask(ctx, state["index"] + 1, "好的。")
            else:
                self._start_qa(ctx)
        elif phase == "qa":
            if not is_small_talk(text):
                state["asked"].append(text)
                verdict = ANSWERABILITY.judge(text, ctx.agent.agent.stores)
                if not verdict.answerable:
                    state.setdefault("declined", []).append({"question": text, **verdict.to_json()})
                    ctx.say(DONT_KNOW)
            remaining = ctx.remaining(QA_TIMER)
            if remaining is not None:
                timer = ctx.agent.timer_data(ctx.session, QA_TIMER)
                ctx.emit("timer", timer)

    def _start_qa(self, ctx: FlowContext) -> None:
        seconds = float(self.config["qa_seconds"])
        self._phase(ctx, "qa", seconds=seconds)
        suggestions = self._unasked_suggestions(ctx)
        listed = "；".join(f"{i + 1}. {q}" for i, q in enumerate(suggestions))
        ctx.say(f"好的，我的问题就到这里。接下来是{self.config['qa_label']}，你有{clock_text(seconds)}的时间问我关于"
                f"公司和这个岗位的问题。{self.config['suggestions_intro']}{listed}")
        ctx.start_timer(QA_TIMER, seconds, self.config["qa_label"])
        ctx.suggest(suggestions, intro=self.config["suggestions_intro"])

    def after_turn(self, ctx: FlowContext) -> None:
        reply, state = ctx.reply, ctx.state
        assert reply is not None
        if reply.finish_reason not in ("stop", "length"):
            return
        phase = state.get("phase", "greeting")
        if phase == "questions" and state.get("step") == "follow_up" and not ctx.scripted:
            answer = state["answers"][state["index"]]
            ask = f"你刚才提到“{first_clause(answer['answer'])}”，能具体说说你是怎么做的吗？"
            chosen = (reply.prompt.rerank or {}).get("how", "rerank")
            if ANNOUNCES.search(reply.text) or chosen != "rerank":
                # it announced a question the bank may not hold, or every candidate invented something and the
                # agent fell back to a fact or a decline: neither is a follow-up
                reply.text = ask
            elif not re.search(r"[？?]", reply.text):  # the model did not ask: ask about the candidate's own words
                reply.text = (reply.text.rstrip() + " " if reply.text.strip() else "") + ask
            answer["follow_up"] = reply.text
        elif phase == "qa" and not ctx.scripted:
            found = ANNOUNCES.search(reply.text)
            if found:  # keep what came before the announcement
                reply.text = reply.text[: found.start()].rstrip(" ，,：:；;") or DONT_KNOW
        if phase == "qa" and not ctx.ended:
            ctx.suggest(self._unasked_suggestions(ctx), intro=self.config["suggestions_intro"])
        state["transcript"].append({"role": "candidate", "text": ctx.utterance or "", "phase": phase})
        state["transcript"].append({"role": "interviewer", "text": reply.text, "phase": phase})
        if state.get("ending") and not ctx.ended:
            ctx.end(state["ending"])

    def on_timer(self, ctx: FlowContext, name: str) -> None:
        if name != QA_TIMER or ctx.ended:
            return
        closing = f"{self.config['qa_label']}的时间到了，今天的面试就到这里。感谢你的参与，结果会在两周内通知你！"
        ctx.state["closing"] = closing
        ctx.state["transcript"].append({"role": "interviewer", "text": closing, "phase": "qa"})
        ctx.end("timer")

    def on_end(self, ctx: FlowContext) -> None:
        state = ctx.state
        state["phase"] = "end"
        ctx.emit("phase", {"name": "end", "label": PHASE_LABELS["end"], "total": len(self.questions)})
        ctx.emit("summary", {"closing": state.get("closing", ""), "summary": self.summary(ctx),
                             "transcript": list(state.get("transcript", [])), "answers": list(state["answers"]),
                             "reason": ctx.session.end_reason})

    def summary(self, ctx: FlowContext) -> str:
        """A short, extractive summary: what was covered and the candidate's own key words per question."""
        state = ctx.state
        answered = [a for a in state["answers"] if a["answer"]]
        follow_ups = [a for a in answered if a["follow_up_answer"]]
        lines = [f"候选人应聘{state['company']}{state['role']}，面试用时{clock_text(ctx.now - state['started'])}，"
                 f"回答了题库{len(answered)}/{len(self.questions)}个问题和{len(follow_ups)}个追问，"
                 f"答疑环节提问{len(state['asked'])}个。"]
        if state.get("introduction"):
            lines.append(f"自我介绍：{first_clause(state['introduction'], 40)}")
        for i, a in enumerate(answered, 1):
            said = first_clause(a["answer"], 40)
            more = f"；追问回答：{first_clause(a['follow_up_answer'], 30)}" if a["follow_up_answer"] else ""
            lines.append(f"{i}. {a['topic'] or a['question']}：{said}{more}")
        if state["asked"]:
            lines.append("候选人关心：" + "；".join(first_clause(q, 30) for q in state["asked"]))
        ended = {"candidate": "候选人结束了面试", "timer": "答疑时间用完，面试结束"}.get(ctx.session.end_reason, "")
        if ended:
            lines.append(ended + "。")
        return "\n".join(lines)
