"""The rating desk behind ``/eval``: raters answer a pairwise study over a WebSocket at ``/eval/ws``.

Answers travel over a socket, not a form, because the server answers HTTP from websockets' handshake hook, which
takes no request body; the socket also gets the chat page's security as it is: the Origin allow-list and a Bearer
key at the handshake (the server checks both for this path as for ``/ws``), or the key in the first frame, with the
same per-address backoff for wrong keys and the same frame rate limits.

The exchange (JSON text frames)::

    client: {"type": "hello", "study": ID, "auth"?: KEY, "rater"?: TOKEN}
    server: {"type": "study", "study": {id, title, questions, show_knowledge}, "rater": TOKEN, "progress": {...}}
    server: {"type": "task", "task": {id, context, knowledge, left, right}, "progress": {done, total}}
    client: {"type": "answer", "task": ID, "answers": {question: left|right|tie}, "scores"?: {question: [l, r]}}
    client: {"type": "skip", "task": ID}
    server: {"type": "recorded", "task": ID, "new": bool}, then the next task, or
            {"type": "done", "reason": "finished" | "dropped", "progress": {...}}
    server: {"type": "error", "code": ..., "message": ...}

A rater is whoever holds the rater token (the server issues one at the first hello; the page keeps it per study):
only a digest of it is stored, and a rater is sent only their own progress, never anyone's answers nor which
side is which system or which task is a check. A rater whose check answers are wrong is told "done" and gets no
more tasks; the report drops all their answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from xdai.config import ServerConfig
from xdai.eval.pairs import Judgment, PairTask, Study, StudyError, failed_raters, study_file
from xdai.service.judgments import JudgmentStore, open_judgments
from xdai.service.metrics import Metrics
from xdai.service.security import AddressBook, KeyRing, TokenBucket
from xdai.service.sessions import StorageError

log = logging.getLogger(__name__)
EVAL_PAGE = "/eval"
EVAL_WS = "/eval/ws"
CLOSE_NORMAL, CLOSE_GOING_AWAY = 1000, 1001
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,100}$")


def is_eval_page(path: str) -> bool:
    """``/eval`` and ``/eval/<study id>`` (a study's link) are the rating page; ``/eval/ws`` is its socket."""
    return path == EVAL_PAGE or (path.startswith(EVAL_PAGE + "/") and path != EVAL_WS)


def rater_id(token: str) -> str:
    return "rater:" + hashlib.sha256(f"xdai-rater\0{token}".encode()).hexdigest()[:32]


class Refused(Exception):
    """A frame the desk will not act on: sent back as an error frame (the socket stays open)."""

    def __init__(self, code: str, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after_ms = code, message, retry_after_ms


class StudyShelf:
    """Studies read from `eval_dir` by id, re-read when their file changes."""

    def __init__(self, eval_dir: str | Path) -> None:
        self.eval_dir = Path(eval_dir)
        self._cache: dict[str, tuple[float, Study]] = {}

    def get(self, study_id: str) -> Study:
        try:
            path = study_file(self.eval_dir, study_id)
        except StudyError as exc:
            raise Refused("bad_study", str(exc)) from None
        try:
            mtime = path.stat().st_mtime
        except OSError:
            raise Refused("no_study", f"no study {study_id!r} here: check the link") from None
        cached = self._cache.get(study_id)
        if cached is None or cached[0] != mtime:
            try:
                study = Study.load(path)
            except StudyError as exc:
                log.error("study %s: %s", study_id, exc)
                raise Refused("bad_study", f"study {study_id!r} cannot be read; tell its owner") from None
            if study.id != study_id:
                log.error("study file %s holds study %r", path, study.id)
                raise Refused("bad_study", f"study {study_id!r} cannot be read; tell its owner") from None
            cached = self._cache[study_id] = (mtime, study)
        return cached[1]


class Rater:
    """One rater in one study, as a connection knows them."""

    def __init__(self, study: Study, token: str, answered: list[Judgment]) -> None:
        self.study, self.token, self.id = study, token, rater_id(token)
        self.answers = list(answered)
        self.done = {j.task for j in answered}
        # each rater sees the tasks in an order of their own, so no task is always seen first or tired last
        self.order = sorted(study.tasks, key=lambda t: hashlib.sha1(f"{self.id}\x1f{t.id}".encode()).hexdigest())

    @property
    def dropped(self) -> bool:
        return bool(failed_raters(self.study, self.answers))

    def next_task(self) -> PairTask | None:
        return next((t for t in self.order if t.id not in self.done), None)

    def progress(self) -> dict[str, int]:
        return {"done": len(self.done), "total": len(self.study.tasks)}


class RatingDesk:
    """Serves ``/eval/ws`` connections. The judgment store opens at the first one (a chat-only server never
    touches it) unless one is given."""

    def __init__(self, cfg: ServerConfig, keys: KeyRing, addresses: AddressBook, metrics: Metrics, *,
                 store: JudgmentStore | None = None) -> None:
        self.cfg, self.keys, self.addresses, self.metrics = cfg, keys, addresses, metrics
        self.shelf = StudyShelf(cfg.eval_dir)
        self._store = store
        self._opening = asyncio.Lock()
        self.sockets: set[ServerConnection] = set()

    async def store(self) -> JudgmentStore:
        async with self._opening:
            if self._store is None:
                c = self.cfg
                self._store = await asyncio.to_thread(open_judgments, c.session_store, sqlite_path=c.sqlite_path,
                                                      redis_url=c.redis_url)
            return self._store

    async def shutdown(self) -> None:
        """Close the raters' sockets (they reconnect to another replica or later), then the store."""
        for ws in list(self.sockets):
            await ws.close(CLOSE_GOING_AWAY, "server shutting down")
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- the socket ------------------------------------------------------------------------------------------
    async def serve(self, ws: ServerConnection, ip: str) -> None:
        """One rater's connection, until it closes or idles out. The caller counts the connection per address."""
        self.sockets.add(ws)
        try:
            await self._serve(ws, ip)
        finally:
            self.sockets.discard(ws)

    async def _serve(self, ws: ServerConnection, ip: str) -> None:
        authed = not self.keys.required or getattr(ws, "xdai_principal", None) is not None
        bucket = TokenBucket(self.cfg.rate_limit_per_s, max(self.cfg.rate_limit_burst, 1.0))
        rater: Rater | None = None
        while True:
            try:
                data = await asyncio.wait_for(ws.recv(), timeout=self.cfg.idle_timeout_s)
            except TimeoutError:
                await ws.close(CLOSE_NORMAL, "idle timeout")
                return
            except ConnectionClosed:
                return
            try:
                wait = max(bucket.take(), self.addresses.frame(ip))
                if wait:
                    raise Refused("rate_limited", f"too many frames: at most {self.cfg.rate_limit_per_s:g}/s",
                                  retry_after_ms=int(wait * 1000) + 1)
                frame = _parse(data)
                if frame["type"] == "hello":
                    if rater is not None:
                        raise Refused("already_open", "this connection has its study: open another for another")
                    if not authed:
                        self._authenticate(ip, frame.get("auth"))
                        authed = True
                    rater = await self._hello(ws, frame)
                elif rater is None:
                    raise Refused("no_study", f"{frame['type']} before hello: say which study first")
                else:
                    await self._answer(ws, rater, frame)
            except Refused as no:
                await _send(ws, {"type": "error", "code": no.code, "message": no.message,
                                 **({"retry_after_ms": no.retry_after_ms} if no.retry_after_ms else {})})
            except StorageError as exc:
                log.error("judgment store: %s", exc)
                await _send(ws, {"type": "error", "code": "storage_error",
                                 "message": "the answers could not be stored; nothing was changed: retry shortly"})
            except ConnectionClosed:
                return

    def _authenticate(self, ip: str, key: Any) -> None:
        wait = self.addresses.auth_wait(ip)
        if wait:
            raise Refused("rate_limited", "too many failed API keys from this address; wait before trying again",
                          retry_after_ms=int(wait * 1000) + 1)
        if self.keys.identify(key if isinstance(key, str) else None) is None:
            self.metrics.auth_failures.inc()
            self.addresses.auth_failed(ip)
            raise Refused("unauthorized", "an API key is required: send it as 'auth' in hello or as "
                          "'Authorization: Bearer <key>'")
        self.addresses.auth_ok(ip)

    async def _hello(self, ws: ServerConnection, frame: dict[str, Any]) -> Rater:
        study_id = frame.get("study")
        if not isinstance(study_id, str):
            raise Refused("bad_frame", "hello needs 'study': the id in the study's link")
        study = await asyncio.to_thread(self.shelf.get, study_id)
        token = frame.get("rater")
        if token is None:
            token = secrets.token_urlsafe(24)
        elif not isinstance(token, str) or not _TOKEN.match(token):
            raise Refused("bad_frame", "'rater' is the token this server issued (letters, digits, '-', '_')")
        store = await self.store()
        rater = Rater(study, token, await asyncio.to_thread(store.answered, study.id, rater_id(token)))
        questions = [{"id": q.id, "text": q.text, "turing": q.turing, "scale": q.scale} for q in study.questions]
        await _send(ws, {"type": "study", "study": {"id": study.id, "title": study.title, "questions": questions,
                                                    "show_knowledge": study.show_knowledge},
                         "rater": token, "progress": rater.progress()})
        await self._next(ws, rater)
        return rater

    async def _answer(self, ws: ServerConnection, rater: Rater, frame: dict[str, Any]) -> None:
        if rater.dropped:
            await self._next(ws, rater)
            return
        if frame["type"] not in ("answer", "skip"):
            raise Refused("bad_frame", f"unknown frame type {frame['type']!r} (hello, answer, skip)")
        study = rater.study
        task_id = frame.get("task")
        try:
            task = study.task(task_id) if isinstance(task_id, str) else None
        except StudyError:
            task = None
        if task is None:
            raise Refused("bad_frame", "'task' names no task of this study")
        if frame["type"] == "skip":
            given = [Judgment(study.id, task.id, rater.id, q.id, "skip") for q in study.questions]
        else:
            given = _judgments(study, task, rater.id, frame)
        store = await self.store()
        new = await asyncio.to_thread(store.record, given) if task.id not in rater.done else 0
        if new:
            rater.answers.extend(given)
        rater.done.add(task.id)
        await _send(ws, {"type": "recorded", "task": task.id, "new": bool(new)})
        await self._next(ws, rater)

    async def _next(self, ws: ServerConnection, rater: Rater) -> None:
        if rater.dropped:
            await _send(ws, {"type": "done", "reason": "dropped", "progress": rater.progress()})
            return
        task = rater.next_task()
        if task is None:
            await _send(ws, {"type": "done", "reason": "finished", "progress": rater.progress()})
            return
        shown = {"id": task.id, "context": task.context, "knowledge": task.knowledge if rater.study.show_knowledge
                 else [], "left": task.left.text, "right": task.right.text}
        await _send(ws, {"type": "task", "task": shown, "progress": rater.progress()})


def _judgments(study: Study, task: PairTask, rater: str, frame: dict[str, Any]) -> list[Judgment]:
    """The answer frame's answers, one per question of the study, all of them checked."""
    answers, scores = frame.get("answers"), frame.get("scores") or {}
    if not isinstance(answers, dict) or not isinstance(scores, dict):
        raise Refused("bad_frame", "'answers' maps each question to left, right or tie; 'scores' to [left, right]")
    out = []
    for q in study.questions:
        answer = answers.get(q.id)
        allowed = ("left", "right") if q.turing else ("left", "right", "tie")
        if answer not in allowed:
            raise Refused("bad_frame", f"question {q.id!r}: answer one of {', '.join(allowed)}")
        pair = scores.get(q.id)
        if pair is not None and not (q.scale and isinstance(pair, list) and len(pair) == 2
                                     and all(type(s) is int and 1 <= s <= 5 for s in pair)):
            raise Refused("bad_frame", f"question {q.id!r}: scores are two whole numbers from 1 to 5"
                          + ("" if q.scale else ", and only for questions with a scale"))
        out.append(Judgment(study.id, task.id, rater, q.id, answer, (pair[0], pair[1]) if pair else None))
    extra = set(answers) - {q.id for q in study.questions}
    if extra:
        raise Refused("bad_frame", f"no question {sorted(extra)[0]!r} in this study")
    return out


def _parse(data: str | bytes) -> dict[str, Any]:
    if isinstance(data, bytes):
        raise Refused("bad_frame", "send JSON text frames")
    try:
        frame = json.loads(data)
    except (json.JSONDecodeError, RecursionError):
        raise Refused("bad_frame", "not JSON") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise Refused("bad_frame", "a frame is a JSON object with a 'type'")
    return frame


async def _send(ws: ServerConnection, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame, ensure_ascii=False))
