"""Query latency on a synthetic 100k-item store: `store.query` vs one query embedding + one FAISS search.

The store is real (FAISS HNSW above 50k items, BM25, SQLite, manifest; `Store.open` loads it) and so is every
query: entity resolution, query embedding, dense + BM25 search, fusion. Its items are synthetic (10k made-up
attractions x 10 items). Embedding 100k passages takes hours on a shared 2-core machine, so by default only a pool
of `--pool` items is really embedded and every other item's vector is a pool vector plus noise, renormalised;
`--embed-all` embeds every item instead. The baseline (embedder.encode + index.search on the same FAISS index)
is timed query by query, interleaved with the store queries, so both see the same machine load.
Target: p50 ratio <= 1.5.

    .venv/bin/python benchmarks/query_latency.py [--items 100000] [--queries 300] [--store DIR] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from knowledge.embed import get_embedder  # noqa: E402
from knowledge.item import Item  # noqa: E402
from knowledge.store import Store  # noqa: E402

CHARS = "东南西北春秋金银玉龙凤云山水湖海天星月光明清华安宁平和长乐康福寿永新古青白红紫"
KINDS = ["公园", "博物馆", "古镇", "寺", "山", "湖", "广场", "故居", "美术馆", "植物园"]
PREDICATES = ["门票", "开放时间", "地址", "电话", "建议游玩时间", "周边景点", "交通", "特色", "历史"]


def synthetic_items(n_items: int, seed: int = 0) -> list[Item]:
    rng = random.Random(seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) * 10 < n_items:
        name = "".join(rng.choice(CHARS) for _ in range(rng.randint(2, 3))) + rng.choice(KINDS)
        if name not in seen:
            seen.add(name)
            names.append(name)
    items: list[Item] = []
    for name in names:
        items.append(Item(id="", kind="description", title=name, entity=name, predicate="Information",
                          text=f"{name}位于{rng.choice(CHARS)}{rng.choice(CHARS)}市，是当地有名的{name[-2:]}，"
                               f"以{rng.choice(CHARS)}{rng.choice(CHARS)}景色著称。", source_file="<synthetic>",
                          source_record=f"entity {name}"))
        for p in PREDICATES:
            answer = {"门票": f"{rng.randint(0, 200)}元", "开放时间": f"{rng.randint(6, 10)}:00-{rng.randint(16, 22)}:00",
                      "电话": f"0{rng.randint(10, 999)}-{rng.randint(1000000, 9999999)}"}.get(
                p, f"{rng.choice(names)}、{rng.choice(CHARS)}{rng.choice(CHARS)}路{rng.randint(1, 300)}号")
            q = f"{name}的{p}是什么？"
            items.append(Item(id="", kind="qa", text=f"{q}\n{answer}", q=q, a=answer, entity=name, predicate=p,
                              source_file="<synthetic>", source_record=f"entity {name} {p}"))
    return items[:n_items]


def build(out: Path, n_items: int, pool: int, embed_all: bool, emb) -> Store:
    items = synthetic_items(n_items)
    texts = [it.search_text for it in items]
    t0 = time.perf_counter()
    if embed_all:
        vectors = emb.encode(texts, progress=True)
    else:
        rng = np.random.default_rng(0)
        picked = rng.choice(len(items), size=min(pool, len(items)), replace=False)
        base = emb.encode([texts[i] for i in picked], progress=True)
        vectors = base[rng.integers(0, len(base), size=len(items))]
        vectors[picked] = base
        noisy = np.ones(len(items), dtype=bool)
        noisy[picked] = False
        vectors[noisy] += rng.normal(0, 0.03, size=(int(noisy.sum()), emb.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    print(f"embedded in {time.perf_counter() - t0:.0f}s; writing the store ...", file=sys.stderr)
    t0 = time.perf_counter()
    store = Store.from_vectors(items, vectors, out, embedder=emb)
    print(f"store written in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return store


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--pool", type=int, default=1000, help="items really embedded (see the module docstring)")
    ap.add_argument("--embed-all", action="store_true", help="embed every item (hours on a shared 2-core machine)")
    ap.add_argument("--store", type=Path, default=Path("/tmp/xdai-bench-query-latency"))
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()

    emb = get_embedder()
    manifest = args.store / "manifest.json"
    if args.rebuild or not manifest.is_file() or json.loads(manifest.read_text())["counts"]["items"] != args.items:
        build(args.store, args.items, args.pool, args.embed_all, emb)
    t0 = time.perf_counter()
    store = Store.open(args.store)
    open_s = time.perf_counter() - t0
    index = store.dense_index

    rng = random.Random(1)
    entities = sorted({it.entity for it in store.items if it.entity})
    queries = []
    for i in range(args.queries):
        name, p = rng.choice(entities), rng.choice(PREDICATES)
        if i % 2:  # half name the entity, half refer back to it ("它") as in a dialogue
            queries.append({"query": f"那它的{p}是怎么样的？", "context": [f"你去过{name}吗？", "去过，挺不错的。"]})
        else:
            queries.append({"query": f"{name}的{p}是多少？", "context": []})
    for q in queries[:5]:  # warm-up: first-call costs (caches, lazy imports) are not query latency
        store.query(q["query"], context=q["context"], top_k=args.top_k)

    store_t, base_t, correct = [], [], 0
    for q in queries:
        t0 = time.perf_counter()
        hits = store.query(q["query"], context=q["context"], top_k=args.top_k)
        store_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        vec = emb.encode([q["query"]], role="query")
        index.search(vec, args.top_k)
        base_t.append(time.perf_counter() - t0)
        correct += bool(hits)

    s50, s99 = percentile(store_t, 50), percentile(store_t, 99)
    b50, b99 = percentile(base_t, 50), percentile(base_t, 99)
    print(f"store: {len(store.items):,} items, dense {store.manifest['dense']['type']}, "
          f"bm25 {store.manifest['bm25']['tokenizer']['name']}, embedder {emb.name}; opened in {open_s:.1f}s")
    print(f"{len(queries)} queries (top-{args.top_k}, half with dialogue context), {correct} answered")
    print(f"store.query            p50 {s50:7.1f} ms   p99 {s99:7.1f} ms")
    print(f"embed + FAISS search   p50 {b50:7.1f} ms   p99 {b99:7.1f} ms")
    print(f"ratio p50 = {s50 / b50:.2f}x (target <= 1.5), p99 = {s99 / b99:.2f}x")


if __name__ == "__main__":
    main()
