"""tests/model fixtures: a sentencepiece model trained on the fly, a tiny GLM checkpoint in THUDM's hub layout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # glm_testing (helpers shared by this area's tests)

from glm_testing import CORPUS, tiny_model, write_hub_checkpoint  # noqa: E402


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
