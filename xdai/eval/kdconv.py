"""Replay KdConv dialogues through an `Agent`: generate every bot turn that has gold knowledge, per configuration.

KdConv (Zhou et al., ACL 2020) is a list of dialogues, ``{"messages": [{"message": str, "attrs"?: [{name,
attrname, attrvalue}]}]}``. A message with ``attrs`` used knowledge; we generate it from the messages before it
(the one just before is the utterance, the earlier ones pair into exchanges) and compare it with the gold message
and with the gold attribute values. The same turns run under each configuration, so the ablations compare like
with like.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xdai.eval.faithfulness import check_prompt_reply
from xdai.eval.faithfulness import summarise as summarise_faithfulness
from xdai.eval.metrics import knowledge_f1, summarise, unigram_f1
from xdai.history import Exchange, History

# name -> (use_knowledge, use_selection)
CONFIGS: dict[str, tuple[bool, bool]] = {
    "full": (True, True),
    "no-knowledge": (False, True),
    "no-selection": (True, False),
}


class KdConvError(ValueError):
    """The file is not KdConv-shaped; the message names the file and the dialogue/message."""


@dataclass
class Turn:
    """One bot turn to generate: where it is, what came before, and the gold reply and knowledge."""

    dialogue: int
    message: int
    exchanges: list[Exchange]
    utterance: str
    gold: str
    knowledge: list[str]
    entities: list[str] = field(default_factory=list)


def load_turns(path: str | Path, limit: int | None = None) -> list[Turn]:
    """The turns with gold `attrs` (after the first message), in file order, at most `limit`."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise KdConvError(f"{file}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
    if not isinstance(data, list):
        raise KdConvError(f"{file}: expected a list of dialogues, got {type(data).__name__}")
    turns: list[Turn] = []
    for d, dialogue in enumerate(data):
        messages = dialogue.get("messages") if isinstance(dialogue, dict) else None
        if not isinstance(messages, list):
            raise KdConvError(f"{file}: dialogue {d}: expected an object with a 'messages' list")
        texts = []
        for m, msg in enumerate(messages):
            if not isinstance(msg, dict) or not isinstance(msg.get("message"), str):
                raise KdConvError(f"{file}: dialogue {d} message {m}: expected an object with a 'message' string")
            texts.append(msg["message"])
        for m, msg in enumerate(messages):
            attrs = msg.get("attrs") or []
            if m == 0 or not attrs:
                continue
            if not isinstance(attrs, list) or not all(isinstance(a, dict) and "attrvalue" in a for a in attrs):
                raise KdConvError(f"{file}: dialogue {d} message {m}: 'attrs' must be a list of {{name, attrname, attrvalue}}")
            turns.append(
                Turn(
                    dialogue=d,
                    message=m,
                    exchanges=pair_exchanges(texts[: m - 1]),
                    utterance=texts[m - 1],
                    gold=msg["message"],
                    knowledge=[str(a["attrvalue"]) for a in attrs],
                    entities=sorted({str(a.get("name", "")) for a in attrs} - {""}),
                )
            )
            if limit is not None and len(turns) >= limit:
                return turns
    return turns


def pair_exchanges(messages: Sequence[str]) -> list[Exchange]:
    """Messages before the utterance as (user, bot) exchanges, paired from the end; a leading odd one is a bot line."""
    out: list[Exchange] = []
    end = len(messages)
    while end >= 2:
        out.append(Exchange(user=messages[end - 2], bot=messages[end - 1]))
        end -= 2
    if end == 1:
        out.append(Exchange(user="", bot=messages[0]))
    return out[::-1]


@dataclass
class Result:
    """Per configuration: its metrics and every generated reply."""

    config: str
    metrics: dict[str, float]
    replies: list[str]
    turn_f1: list[float]
    turn_knowledge_f1: list[float]
    grounding: list[list[str]]
    faithfulness: list[dict[str, Any]] = field(default_factory=list)  # per reply: claims, unsupported, contradictions


def replay(
    agent: Any,
    turns: Sequence[Turn],
    configs: Sequence[str],
    *,
    progress: Callable[[str], None] | None = None,
) -> list[Result]:
    """Generate every turn under every configuration (the agent's switches are restored afterwards)."""
    saved = (agent.use_knowledge, agent.use_selection)
    results = []
    try:
        for name in configs:
            agent.use_knowledge, agent.use_selection = CONFIGS[name]
            replies, grounding, verdicts = [], [], []
            for turn in turns:
                history = History()
                history.exchanges.extend(turn.exchanges)
                reply = asyncio.run(agent.reply_text(history, turn.utterance))
                replies.append(reply.text)
                grounding.append([g["text"] for g in reply.grounding])
                verdicts.append(check_prompt_reply(reply.text, reply.prompt))  # against what its prompt held
                if progress:
                    progress(name)
            faith = summarise_faithfulness(verdicts)
            metrics = summarise(replies, [t.gold for t in turns], [t.knowledge for t in turns])
            metrics.update(unsupported_per_reply=faith["unsupported_per_reply"],
                           contradictions_per_reply=faith["contradictions_per_reply"],
                           share_unfaithful=faith["share_unfaithful"])
            results.append(
                Result(
                    config=name,
                    metrics=metrics,
                    replies=replies,
                    turn_f1=[unigram_f1(r, t.gold) for r, t in zip(replies, turns, strict=True)],
                    turn_knowledge_f1=[knowledge_f1(r, t.knowledge) for r, t in zip(replies, turns, strict=True)],
                    grounding=grounding,
                    faithfulness=[v.to_dict() for v in verdicts],
                )
            )
    finally:
        agent.use_knowledge, agent.use_selection = saved
    return results


def to_json(turns: Sequence[Turn], results: Sequence[Result], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "meta": meta,
        "metrics": {r.config: r.metrics for r in results},
        "turns": [
            {**{k: v for k, v in asdict(t).items() if k != "exchanges"},
             "history": [asdict(e) for e in t.exchanges],
             "replies": {r.config: r.replies[i] for r in results},
             "knowledge_f1": {r.config: round(r.turn_knowledge_f1[i], 4) for r in results},
             "faithfulness": {r.config: r.faithfulness[i] for r in results if r.faithfulness},
             "grounding": {r.config: r.grounding[i] for r in results}}
            for i, t in enumerate(turns)
        ],
    }
