"""Personas: the YAML format authors write, checked with file:line:col marks, and Character Cards V2/V3 in and out.

    schema   the dataclasses (Persona = Card V3 one-to-one plus the XDAI fields), PersonaIssue/PersonaError
    parse    YAML in, every problem at its file:line:col (a card's JSON goes through the same builder)
    dump     YAML out
    card     Character Card V2 and V3 <-> Persona, both directions without loss; card files (JSON, PNG, CHARX)
    png      PNG chunks and the card's text chunk, read with bounds
    charx    the CHARX zip (card.json and embedded assets), read with bounds
    assets   a persona's files beside it (NAME.assets/): a CHARX's members, a PNG card's image
    limits   bounds on file sizes, inflated text and JSON nesting
    lookup   persona files and stores on disk (directories passed in by the entry points)
"""

from xdai.persona.assets import asset_files, card_image, missing_assets, write_assets
from xdai.persona.card import (
    CARD_SPEC,
    CARD_SPEC_V3,
    CARD_SPEC_VERSION,
    CARD_SPEC_VERSION_V3,
    CardFile,
    card_v3_png,
    card_version,
    import_card,
    load_card,
    parse_examples,
    read_card,
    render_examples,
)
from xdai.persona.charx import read_charx, write_charx
from xdai.persona.dump import dump_persona_yaml, persona_to_dict
from xdai.persona.limits import DEFAULT_LIMITS, PersonaLimits
from xdai.persona.lookup import (
    check_persona_file,
    find_persona_file,
    load_persona,
    persona_files,
    resolve_store,
)
from xdai.persona.parse import check_generation, parse_persona
from xdai.persona.png import card_to_png, placeholder_png, png_bytes, png_chunks
from xdai.persona.schema import (
    AND_ALL,
    AND_ANY,
    NOT_ALL,
    NOT_ANY,
    QA,
    RERANK_DEFAULTS,
    XDAI_EXTENSION,
    Asset,
    BookEntry,
    CharacterBook,
    Example,
    ExampleLine,
    KnowledgeSpec,
    Persona,
    PersonaError,
    PersonaIssue,
    Position,
    SafetySpec,
    SelectionSpec,
    Speaker,
    default_user_speaker,
)

__all__ = [
    "DEFAULT_LIMITS", "PersonaLimits", "Asset", "CARD_SPEC_V3", "CARD_SPEC_VERSION_V3", "CardFile", "asset_files",
    "card_image", "card_v3_png", "card_version", "load_card", "missing_assets", "read_charx", "write_assets",
    "write_charx",
    "AND_ALL", "AND_ANY", "CARD_SPEC", "CARD_SPEC_VERSION", "NOT_ALL", "NOT_ANY", "QA", "RERANK_DEFAULTS",
    "XDAI_EXTENSION", "BookEntry", "CharacterBook", "Example", "ExampleLine", "KnowledgeSpec", "Persona",
    "PersonaError", "PersonaIssue", "Position", "SafetySpec", "SelectionSpec", "Speaker", "card_to_png",
    "check_generation", "check_persona_file", "default_user_speaker", "dump_persona_yaml", "find_persona_file",
    "import_card", "load_persona", "parse_examples", "parse_persona", "persona_files", "persona_to_dict",
    "placeholder_png", "png_bytes", "png_chunks", "read_card", "render_examples", "resolve_store",
]
