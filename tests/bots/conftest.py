"""Fixtures for the bot tests: the shipped bot declarations, a session-wide stores folder (each knowledge pack is
built once), and `served(name, ...)`: a shipped bot built for real with a few reply tokens and a small prompt
budget, so that a flow's logic can be driven fast on 2 shared cores. The bots are Chinese, so they run on the
default Qwen model (a Chinese prompt is about half as many tokens there as for SmolLM2's byte-level vocabulary)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bots.assemble import build_bot
from bots.registry import BotSpec, load_bots
from xdai.config import REPO_ROOT

BOTS_DIR = REPO_ROOT / "bots"
SHIPPED = ["emotion_demo", "frontdesk", "interviewer", "lin_meimei", "student", "wukong", "xiaodai", "zhen_huan"]


@pytest.fixture(scope="session")
def specs() -> dict[str, BotSpec]:
    return load_bots(BOTS_DIR)


@pytest.fixture(scope="session")
def stores_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bot-stores")


def small(spec: BotSpec, model: str = "default", max_tokens: int = 8, **generation: Any) -> BotSpec:
    """`spec` on another model with a short reply (the persona, knowledge and flow stay the bot's own)."""
    options = dict(spec.options)
    options["generation"] = {**dict(options.get("generation") or {}), "max_tokens": max_tokens, "seed": 7,
                             **generation}
    return dataclasses.replace(spec, model=model, options=options)


@pytest.fixture(scope="session")
def served(specs: dict[str, BotSpec], stores_dir: Path) -> Callable[..., Any]:
    """served(name, model="default", max_tokens=8, budget=400, **generation) -> the running bot."""

    def build(name: str, model: str = "default", max_tokens: int = 8, budget: int = 400, **generation: Any) -> Any:
        bot = build_bot(small(specs[name], model, max_tokens, **generation), stores_dir)
        bot.persona.selection.budget_tokens = budget
        return bot

    return build
