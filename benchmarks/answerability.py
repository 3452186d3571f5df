"""Calibrate and report answerability ("answer vs decline") for the bots that must not guess.

    python benchmarks/answerability.py              # front desk and interviewer: fit, report, write the models
    python benchmarks/answerability.py --check      # report only; fail if a shipped model differs from a refit

Each bot's labelled set (tests/bots/data/answerability_BOT.jsonl, answerable and unanswerable questions for its
pack) is split: every third question of each class is held out; the rest calibrates `xdai.answerability`'s
logistic model over dense, BM25, key-term coverage, missing key terms and bigram overlap. Precision and recall of
"answer" and of "decline" are printed for both parts; the model goes to bots/BOT/answerability.json, which the
bot's flow loads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOTS = ("frontdesk", "interviewer")


def stores_of(bot: str, stores_dir: Path) -> list:
    from bots.registry import ensure_store, load_bots
    from xdai.turn import open_knowledge

    spec = load_bots(ROOT / "bots")[bot]
    return [open_knowledge(path) for path in ensure_store(spec, stores_dir)]


def main() -> int:
    from xdai.answerability import Answerability, calibrate, read_labels

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="do not write; fail when a shipped model differs")
    args = parser.parse_args()
    stores_dir = Path(tempfile.mkdtemp(prefix="answerability-stores-"))
    failed = False
    for bot in BOTS:
        labels_path = ROOT / "tests" / "bots" / "data" / f"answerability_{bot}.jsonl"
        labels = read_labels(labels_path)
        model = calibrate(labels, stores_of(bot, stores_dir), source=str(labels_path.relative_to(ROOT)))
        n_yes = sum(r["answerable"] for r in labels)
        print(f"{bot}: {n_yes} answerable + {len(labels) - n_yes} unanswerable questions")
        for part in ("calibration", "held_out"):
            r = model.report[part]
            print(f"  {part:<11} n={r['n']:>3}  answer P={r['answer_precision']:.2f} R={r['answer_recall']:.2f}"
                  f"  decline P={r['decline_precision']:.2f} R={r['decline_recall']:.2f}")
        shown = model.to_json()
        print(f"  weights {dict(zip(shown['features'], shown['weights'], strict=True))} bias {shown['bias']}")
        target = ROOT / "bots" / bot / "answerability.json"
        if args.check:
            shipped = Answerability.load(target).to_json()
            if shipped["weights"] != model.to_json()["weights"]:
                print(f"  {target}: differs from a refit", file=sys.stderr)
                failed = True
        else:
            model.save(target)
            print(f"  wrote {target.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
