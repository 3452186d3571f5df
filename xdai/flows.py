"""Bot flows: the small hook interface a bot's ``flow.py`` implements, and `FlowAgent`, which runs it around a turn.

A flow is what makes a bot more than a persona: phases, timers, scripted lines, hand-offs. It never speaks the wire
protocol; it *emits events* (`BotEvent`: name + JSON data) and the service turns them into protocol ``event``
frames. The bots themselves (their data and ``flow.py`` files) live in ``bots/``; this module is the machinery.
Hooks:

    on_open(ctx)            a new session starts (emit the first phase, the buttons the page should show)
    before_turn(ctx)        a user message arrived: set ctx.condition, answer with ctx.say(text), or let the model
    after_turn(ctx)         the reply is done (ctx.reply): record it, change phase, ctx.suggest([...])
    on_timer(ctx, name)     a timer started with ctx.start_timer(name, seconds) ran out
    on_end(ctx)             the session ended (ctx.end(reason)): emit the transcript and summary

Every hook is optional and receives one `FlowContext`. Hooks of one session never run at the same time; the
session's state (``ctx.state``, a dict) lives in memory for the life of the server process, keyed by the session
id that `open_session` and `respond` are given. Timers run on a clock (`SystemClock`), which tests replace by a
`ManualClock` to advance time without waiting.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from xdai.responder import BotEvent, Delta, EventSink, Reply, Responder, TurnEvent

if TYPE_CHECKING:
    from xdai.backends.base import Backend
    from xdai.history import History
    from xdai.persona import Persona
    from xdai.prompt import Knowledge, PromptBuilder
    from xdai.turn import Agent

log = logging.getLogger(__name__)
HOOKS = ("on_open", "before_turn", "after_turn", "on_timer", "on_end")
TICK_S = 0.5  # how often a served session's timers are checked
IDLE_STOP_S = 6 * 3600.0  # a session's timer task gives up after this long without any activity


class FlowError(ValueError):
    """A flow cannot be loaded or is malformed; the message names the file."""


# ------------------------------------------------------------------------------------------------------ clocks
class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    """Monotonic seconds: what a served bot's timers run on."""

    def now(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told: tests advance it instead of sleeping."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# ------------------------------------------------------------------------------------------------------ events
FlowEvent = BotEvent  # what a flow emits: the turn stream's BotEvent


def clock_text(seconds: float) -> str:
    """04:00 for 240 seconds; never negative."""
    whole = max(int(seconds + 0.999), 0)
    return f"{whole // 60:02d}:{whole % 60:02d}"


# ----------------------------------------------------------------------------------------------------- session
@dataclass
class Timer:
    name: str
    deadline: float
    label: str


@dataclass
class FlowSession:
    """One session's flow state: the dict the hooks share, running timers, whether it ended."""

    id: str
    state: dict[str, Any] = field(default_factory=dict)
    timers: dict[str, Timer] = field(default_factory=dict)
    ended: bool = False
    end_reason: str = ""
    emit: EventSink | None = None  # the service's sink for events outside a turn
    lock: threading.RLock = field(default_factory=threading.RLock)
    touched: float = field(default_factory=time.monotonic)
    ticker: asyncio.Task[None] | None = None


class FlowContext:
    """What a hook sees and can do. Built by `FlowAgent` for each hook call."""

    def __init__(self, agent: FlowAgent, session: FlowSession, *, history: History | None = None,
                 utterance: str | None = None, condition: str | None = None) -> None:
        self.agent, self.session = agent, session
        self.history = history
        self.utterance = utterance
        self.condition = condition  # before_turn may set a named condition or "text:..." post-response
        self.reply: Reply | None = None  # after_turn: the finished reply
        self.scripted: str | None = None
        self.suggestions: list[str] | None = None
        self.events: list[BotEvent] = []

    # -- state --------------------------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        return self.session.state

    @property
    def session_id(self) -> str:
        return self.session.id

    @property
    def now(self) -> float:
        return self.agent.clock.now()

    @property
    def ended(self) -> bool:
        return self.session.ended

    # -- speaking -----------------------------------------------------------------------------------------------
    def emit(self, name: str, data: Any = None) -> None:
        """Send an event to the client (after this hook returns, in order)."""
        self.events.append(BotEvent(name, {} if data is None else data))

    def say(self, text: str) -> None:
        """before_turn: answer with `text` instead of asking the model."""
        self.scripted = text

    def suggest(self, questions: list[str], intro: str = "") -> None:
        """Questions the user might send next: the reply's suggestions, and a ``suggestions`` event for the chips."""
        self.suggestions = list(questions)
        self.emit("suggestions", {"intro": intro, "items": list(questions)})

    # -- knowledge ----------------------------------------------------------------------------------------------
    def search(self, query: str, k: int = 3, kind: str | None = None) -> list[Knowledge]:
        """The bot's knowledge for `query`, best first, scored on the cosine scale (`xdai.turn.relevance_of`)."""
        return self.agent.search(query, k=k, kind=kind)

    # -- timers and the end -------------------------------------------------------------------------------------
    def start_timer(self, name: str, seconds: float, label: str = "") -> None:
        """Start (or restart) a countdown; ``on_timer(ctx, name)`` runs when it reaches zero."""
        self.session.timers[name] = Timer(name, self.now + seconds, label)
        self.emit("timer", self.agent.timer_data(self.session, name))

    def stop_timer(self, name: str) -> None:
        timer = self.session.timers.pop(name, None)
        if timer is not None:
            self.emit("timer", {"name": name, "label": timer.label, "remaining_s": 0, "running": False,
                                "text": f"{timer.label} 已结束".strip()})

    def remaining(self, name: str) -> float | None:
        timer = self.session.timers.get(name)
        return None if timer is None else max(timer.deadline - self.now, 0.0)

    def end(self, reason: str = "") -> None:
        """End the session: timers stop, ``on_end`` runs, a ``session.end`` event follows; later turns are refused
        by the flow's before_turn (or answered by it)."""
        if self.session.ended:
            return
        self.session.ended, self.session.end_reason = True, reason
        for name in list(self.session.timers):
            self.stop_timer(name)
        self.agent.call(self.agent.flow, "on_end", self)
        self.emit("session.end", {"reason": reason})


# -------------------------------------------------------------------------------------------------------- flows
class Flow:
    """Base class for flows: every hook does nothing. A flow module defines one subclass (or plain functions)."""

    uses_timers = False  # True: a served session gets a task that fires due timers

    def on_open(self, ctx: FlowContext) -> None: ...
    def before_turn(self, ctx: FlowContext) -> None: ...
    def after_turn(self, ctx: FlowContext) -> None: ...
    def on_timer(self, ctx: FlowContext, name: str) -> None: ...
    def on_end(self, ctx: FlowContext) -> None: ...


class _ModuleFlow(Flow):
    """A flow written as module-level functions named like the hooks."""

    def __init__(self, module: ModuleType) -> None:
        self.uses_timers = bool(getattr(module, "USES_TIMERS", False))
        for hook in HOOKS:
            fn = getattr(module, hook, None)
            if fn is not None:
                setattr(self, hook, fn)


def _module_for(spec_flow: str, bot_dir: Path) -> ModuleType:
    file = Path(spec_flow) if Path(spec_flow).is_absolute() else bot_dir / spec_flow
    if spec_flow.endswith(".py"):
        if not file.is_file():
            raise FlowError(f"{bot_dir / 'bot.yaml'}:1: flow: {spec_flow!r} does not exist ({file})")
        name = f"xdai_bot_flow_{bot_dir.name}_{uuid.uuid4().hex[:8]}"  # fresh each load, so an edit is seen
        loader_spec = importlib.util.spec_from_file_location(name, file)
        assert loader_spec is not None and loader_spec.loader is not None
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # dataclasses and typing look modules up by name
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            line = _traceback_line(exc, file)
            raise FlowError(f"{file}:{line}: cannot load flow: {type(exc).__name__}: {exc}") from None
        return module
    try:
        return importlib.import_module(spec_flow)
    except ImportError as exc:
        raise FlowError(f"{bot_dir / 'bot.yaml'}:1: flow: cannot import {spec_flow!r}: {exc}") from None


def _traceback_line(exc: BaseException, file: Path) -> int:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return exc.lineno
    tb, line = exc.__traceback__, 1
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def load_flow(spec_flow: str, bot_dir: str | Path) -> Flow:
    """The flow named by a bot's ``flow:`` key: ``flow.py`` (beside bot.yaml), ``flow.py:ClassName``, or a module
    path (``package.module`` / ``package.module:ClassName``). The module holds one `Flow` subclass, a ``FLOW``
    instance, or hook functions at module level. Malformed: `FlowError` naming the file."""
    bot_dir = Path(bot_dir)
    target, _, class_name = spec_flow.partition(":")
    module = _module_for(target, bot_dir)
    where = getattr(module, "__file__", target)
    cls: Any = None
    flow: Flow | None = None
    if class_name:
        cls = getattr(module, class_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, Flow)):
            raise FlowError(f"{where}:1: {class_name!r} is not a Flow subclass in this module")
    elif isinstance(getattr(module, "FLOW", None), Flow):
        flow = module.FLOW
    else:
        classes = [c for c in vars(module).values()
                   if inspect.isclass(c) and issubclass(c, Flow) and c is not Flow and c.__module__ == module.__name__]
        if len(classes) > 1:
            names = ", ".join(c.__name__ for c in classes)
            raise FlowError(f"{where}:1: several Flow subclasses ({names}): name one as flow: FILE:Class")
        if classes:
            cls = classes[0]
        elif any(callable(getattr(module, h, None)) for h in HOOKS):
            flow = _ModuleFlow(module)
        else:
            raise FlowError(f"{where}:1: no Flow subclass, FLOW instance or hook function ({', '.join(HOOKS)})")
    if flow is None:
        try:
            flow = cls()
        except Exception as exc:  # a flow reading its own data files reports them; anything else names the flow
            message = str(exc)
            if not re.match(r"^\S+:\d+", message):
                message = f"{where}:{_traceback_line(exc, Path(str(where)))}: {type(exc).__name__}: {message}"
            raise FlowError(message) from None
    for hook in HOOKS:
        fn = getattr(flow, hook, None)
        if not callable(fn):
            raise FlowError(f"{where}:1: {hook} must be callable")
        expected = 2 if hook == "on_timer" else 1
        try:
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            continue
        if len(params) != expected:
            shown = "(ctx, name)" if hook == "on_timer" else "(ctx)"
            line = getattr(getattr(fn, "__code__", None), "co_firstlineno", 1)
            file = getattr(getattr(fn, "__code__", None), "co_filename", where)
            raise FlowError(f"{file}:{line}: {hook} must take {shown}, it takes {len(params)} argument(s)")
    return flow


