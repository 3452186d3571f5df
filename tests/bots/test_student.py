"""The virtual student: open personal questions are answered through the inverse-prompting reranker (sampled
candidates rescored by how well each predicts the question), school questions grounded on its pack."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from xdai import rerank

QUESTION = "你最想永远停留在哪个时刻？"


@pytest.fixture(scope="module")
def student(served: Callable[..., Any]) -> Any:
    return served("student", max_tokens=12, rerank=2)  # the bot samples 3; 2 keep the test short


def test_student_is_declared_with_inverse_prompting(specs: dict[str, Any], student: Any) -> None:
    assert specs["student"].options["generation"]["rerank"] == 3
    options = student.persona.rerank_options()
    assert options["inverse_prompting"] is True
    assert student._rerank_count() > 1  # Agent.respond takes the reranking path for this bot


def test_inverse_prompt_prefers_the_reply_that_answers_the_question(student: Any) -> None:
    """The real model scores log P(question | inverse prompt(reply)): an on-topic reply predicts it better."""
    inverse = rerank.InversePrompt.for_language(QUESTION, "zh")
    on_topic = "高一暑假和天文社的同学在郊外看流星雨的那个晚上，我希望时间永远停在那一刻。"
    off_topic = "食堂二楼的番茄牛腩面最好吃，周三还有糖醋排骨。"
    scores = {text: student.backend.score(*inverse.split(text)) for text in (on_topic, off_topic)}
    assert scores[on_topic] > scores[off_topic], scores


@pytest.mark.slow
async def test_open_question_goes_through_the_reranker(student: Any) -> None:
    history = student.new_history()
    prompt = student.build_prompt(history, QUESTION)
    assert any("流星雨" in p.text for p in prompt.parts if p.kind in ("knowledge", "background"))
    settings = student.generation_settings(prompt)
    settings.seed = 11
    result = await rerank.generate_reranked(student.backend, prompt.render(), settings, n=2,
                                            inverse=rerank.InversePrompt.for_language(QUESTION, "zh"))
    assert len(result.candidates) == 2
    scored = [c for c in result.candidates if c.text.strip()]
    assert scored and all(c.inverse is not None and c.forward is not None for c in scored)
    assert result.best.total == max(c.total for c in result.candidates)

    reply = await student.reply_text(history, "你在哪个学校上学？")  # the bot's own path: rerank=3, inverse
    assert reply.finish_reason in ("stop", "length") and reply.text
    assert any("清河中学" in g["text"] for g in reply.grounding), reply.grounding
