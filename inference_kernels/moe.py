"""Fused mixture-of-experts: route -> permute by expert -> grouped GEMMs with the activation fused -> combine.

Three public pieces, so HF blocks with their own routers reuse the expert part:
- `route(router_logits, top_k, renormalize)`: softmax over all experts, top-k, optional renormalisation.
- `capacity_keep(topk_ids, num_experts, capacity_factor)`: which assignments fit the experts' capacity.
- `fused_experts(hidden, topk_weights, topk_ids, w1, w2, ...)`: the experts and the weighted combine.

Capacity (the engine's MoE layer uses the same rule): `capacity = ceil(capacity_factor * T * top_k / E)`; each
expert keeps its assignments in slot-major order (every token's 1st choice in token order, then the 2nd
choices, ...); the rest are dropped and contribute nothing, without renormalising the kept weights.

The Triton path sorts the T*k assignments by expert into tiles of BLOCK_M rows (each tile belongs to one
expert; an expert's last tile is padded), then runs two grouped GEMMs over the tiles: x @ w1[e] with bias and
GeLU (or SiLU(gate) * up, both halves from one pass over x) fused, and h @ w2[e] with bias and the routing
weight fused, each row written back to its assignment's place; the k rows of a token are summed at the end.
Experts that receive no tokens cost nothing.
"""

from __future__ import annotations

import math

import torch

from inference_kernels._triton import launch, tl, triton
from inference_kernels.norm import _gelu_tanh, gelu_tanh

ACTIVATIONS = ("gelu", "silu_gated")


# ---------------------------------------------------------------- routing and capacity (shared by both paths)


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_weights fp32 [T,k], topk_ids int64 [T,k]) from router logits [T,E]."""
    if router_logits.dim() != 2:
        raise ValueError(f"route: router_logits must be [T,E], got {tuple(router_logits.shape)}")
    num_experts = router_logits.shape[1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"route: top_k={top_k} must be in [1, {num_experts}] (number of experts)")
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def expert_capacity(tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Assignments each expert keeps: ceil(capacity_factor * T * top_k / E)."""
    return math.ceil(capacity_factor * tokens * top_k / num_experts)


