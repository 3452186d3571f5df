"""Character Card V2 round trips, JSON and PNG, both directions, without loss."""

from __future__ import annotations

import base64
import copy
import json

import pytest

from xdai.config import REPO_ROOT
from xdai.persona import (
    ExampleLine,
    Persona,
    PersonaError,
    card_to_png,
    dump_persona_yaml,
    import_card,
    load_persona,
    parse_examples,
    parse_persona,
    placeholder_png,
    png_bytes,
    png_chunks,
    read_card,
    render_examples,
)

SHIPPED = ("xiaodai", "lin_meimei", "zhen_huan", "wukong")


def foreign_card() -> dict:
    """A card as a SillyTavern-like editor writes it: V1 mirror fields, fields xdai does not know at every level,
    an English text, and a mes_example whose string form is not the canonical one."""
    data = {
        "name": "Aqua",
        "description": "{{char}} is a cheerful water goddess who loves parties.",
        "personality": "cheerful, vain, kind-hearted",
        "scenario": "{{user}} meets {{char}} at the guild hall.",
        "first_mes": "Hi {{user}}! I'm the goddess Aqua. Worship me!",
        "mes_example": "<START>\n{{user}}:Who are you?\n{{char}}: The goddess Aqua, of course!\n"
                       "She strikes a pose.\n\n<START>\n{{user}}: Can you heal?\n{{char}}: Naturally!",
        "creator_notes": "Best with a high temperature.",
        "system_prompt": "",
        "post_history_instructions": "Stay in character.",
        "alternate_greetings": ["Oh, a new believer!"],
        "character_book": {
            "name": "Axel",
            "scan_depth": 2,
            "extensions": {"world": "konosuba"},
            "entries": [
                {"keys": ["Axel"], "content": "Axel is a town of beginner adventurers.", "extensions":
                 {"position": 0, "exclude_recursion": False}, "enabled": True, "insertion_order": 100,
                 "id": 0, "comment": "town", "use_regex": False, "selective": False, "constant": False},
                {"keys": ["party"], "content": "Aqua's party: Kazuma, Megumin, Darkness.", "extensions": {},
                 "enabled": False, "insertion_order": 90, "case_sensitive": True, "priority": 3,
                 "secondary_keys": [], "position": "after_char"},
            ],
            "recursive_scanning": False,
        },
        "tags": ["goddess", "comedy"],
        "creator": "someone",
        "character_version": "2",
        "extensions": {"talkativeness": "0.5", "fav": False, "depth_prompt": {"prompt": "", "depth": 4}},
        "group_only_greetings": [],
    }
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}
    card.update({k: data[k] for k in ("name", "description", "personality", "scenario", "first_mes",
                                      "mes_example")})
    card.update({"avatar": "none", "create_date": "2024-5-1 @12h 00m 00s 000ms", "creatorcomment": "x"})
    return card


@pytest.mark.parametrize("name", SHIPPED)
def test_yaml_card_yaml_is_lossless(name: str) -> None:
    p = load_persona(name, REPO_ROOT / "personas")
    card = json.loads(json.dumps(p.to_card_v2()))
    assert card["spec"] == "chara_card_v2" and card["spec_version"] == "2.0"
    assert card["data"]["creator_notes"] == p.creator_notes
    assert card["data"]["extensions"]["xdai"]["conditions"] == p.conditions
    back = Persona.from_card_v2(card)
    assert back == p
    assert back.to_card_v2() == card
    reread, issues = parse_persona(dump_persona_yaml(back))
    assert issues == [] and reread == p


def test_card_yaml_card_is_lossless_with_unknown_fields_everywhere() -> None:
    card = foreign_card()
    p = Persona.from_card_v2(copy.deepcopy(card))
    assert p.language == "en" and p.user_speaker == "User" and p.bot_speaker == "Aqua"
    assert p.extensions == card["data"]["extensions"]  # unknown extension keys preserved
    assert p.character_book.entries[0].card_extra == {"use_regex": False}
    assert p.mes_example == [
        [ExampleLine("user", "Who are you?"),
         ExampleLine("bot", "The goddess Aqua, of course!\nShe strikes a pose.")],
        [ExampleLine("user", "Can you heal?"), ExampleLine("bot", "Naturally!")],
    ]
    assert p.greeting() == "Hi User! I'm the goddess Aqua. Worship me!"
    assert p.to_card_v2() == card
    yaml_text = dump_persona_yaml(p)
    reread, issues = parse_persona(yaml_text)
    assert issues == [] and reread == p
    assert reread.to_card_v2() == card


def test_edited_examples_win_over_the_kept_raw_string() -> None:
    p = Persona.from_card_v2(foreign_card())
    p.mes_example[1][1].text = "Of course I can!"
    assert p.to_card_v2()["data"]["mes_example"].endswith("{{char}}: Of course I can!")


def test_examples_the_string_form_cannot_hold_travel_structured() -> None:
    p = Persona(name="x", mes_example=[[ExampleLine("user", "a\n{{char}}: b"), ExampleLine("bot", " c ")]])
    card = p.to_card_v2()
    assert card["data"]["mes_example"] == "<START>\n{{user}}: a\n{{char}}: b\n{{char}}:  c "
    assert card["data"]["extensions"]["xdai"]["mes_example"] == [[{"user": "a\n{{char}}: b"}, {"bot": " c "}]]
    assert Persona.from_card_v2(card) == p


