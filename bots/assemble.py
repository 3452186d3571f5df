"""From a `BotSpec` to what is served: the persona resolved beside the bot, the agent, its flow around it.

`bots.registry` reads declarations; this module is the one place that turns one into a running bot, used by
``xdai serve``, ``xdai chat --bot`` and the reloader alike. A persona named by a path (``persona: persona.yaml``)
is looked up beside the bot's ``bot.yaml`` first, so a bot folder carries its own persona.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bots.flows import FlowAgent, FlowError, load_flow
from bots.registry import BotError, BotSpec, build_agent


def resolve_persona(spec: BotSpec) -> str:
    """The persona as `load_persona` should see it: a file beside bot.yaml when one is named, else as written."""
    beside = Path(spec.path) / spec.persona
    if spec.path and beside.is_file():
        return str(beside.resolve())
    return spec.persona


def check_bot(spec: BotSpec) -> None:
    """Load what a bot names without starting a model: the persona and the flow. `BotError` with file:line."""
    from xdai.persona import PersonaError, load_persona

    file = Path(spec.path) / "bot.yaml"
    try:
        load_persona(resolve_persona(spec))
    except PersonaError as exc:
        raise BotError(f"{file}: persona {spec.persona!r}: {exc}") from None
    if spec.flow:
        try:
            load_flow(spec.flow, spec.path)
        except FlowError as exc:
            raise BotError(str(exc)) from None


def build_bot(spec: BotSpec, stores_dir: str | Path, *, reuse: Any = None) -> Any:
    """The running bot: an `xdai.turn.Agent`, wrapped in a `FlowAgent` when the bot declares a flow.

    `reuse` (a running bot of the same name) lends its backend and stores when the new declaration names the
    same backend, model, options and knowledge: a persona edit reloads in milliseconds, not a model load."""
    resolved = dataclasses.replace(spec, persona=resolve_persona(spec))
    old = getattr(reuse, "agent", reuse)
    old_spec = getattr(reuse, "xdai_spec", None)
    agent = _rebuilt(old, resolved) if old is not None and old_spec is not None and _same_engine(old_spec, spec) \
        else None
    if agent is None:
        agent = build_agent(resolved, stores_dir)
    served: Any = agent
    if spec.flow:
        try:
            served = FlowAgent(agent, load_flow(spec.flow, spec.path), name=spec.name)
        except FlowError as exc:
            raise BotError(str(exc)) from None
    served.xdai_spec = spec
    return served


def _same_engine(a: BotSpec, b: BotSpec) -> bool:
    strip = {k: v for k, v in a.options.items() if k != "generation"}
    return (a.backend, a.model, a.knowledge, strip) == (b.backend, b.model, b.knowledge,
                                                        {k: v for k, v in b.options.items() if k != "generation"})


def _rebuilt(old: Any, spec: BotSpec) -> Any:
    """A new agent for `spec`'s persona over `old`'s backend and stores (the persona's inline store is rebuilt);
    None when the persona now names other stores."""
    from xdai.persona import load_persona
    from xdai.turn import Agent

    persona = load_persona(spec.persona)
    if list(persona.knowledge.stores) != list(old.persona.knowledge.stores):
        return None
    persona.generation = {**(persona.generation or {}), **dict(spec.options.get("generation") or {})}
    stores = [s for s in old.stores if not s.name.startswith("persona:")]
    return Agent(persona, stores=stores, backend=old.backend, embedder=old.embedder)
