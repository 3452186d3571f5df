"""Precision and recall of an extractor on a labelled set of user utterances (JSONL: text, lang, facts).

A predicted fact is correct when its slot is the gold slot and its value matches the gold value: equal once
normalised, or one containing the other where the shorter is at least half the longer ("去日本旅游" for
"下个月去日本旅游"). Each gold fact is matched at most once.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xdai.memory.items import Fact, normalize


@dataclass
class Labelled:
    text: str
    lang: str
    facts: list[tuple[str, str]]  # (slot, value)


def load_labelled(path: str | Path) -> list[Labelled]:
    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        try:
            out.append(Labelled(row["text"], row["lang"], [(f["slot"], f["value"]) for f in row["facts"]]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: expected text, lang and facts [{{slot, value}}]: {exc}") from None
    return out


def value_match(predicted: str, gold: str) -> bool:
    p, g = normalize(predicted), normalize(gold)
    if p == g:
        return True
    short, long = sorted((p, g), key=len)
    return bool(short) and short in long and len(short) * 2 >= len(long)


@dataclass
class Score:
    true_positives: int = 0
    predicted: int = 0
    gold: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # what was wrong or missed, per utterance

    @property
    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.gold if self.gold else 1.0

    def to_json(self) -> dict[str, Any]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4), "tp": self.true_positives,
                "predicted": self.predicted, "gold": self.gold}


def score_one(predicted: Iterable[Fact], gold: list[tuple[str, str]], score: Score, text: str) -> None:
    left = list(gold)
    wrong = []
    predicted = list(predicted)
    for fact in predicted:
        hit = next((g for g in left if g[0] == fact.slot and value_match(fact.label, g[1])), None)
        if hit is None:
            wrong.append((fact.slot, fact.label))
        else:
            left.remove(hit)
            score.true_positives += 1
    score.predicted += len(predicted)
    score.gold += len(gold)
    if wrong or left:
        score.errors.append({"text": text, "wrong": wrong, "missed": left})


def evaluate(rows: list[Labelled], extract: Callable[[str, str], list[Fact]]) -> Score:
    score = Score()
    for row in rows:
        score_one(extract(row.text, row.lang), row.facts, score, row.text)
    return score


async def evaluate_async(rows: list[Labelled], extract: Callable[[str, str], Awaitable[list[Fact]]]) -> Score:
    score = Score()
    for row in rows:
        score_one(await extract(row.text, row.lang), row.facts, score, row.text)
    return score
