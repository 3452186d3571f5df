"""One configuration file (`xdai.yaml`) with environment-variable overrides.

Defaults work with no file at all. Every key can be overridden by an environment variable named
``XDAI_<SECTION>_<KEY>`` (upper case), e.g. ``XDAI_SERVER_PORT=9000`` or ``XDAI_BACKEND_NAME=hf``.
Values from the environment are parsed as YAML scalars, so ``8765`` is an int and ``true`` a bool.

The file is read once, at an entry point (`xdai.commands`), and each part gets its section: the stores a
`KnowledgeSettings` (`Config.knowledge_settings`), a backend its constructor arguments (`Config.backend_options`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from knowledge import safe_yaml
from knowledge.settings import ConfigError, KnowledgeSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_ENV = "XDAI_CONFIG"
DEFAULT_CONFIG_FILE = "xdai.yaml"


@dataclass
class PathsConfig:
    cache_dir: str = str(Path.home() / ".cache" / "xdai")
    personas_dir: str = str(REPO_ROOT / "personas")
    bots_dir: str = str(REPO_ROOT / "bots")
    stores_dir: str = "stores"


@dataclass
class EmbedderConfig:
    # "default" is the bundled offline multilingual embedder; anything else is a
    # sentence-transformers model path or hub id.
    name: str = "default"
    batch_size: int = 64
    cache: bool = True  # passage embeddings cached under paths.cache_dir between builds ($XDAI_EMBED_CACHE=0: off)


@dataclass
class KnowledgeConfig:
    top_k: int = 5  # hits per store query when the caller names no count (`xdai knowledge query`)
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    rrf_k: int = 60
    near_duplicate_threshold: float = 0.97
    max_item_chars: int = 2000


@dataclass
class BackendConfig:
    name: str = "llama_cpp"
    model: str = "default"
    n_ctx: int = 4096
    threads: int = 0  # 0: all cores
    base_url: str = ""
    api_key: str = ""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    bots: list[str] = field(default_factory=lambda: ["xiaodai", "*"])  # "*": every other bot under paths.bots_dir
    session_store: str = "sqlite"  # sqlite | redis
    sqlite_path: str = "stores/sessions.sqlite3"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # each a key, or {key: ..., tenant: NAME}: the users a key's sessions name are the tenant's (xdai.memory), so
    # one key never reads another's memories; a key without a tenant is a tenant of its own
    api_keys: list[str | dict[str, str]] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    max_frame_bytes: int = 65536
    max_message_chars: int = 4000  # a longer message could not fit the prompt budget anyway
    queue_size: int = 32
    workers: int = 8  # turns in flight at once: their model calls join one batch (xdai.backends.engine)
    idle_timeout_s: float = 1800.0
    rate_limit_per_s: float = 5.0
    rate_limit_burst: float = 10.0  # frames a connection may send at once before the rate applies
    ip_rate_limit_per_s: float = 50.0  # all connections of one IP together
    max_connections_per_ip: int = 256
    send_buffer_frames: int = 1024  # a connection that falls this far behind is closed (1013) and may resume
    shutdown_grace_s: float = 10.0  # in-flight replies get this long to finish; the rest end "interrupted"
    sqlite_synchronous: str = "FULL"  # FULL: a commit is on disk before its frame is sent
    instance_id: str = ""  # names this replica's in-flight replies; default: unique per process (host-pid-random)
    lease_s: float = 30.0  # a replica that has not renewed its lease for this long is gone: its replies end
    ip_session_rate_per_s: float = 2.0  # new sessions per second from one address
    ip_session_burst: float = 20.0
    auth_failures_before_backoff: int = 5  # failed keys from one address before each further try must wait
    auth_backoff_max_s: float = 300.0  # the wait doubles per failure up to this
    ip_state_ttl_s: float = 900.0  # an address's limits outlive its last connection this long
    max_tracked_ips: int = 65536
    max_turns_per_ip: int = 8  # replies in flight from one address (0: no cap)
    max_turns_per_key: int = 0  # replies in flight per API key (0: no cap)
    orphan_turn_grace_s: float = 30.0  # a reply whose session lost its connection is cancelled after this
    eval_dir: str = "stores/studies"  # pairwise studies served at /eval/<id> (xdai eval pairs build writes them)
    memory: bool = True  # sessions opened with a user remember them across sessions (xdai.memory)
    memory_extractor: str = "rules"  # rules | model | both: what finds the facts (docs/protocol.md, Memory)

    def check(self, where: str = "server") -> None:
        """Normalise what can be written several ways, refuse what cannot be used; ConfigError names the key."""
        origins = []
        for i, entry in enumerate(self.allowed_origins):
            try:
                origins.append(normalize_origin(entry))
            except ValueError as exc:
                raise ConfigError(f"{where}.allowed_origins[{i}]: {exc}") from None
        self.allowed_origins = origins
        for i, entry in enumerate(self.api_keys):
            problem = _key_problem(entry)
            if problem:
                raise ConfigError(f"{where}.api_keys[{i}]: {problem}")
        if self.memory_extractor not in ("rules", "model", "both"):
            raise ConfigError(f"{where}.memory_extractor: {self.memory_extractor!r} is not one of rules, model, both")


def _key_problem(entry: Any) -> str | None:
    """What is wrong with an ``api_keys`` entry (never quoting the key), or None."""
    if isinstance(entry, str):
        return None if entry else "an empty key"
    if not isinstance(entry, dict):
        return f"expected a key or {{key, tenant}}, got {type(entry).__name__}"
    unknown = set(entry) - {"key", "tenant"}
    if unknown:
        return f"unknown field(s) {sorted(unknown)} (expected key, tenant)"
    if not isinstance(entry.get("key"), str) or not entry["key"]:
        return "'key' must be a non-empty string"
    tenant = entry.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not re.fullmatch(r"[a-z0-9_-]{1,64}", tenant)):
        return "'tenant' must be 1-64 characters of a-z, 0-9, '_' and '-'"
    return None


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")


def normalize_origin(entry: Any) -> str:
    """An Origin as browsers send it: ``scheme://host[:port]``, lower case, no path, no trailing slash; or "*"."""
    if not isinstance(entry, str):
        raise ValueError(f"expected a string like 'https://chat.example.com', got {entry!r}")
    text = entry.strip().rstrip("/")
    if text == "*":
        return text
    scheme, sep, host = text.partition("://")
    if not sep or not _SCHEME.match(scheme) or not host or any(c in host for c in "/?#@ \t"):
        raise ValueError(f"{entry!r} is not an origin: write scheme://host[:port], e.g. 'https://chat.example.com'")
    return f"{scheme.lower()}://{host.lower()}"


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    persona: str = "xiaodai"
    source: str = "<defaults>"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def knowledge_settings(self) -> KnowledgeSettings:
        """What the knowledge package is configured by: the ``knowledge`` section, the embedder and the cache."""
        k = self.knowledge
        return KnowledgeSettings(
            cache_dir=str(Path(self.paths.cache_dir).expanduser()), embed_cache=self.embedder.cache,
            embedder=self.embedder.name, batch_size=self.embedder.batch_size, top_k=k.top_k,
            dense_weight=k.dense_weight, bm25_weight=k.bm25_weight, rrf_k=k.rrf_k,
            near_duplicate_threshold=k.near_duplicate_threshold, max_item_chars=k.max_item_chars,
        )

    def backend_options(self, name: str) -> dict[str, Any]:
        """The constructor arguments the ``backend`` section gives backend `name` (a bot's options override them):
        llama_cpp its context, threads and model cache; openai its server and key."""
        b = self.backend
        if name == "llama_cpp":
            return {"n_ctx": b.n_ctx, "threads": b.threads, "cache_dir": self.paths.cache_dir}
        if name == "openai":
            return {"base_url": b.base_url, "api_key": b.api_key}
        return {}


