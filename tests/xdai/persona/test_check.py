"""`check_persona_file` / `xdai persona check`: every problem, each at its exact file:line:col."""

from __future__ import annotations

import pytest

from xdai.persona import PersonaError, check_persona_file, load_persona


def messages(path) -> list[str]:
    return [str(i) for i in check_persona_file(path)]


def test_every_error_reported_with_its_mark(write_yaml) -> None:
    path = write_yaml(
        """
        name: 测试
        persnality: 爱笑
        selection:
          alpha: 1.5
          histroy_pairs: 3
        generation:
          temprature: 0.7
          max_tokens: many
        conditions:
          angry: ""
        character_version: 1.0
        """
    )
    assert messages(path) == [
        f"{path}:2:1: unknown key 'persnality' (did you mean 'personality'?); put custom data under `extensions`",
        f"{path}:4:10: selection.alpha: expected a number from 0.0 to 1.0, got a number (1.5)",
        f"{path}:5:3: selection: unknown key 'histroy_pairs' (did you mean 'history_pairs'?)",
        f"{path}:7:3: generation: unknown key 'temprature' (did you mean 'temperature'?)",
        f"{path}:8:15: generation.max_tokens: expected an integer >= 1, got the string 'many'",
        f"{path}:10:10: conditions.angry: must not be empty",
        f"{path}:11:20: character_version: expected a string, got a number (1.0) (quote it)",
    ]


def test_yaml_syntax_error_keeps_the_marks(write_yaml) -> None:
    path = write_yaml('name: 小呆\ndescription: "never closed\nfirst_mes: hi\n')
    assert messages(path) == [
        f"{path}:4:1: YAML syntax: while scanning a quoted scalar (from 2:14) found unexpected end of stream"]
    tab = write_yaml("name: x\nselection:\n\talpha: 0.5\n", "tab.yaml")
    (issue,) = check_persona_file(tab)
    assert (issue.line, issue.col) == (3, 1) and "YAML syntax" in issue.message and "tab" in issue.message


def test_structure_errors(write_yaml) -> None:
    path = write_yaml(
        """
        description: no name here
        description: twice
        mes_example:
          - - user: hi
            - char: hello
          - just a string
        extensions:
          xdai: {language: en}
        knowledge:
          qa:
            - q: only a question
        character_book:
          entries:
            - keys: [a]
              content: b
              position: middle
              selective: yes please
        """
    )
    assert messages(path) == [
        f"{path}:2:1: duplicate key 'description'",
        f"{path}:5:7: mes_example[0][1]: expected one of user, bot, got the string 'char'",
        f"{path}:6:5: mes_example[1]: expected a list of lines, got the string 'just a string'",
        f"{path}:8:3: extensions: `extensions.xdai` is reserved for export: write XDAI fields at the top level",
        f"{path}:11:7: knowledge.qa[0]: missing required key 'a'",
        f"{path}:16:17: character_book.entries[0].position: expected one of before_char, after_char, "
        "got the string 'middle'",
        f"{path}:17:18: character_book.entries[0].selective: expected true or false, got the string 'yes please'",
        f"{path}:1:1: missing required key 'name'",
    ]


def test_top_level_must_be_a_mapping_and_file_not_empty(write_yaml) -> None:
    listed = write_yaml("- a\n- b\n")
    assert messages(listed) == [
        f"{listed}:1:1: a persona is a mapping of fields (name: ..., description: ...), got a list"]
    empty = write_yaml("# nothing\n", "empty.yaml")
    assert messages(empty) == [f"{empty}:1:1: empty file: a persona needs at least `name:`"]


def test_unknown_keys_are_fine_under_extensions(write_yaml) -> None:
    path = write_yaml(
        """
        name: x
        extensions:
          my_frontend: {depth_prompt: {prompt: hi, depth: 4}, fav: true}
          talkativeness: "0.5"
        """
    )
    assert check_persona_file(path) == []
    assert load_persona(path).extensions == {
        "my_frontend": {"depth_prompt": {"prompt": "hi", "depth": 4}, "fav": True}, "talkativeness": "0.5"}
    dup = write_yaml("name: x\nextensions:\n  a: 1\n  a: 2\n  3: c\n", "dup.yaml")
    assert messages(dup) == [f"{dup}:4:3: extensions: duplicate key 'a'",
                             f"{dup}:5:3: extensions: keys must be strings (JSON objects), got a number (3)"]


