"""Reranking sampled replies: the post-response infill score and the seed's inverse prompting.

A causal model cannot fill `before [MASK] after` directly, so we realise it honestly: sample `n` replies for the
mask from `before` alone, then rescore each candidate by how well the grounded post-response follows it,

    post(c)    = log P(after | before + c)                        the condition, stated as the user's next line

and, optionally, by inverse prompting (Zou et al., KDD 2021, used by XDAI): how well the reply predicts the question
it answers, under an inverse prompt, combined with the forward likelihood of the reply itself,

    inverse(c) = log P(question | inverse_prompt(c))
    forward(c) = log P(c | before) / len(c)                         per character, so length does not decide

    total(c)   = post_weight * post(c) + forward_weight * forward(c) + inverse.weight * inverse(c)

Every candidate is scored against the same `after` and the same `question`, so the sums compare like with like.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from xdai.backends.base import Backend, GenerationSettings, Infill

INVERSE_TEMPLATES = {
    "zh": "回答：{reply}\n这句回答所回应的话是：{question}",
    "en": "Reply: {reply}\nThe message this reply answers: {question}",
}


@dataclass
class InversePrompt:
    """How to ask "which question does this reply answer?"; `{reply}` comes before `{question}`, which is scored."""

    question: str
    template: str = INVERSE_TEMPLATES["zh"]
    weight: float = 1.0

    def __post_init__(self) -> None:
        if "{question}" not in self.template or "{reply}" not in self.template.split("{question}", 1)[0]:
            raise ValueError(f"inverse prompt template needs {{reply}} before {{question}}: {self.template!r}")

    @classmethod
    def for_language(cls, question: str, language: str = "zh", weight: float = 1.0) -> InversePrompt:
        return cls(question, INVERSE_TEMPLATES.get(language.split("-")[0], INVERSE_TEMPLATES["en"]), weight)

    def split(self, reply: str) -> tuple[str, str]:
        """(context, continuation) for `Backend.score`; plain substitution, so braces in text are harmless."""
        head = self.template.split("{question}", 1)[0]
        return head.replace("{reply}", reply), self.question


@dataclass
class Candidate:
    text: str
    post: float | None = None
    forward: float | None = None
    inverse: float | None = None
    total: float = 0.0


@dataclass
class RerankResult:
    best: Candidate
    candidates: list[Candidate] = field(default_factory=list)  # in sampling order


async def generate_reranked(
    backend: Backend,
    infill: Infill,
    settings: GenerationSettings,
    n: int,
    *,
    post_weight: float = 1.0,
    forward_weight: float | None = None,
    inverse: InversePrompt | None = None,
) -> RerankResult:
    """Sample `n` fills of the mask and return them scored, best first in `.best`.

    `forward_weight` defaults to 1 when inverse prompting is on or there is no post-response to rank by, else 0.
    Sample i uses seed `settings.seed + i` when a seed is given, so a seeded call is reproducible.
    """
    if n < 1:
        raise ValueError(f"rerank needs n >= 1 candidates, got {n}")
    texts = await sample_candidates(backend, infill, settings, n)
    return await rerank(
        backend, infill, texts, post_weight=post_weight, forward_weight=forward_weight, inverse=inverse
    )


async def rerank(
    backend: Backend,
    infill: Infill,
    texts: list[str],
    *,
    post_weight: float = 1.0,
    forward_weight: float | None = None,
    inverse: InversePrompt | None = None,
) -> RerankResult:
    """Score given fills of the mask (from any source) with the formula above."""
    if not texts:
        raise ValueError("rerank needs at least one candidate")
    if forward_weight is None:
        forward_weight = 1.0 if (inverse is not None or not infill.after) else 0.0
    distinct = list(dict.fromkeys(texts))  # score each distinct text once, all at the same time (a batching
    # backend scores them in one batch)
    scores = await asyncio.gather(*(score_candidate(backend, infill, t, post_weight=post_weight,
                                                    forward_weight=forward_weight, inverse=inverse) for t in distinct))
    scored: dict[str, Candidate] = dict(zip(distinct, scores, strict=True))
    candidates = [dataclasses.replace(scored[t]) for t in texts]
    best = max(candidates, key=lambda c: c.total)
    return RerankResult(best=best, candidates=candidates)


def _scorer(backend: Backend, infill: Infill) -> Callable[[str, str], float]:
    """`backend.score`, told that a chat-template rendering's markers are special tokens (`Infill.special`)."""
    if infill.special:
        return functools.partial(backend.score, special=True)  # type: ignore[call-arg]
    return backend.score


async def sample_candidates(backend: Backend, infill: Infill, settings: GenerationSettings, n: int) -> list[str]:
    """`n` fills of the mask, sample i with seed `settings.seed + i`: the streams of `candidate_streams`, read
    concurrently to their ends."""

    async def join(pieces: AsyncIterator[str]) -> str:
        return "".join([piece async for piece in pieces])

    return list(await asyncio.gather(*(join(stream) for stream in candidate_streams(backend, infill, settings, n))))


def candidate_streams(backend: Backend, infill: Infill, settings: GenerationSettings, n: int) -> list[AsyncIterator[str]]:
    """`n` streams of fills of the mask to read side by side (`xdai.race`), stream i with seed `settings.seed + i`.
    A backend that decodes candidates together (`fill_candidates`: llama_cpp's engine shares the prompt's
    evaluation, hf uses one `generate` call) gets them as one request; any other gets `n` requests (an
    OpenAI-compatible server batches concurrent ones itself)."""
    seeded = [dataclasses.replace(settings, seed=None if settings.seed is None else settings.seed + i) for i in range(n)]
    # looked up on the class: a wrapper that overrides `fill` and forwards the rest must not be bypassed
    many = getattr(backend, "fill_candidates", None) if hasattr(type(backend), "fill_candidates") else None
    if callable(many) and n > 1:
        return list(many(infill, seeded))
    return [backend.fill(infill, s) for s in seeded]


async def score_candidate(
    backend: Backend,
    infill: Infill,
    text: str,
    *,
    post_weight: float = 1.0,
    forward_weight: float | None = None,
    inverse: InversePrompt | None = None,
    forward_logprob: float | None = None,
) -> Candidate:
    """One fill of the mask scored with the module's formula (the `forward_weight` default as in `rerank`).
    `forward_logprob`: log P(text | before) as the decode itself reported it (`TokenStream.logprob`), used for
    forward(c) instead of scoring the text again."""
    if forward_weight is None:
        forward_weight = 1.0 if (inverse is not None or not infill.after) else 0.0
    candidate = Candidate(text)
    if not text.strip():  # an empty reply never wins while any other exists
        candidate.total = -math.inf
        return candidate
    if infill.after:
        candidate.post = await asyncio.to_thread(_scorer(backend, infill), infill.before + text, infill.after)
        candidate.total += post_weight * candidate.post
    if forward_weight:
        logprob = forward_logprob
        if logprob is None:
            logprob = await asyncio.to_thread(_scorer(backend, infill), infill.before, text)
        candidate.forward = logprob / len(text)
        candidate.total += forward_weight * candidate.forward
    if inverse is not None:
        context, question = inverse.split(text)
        candidate.inverse = await asyncio.to_thread(backend.score, context, question)
        candidate.total += inverse.weight * candidate.inverse
    return candidate

