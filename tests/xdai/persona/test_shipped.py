"""The personas shipped in personas/ validate, load by name and carry what the issue asks of them."""

from __future__ import annotations

import pytest

from xdai.config import REPO_ROOT
from xdai.persona import check_persona_file, load_persona

PERSONAS_DIR = REPO_ROOT / "personas"
SHIPPED = ("xiaodai", "lin_meimei", "zhen_huan", "wukong")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_persona_has_no_issues(name: str) -> None:
    assert check_persona_file(PERSONAS_DIR / f"{name}.yaml") == []


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_persona_speaks_in_its_voice(name: str) -> None:
    p = load_persona(name, PERSONAS_DIR)
    assert p.path == PERSONAS_DIR / f"{name}.yaml"
    assert len(p.mes_example) >= 3
    assert all({line.speaker for line in ex} == {"user", "bot"} for ex in p.mes_example)
    assert p.first_mes and p.greeting() == p.first_mes
    assert len(p.conditions) >= 3
    assert p.knowledge.qa and p.knowledge.background
    assert p.character_book is not None and p.character_book.entries
    assert p.generation_settings().repetition_penalty > 1.0  # the 0.5B model loops without one


def test_default_persona_is_bilingual_xiaodai() -> None:
    p = load_persona("xiaodai", PERSONAS_DIR)
    assert p.name == "小呆" and p.bot_speaker == "小呆" and p.user_speaker == "用户"
    assert p.conditions["angry"] == "你不能好好说话吗，怎么突然生气了"
    english = [ln.text for ex in p.mes_example for ln in ex if ln.text.isascii()]
    assert english, "xiaodai has an English example dialogue"
    assert "{{user}}" not in p.fill_macros(p.system_prompt) and "用户" in p.fill_macros(p.system_prompt)


def test_inverse_prompting_is_a_per_persona_option() -> None:
    assert load_persona("lin_meimei", PERSONAS_DIR).rerank_options() == {
        "rerank": 3, "inverse_prompting": True, "inverse_weight": 0.5, "rerank_slack": 16}
    assert load_persona("xiaodai", PERSONAS_DIR).rerank_options()["inverse_prompting"] is False


def test_cli_check_and_list_shipped(cli) -> None:
    result = cli("check", *(str(PERSONAS_DIR / f"{n}.yaml") for n in SHIPPED))
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "persona check: 4 files, 0 errors, 0 warnings: ok"
    listed = cli("list", "--dir", str(PERSONAS_DIR))
    assert listed.exit_code == 0
    assert all(n in listed.output for n in SHIPPED)
    assert listed.output.strip().splitlines()[-1] == "4 personas, 0 broken"
