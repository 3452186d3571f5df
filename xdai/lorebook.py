"""Lorebook activation as persona authors know it from SillyTavern and Character Card V3.

An entry fires when one of its keys occurs in the last messages it scans (its own scan depth, else the book's,
else the caller's default), its secondary keys satisfy its selective logic, its `@@additional_keys` occur and
its `@@exclude_keys` do not, its `@@activate_only_after`/`@@activate_only_every` allow the current reply count,
and its probability roll passes. With `recursive_scanning` the content of fired entries is scanned too, a bounded
number of steps. What fired is fitted to the book's `token_budget`, lowest priority out first. Each activation
(`LoreHit`) says where its content goes: before or after the persona description, with the personality or the
scenario, or at a depth in the history (1: right before the user's utterance), and as whose line (`@@role`).

V3 decorators are parsed from the head of an entry's content (`parse_decorators`) and trimmed from what is
inserted; the card keeps them as written, so export gives them back.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from xdai.persona.schema import BookEntry, CharacterBook, LoreHit

Role = Literal["system", "user", "assistant"]
LorePosition = Literal["before_char", "after_char", "personality", "scenario", "at_depth"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")
# @@position values (V3) -> where the builder puts the content
V3_POSITIONS: dict[str, LorePosition] = {"before_desc": "before_char", "after_desc": "after_char",
                                         "personality": "personality", "scenario": "scenario"}
# SillyTavern's extensions.position: 0 before the character, 1 after it, 4 at a depth in the chat. Its author's
# note (2, 3) and example-message (5, 6) positions have no place here: the entry's own `position` is used.
ST_AT_DEPTH = 4
ST_ROLES: dict[int, Role] = {0: "system", 1: "user", 2: "assistant"}
DEFAULT_MAX_RECURSION_STEPS = 5  # a book's extensions.max_recursion_steps overrides it (0: until nothing new)


# ---------------------------------------------------------------------------------------------------------------
# Decorators


@dataclass(frozen=True)
class Decorators:
    """The V3 decorators at the head of an entry's content, and the content without them.

    Only the first decorator of a name counts; one that is unknown or has an invalid value is ignored and its
    `@@@` fallbacks (the lines right after it) are tried in order. `ignored` names what was not understood."""

    content: str
    depth: int | None = None
    role: Role | None = None
    activate_only_after: int | None = None
    activate_only_every: int | None = None
    scan_depth: int | None = None
    position: LorePosition | None = None
    additional_keys: tuple[str, ...] = ()
    exclude_keys: tuple[str, ...] = ()
    ignore_on_max_context: bool = False
    activate: bool = False
    dont_activate: bool = False
    ignored: tuple[str, ...] = field(default=(), compare=False)


_DECORATOR = re.compile(r"@@(@?)([A-Za-z_][A-Za-z0-9_]*)(?:[ \t]+(.*))?$")


def _count(value: str, minimum: int) -> int | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number != int(number) or number < minimum:
        return None
    return int(number)


def _flag(value: str) -> bool | None:
    v = value.strip().lower()
    return True if v in ("", "true") else False if v == "false" else None


def _words(value: str) -> tuple[str, ...] | None:
    out = tuple(w.strip() for w in value.split(",") if w.strip())
    return out or None


# name -> how its value is read (None: invalid, so the decorator is ignored)
_READERS: dict[str, Callable[[str], Any]] = {
    "depth": lambda v: _count(v, -(10**9)),
    "role": lambda v: v.strip().lower() if v.strip().lower() in ROLES else None,
    "activate_only_after": lambda v: _count(v, 0),
    "activate_only_every": lambda v: _count(v, 1),
    "scan_depth": lambda v: _count(v, 0),
    "position": lambda v: V3_POSITIONS.get(v.strip()),
    "additional_keys": _words,
    "exclude_keys": _words,
    "ignore_on_max_context": _flag,
    "activate": _flag,
    "dont_activate": _flag,
}


@functools.lru_cache(maxsize=4096)
def parse_decorators(content: str) -> Decorators:
    """Read the `@@name value` lines that open `content` (blank lines among them allowed) and return them with
    the content that follows, trimmed. `@@@name` lines are fallbacks of the decorator line before them."""
    lines = content.split("\n")
    found: dict[str, Any] = {}
    ignored: list[str] = []
    pending = False  # the last decorator was not taken: its @@@ fallbacks are considered
    start = 0  # where the content begins
    while start < len(lines):
        text = lines[start].strip()
        if text and not text.startswith("@@"):
            break
        start += 1
        if not text:
            continue
        m = _DECORATOR.match(text)
        fallback = bool(m and m.group(1)) or text.startswith("@@@")
        if fallback and not pending:
            continue
        name, value = (m.group(2), m.group(3) or "") if m else (text, "")
        reader = _READERS.get(name)
        parsed = reader(value) if reader is not None and name not in found else None
        if parsed is not None:
            found[name] = parsed
            pending = False
        else:
            ignored.append(text)
            pending = True
    body = "\n".join(lines[start:]).strip()
    flags = {k: found.pop(k) for k in ("ignore_on_max_context", "activate", "dont_activate") if k in found}
    return Decorators(content=body, ignored=tuple(ignored), **found, **flags)


# ---------------------------------------------------------------------------------------------------------------
# Placement


@dataclass(frozen=True)
class Placement:
    """Where an entry's content goes in the prompt, and as whose line."""

    position: LorePosition
    depth: int | None = None  # with "at_depth": 1 is right before the user's utterance
    role: Role | None = None  # with "at_depth": a line of the user or the bot; None/"system": a plain line
    ignore_on_max_context: bool = False  # the first lore to go when the prompt must be cut