def test_missing_store_is_a_warning_at_its_mark(write_yaml, tmp_path) -> None:
    (tmp_path / "here").mkdir()
    path = write_yaml(
        """
        name: x
        knowledge:
          stores: [here, nowhere/at/all]
        """
    )
    (issue,) = check_persona_file(path)
    assert issue.severity == "warning" and (issue.line, issue.col) == (3, 18)
    assert str(issue).startswith(f"{path}:3:18: warning: knowledge.stores[1]: store 'nowhere/at/all' does not exist")
    assert load_persona(path).knowledge.stores == ["here", "nowhere/at/all"]  # a warning does not stop loading


def test_load_persona_raises_with_every_issue(write_yaml, tmp_path) -> None:
    path = write_yaml("name: x\nlanguage: fr\nsafety: {blocked: [a]}\n")
    with pytest.raises(PersonaError) as err:
        load_persona(path)
    assert [(i.line, i.col) for i in err.value.issues] == [(2, 11), (3, 10)]
    assert str(err.value).splitlines()[0] == f"{path}:2:11: language: expected one of zh, en, got the string 'fr'"
    with pytest.raises(PersonaError, match=r"no persona 'ghost' \(known: p\)"):
        load_persona("ghost", tmp_path)


def test_cli_check_fails_with_every_error_and_a_summary(cli, write_yaml) -> None:
    bad = write_yaml("name: x\nselection: {alpha: high}\nfoo: 1\n", "bad.yaml")
    good = write_yaml("name: y\n", "good.yaml")
    result = cli("check", str(good), str(bad))
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{bad}:2:20: selection.alpha: expected a number from 0.0 to 1.0, got the string 'high'",
        f"{bad}:3:1: unknown key 'foo' (known: name, description, personality, scenario, first_mes, "
        "alternate_greetings, mes_example, system_prompt, post_history_instructions, creator_notes, tags, creator, "
        "character_version, extensions, character_book, nickname, creator_notes_multilingual, source, "
        "group_only_greetings, creation_date, modification_date, assets, language, bot_speaker, user_speaker, "
        "knowledge, selection, conditions, generation, safety, memory, card_extra); put custom data under `extensions`",
        "persona check: 2 files, 2 errors, 0 warnings: FAILED",
    ]


def test_speaker_names_cannot_break_the_speaker_format(write_yaml) -> None:
    path = write_yaml('name: x\nuser_speaker: "User: hi"\nbot_speaker: "a\\nb"\n')
    assert messages(path) == [
        f"{path}:2:15: user_speaker: a speaker name is one non-empty line without colons, brackets or control "
        "characters, got 'User: hi'",
        f"{path}:3:14: bot_speaker: a speaker name is one non-empty line without colons, brackets or control "
        "characters, got 'a\\nb'",
    ]
    named = write_yaml('name: "Dr: Who"\n', "named.yaml")
    assert messages(named) == [f"{named}:1:7: name: the name is the bot's speaker tag unless `bot_speaker` is "
                               "set, and 'Dr: Who' would break the speaker format: set bot_speaker"]
    assert check_persona_file(write_yaml('name: "Dr: Who"\nbot_speaker: Who\n', "ok.yaml")) == []


def test_raw_control_characters_and_recursive_aliases(write_yaml) -> None:
    ctl = write_yaml("name: x\ndescription: a\x01b\n", "ctl.yaml")
    assert messages(ctl) == [f'{ctl}:2:15: control character 0x0001 is not allowed (write it as an escape '
                             'inside double quotes, e.g. "\\x01")']
    rec = write_yaml("name: x\nextensions: &a {self: *a}\n", "rec.yaml")
    assert messages(rec) == [f"{rec}:1:1: YAML: a recursive alias (an anchor that contains itself)"]
