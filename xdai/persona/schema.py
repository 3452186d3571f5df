"""The persona schema: Character Card V3 (a superset of V2) one-to-one plus the XDAI fields, as plain dataclasses.

A `Persona` is what a YAML file (`xdai.persona.parse`) or a card (`xdai.persona.card`) becomes; prompts, turns and
bots read it. Problems found while reading one are `PersonaIssue`s, raised together as a `PersonaError`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from xdai.generation import GenerationSettings

if TYPE_CHECKING:
    from xdai.lorebook import Decorators

XDAI_EXTENSION = "xdai"  # the key under data.extensions that carries XDAI fields in a card
Speaker = Literal["user", "bot"]
Position = Literal["before_char", "after_char"]


# ---------------------------------------------------------------------------------------------------------------
# Issues


@dataclass
class PersonaIssue:
    """One problem in a persona source. `line`/`col` are 1-based; 0 when the source has no lines (a card's JSON),
    in which case the message starts with the JSON path."""

    file: str
    line: int
    col: int
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: {'warning: ' if self.severity == 'warning' else ''}{self.message}"


class PersonaError(ValueError):
    """A persona could not be loaded; `issues` lists every problem, each as file:line:col: message."""

    def __init__(self, issues: Iterable[PersonaIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


# ---------------------------------------------------------------------------------------------------------------
# Schema


@dataclass
class ExampleLine:
    speaker: Speaker
    text: str


Example = list[ExampleLine]


@dataclass
class QA:
    q: str
    a: str


@dataclass
class KnowledgeSpec:
    """Which stores to query, plus knowledge written inline in the persona."""

    stores: list[str] = field(default_factory=list)
    background: list[str] = field(default_factory=list)
    qa: list[QA] = field(default_factory=list)


@dataclass
class SelectionSpec:
    """History selection and knowledge retrieval parameters (XDAI: alpha^(t-i) * cos, top-n exchanges)."""

    alpha: float = 0.75
    history_pairs: int = 4
    top_k: int = 3
    qa_threshold: float = 0.45
    background_k: int = 2
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    lore_scan_turns: int = 3
    budget_tokens: int = 1536
    memory_k: int = 3  # memories of the user recalled per turn at most (xdai.memory)
    memory_budget_tokens: int = 120  # the memory parts' own share of the prompt
    memory_threshold: float | None = None  # cosine a memory needs without a cue; None: qa_threshold


@dataclass
class SafetySpec:
    blocked_words: list[str] = field(default_factory=list)
    replacement: str = ""


# Selective logic of SillyTavern's lorebooks, read from an entry's extensions["selectiveLogic"].
AND_ANY, NOT_ALL, NOT_ANY, AND_ALL = 0, 1, 2, 3


@dataclass
class BookEntry:
    """A lorebook entry. Optional Card V2 fields without a natural default are None when absent; `given` names
    the optional fields a source spelled out, so that export writes exactly those (and any non-default one)."""

    keys: list[str] = field(default_factory=list)
    content: str = ""
    extensions: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    insertion_order: int = 0
    case_sensitive: bool = False
    name: str | None = None
    priority: int | None = None
    id: int | str | None = None
    comment: str | None = None
    selective: bool = False
    secondary_keys: list[str] = field(default_factory=list)
    constant: bool = False
    position: Position = "before_char"
    use_regex: bool = False  # Card V3: keys are regular expressions
    card_extra: dict[str, Any] = field(default_factory=dict)
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def entry_id(self) -> str:
        """A stable id for the page and /explain: the card's `id`, else the entry's `name`, else a digest of its
        keys and content (the same entry gets the same id on every load)."""
        if self.id is not None and self.id != "":
            return str(self.id)
        if self.name:
            return self.name
        digest = hashlib.sha1("\x1f".join([*self.keys, "\x1e", self.content]).encode("utf-8")).hexdigest()
        return f"k{digest[:8]}"

    @property
    def regex(self) -> bool:
        """Keys are regular expressions: Card V3's `use_regex` (or the same key kept from a V2 card)."""
        return self.use_regex or self.card_extra.get("use_regex") is True

    @property
    def whole_words(self) -> bool:
        """Latin-script keys match whole words ("ski" not in "skier"), unless the entry's extensions say
        ``match_whole_words: false`` (SillyTavern's per-entry switch). Keys in other scripts match anywhere."""
        return self.extensions.get("match_whole_words") is not False

    @property
    def decorators(self) -> Decorators:
        """The Card V3 decorators that open `content` (`@@depth 2`, ...) and the content without them."""
        from xdai.lorebook import parse_decorators

        return parse_decorators(self.content)

    @property
    def case_sensitive_keys(self) -> bool:
        """Keys match case-sensitively: `case_sensitive`, or SillyTavern's extensions.case_sensitive."""
        return self.case_sensitive or self.extensions.get("case_sensitive") is True

    def matches(self, text: str) -> bool:
        """Whether the keys (and, for a selective entry, the secondary keys) trigger on `text`."""
        return self.matched_key(text) is not None

    def matched_key(self, text: str) -> str | None:
        """The key that triggers this entry on `text` (honouring selective logic and the `@@additional_keys` /
        `@@exclude_keys` decorators), or None."""
        key = self.first_key(text)
        return key if key is not None and self.conditions_hold(text) else None

    def first_key(self, text: str) -> str | None:
        """The first of the primary keys that occurs in `text`, or None."""
        return next((k for k in self.keys if k and self._key_in(k, text)), None)

    def conditions_hold(self, text: str, secondary: bool = True) -> bool:
        """The conditions beyond a primary key, checked on `text` (the scanned messages together): for a selective
        entry its secondary keys under `selectiveLogic` (AND ANY, NOT ALL, NOT ANY, AND ALL; ignored for regex
        keys, as V3 says), then one of `@@additional_keys` (patterns, with regex keys) and none of
        `@@exclude_keys` (ignored with regex keys)."""
        deco = self.decorators
        if secondary and self.selective and self.secondary_keys and not self.regex:
            hits = [self._key_in(k, text) for k in self.secondary_keys if k]
            logic = self.extensions.get("selectiveLogic", AND_ANY)
            if logic == NOT_ALL:
                ok = not all(hits)
            elif logic == NOT_ANY:
                ok = not any(hits)
            elif logic == AND_ALL:
                ok = all(hits)
            else:
                ok = any(hits)
            if not ok:
                return False
        if deco.additional_keys and not any(self._key_in(k, text) for k in deco.additional_keys):
            return False
        return self.regex or not any(self._key_in(k, text) for k in deco.exclude_keys)

    def _key_in(self, key: str, text: str) -> bool:
        flags = 0 if self.case_sensitive_keys else re.IGNORECASE
        if self.regex:
            pattern = _compile(key, flags)
            return pattern is not None and pattern.search(text[-_MAX_SCAN:]) is not None  # invalid: no match (V3)
        if self.whole_words and (_LATIN.match(key[0]) or _LATIN.match(key[-1])):
            start = r"(?<![A-Za-z0-9_\u00c0-\u024f])" if _LATIN.match(key[0]) else ""  # no Latin letter before
            end = r"(?![A-Za-z0-9_\u00c0-\u024f])" if _LATIN.match(key[-1]) else ""  # nor after
            return re.search(start + re.escape(key) + end, text, flags) is not None
        if self.case_sensitive_keys:
            return key in text
        return key.casefold() in text.casefold()


_LATIN = re.compile(r"[A-Za-z0-9\u00c0-\u024f]")  # a key edge in Latin script (letters, digits, accents)
_MAX_SCAN = 20_000  # characters a regex key scans: the recent messages, never a whole document


def _compile(pattern: str, flags: int) -> re.Pattern[str] | None:
    try:
        return _compiled(pattern, flags)
    except re.error:
        return None


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str, flags: int) -> re.Pattern[str]:
    return re.compile(pattern, flags)


