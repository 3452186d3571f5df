"""The interviewer served over WebSocket: phases, the countdown and the end arrive as protocol ``event`` frames
(checked against the protocol schema); the timer's expiry is pushed by the server with no message from the client.
Also: /bots lists the hosted bots. Needs the service to run flows (the engine's open_session/event hooks)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bots.registry import BotSpec
from xdai.client import Client
from xdai.config import ServerConfig
from xdai.flows import ManualClock
from xdai.service.protocol import validate_server_frame


async def start(tmp_path: Path, agents: dict[str, Any], specs: dict[str, BotSpec]) -> Any:
    from xdai.service.server import XdaiServer
    from xdai.service.sessions import SQLiteSessionStore

    cfg = ServerConfig(host="127.0.0.1", port=0, bots=sorted(agents), sqlite_path=str(tmp_path / "s.sqlite3"),
                       rate_limit_per_s=50.0, rate_limit_burst=50.0, instance_id="bots-test", shutdown_grace_s=2.0)
    server = XdaiServer(cfg, {name: spec.info() for name, spec in specs.items()}, agents,
                        SQLiteSessionStore(cfg.sqlite_path))
    await server.start()
    return server


async def events_until(client: Client, name: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every event frame up to and including the first one named `name`."""
    seen = []
    while True:
        frame = await client.recv_matching(lambda f: f["type"] == "event", timeout)
        seen.append(frame)
        if frame["name"] == name:
            return seen


async def turn(client: Client, text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    msg = await client.send(text)
    end, events = None, []
    while end is None:
        frame = await client.recv(120)
        if frame["type"] == "event":
            events.append(frame)
        elif frame["type"] == "response.end" and frame["reply_to"] == msg:
            end = frame
        elif frame["type"] == "error":
            raise AssertionError(frame)
    return end, events


@pytest.mark.slow
async def test_interviewer_phases_and_countdown_over_the_socket(tmp_path: Path, served: Callable[..., Any],
                                                                 specs: dict[str, BotSpec]) -> None:
    bot = served("interviewer")
    bot.clock = ManualClock(50.0)
    bot.flow.config = {**bot.flow.config, "questions": bot.flow.config["questions"][:1], "follow_ups": False}
    server = await start(tmp_path, {"wukong": served("wukong"), "interviewer": bot}, specs)
    try:
        url = f"http://127.0.0.1:{server.port}/bots"  # fetched off the loop: the server runs on this one
        listed = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read()))
        assert [b["name"] for b in listed] == ["wukong", "interviewer"]  # served order: the page opens the first
        assert listed[1]["flow"] == "flow.py" and listed[1]["description"].startswith("AI 面试官")

        client = await Client.connect(f"ws://127.0.0.1:{server.port}/ws", on_frame=validate_server_frame)
        opened = await client.open("interviewer")
        assert "自我介绍" in opened["greeting"]
        first = await events_until(client, "actions")
        assert [f["data"]["name"] for f in first if f["name"] == "phase"] == ["greeting"]

        end, events = await turn(client, "我叫王磊，三年 Go 后端开发经验。")
        assert "第1个问题" in end["text"] and [e["name"] for e in events] == ["phase"]
        end, events = await turn(client, "我做过订单系统，用 Redis 做缓存。")
        timer = [e["data"] for e in events if e["name"] == "timer"][0]
        assert timer["text"] == "答疑环节 剩余时间 04:00"
        assert end["suggestions"] == ["公司的上班时间是怎样的？", "这个岗位的团队有多少人？", "新员工入职有培训吗？"]
        assert "比如你可以问我以下问题..." in end["text"]

        bot.clock.advance(240)  # the server's timer task notices within a tick and ends the interview by itself
        pushed = await events_until(client, "session.end", timeout=30)
        names = [f["name"] for f in pushed]
        assert names == ["timer", "phase", "summary", "session.end"]
        summary = pushed[2]["data"]
        assert summary["reason"] == "timer" and "回答了题库1/1个问题" in summary["summary"]
        assert [t["role"] for t in summary["transcript"]].count("candidate") == 2
        assert all(isinstance(f["seq"], int) for f in pushed)  # logged: a resuming page replays them
        await client.close()

        resumed = await Client.connect(f"ws://127.0.0.1:{server.port}/ws", on_frame=validate_server_frame)
        await resumed.open("interviewer", session_id=client.session_id, resume_from_seq=0,
                          resume_token=client.resume_token)
        replayed = await events_until(resumed, "session.end")
        assert [f["name"] for f in replayed][-4:] == names
        await resumed.close()
    finally:
        await server.shutdown()
