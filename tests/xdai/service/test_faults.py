"""Faults: the backend raising mid-stream, kill -9 of the server during a streamed reply, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from xdai.client import Client
from xdai.service.protocol import validate_server_frame
from xdai.turn import Agent

from .conftest import free_port, start_server


class FailingAfter:
    """Fault injection: the real backend, raising after `pieces` pieces on its first `times` fills."""

    def __init__(self, inner: Any, pieces: int, times: int = 1) -> None:
        self.inner, self.pieces, self.times = inner, pieces, times
        self.name = f"failing-{inner.name}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def fill(self, infill: Any, settings: Any) -> AsyncIterator[str]:
        fail = self.times > 0
        self.times -= 1
        n = 0
        stream = self.inner.fill(infill, settings)
        try:
            async for piece in stream:
                yield piece
                n += 1
                if fail and n >= self.pieces:
                    raise RuntimeError("injected backend failure")
            if fail:
                raise RuntimeError("injected backend failure (the reply ended early)")
        finally:
            await stream.aclose()


async def test_backend_raising_mid_stream_ends_the_reply_with_an_error(tmp_path: Path, agent: Any,
                                                                       bot_specs: Any) -> None:
    broken = Agent(agent.persona, stores=agent.stores, backend=FailingAfter(agent.backend, pieces=2),
                   embedder=agent.embedder)
    r = await start_server(tmp_path, {"smol": broken}, bot_specs)
    try:
        c = await r.opened()
        failed = await c.chat("Tell me about the Forbidden City")
        end = failed.end
        assert end["finish_reason"] == "error"
        error = failed.errors[-1]
        assert error["code"] == "backend_error" and "injected backend failure" in error["message"]
        assert error["retryable"] is True and error["reply_to"] == failed.id
        # the session is intact: the next message is answered normally, and history skipped the failed turn
        ok = await c.chat("hello again")
        assert ok.end["finish_reason"] in ("stop", "length")
        stored = r.server.store.messages(c.session_id)
        assert [(m["role"], m["status"]) for m in stored] == [
            ("user", "acked"), ("bot", "error"), ("user", "acked"), ("bot", "complete")]
        assert len(r.server.hub.sessions[c.session_id].history) == 1
        await c.close()
    finally:
        await r.server.shutdown()


def spawn(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "xdai", "serve", "--port", str(port), "--bot", "smol-long"],
                            env=env, stdout=out, stderr=out)


async def wait_up(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"server did not start:\n{log.read_text()}")


@pytest.mark.slow
async def test_kill_9_mid_reply_keeps_every_acknowledged_message(tmp_path: Path, bots_dir: Path, stores_dir: Path,
                                                                 agent: Any) -> None:
    db = tmp_path / "sessions.sqlite3"
    env = {**os.environ, "XDAI_PATHS_BOTS_DIR": str(bots_dir), "XDAI_PATHS_STORES_DIR": str(stores_dir),
           "XDAI_SERVER_SQLITE_PATH": str(db), "XDAI_SERVER_INSTANCE_ID": "kill-test", "PYTHONUNBUFFERED": "1"}
    port, log = free_port(), tmp_path / "server.log"
    proc = spawn(port, env, log)
    try:
        await wait_up(port, proc, log)
        c = await Client.connect(f"ws://127.0.0.1:{port}/ws", on_frame=validate_server_frame)
        await c.open("smol-long")
        finished = await c.chat("Hi! How are you today?")
        assert finished.end["finish_reason"] in ("stop", "length")
        session_id, token, killed_id = c.session_id, c.resume_token, None
        for attempt in range(3):  # the reply must still be streaming when the kill lands
            msg = await c.send(f"Tell me a long story about the Great Wall, part {attempt + 1}.")
            async for frame in c.stream(msg):
                if frame["type"] == "response.delta":
                    proc.send_signal(signal.SIGKILL)
                    break
            proc.wait(timeout=30)
            seen = c.last_seq
            with sqlite3.connect(db) as conn:
                status = conn.execute("SELECT status FROM messages WHERE role = 'bot' ORDER BY ord DESC").fetchone()[0]
            proc = spawn(port, env, log)
            await wait_up(port, proc, log)
            if status == "streaming":
                killed_id = msg
                break
            c = await Client.connect(f"ws://127.0.0.1:{port}/ws", on_frame=validate_server_frame)
            c.last_seq = seen
            await c.open("smol-long", session_id=session_id, resume_from_seq=seen, resume_token=token)
        assert killed_id is not None, "every reply finished before the kill landed"
        # restarted: resume from the last frame seen; the interrupted reply's end arrives, seq still increasing
        c2 = await Client.connect(f"ws://127.0.0.1:{port}/ws", on_frame=validate_server_frame)
        c2.last_seq = seen
        opened = await c2.open("smol-long", session_id=session_id, resume_from_seq=seen, resume_token=token)
        assert opened["resumed"] and opened["last_seq"] > seen
        end = await c2.recv(30)
        assert end["type"] == "response.end" and end["finish_reason"] == "interrupted" and end["reply_to"] == killed_id
        after = await c2.chat("Are you still there?")
        assert after.end["finish_reason"] in ("stop", "length")
        await c2.close()
        # graceful shutdown on SIGTERM
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT role, id, text, status FROM messages WHERE session_id = ? ORDER BY ord",
                            (session_id,)).fetchall()
    users = [r for r in rows if r[0] == "user"]
    bots = [r for r in rows if r[0] == "bot"]
    assert len(users) == len(bots) and all(r[3] == "acked" for r in users)  # every acknowledged message survived
    assert bots[0][2] == finished.end["text"] and bots[0][3] == "complete"  # the finished reply, whole
    interrupted = [r for r in bots if r[3] == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0][2] == ""  # marked, not half-stored
    assert bots[-1][3] == "complete" and bots[-1][2] == after.end["text"]


async def test_graceful_shutdown_ends_in_flight_replies_cleanly(tmp_path: Path, agent: Any, bot_specs: Any) -> None:
    r = await start_server(tmp_path, {"smol": agent}, bot_specs, shutdown_grace_s=0.0)
    c = await r.opened()
    msg = await c.send("Tell me a story")
    while (await c.recv(60))["type"] != "response.start":
        pass
    await r.server.shutdown()
    frames = []
    try:
        while True:
            frames.append(await c.recv(30))
    except Exception:
        pass
    ends = [f for f in frames if f["type"] == "response.end"]
    assert len(ends) == 1 and ends[0]["finish_reason"] in ("interrupted", "stop", "length")
    assert any(f["type"] == "error" and f["code"] == "shutting_down" for f in frames)
    from xdai.service.sessions import SQLiteSessionStore

    store = SQLiteSessionStore(tmp_path / "sessions.sqlite3")
    bot = store.messages(c.session_id)[-1]
    assert bot["status"] in ("interrupted", "complete") and bot["reply_to"] == msg
    if bot["status"] == "interrupted":
        assert bot["text"] == ""
    store.close()
