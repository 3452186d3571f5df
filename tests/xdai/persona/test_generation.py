"""`Persona.override_generation`: the one way a bot's ``options.generation`` or ``xdai chat --seed`` changes how a
persona generates, checked as the persona file's own `generation` is."""

from __future__ import annotations

import pytest

from xdai.persona import PersonaError, load_persona


def test_overrides_are_laid_over_the_persona_and_reach_the_settings() -> None:
    p = load_persona("xiaodai")
    before = dict(p.generation)
    p.override_generation({"max_tokens": 12, "seed": 7, "rerank": 2})
    assert p.generation == {**before, "max_tokens": 12, "seed": 7, "rerank": 2}
    settings = p.generation_settings()
    assert (settings.max_tokens, settings.seed) == (12, 7) and p.rerank_options()["rerank"] == 2
    p.override_generation(None)
    p.override_generation({})
    assert p.generation["max_tokens"] == 12


def test_a_wrong_override_names_its_source_and_changes_nothing() -> None:
    p = load_persona("xiaodai")
    before = dict(p.generation)
    with pytest.raises(PersonaError) as err:
        p.override_generation({"temprature": 0.5, "top_p": 3}, "bots/x/bot.yaml: options")
    text = str(err.value)
    assert "bots/x/bot.yaml: options: generation: unknown key 'temprature' (did you mean 'temperature'?)" in text
    assert "generation.top_p: expected a number from 0.0 to 1.0, got a number (3)" in text
    assert p.generation == before


def test_rerank_slack_is_a_token_count_or_null() -> None:
    p = load_persona("xiaodai")
    assert p.rerank_options()["rerank_slack"] == 16  # the default
    p.override_generation({"rerank_slack": None})
    assert p.rerank_options()["rerank_slack"] is None  # wait for every candidate
    p.override_generation({"rerank_slack": 0})
    assert p.rerank_options()["rerank_slack"] == 0
    with pytest.raises(PersonaError, match=r"generation.rerank_slack: expected an integer from 0 to 4096, got"):
        p.override_generation({"rerank_slack": -2}, "bots/x/bot.yaml: options")
    with pytest.raises(PersonaError, match=r"generation.rerank_slack: expected an integer"):
        p.override_generation({"rerank_slack": 1.5}, "bots/x/bot.yaml: options")
