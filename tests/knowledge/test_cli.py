"""`xdai knowledge ...` end to end through the real CLI (click's runner, in process: the embedder loads once)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from xdai.cli import main

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]


def xdai(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("cli") / "kb"
    mp = pytest.MonkeyPatch()
    mp.setenv("XDAI_PATHS_CACHE_DIR", str(cache_dir))
    result = xdai("knowledge", "build", DATA / "qa.jsonl", DATA / "kb.json", DATA / "guide.md", "--out", out)
    mp.undo()
    assert result.exit_code == 0, result.output
    return out


def test_build_ends_with_a_one_line_summary(store_dir: Path, tmp_path: Path):
    result = xdai("knowledge", "build", DATA / "qa.jsonl", "--out", tmp_path / "kb", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["items"] == 3 and report["by_kind"] == {"qa": 3}
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"built {tmp_path / 'kb'}: 3 items (3 qa) from 1 source(s)") and "bm25" in last


def test_stats(store_dir: Path):
    result = xdai("knowledge", "stats", store_dir, "--json")
    info = json.loads(result.stdout)
    assert info["items"] == 16 and info["by_kind"] == {"qa": 10, "description": 6}
    assert info["dense"]["type"] == "flat" and info["embedder"]["name"] == "e5-small"
    text = xdai("knowledge", "stats", store_dir).stdout
    assert "items      16 (6 description, 10 qa" in text and "embedder   e5-small (dim 384)" in text


def test_query_json_hits(store_dir: Path):
    result = xdai("knowledge", "query", store_dir, "谷爱凌是谁？", "--top-k", "2", "--json")
    hits = json.loads(result.stdout)
    assert len(hits) == 2 and hits[0]["q"] == "谷爱凌是谁？"
    assert hits[0]["source"] == {"file": str(DATA / "qa.jsonl"), "record": "line 1"}
    only = json.loads(xdai("knowledge", "query", store_dir, "故宫", "--kind", "description", "--json").stdout)
    assert only and {h["kind"] for h in only} == {"description"}


def test_query_with_context_and_human_output(store_dir: Path):
    result = xdai("knowledge", "query", store_dir, "那它的门票是怎么收费的？", "--context", "你去过景山公园吗？",
                  "--context", "去过，在故宫北面。", "--top-k", "1", "--json")
    (hit,) = json.loads(result.stdout)
    assert (hit["entity"], hit["predicate"]) == ("景山公园", "门票")
    text = xdai("knowledge", "query", store_dir, "谷爱凌是谁？", "--top-k", "1").stdout
    assert text.startswith("1. [qa]") and "A: 谷爱凌，2003年" in text


def test_batch_queries_one_line_per_query_in_order(store_dir: Path, tmp_path: Path):
    lines = [{"query": "谷爱凌是谁？"}, {"query": "那它几点开放？", "context": ["你知道景山公园吗？", "知道"]},
             {"query": "天坛的地址在哪？", "context": []}] * 40
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(json.dumps(q, ensure_ascii=False) for q in lines) + "\n", encoding="utf-8")
    result = xdai("knowledge", "query", store_dir, "--queries", queries, "--top-k", "3", "--json", "--batch-size", "50")
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == 120 and all(len(hits) == 3 for hits in out)
    assert [hits[0]["q"] for hits in out[:3]] == ["谷爱凌是谁？", "景山公园的开放时间是什么？", "天坛的地址是什么？"]
    assert out[3] == out[0] and out[119] == out[2]
    assert result.stderr.strip().splitlines()[-1].startswith(f"answered 120 queries from {queries}")


def test_bad_query_file_names_the_line(store_dir: Path, tmp_path: Path):
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "a"}\n{"query": "b", "context": "not a list"}\n', encoding="utf-8")
    result = xdai("knowledge", "query", store_dir, "--queries", queries)
    assert result.exit_code == 1 and f"{queries}:line 2: 'context' must be a list" in result.stderr


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.jsonl", '{"q": "a?", "a": "b"}\n{oops\n', "bad.jsonl:line 2: invalid JSON"),
        ("bad.csv", "q,tags\n你好？,x\n", "bad.csv:line 1: missing column 'a'"),
        ("kb.json", '{"故宫": [["故宫", "门票"]]}', "kb.json:entity 故宫 triple 1: expected a triple"),
    ],
)
def test_bad_input_exits_non_zero_and_keeps_the_store(store_dir: Path, tmp_path: Path, name: str, content: str,
                                                     expected: str):
    bad = tmp_path / name
    bad.write_text(content, encoding="utf-8")
    before = (store_dir / "manifest.json").read_text()
    for args in (["build", DATA / "qa.jsonl", bad, "--out", store_dir], ["add", store_dir, bad]):
        result = xdai("knowledge", *args)
        assert result.exit_code == 1 and expected in result.stderr, result.stderr
    assert (store_dir / "manifest.json").read_text() == before
    fresh = tmp_path / "fresh"
    assert xdai("knowledge", "build", bad, "--out", fresh).exit_code == 1 and not fresh.exists()


def test_skip_bad_reports_every_skipped_record(tmp_path: Path):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"q": "a?", "a": "b"}\n{oops\n{"text": ""}\n{"q": "c?", "a": "d"}\n', encoding="utf-8")
    result = xdai("knowledge", "build", mixed, "--out", tmp_path / "kb", "--skip-bad", "--quiet")
    assert result.exit_code == 0
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert skipped == [f"skipped: {mixed}:line 2: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
                       f"skipped: {mixed}:line 3: missing or empty field 'text'"]
    assert "2 items (2 qa)" in result.stderr and "skipped 2 bad record(s)" in result.stderr


def test_add_from_the_cli(tmp_path: Path):
    out = tmp_path / "kb"
    assert xdai("knowledge", "build", DATA / "qa.jsonl", "--out", out, "--quiet").exit_code == 0
    result = xdai("knowledge", "add", out, DATA / "qa.csv", DATA / "qa.jsonl", "--quiet")
    assert result.exit_code == 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"added 2 items to {out}: 5 items (5 qa)")


def test_xdai_help_lists_knowledge():
    result = subprocess.run([sys.executable, "-m", "xdai", "--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and "knowledge" in result.stdout
