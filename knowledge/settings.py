"""`KnowledgeSettings`: everything the knowledge package is configured by, as one plain dataclass.

`knowledge` reads no configuration file and no environment itself: an application (``xdai.config``) builds these
settings once at its entry point and hands them to `Store`, `ElasticStore` and the CLI. The defaults are the ones
a store is built with when nobody says otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A configuration file, override or setting is wrong; the message names the file (or setting) and key.

    The one configuration error of the project: `xdai.config` raises this same class."""


@dataclass
class KnowledgeSettings:
    """How stores are built and queried (the ``knowledge`` section of xdai.yaml, plus the embedder and cache)."""

    cache_dir: str = str(Path.home() / ".cache" / "xdai")  # the passage-embedding cache: <cache_dir>/embeddings.sqlite3
    embed_cache: bool = True  # cache passage embeddings on disk between builds
    embedder: str = "default"  # "default": the bundled default; else a bundled name or sentence-transformers model
    batch_size: int = 64  # passages embedded per batch in a build
    top_k: int = 5  # hits per query when the caller does not say
    dense_weight: float = 1.0  # weights of the dense and BM25 lists in reciprocal-rank fusion
    bm25_weight: float = 1.0
    rrf_k: int = 60
    near_duplicate_threshold: float = 0.97  # cosine above which a new item is a near duplicate of a kept one
    max_item_chars: int = 2000

    def __post_init__(self) -> None:
        checks = {
            "batch_size": self.batch_size >= 1,
            "top_k": self.top_k >= 1,
            "dense_weight": self.dense_weight >= 0,
            "bm25_weight": self.bm25_weight >= 0,
            "rrf_k": self.rrf_k >= 1,
            "near_duplicate_threshold": 0 < self.near_duplicate_threshold <= 1,
            "max_item_chars": self.max_item_chars >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ConfigError(f"knowledge settings: out of range: {values} (weights >= 0, counts >= 1, "
                              "0 < near_duplicate_threshold <= 1)")

    def replace(self, **changes: object) -> KnowledgeSettings:
        """A copy with `changes` applied (and checked)."""
        return dataclasses.replace(self, **changes)
