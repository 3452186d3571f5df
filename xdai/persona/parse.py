"""Persona YAML in, checked: every problem reported at its file:line:col.

YAML is read through PyYAML's node graph rather than `safe_load`, so that each value keeps where it was written;
a card's JSON (`xdai.persona.card`) goes through the same builder as a located tree without lines, so both are
held to one set of rules. The builder collects every problem instead of stopping at the first. The graph comes from
`knowledge.safe_yaml`, whose bounds on alias expansion and nesting keep the tree walk below linear in the text: a
few hundred bytes of nested anchors are refused at the alias, not expanded into gigabytes.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from knowledge import safe_yaml
from xdai.generation import GenerationSettings
from xdai.persona.schema import (
    QA,
    XDAI_EXTENSION,
    Asset,
    BookEntry,
    CharacterBook,
    ExampleLine,
    KnowledgeSpec,
    Persona,
    PersonaError,
    PersonaIssue,
    SafetySpec,
    SelectionSpec,
)

# ---------------------------------------------------------------------------------------------------------------
# A located tree: the one input of the builder, made from YAML nodes (with marks) or from a card's dict.


@dataclass
class _Loc:
    kind: Literal["scalar", "seq", "map"]
    value: Any  # scalar value | list[_Loc] | list[tuple[_Loc, _Loc]]
    path: str
    line: int = 0
    col: int = 0


MAX_DEPTH = 64  # nesting of a persona's YAML or a card's JSON; the deepest real field is about 8 levels down


def _from_node(node: yaml.Node, loader: yaml.SafeLoader, path: str, depth: int = 0) -> _Loc:
    if depth > MAX_DEPTH:
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
    spec["rerank_slack"] = lambda loc: None if loc.value is None else b.number(loc, True, 0, 4096)
    spec["inverse_prompting"] = b.boolean
    spec["inverse_weight"] = lambda loc: b.number(loc, False, 0.0, None)
    for weight in ("likelihood_weight", "post_weight", "grounding_weight", "unsupported_weight",
                   "contradiction_weight", "copy_weight"):  # the reranking terms (xdai.choose)
        spec[weight] = lambda loc: b.number(loc, False, 0.0, None)
    spec["must_not_guess"] = b.boolean
    spec["decline"] = b.string
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
            "use_regex": b.boolean,
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


def _asset(b: _Builder, loc: _Loc) -> Any:
    d = b.mapping(loc, {"type": b.string, "uri": b.string, "name": b.optional_string, "ext": b.optional_string,
                        "card_extra": b.json_value}, required=("type", "uri"))
    if d is _BAD:
        return d
    asset = Asset(**d)
    path = asset.embedded_path
    if path is not None and (not path or path.startswith("/") or "\\" in path or ":" in path
                             or any(part in ("", ".", "..") for part in path.split("/"))):
        return b.error(_find(loc, ["uri"]) or loc, f"an embedded asset is a relative path inside the card, "
                                                   f"like embeded://assets/icon/images/main.png; got {asset.uri!r}")
    return asset


def _string_map(b: _Builder, loc: _Loc) -> Any:
    """A mapping of strings to strings (Card V3's creator_notes_multilingual: language code -> notes)."""
    if loc.kind != "map":
        return b.error(loc, f"expected a mapping of strings, got {_describe(loc)}")
    out, bad = {}, False
    for k, v in loc.value:
        if not isinstance(k.value, str) or not k.value:
            b.error(_at(k, loc.path), f"keys are non-empty strings, got {_describe(k)}")
            bad = True
        elif k.value in out:
            b.error(_at(k, loc.path), f"duplicate key {k.value!r}")
            bad = True
        text = b.string(v)
        if text is _BAD:
            bad = True
        elif isinstance(k.value, str):
            out[k.value] = text
    return _BAD if bad else out


def _optional(convert: Callable[[_Loc], Any]) -> Callable[[_Loc], Any]:
    """A field whose null means "the card did not have it" (Card V3's optional fields)."""
    return lambda loc: None if loc.kind == "scalar" and loc.value is None else convert(loc)


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
                "memory_k": lambda v: b.number(v, True, 0),
                "memory_budget_tokens": lambda v: b.number(v, True, 0),
                "memory_threshold": _optional(lambda v: b.number(v, False, -1.0, 1.0)),
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
        "memory": b.boolean,
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
        # Card V3
        "nickname": b.optional_string,
        "creator_notes_multilingual": _optional(lambda v: _string_map(b, v)),
        "source": _optional(b.strings),
        "group_only_greetings": b.strings,
        "creation_date": _optional(lambda v: b.number(v, False, 0)),
        "modification_date": _optional(lambda v: b.number(v, False, 0)),
        "assets": _optional(lambda v: b.seq(v, lambda a: _asset(b, a), "a list of assets")),
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
    tag = "nickname" if d.get("nickname") else "name"
    if "bot_speaker" not in d and _SPEAKER_BREAKERS.search(d[tag]):
        b.error(_find(root, [tag]) or root, f"the {tag} is the bot's speaker tag unless `bot_speaker` is set, and "
                                            f"{d[tag]!r} would break the speaker format: set bot_speaker")
        return None
    return Persona(**d)


# ---------------------------------------------------------------------------------------------------------------
# YAML in


class _Loader(safe_yaml.SafeLoader):
    max_depth = MAX_DEPTH


def _parse_yaml(text: str, file: str, b: _Builder) -> _Loc | None:
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            b.issues.append(PersonaIssue(file, 1, 1, "empty file: a persona needs at least `name:`"))
            return None
        return _from_node(node, loader, "")
    except safe_yaml.RecursiveAliasError:
        b.issues.append(PersonaIssue(file, 1, 1, "YAML: a recursive alias (an anchor that contains itself)"))
        return None
    except safe_yaml.YAMLBoundsError as exc:
        mark = exc.problem_mark
        b.issues.append(PersonaIssue(file, mark.line + 1, mark.column + 1, f"YAML refused: {exc.problem}"))
        return None
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


def _find(loc: _Loc | None, keys: list[str]) -> _Loc | None:
    for key in keys:
        if loc is None or loc.kind != "map":
            return None
        loc = next((v for k, v in loc.value if k.value == key), None)
    return loc


def check_generation(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """`values` checked as a persona's `generation` mapping (known keys, types, ranges): a bot's
    ``options.generation`` or a command-line override is held to the persona file's rules. PersonaError otherwise."""
    b = _Builder(source)
    checked = b.mapping(_from_obj(dict(values), "generation"), _generation_spec(b))
    if checked is _BAD or not isinstance(checked, dict):
        raise PersonaError(b.issues)
    return checked
