"""The server end to end with the real Agent (SmolLM2): streaming, durability order, resume, idempotency, cancel,
one reply in flight, the bounded queue, HTTP endpoints and security. Every frame is checked against the schema."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from xdai.client import Client, ServerError
from xdai.service.metrics import parse

from .conftest import Running, start_server


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers["Content-Type"], r.read().decode()


async def get(url: str) -> tuple[int, str, str]:
    """HTTP GET off the event loop (the server under test runs on this loop)."""
    return await asyncio.to_thread(_get, url)


@pytest.mark.slow  # the service end to end on the real SmolLM2 agent: streaming, grounding, storage
async def test_a_reply_streams_with_grounding_and_is_stored(running: Running) -> None:
    c = await running.client()
    opened = await c.open("smol")
    assert opened["greeting"] and opened["resumed"] is False
    result = await c.chat("谷爱凌是谁？")
    kinds = [f["type"] for f in result.frames]
    assert kinds[:2] == ["message.ack", "response.start"] and kinds[-1] == "response.end"
    assert "response.delta" in kinds
    seqs = [f["seq"] for f in result.frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    end = result.end
    assert end["finish_reason"] in ("stop", "length")
    assert result.text.strip() == end["text"] and end["text"]
    assert end["timings"]["total_ms"] >= end["timings"]["ttft_ms"] > 0
    sources = [g["text"] for g in end["grounding"]]
    assert any("谷爱凌" in s for s in sources), sources  # the QA pair of the default bot's knowledge pack
    stored = running.server.store.messages(c.session_id)
    assert [(m["role"], m["status"]) for m in stored] == [("user", "acked"), ("bot", "complete")]
    assert stored[1]["text"] == end["text"]
    await c.close()


@pytest.mark.slow
async def test_resume_replays_missed_frames_without_duplicates(running: Running) -> None:
    c = await running.client()
    await c.open("smol")
    first = await c.chat("Hello there")
    seen = c.last_seq
    msg = await c.send("Tell me about skiing")
    # drop the socket mid-reply, then come back with resume_from_seq: every frame arrives exactly once
    got: list[dict[str, Any]] = []
    while len(got) < 2:
        got.append(await c.recv())
    await c.ws.close()
    await asyncio.sleep(0.3)
    c2 = await running.client()
    reopened = await c2.open("smol", session_id=c.session_id, resume_from_seq=got[-1]["seq"],
                             resume_token=c.resume_token)
    assert reopened["resumed"] and reopened["session_id"] == c.session_id
    c2.last_seq = got[-1]["seq"]
    rest: list[dict[str, Any]] = []
    while not rest or rest[-1]["type"] != "response.end":
        rest.append(await c2.recv(120))
    frames = got + rest
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(set(seqs)) and seqs[0] == seen + 1
    assert frames[-1]["type"] == "response.end" and frames[-1]["reply_to"] == msg
    text = "".join(f["text"] for f in frames if f["type"] == "response.delta")
    assert text.strip() == frames[-1]["text"]
    # the history now holds both exchanges, and the next turn sees them
    assert len(running.server.hub.sessions[c.session_id].history) == 2
    assert first.end["text"]
    await c2.close()


@pytest.mark.slow
async def test_a_repeated_message_id_never_produces_a_second_reply(running: Running) -> None:
    c = await running.opened()
    result = await c.chat("hi", id="same-id")
    assert result.end is not None
    again = await c.chat("hi", id="same-id", timeout=10)
    assert [f["type"] for f in again.frames] == ["message.ack"] and again.frames[0]["duplicate"] is True
    bots = [m for m in running.server.store.messages(c.session_id) if m["role"] == "bot"]
    assert len(bots) == 1
    await c.close()


async def test_one_reply_in_flight_and_cancel(running: Running) -> None:
    c = await running.opened()
    first = await c.send("Write a long poem about the sea")
    await c.send("and another", id="second")
    frames = []
    cancelled = False
    async for f in c.stream(first):
        frames.append(f)
        if f["type"] == "response.start" and not cancelled:
            await c.cancel(first)
            cancelled = True
    end = next(f for f in frames if f["type"] == "response.end")
    assert end["finish_reason"] in ("cancelled", "stop", "length")
    # the second message was refused while the first was in flight
    refused = await _until(c, lambda f: f.get("reply_to") == "second")
    assert refused["type"] == "error" and refused["code"] == "response_in_flight" and refused["retryable"]
    await c.cancel("nothing-here")
    err = await _until(c, lambda f: f["type"] == "error")
    assert err["code"] == "not_in_flight" and err["reply_to"] == "nothing-here"
    stored = {m["id"]: m for m in running.server.store.messages(c.session_id)}
    assert "second" not in stored
    await c.close()


async def _until(c: Client, pred: Any) -> dict[str, Any]:
    while True:
        f = await c.recv(30)
        if pred(f):
            return f


async def test_a_full_queue_answers_busy_at_once(tmp_path: Path, agent: Any, bot_specs: Any) -> None:
    from xdai.service.sessions import SQLiteSessionStore

    store = SQLiteSessionStore(tmp_path / "normal.sqlite3", synchronous="NORMAL")  # commits inline on the loop
    assert store.inline
    r = await start_server(tmp_path, {"smol": agent}, bot_specs, store, workers=1, queue_size=0)
    try:
        a, b = await r.opened(), await r.opened()
        ma, mb = await a.send("first"), await b.send("second")
        ra = [f async for f in a.stream(ma)]
        rb = [f async for f in b.stream(mb)]
        codes = [f.get("code") for f in ra + rb if f["type"] == "error"]
        ends = [f for f in ra + rb if f["type"] == "response.end"]
        assert codes == ["busy"] and len(ends) == 1
        busy = next(f for f in ra + rb if f["type"] == "error")
        assert busy["retryable"] is True and busy["retry_after_ms"] > 0
        metrics = parse((await get(f"{r.http}/metrics"))[2])
        assert metrics['xdai_errors_total{code="busy"}'] == 1
        await a.close()
        await b.close()
    finally:
        await r.server.shutdown()


async def test_http_endpoints(running: Running) -> None:
    status, kind, body = await get(f"{running.http}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, kind, body = await get(f"{running.http}/bots")
    assert kind == "application/json" and [b["name"] for b in json.loads(body)] == ["smol"]
    c = await running.opened()
    await c.chat("hi")
    status, kind, body = await get(f"{running.http}/metrics")
    assert kind.startswith("text/plain")
    m = parse(body)
    assert m['xdai_turns_total{bot="smol",finish_reason="stop"}'] + m.get(
        'xdai_turns_total{bot="smol",finish_reason="length"}', 0) >= 1
    assert m["xdai_ack_latency_seconds_count"] >= 1 and "xdai_queue_depth" in m
    status, kind, body = await get(f"{running.http}/")
    assert "app.js" in body and kind.startswith("text/html")
    assert (await get(f"{running.http}/static/app.js"))[1].startswith(("text/javascript", "application/javascript"))
    with pytest.raises(urllib.error.HTTPError) as info:
        await get(f"{running.http}/static/../server.py")
    assert info.value.code == 404
    await c.close()


async def test_api_keys_and_origins(tmp_path: Path, agent: Any, bot_specs: Any) -> None:
    r = await start_server(tmp_path, {"smol": agent}, bot_specs, api_keys=["s3cret"],
                           allowed_origins=["http://good.example"])
    try:
        with pytest.raises(InvalidStatus) as info:
            await r.client(api_key="wrong")
        assert info.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as info:
            await r.client(origin="http://evil.example")
        assert info.value.response.status_code == 403
        ok = await r.client(api_key="s3cret", origin="http://good.example")
        await ok.open("smol")
        await ok.close()
        anon = await r.client()
        with pytest.raises(ServerError) as err:
            await anon.open("smol")
        assert err.value.code == "unauthorized"
        await anon.open("smol", auth="s3cret")  # the same connection, now with the key in session.open
        await anon.close()
    finally:
        await r.server.shutdown()
    assert "s3cret" not in (tmp_path / "sessions.sqlite3").read_bytes().decode("latin-1")


async def test_session_open_errors(running: Running) -> None:
    c = await running.client()
    with pytest.raises(ServerError) as err:
        await c.open("nobody")
    assert err.value.code == "bot_not_found"
    with pytest.raises(ServerError) as err:
        await c.open("smol", session_id="0123456789abcdef", resume_from_seq=4)
    assert err.value.code == "session_not_found"
    await c.open("smol")
    with pytest.raises(ServerError) as err:
        await c.open("smol")
    assert err.value.code == "session_already_open"
    assert (await c.ping())["type"] == "pong"
    await c.close()


@pytest.mark.slow  # a real redis-server, two servers, three real replies
async def test_two_replicas_share_sessions_through_redis(tmp_path: Path, agent: Any, bot_specs: Any,
                                                         redis_url: str) -> None:
    from xdai.service.sessions import RedisSessionStore

    prefix = f"replicas-{tmp_path.name}"
    a = await start_server(tmp_path / "a", {"smol": agent}, bot_specs, RedisSessionStore(redis_url, prefix=prefix),
                           instance_id="replica-a")
    b = await start_server(tmp_path / "b", {"smol": agent}, bot_specs, RedisSessionStore(redis_url, prefix=prefix),
                           instance_id="replica-b")
    try:
        c = await a.opened()
        first = await c.chat("Hello from replica A", id="a1")
        seen = c.last_seq
        await c.close()
        # the load balancer sends the reconnect to the other replica: same session, same history, seq goes on
        c2 = await b.client()
        c2.last_seq = seen
        opened = await c2.open("smol", session_id=c.session_id, resume_from_seq=seen, resume_token=c.resume_token)
        assert opened["resumed"] and opened["last_seq"] == seen and opened["greeting"] == c.greeting
        assert len(b.server.hub.sessions[c.session_id].history) == 1
        retry = await c2.chat("Hello from replica A", id="a1", timeout=30)  # the id is known on B too
        assert retry.frames[0]["duplicate"] is True
        second = await c2.chat("And now replica B")
        assert second.frames[0]["seq"] > seen and second.end["finish_reason"] in ("stop", "length")
        stored = RedisSessionStore(redis_url, prefix=prefix).messages(c.session_id)
        assert [m["text"] for m in stored if m["role"] == "bot"] == [first.end["text"], second.end["text"]]
        await c2.close()
    finally:
        await a.server.shutdown()
        await b.server.shutdown()
