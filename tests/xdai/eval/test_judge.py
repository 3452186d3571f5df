"""The automatic judge: both orders asked, a win only when they agree, the prompt it asks; run on the bundled
SmolLM2 with its verdicts checked against the model's own scores computed apart."""

from __future__ import annotations

import pytest

from tests.fakes import ScriptedBackend
from xdai.eval.judge import JudgeSettings, PairJudge, judge_prompt, parse_choice
from xdai.eval.pairs import BROKEN, ENGAGING, FAITHFUL, HUMAN, TURING, PairTask, Side, Study, report


def _study(show_knowledge: bool = True) -> Study:
    ctx = [{"speaker": "user", "text": "Where is the Forbidden City?"}]
    tasks = [
        PairTask("t1", ctx, ["Forbidden City location Beijing"], Side("full", "It is in Beijing, at the centre."),
                 Side(HUMAN, "Beijing, right in the middle of the city.")),
        PairTask("t2", ctx, ["Forbidden City location Beijing"], Side(HUMAN, "In Beijing."),
                 Side("full", "I do not know.")),
        PairTask("chk", ctx, [], Side(HUMAN, "In Beijing."), Side(BROKEN, "Beijing. In In"), check=True),
    ]
    return Study("js", "judge test", ("full", HUMAN), [TURING, ENGAGING], tasks, show_knowledge=show_knowledge)


def test_parse_choice() -> None:
    assert parse_choice(" B") == "B" and parse_choice("A.") == "A" and parse_choice("Reply A is better") == "A"
    assert parse_choice("回复B") == "B" and parse_choice("I think reply b") == "B"
    assert parse_choice("Both are fine") is None and parse_choice("") is None and parse_choice("Absolutely") is None


def test_the_prompt_shows_context_knowledge_and_both_replies() -> None:
    study = _study()
    task = study.tasks[0]
    text = judge_prompt(study, task, ENGAGING, task.right, task.left)
    assert "User: Where is the Forbidden City?" in text and "- Forbidden City location Beijing" in text
    assert text.index("Reply A: Beijing, right") < text.index("Reply B: It is in Beijing")
    assert text.endswith(f"Question: {ENGAGING.text}\nAnswer with one letter, A or B.\nAnswer:")
    hidden = _study(show_knowledge=False)
    assert "Knowledge" not in judge_prompt(hidden, task, ENGAGING, task.left, task.right)
    assert "Knowledge" in judge_prompt(hidden, task, FAITHFUL, task.left, task.right)  # faithful needs it shown


def test_a_side_wins_only_when_both_orders_agree() -> None:
    biased = PairJudge(ScriptedBackend(["A"]), "always-a")  # always the first reply: pure position bias
    out = list(biased.run(_study()))
    assert len(out) == 6 and {j.answer for j in out} == {"tie"} and all(j.judge for j in out)
    assert biased.tally.disagreed == 6 and biased.tally.verdicts == {"tie": 6}
    assert biased.tally.checks == 2 and biased.tally.checks_passed == 0

    consistent = PairJudge(ScriptedBackend(["A", "B"] * 6), "left")  # first order "A" = left, second "B" = left
    out = list(consistent.run(_study(), done=[("t1", "human")]))
    assert len(out) == 5 and {j.answer for j in out} == {"left"} and consistent.tally.disagreed == 0
    assert out[0].rater == "judge:left:generate" and ("t1", "human") not in {(j.task, j.question) for j in out}
    assert consistent.tally.checks_passed == 2  # the check's left side is the person's

    mumbling = PairJudge(ScriptedBackend(["hmm"]), "mumbles")
    assert {j.answer for j in mumbling.run(_study())} == {"tie"} and mumbling.tally.unparsed == 12
    assert mumbling.tally.disagreed == 0
    with pytest.raises(ValueError, match="judge method 'vote'"):
        PairJudge(ScriptedBackend(), "x", JudgeSettings(method="vote"))


def test_the_judge_runs_on_the_bundled_model_and_is_reported_apart() -> None:
    from xdai.backends import get_backend

    backend = get_backend("llama_cpp", "smollm2")
    study = _study()
    judge = PairJudge(backend, "llama_cpp:smollm2", JudgeSettings(method="score"))
    out = list(judge.run(study))
    assert len(out) == len(study.tasks) * len(study.questions)
    for j in out:  # each verdict follows from the model's own likelihoods of " A" and " B", both orders
        task, question = study.task(j.task), next(q for q in study.questions if q.id == j.question)
        picks = []
        for first, second, sides in ((task.left, task.right, "left right"), (task.right, task.left, "right left")):
            prompt = judge_prompt(study, task, question, first, second)
            a, b = backend.score(prompt, " A"), backend.score(prompt, " B")
            picks.append(sides.split()[0] if a > b else sides.split()[1] if b > a else None)
        assert j.answer == (picks[0] if picks[0] is not None and picks[0] == picks[1] else "tie")
    generated = PairJudge(backend, "llama_cpp:smollm2", JudgeSettings(method="generate"))
    again = list(generated.run(study))
    assert {j.answer for j in again} <= {"left", "right", "tie"} and len(again) == 6
    assert again == list(PairJudge(backend, "llama_cpp:smollm2", JudgeSettings(method="generate")).run(study))
    out_report = report(study, out)
    judged = out_report["questions"]["human"]["judge"]
    assert sum(judged["wins"]) + judged["ties"] == 2  # the two real tasks; the check is left out of the report
    assert out_report["raters"] == []
