"""Hot reload: editing a bot's persona, bot.yaml or flow while it is served swaps it in for new sessions; a broken
edit is reported with file:line and the previous version keeps serving (also over a live WebSocket server)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bots.assemble import build_bot
from bots.registry import load_bots
from bots.reload import Reloader

from .conftest import BOTS_DIR, small


def copy_bot(name: str, bots_dir: Path) -> Path:
    target = bots_dir / name
    shutil.copytree(BOTS_DIR / name, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.fixture
def served_copy(tmp_path: Path, stores_dir: Path) -> tuple[Path, dict[str, Any], dict[str, Any], Reloader]:
    bots_dir = tmp_path / "bots"
    copy_bot("frontdesk", bots_dir)
    specs = load_bots(bots_dir)
    agents = {"frontdesk": build_bot(small(specs["frontdesk"]), stores_dir)}
    return bots_dir, specs, agents, Reloader(bots_dir, specs, agents, stores_dir)


def test_persona_edit_reloads_and_a_broken_edit_keeps_the_old_version(served_copy: Any) -> None:
    bots_dir, specs, agents, reloader = served_copy
    first = agents["frontdesk"]
    assert reloader.check().reloaded == []
    persona = bots_dir / "frontdesk" / "persona.yaml"

    edit(persona, "first_mes: 您好，欢迎来到云栖酒店", "first_mes: 您好呀，欢迎光临云栖酒店")
    result = reloader.check()
    assert result.reloaded == ["frontdesk"] and result.failed == {}
    second = agents["frontdesk"]
    assert second is not first and second.greeting().startswith("您好呀，欢迎光临云栖酒店")
    assert second.backend is first.backend  # same backend and model: reused, not loaded again
    assert first.greeting().startswith("您好，欢迎来到云栖酒店")  # sessions already open keep theirs

    lines = persona.read_text(encoding="utf-8").split("\n")
    line = 1 + next(i for i, text in enumerate(lines) if text.startswith("personality:"))
    edit(persona, "personality:", "persnality:")
    result = reloader.check()
    assert list(result.failed) == ["frontdesk"]
    assert f"persona.yaml:{line}:1: unknown key 'persnality' (did you mean 'personality'?)" in result.failed["frontdesk"]
    assert agents["frontdesk"] is second and reloader.errors["frontdesk"] == result.failed["frontdesk"]
    assert reloader.check().failed == {}  # reported once, not on every pass

    edit(persona, "persnality:", "personality:")
    assert reloader.check().reloaded == ["frontdesk"] and reloader.errors == {}


def test_broken_bot_yaml_and_flow_are_refused_with_file_and_line(served_copy: Any) -> None:
    bots_dir, specs, agents, reloader = served_copy
    before = agents["frontdesk"]
    bot_yaml = bots_dir / "frontdesk" / "bot.yaml"
    edit(bot_yaml, "flow: flow.py", "flow: [flow.py")
    failed = reloader.check().failed["frontdesk"]
    assert f"{bot_yaml}:" in failed and agents["frontdesk"] is before
    edit(bot_yaml, "flow: [flow.py", "flow: flow.py")

    flow = bots_dir / "frontdesk" / "flow.py"
    edit(flow, "class FrontDesk(Flow):", "class FrontDesk(Flow)")
    line = 1 + flow.read_text(encoding="utf-8").split("\n").index("class FrontDesk(Flow)")
    failed = reloader.check().failed["frontdesk"]
    assert f"flow.py:{line}: cannot load flow: SyntaxError" in failed and agents["frontdesk"] is before

    edit(flow, "class FrontDesk(Flow)", "class FrontDesk(Flow):")
    edit(flow, 'DONT_KNOW = "抱歉，', 'DONT_KNOW = "真抱歉，')
    assert reloader.check().reloaded == ["frontdesk"]
    assert agents["frontdesk"].flow is not before.flow
    assert specs["frontdesk"].flow == "flow.py"


async def test_new_sessions_of_a_running_server_get_the_edit(tmp_path: Path, stores_dir: Path) -> None:
    from xdai.client import Client
    from xdai.config import ServerConfig
    from xdai.service.server import XdaiServer
    from xdai.service.sessions import SQLiteSessionStore

    bots_dir = tmp_path / "bots"
    copy_bot("student", bots_dir)
    specs = load_bots(bots_dir)
    agents = {"student": build_bot(small(specs["student"]), stores_dir)}
    cfg = ServerConfig(host="127.0.0.1", port=0, bots=["student"], sqlite_path=str(tmp_path / "s.sqlite3"),
                       instance_id="reload-test")
    server = XdaiServer(cfg, {name: spec.info() for name, spec in specs.items()}, agents,
                        SQLiteSessionStore(cfg.sqlite_path))
    await server.start()
    reloader = Reloader(bots_dir, specs, server.agents, stores_dir,
                        on_swap=lambda name, spec, bot: server.bots.__setitem__(name, spec.info()))
    url = f"ws://127.0.0.1:{server.port}/ws"

    async def greeting() -> str:
        client = await Client.connect(url)
        try:
            opened = await client.open("student")
            return opened["greeting"]
        finally:
            await client.close()

    try:
        assert (await greeting()).startswith("老师好！我是高二（3）班的林小雨")
        persona = bots_dir / "student" / "persona.yaml"
        edit(persona, "first_mes: 老师好！", "first_mes: 各位老师好！")
        assert reloader.check().reloaded == ["student"]
        assert (await greeting()).startswith("各位老师好！")
        edit(persona, "selection:\n  alpha: 0.75", "selection:\n  alpha: 1.75")
        failed = reloader.check().failed["student"]
        assert "persona.yaml:" in failed and "selection.alpha: expected a number from 0.0 to 1.0" in failed
        assert (await greeting()).startswith("各位老师好！")  # the previous version keeps serving
    finally:
        await server.shutdown()


def test_a_shared_persona_in_personas_dir_reloads_every_bot_using_it(tmp_path: Path, stores_dir: Path) -> None:
    personas = tmp_path / "personas"
    personas.mkdir()
    shutil.copy(BOTS_DIR.parent / "personas" / "wukong.yaml", personas / "wukong.yaml")
    bots_dir = tmp_path / "bots"
    copy_bot("wukong", bots_dir)
    specs = load_bots(bots_dir)
    # personas_dir as `xdai serve` passes paths.personas_dir: `persona: wukong` now means this file
    agents = {"wukong": build_bot(small(specs["wukong"]), stores_dir, personas_dir=personas)}
    reloader = Reloader(bots_dir, specs, agents, stores_dir, personas_dir=personas)
    assert personas / "wukong.yaml" in reloader.watched_files("wukong")

    edit(personas / "wukong.yaml", "first_mes: 嘿！", "first_mes: 呔！")
    assert reloader.check().reloaded == ["wukong"]
    assert agents["wukong"].greeting().startswith("呔！俺老孙在这儿呢")
    edit(personas / "wukong.yaml", "mes_example:", "mes_example: [")
    failed = reloader.check().failed["wukong"]
    assert f"{personas / 'wukong.yaml'}:" in failed and agents["wukong"].greeting().startswith("呔！")



def _alias_bomb(indent: str, levels: int = 7, fan: int = 9) -> str:
    """`levels` of anchors at `indent`, each listing the previous `fan` times (a 7-level bomb: 4.8M nodes)."""
    lines = [f'{indent}a0: &a0 ["lol"]']
    lines += [f"{indent}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


async def test_an_alias_bomb_in_a_served_persona_is_refused_off_the_event_loop(served_copy: Any) -> None:
    """Issue 13 item 10: the bomb took a served process from 0.82 to 5.8 GB and stalled its event loop 7.7 s. Now
    the reload refuses it at the alias, in a worker thread, while the loop keeps ticking."""
    bots_dir, specs, agents, reloader = served_copy
    before = agents["frontdesk"]
    persona = bots_dir / "frontdesk" / "persona.yaml"
    text = persona.read_text(encoding="utf-8")
    persona.write_text(text + "extensions:\n" + _alias_bomb("  "), encoding="utf-8")
    bomb_line = text.count("\n") + 7  # a5, whose *a4 aliases take the expansion past the bound
    threads: list[int] = []
    check = reloader.check

    def recording_check() -> Any:
        threads.append(threading.get_ident())
        return check()

    reloader.check = recording_check  # type: ignore[method-assign]
    reloader.interval_s = 0.05
    task = asyncio.create_task(reloader.run())
    worst, last, started = 0.0, time.monotonic(), time.monotonic()
    try:
        while "frontdesk" not in reloader.errors and time.monotonic() - started < 30:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            worst, last = max(worst, now - last), now
    finally:
        task.cancel()
    error = reloader.errors["frontdesk"]
    assert f"persona.yaml:{bomb_line}:" in error and "YAML refused: aliases expand to more than 100,000 nodes" in error
    assert agents["frontdesk"] is before  # the previous version keeps serving
    assert threads and threading.get_ident() not in threads  # checked in a worker thread, never on the loop
    assert worst < 0.5 and time.monotonic() - started < 5, (worst, time.monotonic() - started)


def test_an_alias_bomb_in_bot_yaml_is_refused_with_file_and_line(served_copy: Any) -> None:
    bots_dir, specs, agents, reloader = served_copy
    before = agents["frontdesk"]
    bot_yaml = bots_dir / "frontdesk" / "bot.yaml"
    text = bot_yaml.read_text(encoding="utf-8")
    assert text.endswith("options:\n  generation: {max_tokens: 48, temperature: 0.3}\n")
    bot_yaml.write_text(text + "  x:\n" + _alias_bomb("    "), encoding="utf-8")
    bomb_line = text.count("\n") + 7
    started = time.monotonic()
    failed = reloader.check().failed["frontdesk"]
    assert time.monotonic() - started < 2
    assert failed.startswith(f"{bot_yaml}:{bomb_line}: aliases expand to more than 100,000 nodes"), failed
    assert agents["frontdesk"] is before
