"""Pairwise human evaluation as ACUTE-Eval runs it: the same context, two replies, randomised sides, checks.

A `Study` is a list of `PairTask`s and the `Question`s raters answer about each; a `Judgment` is one rater's answer
to one question on one task. Sides are randomised when the study is built and recorded in the task, so a report
maps "left"/"right" back to the two systems. Known-answer checks (a gold reply against an obviously broken one)
are mixed in; a rater who fails them is dropped from the report. The Turing question ("which did a human write?")
is reported as the share of times the bot's reply was taken for the human's — the seed's inverse-prompting poems
were chosen 45.2% of the time against real poets.

Sources of tasks: an `xdai eval kdconv` report (the bot's reply against the human gold reply of the same turn, or
configuration A against configuration B) or any JSONL of conversations answered by two systems.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from xdai.eval.stats import Interval, binomial_two_sided, cohen_kappa, fleiss_kappa, wilson_interval

HUMAN = "human"
BROKEN = "broken"
Answer = Literal["left", "right", "tie", "skip"]
CHOICES = ("left", "right", "tie", "skip")


class StudyError(ValueError):
    """A study, report or judgment is malformed; the message names the file or field."""


STUDY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # also its file name (<id>.json) and its link


def study_file(eval_dir: str | Path, study_id: str) -> Path:
    """Where study `study_id` lives under `eval_dir`; a name that could leave the folder is refused."""
    if not STUDY_ID.match(study_id) or ".." in study_id:
        raise StudyError(f"study id {study_id!r}: use letters, digits, '_', '-' or '.' (at most 100)")
    return Path(eval_dir) / f"{study_id}.json"


@dataclass(frozen=True)
class Question:
    """What raters are asked about each pair. `turing`: which reply a human wrote (no ties offered)."""

    id: str
    text: str
    turing: bool = False
    scale: bool = False  # also ask a 1-5 rating of each reply


TURING = Question("human", "Which reply was written by a person?", turing=True)
ENGAGING = Question("engaging", "Which speaker would you rather talk to for a long conversation?")
INFORMATIVE = Question("informative", "Which reply is more informative?")
FAITHFUL = Question("faithful", "Which reply is more faithful to the knowledge shown?")
QUESTIONS = {q.id: q for q in (TURING, ENGAGING, INFORMATIVE, FAITHFUL)}


@dataclass(frozen=True)
class Side:
    source: str  # "human", a configuration, a bot, or "broken" in a check
    text: str


@dataclass(frozen=True)
class PairTask:
    id: str
    context: list[dict[str, str]]  # [{"speaker": "user" | "bot", "text": ...}], ending with the user's turn
    knowledge: list[str]
    left: Side
    right: Side
    check: bool = False  # a known-answer check: the non-broken side is the right answer

    def source_of(self, answer: str) -> str | None:
        return self.left.source if answer == "left" else self.right.source if answer == "right" else None

    def expected(self) -> str | None:
        if not self.check:
            return None
        return "left" if self.right.source == BROKEN else "right"


@dataclass
class Study:
    id: str
    title: str
    systems: tuple[str, str]  # the two sources compared, in a fixed order for the report
    questions: list[Question]
    tasks: list[PairTask]
    show_knowledge: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    def task(self, task_id: str) -> PairTask:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise StudyError(f"study {self.id}: no task {task_id!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "study") -> Study:
        try:
            return cls(
                id=str(data["id"]), title=str(data["title"]), systems=tuple(data["systems"]),
                questions=[Question(**q) for q in data["questions"]],
                tasks=[PairTask(id=t["id"], context=t["context"], knowledge=t["knowledge"], left=Side(**t["left"]),
                                right=Side(**t["right"]), check=bool(t.get("check", False))) for t in data["tasks"]],
                show_knowledge=bool(data.get("show_knowledge", True)), meta=dict(data.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StudyError(f"{where}: not a study ({type(exc).__name__}: {exc})") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Study:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise StudyError(f"{path}: {exc}") from None
        return cls.from_json(data, str(path))


@dataclass(frozen=True)
class Judgment:
    study: str
    task: str
    rater: str
    question: str
    answer: str  # left | right | tie | skip
    scores: tuple[int, int] | None = None  # optional 1-5 ratings of (left, right)
    judge: bool = False  # given by an automatic judge, kept apart from people's


def broken_reply(text: str, rng: random.Random) -> str:
    """An obviously broken reply for a known-answer check: the words (or characters) of a real one, shuffled and
    stuttered, so that its length and vocabulary give nothing away but no person would write it."""
    units = text.split() if " " in text.strip() else list(text.strip())
    rng.shuffle(units)
    half = units[: max(1, len(units) // 2)]
    joiner = " " if " " in text.strip() else ""
    return joiner.join(half + half)


def _task_id(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:12]


def _pair(task_id: str, context: list[dict[str, str]], knowledge: list[str], a: Side, b: Side, rng: random.Random,
          check: bool = False) -> PairTask:
    left, right = (a, b) if rng.random() < 0.5 else (b, a)
    return PairTask(task_id, context, knowledge, left, right, check)


def tasks_from_kdconv(report: dict[str, Any], *, against: str = HUMAN, config: str = "full", other: str | None = None,
                      seed: int = 0, checks: int = 3, limit: int | None = None) -> tuple[list[PairTask], tuple[str, str]]:
    """Pairs from an `xdai eval kdconv --json` report: `config`'s reply against the human gold reply of the same
    turn (the Turing question), or against configuration `other`. `checks` known-answer pairs are mixed in."""
    turns = report.get("turns")
    if not isinstance(turns, list) or not turns:
        raise StudyError("kdconv report: no turns (expected the JSON of `xdai eval kdconv --json`)")
    rng = random.Random(seed)
    b_name = against if other is None else other
    tasks: list[PairTask] = []
    for n, turn in enumerate(turns[:limit] if limit else turns):
        replies = turn.get("replies") or {}
        if config not in replies or (other is not None and other not in replies):
            raise StudyError(f"kdconv report: turn {n} has no reply for {config!r}"
                             + (f" or {other!r}" if other else "") + f" (configs: {sorted(replies)})")
        context = [m for ex in turn.get("history", []) for m in
                   ({"speaker": "user", "text": ex["user"]}, {"speaker": "bot", "text": ex["bot"]}) if m["text"]]
        context.append({"speaker": "user", "text": turn["utterance"]})
        b_text = turn["gold"] if other is None else replies[other]
        tid = _task_id(str(turn.get("dialogue")), str(turn.get("message")), config, b_name)
        tasks.append(_pair(tid, context, list(turn.get("knowledge", [])), Side(config, replies[config]),
                           Side(b_name, b_text), rng))
    _add_checks(tasks, rng, checks)
    return tasks, (config, b_name)


def tasks_from_conversations(rows: Iterable[dict[str, Any]], a: str, b: str, *, seed: int = 0,
                             checks: int = 3) -> list[PairTask]:
    """Pairs from conversations answered by two systems: each row {"id", "context": [{speaker, text}],
    "knowledge": [...], "replies": {a: text, b: text}}."""
    rng = random.Random(seed)
    tasks = []
    for n, row in enumerate(rows):
        replies = row.get("replies") or {}
        if a not in replies or b not in replies:
            raise StudyError(f"conversations row {n + 1}: replies need {a!r} and {b!r} (have {sorted(replies)})")
        tasks.append(_pair(_task_id(str(row.get("id", n)), a, b), list(row["context"]), list(row.get("knowledge", [])),
                           Side(a, replies[a]), Side(b, replies[b]), rng))
    _add_checks(tasks, rng, checks)
    return tasks


def _add_checks(tasks: list[PairTask], rng: random.Random, count: int) -> None:
    """Known-answer checks built from real pairs' texts, inserted at random places."""
    sources = [t for t in tasks if not t.check]
    for i in range(min(count, len(sources))):
        base = sources[rng.randrange(len(sources))]
        good = base.left if base.left.source == HUMAN else base.right if base.right.source == HUMAN else base.left
        check = _pair(f"check-{i}-{base.id}", base.context, base.knowledge, Side(good.source, good.text),
                      Side(BROKEN, broken_reply(good.text, rng)), rng, check=True)
        tasks.insert(rng.randrange(len(tasks) + 1), check)


