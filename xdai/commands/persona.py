"""`xdai persona`: check persona YAML, import and export Character Cards V2/V3 (.json, .png, .charx), list personas."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import click

from xdai.config import PathsConfig, load_config
from xdai.persona import (
    DEFAULT_LIMITS,
    Persona,
    PersonaError,
    asset_files,
    card_image,
    card_to_png,
    card_v3_png,
    check_persona_file,
    dump_persona_yaml,
    find_persona_file,
    load_card,
    load_persona,
    missing_assets,
    parse_examples,
    parse_persona,
    persona_files,
    write_assets,
    write_charx,
)


def _paths() -> PathsConfig:
    """Where personas and stores live: read once per command from the configuration, then passed down."""
    return load_config().paths


@click.group()
def persona() -> None:
    """Check, import and export personas (Character Cards V2 and V3, CHARX)."""


@persona.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--max-bytes", type=click.IntRange(min=1), default=DEFAULT_LIMITS.persona_bytes, show_default=True,
              help="Refuse persona files larger than this.")
def check(files: tuple[str, ...], max_bytes: int) -> None:
    """Validate persona FILEs (paths or names); print every problem as file:line:col: message."""
    errors = warnings = 0
    paths = _paths()
    limits = dataclasses.replace(DEFAULT_LIMITS, persona_bytes=max_bytes)
    for name in files:
        issues = check_persona_file(find_persona_file(name, paths.personas_dir), paths.stores_dir, limits)
        for issue in issues:
            click.echo(str(issue))
        errors += sum(i.severity == "error" for i in issues)
        warnings += sum(i.severity == "warning" for i in issues)
    n = len(files)
    verdict = "ok" if not errors else "FAILED"
    click.echo(f"persona check: {n} file{'s' * (n != 1)}, {errors} error{'s' * (errors != 1)}, "
               f"{warnings} warning{'s' * (warnings != 1)}: {verdict}")
    if errors:
        raise SystemExit(1)


@persona.command(name="import")
@click.argument("card", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML to write (default: CARD's name with .yaml, beside it).")
@click.option("--force", is_flag=True, help="Overwrite an existing file (and its NAME.assets folder).")
@click.option("--max-bytes", type=click.IntRange(min=1), default=DEFAULT_LIMITS.card_bytes, show_default=True,
              help="Refuse card files larger than this.")
def import_(card: Path, out: Path | None, force: bool, max_bytes: int) -> None:
    """Import a Character Card (V1, V2 or V3; .json, .png or .charx, told apart by content) as persona YAML.

    A PNG card's image and a CHARX's asset files are stored in NAME.assets/ beside NAME.yaml."""
    try:
        loaded = load_card(card, dataclasses.replace(DEFAULT_LIMITS, card_bytes=max_bytes))
        p = Persona.from_card(loaded.card, source=str(card))
    except PersonaError as exc:
        raise click.ClickException(f"cannot import {card}:\n{exc}") from None
    out = out or card.with_suffix(".yaml")
    folder = out.with_name(out.stem + ".assets")
    for existing in (out, folder):
        if existing.exists() and not force:
            raise click.ClickException(f"{existing} exists: pass --force to overwrite, or --out another file")
    text = dump_persona_yaml(p)
    reread, issues = parse_persona(text, str(out))
    if reread != p:  # the YAML must load back to the same persona, or the import is not lossless
        raise click.ClickException(f"internal: {out} would not load back as imported\n"
                                   + "\n".join(map(str, issues)))
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)  # --force: the old card's files must not travel with the new one
    out.write_text(text, encoding="utf-8")
    if loaded.files or loaded.image:
        write_assets(folder, loaded.files, loaded.image)
    raw = p.card_extra.get("mes_example")
    if isinstance(raw, str) and parse_examples(raw)[1]:
        click.echo(f"note: mes_example has {parse_examples(raw)[1]} line(s) outside {{{{user}}}}:/{{{{char}}}}: "
                   "turns; kept verbatim for export, not used in prompts", err=True)
    p.path = out
    for asset in missing_assets(p):
        click.echo(f"note: asset {asset.type}/{asset.name} ({asset.uri}) is not in the card: it stays named, "
                   "without its file", err=True)
    book = len(p.character_book.entries) if p.character_book else 0
    stored = f", {len(loaded.files)} file(s) in {folder}" if loaded.files else ""
    click.echo(f"imported {p.name!r} from {card} -> {out} ({len(p.mes_example)} examples, {book} lore entries, "
               f"language {p.language}; Card V{loaded.version} {loaded.container.upper()}{stored})")


@persona.command()
@click.argument("file")
@click.option("--format", "fmt", type=click.Choice(["card-v2", "card-v3"]), default="card-v2", show_default=True)
@click.option("--png", is_flag=True, help="Write a PNG card (V2: the JSON in a `chara` chunk; V3: in a `ccv3` "
                                          "chunk, with the V2 card beside it in `chara` for older readers).")
@click.option("--charx", is_flag=True, help="Write a CHARX (card-v3 only): card.json and the persona's asset files.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="PNG to carry the card (default: the image of the card it was imported from, else a plain "
                   "generated avatar).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: ./NAME.card.json, .card.png or .charx, NAME being FILE's stem).")
def export(file: str, fmt: str, png: bool, charx: bool, image: Path | None, out: Path | None) -> None:
    """Export persona FILE (path or name) as a Character Card V2 or V3."""
    v3 = fmt == "card-v3"
    if charx and (png or image is not None or not v3):
        raise click.UsageError("--charx writes a Card V3 zip: use it with --format card-v3, without --png/--image")
    try:
        p = load_persona(file, _paths().personas_dir)
    except PersonaError as exc:
        raise click.ClickException(f"cannot export:\n{exc}") from None
    base = Path.cwd() / (p.path or Path(file)).name
    embedded = [a for a in p.assets or [] if a.embedded_path is not None]
    if charx:
        missing = missing_assets(p)
        if missing:
            names = ", ".join(a.uri for a in missing)
            raise click.ClickException(f"cannot export {file} as CHARX: no file for {names} in {p.assets_dir}")
        out = out or base.with_name(base.stem + ".charx")
        out.write_bytes(write_charx(p.to_card_v3(), asset_files(p.assets_dir)))
    elif png or image is not None:
        out = out or base.with_name(base.stem + ".card.png")
        picture = image.read_bytes() if image else card_image(p)
        try:
            data = card_v3_png(p, picture) if v3 else card_to_png(p.to_card_v2(), picture)
        except ValueError as exc:
            raise click.ClickException(f"{image or p.assets_dir}: {exc}") from None
        out.write_bytes(data)
        if embedded:
            click.echo(f"note: {len(embedded)} embedded asset(s) do not travel in a PNG: export with "
                       "--format card-v3 --charx to carry them", err=True)
    else:
        out = out or base.with_name(base.stem + ".card.json")
        card = p.to_card_v3() if v3 else p.to_card_v2()
        out.write_text(json.dumps(card, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    click.echo(f"exported {p.name!r} ({fmt}{', CHARX' if charx else ''}) -> {out}")


@persona.command(name="list")
@click.option("--dir", "personas_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Personas directory (default: paths.personas_dir from the configuration).")
def list_(personas_dir: Path | None) -> None:
    """List the personas in the personas directory, with their language and status."""
    files = persona_files(personas_dir if personas_dir is not None else _paths().personas_dir)
    broken = 0
    for f in files:
        try:
            p = load_persona(f)
        except PersonaError as exc:
            broken += 1
            click.echo(f"{f.stem:<14} BROKEN  {len(exc.issues)} error(s): run `xdai persona check {f}`")
            continue
        joiner = "" if p.language == "zh" else " "
        summary = joiner.join(p.description.split())[:60]
        click.echo(f"{f.stem:<14} {p.language}  {p.name} — {summary}")
    click.echo(f"{len(files)} persona{'s' * (len(files) != 1)}, {broken} broken")
