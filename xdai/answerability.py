"""Answerability: can this bot's knowledge answer the question, or should it say that it does not know?

A single raw-cosine threshold (0.87) was tied to one embedder's compressed similarity scale: a helipad question
scored 0.885 against the parking item and was "answered" with an invention. Here the decision combines what the
retrievers and the words say, per question against the bot's stores:

    dense     the best dense cosine among the hits (question against item text)
    qsim      the best cosine between the question and a hit's own question (or title): a paraphrase scores high
    bm25      log(1 + the best BM25 score): lexical evidence, on a scale of its own
    cover     the best share of the question's key terms that one of the top hits contains
    missing   how many key terms none of the top hits contains (直升机/停机坪 against the parking item)
    lex       the best IDF-weighted share of the question's content characters and bigrams in one top hit
              (IDF over the store's items: a word every item has says little)
    unseen    the IDF-weighted share of those that no item of the store has at all (充电桩, 停机坪)

and a logistic model over the standardised features, calibrated on a labelled set (answerable / unanswerable
questions for one pack: tests/bots/data/answerability_*.jsonl), decides. `fit` calibrates, `evaluate` reports
precision and recall of "answer" (and of "decline") on a held-out part; the calibrated model is a small JSON file
beside the bot's flow (`Answerability.load`). No cross-encoder reranker ships with xdai; a feature for one slots
in as another column.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = ("dense", "qsim", "bm25", "cover", "missing", "lex", "unseen")  # what `evidence_of` computes
DEFAULT_FEATURES = ("dense", "qsim", "lex")  # what a model uses unless told otherwise (chosen by cross-validation)
TOP_K = 5
COVER_K = 3  # cover and bigrams look at this many of the best hits
# Words that say nothing about *what* is asked: question words, politeness, the speakers, generic verbs.
GENERIC = set(
    "请问 请 问 你们 我们 你 我 他 她 它 您 咱们 这里 那里 这个 那个 这边 那边 贵 酒店 公司 可以 能 能够 会 要 需要 想 想要 吗 呢 吧 啊 呀 "
    "什么 怎么 怎么样 怎样 如何 哪里 哪儿 哪些 哪个 哪家 多少 几 几点 多久 多长 多大 有没有 是不是 是否 一下 帮 帮忙 给 有 没有 的 了 "
    "是 在 和 与 或 都 也 还 就 一般 平时 现在 一个 一共 大概 时候 时间 问题 知道 告诉 介绍 一些 情况 样子 怎么办 为什么 叫 名字 "
    "好 多 么 下 上 去 来 到 过 让 被 把 对 跟 从 又 再 最 很 太 一年 每年 每天 几个 几天 几年 一起 主要 开始 适合 有人 "
    "一般来说 具体 通常 大家 东西 地方 事情 事 里 里面 还有 另外 其他".split()
)
NUMERALS = re.compile(r"[0-9零〇一二两三四五六七八九十百千万几每]+")


@lru_cache(maxsize=1)
def _jieba() -> Any:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def key_terms(question: str) -> list[str]:
    """The words that say what is asked: jieba words without the generic ones and numerals, Latin words
    lower-cased."""
    words = []
    for word in _jieba().cut(question):
        word = NUMERALS.sub("", word.strip().lower()) if re.search(r"[\u4e00-\u9fff]", word) else word.strip().lower()
        if not word or word in GENERIC or not re.search(r"[\w\u4e00-\u9fff]", word):
            continue
        if re.fullmatch(r"[\u4e00-\u9fff]", word):  # a single character says little on its own
            continue
        words.append(word)
    return list(dict.fromkeys(words))


def content_tokens(question: str) -> list[str]:
    """The question's content as characters and bigrams (generic words and numerals removed), Latin words whole."""
    out: list[str] = []
    for word in _jieba().cut(question.lower()):
        word = word.strip()
        if not word or word in GENERIC:
            continue
        if re.search(r"[\u4e00-\u9fff]", word):
            word = NUMERALS.sub("", word)
            out += list(word) + [word[i : i + 2] for i in range(len(word) - 1)]
        elif re.fullmatch(r"\w+", word):
            out.append(word)
    return [t for t in dict.fromkeys(out) if t not in GENERIC]


def bigrams(text: str) -> set[str]:
    """The CJK character bigrams of `text`."""
    out: set[str] = set()
    for run in re.findall(r"[\u4e00-\u9fff]+", text):
        out |= {run[i : i + 2] for i in range(len(run) - 1)}
    return out


def _covered(term: str, text: str) -> bool:
    """A key term is in an item when it appears whole, or (a Chinese word) when most of its bigrams do."""
    if term in text:
        return True
    grams = bigrams(term)
    return bool(grams) and sum(g in text for g in grams) * 2 > len(grams)


