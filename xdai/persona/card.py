"""Character Cards V2 and V3 in and out: the card JSON <-> Persona mapping, and card files (JSON, PNG, CHARX).

Round trips are lossless both ways: XDAI fields that a card has no place for travel in `data.extensions.xdai`, and
card fields that neither side knows travel in `card_extra` (at the card, lorebook, entry and asset level). A card's
JSON is checked by the same builder as YAML (`xdai.persona.parse`). V3 (kwaroran's character-card-spec-v3) is V2
plus `assets`, `nickname`, `creator_notes_multilingual`, `source`, `group_only_greetings`, creation/modification
dates and lorebook entries' `use_regex`; a V2 export carries those as extra `data` keys, which V2 readers ignore.
Files: a PNG holds the card in a `ccv3` (V3) and/or `chara` (V2) text chunk (`xdai.persona.png`), a CHARX is a zip
with `card.json` and the files of ``embeded://`` assets (`xdai.persona.charx`).
"""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xdai.persona.charx import ZIP_SIGNATURE, read_charx
from xdai.persona.dump import (
    _asset_to_dict,
    _book_to_dict,
    _examples_to_yaml,
    _guess_language,
    _merge_extra,
    _xdai_fields,
)
from xdai.persona.limits import DEFAULT_LIMITS, PersonaLimits, load_json, read_limited
from xdai.persona.parse import _build, _Builder, _from_obj, _Loc, _xdai_spec
from xdai.persona.png import (
    PNG_SIGNATURE,
    ChunkError,
    card_to_png,
    find_card_text,
    is_card_chunk,
    png_bytes,
    png_chunks,
)
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
CARD_SPEC_V3 = "chara_card_v3"
CARD_SPEC_VERSION_V3 = "3.0"
_CARD_DATA_KEYS = (
    "name", "description", "personality", "scenario", "first_mes", "mes_example", "creator_notes", "system_prompt",
    "post_history_instructions", "alternate_greetings", "character_book", "tags", "creator", "character_version",
    "extensions",
)
_V3_DATA_KEYS = ("nickname", "creator_notes_multilingual", "source", "group_only_greetings", "creation_date",
                 "modification_date", "assets")
_V1_KEYS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
_BOOK_KEYS = ("name", "description", "scan_depth", "token_budget", "recursive_scanning", "extensions", "entries")
_ENTRY_KEYS = ("keys", "content", "extensions", "enabled", "insertion_order", "case_sensitive", "name", "priority",
               "id", "comment", "selective", "secondary_keys", "constant", "position")
_ASSET_KEYS = ("type", "uri", "name", "ext")
V2_BACKFILL_NOTE = ("[This PNG also holds the card as Character Card V3 (its `ccv3` chunk). This Card V2 copy is for "
                    "older apps and may miss V3 features: open the card in a V3 app to use all of it.]")
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


def _to_card(p: Persona, v3: bool = False) -> dict[str, Any]:
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
        if v3:  # required in V3
            for entry, out in zip(p.character_book.entries, data["character_book"]["entries"], strict=True):
                out["use_regex"] = entry.use_regex or entry.card_extra.get("use_regex") is True  # V2-era key
    data.update(tags=list(p.tags), creator=p.creator, character_version=p.character_version, extensions=extensions)
    if p.group_only_greetings:  # in V2 an extra key, which V2 readers ignore
        data["group_only_greetings"] = list(p.group_only_greetings)
    for key in ("nickname", "creator_notes_multilingual", "source", "creation_date", "modification_date"):
        if getattr(p, key) is not None:
            data[key] = copy.deepcopy(getattr(p, key))
    if p.assets is not None:
        data["assets"] = [_asset_to_dict(a, card=True) for a in p.assets]
    _merge_extra(data, p.card_extra.get("data", {}), card=True)
    if v3:
        data.setdefault("group_only_greetings", [])  # required in V3
    spec = (CARD_SPEC_V3, CARD_SPEC_VERSION_V3) if v3 else (CARD_SPEC, CARD_SPEC_VERSION)
    card: dict[str, Any] = {"spec": spec[0], "spec_version": spec[1], "data": data}
    for key in p.card_extra.get("v1_mirror", []):
        card[key] = data[key]
    _merge_extra(card, p.card_extra.get("card", {}), card=True)
    return card


def card_version(card: Any) -> int:
    """1, 2 or 3: which Character Card spec `card` follows (1: the fields at the top level, no `spec`); 0 if none."""
    if not isinstance(card, dict):
        return 0
    spec = card.get("spec")
    if spec is None and "name" in card:
        return 1
    return {CARD_SPEC: 2, CARD_SPEC_V3: 3}.get(spec, 0)


