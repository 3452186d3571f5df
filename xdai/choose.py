"""Choosing the reply among sampled candidates: likelihood and the facts the prompt was given, together.

Each candidate (`xdai.rerank.Candidate`, already scored by the model) gets

    total(c) = likelihood_weight * forward(c)          log P(c | prompt) per character
             + post_weight * post(c)                   log P(post-response | prompt, c), when a condition is active
             + inverse(c)                              inverse prompting, when the persona asks for it
             + grounding_weight * grounded(c)          share of c's content tokens found in the injected knowledge
             - unsupported_weight * |unsupported(c)|   claims nothing in the prompt supports (xdai.eval.faithfulness)
             - contradiction_weight * |contradicts(c)| numbers the injected knowledge states otherwise
             - copy_weight * copied(c)                 1 when c repeats a persona example line (8+ characters)

The weights are the persona's (``generation:`` keys of the same names). When *every* candidate asserts something
unsupported or contradicting, none is picked blindly (`fallback`): the reply states the retrieved fact itself, in
the words the pack gives the bot; with nothing relevant retrieved, a persona that must not guess (front desk,
interviewer Q&A: ``must_not_guess: true``) says honestly that it does not know (its flow offers the hand-off);
any other persona keeps the best candidate's clauses that carry no unsupported claim.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from xdai.eval.faithfulness import CLAUSE_SPLIT, Faithfulness, Support, judge, prompt_sources
from xdai.eval.metrics import tokens
from xdai.prompt import Prompt, escape_text

COPY_SPAN = 8  # characters (CJK) a candidate may share with a persona example before it counts as copying
COPY_WORDS = 5  # ...or words, for Latin-script examples
DECLINE = {
    "zh": "抱歉，这个问题我这里没有确切的信息，不敢乱说。",
    "en": "Sorry, I don't have reliable information on that, and I'd rather not guess.",
}
# A fact that does not cover what was asked ("谷爱凌有多高？" with only her birth and sport retrieved) is said with
# this honest lead, not passed off as the answer.
PARTLY = {"zh": "这个我不太清楚，我只知道：", "en": "I'm not sure about that; what I know is: "}
# (what a question asks for, what an answer to it contains): a fact without the latter does not answer it
ASKS = (
    (r"多高|身高|how tall", r"米|厘米|身高|\bm\b|cm|feet|tall"),
    (r"多重|体重|how heavy", r"斤|公斤|千克|体重|kg|pounds"),
    (r"几岁|多大年纪|多少岁|how old", r"岁|出生|born|years old"),
    (r"哪一?年|什么时候|何时|\bwhen\b|what year", r"\d|年|月|日|点|[零一二三四五六七八九十]+[年月日点]"),
    (r"多少钱|价格|票价|收费|how much|price|cost", r"元|块|免费|\$|yuan|free|price"),
    (r"几点|what time", r"点|\d:\d\d|\d+ ?(?:am|pm)"),
    (r"多远|多久|how far|how long", r"米|公里|分钟|小时|天|年|minutes|hours|km|miles|days|years"),
)
# The chat rendering's reference block says a QA pair as "问：Q 答：A"; a reply that echoes the label starts at the answer.
ECHO = re.compile(r"^\s*(?:\d+\.\s*)?(?:(?:问[:：])?[^。！!\n]{0,60}?[？?]\s*答[:：]|答[:：]|(?:Q:)?[^.!\n]{0,120}?\?\s*A:|A:)\s*")
# Characters too common to show that a reply uses its knowledge (grounding counts content tokens only).
FUNCTION_CHARS = set("的了是在我你他她它们也就都和与及或有没不很还又这那吗呢吧啊呀哦么个之其以而啦哈嗯哇呃")


@dataclass(frozen=True)
class ChoiceWeights:
    """How a persona weighs the terms (``generation:`` keys likelihood_weight, post_weight, grounding_weight,
    unsupported_weight, contradiction_weight, copy_weight) and whether it may guess (must_not_guess, decline)."""

    likelihood: float = 1.0
    post: float = 1.0
    grounding: float = 5.0
    unsupported: float = 2.0
    contradiction: float = 4.0
    copy: float = 2.0
    must_not_guess: bool = False
    decline: str = ""

    @classmethod
    def of(cls, persona: Any) -> ChoiceWeights:
        gen = dict(getattr(persona, "generation", {}) or {})
        default = cls()
        return cls(
            likelihood=float(gen.get("likelihood_weight", default.likelihood)),
            post=float(gen.get("post_weight", default.post)),
            grounding=float(gen.get("grounding_weight", default.grounding)),
            unsupported=float(gen.get("unsupported_weight", default.unsupported)),
            contradiction=float(gen.get("contradiction_weight", default.contradiction)),
            copy=float(gen.get("copy_weight", default.copy)),
            must_not_guess=bool(gen.get("must_not_guess", default.must_not_guess)),
            decline=str(gen.get("decline", "") or ""),
        )

    def decline_text(self, language: str) -> str:
        return self.decline or DECLINE.get(language, DECLINE["en"])


@dataclass
class Scored:
    """One candidate with every term of its total."""

    text: str
    model: float  # the model's part: likelihood, post-response, inverse prompting (xdai.rerank.Candidate.total)
    grounded: float
    verdict: Faithfulness
    copied: bool
    total: float

    @property
    def faithful(self) -> bool:
        return self.verdict.faithful

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "model": None if math.isinf(self.model) else round(self.model, 4),
            "grounded": round(self.grounded, 4),
            "copied": self.copied,
            "total": None if math.isinf(self.total) else round(self.total, 4),
            **self.verdict.to_dict(),
        }


@dataclass
class Choice:
    """The reply chosen, how (``"rerank"`` or a fallback: ``"fact"``, ``"decline"``, ``"trim"``), and the candidates."""

    text: str
    how: str
    candidates: list[Scored] = field(default_factory=list)
    chosen: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"how": self.how, "chosen": self.chosen, "text": self.text,
                "candidates": [c.to_json() for c in self.candidates]}


class PromptFacts:
    """What a reply to this prompt may take facts from, indexed once for all its candidates."""

    def __init__(self, prompt: Prompt) -> None:
        self.prompt = prompt
        knowledge, context = prompt_sources(prompt)
        self.support = Support(knowledge, context)
        self.known = {t for t in tokens(" ".join(knowledge)) if not _function(t)}
        self.examples = [_strip_tag(line, prompt) for p in prompt.parts if p.kind == "example"
                         for line in p.text.split("\n")[1:]]
        self.knowledge_text = " ".join(knowledge)

    def choosable(self, text: str) -> bool:
        """Whether this reply is one `choose` may pick with no penalty against it: something left after the label,
        no unsupported or contradicting claim, no copied example line (`xdai.race` stops waiting on much longer
        rivals once such a reply has ended)."""
        text = unecho(text.strip())
        return bool(text) and judge(text, self.support).faithful and not self.copied(text)

    def grounded(self, text: str) -> float:
        """Share of the text's content tokens found in the injected knowledge (0 without knowledge)."""
        toks = [t for t in tokens(text) if not _function(t)]
        return sum(t in self.known for t in toks) / len(toks) if toks else 0.0

    def copied(self, text: str) -> bool:
        """Whether the text repeats a stretch of a persona example line that the knowledge does not hold."""
        squeezed = re.sub(r"\s+", " ", text)
        for example in self.examples:
            if _shares_span(squeezed, example, self.knowledge_text):
                return True
        return False

    def covers(self, fact: str) -> bool:
        """Whether `fact` holds the kind of answer the utterance asks for: "多高" wants a height, "哪一年" a year,
        "多少钱" a price (`ASKS`). A statement, or a question of another kind, is covered by any relevant fact."""
        utterance = next((str(p.why.get("text", "")) for p in self.prompt.parts if p.kind == "utterance"), "")
        return all(re.search(answer, fact, re.IGNORECASE) for ask, answer in ASKS if re.search(ask, utterance, re.IGNORECASE))

    def utterance_fact(self) -> str | None:
        """The retrieved fact for this utterance, as the pack words it for the bot: the QA pair's answer, else the
        best background description."""
        best = None
        for part in self.prompt.parts:
            if part.kind == "knowledge" and part.why.get("for") == "utterance":
                why = part.why
                return str(why.get("a") or why.get("text") or "") or None
            if part.kind == "background" and (best is None or (part.why.get("score") or 0) > (best.why.get("score") or 0)):
                best = part
        if best is not None:
            return str(best.why.get("text") or "") or None
        return None