@dataclass(frozen=True)
class WinRate:
    question: str
    systems: tuple[str, str]
    wins: tuple[int, int]
    ties: int
    skips: int
    rate: float  # share of decided answers won by systems[0]
    interval: Interval
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "systems": list(self.systems), "wins": list(self.wins),
                "interval": [self.interval.low, self.interval.high]}


def failed_raters(study: Study, judgments: Sequence[Judgment], *, max_failures: int = 0) -> set[str]:
    """Raters who answered known-answer checks wrongly more than `max_failures` times (skips do not count)."""
    wrong: Counter[str] = Counter()
    for j in judgments:
        task = study.task(j.task)
        if task.check and j.answer in ("left", "right", "tie") and j.answer != task.expected():
            wrong[j.rater] += 1
    return {r for r, n in wrong.items() if n > max_failures}


def report(study: Study, judgments: Sequence[Judgment]) -> dict[str, Any]:
    """Per question: win rates with Wilson intervals and binomial tests, ties and skips apart, agreement; the
    Turing share; raters dropped by the checks. People's and a judge's judgments are reported side by side."""
    people = [j for j in judgments if not j.judge]
    judge = [j for j in judgments if j.judge]
    dropped = failed_raters(study, people)
    out: dict[str, Any] = {"study": study.id, "title": study.title, "systems": list(study.systems),
                           "tasks": sum(1 for t in study.tasks if not t.check),
                           "raters": sorted({j.rater for j in people} - dropped), "dropped_raters": sorted(dropped),
                           "questions": {}}
    for q in study.questions:
        kept = [j for j in people if j.question == q.id and j.rater not in dropped and not study.task(j.task).check]
        entry: dict[str, Any] = {"text": q.text, "people": _win_rate(study, q, kept).to_dict(),
                                 "agreement": _agreement(kept)}
        if q.turing:
            entry["taken_for_human"] = _turing_share(study, kept)
        if judge:
            jq = [j for j in judge if j.question == q.id and not study.task(j.task).check]
            entry["judge"] = _win_rate(study, q, jq).to_dict()
            entry["judge_agreement_with_people"] = _majority_agreement(kept, jq)
        out["questions"][q.id] = entry
    return out


