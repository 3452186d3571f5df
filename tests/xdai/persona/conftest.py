"""Fixtures for persona tests: a writer for YAML files under tmp_path and the CLI runner."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(text: str, name: str = "p.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write


@pytest.fixture
def cli() -> Callable[..., object]:
    from xdai.cli import main

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(main, ["persona", *args], catch_exceptions=False)

    return run
