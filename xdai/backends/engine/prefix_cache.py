"""Prefix caching: finished sequences keep their KV cells, and a new prompt starts from the longest prefix it
shares with them (or with a running sequence), so only the rest is evaluated.

Matching is by tokens, at token granularity (as llama.cpp's server matches its slots' prompts), so a bot's static
prefix, a session's previous turn and a sibling candidate are all found the same way. Idle prefixes are evicted
least recently used when a request needs their sequence id or their cells.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from xdai.backends.engine.kv import KVCache


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


@dataclass
class PrefixStats:
    lookups: int = 0
    hits: int = 0  # lookups that reused at least `min_prefix` tokens
    prompt_tokens: int = 0  # tokens looked up
    reused_tokens: int = 0  # tokens whose cells came from the cache
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        """Share of prompt tokens that were not evaluated again."""
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class PrefixCache:
    """Idle sequences holding evaluated tokens, least recently used first. Engine thread only."""

    def __init__(self, kv: KVCache, min_prefix: int = 1) -> None:
        self.kv = kv
        self.min_prefix = max(min_prefix, 1)
        self.stats = PrefixStats()
        self._entries: OrderedDict[int, np.ndarray] = OrderedDict()  # seq id -> its tokens, LRU first

    def __len__(self) -> int:
        return len(self._entries)

    def tokens(self, seq_id: int) -> np.ndarray:
        return self._entries[seq_id]

    def match(self, prompt: Sequence[int], limit: int,
              running: Iterable[tuple[int, Sequence[int]]] = ()) -> tuple[int | None, int]:
        """The sequence sharing the longest prefix with `prompt` (at most `limit` tokens), among the cached ones
        and `running` (seq id, evaluated tokens); (None, 0) when none shares `min_prefix` tokens."""
        want = np.asarray(prompt[:limit], dtype=np.int64)
        best, best_n = None, 0
        for seq_id, tokens in self._entries.items():
            n = common_prefix(want, tokens)
            if n > best_n:
                best, best_n = seq_id, n
        for seq_id, tokens in running:
            n = common_prefix(want, np.asarray(tokens[: len(want)], dtype=np.int64))
            if n > best_n:
                best, best_n = seq_id, n
        return (best, best_n) if best_n >= self.min_prefix else (None, 0)

    def used(self, seq_id: int | None, prompt_tokens: int, reused: int) -> None:
        """A prompt of `prompt_tokens` was admitted reusing `reused` tokens of `seq_id`: count it, refresh it."""
        self.stats.lookups += 1
        self.stats.prompt_tokens += prompt_tokens
        if reused:
            self.stats.hits += 1
            self.stats.reused_tokens += reused
        if seq_id in self._entries:
            self._entries.move_to_end(seq_id)

    def add(self, seq_id: int, tokens: Sequence[int]) -> None:
        """Keep `seq_id` (which holds `tokens`) as a prefix; an entry that is a prefix of another is redundant."""
        new = np.asarray(tokens, dtype=np.int64)
        if not len(new):
            self.kv.release(seq_id)
            return
        for other, held in list(self._entries.items()):
            n = common_prefix(new, held)
            if n == len(new):  # an existing entry already holds all of it
                self._entries.move_to_end(other)
                self.kv.release(seq_id)
                return
            if n == len(held):
                self._drop(other)
        self._entries[seq_id] = new

    def evict(self, keep: int | None = None) -> bool:
        """Release the least recently used entry other than `keep`; False when there is none."""
        for seq_id in self._entries:
            if seq_id != keep:
                self._drop(seq_id)
                self.stats.evictions += 1
                return True
        return False

    def clear(self) -> None:
        for seq_id in list(self._entries):
            self._drop(seq_id)

    def _drop(self, seq_id: int) -> None:
        del self._entries[seq_id]
        self.kv.release(seq_id)
