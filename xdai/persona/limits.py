"""Bounds on what a persona or a card may cost to read: file sizes, inflated text, JSON nesting.

A persona file, a card or a CHARX comes from anyone; reading one must not hang on a FIFO, hold a 168 MB file in
memory, inflate a 1 MB zTXt chunk into a gigabyte or recurse through 100,000 nested lists. The defaults are far
above any real card (the largest lorebook cards are a few MB) and can be raised per command (``--max-bytes``).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xdai.persona.schema import PersonaError, PersonaIssue

MiB = 1 << 20


@dataclass(frozen=True)
class PersonaLimits:
    persona_bytes: int = 8 * MiB  # a persona YAML file
    card_bytes: int = 64 * MiB  # a card file: JSON, PNG or CHARX (a CHARX carries its images)
    card_text_bytes: int = 16 * MiB  # a card's JSON once decoded: an inflated zTXt/iTXt chunk, base64, card.json
    asset_bytes: int = 32 * MiB  # one asset of a CHARX, uncompressed
    json_depth: int = 64  # nesting of a card's JSON (the deepest real field is about 8 levels down)


DEFAULT_LIMITS = PersonaLimits()


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n:,} bytes"


def read_limited(path: str | Path, max_bytes: int, what: str) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; PersonaError naming the file otherwise. A FIFO or a
    device is refused before it is opened (it could block or never end), and the read itself stops at the bound."""
    path = Path(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise _error(path, f"not a regular file: a {what} is a plain file")
        if st.st_size > max_bytes:
            raise _error(path, f"{_size(st.st_size)}, over the {_size(max_bytes)} limit for a {what} "
                               "(raise it with --max-bytes if the file is trusted)")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise _error(path, f"not a regular file: a {what} is a plain file")
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise _error(path, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # grew since the stat
        raise _error(path, f"over the {_size(max_bytes)} limit for a {what}")
    return data


def check_depth(value: Any, max_depth: int, source: str, where: str = "") -> None:
    """PersonaError when `value` (parsed JSON) nests deeper than `max_depth`; iterative, so any depth is safe."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth >= max_depth:
            raise PersonaError([PersonaIssue(source, 0, 0, f"{where}JSON nested deeper than {max_depth} levels")])
        stack.extend((c, depth + 1) for c in children)


def _error(path: Path, message: str) -> PersonaError:
    return PersonaError([PersonaIssue(str(path), 0, 0, message)])


def load_json(text: str | bytes, source: str, max_depth: int, where: str = "") -> Any:
    """JSON from a card: syntax errors at their line:col (of `source` itself when `where` is empty, else in the
    message after `where`), nesting bounded by `max_depth` (also past what the parser could recurse through)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise PersonaError([PersonaIssue(source, 0, 0, f"{where}JSON nested deeper than {max_depth} levels")]) from None
    except json.JSONDecodeError as exc:
        if where:
            raise PersonaError([PersonaIssue(source, 0, 0, f"{where}JSON: {exc.msg} at {exc.lineno}:{exc.colno}")]) from None
        raise PersonaError([PersonaIssue(source, exc.lineno, exc.colno, f"JSON: {exc.msg}")]) from None
    except UnicodeDecodeError as exc:
        raise PersonaError([PersonaIssue(source, 0, 0, f"{where}not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    check_depth(value, max_depth, source, where)
    return value
