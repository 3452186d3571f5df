"""Faults end in a frame (issue 13, items 5-7): a reply whose server died ends "interrupted" whatever the next
server is called; a storage failure mid-reply ends it with ``response.end {finish_reason: "error"}`` and
``error {code: "storage_error"}`` and leaves the session consistent; a corrupt, empty or unusable session database
is refused at start with a message naming the file, and /healthz reports writes failing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import ScriptedResponder
from xdai.client import Client
from xdai.config import REPO_ROOT
from xdai.service.protocol import server_frame, validate_server_frame
from xdai.service.sessions import SEQ_WINDOW, SQLiteSessionStore

from .conftest import attached, free_port, start_scripted

LONG = "很久很久以前，在一座高山上住着一位老人。" * 50

# A server in a process of its own, to kill -9: a scripted bot that streams slowly, default instance id.
SERVER = """
import asyncio, sys
sys.path.insert(0, {root!r})
from tests.fakes import ScriptedResponder
from xdai.config import ServerConfig
from xdai.service.protocol import BotInfo
from xdai.service.server import XdaiServer
from xdai.service.sessions import SQLiteSessionStore

async def main():
    cfg = ServerConfig(host="127.0.0.1", port={port}, bots=["smol"], sqlite_path={db!r})
    bot = ScriptedResponder(replies=[{text!r}], delay_s=0.02)
    server = XdaiServer(cfg, {{"smol": BotInfo("smol")}}, {{"smol": bot}}, SQLiteSessionStore(cfg.sqlite_path))
    await server.start()
    print("up", flush=True)
    await server.run()

