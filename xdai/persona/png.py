"""PNG cards: the chunks of a PNG, and the card text in its `ccv3` (V3) or `chara` (V2) text chunk.

Reading is bounded and every fault names its chunk: a text chunk without the NUL after its keyword, a malformed
iTXt, a compression method other than zlib, a bad or truncated zlib stream, or text that inflates past the limit
(inflated incrementally, so a 1 MB zTXt chunk that would inflate to 1 GiB costs at most the limit).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = (b"ccv3", b"chara")  # the V3 chunk wins when both are there
_TEXT_KINDS = (b"tEXt", b"zTXt", b"iTXt")


class ChunkError(ValueError):
    """A PNG or one of its chunks cannot be read; the message names the chunk and its byte offset."""


def walk_chunks(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, type, data) of each chunk of a PNG up to IEND, CRCs checked."""
    if not data.startswith(PNG_SIGNATURE):
        raise ChunkError("not a PNG file (bad signature)")
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ChunkError(f"truncated PNG chunk header at byte {pos}")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            raise ChunkError(f"truncated PNG chunk {kind!r} at byte {pos}")
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if crc != zlib.crc32(kind + body):
            raise ChunkError(f"PNG chunk {kind!r} at byte {pos} has a bad CRC")
        chunks.append((pos, kind, body))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, data) chunks of a PNG, CRCs checked."""
    return [(kind, body) for _, kind, body in walk_chunks(data)]


def png_bytes(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = [PNG_SIGNATURE]
    for kind, body in chunks:
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)


def placeholder_png(name: str, size: int = 256) -> bytes:
    """A plain avatar for cards exported without an image: a two-tone square coloured from the name."""
    h = hashlib.sha256(name.encode("utf-8")).digest()
    fg, bg = h[:3], bytes(255 - (255 - c) // 4 for c in h[3:6])
    rows = []
    for y in range(size):
        row = bytearray(b"\x00")  # filter: none
        for x in range(size):
            inside = (x - size / 2) ** 2 + (y - size / 2.6) ** 2 < (size / 5) ** 2 or (
                y > size * 0.62 and (x - size / 2) ** 2 + (y - size) ** 2 < (size / 2.6) ** 2)
            row += fg if inside else bg
        rows.append(bytes(row))
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return png_bytes([(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"".join(rows), 9)), (b"IEND", b"")])


def _keyword(kind: bytes, body: bytes) -> bytes | None:
    if kind not in _TEXT_KINDS:
        return None
    return body.split(b"\0", 1)[0] if b"\0" in body[:80] else None  # keywords are 1-79 bytes


def is_card_chunk(kind: bytes, body: bytes) -> bool:
    return _keyword(kind, body) in CARD_KEYWORDS or (kind in _TEXT_KINDS and body in CARD_KEYWORDS)


def find_card_text(data: bytes, max_bytes: int) -> tuple[str, str]:
    """(the card text, which chunk it came from, e.g. "tEXt chunk 'ccv3' at byte 33") from a PNG: base64 of the
    card's JSON, at most `max_bytes` once inflated. ChunkError naming the chunk on any fault."""
    found: dict[bytes, tuple[int, bytes, bytes]] = {}
    for pos, kind, body in walk_chunks(data):
        keyword = _keyword(kind, body)
        if keyword is None and kind in _TEXT_KINDS and body.startswith(CARD_KEYWORDS):
            name = next(k for k in CARD_KEYWORDS if body.startswith(k)).decode()
            raise ChunkError(f"PNG {kind.decode()} chunk at byte {pos} (keyword {name!r}?): no NUL after the "
                             "keyword, so it holds no text")
        if keyword in CARD_KEYWORDS and keyword not in found:
            found[keyword] = (pos, kind, body)
    keyword = next((k for k in CARD_KEYWORDS if k in found), None)
    if keyword is None:
        raise ChunkError("PNG has no `chara` text chunk (nor `ccv3`): not a character card")
    pos, kind, body = found[keyword]
    where = f"{kind.decode()} chunk {keyword.decode()!r} at byte {pos}"
    try:
        return _chunk_text(kind, body.split(b"\0", 1)[1], max_bytes), where
    except ChunkError as exc:
        raise ChunkError(f"PNG {where}: {exc}") from None


def _chunk_text(kind: bytes, rest: bytes, max_bytes: int) -> str:
    if kind == b"tEXt":
        if len(rest) > max_bytes:
            raise ChunkError(f"text of {len(rest):,} bytes, over the {max_bytes:,}-byte limit")
        return rest.decode("latin-1")
    if kind == b"zTXt":
        if not rest:
            raise ChunkError("no compression method byte")
        if rest[0] != 0:
            raise ChunkError(f"unknown compression method {rest[0]} (PNG has only 0, zlib)")
        return inflate(rest[1:], max_bytes).decode("latin-1")
    # iTXt: compression flag, method, language tag\0, translated keyword\0, text (UTF-8)
    if len(rest) < 2:
        raise ChunkError("malformed iTXt: no compression flag and method")
    flag, method, fields = rest[0], rest[1], rest[2:].split(b"\0", 2)
    if flag not in (0, 1):
        raise ChunkError(f"malformed iTXt: compression flag {flag}, expected 0 or 1")
    if len(fields) != 3:
        raise ChunkError("malformed iTXt: the language tag and translated keyword must each end with a NUL")
    text = fields[2]
    if flag:
        if method != 0:
            raise ChunkError(f"unknown compression method {method} (PNG has only 0, zlib)")
        text = inflate(text, max_bytes)
    elif len(text) > max_bytes:
        raise ChunkError(f"text of {len(text):,} bytes, over the {max_bytes:,}-byte limit")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ChunkError(f"iTXt text is not UTF-8 ({exc.reason} at byte {exc.start})") from None


def inflate(data: bytes, max_bytes: int) -> bytes:
    """zlib-inflate `data` to at most `max_bytes`, a piece at a time: never more than the bound in memory."""
    d = zlib.decompressobj()
    try:
        out = bytearray(d.decompress(data, max_bytes + 1))
        while not d.eof and d.unconsumed_tail and len(out) <= max_bytes:
            out += d.decompress(d.unconsumed_tail, max_bytes + 1 - len(out))
    except zlib.error as exc:
        raise ChunkError(f"bad zlib data ({exc})") from None
    if len(out) > max_bytes:
        raise ChunkError(f"inflates to more than the {max_bytes:,}-byte limit")
    if not d.eof:
        raise ChunkError("truncated zlib data")
    return bytes(out)


def card_to_png(card: dict[str, Any], image: bytes | None = None, v3: dict[str, Any] | None = None) -> bytes:
    """`image` (or a placeholder) with `card` in a `chara` tEXt chunk and, when given, the V3 card `v3` in a
    `ccv3` chunk beside it (V3 readers take ccv3, older ones chara); any previous card chunk is replaced."""
    named = v3 or card
    image = image or placeholder_png(str(named.get("data", {}).get("name", "")))
    chunks = [(k, v) for k, v in png_chunks(image) if not is_card_chunk(k, v)]
    end = next(i for i, (k, _) in enumerate(chunks) if k == b"IEND")
    texts = [(b"chara", card)] + ([(b"ccv3", v3)] if v3 is not None else [])
    for offset, (keyword, value) in enumerate(texts):
        payload = base64.b64encode(json.dumps(value, ensure_ascii=False).encode("utf-8"))
        chunks.insert(end + offset, (b"tEXt", keyword + b"\0" + payload))
    return png_bytes(chunks)
