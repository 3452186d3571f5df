"""Personas: the YAML format authors write, checked with file:line:col marks, and Character Card V2 in and out.

A `Persona` is Character Card V2 one-to-one plus the XDAI fields (speakers, knowledge, selection, conditions,
generation, safety). YAML is read through PyYAML's node graph rather than `safe_load`, so every problem is reported
where it is; a card's JSON goes through the same builder, so both are held to one set of rules.

Round trips are lossless both ways: XDAI fields that Card V2 has no place for travel in `data.extensions.xdai`, and
card fields that neither side knows travel in `card_extra` (at the card, lorebook and entry level).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import difflib
import hashlib
import json
import re
import struct
import typing
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from xdai.backends.base import GenerationSettings

CARD_SPEC = "chara_card_v2"
CARD_SPEC_VERSION = "2.0"
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
    card_extra: dict[str, Any] = field(default_factory=dict)
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def matches(self, text: str) -> bool:
        """Whether the keys (and, for a selective entry, the secondary keys) trigger on `text`."""
        if not self._any_key(self.keys, text):
            return False
        if not self.selective or not self.secondary_keys:
            return True
        hits = [self._any_key([k], text) for k in self.secondary_keys if k]
        logic = self.extensions.get("selectiveLogic", AND_ANY)
        if logic == NOT_ALL:
            return not all(hits)
        if logic == NOT_ANY:
            return not any(hits)
        if logic == AND_ALL:
            return all(hits)
        return any(hits)

    def _any_key(self, keys: Iterable[str], text: str) -> bool:
        if self.case_sensitive:
            return any(k and k in text for k in keys)
        folded = text.casefold()
        return any(k and k.casefold() in folded for k in keys)


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

    def triggered(self, recent_texts: list[str]) -> list[BookEntry]:
        """Entries to insert given the most recent messages (oldest first).

        Constant entries always fire; others fire when a key occurs in the last `scan_depth` texts (all given
        texts when unset), honouring case sensitivity and, for selective entries, the secondary keys. With
        `recursive_scanning`, fired entries' content is scanned too. Disabled entries never fire. The result is
        ordered by insertion_order (ties keep file order)."""
        texts = list(recent_texts)
        if self.scan_depth is not None:
            texts = texts[-self.scan_depth :] if self.scan_depth > 0 else []
        haystack = "\n".join(texts)
        fired: dict[int, BookEntry] = {}
        while True:
            new = [
                i
                for i, e in enumerate(self.entries)
                if i not in fired and e.enabled and (e.constant or e.matches(haystack))
            ]
            for i in new:
                fired[i] = self.entries[i]
            if not new or not self.recursive_scanning:
                break
            haystack += "\n" + "\n".join(self.entries[i].content for i in new)
        return [e for _, e in sorted(fired.items(), key=lambda kv: (kv[1].insertion_order, kv[0]))]


# Keys of `generation` beyond GenerationSettings: reranking by the grounded post-response and inverse prompting.
RERANK_DEFAULTS: dict[str, Any] = {"rerank": 0, "inverse_prompting": False, "inverse_weight": 1.0}


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
    # XDAI fields
    language: Literal["zh", "en"] = "zh"
    bot_speaker: str = ""  # "" -> name
    user_speaker: str = ""  # "" -> 用户 (zh) / User (en)
    knowledge: KnowledgeSpec = field(default_factory=KnowledgeSpec)
    selection: SelectionSpec = field(default_factory=SelectionSpec)
    conditions: dict[str, str] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    safety: SafetySpec = field(default_factory=SafetySpec)
    # Card fields xdai does not know, kept so that export gives them back: {"card": {...}, "data": {...},
    # "v1_mirror": [...], "mes_example": raw string}. Written by `xdai persona import`; authors leave it alone.
    card_extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.bot_speaker = self.bot_speaker or self.name
        self.user_speaker = self.user_speaker or default_user_speaker(self.language)

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
        """{"rerank": n, "inverse_prompting": bool, "inverse_weight": float} with defaults filled."""
        return {k: self.generation.get(k, v) for k, v in RERANK_DEFAULTS.items()}

    def to_card_v2(self) -> dict[str, Any]:
        return _to_card(self)

    @classmethod
    def from_card_v2(cls, card: dict[str, Any], source: str = "<card>") -> Persona:
        return _from_card(card, source)

    def to_yaml(self) -> str:
        return dump_persona_yaml(self)


def default_user_speaker(language: str) -> str:
    return "User" if language == "en" else "用户"


# ---------------------------------------------------------------------------------------------------------------
# A located tree: the one input of the builder, made from YAML nodes (with marks) or from a card's dict.


@dataclass
class _Loc:
    kind: Literal["scalar", "seq", "map"]
    value: Any  # scalar value | list[_Loc] | list[tuple[_Loc, _Loc]]
    path: str
    line: int = 0
    col: int = 0


def _from_node(node: yaml.Node, loader: yaml.SafeLoader, path: str, depth: int = 0) -> _Loc:
    if depth > 64:
        raise RecursionError(path)
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolve `<<` merge keys as safe_load would
        pairs = []
        for k, v in node.value:
            key = _from_node(k, loader, path, depth + 1)
            pairs.append((key, _from_node(v, loader, _join(path, key.value), depth + 1)))
        return _Loc("map", pairs, path, line, col)
    if isinstance(node, yaml.SequenceNode):
        items = [_from_node(n, loader, f"{path}[{i}]", depth + 1) for i, n in enumerate(node.value)]
        return _Loc("seq", items, path, line, col)
    return _Loc("scalar", loader.construct_object(node, deep=True), path, line, col)


def _from_obj(obj: Any, path: str) -> _Loc:
    if isinstance(obj, dict):
        return _Loc("map", [(_Loc("scalar", k, path), _from_obj(v, _join(path, k))) for k, v in obj.items()], path)
    if isinstance(obj, list):
        return _Loc("seq", [_from_obj(v, f"{path}[{i}]") for i, v in enumerate(obj)], path)
    return _Loc("scalar", obj, path)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(loc: _Loc) -> str:
    if loc.kind != "scalar":
        return "a list" if loc.kind == "seq" else "a mapping"
    v = loc.value
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, (int, float)):
        return f"a number ({v})"
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    return f"a {type(v).__name__} ({v})"


_BAD = object()  # a converter's "already reported" result


class _Builder:
    """Turns a located tree into Persona pieces, collecting every problem instead of stopping at the first."""

    def __init__(self, file: str):
        self.file = file
        self.issues: list[PersonaIssue] = []

    def error(self, loc: _Loc, message: str, severity: Literal["error", "warning"] = "error") -> object:
        prefix = f"{loc.path}: " if loc.path else ""
        self.issues.append(PersonaIssue(self.file, loc.line, loc.col, prefix + message, severity))
        return _BAD

    # scalars ------------------------------------------------------------------------------------------------
    def string(self, loc: _Loc) -> Any:
        if loc.kind == "scalar" and loc.value is None:
            return ""
        if loc.kind == "scalar" and isinstance(loc.value, str):
            return loc.value
        hint = " (quote it)" if loc.kind == "scalar" else ""
        return self.error(loc, f"expected a string, got {_describe(loc)}{hint}")

    def optional_string(self, loc: _Loc) -> Any:
        return None if loc.kind == "scalar" and loc.value is None else self.string(loc)

    def boolean(self, loc: _Loc) -> Any:
        if loc.kind == "scalar" and isinstance(loc.value, bool):
            return loc.value
        return self.error(loc, f"expected true or false, got {_describe(loc)}")

    def number(self, loc: _Loc, integer: bool, lo: float | None = None, hi: float | None = None) -> Any:
        v = loc.value
        ok = loc.kind == "scalar" and isinstance(v, (int, float)) and not isinstance(v, bool)
        if ok and integer and not isinstance(v, int):
            ok = False
        what = "an integer" if integer else "a number"
        if lo is not None and hi is not None:
            what += f" from {lo} to {hi}"
        elif lo is not None:
            what += f" >= {lo}"
        if not ok or (lo is not None and v < lo) or (hi is not None and v > hi):
            return self.error(loc, f"expected {what}, got {_describe(loc)}")
        return v if integer else float(v)

    def literal(self, loc: _Loc, choices: tuple[str, ...]) -> Any:
        if loc.kind == "scalar" and loc.value in choices:
            return loc.value
        return self.error(loc, f"expected one of {', '.join(choices)}, got {_describe(loc)}")

    def json_value(self, loc: _Loc) -> Any:
        """Free-form data (extensions): anything JSON can hold, so that it survives a card."""
        if loc.kind == "map":
            out = {}
            for k, v in loc.value:
                if not isinstance(k.value, str):
                    self.error(_at(k, loc.path), f"keys must be strings (JSON objects), got {_describe(k)}")
                    continue
                if k.value in out:
                    self.error(_at(k, loc.path), f"duplicate key {k.value!r}")
                    continue
                out[k.value] = self.json_value(v)
            return out
        if loc.kind == "seq":
            return [self.json_value(v) for v in loc.value]
        if loc.value is None or isinstance(loc.value, (str, bool, int, float)):
            return loc.value
        return self.error(loc, f"expected JSON data, got {_describe(loc)} (quote it)")

    # containers ---------------------------------------------------------------------------------------------
    def seq(self, loc: _Loc, item: Callable[[_Loc], Any], what: str = "a list") -> Any:
        if loc.kind == "scalar" and loc.value is None:
            return []
        if loc.kind != "seq":
            return self.error(loc, f"expected {what}, got {_describe(loc)}")
        out = [item(v) for v in loc.value]
        return _BAD if any(v is _BAD for v in out) else out

    def strings(self, loc: _Loc) -> Any:
        return self.seq(loc, self.string, "a list of strings")

    def mapping(
        self, loc: _Loc, spec: dict[str, Callable[[_Loc], Any]], required: tuple[str, ...] = ()
    ) -> dict[str, Any] | object:
        """Check a mapping against `spec` (key -> converter): unknown and duplicate keys, missing required keys."""
        if loc.kind == "scalar" and loc.value is None and not required:
            return {}
        if loc.kind != "map":
            return self.error(loc, f"expected a mapping, got {_describe(loc)}")
        out: dict[str, Any] = {}
        seen: set[Any] = set()
        bad = False
        for k, v in loc.value:
            key = k.value
            if key in seen:
                self.error(_at(k, loc.path), f"duplicate key {key!r}")
                bad = True
                continue
            seen.add(key)
            if key not in spec:
                close = difflib.get_close_matches(str(key), list(spec), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(spec)})"
                if loc.path == "":
                    hint += "; put custom data under `extensions`"
                self.error(_at(k, loc.path), f"unknown key {key!r}{hint}")
                bad = True
                continue
            value = spec[key](v)
            if value is _BAD:
                bad = True
            else:
                out[key] = value
        for key in required:
            if key not in seen:
                self.error(loc, f"missing required key {key!r}")
                bad = True
        return _BAD if bad else out

    def dict_of_strings(self, loc: _Loc, what: str) -> Any:
        if loc.kind == "scalar" and loc.value is None:
            return {}
        if loc.kind != "map":
            return self.error(loc, f"expected a mapping of {what}, got {_describe(loc)}")
        out, bad = {}, False
        for k, v in loc.value:
            if not isinstance(k.value, str) or not re.fullmatch(r"[^\W\d]\w*", k.value):
                self.error(_at(k, loc.path), f"{what} names are words (letters, digits, _), got {k.value!r}")
                bad = True
            elif k.value in out:
                self.error(_at(k, loc.path), f"duplicate key {k.value!r}")
                bad = True
            text = self.string(v)
            if text is _BAD:
                bad = True
            elif not text.strip():
                self.error(v, "must not be empty")
                bad = True
            elif isinstance(k.value, str):
                out[k.value] = text
        return _BAD if bad else out


def _at(key: _Loc, parent_path: str) -> _Loc:
    """A key's location, named by its parent's path (the key itself is in the message)."""
    return _Loc(key.kind, key.value, parent_path, key.line, key.col)


# ---------------------------------------------------------------------------------------------------------------
# Building a Persona from a located tree


def _generation_spec(b: _Builder) -> dict[str, Callable[[_Loc], Any]]:
    ranges: dict[str, tuple[float | None, float | None]] = {
        "temperature": (0.0, 5.0),
        "top_p": (0.0, 1.0),
        "top_k": (0, None),
        "repetition_penalty": (0.0, 10.0),
        "max_tokens": (1, None),
        "seed": (0, None),
    }
    spec: dict[str, Callable[[_Loc], Any]] = {}
    for name, hint in typing.get_type_hints(GenerationSettings).items():
        lo, hi = ranges.get(name, (None, None))
        args = set(typing.get_args(hint))
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if optional else hint

        def conv(loc: _Loc, base: Any = base, optional: bool = optional, lo: Any = lo, hi: Any = hi) -> Any:
            if optional and loc.kind == "scalar" and loc.value is None:
                return None
            if base is bool:
                return b.boolean(loc)
            if base in (int, float):
                return b.number(loc, base is int, lo, hi)
            if base is str:
                return b.string(loc)
            if typing.get_origin(base) is list:
                return b.strings(loc)
            return b.json_value(loc)

        spec[name] = conv
    spec["rerank"] = lambda loc: b.number(loc, True, 0, 64)
    spec["inverse_prompting"] = b.boolean
    spec["inverse_weight"] = lambda loc: b.number(loc, False, 0.0, None)
    return spec


def _example_line(b: _Builder, loc: _Loc) -> Any:
    if loc.kind != "map" or len(loc.value) != 1:
        return b.error(loc, f"expected one line as `user: text` or `bot: text`, got {_describe(loc)}")
    (k, v), = loc.value
    speaker = b.literal(_at(k, loc.path), ("user", "bot"))
    text = b.string(v)
    return _BAD if _BAD in (speaker, text) else ExampleLine(speaker, text)


def _book_entry(b: _Builder, loc: _Loc) -> Any:
    d = b.mapping(
        loc,
        {
            "keys": b.strings,
            "content": b.string,
            "extensions": b.json_value,
            "enabled": b.boolean,
            "insertion_order": lambda v: b.number(v, True),
            "case_sensitive": b.boolean,
            "name": b.optional_string,
            "priority": lambda v: b.number(v, True),
            "id": lambda v: v.value if v.kind == "scalar" and isinstance(v.value, (int, str)) and not isinstance(
                v.value, bool) else b.error(v, f"expected an integer or a string, got {_describe(v)}"),
            "comment": b.optional_string,
            "selective": b.boolean,
            "secondary_keys": b.strings,
            "constant": b.boolean,
            "position": lambda v: b.literal(v, ("before_char", "after_char")),
            "card_extra": b.json_value,
        },
        required=("keys", "content"),
    )
    return d if d is _BAD else BookEntry(**d, given=frozenset(d))


def _character_book(b: _Builder, loc: _Loc) -> Any:
    if loc.kind == "scalar" and loc.value is None:
        return None
    d = b.mapping(
        loc,
        {
            "name": b.optional_string,
            "description": b.optional_string,
            "scan_depth": lambda v: b.number(v, True, 0),
            "token_budget": lambda v: b.number(v, True, 0),
            "recursive_scanning": b.boolean,
            "extensions": b.json_value,
            "entries": lambda v: b.seq(v, lambda e: _book_entry(b, e), "a list of entries"),
            "card_extra": b.json_value,
        },
    )
    return d if d is _BAD else CharacterBook(**d)


def _qa(b: _Builder, loc: _Loc) -> Any:
    d = b.mapping(loc, {"q": b.string, "a": b.string}, required=("q", "a"))
    return d if d is _BAD else QA(**d)


def _xdai_spec(b: _Builder) -> dict[str, Callable[[_Loc], Any]]:
    def knowledge(loc: _Loc) -> Any:
        d = b.mapping(
            loc,
            {"stores": b.strings, "background": b.strings, "qa": lambda v: b.seq(v, lambda e: _qa(b, e))},
        )
        return d if d is _BAD else KnowledgeSpec(**d)

    def selection(loc: _Loc) -> Any:
        d = b.mapping(
            loc,
            {
                "alpha": lambda v: b.number(v, False, 0.0, 1.0),
                "history_pairs": lambda v: b.number(v, True, 0),
                "top_k": lambda v: b.number(v, True, 0),
                "qa_threshold": lambda v: b.number(v, False, -1.0, 1.0),
                "background_k": lambda v: b.number(v, True, 0),
                "dense_weight": lambda v: b.number(v, False, 0.0),
                "bm25_weight": lambda v: b.number(v, False, 0.0),
                "lore_scan_turns": lambda v: b.number(v, True, 0),
                "budget_tokens": lambda v: b.number(v, True, 64),
            },
        )
        return d if d is _BAD else SelectionSpec(**d)

    def safety(loc: _Loc) -> Any:
        d = b.mapping(loc, {"blocked_words": b.strings, "replacement": b.string})
        return d if d is _BAD else SafetySpec(**d)

    return {
        "language": lambda v: b.literal(v, ("zh", "en")),
        "bot_speaker": lambda v: _speaker(b, v),
        "user_speaker": lambda v: _speaker(b, v),
        "knowledge": knowledge,
        "selection": selection,
        "conditions": lambda v: b.dict_of_strings(v, "condition"),
        "generation": lambda v: b.mapping(v, _generation_spec(b)),
        "safety": safety,
    }


def _persona_spec(b: _Builder) -> dict[str, Callable[[_Loc], Any]]:
    def name(loc: _Loc) -> Any:
        v = b.string(loc)
        return b.error(loc, "must not be empty") if v is not _BAD and not v.strip() else v

    def extensions(loc: _Loc) -> Any:
        v = b.json_value(loc) if loc.kind == "map" or loc.value is None else b.error(
            loc, f"expected a mapping, got {_describe(loc)}")
        if isinstance(v, dict) and XDAI_EXTENSION in v and loc.line:
            key = next(k for k, _ in loc.value if k.value == XDAI_EXTENSION)
            return b.error(_at(key, loc.path), "`extensions.xdai` is reserved for export: write XDAI fields at the top level")
        return v or {}

    examples = lambda v: b.seq(  # noqa: E731
        v, lambda ex: b.seq(ex, lambda line: _example_line(b, line), "a list of lines"), "a list of examples")
    spec: dict[str, Callable[[_Loc], Any]] = {
        "name": name,
        "description": b.string,
        "personality": b.string,
        "scenario": b.string,
        "first_mes": b.string,
        "alternate_greetings": b.strings,
        "mes_example": examples,
        "system_prompt": b.string,
        "post_history_instructions": b.string,
        "creator_notes": b.string,
        "tags": b.strings,
        "creator": b.string,
        "character_version": b.string,
        "extensions": extensions,
        "character_book": lambda v: _character_book(b, v),
    }
    spec.update(_xdai_spec(b))
    spec["card_extra"] = b.json_value
    return spec


_SPEAKER_BREAKERS = re.compile(r"[:：\n\r\x00-\x1f\x7f\[\]]")


def _speaker(b: _Builder, loc: _Loc) -> Any:
    """A speaker tag opens a line of the prompt ("小呆：..."), so it must not be able to break that format."""
    v = b.string(loc)
    if v is _BAD:
        return v
    if not v.strip() or _SPEAKER_BREAKERS.search(v):
        return b.error(loc, f"a speaker name is one non-empty line without colons, brackets or control "
                            f"characters, got {v!r}")
    return v


def _build(b: _Builder, root: _Loc) -> Persona | None:
    if root.kind != "map":
        b.error(root, f"a persona is a mapping of fields (name: ..., description: ...), got {_describe(root)}")
        return None
    d = b.mapping(root, _persona_spec(b), required=("name",))
    if d is _BAD:
        return None
    if "bot_speaker" not in d and _SPEAKER_BREAKERS.search(d["name"]):
        name = _find(root, ["name"])
        b.error(name, f"the name is the bot's speaker tag unless `bot_speaker` is set, and {d['name']!r} would "
                      "break the speaker format: set bot_speaker")
        return None
    return Persona(**d)


# ---------------------------------------------------------------------------------------------------------------
# YAML in


def _parse_yaml(text: str, file: str, b: _Builder) -> _Loc | None:
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            b.issues.append(PersonaIssue(file, 1, 1, "empty file: a persona needs at least `name:`"))
            return None
        return _from_node(node, loader, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        context = exc.context or ""
        if exc.context_mark is not None and exc.problem_mark is not None and context:
            context += f" (from {exc.context_mark.line + 1}:{exc.context_mark.column + 1})"
        message = " ".join(p for p in (context, exc.problem) if p) or str(exc)
        if "'\\t'" in message:
            message += " (YAML indents with spaces, not tabs)"
        b.issues.append(PersonaIssue(file, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1,
                                     f"YAML syntax: {message}"))
        return None
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        b.issues.append(PersonaIssue(file, line, col, f"control character {exc.character:#06x} is not allowed "
                                     "(write it as an escape inside double quotes, e.g. \"\\x01\")"))
        return None
    except yaml.YAMLError as exc:
        b.issues.append(PersonaIssue(file, 1, 1, f"YAML syntax: {exc}"))
        return None
    except RecursionError:
        b.issues.append(PersonaIssue(file, 1, 1, "YAML: a recursive alias (an anchor that contains itself)"))
        return None
    finally:
        if loader is not None:
            loader.dispose()


def parse_persona(text: str, file: str = "<string>") -> tuple[Persona | None, list[PersonaIssue]]:
    """Parse persona YAML; returns the persona (None on any error) and every issue found."""
    b = _Builder(file)
    root = _parse_yaml(text, file, b)
    persona = _build(b, root) if root is not None else None
    errors = [i for i in b.issues if i.severity == "error"]
    return (None if errors else persona), b.issues


def resolve_store(spec: str, persona_path: Path | None = None, stores_dir: str | Path | None = None) -> Path | None:
    """Where a `knowledge.stores` entry lives: an absolute path, a path relative to the working directory or to
    the persona file, or a name under the configured stores directory. None when none exists."""
    p = Path(spec).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p]
    if not p.is_absolute():
        if persona_path is not None:
            candidates.append(persona_path.parent / p)
        if stores_dir is None:
            from xdai.config import load_config

            stores_dir = load_config().paths.stores_dir
        candidates.append(Path(stores_dir) / p)
    return next((c for c in candidates if c.exists()), None)


def check_persona_file(path: str | Path) -> list[PersonaIssue]:
    """Every problem in a persona YAML file (errors, and warnings for stores that do not exist yet)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [PersonaIssue(str(path), 0, 0, f"cannot read: {exc}")]
    persona, issues = parse_persona(text, str(path))
    if persona is not None:
        persona.path = path
        issues.extend(_store_warnings(persona, text, str(path)))
    return issues


