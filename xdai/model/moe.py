"""Mixture-of-experts FFN: top-k softmax router, capacity with counted drops, stacked expert weights.

Routing semantics are the contract with `inference_kernels.fused_moe`: softmax over all E experts, take top-k;
with `renormalize` the k weights are divided by their sum. With a capacity factor, each expert keeps at most
`ceil(capacity_factor * T * top_k / E)` assignments in slot-major order (every token's 1st choice in token
order, then every 2nd choice, ...); the rest are dropped, contribute nothing and are counted (the kept weights
are not renormalised). Expert weights are stacked: `w1 [E, D, F]`, `b1 [E, F]`, `w2 [E, F, D]`, `b2 [E, D]`.

Expert parallelism: `shard_experts` keeps a contiguous slice of the experts on each rank; routing stays global
(the router is replicated), each rank adds its experts' contributions and an all-reduce sums them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

# One definition of the capacity rule and of the experts' activation (GLM's tanh-GeLU), shared with the fused
# kernel, so that the plain path and `fused_moe` compute the same thing.
from inference_kernels.moe import expert_capacity
from inference_kernels.norm import gelu_tanh


class MoESpec(Protocol):
    """What an MoE layer reads from its model's config (`xdai.model.glm.GLMConfig` is one). A protocol, so that
    this module stays below glm.py, which builds the layers."""

    num_experts: int
    hidden_size: int
    moe_top_k: int
    moe_capacity_factor: float | None
    moe_renormalize: bool

    @property
    def ffn_size(self) -> int: ...


@dataclass
class Routing:
    experts: torch.Tensor  # [T, k] chosen expert per slot
    weights: torch.Tensor  # [T, k] gate weight per slot (float32)
    keep: torch.Tensor  # [T, k] False where the capacity limit dropped the assignment
    dropped: torch.Tensor  # 0-dim long: number of dropped assignments
    probs: torch.Tensor  # [T, E] router softmax (float32), for the load-balancing loss


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool = True,
          capacity_factor: float | None = None) -> Routing:
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    tokens, num_experts = probs.shape
    if capacity_factor is None:
        keep = torch.ones_like(experts, dtype=torch.bool)
        return Routing(experts, weights, keep, torch.zeros((), dtype=torch.long, device=probs.device), probs)
    capacity = expert_capacity(tokens, num_experts, top_k, capacity_factor)
    slot_major = F.one_hot(experts.t().reshape(-1), num_experts)  # [k*T, E]
    rank = (slot_major.cumsum(0) * slot_major).sum(-1) - 1  # place of each assignment in its expert's queue
    keep = (rank < capacity).view(top_k, tokens).t()
    return Routing(experts, weights, keep, (~keep).sum(), probs)


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Switch/GShard auxiliary loss E * sum_e f_e * P_e: f_e the share of assignments routed to expert e,
    P_e its mean router probability. 1.0 when perfectly balanced."""
    num_experts = probs.shape[-1]
    share = F.one_hot(experts.reshape(-1), num_experts).float().mean(0)
    return num_experts * (share * probs.mean(0)).sum()


def mix_experts(h: torch.Tensor, routing: Routing, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                b2: torch.Tensor | None, first_expert: int = 0) -> torch.Tensor:
    """Sum over kept assignments of weight * expert(token), for the experts `first_expert..+len(w1)`."""
    out = torch.zeros_like(h)
    for local in range(w1.shape[0]):
        token, slot = ((routing.experts == first_expert + local) & routing.keep).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        y = h[token] @ w1[local]
        y = gelu_tanh(y + b1[local] if b1 is not None else y) @ w2[local]
        if b2 is not None:
            y = y + b2[local]
        out.index_add_(0, token, y * routing.weights[token, slot, None].to(y.dtype))
    return out


class Router(nn.Module):
    """Token -> expert logits. Not an `nn.Linear` on purpose: tensor-parallel rewriters (DeepSpeed AutoTP) shard
    every Linear of a layer, and every rank needs all E logits."""

    def __init__(self, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_experts, hidden) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class MoEMLP(nn.Module):
    """Drop-in for the dense MLP of a GLM layer. After each forward: `dropped` (0-dim tensor) and, when
    gradients are on, `aux_loss` (the load-balancing loss of this layer)."""

    def __init__(self, cfg: MoESpec, shared: nn.Module | None = None) -> None:
        super().__init__()
        e, d, f = cfg.num_experts, cfg.hidden_size, cfg.ffn_size
        self.num_experts = e
        self.top_k = cfg.moe_top_k
        self.capacity_factor = cfg.moe_capacity_factor
        self.renormalize = cfg.moe_renormalize
        self.router = Router(d, e)
        self.w1 = nn.Parameter(torch.randn(e, d, f) * 0.02)
        self.b1 = nn.Parameter(torch.zeros(e, f))
        self.w2 = nn.Parameter(torch.randn(e, f, d) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(e, d))
        self.shared = shared
        self.first_expert = 0  # expert parallelism: index of w1[0] among all experts
        self.ep_group: torch.distributed.ProcessGroup | None = None
        self.aux_loss: torch.Tensor | None = None
        self.dropped: torch.Tensor = torch.zeros((), dtype=torch.long)

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        logits = self.router(h)
        if fused and self.ep_group is None:
            import inference_kernels

            out, self.dropped = inference_kernels.fused_moe(
                h, logits, self.w1, self.w2, top_k=self.top_k, b1=self.b1, b2=self.b2,
                renormalize=self.renormalize, activation="gelu", capacity_factor=self.capacity_factor)
            self.aux_loss = None
        else:
            routing = route(logits, self.top_k, self.renormalize, self.capacity_factor)
            out = mix_experts(h, routing, self.w1, self.b1, self.w2, self.b2, self.first_expert)
            if self.ep_group is not None:
                torch.distributed.all_reduce(out, group=self.ep_group)
            self.dropped = routing.dropped
            self.aux_loss = load_balancing_loss(routing.probs, routing.experts) if torch.is_grad_enabled() else None
        if self.shared is not None:
            out = out + self.shared(h)
        return out.view(shape)


def shard_experts(module: MoEMLP, ep_size: int, ep_rank: int, group: torch.distributed.ProcessGroup) -> None:
    """Keep experts `ep_rank * E/ep_size ...` of `module` on this rank; outputs are summed over `group`."""
    if module.num_experts % ep_size:
        raise ValueError(f"num_experts {module.num_experts} is not divisible by ep_size {ep_size}")
    per = module.num_experts // ep_size
    lo = ep_rank * per
    for name in ("w1", "b1", "w2", "b2"):
        full = getattr(module, name)
        setattr(module, name, nn.Parameter(full.data[lo:lo + per].clone(), requires_grad=full.requires_grad))
    module.first_expert = lo
    module.ep_group = group