def placement(entry: BookEntry) -> Placement:
    """`@@position` first, then `@@depth` (with `@@role`), then SillyTavern's extensions (position 4: at
    `extensions.depth`, as `extensions.role`), then the entry's own `position`."""
    deco = entry.decorators
    ext = entry.extensions or {}
    role: Role | None = deco.role
    if deco.position is not None:
        return Placement(deco.position, None, None, deco.ignore_on_max_context)
    if deco.depth is not None:
        return Placement("at_depth", max(deco.depth, 1), role, deco.ignore_on_max_context)
    depth = _int(ext.get("depth"))
    if ext.get("position") == ST_AT_DEPTH and depth is not None:
        role = role or ST_ROLES.get(_int(ext.get("role")) or 0, "system")
        return Placement("at_depth", max(depth, 1), role, deco.ignore_on_max_context)
    position: LorePosition = "after_char" if entry.position == "after_char" else "before_char"
    return Placement(position, None, None, deco.ignore_on_max_context)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)


# ---------------------------------------------------------------------------------------------------------------
# Activation


@dataclass(frozen=True)
class Chat:
    """What a book is scanned against: the messages (oldest first, the user's utterance last), how many messages
    an entry scans when neither it nor the book says (None: all), how many replies the bot has given so far, the
    greeting included (None: unknown, so `@@activate_only_after/every` are ignored), and the seed of the
    probability rolls."""

    messages: Sequence[str]
    scan_depth: int | None = None
    replies: int | None = None
    seed: int = 0


