"""Fused inference kernels (Triton) beside the PyTorch references that define their meaning.

`inference_kernels.<op>(...)` runs Triton for CUDA tensors and the reference elsewhere; `XDAI_KERNELS=off` forces
the reference. `inject(model)` switches our GLM blocks to these ops and swaps fused modules into transformers' MoE
blocks.
"""

from inference_kernels.attention import prefix_mask
from inference_kernels.dispatch import (
    backend_name,
    bias_gelu,
    fused_experts,
    fused_moe,
    kernels_enabled,
    layer_norm,
    prefix_attention,
    rms_norm,
    use_triton,
)
from inference_kernels.inject import InjectionReport, inject
from inference_kernels.moe import capacity_keep, expert_capacity, route
from inference_kernels.norm import gelu_tanh

__all__ = [
    "InjectionReport",
    "backend_name",
    "bias_gelu",
    "capacity_keep",
    "expert_capacity",
    "fused_experts",
    "fused_moe",
    "gelu_tanh",
    "inject",
    "kernels_enabled",
    "layer_norm",
    "prefix_attention",
    "prefix_mask",
    "rms_norm",
    "route",
    "use_triton",
]
