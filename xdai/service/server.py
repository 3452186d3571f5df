"""The WebSocket server: ``/ws`` speaks protocol v1, ``/eval/ws`` the rating page's frames (rating.py); ``/``,
``/eval/<study>``, ``/static/*``, ``/healthz``, ``/metrics``, ``/bots`` and a bot's pictures
(``/bots/<bot>/assets/<kind>[/<name>]``) are plain HTTP answered from websockets' ``process_request`` hook, so
one port serves the page and the socket.

Each connection reads frames in its own task and writes them from another through a bounded queue: a client that
reads too slowly is closed with 1013 (it can reconnect and resume from its last seq) instead of stalling anyone.

With API keys configured, ``/bots`` and ``/metrics`` need one too, and ``/healthz`` says only how the server is.
Limits per address (frames, new sessions, failed keys, turns in flight) live in an `AddressBook` that outlives
connections, so reconnecting does not reset them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import os
import signal
import socket
import time
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from xdai.config import ServerConfig
from xdai.memory.items import namespaced
from xdai.memory.store import MemoryStore, memory_store_for
from xdai.responder import Responder
from xdai.service.assets import asset_index, asset_route, find_picture
from xdai.service.engine import GenerationPool, Hub, LiveSession
from xdai.service.memory import SessionMemory
from xdai.service.metrics import Metrics
from xdai.service.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_TAKEN_OVER,
    CLOSE_TRY_AGAIN_LATER,
    BotInfo,
    ProtocolError,
    encode,
    parse_client_frame,
    server_frame,
)
from xdai.service.rating import EVAL_WS, RatingDesk, is_eval_page
from xdai.service.security import AddressBook, AddressLimits, KeyRing, TokenBucket, TurnQuota, origin_allowed
from xdai.service.sessions import SessionStore, StorageError

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).with_name("static")
WS_PATH = "/ws"
_CLOSE = "\x00close"  # the writer's instruction to close, queued after the frames before it
_METHODS = "GET, HEAD"


class Connection:
    """One client socket: a bounded send queue drained by a writer task."""

    def __init__(self, ws: ServerConnection, server: XdaiServer, ip: str) -> None:
        self.ws, self.server, self.ip = ws, server, ip
        self.limit = server.cfg.send_buffer_frames
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()  # bounded by `limit` in push
        self.bucket = TokenBucket(server.cfg.rate_limit_per_s, max(server.cfg.rate_limit_burst, 1.0))
        self.principal: str | None = getattr(ws, "xdai_principal", None)  # the API key's, once one is checked
        self.authed = not server.keys.required or self.principal is not None
        self.session: LiveSession | None = None
        self.closing = False
        self.writer = asyncio.create_task(self._write())

    def push(self, frame: dict[str, Any], t0: float | None = None) -> None:
        if self.closing:
            return
        if frame.get("type") == "error" and frame.get("seq") is None:
            self.server.metrics.errors.inc(code=frame["code"])
        if self.queue.qsize() < self.limit:
            self.queue.put_nowait((encode(frame), None if t0 is None else (frame["type"], t0)))
        else:  # the reader is too slow: drop it now rather than queue without bound or wait for it
            self.server.metrics.errors.inc(code="slow_consumer")
            self.closing = True
            self.writer.cancel()
            self.writer = asyncio.create_task(self.ws.close(CLOSE_TRY_AGAIN_LATER, "slow consumer: send buffer full; "
                                                            "reconnect with resume_from_seq"))

    def error(self, problem: ProtocolError) -> None:
        """A connection-level error frame (not in the session's log)."""
        self.push(server_frame("error", self.session.id if self.session else None, None, **problem.fields()))

    def taken_over(self) -> None:
        self.close(CLOSE_TAKEN_OVER, "session opened on another connection")

    def close(self, code: int, reason: str) -> None:
        """Close after the frames already queued have been written."""
        if self.closing:
            return
        self.closing = True
        self.queue.put_nowait((_CLOSE, (code, reason)))

    async def _write(self) -> None:
        metrics = self.server.metrics
        try:
            while True:
                text, t0 = await self.queue.get()
                if text is _CLOSE:
                    await self.ws.close(*t0)
                    return
                try:
                    await self.ws.send(text)
                except UnicodeEncodeError:  # a string no UTF-8 can carry: send it escaped instead of dying
                    await self.ws.send(json.dumps(json.loads(text), ensure_ascii=True, separators=(",", ":")))
                if t0 is not None:  # (frame type, when its cause happened): the server's own latency
                    kind, since = t0
                    summary = metrics.ack_latency if kind == "message.ack" else metrics.delta_forward
                    summary.observe(time.perf_counter() - since)
        except ConnectionClosed:
            pass


class XdaiServer:
    """Hosts bots over one WebSocket endpoint. `start` binds; `run` serves until SIGINT/SIGTERM.

    `agents` are the running bots by name, in served order (the page opens the first); `bots` describes them for
    ``/bots``. Both are plain tables that a reloader may swap entries of while serving."""

    def __init__(self, cfg: ServerConfig, bots: dict[str, BotInfo], agents: dict[str, Responder],
                 store: SessionStore, memory: MemoryStore | None = None) -> None:
        """`memory`: where users' long-term memories live (default: beside `store`, `memory_store_for`);
        none at all when ``server.memory`` is false."""
        cfg.check()  # origins normalised (ConfigError naming the entry otherwise), as load_config does
        self.cfg, self.bots = cfg, bots
        self.metrics = Metrics()
        self.keys = KeyRing(cfg.api_keys)
        self.addresses = AddressBook(AddressLimits(
            max_connections=cfg.max_connections_per_ip, frame_rate=cfg.ip_rate_limit_per_s,
            frame_burst=max(cfg.ip_rate_limit_per_s * 2, cfg.rate_limit_burst), session_rate=cfg.ip_session_rate_per_s,
            session_burst=max(cfg.ip_session_burst, 1.0), auth_free_failures=cfg.auth_failures_before_backoff,
            auth_backoff_max_s=cfg.auth_backoff_max_s, ttl_s=cfg.ip_state_ttl_s, capacity=cfg.max_tracked_ips))
        self.quota = TurnQuota({"ip": cfg.max_turns_per_ip, "key": cfg.max_turns_per_key})
        self.rating = RatingDesk(cfg, self.keys, self.addresses, self.metrics)  # /eval: raters answer studies
        self.pool = GenerationPool(cfg.workers, cfg.queue_size)
        self.store = store
        self.memory_store = (memory or memory_store_for(store)) if cfg.memory else None
        self.agents = agents
        self.hub: Hub | None = None
        self.connections: set[Connection] = set()
        self.ws_server: WsServer | None = None
        self.port = cfg.port
        self._stop = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        m = self.metrics
        m.gauge("xdai_queue_depth", "Turns waiting for a generation worker.", lambda: self.pool.depth)
        m.gauge("xdai_turns_running", "Turns being generated.", lambda: self.pool.running)
        m.gauge("xdai_connections", "Open WebSocket connections.", lambda: len(self.connections))
        m.gauge("xdai_sessions_live", "Sessions held in memory.", lambda: len(self.hub.sessions) if self.hub else 0)
        m.gauge("xdai_prefix_hit_rate", "Share of prompt tokens the model's engine did not evaluate again (cached "
                "prefixes: a bot's persona, a session's previous turn).", self._prefix_hit_rate)
        m.gauge("xdai_prefix_hit_rate", "Share of prompt tokens the model's engine did not evaluate again (cached "
                "prefixes: a bot's persona, a session's previous turn).", self._prefix_hit_rate)

    def _prefix_hit_rate(self) -> float:
        engines = {}
        for agent in self.agents.values():
            stats = getattr(getattr(agent, "backend", None), "prefix_stats", None)
            if callable(stats):
                engines[id(getattr(agent.backend, "engine", agent.backend))] = stats()
        prompt = sum(s.prompt_tokens for s in engines.values())
        return sum(s.reused_tokens for s in engines.values()) / prompt if prompt else 0.0

    def _prefix_hit_rate(self) -> float:
        engines = {}
        for agent in self.agents.values():
            stats = getattr(getattr(agent, "backend", None), "prefix_stats", None)
            if callable(stats):
                engines[id(getattr(agent.backend, "engine", agent.backend))] = stats()
        prompt = sum(s.prompt_tokens for s in engines.values())
        return sum(s.reused_tokens for s in engines.values()) / prompt if prompt else 0.0

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> int:
        """Take a lease, end replies of servers that are gone, start the workers, bind. Returns the bound port
        (useful with port 0)."""
        owner = self.cfg.instance_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.hub = Hub(self.store, self.agents, self.pool, self.metrics, owner=owner,
                       max_message_chars=self.cfg.max_message_chars, quota=self.quota,
                       orphan_grace_s=self.cfg.orphan_turn_grace_s, lease_s=self.cfg.lease_s,
                       memory=None if self.memory_store is None else SessionMemory(
                           self.memory_store, extractor=self.cfg.memory_extractor))
        recovered = await self.hub.recover()
        if recovered:
            log.warning("marked %d reply(ies) interrupted: their server is gone", len(recovered))
        self.pool.start()
        self.ws_server = await serve(
            self._handle, self.cfg.host, self.cfg.port, process_request=self._http, max_size=self.cfg.max_frame_bytes,
            max_queue=16, compression=None, server_header="xdai", ping_interval=20, ping_timeout=20,
            close_timeout=2,
        )
        self.port = next(iter(self.ws_server.sockets)).getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep())
        return self.port

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        await self._stop.wait()
        await self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight replies finish (or end them "interrupted"), close connections."""
        assert self.hub is not None and self.ws_server is not None
        self.ws_server.close(close_connections=False)
        interrupted = await self.hub.drain(self.cfg.shutdown_grace_s)
        for conn in list(self.connections):
            conn.error(ProtocolError("shutting_down", "the server is shutting down; reconnect and resume", retryable=True))
            conn.close(CLOSE_GOING_AWAY, "server shutting down")
        writers = [c.writer for c in self.connections]
        if writers:
            await asyncio.wait(writers, timeout=5)
        await self.rating.shutdown()
        await self.ws_server.wait_closed()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.pool.stop()
        with contextlib.suppress(Exception):  # ends that could not be stored: a last try
            await self.hub.housekeeping(float("inf"))
        await self.hub.release()
        self.hub.close()
        log.info("shut down (%d reply(ies) interrupted)", interrupted)

    async def _sweep(self) -> None:
        """Renew the lease well within `lease_s`, end dead servers' replies, forget idle sessions."""
        every = max(min(60.0, self.cfg.idle_timeout_s / 4, self.cfg.lease_s / 3), 0.05)
        while True:
            await asyncio.sleep(every)
            assert self.hub is not None
            try:
                await self.hub.housekeeping(self.cfg.idle_timeout_s)
            except Exception:
                log.exception("housekeeping failed")

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        for name in ("Origin", "Authorization", "Host"):
            if len(request.headers.get_all(name)) > 1:
                return _response(HTTPStatus.BAD_REQUEST, f"more than one {name} header\n")
        if request.method not in ("GET", "HEAD") or (path in (WS_PATH, EVAL_WS) and request.method != "GET"):
            response = _response(HTTPStatus.METHOD_NOT_ALLOWED, f"method {request.method} not allowed\n")
            response.headers["Allow"] = "GET" if path in (WS_PATH, EVAL_WS) else _METHODS
            return response
        response = self._get(connection, request, path)
        if response is not None and request.method == "HEAD":  # the GET's headers (its Content-Length too), no body
            response = Response(response.status_code, response.reason_phrase, response.headers, b"")
        return response

    def _get(self, connection: ServerConnection, request: Request, path: str) -> Response | None:
        ip = _address(connection)
        if path in (WS_PATH, EVAL_WS):  # the rating page's socket is guarded as the chat's
            if not origin_allowed(request.headers.get("Origin"), self.cfg.allowed_origins):
                return _response(HTTPStatus.FORBIDDEN, "origin not allowed\n")
            header = request.headers.get("Authorization")
            if header is not None:
                refused = self._http_auth(ip, header)
                if refused is not None:
                    return refused
                connection.xdai_principal = self.keys.identify(KeyRing.bearer(header))  # type: ignore[attr-defined]
            return None
        if path == "/healthz":  # open, and says nothing but how the server is
            if self.hub is not None and self.hub.storage_error is not None:
                return _response(HTTPStatus.SERVICE_UNAVAILABLE, json.dumps({"status": "unhealthy"}),
                                 "application/json")
            status = "draining" if self.hub and self.hub.closing else "ok"
            return _response(HTTPStatus.OK, json.dumps({"status": status}), "application/json")
        if (path in ("/metrics", "/bots") or path.startswith("/bots/")) and self.keys.required:
            refused = self._http_auth(ip, request.headers.get("Authorization"))
            if refused is not None:
                return refused
        if path == "/metrics":
            return _response(HTTPStatus.OK, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/bots":
            listed = [{**(self.bots.get(name) or BotInfo(name)).to_json(),  # served order; which pictures it has
                       "assets": asset_index(getattr(agent, "persona", None))} for name, agent in self.agents.items()]
            return _response(HTTPStatus.OK, json.dumps(listed, ensure_ascii=False), "application/json")
        if path.startswith("/bots/"):
            return self._asset(path)
        if path in ("/", "/index.html"):
            return _static("index.html")
        if is_eval_page(path):
            return _static("eval.html")
        if path.startswith("/static/"):
            return _static(path[len("/static/"):])
        return _response(HTTPStatus.NOT_FOUND, "not found\n")

    def _asset(self, path: str) -> Response:
        """A bot's icon, background or emotion image (`xdai.service.assets`), by kind and name only."""
        route = asset_route(path)
        agent = self.agents.get(route[0]) if route is not None else None
        picture = find_picture(getattr(agent, "persona", None), route[1], route[2]) if route and agent else None
        if picture is None:
            return _response(HTTPStatus.NOT_FOUND, "not found\n")
        response = _response(HTTPStatus.OK, picture.data, picture.mime)
        del response.headers["Cache-Control"]  # Headers append: replace no-store
        response.headers["Cache-Control"] = "private, max-age=300"
        response.headers["Cross-Origin-Resource-Policy"] = "same-origin"  # not for other sites' pages
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response

    def _http_auth(self, ip: str, header: str | None) -> Response | None:
        """None when `header` carries a valid key; else 401, or 429 while this address is backing off."""
        wait = self.addresses.auth_wait(ip)
        if wait:
            response = _response(HTTPStatus.TOO_MANY_REQUESTS, "too many failed API keys from this address\n")
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        if self.keys.check(KeyRing.bearer(header)):
            if header is not None:
                self.addresses.auth_ok(ip)
            return None
        self.metrics.auth_failures.inc()
        self.addresses.auth_failed(ip)
        response = _response(HTTPStatus.UNAUTHORIZED, "invalid API key\n" if header else "an API key is required\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="xdai"'
        return response

    # -- WebSocket -------------------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        ip = _address(ws)
        if not self.addresses.connect(ip):
            await ws.close(CLOSE_POLICY, "too many connections from this address")
            return
        if ws.request is not None and ws.request.path.split("?", 1)[0] == EVAL_WS:
            try:
                await self.rating.serve(ws, ip)
            finally:
                self.addresses.disconnect(ip)
            return
        conn = Connection(ws, self, ip)
        self.connections.add(conn)
        self.metrics.connections_total.inc()
        try:
            await self._read(conn, ip)
        finally:
            self.connections.discard(conn)
            self.addresses.disconnect(ip)
            if conn.session is not None and self.hub is not None:
                self.hub.detach(conn.session, conn)
            if not conn.closing:
                conn.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(conn.writer, timeout=3)

    async def _read(self, conn: Connection, ip: str) -> None:
        while not conn.closing:
            try:
                data = await asyncio.wait_for(conn.ws.recv(), timeout=self.cfg.idle_timeout_s)
            except TimeoutError:
                if conn.session is not None and conn.session.turn is not None:
                    continue  # waiting for a reply is not idling
                conn.error(ProtocolError("idle_timeout", f"no frame for {self.cfg.idle_timeout_s:g}s; reconnect and "
                                         "resume when needed", retryable=True))
                conn.close(CLOSE_GOING_AWAY, "idle timeout")
                return
            except ConnectionClosed:
                return
            received = time.perf_counter()
            wait = max(conn.bucket.take(), self.addresses.frame(ip))
            if wait:
                conn.error(ProtocolError("rate_limited", f"too many frames: at most {self.cfg.rate_limit_per_s:g}/s "
                                         "per connection", retryable=True, retry_after_ms=int(wait * 1000) + 1))
                continue
            frame: dict[str, Any] | None = None
            try:
                try:
                    frame = parse_client_frame(data)
                    await self._dispatch(conn, frame, received)
                except StorageError as exc:
                    log.error("session store: %s", exc)
                    msg_id = frame.get("id") if frame and frame.get("type") == "message.create" else None
                    raise ProtocolError("storage_error", "the session store failed; nothing was changed: retry "
                                        "shortly", retryable=True, reply_to=msg_id) from None
            except ProtocolError as problem:
                if conn.session is not None and problem.reply_to is not None and self.hub is not None:
                    await self.hub.error(conn.session, problem)
                else:
                    conn.error(problem)
            except Exception:
                log.exception("frame handling failed")
                conn.error(ProtocolError("internal_error", "the server failed to handle this frame", retryable=True))

    async def _dispatch(self, conn: Connection, frame: dict[str, Any], received: float) -> None:
        assert self.hub is not None
        kind = frame["type"]
        if kind == "ping":
            conn.push(server_frame("pong", conn.session.id if conn.session else None, None))
            return
        if kind == "session.open":
            if conn.session is not None:
                raise ProtocolError("session_already_open", f"this connection already has session {conn.session.id}; "
                                    "open another connection for another session")
            if not conn.authed:
                self._authenticate(conn, frame.get("auth"))
            if frame.get("session_id") is None:
                wait = self.addresses.new_session(conn.ip)
                if wait:
                    raise ProtocolError("rate_limited", "too many new sessions from this address: at most "
                                        f"{self.cfg.ip_session_rate_per_s:g}/s", retryable=True,
                                        retry_after_ms=int(wait * 1000) + 1)
            user = frame.get("user")
            if user is not None:  # under API keys a user is the key's tenant's: one key never reads another's
                user = namespaced(user, self.keys.tenant(conn.principal))
            conn.session = await self.hub.open(conn, frame["bot"], frame.get("session_id"),
                                               frame.get("resume_from_seq"), principal=conn.principal,
                                               resume_token=frame.get("resume_token"), user=user)
            return
        reply_to = frame.get("id") if kind == "message.create" else frame.get("reply_to")
        given = frame.get("session_id")
        if given is not None and (conn.session is None or given != conn.session.id):
            await self._not_yours(conn, given, reply_to)
        if conn.session is None:
            raise ProtocolError("no_session", f"{kind} before session.open: open a session first", reply_to=reply_to)
        if given is not None and given != conn.session.id:
            raise ProtocolError("session_mismatch", f"frame names session {given}, but this connection has "
                                f"{conn.session.id}", reply_to=reply_to, field="session_id")
        if kind == "message.create":
            tags = (("ip", conn.ip),) + ((("key", conn.principal),) if conn.principal else ())
            await self.hub.message(conn.session, frame, received, tags)
        elif kind == "response.cancel":
            self.hub.cancel(conn.session, frame["reply_to"])
        elif kind == "memory.list":
            conn.push(await self.hub.memory_list(conn.session))
        elif kind == "memory.forget":
            conn.push(await self.hub.memory_forget(conn.session, frame.get("item")))

    def _authenticate(self, conn: Connection, key: str | None) -> None:
        """The key in session.open: counted per address, and not even checked while the address backs off."""
        wait = self.addresses.auth_wait(conn.ip)
        if wait:
            raise ProtocolError("rate_limited", "too many failed API keys from this address; wait before trying "
                                "again", retryable=True, retry_after_ms=int(wait * 1000) + 1, field="auth")
        principal = self.keys.identify(key)
        if principal is None:
            self.metrics.auth_failures.inc()
            self.addresses.auth_failed(conn.ip)
            raise ProtocolError("unauthorized", "an API key is required: send it as 'auth' in session.open "
                                "or as 'Authorization: Bearer <key>'", field="auth")
        self.addresses.auth_ok(conn.ip)
        conn.authed, conn.principal = True, principal

    async def _not_yours(self, conn: Connection, session_id: str, reply_to: str | None) -> None:
        """A frame naming a session this connection has not opened: ``forbidden`` when it is someone else's."""
        assert self.hub is not None
        record = await self.hub.lookup(session_id)
        if record is None:
            return
        principal = record.principal
        if principal is not None and principal.startswith("key:") and conn.principal == principal:
            return  # the caller's own session, opened elsewhere: session_mismatch / no_session say so
        raise ProtocolError("forbidden", f"session {session_id} belongs to another client", reply_to=reply_to,
                            field="session_id")


def _response(status: HTTPStatus, body: str | bytes, content_type: str = "text/plain; charset=utf-8") -> Response:
    data = body.encode("utf-8") if isinstance(body, str) else body
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))),
                       ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")])
    return Response(status.value, status.phrase, headers, data)


def _address(connection: ServerConnection) -> str:
    return str(connection.remote_address[0]) if connection.remote_address else "?"


def _static(name: str) -> Response:
    """A file from static/, never outside it."""
    root = STATIC_DIR.resolve()
    path = (root / name).resolve()
    if root not in path.parents or not path.is_file():
        return _response(HTTPStatus.NOT_FOUND, "not found\n")
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "text/javascript"):
        kind += "; charset=utf-8"
    return _response(HTTPStatus.OK, path.read_bytes(), kind)
