"""CHARX: Card V3's zip, with the card as `card.json` at its root and the files its ``embeded://`` assets name.

Reading is bounded like every card input (`xdai.persona.limits`): the zip's size, each member's and the total
uncompressed size, the member count; encrypted members, names that would leave the folder they are unpacked into
(absolute, ``..``, backslashes, drive letters) and duplicate names are refused, each with the member named.
Writing is deterministic (sorted members, fixed timestamps), so the same persona gives the same bytes.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from typing import Any

from xdai.persona.limits import PersonaLimits, load_json
from xdai.persona.schema import PersonaError, PersonaIssue

ZIP_SIGNATURE = b"PK\x03\x04"
CARD_MEMBER = "card.json"
MAX_MEMBERS = 4096
_EPOCH = (1980, 1, 1, 0, 0, 0)


def safe_member_name(name: str) -> bool:
    """A relative POSIX path that stays inside the folder it is unpacked into."""
    parts = name.split("/")
    return (bool(name) and not name.startswith("/") and "\\" not in name and "\0" not in name
            and not re.match(r"^[A-Za-z]:", name) and all(p not in ("", ".", "..") for p in parts))


def read_charx(data: bytes, source: str, limits: PersonaLimits) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(the card, every other member by its path) from a CHARX's bytes; PersonaError naming the member."""

    def fail(message: str) -> PersonaError:
        return PersonaError([PersonaIssue(source, 0, 0, f"CHARX: {message}")])

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise fail(f"not a readable zip file ({exc})") from None
    infos = [i for i in archive.infolist() if not i.is_dir()]
    if len(infos) > MAX_MEMBERS:
        raise fail(f"{len(infos):,} members, over the limit of {MAX_MEMBERS:,}")
    files: dict[str, bytes] = {}
    total = 0
    for info in infos:
        name = info.filename
        if not safe_member_name(name):
            raise fail(f"member {name!r}: not a relative path inside the archive")
        if name in files:
            raise fail(f"member {name!r} appears twice")
        if info.flag_bits & 0x1:
            raise fail(f"member {name!r} is encrypted")
        cap = limits.card_text_bytes if name == CARD_MEMBER else limits.asset_bytes
        if info.file_size > cap:
            raise fail(f"member {name!r}: {info.file_size:,} bytes uncompressed, over the {cap:,}-byte limit")
        total += info.file_size
        if total > limits.card_bytes:
            raise fail(f"members add up to more than the {limits.card_bytes:,}-byte limit uncompressed")
        try:
            with archive.open(info) as fh:
                blob = fh.read(cap + 1)  # bounded even if the header lies about the size
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError, RuntimeError) as exc:
            raise fail(f"member {name!r} cannot be read ({exc})") from None
        if len(blob) > cap:
            raise fail(f"member {name!r}: over the {cap:,}-byte limit uncompressed")
        files[name] = blob
    raw = files.pop(CARD_MEMBER, None)
    if raw is None:
        raise fail(f"no {CARD_MEMBER} at the root of the archive: not a CHARX")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(f"member {CARD_MEMBER!r} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    card = load_json(text, source, limits.json_depth, f"CHARX member {CARD_MEMBER!r}: ")
    return card, files


def write_charx(card: dict[str, Any], files: dict[str, bytes]) -> bytes:
    """A CHARX of `card` and `files` (path -> bytes, each a safe member name)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        members = [(CARD_MEMBER, json.dumps(card, ensure_ascii=False, indent=2).encode("utf-8"))]
        members += sorted(files.items())
        for name, blob in members:
            if not safe_member_name(name) or (name == CARD_MEMBER and blob is not members[0][1]):
                raise ValueError(f"cannot store {name!r} in a CHARX")
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, blob)
    return buffer.getvalue()
