"""Which implementation runs an op: Triton for CUDA tensors, the PyTorch reference elsewhere.

`XDAI_KERNELS=off` forces the reference everywhere (read at each call, so tests and benchmarks can flip it).
Tests that exercise the Triton path on CPU tensors call the `*_triton` functions directly under
`TRITON_INTERPRET=1`; `interpreting()` tells them whether Triton will honour that.
"""

from __future__ import annotations

import os

import torch

from inference_kernels import attention, moe, norm
from inference_kernels._triton import HAS_TRITON

ENV_SWITCH = "XDAI_KERNELS"


def kernels_enabled() -> bool:
    """False when `XDAI_KERNELS` is set to off/0/false/no."""
    return os.environ.get(ENV_SWITCH, "on").strip().lower() not in {"off", "0", "false", "no"}


def interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (`TRITON_INTERPRET=1`)."""
    return HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "yes", "on"}


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Triton for CUDA tensors (all of them), unless the switch is off or triton is not installed."""
    if not (HAS_TRITON and kernels_enabled()) or interpreting():
        return False
    present = [t for t in tensors if t is not None]
    return bool(present) and all(t.is_cuda for t in present)


def backend_name(*tensors: torch.Tensor | None) -> str:
    """'triton' or 'reference': what a call with these tensors would run (for logs and benchmarks)."""
    return "triton" if use_triton(*tensors) else "reference"


# ---------------------------------------------------------------- the public ops


def prefix_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sep: torch.Tensor,
    q_offset: int | torch.Tensor = 0,
    kv_len: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """GLM prefix-LM attention, q [B,H,Lq,D], k/v [B,Hk,Lk,D] (Hk divides H), sep [B]; see `attention`."""
    if use_triton(q, k, v):
        return attention.prefix_attention_triton(q, k, v, sep, q_offset, kv_len, scale)
    return attention.prefix_attention_reference(q, k, v, sep, q_offset, kv_len, scale)


def fused_experts(
    hidden: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    *,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    activation: str = "gelu",
    capacity_factor: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The experts and the combine for precomputed routing; returns (out [T,D], dropped 0-dim int64)."""
    impl = moe.fused_experts_triton if use_triton(hidden, w1, w2) else moe.fused_experts_reference
    return impl(hidden, topk_weights, topk_ids, w1, w2, b1=b1, b2=b2, activation=activation, capacity_factor=capacity_factor)


def fused_moe(
    hidden: torch.Tensor,
    router_logits: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    *,
    top_k: int,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    renormalize: bool = True,
    activation: str = "gelu",
    capacity_factor: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax top-k routing then `fused_experts`; w1 [E,D,F] ([E,D,2F] gate|up for silu_gated), w2 [E,F,D]."""
    topk_weights, topk_ids = moe.route(router_logits, top_k, renormalize)
    return fused_experts(
        hidden, topk_weights, topk_ids, w1, w2, b1=b1, b2=b2, activation=activation, capacity_factor=capacity_factor
    )


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(LayerNorm(x + residual), x + residual); without residual, (LayerNorm(x), x)."""
    if use_triton(x, residual):
        return norm.layer_norm_triton(x, weight, bias, eps, residual)
    return norm.layer_norm_reference(x, weight, bias, eps, residual)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual), x + residual); without residual, (RMSNorm(x), x)."""
    if use_triton(x, residual):
        return norm.rms_norm_triton(x, weight, eps, residual)
    return norm.rms_norm_reference(x, weight, eps, residual)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """gelu_tanh(x + bias), bias broadcast over the last dimension."""
    if use_triton(x):
        return norm.bias_gelu_triton(x, bias)
    return norm.bias_gelu_reference(x, bias)