def _store_warnings(persona: Persona, text: str, file: str) -> list[PersonaIssue]:
    out = []
    root = _parse_yaml(text, file, _Builder(file))
    stores = _find(root, ["knowledge", "stores"])
    for i, spec in enumerate(persona.knowledge.stores):
        if resolve_store(spec, persona.path) is None:
            loc = stores.value[i] if stores is not None and stores.kind == "seq" else _Loc("scalar", spec, "")
            out.append(PersonaIssue(file, loc.line, loc.col,
                                    f"knowledge.stores[{i}]: store {spec!r} does not exist (yet); "
                                    "build it with `xdai knowledge build` before chatting", "warning"))
    return out


def _find(loc: _Loc | None, keys: list[str]) -> _Loc | None:
    for key in keys:
        if loc is None or loc.kind != "map":
            return None
        loc = next((v for k, v in loc.value if k.value == key), None)
    return loc


def _personas_dir(personas_dir: Path | None) -> Path:
    if personas_dir is not None:
        return Path(personas_dir)
    from xdai.config import load_config

    return Path(load_config().paths.personas_dir)


def persona_files(personas_dir: Path | None = None) -> list[Path]:
    d = _personas_dir(personas_dir)
    return sorted([*d.glob("*.yaml"), *d.glob("*.yml")]) if d.is_dir() else []