def _from_card(card: Any, source: str, any_version: bool = False) -> Persona:
    """`card` (V1 or V2; V3 too with `any_version`) as a Persona, checked; PersonaError naming each problem."""
    if not isinstance(card, dict):
        raise PersonaError([PersonaIssue(source, 0, 0, f"a card is a JSON object, got {type(card).__name__}")])
    version = card_version(card)
    if version == 1:  # V1: the fields at the top level; upgraded to V2 on export
        card = {"spec": CARD_SPEC, "spec_version": CARD_SPEC_VERSION, "data": dict(card)}
    elif version == 0 or (version == 3 and not any_version):
        expected = f"{CARD_SPEC!r} or {CARD_SPEC_V3!r}" if any_version else repr(CARD_SPEC)
        raise PersonaError([PersonaIssue(source, 0, 0, f"spec: expected {expected}, got {card.get('spec')!r}")])
    v3 = version == 3
    data = card.get("data")
    if not isinstance(data, dict):
        raise PersonaError([PersonaIssue(source, 0, 0, f"data: expected a JSON object, got {type(data).__name__}")])
    data_keys = _CARD_DATA_KEYS + (_V3_DATA_KEYS if v3 else ())
    entry_keys = _ENTRY_KEYS + (("use_regex",) if v3 else ())

    card_extra: dict[str, Any] = {}
    top = {k: v for k, v in card.items() if k not in ("spec", "spec_version", "data")}
    if card.get("spec_version") != (CARD_SPEC_VERSION_V3 if v3 else CARD_SPEC_VERSION):
        top["spec_version"] = card.get("spec_version")
    mirror = [k for k in _V1_KEYS if k in top and top[k] == data.get(k)]
    for k in mirror:
        del top[k]
    if mirror:
        card_extra["v1_mirror"] = mirror
    if top:
        card_extra["card"] = top
    unknown = {k: v for k, v in data.items() if k not in data_keys}
    if unknown:
        card_extra["data"] = unknown

    fields: dict[str, Any] = {k: v for k, v in data.items() if k in data_keys}
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
            book["entries"] = [_split_known(e, entry_keys) for e in book["entries"]]
        fields["character_book"] = book
    if isinstance(fields.get("assets"), list):
        fields["assets"] = [_split_known(a, _ASSET_KEYS) for a in fields["assets"]]

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
    if v3 and "group_only_greetings" not in names:  # required by V3; as if written empty
        pairs.append((_Loc("scalar", "group_only_greetings", "data"), _from_obj([], "data.group_only_greetings")))
    persona = _build(b, _Loc("map", pairs, ""))
    if persona is None or b.issues:
        raise PersonaError(b.issues)
    if "language" not in names:
        persona.language = _guess_language(persona)  # type: ignore[assignment]
        if "user_speaker" not in names:
            persona.user_speaker = default_user_speaker(persona.language)
    return persona


def _split_known(record: Any, known: tuple[str, ...]) -> Any:
    """A card record's known keys, with the others under `card_extra` (kept for export); non-dicts as they are."""
    if not isinstance(record, dict):
        return record
    out = {k: v for k, v in record.items() if k in known}
    extra = {k: v for k, v in record.items() if k not in known}
    return out | ({"card_extra": extra} if extra else {})


# ---------------------------------------------------------------------------------------------------------------
# Card files: JSON, or PNG with the card in a `chara` (or `ccv3`) text chunk (base64 of the JSON). Bounded: see
# `xdai.persona.limits` and `xdai.persona.png`.


@dataclass
class CardFile:
    """A card file as read: the card's JSON, what held it, and what came with it."""

    card: dict[str, Any]
    container: Literal["json", "png", "charx"]
    image: bytes | None = None  # a PNG card's image, its card chunks removed
    files: dict[str, bytes] = field(default_factory=dict)  # a CHARX's members beside card.json

    @property
    def version(self) -> int:
        return card_version(self.card)


def load_card(path: str | Path, limits: PersonaLimits = DEFAULT_LIMITS) -> CardFile:
    """A card file, told apart by its content: a PNG (the `ccv3` chunk over `chara`), a CHARX (zip) or JSON.
    PersonaError naming the file (and the chunk or member) when it is too large, malformed or nested too deeply."""
    path = Path(path)
    source = str(path)
    data = read_limited(path, limits.card_bytes, "card")
    if data.startswith(PNG_SIGNATURE):
        return CardFile(_png_card(data, source, limits), "png",
                        image=png_bytes([c for c in png_chunks(data) if not is_card_chunk(*c)]))
    if data.startswith(ZIP_SIGNATURE):
        card, files = read_charx(data, source, limits)
        return CardFile(card, "charx", files=files)
    if len(data) > limits.card_text_bytes:
        raise PersonaError([PersonaIssue(source, 0, 0, f"{len(data):,} bytes of JSON, over the "
                                                       f"{limits.card_text_bytes:,}-byte limit for a card")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PersonaError([PersonaIssue(source, 0, 0, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    return CardFile(load_json(text, source, limits.json_depth), "json")


def _png_card(data: bytes, source: str, limits: PersonaLimits) -> Any:
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


def read_card(path: str | Path, limits: PersonaLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """A card's JSON from a .json, .png or .charx file (see `load_card`)."""
    return load_card(path, limits).card


def import_card(path: str | Path, limits: PersonaLimits = DEFAULT_LIMITS) -> Persona:
    """A Persona from a Card V1/V2/V3 .json, .png or .charx."""
    return Persona.from_card(read_card(path, limits), source=str(path))


def card_v3_png(p: Persona, image: bytes | None = None) -> bytes:
    """A V3 PNG card: the V3 card in `ccv3`, and beside it in `chara` the V2 card for older readers, its creator
    notes opening with a word that it is a backfill (V3 readers take `ccv3` and never see it)."""
    v2 = p.to_card_v2()
    notes = v2["data"].get("creator_notes") or ""
    v2["data"]["creator_notes"] = V2_BACKFILL_NOTE + ("\n\n" + notes if notes else "")
    return card_to_png(v2, image, v3=p.to_card_v3())