def score(candidates: Sequence[Any], facts: PromptFacts, weights: ChoiceWeights) -> list[Scored]:
    """Every candidate with its total (see the module's formula); `candidates` carry `.text` and `.total`."""
    out = []
    for cand in candidates:
        text = unecho(cand.text.strip())
        verdict = judge(text, facts.support)
        grounded = facts.grounded(text)
        copied = facts.copied(text) if text else False
        model = float(cand.total)
        total = (model + weights.grounding * grounded - weights.unsupported * len(verdict.unsupported)
                 - weights.contradiction * len(verdict.contradictions) - weights.copy * copied)
        out.append(Scored(text, model, grounded, verdict, copied, total if text else -math.inf))
    return out


def choose(candidates: Sequence[Any], prompt: Prompt, weights: ChoiceWeights, facts: PromptFacts | None = None) -> Choice:
    """The best candidate, or the fallback when every candidate asserts something unsupported (or is empty).
    `facts`: the prompt's, when the caller has indexed them already."""
    facts = facts or PromptFacts(prompt)
    scored = score(candidates, facts, weights)
    usable = [i for i, s in enumerate(scored) if s.text]
    faithful = [i for i in usable if scored[i].faithful]
    if faithful:
        best = max(faithful, key=lambda i: scored[i].total)
        return Choice(scored[best].text, "rerank", scored, best)
    fact = facts.utterance_fact()
    if fact:
        return Choice(state_fact(fact, prompt, covers=facts.covers(fact)), "fact", scored)
    if weights.must_not_guess or not usable:
        return Choice(weights.decline_text(prompt.language), "decline", scored)
    best = max(usable, key=lambda i: scored[i].total)
    trimmed = trim_unsupported(scored[best].text, scored[best].verdict)
    if trimmed:
        return Choice(trimmed, "trim", scored, best)
    return Choice(weights.decline_text(prompt.language), "decline", scored)