def find_persona_file(name_or_path: str | Path, personas_dir: Path | None = None) -> Path:
    """A path as given when it exists or looks like a file; else NAME.yaml in the personas directory."""
    p = Path(name_or_path)
    if p.is_file() or p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        return p
    d = _personas_dir(personas_dir)
    for suffix in (".yaml", ".yml"):
        if (d / f"{name_or_path}{suffix}").is_file():
            return d / f"{name_or_path}{suffix}"
    return d / f"{name_or_path}.yaml"


def load_persona(name_or_path: str | Path, personas_dir: Path | None = None) -> Persona:
    """Load a persona by name ("xiaodai" -> personas/xiaodai.yaml) or path; raise PersonaError on any error."""
    path = find_persona_file(name_or_path, personas_dir)
    if not path.is_file():
        known = ", ".join(f.stem for f in persona_files(personas_dir)) or "none"
        raise PersonaError([PersonaIssue(str(path), 0, 0, f"no persona {str(name_or_path)!r} (known: {known})")])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaError([PersonaIssue(str(path), 0, 0, f"cannot read: {exc}")]) from None
    persona, issues = parse_persona(text, str(path))
    if persona is None:
        raise PersonaError([i for i in issues if i.severity == "error"])
    persona.path = path
    return persona


# ---------------------------------------------------------------------------------------------------------------
# YAML out


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def persona_to_dict(p: Persona) -> dict[str, Any]:
    """The YAML shape of a persona: fields in reading order, defaults and empties left out."""
    out: dict[str, Any] = {"name": p.name}
    if p.language != "zh":
        out["language"] = p.language
    if p.bot_speaker != p.name:
        out["bot_speaker"] = p.bot_speaker
    if p.user_speaker != default_user_speaker(p.language):
        out["user_speaker"] = p.user_speaker
    for key in ("description", "personality", "scenario", "first_mes", "alternate_greetings"):
        if getattr(p, key):
            out[key] = getattr(p, key)
    if p.mes_example:
        out["mes_example"] = _examples_to_yaml(p.mes_example)
    for key in ("system_prompt", "post_history_instructions"):
        if getattr(p, key):
            out[key] = getattr(p, key)
    out.update(_xdai_fields(p, language=False))
    if p.character_book is not None:
        out["character_book"] = _book_to_dict(p.character_book)
    for key in ("tags", "creator", "character_version", "creator_notes", "extensions", "card_extra"):
        if getattr(p, key):
            out[key] = copy.deepcopy(getattr(p, key))
    return out


