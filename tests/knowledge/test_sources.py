"""Every source format, its provenance, and every kind of bad input the issue lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from knowledge.sources import Problems, SourceError, read_sources

DATA = Path(__file__).parent / "data"


def read(*paths: Path | str, skip_bad: bool = False):
    problems = Problems(skip_bad=skip_bad)
    return list(read_sources(list(paths), problems)), problems.skipped


def test_qa_jsonl_keeps_fields_and_line_numbers():
    items, _ = read(DATA / "qa.jsonl")
    assert [it.kind for it in items] == ["qa", "qa", "qa"]
    first = items[0]
    assert first.q == "谷爱凌是谁？"
    assert first.a == "谷爱凌，2003年出生于美国加利福尼亚州旧金山市，中国自由式滑雪运动员"
    assert first.tags == ["sports"]
    assert first.source_record == "line 1"
    assert items[1].reference == "https://www.dpm.org.cn"
    assert items[2].source_record == "line 4"  # the blank line 3 is skipped, numbering holds


def test_qa_csv_with_optional_columns():
    items, _ = read(DATA / "qa.csv")
    assert [(it.q, it.source_record) for it in items] == [("长城有多长？", "line 2"), ("What is the capital of France?", "line 3")]
    assert items[0].tags == ["travel", "history"] and items[0].reference == "国家文物局"
    assert items[1].a == "Paris, on the Seine." and items[1].tags == ["geography"]


def test_yaml_qa_and_descriptions_name_their_lines():
    qa, _ = read(DATA / "qa.yaml")
    assert [(it.kind, it.source_record) for it in qa] == [("qa", "line 3"), ("qa", "line 6")]
    assert qa[0].tags == ["travel", "beijing"]
    desc, _ = read(DATA / "descriptions.yaml")
    assert [(it.kind, it.title) for it in desc] == [("description", "黄山"), ("description", "Kyoto")]


def test_description_jsonl():
    items, _ = read(DATA / "descriptions.jsonl")
    assert [(it.kind, it.title, it.source_record) for it in items] == [
        ("description", "颐和园", "line 1"),
        ("description", "Great Barrier Reef", "line 2"),
    ]


def test_markdown_splits_by_heading_and_paragraph():
    items, _ = read(DATA / "guide.md")
    assert [(it.title, it.source_record) for it in items] == [
        ("北京旅游小贴士", "line 3"),
        ("交通", "lines 7-8"),
        ("美食", "line 12"),
    ]
    assert items[1].text == "北京地铁覆盖主要景点，建议办理一卡通。\n高峰时段地铁非常拥挤。"


def test_plain_text_packs_paragraphs_within_budget(tmp_path: Path):
    items, _ = read(DATA / "notes.txt")
    assert len(items) == 1 and items[0].title == "notes" and items[0].source_record == "lines 1-3"
    long = tmp_path / "long.txt"
    long.write_text("\n\n".join(f"第{i}段。" + "这是一个很长的句子。" * 30 for i in range(6)), encoding="utf-8")
    parts, _ = read(long)
    assert len(parts) > 1 and all(len(p.text) <= 600 for p in parts)
    assert "".join(p.text.replace("\n\n", "") for p in parts).count("第") == 6


def test_kdconv_triples_become_descriptions_and_merged_qa():
    items, _ = read(DATA / "kb.json")
    by_key = {(it.entity, it.predicate): it for it in items}
    info = by_key[("故宫", "Information")]
    assert info.kind == "description" and info.title == "故宫" and info.text.startswith("故宫又称紫禁城")
    nearby = by_key[("故宫", "周边景点")]
    assert nearby.kind == "qa" and nearby.q == "故宫的周边景点是什么？"
    assert nearby.a == "景山公园、天安门广场"  # a repeated triple is kept once; objects of one predicate merged
    assert nearby.source_record == "entity 故宫 triples 2,3,4"
    assert by_key[("天坛", "地址")].source_record == "entity 天坛 triple 2"
    assert len(items) == 10


def test_english_triples_use_the_english_template(tmp_path: Path):
    kb = tmp_path / "kb.json"
    kb.write_text('{"Louvre": [["Louvre", "city", "Paris"]], "KIDS": [["in KIDS with LINE FRIENDS乐园", "电话", "010"]]}',
                  encoding="utf-8")
    (louvre, kids), _ = read(kb)
    assert louvre.q == "What is the city of Louvre?" and louvre.a == "Paris"
    assert kids.q == "in KIDS with LINE FRIENDS乐园的电话是什么？"  # any Chinese in subject or predicate: Chinese


def test_folder_reads_every_supported_file_sorted():
    items, _ = read(DATA)
    files = [Path(it.source_file).name for it in items]
    assert set(files) == {p.name for p in DATA.iterdir()}
    assert files == sorted(files)


def test_langchain_documents_are_a_source():
    from langchain_core.documents import Document

    docs = [
        Document(page_content="颐和园是清代的皇家园林。", metadata={"title": "颐和园", "source": "wiki.txt"}),
        Document(page_content="", metadata={"q": "颐和园在哪？", "a": "北京海淀区。", "tags": ["travel"]}),
    ]
    items, _ = read_sources_list([docs])
    assert [(it.kind, it.title, it.q) for it in items] == [("description", "颐和园", None), ("qa", None, "颐和园在哪？")]
    assert items[0].source_file == "wiki.txt" and items[1].source_record == "document 2"


def read_sources_list(sources):
    problems = Problems()
    return list(read_sources(sources, problems)), problems.skipped


# ----------------------------------------------------------------------------------------------- bad input
BAD_CASES = {
    "malformed_jsonl": ("bad.jsonl", b'{"q": "a?", "a": "b"}\n{"q": "c?", "a": \n', "bad.jsonl:line 2: invalid JSON"),
    "csv_missing_column": ("bad.csv", "q,source\n你好？,x\n".encode(), "bad.csv:line 1: missing column 'a'"),
    "yaml_syntax": ("bad.yaml", b"- q: a?\n  a: [unclosed\n- q: b\n", "bad.yaml:line 3, column 4: YAML syntax error"),
    "empty": ("empty.jsonl", b"  \n\n", "empty.jsonl: file is empty"),
    "binary": ("blob.csv", b"q,a\n\x00\x01\x02\xff" * 10, "blob.csv: binary file"),
    "wrong_encoding": ("gbk.jsonl", '{"q": "ok?", "a": "ok"}\n{"q": "故宫？", "a": "紫禁城"}\n'.encode("gbk"),
                       "gbk.jsonl:line 2: not valid UTF-8"),
    "kb_not_a_triple": ("kb.json", '{"故宫": [["故宫", "门票", "60元"], ["故宫", "门票"]]}'.encode(),
                        "kb.json:entity 故宫 triple 2: expected a triple"),
    "record_without_fields": ("odd.jsonl", b'{"question": "x"}\n', "odd.jsonl:line 1: expected fields q and a"),
    "csv_short_row": ("short.csv", "q,a\n你好？\n".encode(), "short.csv:line 2: expected 2 columns"),
    "unsupported": ("notes.pdf", b"%PDF-1.4", "notes.pdf: unsupported source type '.pdf'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_and_line(case: str, tmp_path: Path):
    name, content, expected = BAD_CASES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError) as err:
        read(path)
    assert expected in str(err.value).replace(str(tmp_path) + "/", "")


def test_skip_bad_goes_on_and_reports_every_skipped_record(tmp_path: Path):
    good = tmp_path / "mixed.jsonl"
    good.write_text('{"q": "a?", "a": "b"}\nnot json\n{"q": "c?"}\n{"q": "d?", "a": "e"}\n', encoding="utf-8")
    kb = tmp_path / "kb.json"
    kb.write_text('{"故宫": [["故宫", "门票", "60元"], "oops", ["故宫", "", "x"]]}', encoding="utf-8")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    items, skipped = read(good, kb, empty, skip_bad=True)
    assert [it.q for it in items] == ["a?", "d?", "故宫的门票是什么？"]
    where = [f"{Path(e.file).name}:{e.where}" for e in skipped]
    assert where == ["mixed.jsonl:line 2", "mixed.jsonl:line 3", "kb.json:entity 故宫 triple 2", "kb.json:entity 故宫 triple 3",
                     "empty.csv:"]


def test_skip_bad_drops_only_undecodable_lines(tmp_path: Path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"q": "ok?", "a": "ok"}\n' + '{"q": "故宫？", "a": "紫禁城"}\n'.encode("gbk") + b'{"q": "x?", "a": "y"}\n')
    items, skipped = read(path, skip_bad=True)
    assert [it.q for it in items] == ["ok?", "x?"]
    assert [e.where for e in skipped] == ["line 2"]


# ----------------------------------------------------------------------------------------------- bounded input
def _yaml_bomb(levels: int = 7, fan: int = 9) -> str:
    lines = ['a0: &a0 {q: "lol?", a: "lol"}']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\nitems: *a7\n"


def test_a_yaml_alias_bomb_source_is_refused_in_under_2_s_and_200_mb(tmp_path: Path):
    from tests.bounded import measure

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_yaml_bomb(), encoding="utf-8")
    assert bomb.stat().st_size < 500
    code = """
    problems = Problems(skip_bad=True)
    items = list(read_sources([path], problems))
    result = [len(items), [str(e) for e in problems.skipped]]
    """
    m = measure(code, setup=f"from knowledge.sources import Problems, read_sources\npath = {str(bomb)!r}")
    assert m.error is None
    assert m.result == [0, [f"{bomb}:line 6, column 15: YAML refused: aliases expand to more than 100,000 nodes "
                            "(at *a4, 105,068 so far, from 15 written): an alias bomb? write the data out instead "
                            "of nesting anchors"]]
    assert m.seconds < 2.0 and m.rss_mb < 200, m


def test_anchors_in_a_yaml_source_still_work(tmp_path: Path):
    path = tmp_path / "qa.yaml"
    path.write_text("common: &t [travel]\nqa:\n  - {q: 故宫在哪？, a: 北京。, tags: *t}\n  - {q: 长城多长？, a: 很长。, tags: *t}\n",
                    encoding="utf-8")
    items, _ = read(path)
    assert [(it.q, it.tags) for it in items] == [("故宫在哪？", ["travel"]), ("长城多长？", ["travel"])]


@pytest.mark.parametrize("skip_bad", [False, True])
def test_nesting_past_the_bounds_is_a_source_error_even_with_skip_bad(tmp_path: Path, skip_bad: bool):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.json").write_text(deep, encoding="utf-8")
    (tmp_path / "deep.jsonl").write_text('{"q": "a?", "a": "b"}\n' + deep + "\n", encoding="utf-8")
    (tmp_path / "deep.yaml").write_text("qa:\n  - q: x\n    a: " + deep + "\n", encoding="utf-8")
    expected = [
        "deep.json: invalid JSON (nested too deeply: knowledge records are a few levels deep)",
        "deep.jsonl:line 2: invalid JSON (nested too deeply: knowledge records are a few levels deep)",
        "deep.yaml:line 3, column 105: YAML refused: nested deeper than 100 levels",
    ]
    if skip_bad:
        items, skipped = read(tmp_path, skip_bad=True)
        assert [it.q for it in items] == ["a?"]
        assert [str(e).replace(f"{tmp_path}/", "") for e in skipped] == expected
    else:
        for name, message in zip(("deep.json", "deep.jsonl", "deep.yaml"), expected, strict=True):
            with pytest.raises(SourceError) as err:
                read(tmp_path / name)
            assert str(err.value).replace(f"{tmp_path}/", "") == message


def test_a_fifo_named_directly_is_refused_without_waiting(tmp_path: Path):
    import os
    import threading

    fifo = tmp_path / "feed.jsonl"
    os.mkfifo(fifo)
    (tmp_path / "qa.jsonl").write_text('{"q": "a?", "a": "b"}\n', encoding="utf-8")
    out: dict[str, object] = {}

    def run() -> None:
        try:
            read(fifo)
        except SourceError as exc:
            out["direct"] = str(exc)
        out["folder"] = read(tmp_path)  # inside a folder it is not a source file at all

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader before failing, so that the session can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert out["direct"] == f"{fifo}: not a regular file (a FIFO): a source is a file or a folder of files"
    items, skipped = out["folder"]
    assert [it.q for it in items] == ["a?"] and skipped == []


def test_knowledge_build_refuses_a_fifo_and_skips_deep_json_without_a_traceback(tmp_path: Path, cache_dir: Path):
    """`xdai knowledge build` as a user runs it, in a child process with a timeout: a hang fails the test."""
    import os
    import subprocess
    import sys

    fifo, deep, good = tmp_path / "fifo", tmp_path / "deep.json", tmp_path / "good.jsonl"
    os.mkfifo(fifo)
    deep.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    good.write_text('{"q": "a?", "a": "b"}\n', encoding="utf-8")
    env = {**os.environ, "XDAI_PATHS_CACHE_DIR": str(cache_dir)}

    def build(*args: Path | str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xdai", "knowledge", "build", *map(str, args), "--quiet"],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False)

    refused = build(fifo, "--out", tmp_path / "kb1")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"Error: {fifo}: not a regular file (a FIFO): a source is a file or a folder of files" in refused.stderr
    skipped = build(fifo, deep, good, "--skip-bad", "--out", tmp_path / "kb2")
    assert skipped.returncode == 0 and "Traceback" not in skipped.stderr, skipped.stderr
    assert f"skipped: {fifo}: not a regular file (a FIFO)" in skipped.stderr
    assert f"skipped: {deep}: invalid JSON (nested too deeply" in skipped.stderr
    assert f"built {tmp_path / 'kb2'}: 1 items (1 qa) from 3 source(s)" in skipped.stderr
