"""Sources -> raw `Item`s: one reader per format, chosen by extension and shape, with file:line provenance.

Formats (documented with examples in docs/knowledge.md):
  - QA pairs (``q``, ``a``, optional ``source``, ``tags``): JSONL, CSV/TSV, YAML, JSON list.
  - Descriptions (``title``, ``text``): JSONL, YAML, JSON list; Markdown and plain-text documents are split by
    heading and paragraph within a length budget.
  - Knowledge-base triples in the KdConv shape ``{entity: [[s, p, o], ...]}`` (JSON): the ``Information``
    predicate becomes the entity's description; every other predicate one QA pair per (subject, predicate), its
    objects joined, because a subject often lists one predicate several times (``周边景点``).
  - LangChain ``Document``s (in-process).

Readers report problems through `Problems`: by default the first one raises `SourceError` naming the file and
line/record; with ``skip_bad`` the record (or the unreadable file) is skipped and the problem kept for the report.
Input is bounded: only regular files are opened (a FIFO or a device named directly is refused, never waited on),
YAML goes through `knowledge.safe_yaml` (alias expansion and nesting bounded), and JSON nested deeper than the
interpreter can parse is a `SourceError`, not a traceback.
Items come out un-normalised and without ids; `knowledge.curate` does the rest.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from knowledge import safe_yaml
from knowledge.item import Item

QA_EXTS = {".jsonl", ".csv", ".tsv", ".yaml", ".yml", ".json"}
DOC_EXTS = {".md", ".markdown", ".txt"}
SUPPORTED = sorted(QA_EXTS | DOC_EXTS)
INFORMATION = "Information"
QUESTION_TEMPLATES = {"zh": "{s}的{p}是什么？", "en": "What is the {p} of {s}?"}
ANSWER_JOINERS = {"zh": "、", "en": ", "}
DOC_BUDGET = 600  # characters per description cut from a plain-text or Markdown document

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class SourceError(ValueError):
    """A source cannot be read as knowledge. `where` is "line 12", "row 7", "record 3", "entity 故宫 triple 2"..."""

    def __init__(self, file: str | Path, where: str, message: str) -> None:
        self.file, self.where, self.message = str(file), where, message
        super().__init__(f"{self.file}:{where}: {message}" if where else f"{self.file}: {message}")


@dataclass
class Problems:
    """Collects or raises source problems, depending on ``skip_bad``."""

    skip_bad: bool = False
    skipped: list[SourceError] = field(default_factory=list)

    def report(self, error: SourceError) -> None:
        if not self.skip_bad:
            raise error
        self.skipped.append(error)


def lang_of(text: str) -> str:
    """"zh" when CJK characters carry the text, else "en" (a Chinese character weighs about one English word)."""
    cjk = len(_CJK.findall(text))
    latin = sum(1 for ch in text if "a" <= ch.lower() <= "z")
    return "zh" if cjk and cjk * 4 >= latin else "en"


# --------------------------------------------------------------------------------------------- entry points
def read_sources(sources: Iterable[Any], problems: Problems) -> Iterator[Item]:
    """Items from each source in order: paths (files or folders, recursively), LangChain `Document`s, `Item`s."""
    for source in sources:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED)
                if not files:
                    problems.report(SourceError(path, "", f"folder holds no supported source ({', '.join(SUPPORTED)})"))
                for file in files:
                    yield from read_file(file, problems)
            else:
                yield from read_file(path, problems)
        else:
            objects = list(source) if isinstance(source, (list, tuple)) else [source]
            yield from (obj for obj in objects if isinstance(obj, Item))  # already items (e.g. generated QA)
            yield from read_documents([obj for obj in objects if not isinstance(obj, Item)], problems)


def read_file(path: str | Path, problems: Problems) -> Iterator[Item]:
    path = Path(path)
    try:
        text = _read_text(path, problems)
        ext = path.suffix.lower()
        if ext == ".jsonl":
            yield from _read_jsonl(path, text, problems)
        elif ext in (".csv", ".tsv"):
            yield from _read_csv(path, text, problems, delimiter="\t" if ext == ".tsv" else ",")
        elif ext in (".yaml", ".yml"):
            yield from _read_yaml(path, text, problems)
        elif ext == ".json":
            yield from _read_json(path, text, problems)
        elif ext in (".md", ".markdown"):
            yield from _read_document(path, text, markdown=True)
        elif ext == ".txt":
            yield from _read_document(path, text, markdown=False)
        else:
            raise SourceError(path, "", f"unsupported source type {ext or '(no extension)'!r}; expected one of {', '.join(SUPPORTED)}")
    except SourceError as exc:
        problems.report(exc)  # whole-file problems: with --skip-bad the file is skipped and reported


def read_documents(docs: list[Any], problems: Problems, *, origin: str = "<langchain>") -> Iterator[Item]:
    """LangChain `Document`s: metadata with ``q``/``a`` makes a QA pair, anything else a description."""
    for i, doc in enumerate(docs, 1):
        content = getattr(doc, "page_content", None)
        meta = dict(getattr(doc, "metadata", None) or {})
        if not isinstance(content, str):
            problems.report(SourceError(origin, f"document {i}", f"expected a langchain Document, got {type(doc).__name__}"))
            continue
        file = str(meta.get("source") or origin)
        record = str(meta.get("record") or meta.get("row") or meta.get("page") or f"document {i}")
        if meta.get("q") and (meta.get("a") or content):
            rec = {"q": meta["q"], "a": meta.get("a") or content, "tags": meta.get("tags")}
        else:
            rec = {"title": meta.get("title"), "text": content, "tags": meta.get("tags")}
        try:
            yield _item_from_record(rec, file, record)
        except SourceError as exc:
            problems.report(exc)


# --------------------------------------------------------------------------------------------- decoding
def _read_bytes(path: Path) -> bytes:
    """The bytes of a regular file. Anything else (a FIFO, a device, a socket) is refused before it is opened, and
    opened without blocking and checked again, so that no source can make a build wait forever or read without end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SourceError(path, "", "no such file") from None
    except OSError as exc:
        raise SourceError(path, "", f"cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise SourceError(path, "", f"not a regular file ({_file_kind(mode)}): a source is a file or a folder of files")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):  # replaced since the check above
                raise SourceError(path, "", f"not a regular file ({_file_kind(mode)}): a source is a file or a folder of files")
            return fh.read()
    except OSError as exc:
        raise SourceError(path, "", f"cannot read: {exc.strerror}") from None


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}
    return next((name for test, name in kinds.items() if test(mode)), "not a plain file")


