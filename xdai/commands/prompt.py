"""`xdai prompt`: the assembled prompt for one turn, every part annotated with why it is there."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import click

from xdai.history import History
from xdai.render import RENDERINGS


def read_history_jsonl(path: str | Path) -> History:
    """A history file: one JSON object per line, {"user": ..., "bot": ...}; errors name file:line."""
    rows = []
    file = Path(path)
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{file}:{number}:{exc.colno}: not JSON: {exc.msg}") from None
        try:
            rows.append(History.from_list([row], where=f"{file}:{number}").exchanges[0])
        except ValueError as exc:
            raise click.ClickException(str(exc).replace(": row 1", "")) from None
    history = History()
    history.exchanges.extend(rows)
    return history


def write_history_jsonl(history: History, path: str | Path) -> None:
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in history.to_list()), encoding="utf-8")
    tmp.replace(file)


@click.command("prompt")
@click.argument("utterance")
@click.option("--persona", "-p", default=None, help="Persona name or YAML path (default: the configured persona).")
@click.option("--knowledge", "-k", multiple=True, help="Knowledge store path or name (repeatable).")
@click.option("--history", "history_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help='JSONL file, one {"user": ..., "bot": ...} exchange per line.')
@click.option("--condition", "-c", default=None, help='A condition of the persona, or free text as "text:...".')
@click.option("--json", "as_json", is_flag=True, help="Print the prompt and its annotations as JSON.")
@click.option("--model", "-m", default=None, help="The model whose rendering to show (default: the configured one).")
@click.option("--rendering", type=click.Choice(RENDERINGS), default="auto", show_default=True,
              help="How the model reads the prompt: auto picks by the backend and model (xdai.render).")
@click.option("--user", default=None, help="Recall this user's long-term memory (the service's store; TENANT/USER "
              "under API keys).")
@click.option("--bot", "memory_bot", default=None, help="Whose memory of --user (default: the persona's name).")
def prompt(utterance: str, persona: str | None, knowledge: tuple[str, ...], history_file: str | None,
           condition: str | None, as_json: bool, model: str | None, rendering: str, user: str | None,
           memory_bot: str | None) -> None:
    """Show the prompt the bot would complete for UTTERANCE, why each part is in it, and the text the model
    reads (its rendering: the model's chat template, GLM infilling or the plain transcript)."""
    from xdai.config import load_config
    from xdai.render import renderer_for
    from xdai.turn import Agent

    history = read_history_jsonl(history_file) if history_file else History()
    try:
        cfg = load_config()
        agent = Agent.from_names(persona or cfg.persona, knowledge=list(knowledge), backend=None,
                                 personas_dir=cfg.paths.personas_dir, stores_dir=cfg.paths.stores_dir,
                                 knowledge_settings=cfg.knowledge_settings())
        if rendering != "transcript":
            agent.renderer = renderer_for(model_template(cfg.backend.name, model or cfg.backend.model,
                                                         cfg.paths.cache_dir), rendering)
        if user is not None:
            from xdai.memory.recall import MemoryRecall
            from xdai.memory.store import open_memory_store

            server = cfg.server
            store = open_memory_store(server.session_store, sqlite_path=server.sqlite_path, redis_url=server.redis_url)
            history.memory = MemoryRecall(store, user, memory_bot or Path(persona or cfg.persona).stem)
        built = agent.build_prompt(history, utterance, condition=condition)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # ConfigError, PersonaError, StoreError
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(built.to_json(), ensure_ascii=False, indent=2))
    else:
        click.echo(built.explain())
        click.echo(f"\nrendered for the model ({built.rendering}):\n{built.model_text}")


@dataclass
class ModelTemplate:
    """What `xdai.render.renderer_for` reads of a backend, taken from the model file alone (no weights loaded)."""

    name: str
    chat_template: str | None = None
    template_tokens: dict[str, str] = field(default_factory=dict)


def model_template(backend: str, model: str, cache_dir: str | None) -> ModelTemplate:
    """The chat template of a llama_cpp model from its GGUF metadata (the vocabulary only is loaded)."""
    if backend != "llama_cpp":
        return ModelTemplate(backend)
    import llama_cpp

    from xdai.backends.models import resolve_model

    llm = llama_cpp.Llama(model_path=str(resolve_model(model, cache_dir)), vocab_only=True, verbose=False)

    def text(token: int) -> str:
        return llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    return ModelTemplate(backend, llm.metadata.get("tokenizer.chat_template") or None,
                         {"bos_token": text(llm.token_bos()), "eos_token": text(llm.token_eos())})