@dataclass(frozen=True)
class Evidence:
    """What the stores hold for one question: the feature vector and the best hit."""

    question: str
    features: dict[str, float]
    best: Any = None  # the best hit (knowledge.item.Hit), None when nothing came back

    def vector(self, names: Sequence[str] = DEFAULT_FEATURES) -> np.ndarray:
        return np.array([self.features[name] for name in names], dtype=np.float64)


def gather(question: str, stores: Iterable[Any], top_k: int = TOP_K) -> Evidence:
    """Query every store (`KnowledgeSource`, or a `NamedStore` with `.store`) for `question` and compute the
    features over the hits, with each store's embedder (question-to-question similarity) and items (IDF)."""
    hits: list[Any] = []
    qsim = 0.0
    idf: dict[str, float] = {}
    for store in stores:
        source = getattr(store, "store", store)
        found = source.query(question, top_k=top_k, kind=None)
        hits.extend(found)
        qsim = max(qsim, _question_similarity(source, question, found))
        idf.update(_idf(source))
    return evidence_of(question, hits, qsim=qsim, idf=idf)


def _question_similarity(source: Any, question: str, hits: Sequence[Any]) -> float:
    embedder = getattr(source, "embedder", None)
    asked = [h.item.q or h.item.title or "" for h in hits]
    asked = [a for a in asked if a]
    if embedder is None or not asked:
        return 0.0
    vectors = embedder.encode([question, *asked], role="query")
    return float(max(vectors[1:] @ vectors[0]))


_IDF_CACHE: dict[int, dict[str, float]] = {}


def _idf(source: Any) -> dict[str, float]:
    """log((N + 1) / (df + 1)) + 1 of every character and bigram over the store's items (memoised per store)."""
    items = getattr(source, "items", None)
    if not items:
        return {}
    key = id(source)
    if key not in _IDF_CACHE:
        df: dict[str, int] = {}
        for item in items:
            text = item.text.lower()
            grams = set(text) | {text[i : i + 2] for i in range(len(text) - 1)} | set(re.findall(r"[a-z0-9]+", text))
            for g in grams:
                df[g] = df.get(g, 0) + 1
        n = len(items)
        _IDF_CACHE[key] = {g: math.log((n + 1) / (d + 1)) + 1.0 for g, d in df.items()}
    return _IDF_CACHE[key]


def evidence_of(question: str, hits: Sequence[Any], *, qsim: float = 0.0, idf: dict[str, float] | None = None
                ) -> Evidence:
    """The features of `question` against retrieved `hits` (each with `.item` and `.why`)."""
    idf = idf or {}

    def dense(hit: Any) -> float:
        value = (getattr(hit, "why", {}) or {}).get("dense_score")
        return float(value) if value is not None else 0.0

    def bm25(hit: Any) -> float:
        value = (getattr(hit, "why", {}) or {}).get("bm25_score")
        return float(value) if value is not None else 0.0

    def text_of(hit: Any) -> str:
        item = hit.item
        return " ".join(t for t in (item.title, item.q, item.a, item.text) if t).lower()

    ranked = sorted(hits, key=lambda h: -dense(h))
    terms = key_terms(question)
    tokens = content_tokens(question)
    unseen = math.log(len(idf) + 2) + 1.0 if idf else 1.0  # a token no item has weighs the most
    weight = {t: idf.get(t, unseen) for t in tokens}
    texts = [text_of(h) for h in ranked[:COVER_K]]
    all_texts = " ".join(text_of(h) for h in ranked[:TOP_K])
    cover = max((sum(_covered(t, x) for t in terms) / len(terms) for x in texts), default=0.0) if terms else 1.0
    missing = float(sum(not _covered(t, all_texts) for t in terms))
    total = sum(weight.values())
    lex = max((sum(w for t, w in weight.items() if t in x) / total for x in texts), default=0.0) if total else 0.0
    unseen = sum(w for t, w in weight.items() if idf and t not in idf) / total if total else 0.0
    features = {
        "dense": max((dense(h) for h in hits), default=0.0),
        "qsim": qsim,
        "bm25": math.log1p(max((bm25(h) for h in hits), default=0.0)),
        "cover": cover,
        "missing": missing,
        "lex": lex,
        "unseen": unseen,
    }
    return Evidence(question, features, ranked[0] if ranked else None)


@dataclass
class Verdict:
    answerable: bool
    probability: float
    evidence: Evidence

    def to_json(self) -> dict[str, Any]:
        best = self.evidence.best
        return {"answerable": self.answerable, "probability": round(self.probability, 4),
                "features": {k: round(v, 4) for k, v in self.evidence.features.items()},
                "best": None if best is None else best.item.id}


