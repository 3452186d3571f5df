"""Switch a model onto the fused ops: our GLM blocks by flag, transformers' MoE blocks by module swap.

(a) Every submodule with a boolean `fused` attribute (xdai.model's GLM blocks) gets `fused = True` and from then
    on calls `inference_kernels` ops, which pick Triton on CUDA.
(b) transformers' sparse MoE blocks (`MixtralSparseMoeBlock`, `Qwen2MoeSparseMoeBlock`, `Glm4MoeMoE`) are replaced
    by `FusedHFMoe`, which keeps the block's own router (so each family's routing rule stays exactly theirs),
    stacks the experts' weights once into the [E,D,2F] / [E,F,D] layout of `fused_experts`, adds the shared
    expert where the family has one, and returns what the original block returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from inference_kernels.dispatch import fused_experts


@dataclass
class InjectionReport:
    """What `inject` changed: module paths per kind."""

    fused_flags: list[str] = field(default_factory=list)
    moe_blocks: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: why" for MoE blocks left as they were

    def __bool__(self) -> bool:
        return bool(self.fused_flags or self.moe_blocks)

    def summary(self) -> str:
        return (
            f"inject: {len(self.fused_flags)} GLM modules set fused, {len(self.moe_blocks)} HF MoE blocks swapped, "
            f"{len(self.skipped)} skipped"
        )


# transformers class name -> the family's way of combining routed and shared experts
HF_MOE_FAMILIES = {
    "MixtralSparseMoeBlock": "mixtral",
    "Qwen2MoeSparseMoeBlock": "qwen2_moe",
    "Glm4MoeMoE": "glm4_moe",
}
_SHARED_PARTS = ("shared_expert", "shared_expert_gate", "shared_experts")


def _unsupported(block: nn.Module) -> str | None:
    """Why `block`'s experts do not fit `fused_experts` (None when they do)."""
    experts = getattr(block, "experts", None)
    if not hasattr(block, "gate") or experts is None:
        return "no gate/experts submodules"
    gate_up, down = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
    if not isinstance(gate_up, torch.Tensor) or not isinstance(down, torch.Tensor) or gate_up.dim() != 3:
        return "experts are not stacked 3-D gate_up_proj/down_proj tensors (transformers < 5 layout)"
    if getattr(experts, "is_transposed", False) or not getattr(experts, "is_concatenated", True):
        return "experts use a transposed or interleaved gate/up layout"
    if getattr(experts, "has_bias", False) or not getattr(experts, "has_gate", True):
        return "experts have biases or no gate"
    if type(getattr(experts, "act_fn", None)).__name__ not in {"SiLU", "SiLUActivation"}:
        return f"experts activation is {type(getattr(experts, 'act_fn', None)).__name__}, the kernel fuses SiLU"
    e, two_f, d = gate_up.shape
    if two_f % 2 or down.shape != (e, d, two_f // 2):
        return f"gate_up_proj {tuple(gate_up.shape)} and down_proj {tuple(down.shape)} do not pair up"
    return None


class FusedHFMoe(nn.Module):
    """A transformers sparse MoE block running its experts through `fused_experts`.

    Holds the original `gate`, `experts` and shared-expert submodules under their original names, so the state
    dict is unchanged and no weight is copied: the experts' [E,2F,D] / [E,D,F] parameters are passed as
    transposed views ([E,D,2F] / [E,F,D]); the kernel reads them through their strides.
    """

    def __init__(self, block: nn.Module, family: str):
        super().__init__()
        self.family = family
        self.gate = block.gate
        self.experts = block.experts
        for name in _SHARED_PARTS:
            if hasattr(block, name):
                setattr(self, name, getattr(block, name))
        self.jitter_noise = float(getattr(block, "jitter_noise", 0.0) or 0.0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        if self.training and self.jitter_noise > 0:
            noise = torch.empty_like(hidden_states).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
            hidden_states = hidden_states * noise
        x = hidden_states.reshape(-1, shape[-1])
        _, topk_weights, topk_ids = self.gate(x)
        out, _ = fused_experts(
            x,
            topk_weights,
            topk_ids,
            self.experts.gate_up_proj.transpose(1, 2),
            self.experts.down_proj.transpose(1, 2),
            activation="silu_gated",
        )
        if self.family == "qwen2_moe":
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        elif self.family == "glm4_moe":
            out = out + self.shared_experts(x)
        return out.reshape(shape)


def _swap_hf_moe_blocks(model: nn.Module, report: InjectionReport) -> None:
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module).__name__ in HF_MOE_FAMILIES
    ]
    for name, block in targets:
        why = _unsupported(block)
        if why is not None:
            report.skipped.append(f"{name}: {why}")
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else None
        fused = FusedHFMoe(block, HF_MOE_FAMILIES[type(block).__name__])
        fused.train(block.training)
        if parent is None:
            raise ValueError("inject: the model itself is an MoE block; wrap it in a parent module to swap it")
        setattr(parent, child, fused)
        report.moe_blocks.append(name)


def _set_fused_flags(model: nn.Module, report: InjectionReport) -> None:
    for name, module in model.named_modules():
        if isinstance(getattr(module, "fused", None), bool):
            module.fused = True
            report.fused_flags.append(name or "<root>")


def inject(model: nn.Module) -> InjectionReport:
    """Turn on the fused paths of `model` in place; returns what was changed."""
    report = InjectionReport()
    _set_fused_flags(model, report)
    _swap_hf_moe_blocks(model, report)
    return report