def _apply(section: Any, values: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a mapping, got {type(value).__name__}")
            _apply(current, value, f"{where}.{key}")
        else:
            setattr(section, key, _coerce(value, current, f"{where}.{key}"))


def _coerce(value: Any, current: Any, where: str) -> Any:
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        try:
            return type(current)(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(current, list):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return value
    return "" if value is None else str(value)


def _env_value(name: str, text: str) -> Any:
    """An override's value, parsed as YAML (bounded); a YAML error names the variable and where in its value."""
    try:
        return safe_yaml.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"${name}:{mark.line + 1}:{mark.column + 1}" if mark else f"${name}"
        raise ConfigError(f"{where}: {getattr(exc, 'problem', None) or exc}") from None


def _env_overrides(cfg: Config, environ: dict[str, str]) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                name = f"XDAI_{f.name}_{sub.name}".upper()
                if name in environ:
                    _apply(value, {sub.name: _env_value(name, environ[name])}, f"${name}")
        elif f.name != "source":
            name = f"XDAI_{f.name}".upper()
            if name in environ:
                setattr(cfg, f.name, environ[name])
    if "XDAI_EMBED_CACHE" in environ and "XDAI_EMBEDDER_CACHE" not in environ:  # the older, documented spelling
        cfg.embedder.cache = environ["XDAI_EMBED_CACHE"].strip().lower() not in ("0", "off", "false", "no")


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Load `path` (or $XDAI_CONFIG, or ./xdai.yaml when present), then apply XDAI_* overrides."""
    environ = dict(os.environ if environ is None else environ)
    cfg = Config()
    candidate = path or environ.get(CONFIG_ENV)
    if candidate is None and Path(DEFAULT_CONFIG_FILE).is_file():
        candidate = DEFAULT_CONFIG_FILE
    if candidate is not None:
        file = Path(candidate)
        if not file.is_file():
            raise ConfigError(f"{file}: configuration file not found")
        try:
            data = safe_yaml.load(file.read_text(encoding="utf-8")) or {}  # alias expansion bounded
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else str(file)
            raise ConfigError(f"{where}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a mapping at the top level")
        _apply(cfg, data, str(file))
        cfg.source = str(file)
    _env_overrides(cfg, environ)
    try:
        cfg.knowledge_settings()  # out-of-range values fail here, naming the file, not at the first query
        cfg.server.check()
    except ConfigError as exc:
        raise ConfigError(f"{cfg.source}: {exc}") from None
    return cfg
