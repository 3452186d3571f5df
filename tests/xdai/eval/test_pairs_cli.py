"""`xdai eval pairs build|report|judge` end to end on files and a real SQLite judgment store, and two bots
answering scripted conversations (the history both answer from is shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.fakes import ScriptedResponder
from xdai.commands.eval import eval_group
from xdai.eval.pairs import BROKEN, HUMAN, Judgment, Study, StudyError
from xdai.eval.scripted import answer_scripts, read_scripts, script_turns
from xdai.service.judgments import SQLiteJudgmentStore

REPORT = {
    "meta": {"data": "dev.json"},
    "turns": [
        {"dialogue": d, "message": 2, "utterance": f"问题{d}", "gold": f"人类的回答{d}，故宫很大。",
         "knowledge": [f"故宫 面积 {d}"], "history": [{"user": "你好", "bot": "你好呀"}],
         "replies": {"full": f"机器的回答{d}", "no-knowledge": f"没有知识的回答{d}"}}
        for d in range(4)
    ],
}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDAI_SERVER_EVAL_DIR", str(tmp_path / "studies"))
    monkeypatch.setenv("XDAI_SERVER_SQLITE_PATH", str(tmp_path / "sessions.sqlite3"))
    monkeypatch.setenv("XDAI_SERVER_SESSION_STORE", "sqlite")
    (tmp_path / "kd.json").write_text(json.dumps(REPORT, ensure_ascii=False), encoding="utf-8")
    return tmp_path


def run(*args: str) -> str:
    result = CliRunner().invoke(eval_group, ["pairs", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_build_from_a_kdconv_report_then_report_by_hand(env: Path) -> None:
    out = run("build", "--kdconv", str(env / "kd.json"), "--checks", "1", "--seed", "3")
    assert "study full-vs-human: 4 pairs + 1 checks" in out and "/eval/full-vs-human" in out
    study = Study.load(env / "studies" / "full-vs-human.json")
    assert [q.id for q in study.questions] == ["human"] and study.systems == ("full", HUMAN)
    assert study.meta["kdconv"] == {"data": "dev.json"} and study.show_knowledge

    # three raters' answers in the store, worked out by hand
    store = SQLiteJudgmentStore(env / "sessions.sqlite3")
    real = [t for t in study.tasks if not t.check]
    check = next(t for t in study.tasks if t.check)
    bot_side = {t.id: "left" if t.left.source == "full" else "right" for t in real}
    human_side = {t.id: "right" if bot_side[t.id] == "left" else "left" for t in real}
    js = [Judgment(study.id, t.id, "a", "human", bot_side[t.id]) for t in real[:3]]  # a: the bot, 3 times
    js += [Judgment(study.id, real[3].id, "a", "human", human_side[real[3].id])]
    js += [Judgment(study.id, t.id, "b", "human", human_side[t.id]) for t in real]  # b: the person, 4 times
    js += [Judgment(study.id, check.id, "b", "human", check.expected() or "")]
    wrong = "left" if check.expected() == "right" else "right"
    js += [Judgment(study.id, check.id, "c", "human", wrong), Judgment(study.id, real[0].id, "c", "human", "left")]
    assert store.record(js) == len(js)
    store.close()
    rep = json.loads(run("report", "full-vs-human", "--json", "--html", str(env / "r.html")))
    assert rep["raters"] == ["a", "b"] and rep["dropped_raters"] == ["c"]
    people = rep["questions"]["human"]["people"]
    assert people["wins"] == [3, 5] and people["rate"] == pytest.approx(3 / 8)
    # Wilson 95% for 3/8 (z = 1.96: centre (0.375 + z²/16) / (1 + z²/8) = 0.41555, half-width 0.27871) and the
    # exact two-sided binomial p for 3 of 8 (2 * P(X <= 3) = 2 * 93/256)
    assert people["interval"] == pytest.approx([0.13684, 0.69426], abs=1e-4)
    assert people["p_value"] == pytest.approx(0.7265625)
    assert rep["questions"]["human"]["taken_for_human"]["share"] == pytest.approx(3 / 8)
    html = (env / "r.html").read_text(encoding="utf-8")
    assert "<svg" in html and "taken for human" in html and "37.5%" in html
    text = run("report", str(env / "studies" / "full-vs-human.json"))
    assert "full 3 : 5 human" in text and "dropped by checks 1" in text and "taken for human 37.5% of 8" in text


def test_build_a_against_b_and_refusals(env: Path) -> None:
    out = run("build", "--kdconv", str(env / "kd.json"), "--against", "no-knowledge", "-q", "faithful", "--scale",
              "--hide-knowledge", "--checks", "0", "--id", "ab", "--limit", "2")
    assert "study ab: 2 pairs + 0 checks" in out
    study = Study.load(env / "studies" / "ab.json")
    assert study.systems == ("full", "no-knowledge") and study.questions[0].scale and not study.show_knowledge
    runner = CliRunner()
    bad = runner.invoke(eval_group, ["pairs", "build", "--kdconv", str(env / "kd.json"), "--against", "no-knowledge",
                                     "-q", "human"])
    assert bad.exit_code != 0 and "needs --against human" in bad.output
    bad = runner.invoke(eval_group, ["pairs", "build", "--kdconv", str(env / "kd.json"), "--system", "nope"])
    assert bad.exit_code != 0 and "no reply for 'nope'" in bad.output
    bad = runner.invoke(eval_group, ["pairs", "build", "--kdconv", str(env / "kd.json"), "--id", "../up"])
    assert bad.exit_code != 0 and "study id '../up'" in bad.output
    bad = runner.invoke(eval_group, ["pairs", "report", "missing"])
    assert bad.exit_code != 0 and "missing.json" in bad.output


def test_build_from_answered_conversations(env: Path) -> None:
    rows = [{"id": f"c{i}", "context": [{"speaker": "user", "text": f"hi {i}"}], "knowledge": ["k"],
             "replies": {"a": f"hello {i}", "b": f"hey {i}"}} for i in range(3)]
    (env / "conv.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    out = run("build", "--conversations", str(env / "conv.jsonl"), "--bot", "a", "--bot", "b", "--checks", "1")
    assert "study a-vs-b: 3 pairs + 1 checks, a vs b, questions engaging, informative" in out
    study = Study.load(env / "studies" / "a-vs-b.json")
    assert {t.left.source for t in study.tasks} <= {"a", "b", BROKEN}


def test_two_bots_answer_the_same_history() -> None:
    rows = [{"id": "s1", "turns": [{"user": "one", "facts": ["f1"]}, {"user": "two", "bot": "scripted two"},
                                   {"user": "three"}]},
            {"id": "s2", "messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                                      {"role": "user", "content": "bye"}]}]
    a = ScriptedResponder(replies=lambda u: f"A says {u}", grounding=[{"text": "ga"}])
    b = ScriptedResponder(replies=lambda u: f"B says {u}")
    out = list(answer_scripts(rows, {"a": a, "b": b}, seed=0))
    assert [r["id"] for r in out] == ["s1#0", "s1#1", "s1#2", "s2#0", "s2#1"]
    assert out[0]["replies"] == {"a": "A says one", "b": "B says one"} and out[0]["knowledge"] == ["f1"]
    assert out[1]["knowledge"] == ["ga"]  # no tagged facts: what either bot was grounded on
    kept = out[1]["context"][1]["text"]
    assert kept in ("A says one", "B says one")  # the coin kept one of the two replies ...
    assert out[2]["context"][3] == {"speaker": "bot", "text": "scripted two"}  # ... or the script's own line
    for bot in (a, b):  # both bots answered every turn from the same history
        assert [c.history for c in bot.calls[:3]] == [[], [("one", kept)], [("one", kept), ("two", "scripted two")]]
        assert bot.calls[3].history == [] and bot.calls[4].history == [("hello", "hi")]
    assert [t.user for t in script_turns(rows[1])] == ["hello", "bye"]
    with pytest.raises(StudyError, match="turn 0"):
        script_turns({"turns": [{"bot": "x"}]})


def test_read_scripts_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_text('{"turns": []}\n\nnot json\n', encoding="utf-8")
    with pytest.raises(StudyError, match=r"s.jsonl:3: not JSON"):
        read_scripts(tmp_path / "s.jsonl")


def test_the_judge_command_stores_its_answers_apart_and_resumes(env: Path) -> None:
    run("build", "--kdconv", str(env / "kd.json"), "--checks", "1", "--limit", "2", "--id", "j")
    out = run("judge", "j", "--model", "smollm2", "--method", "score")
    assert "judge judge:llama_cpp:smollm2:score: 3 answers (0 stored before)" in out and "checks passed" in out
    store = SQLiteJudgmentStore(env / "sessions.sqlite3")
    stored = store.judgments("j")
    store.close()
    assert len(stored) == 3 and all(j.judge and j.rater == "judge:llama_cpp:smollm2:score" for j in stored)
    assert "0 answers (3 stored before)" in run("judge", "j", "--model", "smollm2", "--method", "score")
    rep = json.loads(run("report", "j", "--json"))
    judged = rep["questions"]["human"]["judge"]
    assert sum(judged["wins"]) + judged["ties"] == 2 and rep["raters"] == []
    assert rep["questions"]["human"]["people"]["wins"] == [0, 0]


BOT = """\
description: pairs test bot on SmolLM2
persona: xiaodai
backend: llama_cpp
model: smollm2
options:
  generation: {{max_tokens: 12, temperature: 0.7, seed: {seed}}}
