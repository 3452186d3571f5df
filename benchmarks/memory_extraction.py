"""Precision and recall of memory extraction on the labelled user utterances shipped with the tests.

    python benchmarks/memory_extraction.py                      # the rules
    python benchmarks/memory_extraction.py --model smollm2      # ...and the model alone, and both combined
    python benchmarks/memory_extraction.py --model default --json

`tests/xdai/memory/data/extraction.jsonl` is the set the rules were written against; `extraction_heldout.jsonl`
was written afterwards and not tuned on before its first measurement (see the note in docs/protocol.md).
A wrong memory is worse than none: the target is precision >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xdai.memory.evaluate import Labelled, Score, evaluate, load_labelled  # noqa: E402
from xdai.memory.extract import ModelExtractor, RuleExtractor, combine  # noqa: E402
from xdai.memory.items import Fact  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "xdai" / "memory" / "data"
SETS = {"dev": DATA / "extraction.jsonl", "held-out": DATA / "extraction_heldout.jsonl"}


def _line(name: str, score: Score, seconds: float | None = None) -> str:
    took = f"  {seconds:6.1f}s" if seconds is not None else ""
    return (f"{name:<28} precision {score.precision:6.3f}  recall {score.recall:6.3f}  "
            f"(tp {score.true_positives}, predicted {score.predicted}, gold {score.gold}){took}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="also measure this llama_cpp model (smollm2, default, a path)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--errors", action="store_true", help="print every wrong or missed fact")
    args = parser.parse_args()

    sets: dict[str, list[Labelled]] = {name: load_labelled(path) for name, path in SETS.items()}
    sets["all"] = [row for rows in list(sets.values()) for row in rows]
    for lang in ("zh", "en"):
        sets[f"all/{lang}"] = [row for row in sets["all"] if row.lang == lang]
    results: dict[str, dict[str, object]] = {}
    lines = [f"{len(sets['all'])} utterances ({len(sets['all/zh'])} zh, {len(sets['all/en'])} en), "
             f"{sum(len(r.facts) for r in sets['all'])} gold facts, "
             f"{sum(1 for r in sets['all'] if not r.facts)} utterances with none"]
    rules = RuleExtractor()
    for name, rows in sets.items():
        started = time.perf_counter()
        score = evaluate(rows, lambda text, lang: rules.extract(text, lang))
        results[f"rules/{name}"] = {**score.to_json(), "errors": score.errors}
        lines.append(_line(f"rules   {name}", score, time.perf_counter() - started))
    if args.model:
        from xdai.backends import get_backend

        backend = get_backend("llama_cpp", args.model, n_ctx=2048)
        model = ModelExtractor(backend)
        found: dict[str, list[Fact]] = {}
        started = time.perf_counter()
        for number, row in enumerate(sets["all"], 1):  # the model once per utterance; "both" combines
            found[row.text] = asyncio.run(model.extract(row.text, row.lang))
            print(f"\r{number}/{len(sets['all'])} utterances through {args.model}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        seconds = time.perf_counter() - started
        for label, extract in (("model", lambda text, lang: found[text]),
                               ("both", lambda text, lang: combine(rules.extract(text, lang), found[text]))):
            score = evaluate(sets["all"], extract)
            results[f"{label}/all"] = {**score.to_json(), "errors": score.errors, "model": args.model,
                                       "seconds": round(seconds, 1)}
            lines.append(_line(f"{label:<7} all ({args.model})", score, seconds if label == "model" else None))
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return
    print("\n".join(lines))
    if args.errors:
        for name, result in results.items():
            for error in result["errors"]:  # type: ignore[union-attr]
                print(f"{name}: {error}")


if __name__ == "__main__":
    main()
