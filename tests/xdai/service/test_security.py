"""Security through the real server and real client frames (issue 13, items 1-4 and 13): a session belongs to its
owner, per-address limits survive reconnects, one address cannot take every generation slot, abandoned turns end,
HTTP endpoints need a key when keys are set and show no paths, HTTP methods and duplicate headers are answered
properly. The bot is a `ScriptedResponder`: the rules under test are the server's, not the model's."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from tests.fakes import ScriptedResponder
from xdai.client import Client, ServerError
from xdai.config import ConfigError, load_config
from xdai.service.protocol import BotInfo

from .conftest import Running, attached, start_scripted

SLOW = "从前有座山，山里有座庙，庙里有个老和尚在讲故事。" * 40  # ~1000 pieces


async def raw_http(r: Running, request: str) -> tuple[int, dict[str, list[str]], bytes]:
    """Send one raw HTTP/1.1 request; (status, headers by lower-case name, body) of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", r.server.port)
    writer.write(request.replace("\n", "\r\n").encode() + b"\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split()[1]), headers, body


def get(path: str, *extra: str) -> str:
    return "\n".join([f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *extra, ""])


def upgrade(*extra: str) -> str:
    return get("/ws", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
               "Sec-WebSocket-Version: 13", *extra)


async def nothing_more(c: Client) -> None:
    """The next frame a client gets is the answer to its ping: nothing was replayed or pushed to it."""
    await c.send_frame("ping")
    assert (await c.recv(10))["type"] == "pong"


# ------------------------------------------------------------------------------------ 1. sessions have owners
async def test_a_session_belongs_to_the_api_key_that_opened_it(tmp_path: Path) -> None:
    bot = ScriptedResponder(replies=lambda text: f"you said: {text}", delay_s=0.002)  # the long one: ~2 s
    r = await start_scripted(tmp_path, bot, api_keys=["key-a", "key-b"])
    try:
        a = await r.client(api_key="key-a")
        assert "resume_token" not in await a.open("smol")  # the key is the owner: no token needed
        secret = await a.chat("my secret is 4711")
        assert "4711" in secret.end["text"]
        b = await r.client(api_key="key-b")
        with pytest.raises(ServerError) as err:  # B holds A's session id (leaked), and its own valid key
            await b.open("smol", session_id=a.session_id, resume_from_seq=0)
        assert err.value.code == "forbidden" and err.value.frame["field"] == "session_id"
        await nothing_more(b)  # nothing of A's was replayed to B
        # the key in session.open instead of the header: the same
        b2 = await r.client()
        with pytest.raises(ServerError) as err:
            await b2.open("smol", session_id=a.session_id, resume_from_seq=0, auth="key-b")
        assert err.value.code == "forbidden"
        # B, with a session of its own, cannot post into A's or cancel A's reply either
        await b.open("smol")
        await b.send_frame("message.create", id="intrude", text="hi", session_id=a.session_id)
        refused = await b.recv(10)
        assert (refused["type"], refused["code"], refused["reply_to"]) == ("error", "forbidden", "intrude")
        slow = await a.send(SLOW)
        while (await a.recv(10))["type"] != "response.start":
            pass
        await b.send_frame("response.cancel", reply_to=slow, session_id=a.session_id)
        refused = await b.recv(10)
        assert (refused["type"], refused["code"]) == ("error", "forbidden")
        # A was neither evicted nor cancelled: its reply streams on to the end and its connection works
        end = await a.recv_matching(lambda f: f["type"] == "response.end", 60)
        assert end["finish_reason"] == "stop" and end["reply_to"] == slow
        assert (await a.ping())["type"] == "pong"
        stored = r.server.store.messages(a.session_id)
        assert [m["id"] for m in stored if m["role"] == "user"] == [secret.id, slow]
        # the owner's own key resumes it from another connection
        a2 = await r.client(api_key="key-a")
        opened = await a2.open("smol", session_id=a.session_id, resume_from_seq=0)
        assert opened["resumed"] is True
        for c in (a, a2, b, b2):
            await c.close()
    finally:
        await r.server.shutdown()


async def test_without_keys_a_session_resumes_only_with_its_resume_token(tmp_path: Path) -> None:
    r = await start_scripted(tmp_path, ScriptedResponder(replies=["秘密是 4711"]))
    try:
        a = await r.client()
        opened = await a.open("smol")
        token = opened["resume_token"]
        assert token and a.resume_token == token
        await a.chat("tell me the secret")
        intruder = await r.client()
        for guess in (None, "x" * 43, token[:-2] + ("AA" if token[-2:] != "AA" else "BB")):
            with pytest.raises(ServerError) as err:
                await intruder.open("smol", session_id=a.session_id, resume_from_seq=0, resume_token=guess)
            assert err.value.code == "forbidden"
        await nothing_more(intruder)
        await nothing_more(a)  # the owner was not taken over
        assert r.server.hub.sessions[a.session_id].sink is not None
        again = await r.client()
        reopened = await again.open("smol", session_id=a.session_id, resume_from_seq=0, resume_token=token)
        assert reopened["resumed"] is True and "resume_token" not in reopened
        replayed = await again.recv_matching(lambda f: f["type"] == "response.end", 10)  # the owner's history
        assert "4711" in replayed["text"]
        for c in (a, intruder, again):
            await c.close()
    finally:
        await r.server.shutdown()
    raw = (tmp_path / "sessions.sqlite3").read_bytes()
    assert token.encode() not in raw  # stored as a digest only
    with sqlite3.connect(tmp_path / "sessions.sqlite3") as db:
        assert db.execute("SELECT principal FROM sessions").fetchone()[0].startswith("token:")


async def test_a_session_from_before_owners_is_not_resumable_by_anyone(tmp_path: Path) -> None:
    r = await start_scripted(tmp_path)
    try:
        r.server.store.create("legacy0000000000", "smol", "hi")  # no principal: made by an older server
        c = await r.client()
        with pytest.raises(ServerError) as err:
            await c.open("smol", session_id="legacy0000000000", resume_from_seq=0)
        assert err.value.code == "forbidden"
        assert attached(r.server) == 0
        await c.close()
    finally:
        await r.server.shutdown()


# ------------------------------------------------------------------- 2. per-address limits survive reconnects
async def test_the_address_frame_bucket_survives_reconnects(tmp_path: Path) -> None:
    r = await start_scripted(tmp_path, ip_rate_limit_per_s=0.5, rate_limit_burst=6.0)
    try:
        c = await r.client()
        for _ in range(6):  # the address's whole burst
            assert (await c.ping())["type"] == "pong"
        await c.close()
        again = await r.client()  # a fresh connection from the same address starts with an empty bucket
        await again.send_frame("ping")
        frame = await again.recv(10)
        assert frame["type"] == "error" and frame["code"] == "rate_limited" and frame["retry_after_ms"] > 0
        await again.close()
    finally:
        await r.server.shutdown()


async def test_failed_keys_back_off_per_address_across_reconnects(tmp_path: Path) -> None:
    r = await start_scripted(tmp_path, api_keys=["right"], auth_failures_before_backoff=3)
    try:
        statuses = []
        started = time.monotonic()
        for _ in range(30):  # serial reconnects with a wrong key
            status, headers, _ = await raw_http(r, upgrade("Authorization: Bearer wrong"))
            statuses.append(status)
            if status == 429:
                assert int(headers["retry-after"][0]) >= 1
        elapsed = time.monotonic() - started
        assert statuses[:4] == [401] * 4 and statuses[4] == 429
        checks = r.server.metrics.auth_failures.get()  # keys actually compared: the backoff doubles from 0.5 s
        assert checks <= 4 + int(elapsed / 0.5).bit_length() + 1, (checks, elapsed, statuses)
        assert (await raw_http(r, get("/metrics", "Authorization: Bearer right")))[0] == 429  # even a good key
        # the key in session.open counts against the same address
        c = await r.client()
        await c.send_frame("session.open", bot="smol", auth="wrong-again")
        frame = await c.recv(10)
        assert frame["code"] == "rate_limited" and frame["retry_after_ms"] > 0 and frame["field"] == "auth"
        await c.close()
    finally:
        await r.server.shutdown()


async def test_new_sessions_are_counted_per_address(tmp_path: Path) -> None:
    r = await start_scripted(tmp_path, ip_session_rate_per_s=0.01, ip_session_burst=3.0)
    try:
        owner = await r.client()
        opened = await owner.open("smol")
        for _ in range(2):
            c = await r.client()
            await c.open("smol")
            await c.close()
        c = await r.client()
        with pytest.raises(ServerError) as err:
            await c.open("smol")
        assert err.value.code == "rate_limited" and err.value.frame["retry_after_ms"] > 0
        # resuming is not creating: the owner can still come back
        resumed = await c.open("smol", session_id=opened["session_id"], resume_token=opened["resume_token"])
        assert resumed["resumed"] is True
        await owner.close()
        await c.close()
        with sqlite3.connect(tmp_path / "sessions.sqlite3") as db:
            assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 3
    finally:
        await r.server.shutdown()


def test_the_address_book_is_a_bounded_lru_with_a_ttl() -> None:
    from xdai.service.security import AddressBook, AddressLimits

    book = AddressBook(AddressLimits(capacity=100, ttl_s=0.05))
    for i in range(1000):
        book.get(f"10.0.{i // 256}.{i % 256}")
    assert len(book.entries) <= 100
    assert book.connect("192.0.2.1")  # a connected address is never dropped
    time.sleep(0.1)
    book.get("198.51.100.1")
    assert set(book.entries) == {"192.0.2.1", "198.51.100.1"}


# ------------------------------------------------------------------------ 3. turns per address, orphan turns
async def test_one_address_cannot_take_every_generation_slot(tmp_path: Path) -> None:
    bot = ScriptedResponder(replies=[SLOW], delay_s=0.01)
    r = await start_scripted(tmp_path, bot, workers=4, queue_size=8, max_turns_per_ip=2)
    try:
        clients = [await r.opened() for _ in range(3)]
        ids = [await c.send(SLOW[:5]) for c in clients]
        for c, msg in zip(clients[:2], ids[:2], strict=True):
            assert (await c.recv_matching(lambda f, m=msg: f.get("reply_to") == m, 10))["type"] == "message.ack"
        refused = await clients[2].recv_matching(lambda f: f.get("reply_to") == ids[2], 10)
        assert refused["type"] == "error" and refused["code"] == "too_many_turns" and refused["retryable"]
        assert r.server.pool.admitted == 2  # 10 slots, 2 taken
        await clients[0].cancel(ids[0])
        await clients[0].recv_matching(lambda f: f["type"] == "response.end", 30)
        retry = await clients[2].send("again")
        assert (await clients[2].recv_matching(lambda f: f.get("reply_to") == retry, 10))["type"] == "message.ack"
        for c in clients:
            await c.close()
    finally:
        await r.server.shutdown()


async def test_turns_of_clients_that_left_are_cancelled_after_the_grace(tmp_path: Path) -> None:
    bot = ScriptedResponder(replies=[SLOW, "好的。"], delay_s=0.01)  # the first reply would take ~10 s
    r = await start_scripted(tmp_path, bot, workers=1, queue_size=4, orphan_turn_grace_s=0.5)
    try:
        leaving = [await r.opened() for _ in range(4)]
        for c in leaving:
            await c.send("tell me a long story")
            await c.recv_matching(lambda f: f["type"] == "message.ack", 10)
        # the first one comes back within the grace: its reply carries on
        keeper = leaving[0]
        await keeper.ws.close()
        await asyncio.sleep(0.2)
        back = await r.client()
        await back.open("smol", session_id=keeper.session_id, resume_token=keeper.resume_token)
        for c in leaving[1:]:
            await c.ws.close()
        await asyncio.sleep(1.0)
        assert r.server.hub.sessions[keeper.session_id].turn is not None  # resumed: not cancelled
        await back.ws.close()
        started = time.monotonic()
        newcomer = await r.opened()
        reply = await newcomer.chat("hello", timeout=10)  # served at once: the abandoned turns were cancelled
        assert reply.end["finish_reason"] == "stop" and time.monotonic() - started < 5
        for c in leaving:
            bot_rows = [m for m in r.server.store.messages(c.session_id) if m["role"] == "bot"]
            assert [m["status"] for m in bot_rows] == ["cancelled"]
        assert r.server.pool.admitted == 0 and r.server.quota.counts == {}
        await newcomer.close()
    finally:
        await r.server.shutdown()


# ----------------------------------------------------------------------- 4. HTTP needs a key, shows no paths
ABSOLUTE = re.compile(r"(?<![\w:/.])/(?:[\w.-]+/)+[\w.-]+")


async def test_http_endpoints_need_a_key_when_keys_are_set_and_show_no_paths(tmp_path: Path) -> None:
    info = BotInfo("smol", persona="/srv/xdai/personas/xiaodai.yaml", model="/srv/models/secret-model.gguf",
                   description="reads /srv/xdai/knowledge/pack.jsonl")
    bot = ScriptedResponder(fail_with=FileNotFoundError("/srv/models/secret-model.gguf: no such file"))
    r = await start_scripted(tmp_path, bot, bots={"smol": info}, api_keys=["k"])
    try:
        for path in ("/bots", "/metrics"):
            status, headers, body = await raw_http(r, get(path))
            assert status == 401 and headers["www-authenticate"] == ['Bearer realm="xdai"'], body
            assert (await raw_http(r, get(path, "Authorization: Bearer nope")))[0] == 401
        status, _, body = await raw_http(r, get("/bots", "Authorization: Bearer k"))
        assert status == 200
        listed = json.loads(body)
        assert listed[0]["model"] == "secret-model.gguf" and listed[0]["persona"] == "xiaodai.yaml"
        assert (await raw_http(r, get("/metrics", "Authorization: Bearer k")))[0] == 200
        status, _, body = await raw_http(r, get("/healthz"))
        assert status == 200 and json.loads(body) == {"status": "ok"}
        c = await r.client(api_key="k")
        await c.open("smol")
        failed = await c.chat("hi")
        assert failed.errors[-1]["code"] == "backend_error" and "secret-model.gguf" in failed.errors[-1]["message"]
        bodies = [body, *(json.dumps(f, ensure_ascii=False).encode() for f in failed.frames)]
        bodies += [(await raw_http(r, get(p, "Authorization: Bearer k")))[2] for p in ("/bots", "/nowhere/x/y")]
        for text in bodies:
            assert not ABSOLUTE.search(text.decode()), text
        await c.close()
    finally:
        await r.server.shutdown()


# ---------------------------------------------------------------------------------------------- 13. HTTP
async def test_http_methods_and_duplicate_headers(tmp_path: Path) -> None:
    r = await start_scripted(tmp_path)
    try:
        status, headers, page = await raw_http(r, get("/"))
        assert status == 200 and page
        status, headers, body = await raw_http(r, get("/").replace("GET", "HEAD", 1))
        assert status == 200 and body == b"" and headers["content-length"] == [str(len(page))]
        for method in ("POST", "PUT", "TRACE", "CONNECT", "DELETE", "BREW"):
            status, headers, body = await raw_http(r, get("/").replace("GET", method, 1))
            assert status == 405 and headers["allow"] == ["GET, HEAD"], (method, status)
        status, headers, _ = await raw_http(r, get("/ws").replace("GET", "POST", 1))
        assert status == 405 and headers["allow"] == ["GET"]
        for name, value in (("Origin", "http://a.example"), ("Authorization", "Bearer x")):
            status, _, body = await raw_http(r, upgrade(f"{name}: {value}", f"{name}: {value}"))
            assert status == 400 and name.encode() in body
        assert (await raw_http(r, get("/healthz")))[0] == 200  # and the server is fine
    finally:
        await r.server.shutdown()


async def test_configured_origins_are_normalised_at_load(tmp_path: Path) -> None:
    config = tmp_path / "xdai.yaml"
    config.write_text("server:\n  allowed_origins: [' http://Good.example/ ', 'https://chat.example:8443']\n",
                      encoding="utf-8")
    assert load_config(config, environ={}).server.allowed_origins == ["http://good.example",
                                                                     "https://chat.example:8443"]
    config.write_text("server:\n  allowed_origins: ['http://ok.example', 'good.example/chat']\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(config, environ={})
    assert "server.allowed_origins[1]" in str(err.value) and "good.example/chat" in str(err.value)
    r = await start_scripted(tmp_path, allowed_origins=[" http://good.example/ "])  # as written, in code too
    try:
        ok = await r.client(origin="http://good.example")
        await ok.open("smol")
        await ok.close()
        with pytest.raises(InvalidStatus) as info:
            await r.client(origin="http://evil.example")
        assert info.value.response.status_code == 403
    finally:
        await r.server.shutdown()
