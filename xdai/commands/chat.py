"""`xdai chat`: talk to a persona in the terminal; replies stream, `/explain` shows why."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import click

from xdai.commands.prompt import read_history_jsonl, write_history_jsonl
from xdai.history import History
from xdai.responder import BotEvent, Responder

HELP = "/explain: the last prompt, annotated · /condition NAME|text:...: condition the next reply · /reset · /quit"


@click.command("chat")
@click.option("--bot", "bot_name", default=None, help="A bot from bots/ (its persona, knowledge, backend and flow).")
@click.option("--persona", "-p", default=None, help="Persona name or YAML path (default: the configured persona).")
@click.option("--knowledge", "-k", multiple=True, help="Knowledge store path or name (repeatable).")
@click.option("--backend", "-b", default=None, help="llama_cpp (default), hf, openai, glm.")
@click.option("--model", "-m", default=None, help='Model for the backend ("default": the bundled Qwen GGUF).')
@click.option("--history", "history_file", type=click.Path(dir_okay=False), default=None,
              help="JSONL file to resume from and save to (default: a new file under the cache folder).")
@click.option("--seed", type=int, default=None, help="Sampling seed, for reproducible replies.")
@click.option("--user", "memory_user", default=None, help="Remember this user across chats (the service's memory "
              "store, server.session_store), as a session opened with a user does.")
def chat(bot_name: str | None, persona: str | None, knowledge: tuple[str, ...], backend: str | None,
         model: str | None, history_file: str | None, seed: int | None, memory_user: str | None) -> None:
    """Chat with a persona in the terminal. The history is saved after every turn."""
    from xdai.config import load_config
    from xdai.flows import FlowAgent
    from xdai.turn import Agent, Delta, Reply

    cfg = load_config()
    persona = persona or cfg.persona
    try:
        if bot_name:
            from bots.assemble import build_bot
            from bots.registry import load_bots

            declared = load_bots(cfg.paths.bots_dir)
            if bot_name not in declared:
                raise ValueError(f"no bot named {bot_name!r} in {cfg.paths.bots_dir} (declared: {', '.join(declared)})")
            agent: Agent | FlowAgent = build_bot(declared[bot_name], cfg.paths.stores_dir,
                                                 personas_dir=cfg.paths.personas_dir, config=cfg)
        else:
            backend = backend or cfg.backend.name
            agent = Agent.from_names(persona, knowledge=list(knowledge), backend=backend,
                                     model=model or cfg.backend.model, personas_dir=cfg.paths.personas_dir,
                                     stores_dir=cfg.paths.stores_dir, knowledge_settings=cfg.knowledge_settings(),
                                     **cfg.backend_options(backend))
        if seed is not None:
            agent.persona.override_generation({"seed": seed}, "--seed")
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    if history_file and Path(history_file).is_file():
        history = read_history_jsonl(history_file)
    else:
        history = agent.new_history()
    save_to = Path(history_file) if history_file else (
        Path(cfg.paths.cache_dir).expanduser() / "chats" / f"{agent.persona.name}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    )
    memory = None
    if memory_user is not None and agent.persona.memory:
        memory = open_memory(cfg, memory_user, bot_name or Path(persona).stem)
        history.memory = memory
    bot, user = agent.builder.bot + agent.builder.sep, agent.builder.user + agent.builder.sep
    click.secho(f"{agent.persona.name} · history saved to {save_to} · {HELP}", dim=True, err=True)
    if not history.exchanges:
        click.echo(f"{bot}{agent.greeting()}")
    session = open_session(agent, history)
    last_prompt = None
    condition: str | None = None
    while True:
        try:
            line = input(user)
        except (EOFError, KeyboardInterrupt):
            click.echo()
            break
        command = line.strip()
        if command in ("/quit", "/exit"):
            break
        if command == "/reset":
            agent.close_session(session)
            history = agent.new_history()
            history.memory = memory
            condition = None
            click.secho("(history cleared)", dim=True)
            click.echo(f"{bot}{agent.greeting()}")
            session = open_session(agent, history)
            continue
        if command == "/explain":
            click.echo(last_prompt.explain() if last_prompt else "(no turn yet)")
            continue
        if command.startswith("/condition"):
            condition = command[len("/condition"):].strip() or None
            try:
                agent.condition_text(condition)
            except ValueError as exc:
                click.secho(str(exc), fg="red")
                condition = None
            continue
        if command in ("/help", "/?"):
            click.echo(HELP)
            continue

        async def turn(past: History, text: str, cond: str | None, session: str) -> Reply | None:
            click.echo(bot, nl=False)
            final = None
            later: list[BotEvent] = []
            async for event in agent.respond(past, text, condition=cond, session=session):
                match event:
                    case Delta(text=piece):
                        click.echo(piece, nl=False)
                    case BotEvent():
                        later.append(event)
                    case Reply():
                        final = event
            click.echo()
            show_events(later)
            return final

        try:
            reply = asyncio.run(turn(history, line, condition, session))
        except (ValueError, KeyboardInterrupt) as exc:
            click.secho(f"(turn abandoned: {exc or 'interrupted'})", fg="red")
            continue
        condition = None
        if reply is None:
            continue
        last_prompt = reply.prompt
        if reply.finish_reason == "error":
            click.secho(f"(the model failed: {reply.error}; the turn is not saved)", fg="red")
            continue
        history.append(line, reply.text)
        write_history_jsonl(history, save_to)
        if memory is not None:
            remember(memory, line, session, len(history))
    click.secho(f"{len(history)} exchange(s) saved to {save_to}", dim=True, err=True)


def open_memory(cfg: Any, user: str, bot: str) -> Any:
    """`user`'s memory of `bot` in the configured store (`xdai.memory`)."""
    from xdai.memory.items import check_user
    from xdai.memory.recall import MemoryRecall
    from xdai.memory.store import open_memory_store

    try:
        check_user(user)
        s = cfg.server
        store = open_memory_store(s.session_store, sqlite_path=s.sqlite_path, redis_url=s.redis_url, create=True)
        return MemoryRecall(store, user, bot)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(f"--user: {exc}") from None


def remember(memory: Any, text: str, session: str, seq: int) -> None:
    """After a turn is shown: the facts of the user's line (the rules), written to their memory."""
    from xdai.memory.extract import RuleExtractor, detect_language
    from xdai.memory.store import Provenance

    facts = RuleExtractor().extract(text)
    if facts:
        changes = memory.store.apply(memory.user, memory.bot, facts, Provenance(session, seq, detect_language(text)))
        saved = [c.item.text for c in changes if c.action != "kept"]
        if saved:
            click.secho(f"(remembered: {'; '.join(saved)})", dim=True)


def open_session(agent: Responder, history: History) -> str:
    """Start a session for `history` (a bot's flow runs its on_open there), show its first events; its id."""
    session = f"chat-{id(history):x}"
    show_events(agent.open_session(session, history))
    return session


def show_events(events: list[BotEvent]) -> None:
    """A bot flow's events (timer, suggestions, summary...) as dim lines."""
    from xdai.flows import describe_event

    for event in events:
        line = describe_event(event)
        if line:
            click.secho(line, dim=True)