def state_fact(fact: str, prompt: Prompt, max_chars: int = 120, *, covers: bool = True) -> str:
    """The fact as a reply: one line, its first sentences up to `max_chars`, whole sentences where possible; led by
    an honest "I only know..." when it does not cover what was asked (`covers`)."""
    text = escape_text(fact, (prompt.bot_speaker, prompt.user_speaker))
    if len(text) > max_chars:
        cut = max((m.end() for m in re.finditer(r"[。！？!?.;；]", text[:max_chars])), default=0)
        text = text[:cut] if cut >= max_chars // 3 else text[: max_chars - 1] + "…"
    return text if covers else PARTLY.get(prompt.language, PARTLY["en"]) + text


def unecho(text: str) -> str:
    """The reply without an echo of the reference block's "问：Q 答：" label (what follows it is the answer)."""
    found = ECHO.match(text)
    return text[found.end() :].strip() if found and found.end() < len(text) else text


def trim_unsupported(text: str, verdict: Faithfulness) -> str:
    """The text without the clauses that carry an unsupported or contradicting claim ('' when none is left)."""
    bad = {c.clause for c in verdict.unsupported} | {x.claim.clause for x in verdict.contradictions}
    pieces = re.split(f"({CLAUSE_SPLIT.pattern})", text)
    kept, out = False, []
    for i in range(0, len(pieces), 2):
        clause = pieces[i]
        sep = pieces[i + 1] if i + 1 < len(pieces) else ""
        if clause.strip() and clause.strip() not in bad:
            out.append(clause + (sep or ""))
            kept = True
    result = "".join(out).strip(" ，,;；")
    return result if kept and len(re.sub(r"\W", "", result)) >= 2 else ""


def _function(token: str) -> bool:
    return (len(token) == 1 and token in FUNCTION_CHARS) or all(unicodedata.category(c)[0] in "PSZ" for c in token)


def _strip_tag(line: str, prompt: Prompt) -> str:
    for speaker in (prompt.bot_speaker, prompt.user_speaker):
        for sep in ("：", ":"):
            if line.startswith(speaker + sep):
                return line[len(speaker) + len(sep) :].strip()
    return line


def _shares_span(text: str, example: str, knowledge: str) -> bool:
    if re.search(r"[\u4e00-\u9fff]", example):
        for i in range(0, max(len(text) - COPY_SPAN + 1, 0)):
            span = text[i : i + COPY_SPAN]
            if span in example and span not in knowledge:
                return True
        return False
    words, mine = example.lower().split(), text.lower().split()
    grams = {tuple(words[i : i + COPY_WORDS]) for i in range(len(words) - COPY_WORDS + 1)}
    return any(tuple(mine[i : i + COPY_WORDS]) in grams for i in range(len(mine) - COPY_WORDS + 1))


__all__ = ["DECLINE", "PARTLY", "Choice", "ChoiceWeights", "PromptFacts", "Scored", "choose", "score", "state_fact",
           "trim_unsupported", "unecho"]
