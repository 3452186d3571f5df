"""tests/xdai/model fixtures: a sentencepiece model trained on the fly, a tiny GLM checkpoint in THUDM's hub layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import CORPUS, tiny_model, write_hub_checkpoint


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> Path:
    """A real sentencepiece model (unigram, ~130 pieces) trained from a few lines."""
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("sp")
    text = out / "corpus.txt"
    text.write_text("\n".join(CORPUS * 4) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(out / "cog-pretrain"), vocab_size=150,
                                   model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
                                   minloglevel=2)
    return out / "cog-pretrain.model"


@pytest.fixture()
def hub_dir(tmp_path, sp_model) -> Path:
    return write_hub_checkpoint(tmp_path / "glm-tiny-chinese", tiny_model(seed=1), sp_model)
