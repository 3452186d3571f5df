"""Persona YAML out: fields in reading order, defaults and empties left out, multi-line text as blocks."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import yaml

from xdai.persona.schema import (
    Asset,
    BookEntry,
    CharacterBook,
    Example,
    Persona,
    SelectionSpec,
    default_user_speaker,
)


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def persona_to_dict(p: Persona) -> dict[str, Any]:
    """The YAML shape of a persona: fields in reading order, defaults and empties left out."""
    out: dict[str, Any] = {"name": p.name}
    if p.nickname is not None:
        out["nickname"] = p.nickname
    if p.language != "zh":
        out["language"] = p.language
    if p.bot_speaker != p.default_bot_speaker():
        out["bot_speaker"] = p.bot_speaker
    if p.user_speaker != default_user_speaker(p.language):
        out["user_speaker"] = p.user_speaker
    for key in ("description", "personality", "scenario", "first_mes", "alternate_greetings", "group_only_greetings"):
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
    for key in ("tags", "creator", "character_version", "creator_notes"):
        if getattr(p, key):
            out[key] = copy.deepcopy(getattr(p, key))
    for key in ("creator_notes_multilingual", "source", "creation_date", "modification_date"):
        if getattr(p, key) is not None:
            out[key] = copy.deepcopy(getattr(p, key))
    if p.assets is not None:
        out["assets"] = [_asset_to_dict(a, card=False) for a in p.assets]
    for key in ("extensions", "card_extra"):
        if getattr(p, key):
            out[key] = copy.deepcopy(getattr(p, key))
    return out


def _asset_to_dict(a: Asset, card: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": a.type, "uri": a.uri}
    out.update({k: getattr(a, k) for k in ("name", "ext") if getattr(a, k) is not None})
    _merge_extra(out, a.card_extra, card)
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
        if p.bot_speaker != p.default_bot_speaker():
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
    if not p.memory:
        out["memory"] = False
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
                "constant", "position", "use_regex"):
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


def _cjk_ratio(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum("\u4e00" <= c <= "\u9fff" for c in letters) / len(letters) if letters else 0.0


def _guess_language(p: Persona) -> str:
    """Cards carry no language: guess it from the text, so that export omits it when the guess is right."""
    return "zh" if _cjk_ratio(" ".join((p.name, p.description, p.personality, p.first_mes))) >= 0.2 else "en"