"""


@pytest.mark.slow
def test_build_runs_two_real_bots_through_a_script(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, seed in (("a", 1), ("b", 2)):
        (env / "bots" / name).mkdir(parents=True)
        (env / "bots" / name / "bot.yaml").write_text(BOT.format(seed=seed), encoding="utf-8")
    monkeypatch.setenv("XDAI_PATHS_BOTS_DIR", str(env / "bots"))
    monkeypatch.setenv("XDAI_PATHS_STORES_DIR", str(env / "stores"))
    script = {"id": "c1", "turns": [{"user": "你好，你是谁？"}, {"user": "你喜欢滑雪吗？", "facts": ["谷爱凌 职业 滑雪"]}]}
    (env / "conv.jsonl").write_text(json.dumps(script, ensure_ascii=False) + "\n", encoding="utf-8")
    out = run("build", "--conversations", str(env / "conv.jsonl"), "--bot", "a", "--bot", "b", "--checks", "0",
              "-q", "engaging")
    assert "study a-vs-b: 2 pairs + 0 checks" in out
    study = Study.load(env / "studies" / "a-vs-b.json")
    first, second = study.tasks
    assert first.context == [{"speaker": "user", "text": "你好，你是谁？"}]
    assert {first.left.source, first.right.source} == {"a", "b"} and first.left.text and first.right.text
    kept = second.context[1]["text"]  # the shared history goes on with one of the two first replies
    assert kept in (first.left.text, first.right.text) and second.knowledge == ["谷爱凌 职业 滑雪"]
