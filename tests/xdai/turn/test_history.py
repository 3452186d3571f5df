"""The XDAI selection formula against hand-computed scores, and the per-session embedding cache."""

from __future__ import annotations

import numpy as np
import pytest

from knowledge.embed import CachingEmbedder
from xdai.history import History, select_history_by_decayed_similarity


def test_scores_match_hand_computation():
    # u = (1, 0); cosines by construction: 1.0, 0.0, 0.6, 0.8. Four earlier exchanges, so t - i = 4, 3, 2, 1.
    u = np.array([1.0, 0.0])
    exchanges = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    kept, scores, decays, cosines = select_history_by_decayed_similarity(exchanges, u, alpha=0.5, n=2)
    np.testing.assert_allclose(decays, [0.0625, 0.125, 0.25, 0.5])
    np.testing.assert_allclose(cosines, [1.0, 0.0, 0.6, 0.8])
    np.testing.assert_allclose(scores, [0.0625, 0.0, 0.15, 0.4])
    assert kept == [2, 3]
    kept3, *_ = select_history_by_decayed_similarity(exchanges, u, alpha=0.5, n=3)
    assert kept3 == [0, 2, 3]  # top 3, in their original order


def test_cosine_is_scale_free_and_alpha_one_ranks_by_similarity():
    u = np.array([3.0, 4.0])  # not unit length: the formula uses cosine, not the raw dot product
    exchanges = np.array([[30.0, 40.0], [-4.0, 3.0], [4.0, 3.0]])
    kept, scores, _, cosines = select_history_by_decayed_similarity(exchanges, u, alpha=1.0, n=2)
    np.testing.assert_allclose(cosines, [1.0, 0.0, 0.96])
    np.testing.assert_allclose(scores, cosines)
    assert kept == [0, 2]


def test_last_exchange_is_always_kept():
    u = np.array([1.0, 0.0])
    # The last exchange is orthogonal to the utterance (score 0) but must stay; it takes one of the n places.
    exchanges = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]])
    kept, scores, *_ = select_history_by_decayed_similarity(exchanges, u, alpha=0.9, n=2)
    assert scores[3] == pytest.approx(0.0)
    assert kept == [2, 3]  # best other exchange: 0.9^2*cos(0.8,0.2) = 0.786 > 0.9^3*cos(0.9,0.1) = 0.724
    kept1, *_ = select_history_by_decayed_similarity(exchanges, u, alpha=0.9, n=1)
    assert kept1 == [3]


def test_empty_history_and_zero_budget():
    u = np.array([1.0, 0.0])
    assert select_history_by_decayed_similarity(np.zeros((0, 2)), u, alpha=0.75, n=4)[0] == []
    assert select_history_by_decayed_similarity(np.array([[1.0, 0.0]]), u, alpha=0.75, n=0)[0] == []


class CountingEmbedder:
    """The real embedder, with its calls and texts counted."""

    def __init__(self, inner):
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.calls: list[list[str]] = []

    def encode(self, texts, **kw):
        self.calls.append(list(texts))
        return self.inner.encode(texts, **kw)


def test_a_turn_embeds_only_the_new_utterance(embedder):
    counting = CountingEmbedder(embedder)
    history = History()
    turns = [("故宫的门票多少钱？", "旺季60元。"), ("那天坛呢？", "天坛15元。"), ("颐和园在哪里？", "在海淀区。")]
    for user, bot in turns:
        vectors, query = history.embed_turn(counting, user)
        assert vectors.shape[0] == len(history)
        history.append(user, bot)
    # A turn embeds only its utterance; a finished exchange is embedded once, when it is appended (between turns).
    assert counting.calls == [
        ["故宫的门票多少钱？"],
        ["故宫的门票多少钱？\n旺季60元。"],
        ["那天坛呢？"],
        ["那天坛呢？\n天坛15元。"],
        ["颐和园在哪里？"],
        ["颐和园在哪里？\n在海淀区。"],
    ]
    # Cached vectors equal fresh ones.
    fresh = embedder.encode([e.text() for e in history.exchanges[:2]], role="query")
    cached, _ = history.embed_turn(counting, "x")
    np.testing.assert_allclose(cached[:2], fresh, atol=1e-5)


def test_caching_embedder_runs_the_model_once_per_text(embedder):
    counting = CountingEmbedder(embedder)
    cache = CachingEmbedder(counting, capacity=8)
    a = cache.encode(["你好", "谷爱凌"], role="query")
    b = cache.encode(["谷爱凌", "你好", "新的"], role="query")
    assert counting.calls == [["你好", "谷爱凌"], ["新的"]]
    np.testing.assert_allclose(b[0], a[1])
    cache.encode(["你好"], role="passage")  # another role is another vector
    assert counting.calls[-1] == ["你好"]


def test_history_round_trip_and_errors():
    history = History()
    history.append("你好", "你好呀！")
    history.append("", "only a bot line")
    again = History.from_list(history.to_list())
    assert again.to_list() == history.to_list()
    with pytest.raises(ValueError, match="chat.jsonl: row 2: unknown key"):
        History.from_list([{"user": "a", "bot": "b"}, {"usr": "a"}], where="chat.jsonl")
    with pytest.raises(ValueError, match="row 1: 'user' and 'bot' must be strings"):
        History.from_list([{"user": 3, "bot": "b"}])