@dataclass(frozen=True)
class LoreHit:
    """Why a lorebook entry fired: its stable id, the key that matched (None: constant), how many messages
    back it matched (0: the newest; -1: through another entry's content), and a score in (0, 1]. And what goes
    into the prompt where: the content without its decorators, and its placement (`xdai.lorebook.Placement`)."""

    entry: BookEntry
    id: str
    key: str | None
    age: int
    score: float
    content: str | None = None  # None: the entry's content as is
    position: str | None = None  # before_char | after_char | personality | scenario | at_depth; None: the entry's
    depth: int | None = None  # at_depth: 1 is right before the user's utterance
    role: str | None = None  # at_depth: "user" / "assistant" make it that speaker's line
    ignore_on_max_context: bool = False


@dataclass
class CharacterBook:
    name: str | None = None
    description: str | None = None
    scan_depth: int | None = None
    token_budget: int | None = None
    recursive_scanning: bool | None = None
    extensions: dict[str, Any] = field(default_factory=dict)
    entries: list[BookEntry] = field(default_factory=list)
    card_extra: dict[str, Any] = field(default_factory=dict)

    def triggered(self, recent_texts: list[str], **chat: Any) -> list[BookEntry]:
        """Entries to insert given the most recent messages (oldest first): `activate` without the why."""
        return [hit.entry for hit in self.activate(recent_texts, **chat)]

    def activate(self, recent_texts: Sequence[str], decay: float = 0.75, *, default_scan_depth: int | None = None,
                 replies: int | None = None, seed: int = 0,
                 count_tokens: Callable[[str], int] | None = None) -> list[LoreHit]:
        """The entries that fire on `recent_texts` (oldest first, the user's utterance last), with why and where;
        `xdai.lorebook.activate` has the rules. `default_scan_depth`: messages an entry scans when neither it
        nor the book says (None: all); `replies`: the bot's messages so far, greeting included (None: unknown);
        `seed`: of the probability rolls; `count_tokens`: for the book's token_budget."""
        from xdai.lorebook import Chat, activate

        chat = Chat(list(recent_texts), default_scan_depth, replies, seed)
        return activate(self, chat, decay=decay, count_tokens=count_tokens)


