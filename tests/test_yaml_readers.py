"""Every YAML reader of the project refuses an alias bomb at once, with an error naming the file and line
(issue 13 item 10): xdai.yaml and its XDAI_* overrides, bot.yaml, interview.yaml. Knowledge sources and personas
have their own tests (tests/knowledge/test_sources.py, tests/xdai/persona/test_bounds.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


def bomb(key: str, levels: int = 9, fan: int = 9) -> str:
    lines = [f"{key}:", '  a0: &a0 ["lol"]']
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


REFUSED = "aliases expand to more than 100,000 nodes (at *a4, 113,272 so far, from "


def test_xdai_yaml_and_overrides(tmp_path: Path) -> None:
    from knowledge.settings import ConfigError
    from xdai.config import load_config

    config = tmp_path / "xdai.yaml"
    config.write_text(bomb("server"), encoding="utf-8")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_config(config, environ={})
    assert time.monotonic() - started < 2
    assert str(err.value).startswith(f"{config}:7:42: {REFUSED}")
    with pytest.raises(ConfigError) as err:  # an override is YAML too
        load_config(None, environ={"XDAI_SERVER_BOTS": bomb("x")})
    assert str(err.value).startswith(f"$XDAI_SERVER_BOTS:7:42: {REFUSED}")


def test_bot_yaml(tmp_path: Path) -> None:
    from bots.registry import BotError, load_bot

    folder = tmp_path / "bomb"
    folder.mkdir()
    (folder / "bot.yaml").write_text("persona: xiaodai\n" + bomb("options"), encoding="utf-8")
    with pytest.raises(BotError) as err:
        load_bot(folder)
    assert str(err.value).startswith(f"{folder / 'bot.yaml'}:8: {REFUSED}")


def test_interview_yaml(tmp_path: Path) -> None:
    from bots.interviewer.flow import load_interview

    path = tmp_path / "interview.yaml"
    path.write_text(bomb("questions"), encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_interview(path)
    assert str(err.value).startswith(f"{path}:7: {REFUSED}")
