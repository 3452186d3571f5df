"""On CUDA: the engine in fp16 with our kernels against the plain path, and cached generation (skipped without
a GPU; `benchmarks/glm_engine.py --gpu` measures the same configurations)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_model
from xdai.generation import GenerationSettings
from xdai.model import SpecialIds, fill_ids

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SPECIAL = SpecialIds(sop=150, eop=151, masks=(152,), pad=0, vocab_limit=155)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_kernels_match_plain_path_on_cuda(moe, monkeypatch):
    import inference_kernels

    extra = {"moe_layers": [1], "num_experts": 4, "moe_top_k": 2} if moe else {}
    model = tiny_model(hidden_size=128, num_attention_heads=2, **extra).cuda().half()
    ids = torch.randint(0, 150, (3, 40), device="cuda")
    sep = torch.tensor([10, 25, 40], device="cuda")
    monkeypatch.setenv("XDAI_KERNELS", "off")
    with torch.no_grad():
        plain = model(ids, None, sep).logits.float()
    monkeypatch.setenv("XDAI_KERNELS", "on")
    inference_kernels.inject(model)
    with torch.no_grad():
        fused = model(ids, None, sep).logits.float()
    torch.testing.assert_close(fused, plain, rtol=2e-2, atol=2e-2)


def test_cached_generation_equals_recomputed_on_cuda():
    model = tiny_model(hidden_size=128, num_attention_heads=2).cuda()
    prompts = [[3, 4, 152, 5, 6], [7, 152]]
    settings = GenerationSettings(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_tokens=8)
    assert fill_ids(model, prompts, SPECIAL, settings, True) == fill_ids(model, prompts, SPECIAL, settings, False)
