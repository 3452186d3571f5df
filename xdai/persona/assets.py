"""A persona's files beside it: NAME.assets/ next to NAME.yaml holds what a card carried.

  - the files of a CHARX (every member but card.json), at their paths inside the zip, so that an asset
    ``embeded://assets/icon/images/main.png`` is NAME.assets/assets/icon/images/main.png, and a CHARX export
    writes the same members back;
  - a PNG card's image (its card chunks removed) as NAME.assets/ccdefault.png: what Card V3's ``ccdefault:``
    icon means, and the image a PNG export carries unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path

from xdai.persona.charx import safe_member_name
from xdai.persona.schema import Asset, Persona

CARD_IMAGE = "ccdefault.png"


def asset_files(folder: Path | None) -> dict[str, bytes]:
    """The files under `folder` by their relative POSIX path (the card image and symbolic links left out)."""
    if folder is None or not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and not path.is_symlink() and name != CARD_IMAGE:
            out[name] = path.read_bytes()
    return out


def card_image(persona: Persona) -> bytes | None:
    """The image of the card this persona was imported from (NAME.assets/ccdefault.png), if any."""
    folder = persona.assets_dir
    path = folder / CARD_IMAGE if folder is not None else None
    return path.read_bytes() if path is not None and path.is_file() else None


def write_assets(folder: Path, files: dict[str, bytes], image: bytes | None = None) -> None:
    """Store a card's files (and image) under `folder`; names were checked when the card was read."""
    for name, blob in files.items():
        if not safe_member_name(name) or name == CARD_IMAGE:
            raise ValueError(f"cannot store an asset named {name!r}")
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    if image is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CARD_IMAGE).write_bytes(image)


def missing_assets(persona: Persona) -> list[Asset]:
    """The ``embeded://`` assets whose file is not in the persona's assets folder."""
    folder = persona.assets_dir
    return [a for a in persona.assets or [] if a.embedded_path is not None
            and (folder is None or not (folder / a.embedded_path).is_file())]