@dataclass
class Answerability:
    """A calibrated logistic model over some of `FEATURES`: P(answerable) = sigmoid(w · standardise(x) + b)."""

    features: list[str]
    weights: list[float]
    bias: float
    mean: list[float]
    std: list[float]
    threshold: float = 0.5
    report: dict[str, Any] = field(default_factory=dict)  # how it was calibrated and how it did on held-out data

    def probability(self, evidence: Evidence) -> float:
        x = (evidence.vector(self.features) - np.array(self.mean)) / np.array(self.std)
        return float(1.0 / (1.0 + math.exp(-(float(np.dot(self.weights, x)) + self.bias))))

    def judge(self, question: str, stores: Iterable[Any]) -> Verdict:
        evidence = gather(question, stores)
        p = self.probability(evidence)
        return Verdict(p >= self.threshold, p, evidence)

    def to_json(self) -> dict[str, Any]:
        return {"features": list(self.features), "weights": [round(w, 6) for w in self.weights], "bias": round(self.bias, 6),
                "mean": [round(m, 6) for m in self.mean], "std": [round(s, 6) for s in self.std],
                "threshold": self.threshold, "report": self.report}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Answerability:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        unknown = [f for f in data.get("features", []) if f not in FEATURES]
        if unknown or not data.get("features"):
            raise ValueError(f"{path}: calibrated on features {data.get('features')}, this xdai computes {FEATURES}")
        return cls(list(data["features"]), data["weights"], data["bias"], data["mean"], data["std"],
                   data.get("threshold", 0.5), data.get("report", {}))


def fit(examples: Sequence[tuple[Evidence, bool]], *, features: Sequence[str] = DEFAULT_FEATURES, l2: float = 20.0,
        steps: int = 3000, lr: float = 0.5) -> Answerability:
    """Logistic regression on standardised `features` (full-batch gradient descent, L2 `l2` / n): deterministic."""
    x = np.stack([e.vector(features) for e, _ in examples])
    y = np.array([1.0 if label else 0.0 for _, label in examples])
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-9] = 1.0
    z = (x - mean) / std
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        w -= lr * (z.T @ (p - y) / len(y) + l2 * w / len(y))
        b -= lr * float(np.mean(p - y))
    return Answerability(list(features), [float(v) for v in w], float(b), [float(v) for v in mean],
                         [float(v) for v in std])


def split(rows: Sequence[Any], every: int = 3) -> tuple[list[Any], list[Any]]:
    """(calibration, held-out): every `every`-th example of each class is held out, in file order."""
    calibrate: list[Any] = []
    held: list[Any] = []
    counts: dict[Any, int] = {}
    for row in rows:
        label = row[1] if isinstance(row, tuple) else row["answerable"]
        counts[label] = counts.get(label, 0) + 1
        (held if counts[label] % every == 0 else calibrate).append(row)
    return calibrate, held


def evaluate(model: Answerability, examples: Sequence[tuple[Evidence, bool]]) -> dict[str, float]:
    """Precision and recall of "answer" (positive: answerable) and of "decline" (positive: unanswerable)."""
    said = [model.probability(e) >= model.threshold for e, _ in examples]
    truth = [label for _, label in examples]
    tp = sum(s and t for s, t in zip(said, truth, strict=True))
    tn = sum(not s and not t for s, t in zip(said, truth, strict=True))
    fp = sum(s and not t for s, t in zip(said, truth, strict=True))
    fn = sum(not s and t for s, t in zip(said, truth, strict=True))
    return {
        "n": len(examples),
        "answer_precision": tp / (tp + fp) if tp + fp else 0.0,
        "answer_recall": tp / (tp + fn) if tp + fn else 0.0,
        "decline_precision": tn / (tn + fn) if tn + fn else 0.0,
        "decline_recall": tn / (tn + fp) if tn + fp else 0.0,
        "accuracy": (tp + tn) / len(examples) if examples else 0.0,
    }


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    """A labelled set: one {"q": ..., "answerable": true|false} per line."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def calibrate(labels: Sequence[dict[str, Any]], stores: Sequence[Any], *, source: str = "",
              features: Sequence[str] = DEFAULT_FEATURES) -> Answerability:
    """Fit on the calibration part of `labels` against `stores`, evaluate on the held-out part, keep the report."""
    train_rows, held_rows = split(labels)
    train = [(gather(r["q"], stores), bool(r["answerable"])) for r in train_rows]
    held = [(gather(r["q"], stores), bool(r["answerable"])) for r in held_rows]
    model = fit(train, features=features)
    model.report = {"labels": source, "calibration": evaluate(model, train), "held_out": evaluate(model, held)}
    return model


__all__ = ["DEFAULT_FEATURES", "FEATURES", "Answerability", "Evidence", "Verdict", "calibrate", "evaluate", "evidence_of", "fit",
           "gather", "key_terms", "read_labels", "split"]
