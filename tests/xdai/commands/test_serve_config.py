"""`xdai serve --config FILE`: the file's settings reach the objects it builds, not just the server section.

The command runs for real through the CLI up to the point where it would bind a port; `_serve` is swapped for a
function that keeps what it was handed, so the test reads the real backend, stores and settings.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from knowledge.settings import KnowledgeSettings
from knowledge.store import Store
from xdai.cli import main

DATA = Path(__file__).resolve().parents[2] / "knowledge" / "data"

PERSONA = """\
name: Robo
language: en
description: Robo is a friendly robot who answers every message in one short sentence.
first_mes: Hello! I am Robo.
knowledge:
  stores: [named]
"""

BOT = """\
persona: persona.yaml
knowledge: [{sources}]
backend: llama_cpp
model: smollm2
options:
  generation: {{max_tokens: 8}}
"""

CONFIG = """\
paths: {{bots_dir: {bots}, stores_dir: {stores}, cache_dir: {cache}}}
backend: {{n_ctx: 1536, threads: 1}}
knowledge: {{top_k: 4, rrf_k: 33}}
server: {{bots: [robo], sqlite_path: {sqlite}}}
"""


def test_serve_config_reaches_the_backend_and_the_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import xdai.commands.serve as serve_command

    for name in ("XDAI_CONFIG", "XDAI_PATHS_CACHE_DIR", "XDAI_PATHS_STORES_DIR", "XDAI_BACKEND_N_CTX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./xdai.yaml, no ./stores: only the file names them
    bots, stores, cache, sources = (tmp_path / n for n in ("bots", "stores", "cache", "sources"))
    sources.mkdir()
    for name in ("kb.json", "qa.jsonl"):
        shutil.copy(DATA / name, sources / name)
    (bots / "robo").mkdir(parents=True)
    (bots / "robo" / "bot.yaml").write_text(BOT.format(sources=sources), encoding="utf-8")
    (bots / "robo" / "persona.yaml").write_text(PERSONA, encoding="utf-8")
    # A store the persona names by name: only found under paths.stores_dir.
    Store.build([DATA / "qa.jsonl"], stores / "named", progress=False, settings=KnowledgeSettings(cache_dir=str(cache)))
    config = tmp_path / "serve.yaml"
    config.write_text(CONFIG.format(bots=bots, stores=stores, cache=cache, sqlite=tmp_path / "sessions.sqlite3"),
                      encoding="utf-8")

    handed: dict[str, Any] = {}

    async def keep(server: Any, specs: Any, cfg: Any) -> None:
        handed.update(server=server, specs=specs, cfg=cfg)

    monkeypatch.setattr(serve_command, "_serve", keep)
    result = CliRunner().invoke(main, ["serve", "--config", str(config), "--port", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    server, cfg = handed["server"], handed["cfg"]
    assert cfg.source == str(config) and list(server.agents) == ["robo"]
    agent = server.agents["robo"]
    # backend.n_ctx and threads reached the model itself, not only the backend object: prompts are fitted to the
    # 1536-token window, and the engine the backend shares (one per model file) holds at least that window and
    # decodes on one thread
    engine = agent.backend.engine.config
    assert agent.backend.n_ctx == 1536 and engine.n_ctx >= 1536 and agent.backend.threads == 1 == engine.threads
    # paths.stores_dir: the persona's store found by name there, the bot's sources built into it
    by_name = {named.name: named.store for named in agent.stores}
    built = stores / "bots" / "robo"
    assert set(by_name) == {str(stores / "named"), str(built)}
    assert (built / "manifest.json").is_file()
    # paths.cache_dir: the build's embedding cache; the knowledge section: every store's settings
    assert (cache / "embeddings.sqlite3").is_file()
    for store in by_name.values():
        assert store.settings.rrf_k == 33 and store.retriever.rrf_k == 33 and store.settings.cache_dir == str(cache)
    assert len(by_name[str(built)].query("故宫的门票多少钱？")) == 4  # knowledge.top_k is the default count
    server.store.close()
