"""A bot's pictures for the page: its icon, background and emotion images, taken from its persona's Card V3
assets and served by kind and name (``/bots/<bot>/assets/icon``, ``/bots/<bot>/assets/emotion/<name>``), never
by path.

Only images are served, and only from where the persona keeps them: an ``embeded://`` file inside NAME.assets/
beside NAME.yaml (no symbolic links, nothing outside that folder), the card's own image for ``ccdefault:``, or a
``data:`` URI in the card. Remote URLs are not fetched or passed on. A file must be a PNG, JPEG, WebP, GIF or AVIF
by its first bytes too (no SVG: it can carry script), and at most `MAX_ASSET_BYTES`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from xdai.persona.assets import CARD_IMAGE
from xdai.persona.charx import safe_member_name
from xdai.persona.schema import Asset

MAX_ASSET_BYTES = 8 * 1024 * 1024
KINDS = ("icon", "background", "emotion")  # what the page shows; the others (user_icon, x_*) are not served
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
               "gif": "image/gif", "avif": "image/avif"}
_DATA_URI = re.compile(r"data:(image/[a-z0-9.+-]+);base64,([A-Za-z0-9+/=\s]*)$", re.IGNORECASE)
_DEFAULT_ASSETS = [Asset(type="icon", uri="ccdefault:", name="main", ext="png")]  # V3: no `assets` means this


@dataclass(frozen=True)
class Picture:
    data: bytes
    mime: str


def _sniff(data: bytes) -> str | None:
    """The image type the bytes say they are."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "image/avif"
    return None


def _assets(persona: Any) -> list[Asset]:
    assets = getattr(persona, "assets", None)
    return list(_DEFAULT_ASSETS if assets is None else assets)


def _file(persona: Any, asset: Asset) -> Path | None:
    """The file an asset names inside the persona's assets folder, if it is a plain file within it."""
    folder = getattr(persona, "assets_dir", None)
    if folder is None:
        return None
    name = CARD_IMAGE if asset.uri == "ccdefault:" else asset.embedded_path
    if name is None or not safe_member_name(name):
        return None
    path = folder
    try:
        for part in name.split("/"):  # no symbolic link on the way: a link could lead anywhere
            path = path / part
            if path.is_symlink():
                return None
        root, real = folder.resolve(strict=True), path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if root in real.parents and real.is_file() else None


def _mime_of(asset: Asset, path: Path | None) -> str | None:
    ext = (asset.ext or "").lower()
    if asset.uri == "ccdefault:":
        ext = "png"
    elif ext in ("", "unknown") and path is not None:
        ext = path.suffix.lower().lstrip(".")
    return IMAGE_TYPES.get(ext)


def _available(persona: Any, asset: Asset) -> bool:
    """Whether the asset can be served, reading no more than a file's first bytes (the listing at /bots)."""
    if asset.uri.startswith("data:"):
        return _load(persona, asset) is not None  # already in memory
    path = _file(persona, asset)
    mime = _mime_of(asset, path) if path is not None else None
    if path is None or mime is None:
        return False
    try:
        with path.open("rb") as f:
            head = f.read(16)
        return path.stat().st_size <= MAX_ASSET_BYTES and _sniff(head) == mime
    except OSError:
        return False


def _load(persona: Any, asset: Asset) -> Picture | None:
    if asset.uri.startswith("data:"):
        m = _DATA_URI.match(asset.uri)
        if not m or len(asset.uri) > MAX_ASSET_BYTES * 2:
            return None
        try:
            data = base64.b64decode(re.sub(r"\s+", "", m.group(2)), validate=True)
        except (binascii.Error, ValueError):
            return None
        mime = m.group(1).lower()
    else:
        path = _file(persona, asset)
        mime = _mime_of(asset, path) if path is not None else None
        if path is None or mime is None:
            return None
        try:
            with path.open("rb") as f:
                data = f.read(MAX_ASSET_BYTES + 1)
        except OSError:
            return None
    if len(data) > MAX_ASSET_BYTES or _sniff(data) != mime:
        return None
    return Picture(data, mime)


def _candidates(persona: Any, kind: str, name: str | None) -> list[Asset]:
    """The assets that answer (kind, name), best first: for an icon or background without a name, the one named
    "main" (V3), then the others in card order; for an emotion, the one of that name."""
    of_kind = [a for a in _assets(persona) if a.type == kind]
    if name is not None:
        return [a for a in of_kind if a.name == name]
    if kind == "emotion":
        return []
    return [a for a in of_kind if a.name == "main"] + [a for a in of_kind if a.name != "main"]


def find_picture(persona: Any, kind: str, name: str | None = None) -> Picture | None:
    """The image for (kind, name), or None when there is none that may be served."""
    if kind not in KINDS:
        return None
    for asset in _candidates(persona, kind, name):
        picture = _load(persona, asset)
        if picture is not None:
            return picture
    return None


def asset_index(persona: Any) -> dict[str, Any]:
    """What the page may ask for at ``/bots/<bot>/assets/<kind>[/<name>]``: ``{"icon": bool, "background": bool,
    "emotions": [name, ...]}``. Names only: no paths, no URLs."""
    out: dict[str, Any] = {"icon": False, "background": False, "emotions": []}
    if persona is None:
        return out
    for kind in ("icon", "background"):
        out[kind] = any(_available(persona, a) for a in _candidates(persona, kind, None))
    for asset in (a for a in _assets(persona) if a.type == "emotion"):
        if asset.name and asset.name not in out["emotions"] and _available(persona, asset):
            out["emotions"].append(asset.name)
    return out


def asset_route(path: str) -> tuple[str, str, str | None] | None:
    """(bot, kind, name or None) from ``/bots/<bot>/assets/<kind>[/<name>]`` (segments percent-decoded), or None."""
    parts = path.split("/")
    if len(parts) not in (5, 6) or parts[:2] != ["", "bots"] or parts[3] != "assets":
        return None
    bot, kind, name = unquote(parts[2]), unquote(parts[4]), unquote(parts[5]) if len(parts) == 6 else None
    if not bot or kind not in KINDS or name == "" or (name is not None and ("\0" in name or "/" in name)):
        return None
    return bot, kind, name