def dump_persona_yaml(p: Persona) -> str:
    return yaml.dump(persona_to_dict(p), Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=100)


def _examples_to_yaml(examples: list[Example]) -> list[list[dict[str, str]]]:
    return [[{line.speaker: line.text} for line in ex] for ex in examples]


def _xdai_fields(p: Persona, language: bool) -> dict[str, Any]:
    """Non-default XDAI fields (plus speakers and language when `language`), in the YAML/extension shape."""
    out: dict[str, Any] = {}
    if language:
        if p.language != _guess_language(p):
            out["language"] = p.language
        if p.bot_speaker != p.name:
            out["bot_speaker"] = p.bot_speaker
        if p.user_speaker != default_user_speaker(p.language):
            out["user_speaker"] = p.user_speaker
    k = p.knowledge
    knowledge = {"stores": list(k.stores), "background": list(k.background),
                 "qa": [{"q": x.q, "a": x.a} for x in k.qa]}
    knowledge = {key: v for key, v in knowledge.items() if v}
    if knowledge:
        out["knowledge"] = knowledge
    default = SelectionSpec()
    selection = {f.name: getattr(p.selection, f.name) for f in dataclasses.fields(SelectionSpec)
                 if getattr(p.selection, f.name) != getattr(default, f.name)}
    if selection:
        out["selection"] = selection
    if p.conditions:
        out["conditions"] = dict(p.conditions)
    if p.generation:
        out["generation"] = copy.deepcopy(p.generation)
    safety = {key: v for key, v in dataclasses.asdict(p.safety).items() if v}
    if safety:
        out["safety"] = safety
    return out