def roll(seed: int, entry_id: str, replies: int | None, messages: int) -> float:
    """A reproducible number in [0, 100): the same seed, entry and point in the conversation give the same roll,
    the next turn a fresh one."""
    digest = hashlib.blake2b(f"{seed}\x1f{entry_id}\x1f{replies}\x1f{messages}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100.0


def probability(entry: BookEntry) -> float:
    """The chance in percent that a matched entry is inserted: SillyTavern's extensions.probability (unless
    useProbability is false); 100 when absent."""
    ext = entry.extensions or {}
    value = ext.get("probability")
    if ext.get("useProbability") is False or isinstance(value, bool) or not isinstance(value, (int, float)):
        return 100.0
    return min(max(float(value), 0.0), 100.0)


def scan_depth(entry: BookEntry, book: CharacterBook, chat: Chat) -> int | None:
    """How many of the last messages `entry` scans: `@@scan_depth`, else extensions.scan_depth (SillyTavern),
    else the book's `scan_depth`, else the chat's default (None: all)."""
    for value in (entry.decorators.scan_depth, _int((entry.extensions or {}).get("scan_depth")), book.scan_depth,
                  chat.scan_depth):
        if value is not None:
            return max(int(value), 0)
    return None


def _allowed_now(entry: BookEntry, chat: Chat) -> bool:
    deco = entry.decorators
    if chat.replies is None:
        return True
    if deco.activate_only_after is not None and chat.replies < deco.activate_only_after:
        return False
    return not (deco.activate_only_every is not None and chat.replies % deco.activate_only_every != 0)


def _max_steps(book: CharacterBook) -> int | None:
    steps = _int((book.extensions or {}).get("max_recursion_steps"))
    if steps is None:
        return DEFAULT_MAX_RECURSION_STEPS
    return None if steps <= 0 else steps


def activate(book: CharacterBook, chat: Chat, *, decay: float = 0.75,
             count_tokens: Callable[[str], int] | None = None) -> list[LoreHit]:
    """The entries to insert, each with why (id, matched key, age, score) and where (`Placement`), ordered by
    insertion_order (ties keep file order). Scores: ``decay ** age`` for a key found `age` messages back, 1 for a
    constant or `@@activate` entry, half the score of the entry whose content it was found in (age -1)."""
    from xdai.persona.schema import LoreHit

    messages = list(chat.messages)
    fired: dict[int, LoreHit] = {}
    windows: dict[int, list[str]] = {}

    def hit(i: int, e: BookEntry, key: str | None, age: int, score: float) -> None:
        if roll(chat.seed, e.entry_id, chat.replies, len(messages)) >= probability(e):
            return
        where = placement(e)
        fired[i] = LoreHit(e, e.entry_id, key, age, score, content=e.decorators.content, position=where.position,
                           depth=where.depth, role=where.role, ignore_on_max_context=where.ignore_on_max_context)

    candidates = []
    for i, e in enumerate(book.entries):
        deco = e.decorators
        if not e.enabled or not deco.content or (deco.dont_activate and not deco.activate):
            continue
        if deco.activate:
            hit(i, e, None, 0, 1.0)
            continue
        if not _allowed_now(e, chat):
            continue
        depth = scan_depth(e, book, chat)
        window = messages if depth is None else messages[max(len(messages) - depth, 0):] if depth > 0 else []
        whole = "\n".join(window)
        if e.constant:  # its keys do not matter, the decorators' conditions still do
            if e.conditions_hold(whole, secondary=False):
                hit(i, e, None, 0, 1.0)
            continue
        windows[i] = window
        candidates.append(i)
        if (e.extensions or {}).get("delay_until_recursion") is True:
            continue  # SillyTavern: fires only through another entry's content
        for age, text in enumerate(reversed(window)):
            key = e.first_key(text)
            if key is not None:
                if e.conditions_hold(whole):
                    hit(i, e, key, age, decay**age)
                break
    frontier = dict(fired)
    steps, limit = 0, _max_steps(book)
    while book.recursive_scanning and frontier and (limit is None or steps < limit):
        steps += 1
        found: dict[int, LoreHit] = {}
        sources = [h for h in frontier.values() if (h.entry.extensions or {}).get("prevent_recursion") is not True]
        for i in candidates:
            e = book.entries[i]
            if i in fired or (e.extensions or {}).get("exclude_recursion") is True:
                continue
            for src in sources:
                key = e.first_key(src.content)
                if key is not None and e.conditions_hold("\n".join([*windows[i], src.content])):
                    before = set(fired)
                    hit(i, e, key, -1, src.score / 2)
                    if i not in before and i in fired:
                        found[i] = fired[i]
                    break
        frontier = found
    kept = _fit_budget(book, fired, count_tokens)
    return [h for _, h in sorted(kept.items(), key=lambda kv: (kv[1].entry.insertion_order, kv[0]))]


def _fit_budget(book: CharacterBook, fired: dict[int, LoreHit],
                count_tokens: Callable[[str], int] | None) -> dict[int, LoreHit]:
    """Drop entries, lowest `priority` first (absent: 0), then lowest insertion_order, then the later in the
    file, until the contents fit the book's `token_budget` (unset or <= 0: no budget)."""
    budget = book.token_budget
    if budget is None or budget <= 0:
        return fired
    if count_tokens is None:
        from xdai.prompt import estimate_tokens

        count_tokens = estimate_tokens
    cost = {i: count_tokens(h.content) for i, h in fired.items()}
    total = sum(cost.values())
    kept = dict(fired)
    order = sorted(fired, key=lambda i: (fired[i].entry.priority or 0, fired[i].entry.insertion_order, -i))
    for i in order:
        if total <= budget:
            break
        total -= cost[i]
        del kept[i]
    return kept
