"""Fixtures for the knowledge tests: the real default embedder (loaded once), hand-written sources, a built store.

The embedding cache goes to a temporary folder (never ~/.cache/xdai): through explicit `settings` for the stores a
test builds, and through $XDAI_PATHS_CACHE_DIR for each test that goes through the `xdai` CLI.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
SOURCES = ["qa.jsonl", "qa.csv", "qa.yaml", "descriptions.jsonl", "descriptions.yaml", "guide.md", "notes.txt", "kb.json"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdai-cache")


@pytest.fixture(scope="session")
def settings(cache_dir: Path):
    from knowledge.settings import KnowledgeSettings

    return KnowledgeSettings(cache_dir=str(cache_dir))


@pytest.fixture(autouse=True)
def _private_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDAI_PATHS_CACHE_DIR", str(cache_dir))


@pytest.fixture(scope="session")
def embedder():
    from knowledge.embed import get_embedder

    return get_embedder()


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """A writable copy of the hand-written sources."""
    out = tmp_path / "data"
    shutil.copytree(DATA, out)
    return out


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, embedder, settings):
    """One store from every hand-written source, built once per session: (Store, BuildReport). Read-only."""
    from knowledge.store import Store

    root = tmp_path_factory.mktemp("store")
    report = Store.build([DATA / s for s in SOURCES], root / "kb", embedder=embedder, progress=False, settings=settings)
    return Store.open(root / "kb", settings=settings), report