def test_string_form_round_trip() -> None:
    text = "<START>\n{{user}}: 你好\n{{char}}: 你好呀！\n第二行\n<START>\n{{user}}: hi\n{{char}}: hey"
    examples, orphans = parse_examples(text)
    assert orphans == 0 and examples[0][1] == ExampleLine("bot", "你好呀！\n第二行")
    assert render_examples(examples) == text
    assert parse_examples("Narration only\n<START>\n{{user}}: a")[1] == 1


def test_png_round_trip_keeps_the_image_and_its_chunks(tmp_path) -> None:
    p = load_persona("xiaodai", REPO_ROOT / "personas")
    card = p.to_card_v2()
    png = card_to_png(card)
    path = tmp_path / "xiaodai.png"
    path.write_bytes(png)
    assert read_card(path) == card
    assert import_card(path) == p
    # a real image with its own text chunk and an older card: the image survives, the card is replaced
    chunks = png_chunks(png)
    old = (b"tEXt", b"chara\0" + base64.b64encode(b'{"spec": "old"}'))
    image = dict(chunks)
    with_extra = png_bytes([chunks[0], (b"tEXt", b"Comment\0hello"), old, *chunks[1:]])
    again = card_to_png(foreign_card(), with_extra)
    kinds = [(k, v.split(b"\0")[0]) for k, v in png_chunks(again)]
    assert kinds.count((b"tEXt", b"chara")) == 1 and (b"tEXt", b"Comment") in kinds
    assert dict(png_chunks(again))[b"IDAT"] == image[b"IDAT"]
    (tmp_path / "aqua.png").write_bytes(again)
    assert read_card(tmp_path / "aqua.png") == foreign_card()


def test_png_without_a_card_or_broken_is_a_clear_error(tmp_path) -> None:
    plain = tmp_path / "plain.png"
    plain.write_bytes(placeholder_png("x"))
    with pytest.raises(PersonaError, match="no `chara` text chunk"):
        read_card(plain)
    broken = bytearray(placeholder_png("x"))
    broken[30] ^= 0xFF
    (tmp_path / "broken.png").write_bytes(bytes(broken))
    with pytest.raises(PersonaError, match="bad CRC"):
        read_card(tmp_path / "broken.png")


def test_bad_cards_name_the_field(tmp_path) -> None:
    card = foreign_card()
    card["data"]["tags"] = "goddess"
    card["data"]["extensions"]["xdai"] = {"selection": {"alpha": 3}, "mood": 1}
    with pytest.raises(PersonaError) as err:
        Persona.from_card_v2(card, source="aqua.json")
    assert [str(i) for i in err.value.issues] == [
        "aqua.json: data.extensions.xdai: unknown key 'mood' (known: language, bot_speaker, user_speaker, "
        "knowledge, selection, conditions, generation, safety, memory)",
        "aqua.json: data.tags: expected a list of strings, got the string 'goddess'",
        "aqua.json: data.extensions.xdai.selection.alpha: expected a number from 0.0 to 1.0, got a number (3)",
    ]
    with pytest.raises(PersonaError, match="spec: expected 'chara_card_v2', got 'chara_card_v3'"):
        Persona.from_card_v2({"spec": "chara_card_v3", "data": {}})
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"spec": "chara_card_v2",\n  "data": {,}}')
    with pytest.raises(PersonaError, match=r"bad.json:2:12: JSON: Expecting property name"):
        read_card(bad_json)


def test_v1_card_is_upgraded() -> None:
    p = Persona.from_card_v2({"name": "Bob", "description": "A grumpy baker.", "personality": "", "scenario": "",
                              "first_mes": "What do you want?", "mes_example": ""})
    card = p.to_card_v2()
    assert card["spec"] == "chara_card_v2" and card["data"]["name"] == "Bob" and card["data"]["extensions"] == {}


def test_cli_export_import_round_trip(cli, tmp_path) -> None:
    src = REPO_ROOT / "personas" / "zhen_huan.yaml"
    out_json, out_png = tmp_path / "zh.json", tmp_path / "zh.png"
    r1 = cli("export", str(src), "--format", "card-v2", "--out", str(out_json))
    r2 = cli("export", str(src), "--format", "card-v2", "--png", "--out", str(out_png))
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    assert json.loads(out_json.read_text()) == read_card(out_png)
    r3 = cli("import", str(out_png), "--out", str(tmp_path / "zh.yaml"))
    assert r3.exit_code == 0, r3.output
    assert r3.output.startswith(f"imported '甄嬛' from {out_png} -> {tmp_path / 'zh.yaml'} (3 examples, 4 lore")
    assert load_persona(tmp_path / "zh.yaml") == load_persona(src)
    refused = cli("import", str(out_png), "--out", str(tmp_path / "zh.yaml"))
    assert refused.exit_code != 0 and "exists: pass --force" in refused.output
    aqua = tmp_path / "aqua.json"
    aqua.write_text(json.dumps(foreign_card()))
    r4 = cli("import", str(aqua))
    assert r4.exit_code == 0 and (tmp_path / "aqua.yaml").is_file()
    r5 = cli("export", str(tmp_path / "aqua.yaml"), "--out", str(tmp_path / "aqua2.json"))
    assert r5.exit_code == 0
    assert json.loads((tmp_path / "aqua2.json").read_text()) == foreign_card()
