"""Fixtures for the service tests: a small real bot (xiaodai persona, the default bot's knowledge, SmolLM2-135M),
an in-process server on a free port with a SQLite session store, a client that checks every frame against the
protocol's JSON Schema, and a real redis-server for the Redis store."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bots.registry import BotSpec, build_agent, load_bots
from xdai.client import Client
from xdai.config import REPO_ROOT, ServerConfig
from xdai.service.protocol import validate_server_frame

SMOL_BOT = """\
description: the default bot's persona and knowledge on SmolLM2-135M, for tests
persona: xiaodai
knowledge: [{knowledge}]
backend: llama_cpp
model: smollm2
options:
  generation: {{max_tokens: {max_tokens}, temperature: 0.7}}
"""


def write_bot(bots_dir: Path, name: str, max_tokens: int) -> None:
    (bots_dir / name).mkdir(parents=True, exist_ok=True)
    knowledge = REPO_ROOT / "bots" / "xiaodai" / "knowledge"
    (bots_dir / name / "bot.yaml").write_text(SMOL_BOT.format(knowledge=knowledge, max_tokens=max_tokens),
                                              encoding="utf-8")


@pytest.fixture(scope="session")
def bots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bots")
    write_bot(root, "smol", 24)
    write_bot(root, "smol-long", 200)
    return root


@pytest.fixture(scope="session")
def stores_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stores")


@pytest.fixture(scope="session")
def bot_specs(bots_dir: Path) -> dict[str, BotSpec]:
    return load_bots(bots_dir)


@pytest.fixture(scope="session")
def agent(bot_specs: dict[str, BotSpec], stores_dir: Path) -> Any:
    """The real Agent: persona, a built knowledge store, the llama.cpp backend with SmolLM2."""
    return build_agent(bot_specs["smol"], stores_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_config(tmp_path: Path, **overrides: Any) -> ServerConfig:
    cfg = ServerConfig(host="127.0.0.1", port=0, bots=["smol"], sqlite_path=str(tmp_path / "sessions.sqlite3"),
                       idle_timeout_s=60.0, rate_limit_per_s=50.0, rate_limit_burst=50.0, shutdown_grace_s=5.0,
                       instance_id="test")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


class Running:
    """An in-process server and helpers to reach it."""

    def __init__(self, server: Any) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def client(self, **kwargs: Any) -> Client:
        return await Client.connect(self.url, on_frame=validate_server_frame, **kwargs)

    async def opened(self, bot: str = "smol", **kwargs: Any) -> Client:
        c = await self.client(**kwargs)
        await c.open(bot)
        return c


async def start_server(tmp_path: Path, agents: dict[str, Any], specs: dict[str, BotSpec], store: Any = None,
                       **overrides: Any) -> Running:
    from xdai.service.server import XdaiServer
    from xdai.service.sessions import SQLiteSessionStore

    cfg = server_config(tmp_path, **overrides)
    store = store if store is not None else SQLiteSessionStore(cfg.sqlite_path)
    server = XdaiServer(cfg, {name: spec.info() for name, spec in specs.items()}, agents, store)
    await server.start()
    return Running(server)


@pytest.fixture
async def running(tmp_path: Path, agent: Any, bot_specs: dict[str, BotSpec]) -> AsyncIterator[Running]:
    r = await start_server(tmp_path, {"smol": agent}, bot_specs)
    yield r
    await r.server.shutdown()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port in a temp dir, stopped afterwards."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
                             "--appendonly", "yes", "--appendfsync", "always"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


async def start_scripted(tmp_path: Path, responder: Any = None, *, bots: dict[str, Any] | None = None,
                         store: Any = None, **overrides: Any) -> Running:
    """A real server hosting a `tests.fakes.ScriptedResponder` as bot "smol" (protocol tests need no model);
    `bots` are the `BotInfo`s shown at /bots."""
    from tests.fakes import ScriptedResponder
    from xdai.service.protocol import BotInfo
    from xdai.service.server import XdaiServer
    from xdai.service.sessions import SQLiteSessionStore

    cfg = server_config(tmp_path, **overrides)
    store = store if store is not None else SQLiteSessionStore(cfg.sqlite_path)
    server = XdaiServer(cfg, bots or {"smol": BotInfo("smol")}, {"smol": responder or ScriptedResponder()}, store)
    await server.start()
    return Running(server)


def attached(server: Any) -> int:
    """Sessions attached to a connection (none may stay attached once every client is gone)."""
    return sum(1 for s in server.hub.sessions.values() if s.sink is not None)
