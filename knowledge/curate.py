"""Curation: normalise, bound, tag and deduplicate items before they are indexed.

- Unicode NFKC (full-width letters, digits and punctuation become half-width), control and zero-width characters
  removed, whitespace collapsed (paragraph breaks kept in descriptions).
- Length limits: an empty item is dropped; a description over ``max_chars`` is cut at sentence ends into parts;
  a QA pair over it is dropped. Every drop is reported with its provenance.
- Language tag ("zh"/"en") per item; a stable id = content hash of (kind, q, a) or (kind, title, text).
- Exact duplicates (same id) and near-duplicates (embedding cosine above a threshold) are removed and reported.
  Two items about different knowledge-base entities or predicates, or whose numbers differ ("门票50元" vs
  "门票60元"), are never near-duplicates: embeddings blur exactly those differences.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from knowledge.item import Item
from knowledge.sources import lang_of, split_to_budget

_INVISIBLE = re.compile(r"[\u200b-\u200f\u2028\u2029\u2060-\u2064\ufeff\u00ad]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_HSPACE = re.compile(r"[ \t\f\v\u00a0\u3000]+")
_CJK_PUNCT = set("，。？！：；（）【】「」『』《》〈〉、～")
_CJK_PUNCT_SPLIT = re.compile(f"([{''.join(sorted(_CJK_PUNCT))}])")
_NUMBER = re.compile(r"\d+(?:[.:]\d+)*")


@dataclass
class CurationReport:
    read: int = 0
    kept: int = 0
    exact_duplicates: int = 0
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)  # {dropped, kept, cosine, where}
    dropped: list[dict[str, str]] = field(default_factory=list)  # {where, reason}: empty, too long
    split: int = 0  # descriptions cut into parts by the length limit
    threshold: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": len(self.near_duplicates),
            "near_duplicate_threshold": self.threshold,
            "dropped": len(self.dropped),
            "split": self.split,
        }


def nfkc(text: str) -> str:
    """NFKC (full-width letters and digits become half-width), except that Chinese text keeps its full-width
    punctuation: "谷爱凌，2003年" stays as written, while "ＡＢＣ１２３" becomes "ABC123"."""
    if lang_of(text) != "zh":
        return unicodedata.normalize("NFKC", text)
    return "".join(
        piece if piece in _CJK_PUNCT else unicodedata.normalize("NFKC", piece) for piece in _CJK_PUNCT_SPLIT.split(text)
    )


def normalise_text(text: str, *, keep_paragraphs: bool = True) -> str:
    text = nfkc(text)
    text = _INVISIBLE.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub(" ", text)
    lines = [_HSPACE.sub(" ", line).strip() for line in text.split("\n")]
    if not keep_paragraphs:
        return " ".join(line for line in lines if line)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def item_id(item: Item) -> str:
    """Stable content hash: the same knowledge gets the same id in every build."""
    parts = (item.kind, item.q or "", item.a or "") if item.kind == "qa" else (item.kind, item.title or "", item.text)
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def _where(item: Item) -> str:
    return f"{item.source_file}:{item.source_record}"


def clean(items: list[Item], *, max_chars: int, report: CurationReport, seen: set[str] | None = None) -> list[Item]:
    """Normalise, bound, tag, id and exact-dedup `items` (in order; the first occurrence wins)."""
    seen = set() if seen is None else set(seen)
    out: list[Item] = []
    for raw in items:
        report.read += 1
        for item in _normalised(raw, max_chars, report):
            item.id = item_id(item)
            if item.id in seen:
                report.exact_duplicates += 1
                continue
            seen.add(item.id)
            out.append(item)
    return out


def _normalised(raw: Item, max_chars: int, report: CurationReport) -> list[Item]:
    def norm(value: str | None, paragraphs: bool = False) -> str | None:
        return None if value is None else (normalise_text(value, keep_paragraphs=paragraphs) or None)

    tags = sorted({t for t in (norm(t) for t in raw.tags) if t})
    common = {"title": norm(raw.title), "entity": norm(raw.entity), "predicate": norm(raw.predicate), "tags": tags,
              "reference": norm(raw.reference)}
    if raw.kind == "qa":
        q, a = norm(raw.q), norm(raw.a, paragraphs=True)
        if not q or not a:
            report.dropped.append({"where": _where(raw), "reason": "empty question or answer after normalisation"})
            return []
        text = f"{q}\n{a}"
        if len(text) > max_chars:
            report.dropped.append({"where": _where(raw), "reason": f"QA pair longer than {max_chars} characters ({len(text)})"})
            return []
        return [replace(raw, text=text, q=q, a=a, lang=lang_of(text), **common)]
    text = norm(raw.text, paragraphs=True)
    if not text:
        report.dropped.append({"where": _where(raw), "reason": "empty description after normalisation"})
        return []
    parts = [text] if len(text) <= max_chars else [p.strip() for p in split_to_budget(text, max_chars) if p.strip()]
    if len(parts) > 1:
        report.split += 1
    lang = lang_of((common["title"] or "") + text)
    return [
        replace(raw, text=part, lang=lang,
                source_record=raw.source_record + (f" part {k}" if len(parts) > 1 else ""), **common)
        for k, part in enumerate(parts, 1)
    ]


def _may_be_duplicates(a: Item, b: Item) -> bool:
    if a.kind != b.kind:
        return False
    if a.entity and b.entity and a.entity != b.entity:
        return False
    if a.predicate and b.predicate and a.predicate != b.predicate:
        return False
    return _NUMBER.findall(a.text) == _NUMBER.findall(b.text)


def near_duplicates(
    items: list[Item],
    vectors: np.ndarray,
    index: Any,
    *,
    threshold: float,
    report: CurationReport,
    neighbours: int = 8,
    earlier: list[Item] | None = None,
    earlier_index: Any = None,
) -> np.ndarray:
    """Keep-mask over `items`: False where an earlier kept item (in this batch or `earlier`) is a near-duplicate.

    `index` is a FAISS inner-product index over `vectors` (rows in `items` order); `earlier_index`, if given,
    indexes `earlier` (a store's existing items, always kept). Pairs are reported with their cosine.
    """
    keep = np.ones(len(items), dtype=bool)
    report.threshold = threshold
    if not len(items) or threshold >= 1.0:
        return keep
    k = min(neighbours, len(items))
    scores, ids = index.search(vectors, k)
    prior_scores = prior_ids = None
    if earlier and earlier_index is not None and earlier_index.ntotal:
        prior_scores, prior_ids = earlier_index.search(vectors, min(neighbours, earlier_index.ntotal))
    for i, item in enumerate(items):
        match: tuple[Item, float] | None = None
        if prior_ids is not None:
            for s, j in zip(prior_scores[i], prior_ids[i], strict=True):
                if j >= 0 and s > threshold and _may_be_duplicates(item, earlier[j]):
                    match = (earlier[j], float(s))
                    break
        if match is None:
            for s, j in zip(scores[i], ids[i], strict=True):
                if 0 <= j < i and keep[j] and s > threshold and _may_be_duplicates(item, items[j]):
                    match = (items[j], float(s))
                    break
        if match is not None:
            keep[i] = False
            report.near_duplicates.append(
                {"dropped": item.id, "kept": match[0].id, "cosine": round(match[1], 4), "where": _where(item),
                 "kept_where": _where(match[0])}
            )
    return keep
