"""Two bots answering the same scripted conversations, for a pairwise study.

A script is a JSONL row per conversation: ``{"id", "turns": [{"user": ..., "bot"?: ..., "facts"?: [...]}]}``
(``messages``/``context`` lists of ``{speaker|role, text|content}`` work too). At every user turn both bots answer
the same history, so a rater compares replies to one and the same context. The history then goes on with the
script's own bot line when it has one, else with one of the two replies picked by a seeded coin: neither bot's
line is always the one kept, so neither bot always answers from its own earlier words.

The shown knowledge is the turn's tagged facts when the script has them, else what either bot was grounded on.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xdai.eval.pairs import StudyError
from xdai.history import History
from xdai.responder import Reply, Responder

USER_ROLES = {"user", "human"}
BOT_ROLES = {"bot", "assistant", "system_reply"}


@dataclass(frozen=True)
class ScriptTurn:
    user: str
    bot: str | None  # the script's own reply, when it has one
    facts: list[str]


def read_scripts(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file, with file:line in every error."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StudyError(f"{path}:{n}: not JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise StudyError(f"{path}:{n}: expected a JSON object per line")
        row.setdefault("id", f"line{n}")
        rows.append(row)
    return rows


def script_turns(row: dict[str, Any], where: str = "conversation") -> list[ScriptTurn]:
    """A row's user turns, each with the script's bot line after it (if any) and its tagged facts."""
    if isinstance(row.get("turns"), list):
        out = []
        for i, t in enumerate(row["turns"]):
            if not isinstance(t, dict) or not isinstance(t.get("user"), str):
                raise StudyError(f"{where}: turn {i}: expected {{\"user\": text, ...}}")
            bot = t.get("bot") if isinstance(t.get("bot"), str) else None
            facts = t.get("facts") or t.get("knowledge") or []
            out.append(ScriptTurn(t["user"], bot, [f if isinstance(f, str) else json.dumps(f, ensure_ascii=False)
                                                   for f in (facts if isinstance(facts, list) else [facts])]))
        return out
    messages = row.get("messages") or row.get("context")
    if not isinstance(messages, list):
        raise StudyError(f"{where}: expected 'turns' or 'messages' (a list)")
    out = []
    for i, m in enumerate(messages):
        role = str(m.get("speaker") or m.get("role") or "") if isinstance(m, dict) else ""
        text = m.get("text", m.get("content")) if isinstance(m, dict) else None
        if not isinstance(text, str) or role not in USER_ROLES | BOT_ROLES:
            raise StudyError(f"{where}: message {i}: expected {{speaker: user|bot, text}}")
        if role in USER_ROLES:
            out.append(ScriptTurn(text, None, []))
        elif out and out[-1].bot is None:
            out[-1] = ScriptTurn(out[-1].user, text, out[-1].facts)
    return out


def answer_scripts(rows: Iterable[dict[str, Any]], systems: dict[str, Responder], *, seed: int = 0,
                   progress: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
    """For every user turn of every script, both systems' replies to the same history: rows for
    `tasks_from_conversations` ({"id", "context", "knowledge", "replies"})."""
    if len(systems) != 2:
        raise StudyError(f"two systems are compared, got {len(systems)}")
    rng = random.Random(seed)
    for row in rows:
        conv = str(row["id"])
        turns = script_turns(row, f"conversation {conv}")
        sessions = {name: f"pairs-{name}-{conv}" for name in systems}
        histories = {name: bot.new_history() for name, bot in systems.items()}
        for name, bot in systems.items():
            bot.open_session(sessions[name], histories[name])
        context: list[dict[str, str]] = []
        try:
            for i, turn in enumerate(turns):
                replies: dict[str, Reply] = {}
                for name, bot in systems.items():
                    replies[name] = _reply(bot, histories[name], turn.user, sessions[name])
                grounded = list(dict.fromkeys(g["text"] for r in replies.values() for g in r.grounding
                                              if isinstance(g, dict) and g.get("text")))
                context.append({"speaker": "user", "text": turn.user})
                yield {"id": f"{conv}#{i}", "context": list(context), "knowledge": turn.facts or grounded,
                       "replies": {name: r.text for name, r in replies.items()}}
                kept = turn.bot if turn.bot is not None else replies[rng.choice(sorted(replies))].text
                context.append({"speaker": "bot", "text": kept})
                for history in histories.values():
                    history.append(turn.user, kept)
                if progress:
                    progress()
        finally:
            for name, bot in systems.items():
                bot.close_session(sessions[name])


def _reply(bot: Responder, history: History, utterance: str, session: str) -> Reply:
    async def one() -> Reply:
        final = None
        async for event in bot.respond(history, utterance, session=session):
            if isinstance(event, Reply):
                final = event
        if final is None:
            raise StudyError(f"session {session}: the bot ended its turn without a reply")
        return final

    reply = asyncio.run(one())
    if reply.error or reply.finish_reason == "error":
        raise StudyError(f"session {session}: the bot failed: {reply.error or reply.finish_reason}")
    return reply