EMBEDDED = "embeded://"  # Card V3's scheme (spelled so) for a file inside the CHARX


@dataclass
class Asset:
    """A Card V3 asset: an icon, background, emotion image... `uri` is ``embeded://path`` (a file stored with the
    persona, in its assets folder), ``ccdefault:`` (the card's own image), or a URL."""

    type: str
    uri: str
    name: str | None = None  # "main" marks the main icon or background
    ext: str | None = None  # the file extension, lower case, without the dot
    card_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def embedded_path(self) -> str | None:
        """The path inside the CHARX (and inside the persona's assets folder), for an ``embeded://`` asset."""
        return self.uri[len(EMBEDDED):] if self.uri.startswith(EMBEDDED) else None


# Keys of `generation` beyond GenerationSettings: reranking by the grounded post-response and inverse prompting.
# `rerank_slack`: tokens a candidate still decoding may run past an ended, eligible one before it is cut
# (xdai.race); None waits for every candidate.
RERANK_DEFAULTS: dict[str, Any] = {
    "rerank": 0, "inverse_prompting": False, "inverse_weight": 1.0, "rerank_slack": 16,
}


@dataclass
class Persona:
    # Character Card V2, one-to-one
    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    alternate_greetings: list[str] = field(default_factory=list)
    mes_example: list[Example] = field(default_factory=list)
    system_prompt: str = ""
    post_history_instructions: str = ""
    creator_notes: str = ""  # for people only: never put into prompts
    tags: list[str] = field(default_factory=list)
    creator: str = ""
    character_version: str = ""
    extensions: dict[str, Any] = field(default_factory=dict)
    character_book: CharacterBook | None = None
    # Character Card V3 additions (None: the card did not have the field)
    nickname: str | None = None  # {{char}} in prompts, and the default speaker tag, when set
    creator_notes_multilingual: dict[str, str] | None = None  # ISO 639-1 code -> notes; for people only
    source: list[str] | None = None  # where the card comes from: ids or URLs
    group_only_greetings: list[str] = field(default_factory=list)
    creation_date: int | float | None = None  # Unix seconds
    modification_date: int | float | None = None
    assets: list[Asset] | None = None  # None: the card's own image is its icon
    # XDAI fields
    language: Literal["zh", "en"] = "zh"
    bot_speaker: str = ""  # "" -> name
    user_speaker: str = ""  # "" -> 用户 (zh) / User (en)
    knowledge: KnowledgeSpec = field(default_factory=KnowledgeSpec)
    selection: SelectionSpec = field(default_factory=SelectionSpec)
    conditions: dict[str, str] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    safety: SafetySpec = field(default_factory=SafetySpec)
    memory: bool = True  # remember users across sessions (xdai.memory); false: this bot keeps nothing
    # Card fields xdai does not know, kept so that export gives them back: {"card": {...}, "data": {...},
    # "v1_mirror": [...], "mes_example": raw string}. Written by `xdai persona import`; authors leave it alone.
    card_extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.bot_speaker = self.bot_speaker or self.default_bot_speaker()
        self.user_speaker = self.user_speaker or default_user_speaker(self.language)

    def default_bot_speaker(self) -> str:
        """The speaker tag unless `bot_speaker` says otherwise: the nickname (Card V3) or the name."""
        return self.nickname or self.name

    @property
    def assets_dir(self) -> Path | None:
        """Where the files of ``embeded://`` assets live: NAME.assets/ beside the persona file NAME.yaml."""
        return self.path.with_name(self.path.stem + ".assets") if self.path is not None else None

    def greeting(self, choice: int = 0) -> str:
        """The opening line: first_mes (choice 0) or an alternate greeting (choice 1..n), macros filled."""
        text = self.first_mes if choice == 0 else self.alternate_greetings[choice - 1]
        return self.fill_macros(text)

    def fill_macros(self, text: str) -> str:
        """Replace the card macros {{char}}/{{user}} (and the older <BOT>/<USER>) by the speaker names."""
        text = re.sub(r"\{\{char\}\}|<BOT>", lambda _: self.bot_speaker, text, flags=re.IGNORECASE)
        return re.sub(r"\{\{user\}\}|<USER>", lambda _: self.user_speaker, text, flags=re.IGNORECASE)

    def generation_settings(self, base: GenerationSettings | None = None) -> GenerationSettings:
        """`base` (or the defaults) with this persona's overrides applied; rerank options are not part of it."""
        known = {f.name for f in dataclasses.fields(GenerationSettings)}
        overrides = {k: copy.deepcopy(v) for k, v in self.generation.items() if k in known}
        return dataclasses.replace(base or GenerationSettings(), **overrides)

    def rerank_options(self) -> dict[str, Any]:
        """{"rerank": n, "inverse_prompting": bool, "inverse_weight": float, "rerank_slack": int | None} with
        defaults filled."""
        return {k: self.generation.get(k, v) for k, v in RERANK_DEFAULTS.items()}

    def override_generation(self, overrides: Mapping[str, Any] | None, source: str = "<overrides>") -> None:
        """Lay `overrides` over `generation`, checked as the persona file's own `generation` is (PersonaError
        naming `source` otherwise). The one way a bot's ``options.generation`` or ``xdai chat --seed`` changes
        how a persona generates; in place, so an agent already built on this persona sees it."""
        if not overrides:
            return
        from xdai.persona.parse import check_generation

        self.generation = {**self.generation, **check_generation(overrides, source)}

    def to_card_v2(self) -> dict[str, Any]:
        from xdai.persona.card import _to_card

        return _to_card(self)

    def to_card_v3(self) -> dict[str, Any]:
        from xdai.persona.card import _to_card

        return _to_card(self, v3=True)

    @classmethod
    def from_card_v2(cls, card: dict[str, Any], source: str = "<card>") -> Persona:
        from xdai.persona.card import _from_card

        return _from_card(card, source)

    @classmethod
    def from_card(cls, card: dict[str, Any], source: str = "<card>") -> Persona:
        """A persona from a Card V1, V2 or V3 (told apart by `spec`)."""
        from xdai.persona.card import _from_card

        return _from_card(card, source, any_version=True)

    def to_yaml(self) -> str:
        from xdai.persona.dump import dump_persona_yaml

        return dump_persona_yaml(self)


def default_user_speaker(language: str) -> str:
    return "User" if language == "en" else "用户"
