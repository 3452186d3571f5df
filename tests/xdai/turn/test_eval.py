"""KdConv replay, metrics and the HTML report."""

from __future__ import annotations

import json

import pytest
import sacrebleu
from click.testing import CliRunner

from xdai.cli import main
from xdai.eval.kdconv import KdConvError, load_turns, pair_exchanges
from xdai.eval.metrics import distinct, knowledge_f1, summarise, tokens, unigram_f1

DIALOGUES = [
    {"messages": [
        {"message": "对故宫有了解吗？"},
        {"message": "有些了解，故宫又称紫禁城，是明清两代的皇宫。",
         "attrs": [{"name": "故宫", "attrname": "Information", "attrvalue": "故宫又称紫禁城，是明、清两代的皇宫。"}]},
        {"message": "那它的门票多少钱？"},
        {"message": "旺季60元，淡季40元。", "attrs": [{"name": "故宫", "attrname": "门票", "attrvalue": "旺季60元，淡季40元。"}]},
        {"message": "好的，谢谢。"},
    ]},
    {"messages": [
        {"message": "天坛在哪里？"},
        {"message": "在北京市东城区天坛路甲1号。",
         "attrs": [{"name": "天坛", "attrname": "地址", "attrvalue": "北京市东城区天坛路甲1号"}]},
    ]},
]
KB = {
    "故宫": [["故宫", "Information", "故宫又称紫禁城，是明、清两代的皇宫。"], ["故宫", "门票", "旺季60元，淡季40元。"]],
    "天坛": [["天坛", "Information", "天坛是明清两代皇帝祭天的地方。"], ["天坛", "地址", "北京市东城区天坛路甲1号"]],
}


def test_metrics_by_hand():
    assert tokens("我知道，免费开放。It costs 100元") == ["我", "知", "道", "免", "费", "开", "放", "It", "costs", "100", "元"]
    # hyp 我/喜/欢/你, ref 我/喜/欢/他/们: overlap 3, P = 3/4, R = 3/5, F1 = 2PR/(P+R) = 2/3
    assert unigram_f1("我喜欢你", "我喜欢他们") == pytest.approx(2 / 3)
    assert unigram_f1("", "我") == 0.0
    # 门/票/60/元 against 旺/季/60/元/淡/季/40/元: overlap 60 and 元 -> P = 2/4, R = 2/8
    assert knowledge_f1("门票60元", ["旺季60元", "淡季40元"]) == pytest.approx(2 * (2 / 4) * (2 / 8) / (2 / 4 + 2 / 8))
    # distinct over all replies: 我 我 好 -> 2 distinct of 3 unigrams; bigrams (我,我) (我,好) -> 2 of 2
    assert distinct(["我我好"], 1) == pytest.approx(2 / 3)
    assert distinct(["我我好"], 2) == 1.0
    hyps, refs = ["旺季60元，淡季40元。", "在东城区。"], ["旺季60元，淡季四十元。", "在北京东城区。"]
    m = summarise(hyps, refs, [["旺季60元"], ["东城区"]])
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)
    assert m["turns"] == 2


def test_turns_with_gold_knowledge_and_their_history(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(DIALOGUES, ensure_ascii=False), encoding="utf-8")
    turns = load_turns(path)
    assert [(t.dialogue, t.message) for t in turns] == [(0, 1), (0, 3), (1, 1)]
    second = turns[1]
    assert second.utterance == "那它的门票多少钱？" and second.knowledge == ["旺季60元，淡季40元。"]
    assert [(e.user, e.bot) for e in second.exchanges] == [("对故宫有了解吗？", "有些了解，故宫又称紫禁城，是明清两代的皇宫。")]
    assert [(e.user, e.bot) for e in pair_exchanges(["a", "b", "c"])] == [("", "a"), ("b", "c")]
    assert len(load_turns(path, limit=2)) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"messages": [{"message": "x"}, {"text": "y"}]}]), encoding="utf-8")
    with pytest.raises(KdConvError, match=r"bad.json: dialogue 0 message 1: expected an object with a 'message'"):
        load_turns(bad)