# ------------------------------------------------------------------------------------------------- flow agent
class FlowAgent(Responder):
    """An `xdai.turn.Agent` with a flow around each turn: a `Responder` whose sessions run the flow's hooks (when
    a session opens, around each turn, when a timer runs out). The wrapped agent is `.agent`."""

    def __init__(self, agent: Agent, flow: Flow, *, name: str = "", clock: Clock | None = None) -> None:
        self.agent, self.flow, self.name = agent, flow, name
        self.clock: Clock = clock or SystemClock()
        self.sessions: dict[str, FlowSession] = {}  # by session id

    @property
    def persona(self) -> Persona:
        return self.agent.persona

    @property
    def builder(self) -> PromptBuilder:
        return self.agent.builder

    @property
    def backend(self) -> Backend | None:
        return self.agent.backend

    # -- the Responder face -------------------------------------------------------------------------------------
    def greeting(self) -> str:
        return self.agent.greeting()

    def new_history(self) -> History:
        return self.agent.new_history()

    def condition_text(self, condition: str | None) -> tuple[str, str] | None:
        return self.agent.condition_text(condition)

    def search(self, query: str, k: int = 3, kind: str | None = None) -> list[Knowledge]:
        from xdai.prompt import Knowledge
        from xdai.turn import relevance_of

        found: list[Knowledge] = []
        for named in self.agent.stores:
            for hit in named.store.query(query, top_k=k + 4, kind=kind):
                found.append(Knowledge.from_hit(hit, store=named.name, score=relevance_of(hit)))
        found.sort(key=lambda item: -item.score)
        return found[:k]

    # -- sessions -----------------------------------------------------------------------------------------------
    def session(self, session_id: str | None) -> FlowSession:
        """The flow state of `session_id`; one never opened (a turn before `open_session`) starts empty, without
        on_open. A flow keeps state per session, so a turn must say which: ValueError for None."""
        if session_id is None:
            raise ValueError(f"bot {self.name or '?'} runs a flow: pass session= (the id given to open_session)")
        found = self.sessions.get(session_id)
        if found is None:
            found = self.sessions[session_id] = FlowSession(session_id)
        return found

    def open_session(self, session_id: str, history: History, emit: EventSink | None = None, *,
                     resumed: bool = False) -> list[BotEvent]:
        """Start the flow state of `session_id` (kept across the service reloading the session's history), run
        ``on_open`` for a new one, and on a running event loop start the timer task. Returns the events on_open
        emitted (for a session already open: its running timers); they are also sent through `emit` when given."""
        fresh = session_id not in self.sessions
        session = self.session(session_id)
        session.emit = emit
        session.touched = time.monotonic()
        events: list[BotEvent] = []
        if fresh:
            with session.lock:
                ctx = FlowContext(self, session, history=history)
                self.call(self.flow, "on_open", ctx)
                events = ctx.events
        else:  # a reconnecting page needs the current timer again
            events = [BotEvent("timer", self.timer_data(session, name)) for name in session.timers]
        if emit is not None:
            for event in events:
                emit(event.name, event.data)
        if self.flow.uses_timers and emit is not None and (session.ticker is None or session.ticker.done()):
            try:
                session.ticker = asyncio.get_running_loop().create_task(self._tick_forever(session))
            except RuntimeError:  # no running loop: timers fire at the next turn instead
                pass
        return events

    def close_session(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None and session.ticker is not None:
            session.ticker.cancel()

    def tick(self, session: FlowSession, *, wait: bool = True) -> list[BotEvent]:
        """Fire every due timer of `session` (on_timer), returning the events the hooks emitted. With
        ``wait=False`` (the server's timer task) a session whose hook is running in a turn is left for the next
        tick instead of blocking the event loop."""
        if not session.lock.acquire(blocking=wait):
            return []
        try:
            ctx = FlowContext(self, session)
            self._fire_due(ctx)
            return ctx.events
        finally:
            session.lock.release()

    async def _tick_forever(self, session: FlowSession) -> None:
        while not session.ended and time.monotonic() - session.touched < IDLE_STOP_S:
            await asyncio.sleep(TICK_S)
            if session.timers and session.emit is not None:
                for event in self.tick(session, wait=False):
                    session.emit(event.name, event.data)

    def _fire_due(self, ctx: FlowContext) -> None:
        session = ctx.session
        for timer in sorted(session.timers.values(), key=lambda t: t.deadline):
            if timer.deadline <= ctx.now and session.timers.get(timer.name) is timer:
                del session.timers[timer.name]
                ctx.emit("timer", {"name": timer.name, "label": timer.label, "remaining_s": 0, "running": False,
                                   "text": f"{timer.label} 剩余时间 00:00".strip()})
                self.call(self.flow, "on_timer", ctx, timer.name)

    def timer_data(self, session: FlowSession, name: str) -> dict[str, Any]:
        timer = session.timers[name]
        left = max(timer.deadline - self.clock.now(), 0.0)
        return {"name": name, "label": timer.label, "remaining_s": round(left, 3), "running": True,
                "text": f"{timer.label} 剩余时间 {clock_text(left)}".strip()}

    def call(self, flow: Flow, hook: str, ctx: FlowContext, *args: Any) -> None:
        """Run one hook; a failing hook is logged with its bot and never ends the session or the server."""
        try:
            getattr(flow, hook)(ctx, *args)
        except Exception:
            log.exception("bot %s: flow hook %s failed", self.name or "?", hook)
            ctx.emit("flow.error", {"hook": hook, "message": f"the bot's {hook} hook failed"})

    # -- one turn -----------------------------------------------------------------------------------------------
    async def respond(self, history: History, utterance: str, *, condition: str | None = None,
                      cancel: asyncio.Event | None = None, session: str | None = None) -> AsyncIterator[TurnEvent]:
        """The agent's stream (Delta..., Reply) with the flow's events before the Reply: before_turn may answer
        itself (``ctx.say``) or set the condition; after_turn sees the reply."""
        state = self.session(session)
        state.touched = time.monotonic()
        ctx = FlowContext(self, state, history=history, utterance=utterance, condition=condition)
        with state.lock:
            self._fire_due(ctx)
            self.call(self.flow, "before_turn", ctx)
        for event in ctx.events:
            yield event
        ctx.events = []
        reply: Reply | None = None
        if ctx.scripted is not None:
            text = ctx.scripted
            yield Delta(text)
            reply = Reply(text=text, finish_reason="stop", usage={"prompt_tokens": 0, "completion_tokens": 0},
                          grounding=[], prompt=self.agent.builder.build(utterance), suggestions=[])
        else:
            async for item in self.agent.respond(history, utterance, condition=ctx.condition, cancel=cancel):
                if isinstance(item, Reply):
                    reply = item
                else:
                    yield item
        assert reply is not None
        ctx.reply = reply
        if ctx.suggestions is not None:  # before_turn's suggestions stand unless after_turn changes them
            reply.suggestions = list(ctx.suggestions)
        with state.lock:
            self.call(self.flow, "after_turn", ctx)
        if ctx.suggestions is not None:
            reply.suggestions = list(ctx.suggestions)
        for event in ctx.events:
            yield event
        yield reply

    async def turn(self, history: History, utterance: str, *, session: str, condition: str | None = None
                   ) -> tuple[Reply, list[BotEvent]]:
        """One whole turn of `session` (tests, evaluation): the Reply and the events emitted during it. Appends
        the exchange to `history` when the reply completed, as the service and the terminal chat do."""
        events: list[BotEvent] = []
        reply = None
        async for item in self.respond(history, utterance, condition=condition, session=session):
            if isinstance(item, BotEvent):
                events.append(item)
            elif isinstance(item, Reply):
                reply = item
        assert reply is not None
        if reply.finish_reason in ("stop", "length"):
            history.append(utterance, reply.text)
        return reply, events


def describe_event(event: BotEvent) -> str | None:
    """One line for a terminal (``xdai chat --bot``): what the page would show for this event, or None."""
    data = event.data if isinstance(event.data, dict) else {}
    if event.name == "timer":
        return str(data.get("text", ""))
    if event.name == "suggestions" and data.get("items"):
        items = " ".join(f"[{i + 1}] {q}" for i, q in enumerate(data["items"]))
        return f"{data.get('intro') or '你可以问：'} {items}"
    if event.name == "phase":
        return f"—— {data.get('label', data.get('name', ''))} ——"
    if event.name == "actions":
        return "可用操作：" + "、".join(f"“{a.get('send', '')}”" for a in data.get("items", []))
    if event.name == "handoff":
        contact = data.get("contact", {})
        return f"转人工：{data.get('text', '') or '已为您转接'}（{contact.get('phone', '')}）"
    if event.name == "summary":
        closing = f"{data['closing']}\n" if data.get("closing") else ""
        return f"{closing}【面试总结】\n{data.get('summary', '')}"
    if event.name == "session.end":
        return f"（会话已结束：{data.get('reason', '')}）"
    if event.name == "condition":
        return f"（后置回复：{data.get('post_response', '')}）"
    return f"[{event.name}] {data or event.data}"
