"""Shared pieces for the dialogue tests: the real default embedder, small real stores, the bundled models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

GU_QA = {"q": "谷爱凌是谁？", "a": "谷爱凌，2003年出生于美国加利福尼亚州旧金山市，中国自由式滑雪运动员"}


@pytest.fixture(scope="session")
def embedder():
    from knowledge.embed import shared_embedder

    return shared_embedder("default")


@pytest.fixture(scope="session")
def gu_store(tmp_path_factory) -> Path:
    """A real on-disk store holding the seed's QA pair (and two unrelated ones)."""
    from knowledge.store import Store

    root = tmp_path_factory.mktemp("gu")
    source = root / "gu.jsonl"
    rows = [GU_QA, {"q": "故宫的门票多少钱？", "a": "旺季60元，淡季40元。"}, {"q": "火锅怎么吃最好吃？", "a": "毛肚七上八下。"}]
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    Store.build([source], root / "store", progress=False)
    return root / "store"


@pytest.fixture(scope="session")
def smollm2():
    from xdai.backends import get_backend

    return get_backend("llama_cpp", "smollm2", n_ctx=2048)


@pytest.fixture(scope="session")
def qwen():
    from xdai.backends import get_backend

    return get_backend("llama_cpp", "default")
