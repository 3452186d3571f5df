"""Bots: persona + knowledge + backend (+ a flow), declared in ``bots/NAME/bot.yaml``.

The registry only reads and validates declarations; `bots.assemble` turns a `BotSpec` into a running bot, and
`BotSpec.info()` is the plain description the service shows.
A declaration is small on purpose so that later additions (flows with hooks, events) are new keys, not a new format.

    name: xiaodai            # optional; must equal the folder name when given
    persona: xiaodai         # a persona name (personas/NAME.yaml) or a path
    knowledge: [knowledge]   # source folders/files or built store dirs, relative to the bot folder
    backend: llama_cpp
    model: default
    flow: null               # a module path, used by bot flows
    options: {max_tokens: 96}
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from knowledge import safe_yaml

if TYPE_CHECKING:
    from knowledge.settings import KnowledgeSettings
    from xdai.config import Config
    from xdai.service.protocol import BotInfo
    from xdai.turn import Agent

NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
BOT_FILE = "bot.yaml"
KNOWN_KEYS = {"name", "persona", "knowledge", "backend", "model", "flow", "options", "description"}


class BotError(ValueError):
    """A bot declaration is wrong; the message starts with file:line."""


@dataclass
class BotSpec:
    name: str
    persona: str
    knowledge: list[str] = field(default_factory=list)
    backend: str = "llama_cpp"
    model: str = "default"
    flow: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    path: str = ""

    def info(self) -> BotInfo:
        """The public face the service shows at /bots: no paths, no options (they may hold secrets)."""
        from xdai.service.protocol import BotInfo

        return BotInfo(name=self.name, persona=self.persona, description=self.description, backend=self.backend,
                       model=self.model, flow=self.flow)

    def to_json(self) -> dict[str, Any]:
        return self.info().to_json()


def valid_name(name: Any) -> bool:
    return isinstance(name, str) and bool(NAME_RE.match(name))


def _line_of(node: yaml.Node, key: str) -> int:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v.start_mark.line + 1
    return node.start_mark.line + 1 if node is not None else 1


def load_bot(folder: str | Path) -> BotSpec:
    """Read and validate ``folder/bot.yaml``; errors name file:line."""
    folder = Path(folder)
    file = folder / BOT_FILE
    if not valid_name(folder.name):
        raise BotError(f"{file}:1: bot folder name {folder.name!r} must match {NAME_RE.pattern}")
    try:
        text = file.read_text(encoding="utf-8")
        node = safe_yaml.compose(text)  # alias expansion and nesting bounded
        data = safe_yaml.load(text)
    except OSError as exc:
        raise BotError(f"{file}:1: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise BotError(f"{file}:{mark.line + 1 if mark else 1}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise BotError(f"{file}:1: expected a mapping of bot fields")

    def fail(key: str, message: str) -> BotError:
        return BotError(f"{file}:{_line_of(node, key)}: {key}: {message}")

    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (known: {', '.join(sorted(KNOWN_KEYS))})")
    name = data.get("name", folder.name)
    if name != folder.name:
        raise fail("name", f"{name!r} must equal the folder name {folder.name!r}")
    for key in ("persona", "backend", "model"):
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            raise fail(key, f"expected a non-empty string, got {data[key]!r}")
    if "persona" not in data:
        raise BotError(f"{file}:1: persona: required (a persona name or path)")
    knowledge = data.get("knowledge") or []
    if isinstance(knowledge, str):
        knowledge = [knowledge]
    if not isinstance(knowledge, list) or not all(isinstance(k, str) for k in knowledge):
        raise fail("knowledge", "expected a list of paths")
    resolved = []
    for entry in knowledge:
        path = Path(entry) if Path(entry).is_absolute() else folder / entry
        if not path.exists():
            raise fail("knowledge", f"{entry!r} does not exist ({path})")
        resolved.append(str(path))
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise fail("options", "expected a mapping")
    flow = data.get("flow")
    if flow is not None and not isinstance(flow, str):
        raise fail("flow", "expected a module path or null")
    return BotSpec(name=name, persona=data["persona"], knowledge=resolved, backend=data.get("backend", "llama_cpp"),
                   model=data.get("model", "default"), flow=flow, options=options,
                   description=str(data.get("description", "")), path=str(folder))


def load_bots(bots_dir: str | Path) -> dict[str, BotSpec]:
    """Every ``bots_dir/NAME/bot.yaml``, by name."""
    bots_dir = Path(bots_dir)
    if not bots_dir.is_dir():
        raise BotError(f"{bots_dir}: bots folder not found")
    return {spec.name: spec for spec in (load_bot(p.parent) for p in sorted(bots_dir.glob(f"*/{BOT_FILE}")))}


def is_store_dir(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def ensure_store(spec: BotSpec, stores_dir: str | Path, settings: KnowledgeSettings | None = None) -> list[str]:
    """The knowledge store dirs for `spec`: built store dirs are used as they are; source dirs are built once
    into ``stores_dir/bots/NAME`` with `settings` (rebuilt when a source file is newer than the store)."""
    sources = [k for k in spec.knowledge if not is_store_dir(k)]
    stores = [k for k in spec.knowledge if is_store_dir(k)]
    if not sources:
        return stores
    target = Path(stores_dir) / "bots" / spec.name
    newest = max((p.stat().st_mtime for s in sources for p in ([Path(s)] + list(Path(s).rglob("*")))), default=0.0)
    if not is_store_dir(target) or (target / "manifest.json").stat().st_mtime < newest:
        from knowledge.store import Store

        started = time.monotonic()
        print(f"bot {spec.name}: building knowledge store {target} from {len(sources)} source(s)", file=sys.stderr)
        Store.build(sources, target, settings=settings)
        print(f"bot {spec.name}: store ready at {target} ({time.monotonic() - started:.1f}s)", file=sys.stderr)
    return stores + [str(target)]


def build_agent(spec: BotSpec, stores_dir: str | Path, personas_dir: str | Path | None = None, *,
                config: Config | None = None) -> Agent:
    """The running form of a bot: an `xdai.turn.Agent` over its persona, its stores and its backend.

    ``options.generation`` overrides the persona's generation settings (max_tokens, temperature, ...; checked as
    the persona's own); every other option goes to the backend's constructor (n_ctx, threads, ...), over what
    `config`'s ``backend`` section gives that backend. `config` also gives the stores their knowledge settings."""
    from xdai.turn import Agent

    options = dict(spec.options)
    generation = options.pop("generation", None)
    settings = None
    if config is not None:
        options = {**config.backend_options(spec.backend), **options}
        settings = config.knowledge_settings()
    agent = Agent.from_names(persona=spec.persona, knowledge=ensure_store(spec, stores_dir, settings) or None,
                             backend=spec.backend, model=spec.model, personas_dir=personas_dir, stores_dir=stores_dir,
                             knowledge_settings=settings, **options)
    agent.persona.override_generation(generation, f"{Path(spec.path) / BOT_FILE}: options")
    return agent
