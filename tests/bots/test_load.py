"""Every shipped bot loads and validates: its declaration, its persona (beside it or in personas/), its flow and
its knowledge pack; broken declarations and flows are reported with file:line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bots.assemble import check_bot, resolve_persona
from bots.registry import BotError, BotSpec, load_bot
from knowledge.sources import Problems, read_sources
from xdai.flows import Flow, FlowError, load_flow
from xdai.persona import load_persona

from .conftest import BOTS_DIR, SHIPPED


def test_every_shipped_bot_is_declared(specs: dict[str, BotSpec]) -> None:
    assert sorted(specs) == SHIPPED
    for spec in specs.values():
        assert spec.description, spec.name
        assert spec.to_json()["name"] == spec.name


@pytest.mark.parametrize("name", SHIPPED)
def test_bot_loads_and_validates(name: str, specs: dict[str, BotSpec]) -> None:
    spec = specs[name]
    check_bot(spec)
    persona = load_persona(resolve_persona(spec))
    assert persona.greeting()
    if spec.flow:
        assert isinstance(load_flow(spec.flow, spec.path), Flow)
    problems = Problems(skip_bad=False)  # the first bad record would raise SourceError naming file:line
    items = list(read_sources(spec.knowledge, problems))
    assert len(items) >= 5, f"{name}: a knowledge pack of {len(items)} items"
    assert {i.kind for i in items} == {"qa", "description"}, name
    assert all(i.source_file and i.source_record for i in items)


def test_persona_beside_the_bot_is_found(specs: dict[str, BotSpec]) -> None:
    assert resolve_persona(specs["student"]) == str((BOTS_DIR / "student" / "persona.yaml").resolve())
    assert resolve_persona(specs["lin_meimei"]) == "lin_meimei"  # a name: personas/lin_meimei.yaml


def _copy(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(BOTS_DIR / name, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_broken_flow_is_reported_with_file_and_line(tmp_path: Path) -> None:
    folder = _copy("emotion_demo", tmp_path)
    (folder / "flow.py").write_text("from xdai.flows import Flow\n\nclass Broken(Flow):\n    def before_turn(self):\n"
                                    "        pass\n", encoding="utf-8")
    with pytest.raises(BotError, match=r"flow\.py:4: before_turn must take \(ctx\)"):
        check_bot(load_bot(folder))
    (folder / "flow.py").write_text("x = (\n", encoding="utf-8")
    with pytest.raises(FlowError, match=r"flow\.py:1: cannot load flow: SyntaxError"):
        load_flow("flow.py", folder)


def test_broken_interview_data_is_reported_with_file_and_line(tmp_path: Path) -> None:
    folder = _copy("interviewer", tmp_path)
    text = (folder / "interview.yaml").read_text(encoding="utf-8").replace("qa_seconds: 240", "qa_seconds: -5")
    (folder / "interview.yaml").write_text(text, encoding="utf-8")
    line = 1 + text.split("\n").index("qa_seconds: -5")
    with pytest.raises(BotError, match=rf"interview\.yaml:{line}: qa_seconds: expected a positive number"):
        check_bot(load_bot(folder))


def test_missing_persona_is_an_error(tmp_path: Path) -> None:
    folder = _copy("frontdesk", tmp_path)
    (folder / "persona.yaml").unlink()
    with pytest.raises(BotError, match="persona"):
        check_bot(load_bot(folder))
