"""Is a Chinese phrase a proper name? jieba's part-of-speech tags, loaded once and only when asked.

Used to tell a Markdown heading that names an entity ("黄山", "潇湘馆", "清华大学") from one that names a topic
("交通", "表演", "北京旅游小贴士"): only the first kind may become the referent of 她 or 那里.
"""

from __future__ import annotations

from functools import lru_cache

PROPER = ("nr", "ns", "nt", "nz", "j")  # person, place, organisation, other proper noun, abbreviation (冬奥会)
NOMINAL = ("n", "j", "m", "q", "eng", "x")  # nouns of any kind, abbreviations, numbers (2022年), Latin words


@lru_cache(maxsize=1)
def _posseg():
    import logging

    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    return jieba.posseg


@lru_cache(maxsize=4096)
def proper_noun(phrase: str) -> bool:
    """Whether `phrase` is a noun phrase with a proper noun in it: every word nominal, one a name."""
    words = [w for w in _posseg().lcut(phrase.strip()) if w.word.strip()]
    return bool(words) and all(w.flag.startswith(NOMINAL) for w in words) and any(
        w.flag.startswith(PROPER) for w in words)