asyncio.run(main())
"""


async def _started(proc: subprocess.Popen[str]) -> None:
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)  # type: ignore[union-attr]
    assert line.strip() == "up", line


# ------------------------------------------------------------------ 5. recovery does not depend on the name
async def test_a_reply_killed_with_its_server_ends_interrupted_after_a_restart_on_another_port(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    port = free_port()
    script = SERVER.format(root=str(REPO_ROOT), port=port, db=str(db), text=LONG)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        await _started(proc)
        c = await Client.connect(f"ws://127.0.0.1:{port}/ws", on_frame=validate_server_frame)
        await c.open("smol")
        msg = await c.send("tell me a long story")
        while (await c.recv(30))["type"] != "response.delta":
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    seen = c.last_seq
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM messages WHERE role = 'bot'").fetchone()[0] == "streaming"
    # restarted elsewhere: another port, another (default) instance id
    r = await start_scripted(tmp_path, instance_id="")
    try:
        assert r.server.port != port
        again = await r.client()
        again.last_seq = seen
        opened = await again.open("smol", session_id=c.session_id, resume_from_seq=seen, resume_token=c.resume_token)
        assert opened["last_seq"] > seen
        end = await again.recv(10)
        assert (end["type"], end["finish_reason"], end["reply_to"]) == ("response.end", "interrupted", msg)
        assert end["seq"] > seen
        bot = r.server.store.messages(c.session_id)[-1]
        assert (bot["status"], bot["text"]) == ("interrupted", "")
        await again.close()
    finally:
        await r.server.shutdown()


def _streaming_reply(store: SQLiteSessionStore, owner: str) -> tuple[str, str]:
    """A session whose reply `owner` was streaming, as a crashed server leaves it; returns (session, token)."""
    from xdai.service.security import new_resume_token

    token, principal = new_resume_token()
    sid = "f" * 32
    store.create(sid, "smol", "hi", principal)
    store.add_user_message(sid, "m1", "hello", None, [server_frame("message.ack", sid, 1, reply_to="m1")])
    store.begin_reply(sid, "r-1", "m1", owner, [server_frame("response.start", sid, 2, response_id="r-1",
                                                             reply_to="m1")], 2 + SEQ_WINDOW)
    return sid, token


async def test_a_reply_whose_owner_stops_renewing_its_lease_ends_for_a_client_already_attached(tmp_path: Path) -> None:
    store = SQLiteSessionStore(tmp_path / "sessions.sqlite3")
    sid, token = _streaming_reply(store, "replica-elsewhere")
    store.heartbeat("replica-elsewhere", "another-host", 1)  # alive, on another machine: not ours to end
    r = await start_scripted(tmp_path, store=store, instance_id="", lease_s=1.0)
    try:
        assert store.messages(sid)[-1]["status"] == "streaming"
        c = await r.client()
        await c.open("smol", session_id=sid, resume_from_seq=2, resume_token=token)
        end = await c.recv(10)  # the other replica stopped renewing: within a lease or so, the reply ends
        assert (end["type"], end["finish_reason"], end["reply_to"]) == ("response.end", "interrupted", "m1")
        assert end["seq"] == 3 + SEQ_WINDOW
        reply = await c.chat("still there?")  # the session carries on above it
        assert reply.end["finish_reason"] == "stop" and reply.frames[0]["seq"] > end["seq"]
        assert [m["status"] for m in store.messages(sid) if m["role"] == "bot"] == ["interrupted", "complete"]
        await c.close()
    finally:
        await r.server.shutdown()


# ------------------------------------------------------------------------------ 6. storage failure mid-reply
class FullDisk:
    """A sqlite3 connection whose writes fail with "database or disk is full" while `full` is set."""

    def __init__(self, inner: sqlite3.Connection) -> None:
        self.inner, self.full = inner, False

    def _check(self, sql: str) -> None:
        if self.full and sql.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "REPLACE"):
            raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql: str, *args: Any) -> Any:
        self._check(sql)
        return self.inner.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._check(sql)
        return self.inner.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _health(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_a_full_disk_mid_reply_ends_the_reply_with_storage_error_and_the_next_turn_is_clean(
        tmp_path: Path) -> None:
    store = SQLiteSessionStore(tmp_path / "sessions.sqlite3")
    disk = FullDisk(store._db)
    store._db = disk  # type: ignore[assignment]
    bot = ScriptedResponder(replies=[LONG[:200], "第二个回答。"], delay_s=0.005)
    r = await start_scripted(tmp_path, bot, store=store)
    try:
        c = await r.opened()
        first = await c.send("tell me a story")
        while (await c.recv(10))["type"] != "response.delta":
            pass
        disk.full = True
        frames = [f async for f in c.stream(first, timeout=10)]
        end = next(f for f in frames if f["type"] == "response.end")
        error = frames[-1]
        assert end["finish_reason"] == "error" and end["text"] == ""
        assert (error["type"], error["code"], error["retryable"], error["reply_to"]) == (
            "error", "storage_error", True, first)
        assert "disk is full" in error["message"]
        assert error["seq"] == end["seq"] + 1
        assert await asyncio.to_thread(_health, f"{r.http}/healthz") == (503, {"status": "unhealthy"})
        assert r.server.hub.sessions[c.session_id].turn is None and r.server.pool.admitted == 0
        # a message while the disk is still full: refused, not acknowledged, nothing stored
        await c.send("anyone?", id="while-full")
        refused = await c.recv(10)
        assert (refused["type"], refused["code"], refused["retryable"]) == ("error", "storage_error", True)
        disk.full = False
        second = await c.chat("and now?")
        assert second.end["finish_reason"] == "stop" and second.end["text"] == "第二个回答。"
        assert await asyncio.to_thread(_health, f"{r.http}/healthz") == (200, {"status": "ok"})
        seqs = [f["seq"] for f in frames + second.frames]
        assert seqs == sorted(set(seqs))
        stored = store.messages(c.session_id)
        assert [(m["role"], m["status"]) for m in stored] == [
            ("user", "acked"), ("bot", "error"), ("user", "acked"), ("bot", "complete")]
        logged = store.frames_after(c.session_id, 0)
        failed_id = end["response_id"]
        assert not [f for f in logged if f["type"] == "response.delta" and f["response_id"] == failed_id]
        assert [f["finish_reason"] for f in logged if f["type"] == "response.end"] == ["error", "stop"]
        assert len(r.server.hub.sessions[c.session_id].history) == 1  # only the reply that was stored
        await c.close()
    finally:
        await r.server.shutdown()


# ----------------------------------------------------------------------------- 7. a bad database is refused
def _database_with_sessions(path: Path) -> None:
    store = SQLiteSessionStore(path)
    for i in range(200):
        sid = f"{i:032x}"
        store.create(sid, "smol", "你好" * 50, None)
        store.add_user_message(sid, "m1", "hello " * 40, None, [server_frame("message.ack", sid, 1, reply_to="m1")])
    store.close()


def test_a_database_corrupted_in_its_last_page_is_refused_naming_the_file(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    _database_with_sessions(db)
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(size - 4096)
        f.write(os.urandom(4096))
    from xdai.service.sessions import StoreUnusable

    with pytest.raises(StoreUnusable) as err:
        SQLiteSessionStore(db)
    message = str(err.value)
    assert str(db) in message and "corrupt" in message and "backup" in message


@pytest.mark.parametrize("kind", ["empty", "directory", "parent-is-a-file", "not-a-database"])
def test_unusable_database_files_are_refused_naming_the_file(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "sessions.sqlite3"
    if kind == "empty":
        db.write_bytes(b"")
    elif kind == "directory":
        db.mkdir()
    elif kind == "parent-is-a-file":
        (tmp_path / "file").write_text("x")
        db = tmp_path / "file" / "sessions.sqlite3"
    else:
        db.write_bytes(b"this is not a database\n" * 100)
    from xdai.service.sessions import StoreUnusable

    with pytest.raises(StoreUnusable) as err:
        SQLiteSessionStore(db)
    assert str(db) in str(err.value)
    if kind == "empty":
        assert db.stat().st_size == 0 and "0 bytes" in str(err.value)  # left as it was, not made a new database


def test_xdai_serve_refuses_a_corrupt_database_with_a_message_not_a_traceback(tmp_path: Path, bots_dir: Path,
                                                                              stores_dir: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    _database_with_sessions(db)
    with db.open("r+b") as f:
        f.seek(db.stat().st_size - 4096)
        f.write(b"\xff" * 4096)
    env = {**os.environ, "XDAI_PATHS_BOTS_DIR": str(bots_dir), "XDAI_PATHS_STORES_DIR": str(stores_dir),
           "XDAI_SERVER_SQLITE_PATH": str(db)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "xdai", "serve", "--port", "0", "--bot", "smol"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert str(db) in done.stderr and "corrupt" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60  # refused before any bot is built


async def test_a_failed_open_leaves_no_session_attached(tmp_path: Path) -> None:
    store = SQLiteSessionStore(tmp_path / "sessions.sqlite3")
    r = await start_scripted(tmp_path, store=store)
    try:
        c = await r.opened()
        await c.chat("hi")
        await c.close()
        store.frames_after = lambda *a: (_ for _ in ()).throw(sqlite3.OperationalError("disk I/O error"))  # type: ignore
        from xdai.service.sessions import _sqlite_errors

        store.frames_after = _sqlite_errors(store.frames_after)  # type: ignore[method-assign]
        again = await r.client()
        await again.send_frame("session.open", bot="smol", session_id=c.session_id, resume_from_seq=0,
                               resume_token=c.resume_token)
        frame = await again.recv(10)
        assert (frame["type"], frame["code"], frame["retryable"]) == ("error", "storage_error", True)
        await again.close()
        await asyncio.sleep(0.1)
        assert attached(r.server) == 0
    finally:
        await r.server.shutdown()
