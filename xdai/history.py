"""A session's dialogue history and the XDAI history-selection formula.

XDAI does not feed a model the whole conversation: it keeps the earlier exchanges that matter to the current
utterance, weighting each by how recent it is. For the utterance U_t and an earlier exchange (U_i, S_i):

    score_i = alpha ** (t - i) * cos(emb([U_i; S_i]), emb(U_t))

The top `n` exchanges are kept in their original order, and the last exchange is always one of them (a reply
that ignores the line just before it reads as broken). `History` caches every exchange's embedding: once a turn
has bound an embedder, `append` embeds the finished exchange between turns, and a turn encodes only its utterance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from knowledge.embed import Embedder


@dataclass
class Exchange:
    """One earlier exchange: the user's utterance U_i and the bot's reply S_i (either may be empty)."""

    user: str
    bot: str

    def text(self) -> str:
        """[U_i; S_i]: what the selection formula embeds for this exchange."""
        return f"{self.user}\n{self.bot}".strip()


@dataclass
class ScoredExchange:
    """An exchange's place in the selection: its index in the history and the three numbers behind its score."""

    index: int
    exchange: Exchange
    decay: float  # alpha ** (t - i)
    similarity: float  # cos(emb([U_i; S_i]), emb(U_t))
    score: float  # decay * similarity
    selected: bool = False
    forced: bool = False  # kept because it is the last exchange, not for its score

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "user": self.exchange.user,
            "bot": self.exchange.bot,
            "decay": round(self.decay, 6),
            "similarity": round(self.similarity, 6),
            "score": round(self.score, 6),
            "selected": self.selected,
            "forced": self.forced,
        }


def select_history_by_decayed_similarity(
    exchange_vectors: np.ndarray, utterance_vector: np.ndarray, *, alpha: float, n: int
) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """XDAI's selection: score_i = alpha^(t-i) * cos(e_i, u); keep the top `n`, the last exchange always.

    `exchange_vectors` holds one row per earlier exchange in order (row 0 is the oldest; the utterance is turn
    t = len(rows) + 1, so the last row has t - i = 1). Returns (kept indices in original order, scores, decays,
    cosines). The last exchange takes one of the `n` places; ties go to the more recent exchange.
    """
    count = int(exchange_vectors.shape[0]) if exchange_vectors.size else 0
    if count == 0 or n <= 0:
        empty = np.zeros(count, dtype=np.float64)
        return [], empty, empty.copy(), empty.copy()
    vectors = np.asarray(exchange_vectors, dtype=np.float64)
    query = np.asarray(utterance_vector, dtype=np.float64).reshape(-1)
    norms = np.linalg.norm(vectors, axis=1) * max(np.linalg.norm(query), 1e-12)
    cosines = (vectors @ query) / np.maximum(norms, 1e-12)
    decays = float(alpha) ** (count - np.arange(count, dtype=np.float64))
    scores = decays * cosines
    last = count - 1
    # Highest score first; among equal scores the more recent exchange wins.
    order = sorted(range(last), key=lambda i: (-scores[i], -i))
    kept = sorted([last, *order[: n - 1]])
    return kept, scores, decays, cosines


@dataclass
class History:
    """A session's exchanges, with each exchange's embedding cached once it has been computed.

    The cache is tied to the embedder that filled it; a different embedder starts it afresh. Callers append an
    exchange only once the bot's reply is complete.
    """

    exchanges: list[Exchange] = field(default_factory=list)
    _vectors: list[np.ndarray] = field(default_factory=list, repr=False)
    _embedder_name: str | None = field(default=None, repr=False)
    _embedder: Embedder | None = field(default=None, repr=False)
    _extras: dict[int, Any] = field(default_factory=dict, repr=False)
    # The user's long-term memory for this bot (`xdai.memory.recall.MemoryRecall`), when the session has a user:
    # what they said in earlier sessions, recalled by the turn like knowledge. None: no memory.
    memory: Any = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.exchanges)

    def append(self, user: str, bot: str) -> Exchange:
        """Record a finished exchange; once a turn has bound an embedder, embed it now, between turns."""
        exchange = Exchange(user=user, bot=bot)
        self.exchanges.append(exchange)
        if self._embedder is not None and len(self._vectors) == len(self.exchanges) - 1:
            self._vectors.append(np.asarray(self._embedder.encode([exchange.text()], role="query")[0], dtype=np.float32))
        return exchange

    def clear(self) -> None:
        self.exchanges.clear()
        self._vectors.clear()
        self._extras.clear()

    def embed_turn(
        self, embedder: Embedder, utterance: str, also: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """(exchange vectors [len, d], utterance vector [d]) with ONE encode call.

        The call holds the utterance, the exchanges not cached yet (normally only the one appended since the
        previous turn) and `also`: texts the turn will need next (the retrievers' entity-expanded queries), so a
        `knowledge.embed.CachingEmbedder` serves them without a second call.
        """
        if self._embedder_name != embedder.name:
            self._vectors.clear()
            self._extras.clear()
            self._embedder_name = embedder.name
        self._embedder = embedder
        missing = [e.text() for e in self.exchanges[len(self._vectors) :]]
        encoded = embedder.encode([utterance, *missing, *also], role="query")
        self._vectors.extend(np.asarray(row, dtype=np.float32) for row in encoded[1 : 1 + len(missing)])
        dim = encoded.shape[1]
        stacked = np.vstack(self._vectors) if self._vectors else np.zeros((0, dim), dtype=np.float32)
        return stacked, encoded[0]

    def cached(self, index: int, key: str) -> Any:
        """A per-exchange memo (e.g. the exchange's best QA hit), valid while the exchange and embedder stay."""
        return self._extras.get(index, {}).get(key)

    def remember(self, index: int, key: str, value: Any) -> None:
        self._extras.setdefault(index, {})[key] = value

    def to_list(self) -> list[dict[str, str]]:
        return [{"user": e.user, "bot": e.bot} for e in self.exchanges]

    @classmethod
    def from_list(cls, rows: list[dict[str, Any]], *, where: str = "history") -> History:
        """Rebuild from `to_list()` output; a malformed row is an error naming `where` and the row number."""
        history = cls()
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise ValueError(f"{where}: row {number}: expected an object with 'user' and 'bot'")
            unknown = set(row) - {"user", "bot"}
            if unknown:
                raise ValueError(f"{where}: row {number}: unknown key(s) {sorted(unknown)} (expected 'user', 'bot')")
            user, bot = row.get("user", ""), row.get("bot", "")
            if not isinstance(user, str) or not isinstance(bot, str):
                raise ValueError(f"{where}: row {number}: 'user' and 'bot' must be strings")
            history.append(user, bot)
        return history
