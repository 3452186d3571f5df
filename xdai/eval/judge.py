"""An automatic judge for pairwise studies, for when no people are at hand.

A model is asked the study's question about each pair twice, once with each reply first. Language models prefer
a position (usually the first), so a side wins only when both orders pick it; when they disagree the judgment is a
tie. The judge answers either by generating (a strong instruct model behind any backend: "A" or "B") or by scoring
(which of " A" / " B" the model finds likelier: deterministic, and usable with a small base model).
Its judgments are flagged `judge=True`, so the report keeps them apart from people's and measures their agreement.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from xdai.eval.pairs import Judgment, PairTask, Question, Side, Study
from xdai.generation import GenerationSettings, Infill

METHODS = ("generate", "score")
_LEADING = re.compile(r"^\W*(?:(?:reply|answer|response|回复|答案)\s*[:：]?\s*)?\W*([AB])(?![A-Za-z])", re.IGNORECASE)
_NAMED = re.compile(r"(?:reply|response|回复)\s*([AB])(?![A-Za-z])", re.IGNORECASE)


@dataclass(frozen=True)
class JudgeSettings:
    method: str = "generate"  # generate | score
    max_tokens: int = 8
    context_turns: int = 6  # the last turns of the dialogue shown with the pair
    seed: int = 0


def judge_prompt(study: Study, task: PairTask, question: Question, first: Side, second: Side,
                 context_turns: int = 6) -> str:
    """The question about one order of the pair, as plain text any model (base or instruct) can continue."""
    lines = ["You compare two candidate replies in a dialogue and answer a question about them."]
    if task.context:
        lines += ["", "Dialogue so far:"]
        lines += [f"{'User' if m['speaker'] == 'user' else 'Bot'}: {m['text']}" for m in task.context[-context_turns:]]
    if task.knowledge and (study.show_knowledge or question.id == "faithful"):
        lines += ["", "Knowledge the replies may use:"] + [f"- {k}" for k in task.knowledge]
    lines += ["", f"Reply A: {first.text}", f"Reply B: {second.text}", "", f"Question: {question.text}",
              "Answer with one letter, A or B.", "Answer:"]
    return "\n".join(lines)


def parse_choice(text: str) -> str | None:
    """"A" or "B" from a generated answer ("B", "Reply A.", "回复B"), or None when it names neither clearly."""
    m = _LEADING.match(text) or _NAMED.search(text)
    return m.group(1).upper() if m else None


@dataclass
class Tally:
    """What a judging run did: verdicts, the orders' disagreements, answers that named no reply, checks passed."""

    verdicts: Counter[str] = field(default_factory=Counter)  # left | right | tie
    disagreed: int = 0
    unparsed: int = 0
    checks: int = 0
    checks_passed: int = 0


class PairJudge:
    """Asks `backend` (the `xdai.backends` protocol: fill and score) each question with both orders."""

    def __init__(self, backend: Any, name: str, settings: JudgeSettings | None = None) -> None:
        self.backend, self.name = backend, name
        self.settings = settings or JudgeSettings()
        if self.settings.method not in METHODS:
            raise ValueError(f"judge method {self.settings.method!r}: choose one of {', '.join(METHODS)}")
        self.tally = Tally()

    @property
    def rater(self) -> str:
        return f"judge:{self.name}:{self.settings.method}"

    def choose(self, prompt: str) -> str | None:
        """The letter the model picks for one order, or None."""
        if self.settings.method == "score":
            a, b = self.backend.score(prompt, " A"), self.backend.score(prompt, " B")
            return None if a == b else "A" if a > b else "B"
        settings = GenerationSettings(temperature=0.0, top_p=1.0, top_k=1, repetition_penalty=1.0,
                                      max_tokens=self.settings.max_tokens, stop=["\n"], seed=self.settings.seed)
        text = asyncio.run(_collect(self.backend.fill(Infill(prompt), settings)))
        choice = parse_choice(text)
        if choice is None:
            self.tally.unparsed += 1
        return choice

    def verdict(self, study: Study, task: PairTask, question: Question) -> tuple[str, tuple[str | None, str | None]]:
        """("left" | "right" | "tie", (the first order's pick, the second's)), both as sides of the task."""
        n = self.settings.context_turns
        first = self.choose(judge_prompt(study, task, question, task.left, task.right, n))
        second = self.choose(judge_prompt(study, task, question, task.right, task.left, n))
        picks = ({"A": "left", "B": "right"}.get(first or ""), {"A": "right", "B": "left"}.get(second or ""))
        answer = picks[0] if picks[0] is not None and picks[0] == picks[1] else "tie"
        if answer == "tie" and picks[0] is not None and picks[1] is not None:
            self.tally.disagreed += 1
        return answer, picks

    def run(self, study: Study, *, done: Iterable[tuple[str, str]] = (),
            progress: Callable[[], None] | None = None) -> Iterator[Judgment]:
        """Judgments for every (task, question) not in `done`, one at a time, so a caller can store each as it
        comes (a long run can stop and resume)."""
        skip = set(done)
        for task in study.tasks:
            for question in study.questions:
                if (task.id, question.id) in skip:
                    continue
                answer, _ = self.verdict(study, task, question)
                self.tally.verdicts[answer] += 1
                if task.check:
                    self.tally.checks += 1
                    self.tally.checks_passed += answer == task.expected()
                yield Judgment(study.id, task.id, self.rater, question.id, answer, judge=True)
                if progress:
                    progress()


async def _collect(pieces: Any) -> str:
    out = []
    async for piece in pieces:
        out.append(piece)
    return "".join(out)
