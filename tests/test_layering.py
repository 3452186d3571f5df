"""House rule the import contracts (`lint-imports`, see pyproject.toml) cannot state: configuration is read once,
at the entry point, and handed down. So `load_config(` is called only by `xdai/config.py` and the commands in
`xdai/commands/`; library code receives its section. Scripts outside the packages (benchmarks/) are entry points
of their own and are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("xdai", "knowledge", "bots", "inference_kernels")
ALLOWED = ("xdai/config.py", "xdai/commands/")


def load_config_calls(path: Path) -> list[int]:
    """Line numbers of calls to `load_config(...)` or `<anything>.load_config(...)` in one source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name == "load_config":
                lines.append(node.lineno)
    return lines


def test_the_scan_sees_calls_and_ignores_definitions_and_text(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text('def load_config():\n    """load_config() in a docstring"""\n'
                      "# load_config() in a comment\nx = load_config()\ny = config.load_config(path)\n")
    assert load_config_calls(source) == [4, 5]


def test_load_config_is_called_only_at_the_entry_points() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(ALLOWED):
                continue
            offenders += [f"{rel}:{line}" for line in load_config_calls(path)]
    assert not offenders, ("load_config() outside xdai/config.py and xdai/commands/: read the configuration at the "
                           "entry point and pass its section down\n  " + "\n  ".join(offenders))