@pytest.mark.slow
def test_eval_kdconv_end_to_end(tmp_path):
    from knowledge.store import Store

    data, kb = tmp_path / "dev.json", tmp_path / "kb_travel.json"
    data.write_text(json.dumps(DIALOGUES, ensure_ascii=False), encoding="utf-8")
    kb.write_text(json.dumps(KB, ensure_ascii=False), encoding="utf-8")
    Store.build([kb], tmp_path / "store", progress=False)
    report = tmp_path / "out" / "report.html"
    result = CliRunner().invoke(main, ["eval", "kdconv", str(data), "--knowledge", str(tmp_path / "store"),
                                       "--limit", "2", "--model", "smollm2", "--max-tokens", "8",
                                       "--report", str(report)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # progress goes to stderr
    assert lines[0].split()[:7] == ["configuration", "turns", "F1", "BLEU", "Distinct-1", "Distinct-2", "Knowledge-F1"]
    assert [line.split()[0] for line in lines[1:4]] == ["full", "no-knowledge", "no-selection"]
    assert lines[-1].startswith("kdconv: 2 turns x 3 configurations")
    page = report.read_text(encoding="utf-8")
    assert "<svg" in page and "Knowledge-F1" in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    saved = json.loads(report.with_suffix(".json").read_text(encoding="utf-8"))
    assert set(saved["metrics"]) == {"full", "no-knowledge", "no-selection"}
    assert saved["turns"][1]["utterance"] == "那它的门票多少钱？"
    grounded = saved["turns"][1]["grounding"]
    assert grounded["no-knowledge"] == [] and any("60元" in g for g in grounded["full"])
    # faithfulness beside knowledge-F1: in the terminal table, the page and every reply's record
    assert lines[0].split()[7:] == ["Unsupported/reply", "Unfaithful", "%"]
    assert "Unsupported/reply" in page and "Unfaithful %" in page
    assert all({"unsupported_per_reply", "share_unfaithful"} <= set(m) for m in saved["metrics"].values())
    assert set(saved["turns"][0]["faithfulness"]) == {"full", "no-knowledge", "no-selection"}
    assert {"claims", "unsupported", "contradictions"} <= set(saved["turns"][0]["faithfulness"]["full"])


def test_report_puts_faithfulness_beside_knowledge_f1():
    from xdai.eval.report import metrics_table, render_html

    base = {"turns": 4, "f1": 0.1, "bleu": 1.0, "distinct_1": 0.5, "distinct_2": 0.6, "knowledge_f1": 0.3}
    metrics = {"full": {**base, "unsupported_per_reply": 0.25, "share_unfaithful": 0.25},
               "no-knowledge": {**base, "unsupported_per_reply": 0.5, "share_unfaithful": 0.5}}
    table = metrics_table(metrics).splitlines()
    assert table[0].split()[-3:] == ["Unsupported/reply", "Unfaithful", "%"]
    assert table[1].split()[-2:] == ["0.25", "25.00"] and table[2].split()[-2:] == ["0.50", "50.00"]
    assert "Unfaithful" not in metrics_table({"full": base})  # a report from before the measure still renders
    turn = {"dialogue": 0, "message": 1, "history": [], "utterance": "几点开门？", "gold": "七点", "knowledge": ["七点"],
            "replies": {"full": "八点开门。"}, "knowledge_f1": {"full": 0.0},
            "faithfulness": {"full": {"claims": 1, "unsupported": [], "contradictions": [
                {"claim": "八点", "stated": "每天早上七点开门", "shared": ["开门"]}]}}}
    page = render_html({"meta": {}, "metrics": {"full": metrics["full"]}, "turns": [turn]})
    assert "unsupported: 八点 (knowledge: 每天早上七点开门)" in page
