"""Finding personas and their stores on disk: by name in a personas directory, or by path.

The directories are parameters: entry points (`xdai.commands`, `bots`) pass the ones from the `Config` they read;
left out, they are the defaults of `xdai.config.PathsConfig` (the shipped personas, ./stores).
"""

from __future__ import annotations

from pathlib import Path

from xdai.config import PathsConfig
from xdai.persona.limits import DEFAULT_LIMITS, PersonaLimits, read_limited
from xdai.persona.parse import _Builder, _find, _Loc, _parse_yaml, parse_persona
from xdai.persona.schema import Persona, PersonaError, PersonaIssue

Dir = str | Path


def resolve_store(spec: str, persona_path: Path | None = None, stores_dir: Dir | None = None) -> Path | None:
    """Where a `knowledge.stores` entry lives: an absolute path, a path relative to the working directory or to
    the persona file, or a name under `stores_dir` (None: the default ./stores). None when none exists."""
    p = Path(spec).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p]
    if not p.is_absolute():
        if persona_path is not None:
            candidates.append(persona_path.parent / p)
        candidates.append(Path(PathsConfig.stores_dir if stores_dir is None else stores_dir) / p)
    return next((c for c in candidates if c.exists()), None)


def read_persona_text(path: Path, limits: PersonaLimits = DEFAULT_LIMITS) -> str:
    """A persona file's text: a regular file within `limits.persona_bytes`, UTF-8; PersonaError otherwise."""
    data = read_limited(path, limits.persona_bytes, "persona file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PersonaError([PersonaIssue(str(path), 0, 0, f"cannot read: not UTF-8 ({exc.reason} at byte "
                                                          f"{exc.start})")]) from None


def check_persona_file(path: str | Path, stores_dir: Dir | None = None,
                       limits: PersonaLimits = DEFAULT_LIMITS) -> list[PersonaIssue]:
    """Every problem in a persona YAML file (errors, and warnings for stores that do not exist yet under
    `stores_dir` or beside the file)."""
    path = Path(path)
    try:
        text = read_persona_text(path, limits)
    except PersonaError as exc:
        return exc.issues
    persona, issues = parse_persona(text, str(path))
    if persona is not None:
        persona.path = path
        issues.extend(_store_warnings(persona, text, str(path), stores_dir))
        issues.extend(_asset_warnings(persona, text, str(path)))
    return issues


def _asset_warnings(persona: Persona, text: str, file: str) -> list[PersonaIssue]:
    """A warning per ``embeded://`` asset whose file is not in NAME.assets/ (a CHARX export would refuse)."""
    from xdai.persona.assets import missing_assets

    missing = missing_assets(persona)
    if not missing:
        return []
    listed = _find(_parse_yaml(text, file, _Builder(file)), ["assets"])
    out = []
    for asset in missing:
        i = next(n for n, a in enumerate(persona.assets or []) if a is asset)
        loc = _find(listed.value[i], ["uri"]) if listed is not None and listed.kind == "seq" else None
        loc = loc or _Loc("scalar", asset.uri, "")
        out.append(PersonaIssue(file, loc.line, loc.col, f"assets[{i}].uri: no file {asset.embedded_path!r} in "
                                f"{persona.assets_dir}", "warning"))
    return out


def _store_warnings(persona: Persona, text: str, file: str, stores_dir: Dir | None) -> list[PersonaIssue]:
    out = []
    root = _parse_yaml(text, file, _Builder(file))
    stores = _find(root, ["knowledge", "stores"])
    for i, spec in enumerate(persona.knowledge.stores):
        if resolve_store(spec, persona.path, stores_dir) is None:
            loc = stores.value[i] if stores is not None and stores.kind == "seq" else _Loc("scalar", spec, "")
            out.append(PersonaIssue(file, loc.line, loc.col,
                                    f"knowledge.stores[{i}]: store {spec!r} does not exist (yet); "
                                    "build it with `xdai knowledge build` before chatting", "warning"))
    return out


def _personas_dir(personas_dir: Dir | None) -> Path:
    return Path(PathsConfig.personas_dir if personas_dir is None else personas_dir)


def persona_files(personas_dir: Dir | None = None) -> list[Path]:
    """The persona files in `personas_dir` (None: the shipped personas/), sorted."""
    d = _personas_dir(personas_dir)
    return sorted([*d.glob("*.yaml"), *d.glob("*.yml")]) if d.is_dir() else []


def find_persona_file(name_or_path: str | Path, personas_dir: Dir | None = None) -> Path:
    """A path as given when it exists or looks like a file; else NAME.yaml in the personas directory."""
    p = Path(name_or_path)
    if p.is_file() or p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        return p
    d = _personas_dir(personas_dir)
    for suffix in (".yaml", ".yml"):
        if (d / f"{name_or_path}{suffix}").is_file():
            return d / f"{name_or_path}{suffix}"
    return d / f"{name_or_path}.yaml"


def load_persona(name_or_path: str | Path, personas_dir: Dir | None = None,
                 limits: PersonaLimits = DEFAULT_LIMITS) -> Persona:
    """Load a persona by name ("xiaodai" -> personas/xiaodai.yaml) or path; raise PersonaError on any error."""
    path = find_persona_file(name_or_path, personas_dir)
    if not path.is_file():
        known = ", ".join(f.stem for f in persona_files(personas_dir)) or "none"
        raise PersonaError([PersonaIssue(str(path), 0, 0, f"no persona {str(name_or_path)!r} (known: {known})")])
    text = read_persona_text(path, limits)
    persona, issues = parse_persona(text, str(path))
    if persona is None:
        raise PersonaError([i for i in issues if i.severity == "error"])
    persona.path = path
    return persona
