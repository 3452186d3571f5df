"""Character Card V3 and CHARX (issue 15 section 2): cards written by hand from the V3 spec (kwaroran's
character-card-spec-v3), not by our exporter, read as JSON, PNG (`ccv3` chunk) and CHARX (zip with card.json and
embeded:// assets); round trips card -> persona -> YAML -> card are lossless; V2 keeps working beside it."""

from __future__ import annotations

import base64
import copy
import io
import json
import zipfile
from pathlib import Path

import pytest

from xdai.config import REPO_ROOT
from xdai.persona import (
    Asset,
    Persona,
    PersonaError,
    dump_persona_yaml,
    import_card,
    load_card,
    load_persona,
    parse_persona,
    placeholder_png,
    png_bytes,
    png_chunks,
    read_card,
)

ICON = placeholder_png("Seraphina", size=16)
FOREST = b"RIFF\x1a\x00\x00\x00WEBPVP8 fake forest background"
HAPPY = placeholder_png("happy", size=8)


def spec_card() -> dict:
    """A Card V3 as the spec lays it out: every V3 field, assets of each kind (embedded, ccdefault:, a URL, an
    x_-prefixed type with an unknown key), a lorebook with a regex entry, a decorator, a string id and fields
    the spec does not know, and unknown keys at the card and data level (kept for export, as the spec asks)."""
    return {
        "spec": "chara_card_v3",
        "spec_version": "3.0",
        "data": {
            "name": "Seraphina",
            "description": "{{char}} guards the Eldertree forest and heals travellers who lose their way.",
            "tags": ["fantasy", "guardian"],
            "creator": "a forest writer",
            "character_version": "1.2",
            "mes_example": "<START>\n{{user}}: Where am I?\n{{char}}: In my glade, safe from the wolves.",
            "extensions": {"talkativeness": "0.6", "depth_prompt": {"prompt": "Stay gentle.", "depth": 4},
                           "risuai": {"utilityBot": False}},
            "system_prompt": "",
            "post_history_instructions": "Never break character.",
            "first_mes": "*{{char}} kneels beside you.* Rest, {{user}}. You are safe here.",
            "alternate_greetings": ["*A soft light wakes you.* Hello again, {{user}}."],
            "personality": "kind, protective, calm",
            "scenario": "{{user}} wakes up in {{char}}'s glade after a wolf attack.",
            "creator_notes": "Works best with a gentle tone.",
            "character_book": {
                "name": "Eldertree",
                "description": "The forest and its dangers.",
                "scan_depth": 4,
                "token_budget": 400,
                "recursive_scanning": False,
                "extensions": {},
                "entries": [
                    {"keys": ["glade", "clearing"], "content": "@@depth 3\nThe glade is hidden by old magic.",
                     "extensions": {}, "enabled": True, "insertion_order": 10, "case_sensitive": False,
                     "use_regex": False, "constant": False, "name": "glade", "priority": 5, "id": 1,
                     "comment": "the place", "selective": False, "secondary_keys": [], "position": "before_char"},
                    {"keys": ["\\bwol(f|ves)\\b"], "content": "Shadow wolves hunt at dusk.", "extensions": {},
                     "enabled": True, "insertion_order": 20, "use_regex": True, "id": "wolves",
                     "x_probability": 80},
                ],
                "x_book_flag": True,
            },
            "assets": [
                {"type": "icon", "uri": "embeded://assets/icon/images/main.png", "name": "main", "ext": "png"},
                {"type": "icon", "uri": "ccdefault:", "name": "portrait", "ext": "png"},
                {"type": "background", "uri": "embeded://assets/background/images/forest.webp", "name": "main",
                 "ext": "webp"},
                {"type": "emotion", "uri": "embeded://assets/emotion/images/happy.png", "name": "happy",
                 "ext": "png"},
                {"type": "x_bgm", "uri": "https://example.com/forest.mp3", "name": "theme", "ext": "mp3",
                 "x_loop": True},
            ],
            "nickname": "Sera",
            "creator_notes_multilingual": {"en": "Works best with a gentle tone.", "fr": "Un ton doux convient."},
            "source": ["https://example.com/cards/seraphina", "forest-archive:1234"],
            "group_only_greetings": ["*Seraphina nods to each of you in turn.*"],
            "creation_date": 1700000000,
            "modification_date": 1710000000.5,
            "x_future_field": {"anything": [1, 2]},
        },
        "x_exporter": "hand-written",
    }