def _book_to_dict(book: CharacterBook, card: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("name", "description", "scan_depth", "token_budget", "recursive_scanning"):
        if getattr(book, key) is not None:
            out[key] = getattr(book, key)
    if card or book.extensions:
        out["extensions"] = copy.deepcopy(book.extensions)
    out["entries"] = [_entry_to_dict(e, card) for e in book.entries]
    _merge_extra(out, book.card_extra, card)
    return out


def _entry_to_dict(e: BookEntry, card: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"keys": list(e.keys), "content": e.content}
    if card or e.extensions:
        out["extensions"] = copy.deepcopy(e.extensions)
    if card or not e.enabled:
        out["enabled"] = e.enabled
    if card or e.insertion_order:
        out["insertion_order"] = e.insertion_order
    default = BookEntry()
    for key in ("case_sensitive", "name", "priority", "id", "comment", "selective", "secondary_keys",
                "constant", "position"):
        value = getattr(e, key)
        if key in e.given or value != getattr(default, key):
            out[key] = copy.deepcopy(value)
    _merge_extra(out, e.card_extra, card)
    return out


def _merge_extra(out: dict[str, Any], extra: dict[str, Any], card: bool) -> None:
    if not extra:
        return
    if card:
        for key, value in extra.items():
            out.setdefault(key, copy.deepcopy(value))
    else:
        out["card_extra"] = copy.deepcopy(extra)


# ---------------------------------------------------------------------------------------------------------------
# Character Card V2

_CARD_DATA_KEYS = (
    "name", "description", "personality", "scenario", "first_mes", "mes_example", "creator_notes", "system_prompt",
    "post_history_instructions", "alternate_greetings", "character_book", "tags", "creator", "character_version",
    "extensions",
)
_V1_KEYS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
_BOOK_KEYS = ("name", "description", "scan_depth", "token_budget", "recursive_scanning", "extensions", "entries")
_ENTRY_KEYS = ("keys", "content", "extensions", "enabled", "insertion_order", "case_sensitive", "name", "priority",
               "id", "comment", "selective", "secondary_keys", "constant", "position")
_START = "<START>"
_TAGS: dict[str, Speaker] = {"{{user}}:": "user", "{{char}}:": "bot", "<USER>:": "user", "<BOT>:": "bot"}


def render_examples(examples: list[Example]) -> str:
    """Card V2's string form: each example opens with <START>, lines are `{{user}}: ...` / `{{char}}: ...`."""
    blocks = []
    for ex in examples:
        lines = [_START] + [f"{'{{user}}' if ln.speaker == 'user' else '{{char}}'}: {ln.text}" for ln in ex]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def parse_examples(text: str) -> tuple[list[Example], int]:
    """Structured examples from Card V2's string form, and how many non-blank lines belong to no speaker.

    A line that does not open with a speaker tag continues the previous line; trailing whitespace of each line's
    text is dropped (the raw string is kept in card_extra when that matters)."""
    examples: list[Example] = []
    orphans = 0
    current: Example | None = None
    for raw in text.replace("\r\n", "\n").split("\n"):
        if raw.strip().upper() == _START:
            current = []
            examples.append(current)
            continue
        tag = next((t for t in _TAGS if raw.lower().startswith(t.lower())), None)
        if tag is not None:
            if current is None:
                current = []
                examples.append(current)
            rest = raw[len(tag):]
            current.append(ExampleLine(_TAGS[tag], rest[1:] if rest.startswith(" ") else rest))
        elif current:
            current[-1].text += "\n" + raw
        elif raw.strip():
            orphans += 1
    for ex in examples:
        for line in ex:
            line.text = line.text.rstrip()
    return examples, orphans


def _renders_to(structured: Any, raw: str) -> bool:
    try:
        lines = [[ExampleLine(*next(iter(line.items()))) for line in ex] for ex in structured]
    except (TypeError, AttributeError, StopIteration):
        return False
    return render_examples(lines) == raw


def _cjk_ratio(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum("\u4e00" <= c <= "\u9fff" for c in letters) / len(letters) if letters else 0.0


def _guess_language(p: Persona) -> str:
    """Cards carry no language: guess it from the text, so that export omits it when the guess is right."""
    return "zh" if _cjk_ratio(" ".join((p.name, p.description, p.personality, p.first_mes))) >= 0.2 else "en"


def _to_card(p: Persona) -> dict[str, Any]:
    rendered = render_examples(p.mes_example)
    raw = p.card_extra.get("mes_example")
    if isinstance(raw, str) and parse_examples(raw)[0] == p.mes_example:
        rendered = raw
    extensions = copy.deepcopy(p.extensions)
    xdai = _xdai_fields(p, language=True)
    if parse_examples(rendered)[0] != p.mes_example:
        xdai["mes_example"] = _examples_to_yaml(p.mes_example)  # text the string form cannot hold
    if xdai:
        extensions[XDAI_EXTENSION] = xdai
    data: dict[str, Any] = {
        "name": p.name,
        "description": p.description,
        "personality": p.personality,
        "scenario": p.scenario,
        "first_mes": p.first_mes,
        "mes_example": rendered,
        "creator_notes": p.creator_notes,
        "system_prompt": p.system_prompt,
        "post_history_instructions": p.post_history_instructions,
        "alternate_greetings": list(p.alternate_greetings),
    }
    if p.character_book is not None:
        data["character_book"] = _book_to_dict(p.character_book, card=True)
    data.update(tags=list(p.tags), creator=p.creator, character_version=p.character_version, extensions=extensions)
    _merge_extra(data, p.card_extra.get("data", {}), card=True)
    card: dict[str, Any] = {"spec": CARD_SPEC, "spec_version": CARD_SPEC_VERSION, "data": data}
    for key in p.card_extra.get("v1_mirror", []):
        card[key] = data[key]
    _merge_extra(card, p.card_extra.get("card", {}), card=True)
    return card


def _from_card(card: Any, source: str) -> Persona:
    if not isinstance(card, dict):
        raise PersonaError([PersonaIssue(source, 0, 0, f"a card is a JSON object, got {type(card).__name__}")])
    spec = card.get("spec")
    if spec is None and "name" in card:  # V1: the fields at the top level; upgraded to V2 on export
        card = {"spec": CARD_SPEC, "spec_version": CARD_SPEC_VERSION, "data": dict(card)}
    elif spec != CARD_SPEC:
        raise PersonaError([PersonaIssue(source, 0, 0, f"spec: expected {CARD_SPEC!r}, got {spec!r}")])
    data = card.get("data")
    if not isinstance(data, dict):
        raise PersonaError([PersonaIssue(source, 0, 0, f"data: expected a JSON object, got {type(data).__name__}")])

    card_extra: dict[str, Any] = {}
    top = {k: v for k, v in card.items() if k not in ("spec", "spec_version", "data")}
    if card.get("spec_version") != CARD_SPEC_VERSION:
        top["spec_version"] = card.get("spec_version")
    mirror = [k for k in _V1_KEYS if k in top and top[k] == data.get(k)]
    for k in mirror:
        del top[k]
    if mirror:
        card_extra["v1_mirror"] = mirror
    if top:
        card_extra["card"] = top
    unknown = {k: v for k, v in data.items() if k not in _CARD_DATA_KEYS}
    if unknown:
        card_extra["data"] = unknown

    fields: dict[str, Any] = {k: v for k, v in data.items() if k in _CARD_DATA_KEYS}
    xdai: Any = {}
    if isinstance(fields.get("extensions"), dict):
        extensions = dict(fields["extensions"])
        xdai = extensions.pop(XDAI_EXTENSION, None) or {}
        fields["extensions"] = extensions

    raw_examples = fields.pop("mes_example", "") or ""
    examples, _ = parse_examples(raw_examples) if isinstance(raw_examples, str) else ([], 0)
    structured = xdai.pop("mes_example", None) if isinstance(xdai, dict) else None
    if not isinstance(raw_examples, str):
        fields["mes_example"] = raw_examples  # let the builder report the wrong type
    elif structured is not None:  # text the string form cannot hold, exported by xdai itself
        fields["mes_example"] = structured
        if not _renders_to(structured, raw_examples):
            card_extra["mes_example"] = raw_examples
    else:
        fields["mes_example"] = _examples_to_yaml(examples)
        if raw_examples != render_examples(examples):
            card_extra["mes_example"] = raw_examples

    book = fields.get("character_book")
    if isinstance(book, dict):
        book = {k: v for k, v in book.items() if k in _BOOK_KEYS} | (
            {"card_extra": {k: v for k, v in book.items() if k not in _BOOK_KEYS}}
            if set(book) - set(_BOOK_KEYS) else {})
        if isinstance(book.get("entries"), list):
            book["entries"] = [
                {k: v for k, v in e.items() if k in _ENTRY_KEYS}
                | ({"card_extra": {k: v for k, v in e.items() if k not in _ENTRY_KEYS}}
                   if set(e) - set(_ENTRY_KEYS) else {})
                if isinstance(e, dict) else e
                for e in book["entries"]
            ]
        fields["character_book"] = book

    b = _Builder(source)
    pairs = [(_Loc("scalar", k, "data"), _from_obj(v, f"data.{k}")) for k, v in fields.items()]
    if not isinstance(xdai, dict):
        b.error(_from_obj(xdai, "data.extensions.xdai"), "expected a JSON object")
    else:
        allowed = list(_xdai_spec(b))
        for k, v in xdai.items():
            if k in allowed:
                pairs.append((_Loc("scalar", k, "data.extensions.xdai"), _from_obj(v, f"data.extensions.xdai.{k}")))
            else:
                b.error(_Loc("scalar", k, "data.extensions.xdai"), f"unknown key {k!r} (known: {', '.join(allowed)})")
    if card_extra:
        pairs.append((_Loc("scalar", "card_extra", ""), _from_obj(card_extra, "card_extra")))
    names = {k.value for k, _ in pairs}
    persona = _build(b, _Loc("map", pairs, ""))
    if persona is None or b.issues:
        raise PersonaError(b.issues)
    if "language" not in names:
        persona.language = _guess_language(persona)  # type: ignore[assignment]
        if "user_speaker" not in names:
            persona.user_speaker = default_user_speaker(persona.language)
    return persona


# ---------------------------------------------------------------------------------------------------------------
# Card files: JSON, or PNG with the card in a `chara` tEXt chunk (base64 of the JSON)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CARD_CHUNK_KEYWORD = b"chara"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, data) chunks of a PNG, CRCs checked."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file (bad signature)")
    chunks, pos = [], len(_PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError(f"truncated PNG chunk header at byte {pos}")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            raise ValueError(f"truncated PNG chunk {kind!r} at byte {pos}")
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if crc != zlib.crc32(kind + body):
            raise ValueError(f"PNG chunk {kind!r} at byte {pos} has a bad CRC")
        chunks.append((kind, body))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def png_bytes(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = [_PNG_SIGNATURE]
    for kind, body in chunks:
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)


def placeholder_png(name: str, size: int = 256) -> bytes:
    """A plain avatar for cards exported without an image: a two-tone square coloured from the name."""
    h = hashlib.sha256(name.encode("utf-8")).digest()
    fg, bg = h[:3], bytes(255 - (255 - c) // 4 for c in h[3:6])
    rows = []
    for y in range(size):
        row = bytearray(b"\x00")  # filter: none
        for x in range(size):
            inside = (x - size / 2) ** 2 + (y - size / 2.6) ** 2 < (size / 5) ** 2 or (
                y > size * 0.62 and (x - size / 2) ** 2 + (y - size) ** 2 < (size / 2.6) ** 2)
            row += fg if inside else bg
        rows.append(bytes(row))
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return png_bytes([(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"".join(rows), 9)), (b"IEND", b"")])


def _card_keyword(kind: bytes, body: bytes) -> bool:
    return kind in (b"tEXt", b"iTXt", b"zTXt") and body.split(b"\0", 1)[0] == _CARD_CHUNK_KEYWORD


def read_card(path: str | Path) -> dict[str, Any]:
    """A card's JSON from a .json file or from the `chara` chunk of a .png."""
    path = Path(path)
    data = path.read_bytes()
    try:
        if data.startswith(_PNG_SIGNATURE):
            found = next(((k, body) for k, body in png_chunks(data) if _card_keyword(k, body)), None)
            if found is None:
                raise ValueError("PNG has no `chara` text chunk: not a character card")
            text = _chunk_text(*found)
            return json.loads(base64.b64decode(text, validate=False).decode("utf-8"))
        return json.loads(data.decode("utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise PersonaError([PersonaIssue(str(path), exc.lineno, exc.colno, f"JSON: {exc.msg}")]) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PersonaError([PersonaIssue(str(path), 0, 0, str(exc))]) from None


def _chunk_text(kind: bytes, body: bytes) -> str:
    rest = body.split(b"\0", 1)[1]
    if kind == b"tEXt":
        return rest.decode("latin-1")
    if kind == b"zTXt":
        return zlib.decompress(rest[1:]).decode("latin-1")
    compressed, rest = rest[0], rest[2:]  # iTXt: flag, method, language\0, translated keyword\0, text
    text = rest.split(b"\0", 2)[2]
    return (zlib.decompress(text) if compressed else text).decode("utf-8")


def card_to_png(card: dict[str, Any], image: bytes | None = None) -> bytes:
    """`image` (or a placeholder) with `card` in a `chara` tEXt chunk; any previous card chunk is replaced."""
    image = image or placeholder_png(str(card.get("data", {}).get("name", "")))
    chunks = [(k, v) for k, v in png_chunks(image) if not _card_keyword(k, v)]
    payload = base64.b64encode(json.dumps(card, ensure_ascii=False).encode("utf-8"))
    end = next(i for i, (k, _) in enumerate(chunks) if k == b"IEND")
    chunks.insert(end, (b"tEXt", _CARD_CHUNK_KEYWORD + b"\0" + payload))
    return png_bytes(chunks)


def import_card(path: str | Path) -> Persona:
    """A Persona from a Card V2 .json or .png."""
    return Persona.from_card_v2(read_card(path), source=str(path))
