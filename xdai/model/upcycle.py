"""Sparse upcycling (Komatsuzaki et al., 2023): a dense GLM becomes a mixture-of-experts GLM whose experts all
start as copies of the dense MLP, so that the new model computes what the old one did until it is trained.

Its own module because it needs both the model (glm.py) and the MoE layer (moe.py), which glm.py builds on.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from xdai.model.glm import GLMModel
from xdai.model.moe import MoEMLP


def upcycle_mlp(module: MoEMLP, dense: nn.Module) -> None:
    """Copy a dense MLP (`dense_h_to_4h`, `dense_4h_to_h`) into every expert of `module`.

    With renormalised gates the MoE output equals the dense output at initialisation. With a shared expert, the
    shared expert takes the dense copy and the routed experts' output projections start at zero, so the sum is
    still the dense output.
    """
    w1 = dense.dense_h_to_4h.weight.detach().t()
    b1 = dense.dense_h_to_4h.bias.detach()
    w2 = dense.dense_4h_to_h.weight.detach().t()
    b2 = dense.dense_4h_to_h.bias.detach()
    with torch.no_grad():
        module.w1.copy_(w1.expand_as(module.w1))
        module.b1.copy_(b1.expand_as(module.b1))
        if module.shared is not None:
            module.shared.load_state_dict(dense.state_dict())
            module.w2.zero_()
            module.b2.zero_()
        else:
            module.w2.copy_(w2.expand_as(module.w2))
            module.b2.copy_(b2.expand_as(module.b2))


def upcycle(dense_model: GLMModel, num_experts: int, top_k: int = 2, layers: list[int] | None = None,
            capacity_factor: float | None = None, shared_expert: bool = False) -> GLMModel:
    """A new MoE `GLMModel` from a dense one: the MLPs of `layers` (default: all) become MoE layers whose experts
    are copies of the dense MLP (gates renormalised, so outputs are equal at initialisation without a capacity
    limit); every other weight is copied as is. The router starts from its random initialisation."""
    cfg = dense_model.config
    if cfg.moe_layers:
        raise ValueError("upcycle expects a dense model (config.moe_layers is already set)")
    layers = list(range(cfg.num_layers)) if layers is None else sorted(set(layers))
    moe_cfg = dataclasses.replace(cfg, moe_layers=layers, num_experts=num_experts, moe_top_k=top_k,
                                  moe_capacity_factor=capacity_factor, moe_renormalize=True,
                                  moe_shared_expert=shared_expert, extra=dict(cfg.extra))
    device = dense_model.word_embeddings.weight.device
    dtype = dense_model.word_embeddings.weight.dtype
    model = GLMModel(moe_cfg).to(device=device, dtype=dtype)
    dense_state = {k: v for k, v in dense_model.state_dict().items() if ".mlp." not in k}
    model.load_state_dict(dense_state, strict=False)
    for i in range(cfg.num_layers):
        source = dense_model.transformer.layers[i].mlp
        target = model.transformer.layers[i].mlp
        if i in layers:
            upcycle_mlp(target, source)
        else:
            target.load_state_dict(source.state_dict())
    model.tokenizer = dense_model.tokenizer
    return model
