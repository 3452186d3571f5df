"""The /eval rating desk through the real server: one task at a time, answers stored once, raters apart, checks
that end a rater's study, and the chat page's security (Origin allow-list, API keys at the handshake or in hello)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.fakes import ScriptedResponder
from xdai.eval.pairs import BROKEN, ENGAGING, HUMAN, TURING, PairTask, Side, Study, report
from xdai.service.judgments import SQLiteJudgmentStore
from xdai.service.rating import Rater as RaterState
from xdai.service.rating import rater_id

from .conftest import Running, start_server

CTX = [{"speaker": "user", "text": "你好"}, {"speaker": "bot", "text": "你好呀"}, {"speaker": "user", "text": "故宫在哪？"}]


def make_study(eval_dir: Path, *, scale: bool = False) -> Study:
    bot, human = Side("full", "在北京。"), Side(HUMAN, "故宫在北京市中心。")
    tasks = [PairTask("t1", CTX, ["故宫 位置 北京"], bot, human), PairTask("t2", CTX, [], human, bot),
             PairTask("t3", CTX, ["故宫 面积 72万平方米"], bot, human),
             PairTask("chk", CTX, [], human, Side(BROKEN, "北京 故宫 故宫"), check=True)]
    questions = [TURING, replace(ENGAGING, scale=scale)]
    study = Study("s1", "小呆还是人？", ("full", HUMAN), questions, tasks)
    eval_dir.mkdir(parents=True, exist_ok=True)
    study.save(eval_dir / "s1.json")
    return study


async def start(tmp_path: Path, **overrides: Any) -> Running:
    return await start_server(tmp_path, {"smol": ScriptedResponder()}, {}, eval_dir=str(tmp_path / "studies"),
                              **overrides)


class Rater:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        return json.loads(await self.ws.recv())


async def rater(r: Running, **kwargs: Any) -> Rater:
    return Rater(await connect(f"ws://127.0.0.1:{r.server.port}/eval/ws", **kwargs))


async def test_raters_answer_one_task_at_a_time_once_each(tmp_path: Path) -> None:
    study = make_study(tmp_path / "studies")
    r = await start(tmp_path)
    try:
        a = await rater(r)
        await a.send(type="answer", task="t1", answers={})
        assert (await a.recv())["code"] == "no_study"
        # a rater token of a's own (the server issues one when none is given, as for b below), chosen so that
        # a meets the check last: each rater sees the tasks in an order of their own
        token = next(tok for tok in (f"rater-a-{i:020d}" for i in range(1000))
                     if RaterState(study, tok, []).order[-1].id == "chk")
        await a.send(type="hello", study="s1", rater=token)
        hello = await a.recv()
        assert hello["type"] == "study" and hello["progress"] == {"done": 0, "total": 4} and hello["rater"] == token
        assert [q["id"] for q in hello["study"]["questions"]] == ["human", "engaging"]
        first = await a.recv()
        assert first["type"] == "task" and set(first["task"]) == {"id", "context", "knowledge", "left", "right"}
        assert "full" not in json.dumps(first) and "check" not in json.dumps(first)  # sides and checks stay secret
        t = first["task"]["id"]
        await a.send(type="answer", task=t, answers={"human": "tie", "engaging": "left"})
        bad = await a.recv()
        assert bad["code"] == "bad_frame" and "'human'" in bad["message"]  # no ties on the Turing question
        await a.send(type="answer", task=t, answers={"human": "left", "engaging": "tie"}, scores={"engaging": [3, 4]})
        assert (await a.recv())["code"] == "bad_frame"  # no scale on this study
        await a.send(type="answer", task=t, answers={"human": "left", "engaging": "tie"})
        assert await a.recv() == {"type": "recorded", "task": t, "new": True}
        second = await a.recv()
        assert second["progress"] == {"done": 1, "total": 4} and second["task"]["id"] != t
        await a.send(type="answer", task=t, answers={"human": "right", "engaging": "right"})  # again: not counted
        assert await a.recv() == {"type": "recorded", "task": t, "new": False}
        assert (await a.recv())["task"]["id"] == second["task"]["id"]
        await a.send(type="skip", task=second["task"]["id"])
        assert (await a.recv())["new"] is True
        third = await a.recv()
        assert third["progress"]["done"] == 2
        await a.ws.close()

        again = await rater(r)  # the same rater comes back: the answered tasks stay answered
        await again.send(type="hello", study="s1", rater=token)
        assert (await again.recv())["progress"] == {"done": 2, "total": 4}
        assert (await again.recv())["task"]["id"] == third["task"]["id"]

        b = await rater(r)  # another rater: a token of their own, none of a's answers
        await b.send(type="hello", study="s1")
        hb = await b.recv()
        assert hb["rater"] != token and hb["progress"] == {"done": 0, "total": 4}
        seen = set()
        task = await b.recv()
        while task["type"] == "task":
            tid = task["task"]["id"]
            seen.add(tid)
            answer = "left" if tid in ("t1", "chk") else "right"
            await b.send(type="answer", task=tid, answers={"human": answer, "engaging": answer})
            assert (await b.recv())["new"] is True
            task = await b.recv()
        assert task == {"type": "done", "reason": "finished", "progress": {"done": 4, "total": 4}}
        assert seen == {"t1", "t2", "t3", "chk"}

        # a fails the check: told the study is over, at once and on every return
        tid = third["task"]["id"]
        while tid != "chk":
            await again.send(type="skip", task=tid)
            await again.recv()
            tid = (await again.recv())["task"]["id"]
        await again.send(type="answer", task="chk", answers={"human": "right", "engaging": "right"})
        assert (await again.recv())["new"] is True
        assert (await again.recv())["reason"] == "dropped"
        back = await rater(r)
        await back.send(type="hello", study="s1", rater=token)
        await back.recv()
        assert (await back.recv())["reason"] == "dropped"
    finally:
        await r.server.shutdown()
    store = SQLiteJudgmentStore(tmp_path / "sessions.sqlite3")  # durable, in the session database
    rep = report(study, store.judgments("s1"))
    store.close()
    assert len(rep["dropped_raters"]) == 1 and len(rep["raters"]) == 1
    # b: t1 left = bot ("full"), t2 right = bot, t3 right = human -> full 2 : 1 human
    assert rep["questions"]["human"]["people"]["wins"] == [2, 1]


async def test_the_chat_pages_security_guards_the_rating_socket(tmp_path: Path) -> None:
    make_study(tmp_path / "studies")
    r = await start(tmp_path, api_keys=["sekret"], allowed_origins=["http://rate.example"])
    try:
        with pytest.raises(InvalidStatus) as refused:
            await rater(r, origin="http://evil.example")
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as refused:
            await rater(r, additional_headers={"Authorization": "Bearer wrong"})
        assert refused.value.response.status_code == 401
        c = await rater(r, origin="http://rate.example")
        await c.send(type="hello", study="s1")
        assert (await c.recv())["code"] == "unauthorized"
        await c.send(type="hello", study="s1", auth="wrong")
        assert (await c.recv())["code"] == "unauthorized"
        await c.send(type="hello", study="s1", auth="sekret")
        assert (await c.recv())["type"] == "study"
        h = await rater(r, additional_headers={"Authorization": "Bearer sekret"})
        await h.send(type="hello", study="nope")
        assert (await h.recv())["code"] == "no_study"
        await h.send(type="hello", study="../s1")
        assert (await h.recv())["code"] == "bad_study"
        await h.send(type="hello", study="s1", rater="x")
        assert (await h.recv())["code"] == "bad_frame"
        await h.ws.send("not json")
        assert (await h.recv())["code"] == "bad_frame"
        async with httpx.AsyncClient(base_url=r.http) as http:
            for path in ("/eval", "/eval/s1"):
                page = await http.get(path)
                assert page.status_code == 200 and 'src="/static/eval.js"' in page.text
            assert (await http.get("/static/eval.js")).status_code == 200
    finally:
        await r.server.shutdown()



async def test_replicas_share_the_judgments_through_redis(tmp_path: Path, redis_url: str) -> None:
    from xdai.service.judgments import RedisJudgmentStore
    from xdai.service.sessions import RedisSessionStore

    study = make_study(tmp_path / "studies")
    replicas = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        replicas.append(await start_server(tmp_path / name, {"smol": ScriptedResponder()}, {},
                                           store=RedisSessionStore(redis_url), session_store="redis",
                                           redis_url=redis_url, instance_id=name, eval_dir=str(tmp_path / "studies")))
    try:
        a = await rater(replicas[0])
        await a.send(type="hello", study="s1")
        token = (await a.recv())["rater"]
        t = (await a.recv())["task"]["id"]
        await a.send(type="skip", task=t)
        assert (await a.recv())["new"] is True
        await a.recv()
        b = await rater(replicas[1])  # the same rater, routed to the other replica
        await b.send(type="hello", study="s1", rater=token)
        assert (await b.recv())["progress"]["done"] == 1
        assert (await b.recv())["task"]["id"] != t
        await b.send(type="answer", task=t, answers={"human": "left", "engaging": "left"})
        assert (await b.recv())["new"] is False  # answered on the other replica: not counted twice
    finally:
        for r in replicas:
            await r.server.shutdown()
    store = RedisJudgmentStore(redis_url)
    mine = store.answered(study.id, rater_id(token))
    store.close()
    assert sorted((j.task, j.question, j.answer) for j in mine) == [(t, "engaging", "skip"), (t, "human", "skip")]
