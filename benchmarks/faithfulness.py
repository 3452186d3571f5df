"""Faithfulness on the seed's dialogues: do the shipped bots use the facts they are given, and only those?

    python benchmarks/faithfulness.py                          # this checkout, the bots' default model
    python benchmarks/faithfulness.py --code /tmp/before       # another checkout's code and packs (e.g. today's),
                                                              # scored by this checkout's measure
    python benchmarks/faithfulness.py --rendering transcript   # force a rendering (xdai.render)

`benchmarks/data/seed_dialogues.jsonl` holds multi-turn conversations with the shipped bots, built from the seed's
lines and their natural continuations; a turn may name the fact it should use (``fact``, with ``evidence``: strings
any of which shows that the reply used it) or say that the bot should decline (``decline``: the packs do not hold
the answer). Every conversation runs through the bot as served (its persona, packs, flow and default model, each
bot's sampling seeded), and the replies are judged without a model (`xdai.eval.faithfulness`) against what their
prompt held: the injected knowledge, the selected history, the persona and the utterance.

Per bot it prints: replies (model-written ones; the flow's scripted lines are the bot author's, not judged),
unsupported claims per reply, the share of replies with any unsupported claim or contradiction, tagged-fact use
(the evidence appears), declines where due, and declines where a fact was due (false declines). Generation runs in
a child process with `--code` first on its path, so "before" and "after" differ in code and packs only; the
measure is always this checkout's. `--out` keeps the replies (JSONL) and `--json` the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DIALOGUES = ROOT / "benchmarks" / "data" / "seed_dialogues.jsonl"
SEED = 7
DECLINE = re.compile(
    r"不知道|不清楚|不太清楚|不太了解|没有(确切|相关|这方面)?的?(信息|资料|消息)|不敢乱说|说不准|不好说|不晓得|"
    r"无从得知|未曾听说|没听说|转接人工|don't know|do not know|not sure|no information|no reliable",
    re.IGNORECASE,
)


def load_dialogues(path: Path, bots: set[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if not bots or r["bot"] in bots]
    return rows[:limit] if limit else rows


# -- generation (runs with the code under test first on sys.path) --------------------------------------------------
def generate(dialogues: list[dict[str, Any]], out: Path, rendering: str) -> None:
    """Run every conversation through its bot as served; one JSON line per turn."""
    import dataclasses

    from bots.assemble import build_bot
    from bots.registry import load_bots
    from xdai.config import REPO_ROOT

    specs = load_bots(REPO_ROOT / "bots")
    stores = Path(tempfile.mkdtemp(prefix="faithfulness-stores-"))
    built: dict[str, Any] = {}

    def bot_for(name: str) -> Any:
        if name not in built:
            spec = specs[name]
            options = dict(spec.options)
            options["generation"] = {**dict(options.get("generation") or {}), "seed": SEED}
            bot = build_bot(dataclasses.replace(spec, options=options), stores)
            agent = getattr(bot, "agent", bot)
            if rendering != "auto" and hasattr(agent, "renderer"):
                from xdai.render import renderer_for

                agent.renderer = renderer_for(agent.backend, rendering)
            built[name] = bot
        return built[name]

    async def run_one(conv: dict[str, Any], sink: Any) -> None:
        bot = bot_for(conv["bot"])
        history = bot.new_history()
        session = f"bench-{conv['id']}"
        bot.open_session(session, history)
        for index, turn in enumerate(conv["turns"]):
            started = time.perf_counter()
            reply = None
            async for item in bot.respond(history, turn["user"], session=session):
                if type(item).__name__ == "Reply":
                    reply = item
            assert reply is not None
            if reply.finish_reason in ("stop", "length"):
                history.append(turn["user"], reply.text)
            prompt = reply.prompt
            scripted = reply.usage.get("prompt_tokens", 0) == 0 and reply.usage.get("completion_tokens", 0) == 0
            row = {
                "id": conv["id"], "bot": conv["bot"], "turn": index, "user": turn["user"], "reply": reply.text,
                "finish": reply.finish_reason, "scripted": scripted, "seconds": round(time.perf_counter() - started, 2),
                "knowledge": [g["text"] for g in reply.grounding if g.get("kind") != "lore"],
                "context": [p.text for p in prompt.parts if p.kind in ("persona", "lore", "example", "exchange",
                                                                        "utterance")],
                "rendering": getattr(prompt, "rendering", "transcript"),
                "choice": (getattr(prompt, "rerank", None) or {}).get("how"),
                **{k: turn[k] for k in ("fact", "evidence", "decline") if k in turn},
            }
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            print(f"{conv['id']}#{index} [{row['seconds']:.1f}s] {turn['user']} -> {reply.text}", file=sys.stderr)
        bot.close_session(session)

    with out.open("w", encoding="utf-8") as sink:
        for conv in dialogues:
            asyncio.run(run_one(conv, sink))


# -- scoring (this checkout's measure) -----------------------------------------------------------------------------
def score(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    from xdai.eval.faithfulness import check_reply

    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        for key in (row["bot"], "all"):
            a = acc[key]
            a["turns"] += 1
            declined = bool(DECLINE.search(row["reply"]))
            if not row["scripted"]:
                verdict = check_reply(row["reply"], row["knowledge"], row["context"])
                row["unsupported"] = [c.text for c in verdict.unsupported]
                row["contradictions"] = [x.claim.text for x in verdict.contradictions]
                a["replies"] += 1
                a["unsupported"] += len(verdict.unsupported)
                a["contradictions"] += len(verdict.contradictions)
                a["unfaithful"] += 0 if verdict.faithful else 1
            if row.get("evidence"):
                a["fact_turns"] += 1
                a["fact_used"] += any(e.lower() in row["reply"].lower() for e in row["evidence"])
                a["false_declines"] += declined
            if row.get("decline"):
                a["decline_turns"] += 1
                a["declined"] += declined
            a["seconds"] += row.get("seconds", 0.0)
    out = {}
    for key, a in acc.items():
        replies = max(a["replies"], 1)
        out[key] = {
            "turns": int(a["turns"]), "replies": int(a["replies"]),
            "unsupported_per_reply": a["unsupported"] / replies,
            "contradictions_per_reply": a["contradictions"] / replies,
            "share_unfaithful": a["unfaithful"] / replies,
            "fact_use": a["fact_used"] / a["fact_turns"] if a["fact_turns"] else float("nan"),
            "fact_turns": int(a["fact_turns"]),
            "declines_due": a["declined"] / a["decline_turns"] if a["decline_turns"] else float("nan"),
            "decline_turns": int(a["decline_turns"]),
            "false_declines": a["false_declines"] / a["fact_turns"] if a["fact_turns"] else float("nan"),
            "seconds_per_turn": a["seconds"] / max(a["turns"], 1),
        }
    return out


def table(figures: dict[str, dict[str, float]], label: str) -> str:
    head = (f"{label}\n{'bot':<12} {'replies':>7} {'unsup/reply':>11} {'share any':>9} {'fact use':>8} "
            f"{'declines due':>12} {'false decl':>10} {'s/turn':>6}")
    lines = [head]
    for key in sorted(figures, key=lambda k: (k == "all", k)):
        f = figures[key]
        lines.append(
            f"{key:<12} {f['replies']:>7} {f['unsupported_per_reply']:>11.2f} {f['share_unfaithful']:>9.0%} "
            f"{_pct(f['fact_use']):>8} {_pct(f['declines_due']):>12} {_pct(f['false_declines']):>10} "
            f"{f['seconds_per_turn']:>6.1f}")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "-" if x != x else f"{x:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialogues", type=Path, default=DIALOGUES)
    parser.add_argument("--code", type=Path, default=None, help="a checkout whose code and packs generate")
    parser.add_argument("--rendering", default="auto", help="auto | chat | transcript | glm")
    parser.add_argument("--bots", default="", help="comma-separated bot names (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many conversations")
    parser.add_argument("--out", type=Path, default=None, help="keep the replies here (JSONL)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--label", default="", help="a name for this run in the output")
    parser.add_argument("--score", type=Path, default=None, help="only score a replies file written earlier")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    bots = {b for b in args.bots.split(",") if b}
    out = args.out or Path(tempfile.mkdtemp(prefix="faithfulness-")) / "replies.jsonl"
    if args.generate_only:
        generate(load_dialogues(args.dialogues, bots, args.limit), out, args.rendering)
        return
    started = time.time()
    if args.score is None:
        if args.code is not None:  # the other checkout generates; this one scores
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(args.code.resolve()), os.environ.get("PYTHONPATH", "")]))
            cmd = [sys.executable, str(Path(__file__).resolve()), "--generate-only", "--dialogues", str(args.dialogues),
                   "--rendering", args.rendering, "--out", str(out), "--bots", args.bots]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            subprocess.run(cmd, env=env, cwd=str(args.code), check=True)
        else:
            generate(load_dialogues(args.dialogues, bots, args.limit), out, args.rendering)
    rows = [json.loads(line) for line in (args.score or out).read_text(encoding="utf-8").splitlines() if line.strip()]
    figures = score(rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    label = args.label or (f"code {args.code}" if args.code else "this checkout")
    print(table(figures, f"{label} · rendering {args.rendering} · {len(rows)} turns · {time.time() - started:.0f} s · "
                         f"load {load:.1f} on {os.cpu_count()} cores"))
    print(f"replies: {args.score or out}")
    if args.json:
        args.json.write_text(json.dumps({"label": label, "figures": figures, "load": load}, ensure_ascii=False,
                                        indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