def capacity_keep(topk_ids: torch.Tensor, num_experts: int, capacity_factor: float | None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(keep bool [T,k] or None when unlimited, dropped: 0-dim int64 count of dropped assignments)."""
    if capacity_factor is None:
        return None, torch.zeros((), dtype=torch.long, device=topk_ids.device)
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be > 0 (or None for no limit), got {capacity_factor}")
    t, k = topk_ids.shape
    capacity = expert_capacity(t, num_experts, k, capacity_factor)
    slot_major = topk_ids.t().reshape(-1)  # all 1st choices in token order, then all 2nd choices, ...
    onehot = torch.nn.functional.one_hot(slot_major, num_experts)
    position = (onehot.cumsum(0) * onehot).sum(-1) - 1  # place of each assignment in its expert's queue
    keep = (position < capacity).view(k, t).t()
    return keep, (~keep).sum()


def _check_experts_args(hidden, topk_weights, topk_ids, w1, w2, b1, b2, activation) -> tuple[int, int, int, int]:
    if activation not in ACTIVATIONS:
        raise ValueError(f"fused_moe: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if hidden.dim() != 2:
        raise ValueError(f"fused_moe: hidden must be [T,D], got {tuple(hidden.shape)}")
    t, d = hidden.shape
    if w1.dim() != 3 or w2.dim() != 3:
        raise ValueError(f"fused_moe: w1/w2 must be [E,D,F]/[E,F,D], got {tuple(w1.shape)}, {tuple(w2.shape)}")
    e, f = w2.shape[0], w2.shape[1]
    width = 2 * f if activation == "silu_gated" else f
    if w1.shape != (e, d, width) or w2.shape != (e, f, d):
        raise ValueError(
            f"fused_moe: with activation={activation!r} expected w1 {(e, d, width)} and w2 {(e, f, d)}, "
            f"got {tuple(w1.shape)} and {tuple(w2.shape)}"
        )
    if b1 is not None and b1.shape != (e, width):
        raise ValueError(f"fused_moe: b1 shape {tuple(b1.shape)} != {(e, width)}")
    if b2 is not None and b2.shape != (e, d):
        raise ValueError(f"fused_moe: b2 shape {tuple(b2.shape)} != {(e, d)}")
    if topk_ids.shape != topk_weights.shape or topk_ids.dim() != 2 or topk_ids.shape[0] != t:
        raise ValueError(f"fused_moe: topk weights {tuple(topk_weights.shape)} / ids {tuple(topk_ids.shape)} must be [T={t},k]")
    return t, d, e, f


# ---------------------------------------------------------------- reference


def _activate(h: torch.Tensor, activation: str, f: int) -> torch.Tensor:
    if activation == "silu_gated":
        gate, up = h[:, :f].float(), h[:, f:].float()
        return (torch.nn.functional.silu(gate) * up).to(h.dtype)
    return gelu_tanh(h)


def fused_experts_reference(
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
    """One expert at a time, in the activations' dtype, combined in fp32."""
    t, d, e, f = _check_experts_args(hidden, topk_weights, topk_ids, w1, w2, b1, b2, activation)
    keep, dropped = capacity_keep(topk_ids, e, capacity_factor)
    out = torch.zeros((t, d), dtype=torch.float32, device=hidden.device)
    for expert in range(e):
        chosen = topk_ids == expert
        if keep is not None:
            chosen &= keep
        tok, slot = chosen.nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        h = hidden[tok] @ w1[expert]
        if b1 is not None:
            h = h + b1[expert]
        h = _activate(h, activation, f)
        y = h @ w2[expert]
        if b2 is not None:
            y = y + b2[expert]
        out.index_add_(0, tok, y.float() * topk_weights[tok, slot, None].float())
    return out.to(hidden.dtype), dropped


# ---------------------------------------------------------------- Triton


@triton.jit
def _moe_up_kernel(
    X, W1, B1, OUT, SORTED, BLOCK_EXPERT, TOTAL,
    n_assign, top_k, D, F,
    sxm, swe, swk, swn, sbe, som,
    GATED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """OUT[a, :F] = act(X[a // top_k] @ W1[e] + B1[e]) for the assignments a of one expert tile."""
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(F, BLOCK_N)
    pid_m = pid // tiles_n
    pid_n = pid % tiles_n
    if pid_m * BLOCK_M >= tl.load(TOTAL):
        return
    e = tl.load(BLOCK_EXPERT + pid_m).to(tl.int64)
    assign = tl.load(SORTED + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    a_ok = assign < n_assign
    rows = (assign // top_k).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < F
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    w_base = W1 + e * swe
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < D
        a = tl.load(X + rows[:, None] * sxm + offs_k[None, :], mask=a_ok[:, None] & k_ok[None, :], other=0.0)
        w_ptrs = w_base + offs_k[:, None].to(tl.int64) * swk + offs_n[None, :] * swn
        w = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, w.to(a.dtype), acc)
        if GATED:
            wu = tl.load(w_ptrs + F * swn, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc_up = tl.dot(a, wu.to(a.dtype), acc_up)
    if HAS_BIAS:
        acc += tl.load(B1 + e * sbe + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc_up += tl.load(B1 + e * sbe + F + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if GATED:
        h = acc * tl.sigmoid(acc) * acc_up
    else:
        h = _gelu_tanh(acc)
    out_ptrs = OUT + assign[:, None].to(tl.int64) * som + offs_n[None, :]
    tl.store(out_ptrs, h.to(OUT.dtype.element_ty), mask=a_ok[:, None] & n_ok[None, :])


@triton.jit
def _moe_down_kernel(
    H, W2, B2, OUT, TOPK_W, SORTED, BLOCK_EXPERT, TOTAL,
    n_assign, F, D,
    shm, swe, swk, swn, sbe, som,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """OUT[a] = topk_w[a] * (H[a] @ W2[e] + B2[e]) for the assignments a of one expert tile."""
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(D, BLOCK_N)
    pid_m = pid // tiles_n
    pid_n = pid % tiles_n
    if pid_m * BLOCK_M >= tl.load(TOTAL):
        return
    e = tl.load(BLOCK_EXPERT + pid_m).to(tl.int64)
    assign = tl.load(SORTED + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    a_ok = assign < n_assign
    rows = assign.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < D
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    w_base = W2 + e * swe
    for k0 in range(0, F, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < F
        a = tl.load(H + rows[:, None] * shm + offs_k[None, :], mask=a_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_base + offs_k[:, None].to(tl.int64) * swk + offs_n[None, :] * swn, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, w.to(a.dtype), acc)
    if HAS_BIAS:
        acc += tl.load(B2 + e * sbe + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = acc * tl.load(TOPK_W + assign, mask=a_ok, other=0.0).to(tl.float32)[:, None]
    tl.store(OUT + rows[:, None] * som + offs_n[None, :], acc.to(OUT.dtype.element_ty), mask=a_ok[:, None] & n_ok[None, :])


def align_by_expert(
    topk_ids: torch.Tensor, num_experts: int, block_m: int, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the T*k assignments by expert into tiles of `block_m` rows, without a host sync.

    Returns (sorted [P] assignment index per row, padding rows hold T*k; block_expert [P/block_m] expert of
    each tile; total [1] number of rows in use). P is an upper bound so that shapes never depend on routing.
    Dropped assignments (keep False) are left out.
    """
    n = topk_ids.numel()
    flat = topk_ids.reshape(-1).long()
    if keep is not None:
        flat = torch.where(keep.reshape(-1), flat, num_experts)  # dropped -> a sentinel expert sorted last
    # scatter_add rather than bincount: bincount sizes its output from the data, a host sync on CUDA.
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=flat.device)
    counts = counts.scatter_add_(0, flat, torch.ones_like(flat))[:num_experts]
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    padded_start = padded_end - padded
    order = torch.argsort(flat, stable=True)
    sorted_experts = flat[order]
    valid = sorted_experts < num_experts
    expert = sorted_experts.clamp(max=num_experts - 1)
    count_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=flat.device) - count_start[expert]
    rows_bound = triton.cdiv(n + min(num_experts, n) * (block_m - 1), block_m) * block_m
    dest = torch.where(valid, padded_start[expert] + rank, rows_bound)  # dropped -> a scratch row past the end
    sorted_ids = torch.full((rows_bound + 1,), n, dtype=torch.int32, device=flat.device)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    tile_starts = torch.arange(0, rows_bound, block_m, device=flat.device)
    block_expert = torch.searchsorted(padded_end, tile_starts, right=True).clamp(max=num_experts - 1).to(torch.int32)
    return sorted_ids[:rows_bound], block_expert, padded_end[-1:].to(torch.int32)


@triton.jit
def _align_kernel(
    IDS, KEEP, SORTED, BLOCK_EXPERT, TOTAL, n_assign, num_experts, num_tiles,
    HAS_KEEP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """`align_by_expert` in one program for small batches: an assignments x experts one-hot in registers."""
    a = tl.arange(0, BLOCK_A)
    a_ok = a < n_assign
    ids = tl.load(IDS + a, mask=a_ok, other=-1)
    if HAS_KEEP:
        ids = tl.where(tl.load(KEEP + a, mask=a_ok, other=0) != 0, ids, -1)  # dropped: matches no expert
    onehot = (ids[:, None] == tl.arange(0, BLOCK_E)[None, :]).to(tl.int32)  # [assignments, experts]
    padded = (tl.sum(onehot, axis=0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    padded_end = tl.cumsum(padded, axis=0)
    rank = tl.sum(tl.cumsum(onehot, axis=0) * onehot, axis=1) - 1  # place among its expert's assignments
    dest = tl.sum(onehot * (padded_end - padded)[None, :], axis=1) + rank
    tl.store(SORTED + dest, a.to(tl.int32), mask=tl.sum(onehot, axis=1) > 0)
    t = tl.arange(0, BLOCK_T)
    tile_expert = tl.sum((padded_end[None, :] <= (t * BLOCK_M)[:, None]).to(tl.int32), axis=1)
    tl.store(BLOCK_EXPERT + t, tl.minimum(tile_expert, num_experts - 1), mask=t < num_tiles)
    tl.store(TOTAL, tl.sum(padded, axis=0))


_ALIGN_KERNEL_MAX_CELLS = 32768  # assignments x experts (powers of two) held in registers by one program


def align_by_expert_triton(
    topk_ids: torch.Tensor, num_experts: int, block_m: int, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`align_by_expert` as one kernel launch when the batch is small (decode), else the torch version."""
    n = topk_ids.numel()
    block_a, block_e = max(16, triton.next_power_of_2(n)), max(16, triton.next_power_of_2(num_experts))
    if block_a * block_e > _ALIGN_KERNEL_MAX_CELLS:
        return align_by_expert(topk_ids, num_experts, block_m, keep)
    rows_bound = triton.cdiv(n + min(num_experts, n) * (block_m - 1), block_m) * block_m
    num_tiles = rows_bound // block_m
    sorted_ids = torch.full((rows_bound,), n, dtype=torch.int32, device=topk_ids.device)
    block_expert = torch.empty((num_tiles,), dtype=torch.int32, device=topk_ids.device)
    total = torch.empty((1,), dtype=torch.int32, device=topk_ids.device)
    ids = topk_ids.reshape(-1)
    keep_bytes = keep.reshape(-1).view(torch.uint8) if keep is not None else ids
    _align_kernel[(1,)](
        ids, keep_bytes, sorted_ids, block_expert, total, n, num_experts, num_tiles,
        HAS_KEEP=keep is not None, BLOCK_M=block_m, BLOCK_A=block_a, BLOCK_E=block_e,
        BLOCK_T=max(2, triton.next_power_of_2(num_tiles)), num_warps=4 if block_a * block_e <= 8192 else 8,
    )
    return sorted_ids, block_expert, total


def _tile_config(num_assign: int, gated: bool, element_size: int) -> dict[str, int]:
    """Tiles for Hopper-class GPUs in 16-bit types; fp32 halves the K depth to fit shared memory."""
    if num_assign <= 64:  # decode: weight-bandwidth bound, few rows per expert
        cfg = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4}
    elif num_assign <= 1024:
        cfg = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4}
    else:
        cfg = {"BLOCK_M": 64, "BLOCK_N": 64 if gated else 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}
    if element_size == 4:
        cfg.update(BLOCK_K=cfg["BLOCK_K"] // 2, num_stages=min(cfg["num_stages"], 3))
    return cfg


def fused_experts_triton(
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
    block_m: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`block_m` overrides the tile height (tests use it to make experts share and pad tiles)."""
    t, d, e, f = _check_experts_args(hidden, topk_weights, topk_ids, w1, w2, b1, b2, activation)
    keep, dropped = capacity_keep(topk_ids, e, capacity_factor)
    k = topk_ids.shape[1]
    n = t * k
    if n == 0:
        return torch.zeros_like(hidden), dropped
    gated = activation == "silu_gated"
    x = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    up_cfg = _tile_config(n, gated, hidden.element_size())
    down_cfg = _tile_config(n, False, hidden.element_size())
    if block_m is not None:
        up_cfg["BLOCK_M"] = down_cfg["BLOCK_M"] = block_m
    down_cfg["BLOCK_M"] = up_cfg["BLOCK_M"]  # both GEMMs walk the same tiles
    sorted_ids, block_expert, total = align_by_expert_triton(topk_ids, e, up_cfg["BLOCK_M"], keep)
    tiles_m = block_expert.numel()
    weights = topk_weights.reshape(-1).float().contiguous()

    inter = torch.empty((n, f), dtype=hidden.dtype, device=hidden.device)
    launch(
        _moe_up_kernel,
        (tiles_m * triton.cdiv(f, up_cfg["BLOCK_N"]),),
        x, w1, b1 if b1 is not None else w1, inter, sorted_ids, block_expert, total,
        n, k, d, f,
        x.stride(0), w1.stride(0), w1.stride(1), w1.stride(2), b1.stride(0) if b1 is not None else 0, inter.stride(0),
        GATED=gated, HAS_BIAS=b1 is not None, **up_cfg,
    )
    # Dropped assignments are never written: their rows must read as zeros in the combine.
    per_assign = (torch.zeros if keep is not None else torch.empty)((n, d), dtype=hidden.dtype, device=hidden.device)
    launch(
        _moe_down_kernel,
        (tiles_m * triton.cdiv(d, down_cfg["BLOCK_N"]),),
        inter, w2, b2 if b2 is not None else w2, per_assign, weights, sorted_ids, block_expert, total,
        n, f, d,
        inter.stride(0), w2.stride(0), w2.stride(1), w2.stride(2), b2.stride(0) if b2 is not None else 0, per_assign.stride(0),
        HAS_BIAS=b2 is not None, **down_cfg,
    )
    out = per_assign if k == 1 else per_assign.view(t, k, d).sum(dim=1)
    return out, dropped
