"""Bad input: each gets an error frame with a precise code and message (or, where RFC 6455 requires failing the
connection, the precise close code); the connection stays usable wherever the protocol allows; the server stays up."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from tests.fakes import ScriptedResponder
from xdai.client import Client

from .conftest import Running, attached, start_scripted, start_server


async def error_for(c: Client, data: str | bytes) -> dict[str, Any]:
    await c.send_raw(data)
    frame = await c.recv(30)
    assert frame["type"] == "error", frame
    assert frame["message"] and frame["retryable"] in (True, False)
    return frame


async def still_usable(c: Client) -> None:
    assert (await c.ping())["type"] == "pong"


def _healthz(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())["status"]


async def healthy(r: Running) -> bool:
    """/healthz, fetched off the event loop (the server under test runs on this loop)."""
    return await asyncio.to_thread(_healthz, f"{r.http}/healthz") == "ok"


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        ("hello?", "invalid_json", "not JSON"),
        ('{"v": 1, "type": "message.create", "id": "m1"', "invalid_json", "not JSON"),
        ('"just a string"', "invalid_frame", "JSON object"),
        ('{"v": 1, "type": "teleport"}', "unknown_type", "teleport"),
        ('{"v": 1, "type": "session.open"}', "missing_field", "bot"),
        ('{"v": 1, "type": "message.create", "text": "hi"}', "missing_field", "'id'"),
        ('{"v": 1, "type": "session.open", "bot": 42}', "invalid_frame", "bot"),
        ('{"v": 3, "type": "ping"}', "unsupported_version", "version"),
        (b'{"v": 1, "type": "ping"}', "binary_not_supported", "binary"),
    ],
)
async def test_malformed_frames(running: Running, data: str | bytes, code: str, words: str) -> None:
    c = await running.client()
    frame = await error_for(c, data)
    assert frame["code"] == code and words in frame["message"], frame
    await still_usable(c)
    await c.open("smol")  # and the protocol carries on
    await c.close()


async def test_out_of_order_and_unknown_sessions(running: Running) -> None:
    c = await running.client()
    frame = await error_for(c, json.dumps({"v": 1, "type": "message.create", "id": "early", "text": "hi"}))
    assert (frame["code"], frame["reply_to"]) == ("no_session", "early")
    frame = await error_for(c, json.dumps({"v": 1, "type": "response.cancel", "reply_to": "early"}))
    assert frame["code"] == "no_session"
    frame = await error_for(c, json.dumps({"v": 1, "type": "session.open", "bot": "smol",
                                           "session_id": "doesnotexist0000", "resume_from_seq": 7}))
    assert frame["code"] == "session_not_found" and "doesnotexist0000" in frame["message"]
    await still_usable(c)
    await c.open("smol")
    frame = await error_for(c, json.dumps({"v": 1, "type": "message.create", "id": "x", "text": "hi",
                                           "session_id": "someoneelse00000"}))
    assert frame["code"] == "session_mismatch" and frame["reply_to"] == "x"
    await c.close()


async def test_long_messages(running: Running) -> None:
    c = await running.opened()
    limit = running.server.cfg.max_message_chars
    assert limit < 10_000
    frame = await error_for(c, json.dumps({"v": 1, "type": "message.create", "id": "long", "text": "长" * 10_000}))
    assert frame["code"] == "message_too_long" and str(limit) in frame["message"] and frame["field"] == "text"
    await still_usable(c)
    assert running.server.store.messages(c.session_id) == []  # nothing was stored for the refused message
    await c.close()


async def test_oversized_frames_close_1009_and_the_server_stays_up(running: Running) -> None:
    c = await running.opened()
    with pytest.raises(ConnectionClosedError) as info:
        await c.send_raw(json.dumps({"v": 1, "type": "message.create", "id": "big", "text": "x" * 1_000_000}))
        await c.recv(30)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    assert await healthy(running)
    again = await running.opened()
    await still_usable(again)
    await again.close()


async def test_invalid_utf8_closes_1007_and_the_server_stays_up(running: Running) -> None:
    c = await running.opened()
    with pytest.raises(ConnectionClosedError) as info:
        await c.ws.send(b'{"v": 1, "type": "ping", "x": "\xff\xfe"}', text=True)
        await c.recv(30)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1007  # RFC 6455 8.1: fail the connection
    assert await healthy(running)
    again = await running.opened()
    await still_usable(again)
    await again.close()


async def test_a_flood_is_rate_limited_and_answered_once(tmp_path: Path, agent: Any, bot_specs: Any) -> None:
    r = await start_server(tmp_path, {"smol": agent}, bot_specs, rate_limit_per_s=5.0, rate_limit_burst=10.0)
    try:
        c = await r.opened()
        for i in range(200):
            await c.send_frame("message.create", id=f"f{i}", text="flood")
        codes: dict[str, int] = {}
        acks = 0
        while sum(codes.values()) + acks < 200:
            f = await c.recv(60)
            if f["type"] == "error":
                codes[f["code"]] = codes.get(f["code"], 0) + 1
            elif f["type"] == "message.ack":
                acks += 1
                await c.cancel(f["reply_to"])
        assert acks == 1
        assert set(codes) <= {"rate_limited", "response_in_flight"} and codes["rate_limited"] >= 150
        assert await healthy(r)
        stored = r.server.store.messages(c.session_id)
        assert len([m for m in stored if m["role"] == "user"]) == 1
        await c.close()
    finally:
        await r.server.shutdown()


@pytest.mark.slow
async def test_a_slow_reader_is_dropped_without_stalling_others(tmp_path: Path, agent: Any, bot_specs: Any) -> None:
    r = await start_server(tmp_path, {"smol": agent}, bot_specs, send_buffer_frames=64, rate_limit_per_s=1e6,
                           rate_limit_burst=1e6, ip_rate_limit_per_s=1e6)
    try:
        slow = await r.client(max_queue=1)  # reads (almost) nothing: its socket buffers fill up
        fast = await r.opened()
        ping = json.dumps({"v": 1, "type": "ping"})
        for i in range(400_000):
            if r.server.metrics.errors.get(code="slow_consumer"):
                break
            try:
                await slow.send_raw(ping)
            except ConnectionClosed:  # dropped by the server while we were still sending
                break
            if i % 500 == 0:
                await asyncio.sleep(0)
        assert r.server.metrics.errors.get(code="slow_consumer") == 1
        started = asyncio.get_running_loop().time()
        assert (await fast.ping(10))["type"] == "pong"  # the others are served meanwhile
        assert asyncio.get_running_loop().time() - started < 5
        for _ in range(100):
            if len(r.server.connections) == 1:
                break
            await asyncio.sleep(0.05)
        assert len(r.server.connections) == 1  # the slow one is gone
        await fast.close()
    finally:
        await r.server.shutdown()


async def test_idle_connections_time_out(tmp_path: Path, agent: Any, bot_specs: Any) -> None:
    r = await start_server(tmp_path, {"smol": agent}, bot_specs, idle_timeout_s=0.5)
    try:
        c = await r.opened()
        frame = await c.recv(10)
        assert frame["type"] == "error" and frame["code"] == "idle_timeout" and frame["retryable"] is True
        with pytest.raises(ConnectionClosed) as info:
            await c.recv(10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        again = await r.client()  # the session itself lives on: reconnect and resume it
        opened = await again.open("smol", session_id=c.session_id, resume_from_seq=0, resume_token=c.resume_token)
        assert opened["resumed"] is True
        await again.close()
    finally:
        await r.server.shutdown()


# ------------------------------------------------------------------ lone surrogates, numbers, nesting, types
@pytest.mark.parametrize(
    ("data", "field"),
    [
        ('{"v":1,"type":"\\ud800"}', "type"),
        ('{"v":1,"type":"message.create","id":"m1","text":"hi \\udfff there"}', "text"),
        ('{"v":1,"type":"message.create","id":"m1","text":"hi","metadata":{"k":["ok","\\ud83d"]}}', "metadata.k.1"),
        ('{"v":1,"type":"ping","\\udc00":1}', "\ufffd"),
        ('{"v":1,"type":"session.open","bot":"smol","auth":"\\ud800"}', "auth"),
    ],
)
async def test_lone_surrogates_are_invalid_frames_naming_the_field(tmp_path: Path, data: str, field: str) -> None:
    r = await start_scripted(tmp_path)
    try:
        c = await r.client()
        frame = await error_for(c, data)  # before: the connection died without a close frame
        assert frame["code"] == "invalid_frame" and frame["field"] == field and "surrogate" in frame["message"]
        await still_usable(c)
        await c.open("smol")
        await c.close()
    finally:
        await r.server.shutdown()


async def test_echoed_values_are_sanitised_and_cut_short(tmp_path: Path) -> None:
    r = await start_scripted(tmp_path)
    try:
        c = await r.client()
        for data in (json.dumps({"v": 1, "type": "x" * 20_000}), '{"v":1,"type":"\\ud800' + "y" * 20_000 + '"}',
                     '{"v":1,"type":"ping","' + "k" * 20_000 + '\\ud800":1}',
                     json.dumps({"v": "\ud800" * 3, "type": "ping"}, ensure_ascii=True)):
            frame = await error_for(c, data)
            assert len(frame["message"]) <= 512 and len(frame.get("field", "")) <= 128
            json.dumps(frame, ensure_ascii=False).encode("utf-8")  # encodable: it was sent
        await still_usable(c)
        await c.close()
    finally:
        await r.server.shutdown()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ('{"v":1,"type":"session.open","bot":"smol","resume_from_seq":9223372036854775808}', "resume_from_seq"),
        ('{"v":1,"type":"session.open","bot":"smol","resume_from_seq":18446744073709551616}', "resume_from_seq"),
        ('{"v":1,"type":"session.open","bot":"smol","resume_from_seq":9007199254740992}', "resume_from_seq"),
        ('{"v":1,"type":"session.open","bot":"smol","resume_from_seq":' + "9" * 5000 + "}", "<frame>"),
        ('{"v":1,"type":"ping","n":NaN}', "<frame>"),
        ('{"v":1,"type":"ping","x":' + "[" * 32_000 + "]" * 32_000 + "}", "<frame>"),
        ('{"v":1,"type":"message.create","id":"m1","text":"hi","metadata":' + '{"a":' * 5000 + "1"
         + "}" * 5000 + "}", "<frame>"),
        ('{"v":1,"type":"message.create","id":"m1","text":"hi","metadata":' + '{"a":' * 20 + "1"
         + "}" * 20 + "}", "metadata.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a"),
        ('{"v":1,"type":"message.create","id":"m1","text":"hi","condition":{}}', "condition"),
        ('{"v":1,"type":"message.create","id":"m1","text":"hi","condition":["x"]}', "condition"),
    ],
)
async def test_numbers_nesting_and_types_are_bounded(tmp_path: Path, data: str, field: str) -> None:
    r = await start_scripted(tmp_path)
    try:
        c = await r.client()
        resume = '"resume_from_seq"' in data
        if resume:  # a real session to resume, so that only the number is wrong
            owner = await r.opened()
            data = data.replace('"bot":"smol"', f'"bot":"smol","session_id":"{owner.session_id}",'
                                f'"resume_token":"{owner.resume_token}"')
            await owner.close()
        elif '"message.create"' in data:
            await c.open("smol")
        frame = await error_for(c, data)
        assert frame["code"] == "invalid_frame" and frame["field"] == field, frame
        await still_usable(c)
        await c.close()
        await asyncio.sleep(0.05)
        assert attached(r.server) == 0  # before: the session stayed attached to the dead connection
    finally:
        await r.server.shutdown()


async def test_no_error_path_leaks_an_attached_session(tmp_path: Path) -> None:
    class FailingOnOpen(ScriptedResponder):
        def open_session(self, session_id: str, history: Any, emit: Any = None, *, resumed: bool = False) -> list:
            if resumed:
                raise RuntimeError("flow failed on resume")
            return []

    r = await start_scripted(tmp_path, FailingOnOpen())
    try:
        owners = [await r.opened() for _ in range(5)]
        for owner in owners:
            await owner.close()
        for owner in owners:
            c = await r.client()
            await c.send_frame("session.open", bot="smol", session_id=owner.session_id, resume_from_seq=0,
                               resume_token=owner.resume_token)
            frames = [await c.recv(10), await c.recv(10)]
            assert frames[-1]["type"] == "error" and frames[-1]["code"] == "internal_error"
            await c.close()
        await asyncio.sleep(0.05)
        assert attached(r.server) == 0
    finally:
        await r.server.shutdown()