def _latest(judgments: Iterable[Judgment]) -> list[Judgment]:
    """One answer per (rater, task, question): answering twice does not count twice (the last answer stands)."""
    last: dict[tuple[str, str, str], Judgment] = {}
    for j in judgments:
        last[(j.rater, j.task, j.question)] = j
    return list(last.values())


def _win_rate(study: Study, q: Question, judgments: Sequence[Judgment]) -> WinRate:
    a, b = study.systems
    wins = Counter[str]()
    ties = skips = 0
    for j in _latest(judgments):
        if j.answer == "skip":
            skips += 1
        elif j.answer == "tie":
            ties += 1
        else:
            winner = study.task(j.task).source_of(j.answer)
            if winner is not None:
                wins[winner] += 1
    n = wins[a] + wins[b]
    return WinRate(q.id, (a, b), (wins[a], wins[b]), ties, skips, wins[a] / n if n else 0.0,
                   wilson_interval(wins[a], n), binomial_two_sided(wins[a], n))


def _turing_share(study: Study, judgments: Sequence[Judgment]) -> dict[str, Any]:
    """How often the non-human side was picked as the human's, among decided answers on human-vs-bot pairs."""
    fooled = decided = 0
    for j in _latest(judgments):
        task = study.task(j.task)
        if HUMAN not in (task.left.source, task.right.source) or j.answer not in ("left", "right"):
            continue
        decided += 1
        fooled += task.source_of(j.answer) != HUMAN
    iv = wilson_interval(fooled, decided)
    return {"share": fooled / decided if decided else 0.0, "n": decided, "interval": [iv.low, iv.high],
            "seed_bar": 0.452}


def _agreement(judgments: Sequence[Judgment]) -> dict[str, Any]:
    by_item: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for j in _latest(judgments):
        if j.answer != "skip":
            by_item[(j.task, j.question)][j.rater] = j.answer
    fleiss = fleiss_kappa([Counter(r.values()) for r in by_item.values()])
    raters = sorted({r for item in by_item.values() for r in item})
    pairs = {}
    for i, r1 in enumerate(raters):
        for r2 in raters[i + 1:]:
            shared = [item for item in by_item.values() if r1 in item and r2 in item]
            kappa = cohen_kappa([s[r1] for s in shared], [s[r2] for s in shared])
            if kappa is not None:
                pairs[f"{r1}|{r2}"] = kappa
    return {"fleiss_kappa": fleiss, "cohen_kappa": pairs}


def _majority_agreement(people: Sequence[Judgment], judge: Sequence[Judgment]) -> float | None:
    """Share of tasks where the judge's answer equals the people's majority answer (tasks both answered)."""
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    for j in _latest(people):
        if j.answer != "skip":
            votes[j.task][j.answer] += 1
    judged = {j.task: j.answer for j in _latest(judge)}
    shared = [t for t in judged if t in votes]
    if not shared:
        return None
    return sum(votes[t].most_common(1)[0][0] == judged[t] for t in shared) / len(shared)
