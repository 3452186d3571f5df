"""Per-turn overhead of the dialogue engine vs the retrieval floor, measured in one run.

A turn's work before the model runs: history selection (embed the utterance, score 50 earlier exchanges),
retrieval (the utterance and newly selected exchanges against a 100k-item store and the persona's inline store),
and prompt assembly (priorities, budget, escaping). The floor it is compared with: one query embedding plus one
FAISS search of the same index (k = the retriever's candidate depth). Target: p50 ratio <= 1.5.

The synthetic store is built without embedding 100k texts: a few hundred real item texts are embedded and every
item's vector is a noisy mix of two of them (normalised), so the index has realistic clusters; BM25 indexes the
real 100k texts.

    .venv/bin/python benchmarks/turn_overhead.py [--items 100000] [--history 50] [--turns 30]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from knowledge.bm25 import BM25Index, default_tokenizer_spec
from knowledge.embed import shared_embedder
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--turns", type=int, default=20, help="measured turns (the history grows by one per turn)")
    ap.add_argument("--persona", default="xiaodai")
    args = ap.parse_args()
    rng = random.Random(0)
    embedder = shared_embedder("default")

    t0 = time.perf_counter()
    store = synthetic_store(args.items, embedder, rng)
    print(f"built a {len(store)}-item store ({store.manifest['dense']['type']}) in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr)
    agent = Agent(load_persona(args.persona), stores=[NamedStore("synthetic", store)], backend=None, embedder=embedder)
    talk = utterances(args.history + args.turns + 3, rng)
    history = History()
    for user, bot in talk[: args.history]:
        history.append(user, bot)
    agent.build_prompt(history, "热身")  # fills the history's embedding cache once, like a live session
    index = store.dense_index
    depth = store.retriever.candidates

    turn_times, floor_times, append_times = [], [], []
    for i in tqdm(range(args.turns), desc="turns", file=sys.stderr):
        user, bot = talk[args.history + i]
        # the floor: one query embedding + one FAISS search, on a text nobody has embedded yet
        fresh = f"{user}（基线{i}）"
        t = time.perf_counter()
        vec = embedder.inner.encode([fresh], role="query")
        index.search(vec, depth)
        floor_times.append(time.perf_counter() - t)
        # one turn: selection + retrieval + assembly, then the exchange joins the history
        t = time.perf_counter()
        prompt = agent.build_prompt(history, user)
        turn_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        history.append(user, bot)  # embeds the finished exchange, between turns (reported on its own line)
        append_times.append(time.perf_counter() - t)
    assert prompt.parts, "no prompt built"
    p50_turn, p50_floor = statistics.median(turn_times), statistics.median(floor_times)
    print(f"turn (selection + retrieval + assembly): p50 {p50_turn * 1e3:.1f} ms  p90 {pct(turn_times, 90) * 1e3:.1f} ms")
    print(f"floor (1 query embedding + 1 FAISS search, k={depth}): p50 {p50_floor * 1e3:.1f} ms  "
          f"p90 {pct(floor_times, 90) * 1e3:.1f} ms")
    print(f"between turns (History.append embeds the finished exchange): p50 {statistics.median(append_times) * 1e3:.1f} ms")
    ratio = p50_turn / p50_floor
    print(f"turn_overhead: {len(store)} items, {args.history}-{args.history + args.turns}-exchange history, "
          f"{args.turns} turns: "
          f"p50 ratio {ratio:.2f}x (target <= 1.5x) {'OK' if ratio <= 1.5 else 'OVER TARGET'}")


if __name__ == "__main__":
    main()