def _json_loads(text: str, path: Path, where: str) -> Any:
    """`json.loads`, with nesting past the interpreter's recursion limit (~1,000 levels) as a SourceError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise SourceError(path, where, "invalid JSON (nested too deeply: knowledge records are a few levels deep)") from None


def _read_text(path: Path, problems: Problems) -> str:
    data = _read_bytes(path)
    if not data.strip():
        raise SourceError(path, "", "file is empty")
    if b"\x00" in data[:8192]:
        raise SourceError(path, "", "binary file (NUL bytes), not a text source")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # Name the first bad line; with --skip-bad drop each undecodable line (kept blank so numbering holds).
    lines = data.split(b"\n")
    out: list[str] = []
    for number, raw in enumerate(lines, 1):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            problems.report(
                SourceError(path, f"line {number}", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); convert the file to UTF-8")
            )
            out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- records
def _as_tags(value: Any, file: Path | str, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [t.strip() for t in re.split(r"[;,|，；]", value) if t.strip()]
    if isinstance(value, list) and all(isinstance(t, (str, int, float)) for t in value):
        return [str(t).strip() for t in value if str(t).strip()]
    raise SourceError(file, where, f"'tags' must be a list of strings or a ';'-separated string, got {value!r}")


def _as_text(rec: dict[str, Any], key: str, file: Path | str, where: str, *, required: bool) -> str | None:
    value = rec.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise SourceError(file, where, f"missing or empty field {key!r}")
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise SourceError(file, where, f"field {key!r} must be text, got {type(value).__name__}")
    return value


def _item_from_record(rec: Any, file: Path | str, where: str) -> Item:
    """One QA pair (``q``/``a``) or description (``text``, optional ``title``) from a mapping."""
    if not isinstance(rec, dict):
        raise SourceError(file, where, f"expected an object with q/a or title/text, got {type(rec).__name__}")
    tags = _as_tags(rec.get("tags"), file, where)
    reference = rec.get("source")
    reference = None if reference is None else str(reference)
    if "q" in rec or "a" in rec:
        q = _as_text(rec, "q", file, where, required=True)
        a = _as_text(rec, "a", file, where, required=True)
        return Item(id="", kind="qa", text=f"{q}\n{a}", q=q, a=a, tags=tags, reference=reference,
                    source_file=str(file), source_record=where)
    if "text" in rec:
        text = _as_text(rec, "text", file, where, required=True)
        title = _as_text(rec, "title", file, where, required=False)
        return Item(id="", kind="description", text=text, title=title, tags=tags, reference=reference,
                    source_file=str(file), source_record=where)
    keys = ", ".join(map(str, rec)) or "none"
    raise SourceError(file, where, f"expected fields q and a (a QA pair) or text (a description); found: {keys}")


def _read_jsonl(path: Path, text: str, problems: Problems) -> Iterator[Item]:
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            try:
                rec = _json_loads(line, path, where)
            except json.JSONDecodeError as exc:
                raise SourceError(path, where, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
            if _is_kb(rec):
                yield from _kb_items(path, rec, problems, where_prefix=f"{where} ")
            else:
                yield _item_from_record(rec, path, where)
        except SourceError as exc:
            problems.report(exc)


def _read_csv(path: Path, text: str, problems: Problems, *, delimiter: str) -> Iterator[Item]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except (StopIteration, csv.Error) as exc:
        raise SourceError(path, "line 1", f"cannot read the CSV header ({exc})") from None
    if "q" in header or "a" in header:
        needed = ["q", "a"]
    elif "text" in header or "title" in header:
        needed = ["text"]
    else:
        raise SourceError(path, "line 1", f"header needs columns q,a (QA pairs) or title,text (descriptions); found: {', '.join(header)}")
    missing = [c for c in needed if c not in header]
    if missing:
        raise SourceError(path, "line 1", f"missing column {', '.join(map(repr, missing))} (header: {', '.join(header)})")
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.report(SourceError(path, f"line {start}", f"malformed CSV ({exc})"))
            continue
        if not any(cell.strip() for cell in row):
            continue
        where = f"line {start}"
        if len(row) != len(header):
            problems.report(SourceError(path, where, f"expected {len(header)} columns ({', '.join(header)}), got {len(row)}"))
            continue
        try:
            yield _item_from_record({k: v for k, v in zip(header, row, strict=True) if k}, path, where)
        except SourceError as exc:
            problems.report(exc)


class _LineLoader(safe_yaml.SafeLoader):
    """The bounded SafeLoader, remembering each mapping's line, so records can name where they came from."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path, text: str, problems: Problems) -> Iterator[Item]:
    try:
        data = safe_yaml.load(text, _LineLoader)
    except safe_yaml.YAMLBoundsError as exc:
        mark = exc.problem_mark
        raise SourceError(path, f"line {mark.line + 1}, column {mark.column + 1}", f"YAML refused: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SourceError(path, where, f"YAML syntax error: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        raise SourceError(path, "", "file is empty")
    records = _top_level_records(path, data)
    for i, rec in enumerate(records, 1):
        line = rec.pop("__line__", None) if isinstance(rec, dict) else None
        where = f"line {line}" if line else f"record {i}"
        try:
            yield _item_from_record(_strip_lines(rec), path, where)
        except SourceError as exc:
            problems.report(exc)


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != "__line__"}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def _top_level_records(path: Path, data: Any) -> list[Any]:
    """A list of records, or a mapping holding them under ``qa``/``descriptions``/``items``."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        keys = [k for k in ("qa", "descriptions", "items") if k in data]
        if keys:
            records: list[Any] = []
            for k in keys:
                if not isinstance(data[k], list):
                    raise SourceError(path, f"key {k!r}", f"expected a list of records, got {type(data[k]).__name__}")
                records.extend(data[k])
            return records
        if "q" in data or "text" in data:
            return [data]
    raise SourceError(path, "", "expected a list of records (q/a or title/text), or a mapping with 'qa'/'descriptions'/'items'")


def _is_kb(data: Any) -> bool:
    """The KdConv knowledge-base shape: every value a list of 3-element lists."""
    return (
        isinstance(data, dict)
        and bool(data)
        and not {"qa", "descriptions", "items"} & set(data)
        and all(isinstance(v, list) for v in data.values())
    )


def _read_json(path: Path, text: str, problems: Problems) -> Iterator[Item]:
    try:
        data = _json_loads(text, path, "")
    except json.JSONDecodeError as exc:
        raise SourceError(path, f"line {exc.lineno}, column {exc.colno}", f"invalid JSON ({exc.msg})") from None
    if _is_kb(data):
        yield from _kb_items(path, data, problems)
        return
    for i, rec in enumerate(_top_level_records(path, data), 1):
        try:
            yield _item_from_record(rec, path, f"record {i}")
        except SourceError as exc:
            problems.report(exc)


def _kb_items(path: Path, data: dict[str, Any], problems: Problems, *, where_prefix: str = "") -> Iterator[Item]:
    """KdConv triples: Information -> description; other predicates -> one QA pair per (subject, predicate)."""
    for entity, triples in data.items():
        grouped: dict[tuple[str, str], tuple[list[str], list[int]]] = {}
        for t, triple in enumerate(triples, 1):
            where = f"{where_prefix}entity {entity} triple {t}"
            if not (isinstance(triple, list) and len(triple) == 3 and all(isinstance(x, (str, int, float)) for x in triple)):
                problems.report(SourceError(path, where, f"expected a triple [subject, predicate, object], got {json.dumps(triple, ensure_ascii=False)[:120]}"))
                continue
            s, p, o = (str(x).strip() for x in triple)
            if not s or not p or not o:
                problems.report(SourceError(path, where, "triple has an empty subject, predicate or object"))
                continue
            objects, numbers = grouped.setdefault((s, p), ([], []))
            if o not in objects:
                objects.append(o)
            numbers.append(t)
        for (s, p), (objects, numbers) in grouped.items():
            record = f"{where_prefix}entity {entity} triple{'s' if len(numbers) > 1 else ''} {','.join(map(str, numbers))}"
            if p == INFORMATION:
                yield Item(id="", kind="description", text="\n".join(objects), title=s, entity=s, predicate=p,
                           source_file=str(path), source_record=record)
            else:
                lang = "zh" if _CJK.search(s + p) else "en"  # "in KIDS with LINE FRIENDS乐园" + "电话" is Chinese
                q = QUESTION_TEMPLATES[lang].format(s=s, p=p)
                a = ANSWER_JOINERS[lang].join(objects)
                yield Item(id="", kind="qa", text=f"{q}\n{a}", q=q, a=a, entity=s, predicate=p,
                           source_file=str(path), source_record=record)


# --------------------------------------------------------------------------------------------- documents
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _read_document(path: Path, text: str, *, markdown: bool, budget: int = DOC_BUDGET) -> Iterator[Item]:
    """Descriptions cut by heading (Markdown) and paragraph, packed up to `budget` characters each."""
    title = path.stem
    section: list[tuple[int, str]] = []  # (line number, paragraph)
    para: list[str] = []
    para_start = 0
    in_fence = False

    def flush_para() -> None:
        nonlocal para
        if para:
            section.append((para_start, "\n".join(para)))
        para = []

    def flush_section() -> Iterator[Item]:
        flush_para()
        yield from _pack(path, title, section, budget)
        section.clear()

    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if markdown and stripped.startswith("```"):
            in_fence = not in_fence
        heading = _HEADING.match(stripped) if markdown and not in_fence else None
        if heading:
            yield from flush_section()
            title = heading.group(2) or title
            continue
        if not stripped and not in_fence:
            flush_para()
            continue
        if not para:
            para_start = number
        para.append(line.rstrip())
    yield from flush_section()


def split_to_budget(text: str, budget: int) -> list[str]:
    """Cut one over-long paragraph at sentence ends (then hard) so that each piece fits the budget."""
    sentences = [s for s in re.split(r"(?<=[。！？!?；;])|(?<=\.)\s+", text) if s and s.strip()]
    pieces: list[str] = []
    current = ""
    for sentence in sentences:
        while len(sentence) > budget:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:budget])
            sentence = sentence[budget:]
        if len(current) + len(sentence) > budget and current:
            pieces.append(current)
            current = ""
        current += sentence
    if current.strip():
        pieces.append(current)
    return pieces


def _pack(path: Path, title: str, paragraphs: list[tuple[int, str]], budget: int) -> Iterator[Item]:
    chunk: list[str] = []
    first = last = 0
    for line, para in paragraphs:
        for piece in split_to_budget(para, budget) if len(para) > budget else [para]:
            if chunk and sum(map(len, chunk)) + len(piece) > budget:
                yield _doc_item(path, title, chunk, first, last)
                chunk = []
            if not chunk:
                first = line
            chunk.append(piece)
            last = line + para.count("\n")
    if chunk:
        yield _doc_item(path, title, chunk, first, last)


def _doc_item(path: Path, title: str, chunk: list[str], first: int, last: int) -> Item:
    where = f"line {first}" if first == last else f"lines {first}-{last}"
    return Item(id="", kind="description", text="\n\n".join(chunk), title=title, source_file=str(path), source_record=where)
