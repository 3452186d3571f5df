"""inject(): GLM blocks switched by flag; transformers' MoE blocks swapped for FusedHFMoe and checked against
transformers' own blocks and whole tiny models (random weights, CPU: the fused module runs the reference path
here; the Triton path of the same `fused_experts` call is covered by test_moe.py under the interpreter).
"""

import copy
import functools
import importlib

import pytest
import torch
from torch import nn
from transformers import (
    Glm4MoeConfig,
    Glm4MoeForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

from inference_kernels import inject
from inference_kernels.inject import FusedHFMoe

COMMON = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)

CASES = {
    "mixtral": (
        MixtralForCausalLM,
        MixtralConfig(**COMMON, intermediate_size=48, num_local_experts=5, num_experts_per_tok=2),
        "MixtralSparseMoeBlock",
    ),
    "qwen2_moe": (
        Qwen2MoeForCausalLM,
        Qwen2MoeConfig(
            **COMMON,
            intermediate_size=48,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            num_experts=6,
            num_experts_per_tok=2,
            norm_topk_prob=False,
        ),
        "Qwen2MoeSparseMoeBlock",
    ),
    "glm4_moe": (
        Glm4MoeForCausalLM,
        Glm4MoeConfig(
            **COMMON,
            intermediate_size=48,
            moe_intermediate_size=24,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            n_shared_experts=1,
            first_k_dense_replace=1,
            routed_scaling_factor=1.5,
            head_dim=8,
        ),
        "Glm4MoeMoE",
    ),
}


def tiny_model(name: str) -> tuple[nn.Module, str]:
    """A fresh copy of the tiny random model (built once per module: construction dominates these tests)."""
    model, block_name = _built(name)
    return copy.deepcopy(model), block_name


@functools.cache
def _built(name: str) -> tuple[nn.Module, str]:
    cls, config, block_name = CASES[name]
    torch.manual_seed(0)
    model = cls(copy.deepcopy(config)).eval()
    with torch.no_grad():  # random everything, including the router's correction bias, so routing varies
        for p in model.parameters():
            p.normal_(0, 0.2)
        for n, b in model.named_buffers():
            if "e_score_correction_bias" in n:
                b.normal_(0, 0.1)
    return model, block_name


@pytest.mark.parametrize("name", list(CASES))
def test_injected_blocks_match_transformers(name):
    model, block_name = tiny_model(name)
    originals = {n: m for n, m in model.named_modules() if type(m).__name__ == block_name}
    assert originals, f"tiny {name} config has no {block_name}"
    fused_model = copy.deepcopy(model)
    report = inject(fused_model)
    assert sorted(report.moe_blocks) == sorted(originals) and not report.skipped
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        for path, block in originals.items():
            fused = fused_model.get_submodule(path)
            assert isinstance(fused, FusedHFMoe)
            torch.testing.assert_close(fused(x), block(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_injected_model_logits_and_state_dict_unchanged(name):
    model, _ = tiny_model(name)
    fused_model = copy.deepcopy(model)
    inject(fused_model)
    assert fused_model.state_dict().keys() == model.state_dict().keys()  # same weights, same names
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        ref = model(ids).logits
        out = fused_model(ids).logits
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_unsupported_experts_are_reported_not_swapped():
    model, _ = tiny_model("mixtral")
    for layer in model.model.layers:
        layer.mlp.experts.act_fn = nn.GELU()
    report = inject(model)
    assert not report.moe_blocks and len(report.skipped) == 2
    assert "GELU" in report.skipped[0]


class _Block(nn.Module):
    """A module with the `fused` switch that xdai.model's GLM blocks expose."""

    def __init__(self) -> None:
        super().__init__()
        self.fused = False
        self.mode = "eager"  # a non-boolean attribute named otherwise is left alone


def test_glm_fused_flags_are_set():
    model = nn.Sequential(_Block(), nn.Linear(2, 2), nn.Sequential(_Block()))
    model[1].fused = "no"  # not a boolean switch: untouched
    report = inject(model)
    assert report.fused_flags == ["0", "2.0"]
    assert model[0].fused is True and model[2][0].fused is True and model[1].fused == "no"
    assert "2 GLM modules set fused" in report.summary()


def test_injected_block_on_the_triton_path_matches_transformers(interpret, monkeypatch):
    """The same swapped block with its experts call routed to the Triton kernel (interpreted on CPU)."""
    from inference_kernels.moe import fused_experts_triton

    inject_module = importlib.import_module("inference_kernels.inject")  # the module, not the function

    model, block_name = tiny_model("qwen2_moe")
    path, block = next((n, m) for n, m in model.named_modules() if type(m).__name__ == block_name)
    fused_model = copy.deepcopy(model)
    inject(fused_model)
    monkeypatch.setattr(inject_module, "fused_experts", fused_experts_triton)
    x = torch.randn(1, 11, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused_model.get_submodule(path)(x), block(x), atol=1e-5, rtol=1e-5)
