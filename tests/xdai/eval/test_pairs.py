"""Pairwise studies: building tasks from a KdConv report, checks that drop raters, and a report whose numbers
are worked out by hand below."""

import pytest

from xdai.eval.pairs import (
    BROKEN,
    ENGAGING,
    HUMAN,
    TURING,
    Judgment,
    PairTask,
    Side,
    Study,
    StudyError,
    broken_reply,
    report,
    tasks_from_conversations,
    tasks_from_kdconv,
)

REPORT = {
    "meta": {},
    "turns": [
        {"dialogue": d, "message": 2, "utterance": f"问题{d}", "gold": f"人类的回答{d}，故宫很大。",
         "knowledge": [f"故宫 面积 {d}"], "history": [{"user": "你好", "bot": "你好呀"}],
         "replies": {"full": f"机器的回答{d}", "no-knowledge": f"没有知识的回答{d}"}}
        for d in range(8)
    ],
}


def test_tasks_from_a_kdconv_report_randomise_sides_and_record_them():
    tasks, systems = tasks_from_kdconv(REPORT, checks=2, seed=1)
    assert systems == ("full", HUMAN)
    real = [t for t in tasks if not t.check]
    assert len(real) == 8 and sum(t.check for t in tasks) == 2
    assert {t.left.source for t in real} == {"full", HUMAN}  # both sides occur on the left
    first = next(t for t in real if "问题0" in t.context[-1]["text"])
    assert first.context[0] == {"speaker": "user", "text": "你好"} and first.knowledge == ["故宫 面积 0"]
    assert {first.left.text, first.right.text} == {"机器的回答0", "人类的回答0，故宫很大。"}
    for check in (t for t in tasks if t.check):
        assert BROKEN in (check.left.source, check.right.source)
        assert check.expected() == ("left" if check.right.source == BROKEN else "right")
    again, _ = tasks_from_kdconv(REPORT, checks=2, seed=1)
    assert again == tasks  # the same seed, the same study


def test_configuration_against_configuration_and_bad_reports():
    tasks, systems = tasks_from_kdconv(REPORT, other="no-knowledge", checks=0)
    assert systems == ("full", "no-knowledge") and len(tasks) == 8
    with pytest.raises(StudyError, match="no reply for 'nope'"):
        tasks_from_kdconv(REPORT, config="nope")
    with pytest.raises(StudyError, match="no turns"):
        tasks_from_kdconv({"turns": []})


def test_conversations_from_two_bots():
    rows = [{"id": "c1", "context": [{"speaker": "user", "text": "hi"}], "replies": {"a": "hello", "b": "hey"}}]
    tasks = tasks_from_conversations(rows, "a", "b", checks=0)
    assert len(tasks) == 1 and {tasks[0].left.source, tasks[0].right.source} == {"a", "b"}
    with pytest.raises(StudyError, match="row 1: replies need 'a' and 'c'"):
        tasks_from_conversations(rows, "a", "c")


def test_a_broken_reply_keeps_the_material_but_is_not_the_reply():
    import random

    text = "故宫是明清两代的皇家宫殿"
    broken = broken_reply(text, random.Random(0))
    assert broken != text and set(broken) <= set(text)


def _study() -> Study:
    bot, human = Side("full", "bot says"), Side(HUMAN, "person says")
    tasks = [
        PairTask("t1", [], [], bot, human),
        PairTask("t2", [], [], human, bot),
        PairTask("t3", [], [], bot, human),
        PairTask("t4", [], [], human, bot),
        PairTask("chk", [], [], human, Side(BROKEN, "says says"), check=True),
    ]
    return Study("s1", "test", ("full", HUMAN), [TURING, ENGAGING], tasks)


def j(rater, task, answer, question="human", judge=False):
    return Judgment("s1", task, rater, question, answer, judge=judge)


def test_report_by_hand():
    study = _study()
    judgments = [
        # rater a: picks the bot as human on t1 (left) and t2 (right); human on t3 (right); tie... no ties on turing
        j("a", "t1", "left"), j("a", "t2", "right"), j("a", "t3", "right"), j("a", "t4", "skip"), j("a", "chk", "left"),
        # rater b: answers t1 twice (only the last counts), passes the check
        j("b", "t1", "right"), j("b", "t1", "left"), j("b", "t2", "left"), j("b", "t3", "right"), j("b", "t4", "left"),
        j("b", "chk", "left"),
        # rater c fails the check: all of c's answers are dropped
        j("c", "t1", "left"), j("c", "t2", "right"), j("c", "chk", "right"),
        # engaging: a says bot on t1, tie on t2
        j("a", "t1", "left", "engaging"), j("a", "t2", "tie", "engaging"),
    ]
    out = report(study, judgments)
    assert out["dropped_raters"] == ["c"] and out["raters"] == ["a", "b"] and out["tasks"] == 4
    human = out["questions"]["human"]
    # "which did a person write": picks of the bot's side count as wins for "full".
    # a: t1 left=bot (full), t2 right=bot (full), t3 right=human, t4 skip -> full 2, human 1, skip 1
    # b: t1 last=left=bot (full), t2 left=human, t3 right=human, t4 left=human -> full 1, human 3
    assert human["people"]["wins"] == [3, 4] and human["people"]["skips"] == 1 and human["people"]["ties"] == 0
    assert human["people"]["rate"] == pytest.approx(3 / 7)
    assert human["people"]["p_value"] == pytest.approx(1.0)  # 3 of 7 vs 4 of 7: as likely as it gets
    assert human["taken_for_human"]["share"] == pytest.approx(3 / 7) and human["taken_for_human"]["n"] == 7
    # agreement on the human question: items t1 (a: left, b: left), t2 (a: right, b: left), t3 (right, right)
    # (t4: a skipped) -> po = 2/3; a: L1 R2, b: L2 R1 -> pe = (1*2 + 2*1)/9 = 4/9; kappa = (2/3-4/9)/(5/9) = 0.4
    assert human["agreement"]["cohen_kappa"]["a|b"] == pytest.approx(0.4)
    engaging = out["questions"]["engaging"]["people"]
    assert engaging["wins"] == [1, 0] and engaging["ties"] == 1


def test_judge_answers_are_reported_apart_with_their_agreement():
    study = _study()
    people = [j("a", "t1", "right"), j("b", "t1", "right"), j("a", "t2", "left")]
    judge = [j("judge", "t1", "right", judge=True), j("judge", "t2", "right", judge=True)]
    out = report(study, people + judge)
    q = out["questions"]["human"]
    assert q["people"]["wins"] == [0, 3]  # people always picked the person
    assert q["judge"]["wins"] == [1, 1]
    assert q["judge_agreement_with_people"] == pytest.approx(0.5)
    assert "judge" not in out["raters"]


def test_a_study_round_trips_through_json(tmp_path):
    study = _study()
    study.save(tmp_path / "s.json")
    assert Study.load(tmp_path / "s.json") == study
    (tmp_path / "bad.json").write_text('{"id": 1}', encoding="utf-8")
    with pytest.raises(StudyError, match="bad.json: not a study"):
        Study.load(tmp_path / "bad.json")
