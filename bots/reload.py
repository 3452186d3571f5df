"""Hot reload for persona and bot authors: edit a bot's files or its persona while ``xdai serve`` runs, and new
sessions get the new version.

`Reloader` watches, for every hosted bot, the files of its folder (bot.yaml, flow.py, interview data, knowledge)
and its persona file. When one changes it re-reads and revalidates the bot and builds it again (reusing the
running backend and stores when only the persona or flow changed), then swaps it into the server's tables (and
tells `on_swap`, which refreshes what the server shows about it). A broken edit is reported with file:line and
the previous version keeps serving. Sessions already open keep the bot they started with.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bots.registry import BOT_FILE, BotError, BotSpec, load_bot

log = logging.getLogger(__name__)
WATCHED_SUFFIXES = {".yaml", ".yml", ".py", ".jsonl", ".json", ".csv", ".tsv", ".md", ".txt"}


@dataclass
class ReloadResult:
    """What one check did: bots swapped in, and bots whose edit was refused (name -> file:line: message)."""

    reloaded: list[str]
    failed: dict[str, str]


class Reloader:
    """Watches the hosted bots and swaps `specs[name]` / `agents[name]` when their files change."""

    def __init__(self, bots_dir: str | Path, specs: dict[str, BotSpec], agents: dict[str, Any],
                 stores_dir: str | Path, *, personas_dir: str | Path | None = None, interval_s: float = 1.0,
                 build: Callable[..., Any] | None = None,
                 on_swap: Callable[[str, BotSpec, Any], None] | None = None) -> None:
        from bots.assemble import build_bot

        self.bots_dir = Path(bots_dir)
        self.specs, self.agents, self.stores_dir, self.personas_dir = specs, agents, stores_dir, personas_dir
        self.interval_s = interval_s
        self.build = build or build_bot
        self.on_swap = on_swap
        self.errors: dict[str, str] = {}  # the last refused edit per bot, until a good edit replaces it
        self.reloads = 0
        self._seen = {name: self._fingerprint(name) for name in self.agents}

    # -- what is watched ----------------------------------------------------------------------------------------
    def watched_files(self, name: str) -> list[Path]:
        folder = self.bots_dir / name
        files = [p for p in folder.rglob("*") if p.is_file() and p.suffix in WATCHED_SUFFIXES
                 and "__pycache__" not in p.parts]
        persona = self._persona_file(name)
        if persona is not None:
            files.append(persona)
        return sorted(set(files))

    def _persona_file(self, name: str) -> Path | None:
        from bots.assemble import resolve_persona
        from xdai.persona import find_persona_file

        spec = self.specs.get(name)
        if spec is None:
            return None
        path = find_persona_file(resolve_persona(spec), self.personas_dir)
        return path if path.is_file() else None

    def _fingerprint(self, name: str) -> dict[str, str]:
        out = {}
        for path in self.watched_files(name):
            try:
                out[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
            except OSError:
                out[str(path)] = "unreadable"
        return out

    # -- checking -----------------------------------------------------------------------------------------------
    def changed(self) -> list[str]:
        """Hosted bots whose files differ from the last version seen (served or refused)."""
        out = []
        for name in sorted(self.agents):
            now = self._fingerprint(name)
            if now != self._seen.get(name):
                self._seen[name] = now
                out.append(name)
        return out

    def reload(self, name: str) -> str | None:
        """Revalidate and rebuild one bot; swap it in. Returns the error (file:line: message) or None."""
        from bots.assemble import check_bot

        try:
            spec = load_bot(self.bots_dir / name)
            check_bot(spec, self.personas_dir)
            running = (self.specs[name], self.agents[name]) if name in self.specs and name in self.agents else None
            fresh = self.build(spec, self.stores_dir, personas_dir=self.personas_dir, reuse=running)
        except (BotError, ValueError, OSError, RuntimeError) as exc:  # PersonaError, SourceError are ValueErrors
            folder = str(self.bots_dir / name)
            message = str(exc) if _has_location(str(exc)) or str(exc).startswith(folder) else \
                f"{self.bots_dir / name / BOT_FILE}:1: {exc}"
            self.errors[name] = message
            log.error("bot %s: edit refused, the previous version keeps serving:\n%s", name, message)
            return message
        self.specs[name], self.agents[name] = spec, fresh
        if self.on_swap is not None:
            self.on_swap(name, spec, fresh)
        self.errors.pop(name, None)
        self.reloads += 1
        log.info("bot %s: reloaded; new sessions use the new version", name)
        return None

    def check(self) -> ReloadResult:
        """One pass: reload every changed bot."""
        result = ReloadResult([], {})
        for name in self.changed():
            error = self.reload(name)
            if error is None:
                result.reloaded.append(name)
            else:
                result.failed[name] = error
        # a bot's persona file may be another bot's too: its fingerprint was refreshed above
        return result

    async def run(self) -> None:
        """Check every `interval_s` until cancelled; building runs in a thread so the server keeps serving."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # a watcher failure must never take the server down
                log.exception("bot reload check failed")


def _has_location(message: str) -> bool:
    head = message.split(": ", 1)[0]
    return ":" in head and head.rsplit(":", 1)[-1].isdigit() or head.count(":") >= 2
