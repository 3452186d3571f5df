"""Character Card V2 in and out, as JSON or as a PNG with the card in a `chara` tEXt chunk (base64 of the JSON).

Round trips are lossless both ways: XDAI fields that Card V2 has no place for travel in `data.extensions.xdai`, and
card fields that neither side knows travel in `card_extra` (at the card, lorebook and entry level). A card's JSON
is checked by the same builder as YAML (`xdai.persona.parse`).
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

from xdai.persona.dump import _book_to_dict, _examples_to_yaml, _guess_language, _merge_extra, _xdai_fields
from xdai.persona.limits import DEFAULT_LIMITS, PersonaLimits, load_json, read_limited
from xdai.persona.parse import _build, _Builder, _from_obj, _Loc, _xdai_spec
from xdai.persona.png import PNG_SIGNATURE, ChunkError, find_card_text
from xdai.persona.schema import (
    XDAI_EXTENSION,
    Example,
    ExampleLine,
    Persona,
    PersonaError,
    PersonaIssue,
    Speaker,
    default_user_speaker,
)

CARD_SPEC = "chara_card_v2"
CARD_SPEC_VERSION = "2.0"
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
# Card files: JSON, or PNG with the card in a `chara` (or `ccv3`) text chunk (base64 of the JSON). Bounded: see
# `xdai.persona.limits` and `xdai.persona.png`.


def read_card(path: str | Path, limits: PersonaLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """A card's JSON from a .json file or from the card chunk of a .png; PersonaError naming the file (and the
    chunk) when it is too large, malformed or nested too deeply."""
    path = Path(path)
    source = str(path)
    data = read_limited(path, limits.card_bytes, "card")
    if data.startswith(PNG_SIGNATURE):
        try:
            text, where = find_card_text(data, limits.card_text_bytes)
            raw = base64.b64decode(text.encode("ascii", "strict"), validate=False)
        except ChunkError as exc:
            raise PersonaError([PersonaIssue(source, 0, 0, str(exc))]) from None
        except (ValueError, UnicodeEncodeError) as exc:  # binascii.Error is a ValueError
            raise PersonaError([PersonaIssue(source, 0, 0, f"PNG {where}: not base64 ({exc})")]) from None
        try:
            decoded = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PersonaError([PersonaIssue(source, 0, 0, f"PNG {where}: the card is not UTF-8 ({exc.reason} at "
                                                           f"byte {exc.start})")]) from None
        return load_json(decoded, source, limits.json_depth, f"PNG {where}: ")
    if len(data) > limits.card_text_bytes:
        raise PersonaError([PersonaIssue(source, 0, 0, f"{len(data):,} bytes of JSON, over the "
                                                       f"{limits.card_text_bytes:,}-byte limit for a card")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PersonaError([PersonaIssue(source, 0, 0, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    return load_json(text, source, limits.json_depth)


def import_card(path: str | Path, limits: PersonaLimits = DEFAULT_LIMITS) -> Persona:
    """A Persona from a Card V2 .json or .png."""
    return Persona.from_card_v2(read_card(path, limits), source=str(path))
