"""Curation throughput: items/s of a whole `knowledge build` vs the raw encode throughput of the same embedder.

Both are measured in this run, on the same texts (the built store's items), with the embedder loaded beforehand
and the embedding cache off, so the ratio is what reading, curation, deduplication, indexing and writing cost on
top of embedding. The raw encode is timed before and after the build and averaged, so that a machine whose load
drifts during the run (a shared one) does not favour either side. Target: ratio >= 0.8.

    .venv/bin/python benchmarks/curation_throughput.py [--kb PATH] [--entities N] [--embedder NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from knowledge.embed import get_embedder  # noqa: E402
from knowledge.store import Store  # noqa: E402
from xdai.config import load_config  # noqa: E402

DEFAULT_KB = REPO.parent / "shared" / "data" / "kdconv" / "travel" / "kb_travel.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kb", type=Path, default=DEFAULT_KB, help="KdConv-shaped knowledge base (JSON)")
    ap.add_argument("--entities", type=int, default=100,
                    help="first N entities of the KB (0: all). 100 entities make ~660 items")
    ap.add_argument("--embedder", default="default")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    if not args.kb.is_file():
        sys.exit(f"{args.kb}: not found (the KdConv travel KB lives in ../shared/data/kdconv/travel/)")

    kb = json.loads(args.kb.read_text(encoding="utf-8"))
    names = list(kb)[: args.entities] if args.entities else list(kb)
    config = load_config()
    config.embedder.batch_size = args.batch_size
    settings = config.knowledge_settings()
    emb = get_embedder(args.embedder)
    emb.encode(["预热", "warm-up"], role="passage")

    def encode_seconds(texts: list[str]) -> float:
        start = time.perf_counter()
        emb.encode(texts, batch_size=args.batch_size, role="passage")
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kb.json"
        source.write_text(json.dumps({n: kb[n] for n in names}, ensure_ascii=False), encoding="utf-8")
        # The texts the build will embed (its items' search_text), known beforehand from a dry curation pass.
        from knowledge.curate import CurationReport, clean
        from knowledge.sources import Problems, read_sources

        texts = [it.search_text for it in clean(list(read_sources([source], Problems())),
                                                max_chars=settings.max_item_chars, report=CurationReport())]
        before_s = encode_seconds(texts)
        start = time.perf_counter()
        report = Store.build([source], Path(tmp) / "store", embedder=emb, progress=False, settings=settings,
                             embed_cache=False)
        build_s = time.perf_counter() - start
        after_s = encode_seconds(texts)

    encode_s = (before_s + after_s) / 2
    build_rate = report.items / build_s
    encode_rate = len(texts) / encode_s
    print(f"kb: {args.kb.name}, {len(names)} entities -> {report.items} items "
          f"({', '.join(f'{n} {k}' for k, n in sorted(report.by_kind.items()))}); embedder {emb.name}")
    print(f"knowledge build : {report.items:6d} items in {build_s:7.1f} s = {build_rate:8.1f} items/s")
    print(f"raw encode      : {len(texts):6d} texts in {encode_s:7.1f} s = {encode_rate:8.1f} texts/s "
          f"(mean of {before_s:.1f} s before and {after_s:.1f} s after the build)")
    print(f"ratio build/encode = {build_rate / encode_rate:.2f}x (target >= 0.80)")


if __name__ == "__main__":
    main()
