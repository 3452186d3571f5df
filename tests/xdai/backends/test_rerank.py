"""Both rerankers on the real SmolLM2 model: post-response infill scoring and inverse prompting."""

from __future__ import annotations

import asyncio
import math

import pytest

from xdai.backends.base import GenerationSettings, Infill
from xdai.rerank import InversePrompt, generate_reranked, rerank

ANGRY = "\nUser: Why are you so angry at me?"
# The candidates' scores are computed together, in one batch of the engine, and the checks alone, elsewhere in the
# shared KV cache: llama.cpp's kernels are not batch-invariant and its results move with where a sequence's cells
# lie (its f16 KV rounding turns reduction-order differences into ulps), so the two agree within this many nats,
# not bit for bit: the engine's stated batch tolerance (tests/xdai/backends/test_engine.py). Measured: < 0.2 with
# plain attention; up to 0.27 with flash attention (the engine's default), whose f16 accumulation follows the batch.
ENGINE_TOL = 0.5


async def test_post_response_reranking_scores_each_sample_by_the_post_response(smollm2, dialogue):
    infill = Infill(dialogue, after=ANGRY)
    settings = GenerationSettings(seed=11, max_tokens=16, temperature=1.0, stop=["\nUser:"])
    # seeded sampling reproduces its tokens on the same cache layout (see ENGINE_TOL): both calls start from an
    # empty cache
    await asyncio.to_thread(smollm2.engine.clear_cache)
    result = await generate_reranked(smollm2, infill, settings, n=3)
    assert len(result.candidates) == 3
    for c in result.candidates:
        assert c.post == pytest.approx(smollm2.score(dialogue + c.text, ANGRY), abs=ENGINE_TOL)
        assert c.forward is None and c.inverse is None  # only the post-response decides here
        assert c.total == pytest.approx(c.post)
    assert result.best.total == max(c.total for c in result.candidates)
    await asyncio.to_thread(smollm2.engine.clear_cache)
    again = await generate_reranked(smollm2, infill, settings, n=3)
    assert [c.text for c in again.candidates] == [c.text for c in result.candidates]  # seeded: reproducible


async def test_the_post_response_picks_the_reply_it_follows_from(smollm2, dialogue):
    calm, angry = " Sure, happy to help. It is Paris.", " I hate you! Go away, you idiot!"
    result = await rerank(smollm2, Infill(dialogue, after=ANGRY), [calm, angry])
    assert result.best.text == angry
    result = await rerank(smollm2, Infill(dialogue, after="\nUser: Thanks, Paris it is!"), [angry, calm])
    assert result.best.text == calm


async def test_inverse_prompting_prefers_the_reply_that_answers_the_question(smollm2, dialogue):
    inverse = InversePrompt.for_language("What is the capital of France?", "en", weight=1.0)
    on_topic, off_topic = "The capital of France is Paris.", "I like pizza very much."
    result = await rerank(smollm2, Infill(dialogue), [off_topic, on_topic], inverse=inverse)
    assert result.best.text == on_topic
    for c in result.candidates:
        context, question = inverse.split(c.text)
        assert context == f"Reply: {c.text}\nThe message this reply answers: "
        assert c.inverse == pytest.approx(smollm2.score(context, question), abs=ENGINE_TOL)
        assert c.forward == pytest.approx(smollm2.score(dialogue, c.text) / len(c.text), abs=ENGINE_TOL / len(c.text))
        assert c.total == pytest.approx(c.forward + c.inverse)


async def test_both_rerankers_combine_with_their_weights(smollm2, dialogue):
    inverse = InversePrompt("What is the capital of France?", template="A: {reply}\nQ: {question}", weight=0.5)
    result = await rerank(smollm2, Infill(dialogue, after=ANGRY), ["Paris.", ""], post_weight=2.0, inverse=inverse)
    paris, empty = result.candidates
    assert paris.total == pytest.approx(2.0 * paris.post + 1.0 * paris.forward + 0.5 * paris.inverse)
    assert empty.total == -math.inf and result.best is paris  # an empty reply never wins


def test_bad_rerank_requests_are_clear_errors():
    with pytest.raises(ValueError, match="needs {reply} before {question}"):
        InversePrompt("q", template="{question} then {reply}")
    assert InversePrompt("q", template="{reply} {{not a field}} {question}").split("a {b}") == ("a {b} {{not a field}} ", "q")