def charx_bytes(card: dict, extra: dict[str, bytes] | None = None) -> bytes:
    """A CHARX as the spec describes it, written with zipfile directly: card.json at the root, the embedded
    assets under assets/{type}/images/, and an application's own JSON at the root."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("card.json", json.dumps(card))
        z.writestr("assets/icon/images/main.png", ICON)
        z.writestr("assets/background/images/forest.webp", FOREST)
        z.writestr("assets/emotion/images/happy.png", HAPPY)
        z.writestr("x_app_settings.json", b'{"theme": "dark"}')
        for name, blob in (extra or {}).items():
            z.writestr(name, blob)
    return buffer.getvalue()


def png_with(*texts: tuple[bytes, dict]) -> bytes:
    """A PNG with each (keyword, card) as a tEXt chunk of base64(UTF-8 JSON), as the spec says."""
    image = png_chunks(ICON)
    chunks = [(b"tEXt", keyword + b"\0" + base64.b64encode(json.dumps(card, ensure_ascii=False).encode("utf-8")))
              for keyword, card in texts]
    return png_bytes([image[0], *chunks, *image[1:]])


def test_v3_card_persona_yaml_card_is_lossless() -> None:
    card = spec_card()
    p = Persona.from_card(copy.deepcopy(card), source="sera.json")
    assert p.to_card_v3() == card
    reread, issues = parse_persona(dump_persona_yaml(p))
    assert issues == [] and reread == p
    assert reread.to_card_v3() == card


def test_v3_fields_mean_what_the_spec_says() -> None:
    p = Persona.from_card(spec_card())
    assert p.language == "en" and p.nickname == "Sera"
    assert p.bot_speaker == "Sera" and p.greeting().endswith("Rest, User. You are safe here.")  # {{char}}: nickname
    assert p.fill_macros("{{char}} smiles") == "Sera smiles"
    assert p.assets[0] == Asset("icon", "embeded://assets/icon/images/main.png", "main", "png")
    assert p.assets[0].embedded_path == "assets/icon/images/main.png" and p.assets[1].embedded_path is None
    assert p.assets[4].card_extra == {"x_loop": True}
    assert p.creator_notes_multilingual == {"en": "Works best with a gentle tone.", "fr": "Un ton doux convient."}
    assert p.source == ["https://example.com/cards/seraphina", "forest-archive:1234"]
    assert p.group_only_greetings == ["*Seraphina nods to each of you in turn.*"]
    assert (p.creation_date, p.modification_date) == (1700000000, 1710000000.5)
    glade, wolves = p.character_book.entries
    assert not glade.use_regex and wolves.use_regex and wolves.id == "wolves"
    assert wolves.card_extra == {"x_probability": 80} and p.character_book.card_extra == {"x_book_flag": True}
    assert p.card_extra == {"card": {"x_exporter": "hand-written"}, "data": {"x_future_field": {"anything": [1, 2]}}}
    assert p.extensions["risuai"] == {"utilityBot": False}


def test_v3_to_v2_to_v3_keeps_the_card() -> None:
    """A V2 export carries the V3 fields as extra data keys (V2 readers ignore them; ours keeps them)."""
    card = spec_card()
    v2 = Persona.from_card(copy.deepcopy(card)).to_card_v2()
    assert v2["spec"] == "chara_card_v2" and v2["data"]["nickname"] == "Sera"
    back = Persona.from_card_v2(copy.deepcopy(v2))
    assert back.to_card_v2() == v2
    assert back.to_card_v3() == card


@pytest.mark.parametrize("name", ["xiaodai", "lin_meimei", "zhen_huan", "wukong"])
def test_shipped_personas_round_trip_through_v3(name: str) -> None:
    p = load_persona(name, REPO_ROOT / "personas")
    card = json.loads(json.dumps(p.to_card_v3()))
    assert card["spec"] == "chara_card_v3" and card["spec_version"] == "3.0"
    assert card["data"]["group_only_greetings"] == []
    assert all("use_regex" in e for e in (card["data"].get("character_book") or {"entries": []})["entries"])
    back = Persona.from_card(card)
    assert back == p and back.to_card_v3() == card


def test_v3_png_uses_ccv3_over_a_stale_chara(tmp_path: Path) -> None:
    stale = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Old Seraphina"}}
    path = tmp_path / "sera.png"
    path.write_bytes(png_with((b"chara", stale), (b"ccv3", spec_card())))
    loaded = load_card(path)
    assert loaded.container == "png" and loaded.version == 3 and loaded.card == spec_card()
    assert png_chunks(loaded.image) == png_chunks(ICON)  # the image, card chunks removed
    assert import_card(path) == Persona.from_card(spec_card())
    only_v3 = tmp_path / "v3.png"
    only_v3.write_bytes(png_with((b"ccv3", spec_card())))
    assert read_card(only_v3) == spec_card()


def test_charx_import_stores_assets_and_export_gives_them_back(tmp_path: Path, cli) -> None:
    card = spec_card()
    src = tmp_path / "sera.charx"
    src.write_bytes(charx_bytes(card))
    out = tmp_path / "personas" / "sera.yaml"
    out.parent.mkdir()
    result = cli("import", str(src), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"(1 examples, 2 lore entries, language en; Card V3 CHARX, 4 file(s) in "
                                          f"{tmp_path / 'personas' / 'sera.assets'})")
    assets = tmp_path / "personas" / "sera.assets"
    assert (assets / "assets/icon/images/main.png").read_bytes() == ICON
    assert (assets / "assets/background/images/forest.webp").read_bytes() == FOREST
    assert (assets / "x_app_settings.json").read_bytes() == b'{"theme": "dark"}'
    persona = load_persona(out)
    assert persona == Persona.from_card(card) and persona.assets_dir == assets

    exported = tmp_path / "again.charx"
    r = cli("export", str(out), "--format", "card-v3", "--charx", "--out", str(exported))
    assert r.exit_code == 0, r.output
    with zipfile.ZipFile(exported) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    assert json.loads(members.pop("card.json")) == card
    with zipfile.ZipFile(src) as z:
        original = {i.filename: z.read(i) for i in z.infolist() if i.filename != "card.json"}
    assert members == original
    assert load_card(exported).card == card  # and it reads back

    as_json, as_png = tmp_path / "sera.v3.json", tmp_path / "sera.v3.png"
    assert cli("export", str(out), "--format", "card-v3", "--out", str(as_json)).exit_code == 0
    assert json.loads(as_json.read_text()) == card
    r = cli("export", str(out), "--format", "card-v3", "--png", "--out", str(as_png))
    assert r.exit_code == 0 and "3 embedded asset(s) do not travel in a PNG" in r.output
    texts = {body.split(b"\0")[0]: json.loads(base64.b64decode(body.split(b"\0", 1)[1]))
             for kind, body in png_chunks(as_png.read_bytes()) if kind == b"tEXt"}
    assert texts[b"ccv3"] == card
    assert texts[b"chara"]["spec"] == "chara_card_v2" and texts[b"chara"]["data"]["name"] == "Seraphina"
    assert texts[b"chara"]["data"]["creator_notes"].startswith("[This PNG also holds the card as Character Card V3")
    assert read_card(as_png) == card


def test_png_import_keeps_the_image_for_the_next_png_export(tmp_path: Path, cli) -> None:
    src = tmp_path / "sera.png"
    src.write_bytes(png_with((b"ccv3", spec_card())))
    out = tmp_path / "sera.yaml"
    r = cli("import", str(src), "--out", str(out))
    assert r.exit_code == 0 and "Card V3 PNG" in r.output
    assert (tmp_path / "sera.assets" / "ccdefault.png").read_bytes() == ICON
    again = tmp_path / "again.png"
    assert cli("export", str(out), "--format", "card-v3", "--png", "--out", str(again)).exit_code == 0
    image = [c for c in png_chunks(again.read_bytes()) if c[0] != b"tEXt"]
    assert image == png_chunks(ICON)  # the card's own picture, not a generated avatar
    refused = cli("import", str(src), "--out", str(out))
    assert refused.exit_code == 1 and "exists: pass --force" in refused.output


def test_v2_cards_keep_working_and_v2_export_refuses_charx(tmp_path: Path, cli) -> None:
    with pytest.raises(PersonaError, match="spec: expected 'chara_card_v2', got 'chara_card_v3'"):
        Persona.from_card_v2(spec_card())
    with pytest.raises(PersonaError, match="spec: expected 'chara_card_v2' or 'chara_card_v3', got 'chara_card_v9'"):
        Persona.from_card({"spec": "chara_card_v9", "data": {}})
    r = cli("export", str(REPO_ROOT / "personas" / "wukong.yaml"), "--charx", "--out", str(tmp_path / "w.charx"))
    assert r.exit_code == 2 and "--charx writes a Card V3 zip" in r.output


BAD_CHARX = {
    "no_card": ({"assets/icon/images/main.png": ICON}, None, "CHARX: no card.json at the root of the archive"),
    "zip_slip": ({"card.json": b"{}", "../evil.png": ICON}, None,
                 "CHARX: member '../evil.png': not a relative path inside the archive"),
    "absolute": ({"card.json": b"{}", "/etc/evil": ICON}, None, "CHARX: member '/etc/evil': not a relative path"),
    "backslash": ({"card.json": b"{}", "assets\\..\\x.png": ICON}, None, "not a relative path inside the archive"),
    "deep_json": ({"card.json": b"[" * 100_000 + b"]" * 100_000}, None,
                  "CHARX member 'card.json': JSON nested deeper than 64 levels"),
    "bad_json": ({"card.json": b'{"spec": '}, None, "CHARX member 'card.json': JSON: Expecting value at 1:10"),
    "big_asset": ({"card.json": b"{}", "assets/other/big.bin": b"\0" * 5000}, 1000,
                  "CHARX: member 'assets/other/big.bin': 5,000 bytes uncompressed, over the 1,000-byte limit"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHARX))
def test_bad_charx_files_are_errors_naming_the_member(tmp_path: Path, case: str) -> None:
    from xdai.persona import PersonaLimits

    members, asset_bytes, expected = BAD_CHARX[case]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, blob in members.items():
            z.writestr(zipfile.ZipInfo(name), blob)
    path = tmp_path / f"{case}.charx"
    path.write_bytes(buffer.getvalue())
    limits = PersonaLimits(asset_bytes=asset_bytes) if asset_bytes else PersonaLimits()
    with pytest.raises(PersonaError) as err:
        load_card(path, limits)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)


def test_encrypted_and_broken_zips_are_refused(tmp_path: Path) -> None:
    data = bytearray(charx_bytes(spec_card()))
    path = tmp_path / "broken.charx"
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(PersonaError, match=r"broken.charx: CHARX: not a readable zip file"):
        load_card(path)
    # set the "encrypted" flag of card.json in both its local and its central header
    for header in (b"PK\x03\x04", b"PK\x01\x02"):
        at = data.find(header)
        flag = at + (6 if header == b"PK\x03\x04" else 8)
        data[flag] |= 1
    path.write_bytes(bytes(data))
    with pytest.raises(PersonaError, match="CHARX: member 'card.json' is encrypted"):
        load_card(path)


def test_bad_assets_are_reported_by_field() -> None:
    card = spec_card()
    card["data"]["assets"][0]["uri"] = "embeded://../../etc/passwd"
    card["data"]["assets"][2] = {"uri": "embeded://x.png"}
    with pytest.raises(PersonaError) as err:
        Persona.from_card(card, source="sera.json")
    assert [str(i) for i in err.value.issues] == [
        "sera.json: data.assets[0].uri: an embedded asset is a relative path inside the card, like "
        "embeded://assets/icon/images/main.png; got 'embeded://../../etc/passwd'",
        "sera.json: data.assets[2]: missing required key 'type'",
    ]


def test_persona_check_warns_about_an_embedded_asset_without_its_file(write_yaml) -> None:
    from xdai.persona import check_persona_file

    path = write_yaml("""
        name: Sera
        assets:
          - {type: icon, uri: "embeded://assets/icon/images/main.png", name: main, ext: png}
          - {type: icon, uri: "ccdefault:", name: alt}
        """, "sera.yaml")
    folder = path.with_name("sera.assets")
    assert [str(i) for i in check_persona_file(path)] == [
        f"{path}:3:23: warning: assets[0].uri: no file 'assets/icon/images/main.png' in {folder}"]
    (folder / "assets/icon/images").mkdir(parents=True)
    (folder / "assets/icon/images/main.png").write_bytes(ICON)
    assert check_persona_file(path) == []
