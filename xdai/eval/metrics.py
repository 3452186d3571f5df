"""Reply metrics: BLEU (sacrebleu, `zh` tokenizer), unigram F1, knowledge-F1, Distinct-1/2.

Every metric sees the same tokens: sacrebleu's Chinese tokenizer (one token per CJK character, words and numbers
kept whole), so F1 and BLEU agree on what a token is. Punctuation tokens are left out of the overlap metrics:
two replies should not look alike because both end with "。".
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import sacrebleu
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh


@lru_cache(maxsize=1)
def _tokenizer() -> TokenizerZh:
    return TokenizerZh()


def tokens(text: str) -> list[str]:
    """sacrebleu's `zh` tokens of `text`, punctuation-only tokens removed."""
    return [t for t in _tokenizer()(text or "").split() if not all(unicodedata.category(c)[0] in "PS" for c in t)]


def unigram_f1(hypothesis: str, reference: str) -> float:
    """Token-overlap F1 (clipped counts) between two texts; 0 when either is empty."""
    hyp, ref = Counter(tokens(hypothesis)), Counter(tokens(reference))
    overlap = sum((hyp & ref).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(hyp.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def knowledge_f1(hypothesis: str, knowledge: Sequence[str]) -> float:
    """F1 of the reply's tokens against the gold knowledge (the attribute values it should have used)."""
    return unigram_f1(hypothesis, " ".join(knowledge))


def distinct(texts: Sequence[str], n: int) -> float:
    """Distinct-n: distinct n-grams over all n-grams, across all replies (0 when there are none)."""
    grams: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        toks = tokens(text)
        grams.update(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) with sacrebleu's `zh` tokenizer."""
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize="zh").score)


def summarise(hypotheses: Sequence[str], references: Sequence[str], knowledge: Sequence[Sequence[str]]) -> dict[str, float]:
    """All metrics for one configuration; F1 and knowledge-F1 are means over turns."""
    count = len(hypotheses)
    mean = (lambda xs: sum(xs) / count) if count else (lambda xs: 0.0)
    return {
        "turns": count,
        "f1": mean([unigram_f1(h, r) for h, r in zip(hypotheses, references, strict=True)]),
        "bleu": corpus_bleu(hypotheses, references),
        "distinct_1": distinct(hypotheses, 1),
        "distinct_2": distinct(hypotheses, 2),
        "knowledge_f1": mean([knowledge_f1(h, k) for h, k in zip(hypotheses, knowledge, strict=True)]),
    }
