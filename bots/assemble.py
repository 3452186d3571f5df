"""From a `BotSpec` to what is served: the persona resolved beside the bot, the agent, its flow around it.

`bots.registry` reads declarations; this module is the one place that turns one into a running bot, used by
``xdai serve``, ``xdai chat --bot`` and the reloader alike. A persona named by a path (``persona: persona.yaml``)
is looked up beside the bot's ``bot.yaml`` first, so a bot folder carries its own persona.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from bots.registry import BOT_FILE, BotError, BotSpec, build_agent
from xdai.flows import FlowAgent, FlowError, load_flow
from xdai.responder import Responder
from xdai.turn import Agent

if TYPE_CHECKING:
    from xdai.config import Config

Dir = str | Path


def resolve_persona(spec: BotSpec) -> str:
    """The persona as `load_persona` should see it: a file beside bot.yaml when one is named, else as written."""
    beside = Path(spec.path) / spec.persona
    if spec.path and beside.is_file():
        return str(beside.resolve())
    return spec.persona


def check_bot(spec: BotSpec, personas_dir: Dir | None = None) -> None:
    """Load what a bot names without starting a model: the persona and the flow. `BotError` with file:line."""
    from xdai.persona import PersonaError, load_persona

    file = Path(spec.path) / BOT_FILE
    try:
        load_persona(resolve_persona(spec), personas_dir)
    except PersonaError as exc:
        raise BotError(f"{file}: persona {spec.persona!r}: {exc}") from None
    if spec.flow:
        try:
            load_flow(spec.flow, spec.path)
        except FlowError as exc:
            raise BotError(str(exc)) from None


def build_bot(spec: BotSpec, stores_dir: Dir, *, personas_dir: Dir | None = None,
              reuse: tuple[BotSpec, Responder] | None = None, config: Config | None = None) -> Agent | FlowAgent:
    """The running bot: an `xdai.turn.Agent`, wrapped in a `FlowAgent` when the bot declares a flow.

    `reuse` (the declaration and running form of this bot so far) lends its backend and stores when the new
    declaration names the same backend, model, options and knowledge: a persona edit reloads in milliseconds, not
    a model load. `config` gives the backend its section's defaults and the stores their knowledge settings."""
    resolved = dataclasses.replace(spec, persona=resolve_persona(spec))
    agent = None
    if reuse is not None and _same_engine(reuse[0], spec):
        old = reuse[1].agent if isinstance(reuse[1], FlowAgent) else reuse[1]
        if isinstance(old, Agent):
            agent = _rebuilt(old, resolved, personas_dir)
    if agent is None:
        agent = build_agent(resolved, stores_dir, personas_dir, config=config)
    if not spec.flow:
        return agent
    try:
        return FlowAgent(agent, load_flow(spec.flow, spec.path), name=spec.name)
    except FlowError as exc:
        raise BotError(str(exc)) from None


def _same_engine(a: BotSpec, b: BotSpec) -> bool:
    strip = {k: v for k, v in a.options.items() if k != "generation"}
    return (a.backend, a.model, a.knowledge, strip) == (b.backend, b.model, b.knowledge,
                                                        {k: v for k, v in b.options.items() if k != "generation"})


def _rebuilt(old: Agent, spec: BotSpec, personas_dir: Dir | None) -> Agent | None:
    """A new agent for `spec`'s persona over `old`'s backend and stores (the persona's inline store is rebuilt);
    None when the persona now names other stores."""
    from xdai.persona import load_persona

    persona = load_persona(spec.persona, personas_dir)
    if list(persona.knowledge.stores) != list(old.persona.knowledge.stores):
        return None
    persona.override_generation(spec.options.get("generation"), f"{Path(spec.path) / BOT_FILE}: options")
    stores = [s for s in old.stores if not s.name.startswith("persona:")]
    return Agent(persona, stores=stores, backend=old.backend, embedder=old.embedder,
                 knowledge_settings=old.knowledge_settings)
