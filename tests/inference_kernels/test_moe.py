"""Fused MoE: routing, capacity, the reference against a dense formulation, Triton (interpreted) against the
reference.

fp32 tolerance: atol = rtol = 1e-5 (observed differences are ~5e-7).
"""

import math

import pytest
import torch

from inference_kernels import capacity_keep, expert_capacity, fused_experts, fused_moe, route
from inference_kernels import moe as M

TOL = {"atol": 1e-5, "rtol": 1e-5}
T, D, F, E = 13, 40, 24, 6


def make_experts(activation, bias, e=E, d=D, f=F):
    width = 2 * f if activation == "silu_gated" else f
    w1 = torch.randn(e, d, width) / math.sqrt(d)
    w2 = torch.randn(e, f, d) / math.sqrt(f)
    b1 = torch.randn(e, width) if bias else None
    b2 = torch.randn(e, d) if bias else None
    return w1, w2, b1, b2


def starved_logits(t=T, e=E, starved=(4, 5)):
    """Router logits under which the `starved` experts receive no token at all."""
    logits = torch.randn(t, e)
    logits[:, list(starved)] = -1e4
    return logits


def dense_moe(hidden, weights, ids, w1, w2, b1, b2, activation, keep=None):
    """Every expert on every token, then pick: an independent statement of what the MoE computes."""
    h = torch.einsum("td,edf->etf", hidden, w1)
    if b1 is not None:
        h = h + b1[:, None]
    if activation == "silu_gated":
        f = w2.shape[1]
        h = torch.nn.functional.silu(h[..., :f]) * h[..., f:]
    else:
        h = torch.nn.functional.gelu(h, approximate="tanh")
    y = torch.einsum("etf,efd->etd", h, w2)
    if b2 is not None:
        y = y + b2[:, None]
    tokens = torch.arange(hidden.shape[0])[:, None]
    picked = y[ids, tokens]  # [T,k,D]
    w = weights if keep is None else weights * keep
    return (picked * w[..., None]).sum(1)


def test_route_softmax_topk():
    logits = torch.randn(9, 5)
    w, ids = route(logits, 2, renormalize=False)
    probs = logits.softmax(-1)
    torch.testing.assert_close(w, probs.gather(1, ids))
    assert (ids == probs.topk(2).indices).all()
    w_norm, _ = route(logits, 2)
    torch.testing.assert_close(w_norm.sum(-1), torch.ones(9))
    with pytest.raises(ValueError, match="top_k=6"):
        route(logits, 6)


def test_capacity_is_slot_major():
    ids = torch.tensor([[0, 1], [0, 1], [0, 1], [1, 0]])
    assert expert_capacity(4, 2, 2, 0.5) == 2  # (T, E, k, factor)
    keep, dropped = capacity_keep(ids, 2, 0.5)
    # expert 0 queue: t0s0, t1s0, t2s0, t3s1 -> keeps t0s0, t1s0; expert 1: t3s0, t0s1, t1s1, t2s1 -> t3s0, t0s1
    assert keep.tolist() == [[True, True], [True, False], [False, False], [True, False]]
    assert dropped.item() == 4 and dropped.dim() == 0 and dropped.dtype == torch.long
    keep, dropped = capacity_keep(ids, 2, None)
    assert keep is None and dropped.item() == 0


@pytest.mark.parametrize("activation,bias", [("gelu", True), ("silu_gated", False)])
@pytest.mark.parametrize("capacity_factor", [None, 0.75])
def test_reference_matches_dense(activation, bias, capacity_factor):
    hidden = torch.randn(T, D)
    w1, w2, b1, b2 = make_experts(activation, bias)
    weights, ids = route(starved_logits(), 2)
    keep, _ = capacity_keep(ids, E, capacity_factor)
    out, _ = M.fused_experts_reference(
        hidden, weights, ids, w1, w2, b1=b1, b2=b2, activation=activation, capacity_factor=capacity_factor
    )
    torch.testing.assert_close(out, dense_moe(hidden, weights, ids, w1, w2, b1, b2, activation, keep), **TOL)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("activation,bias", [("gelu", True), ("silu_gated", False)])
@pytest.mark.parametrize("capacity_factor", [None, 0.75])
def test_triton_matches_reference(interpret, top_k, activation, bias, capacity_factor):
    hidden = torch.randn(T, D)
    w1, w2, b1, b2 = make_experts(activation, bias)
    weights, ids = route(starved_logits(), top_k)
    assert not torch.isin(ids, torch.tensor([4, 5])).any()  # experts 4 and 5 get no tokens
    args = dict(b1=b1, b2=b2, activation=activation, capacity_factor=capacity_factor)
    out, dropped = M.fused_experts_triton(hidden, weights, ids, w1, w2, **args)
    ref, ref_dropped = M.fused_experts_reference(hidden, weights, ids, w1, w2, **args)
    torch.testing.assert_close(out, ref, **TOL)
    assert dropped.item() == ref_dropped.item()
    if capacity_factor is not None:
        assert dropped.item() > 0  # the case really drops something


def test_triton_single_token_decode(interpret):
    hidden = torch.randn(1, D)
    w1, w2, b1, b2 = make_experts("gelu", True)
    weights, ids = route(torch.randn(1, E), 2)
    out, _ = M.fused_experts_triton(hidden, weights, ids, w1, w2, b1=b1, b2=b2)
    torch.testing.assert_close(out, M.fused_experts_reference(hidden, weights, ids, w1, w2, b1=b1, b2=b2)[0], **TOL)


def test_triton_many_tiles_and_strided_weights(interpret):
    """More rows than one tile per expert, and HF-style [E,2F,D] weights passed as transposed views."""
    t = 40
    hidden = torch.randn(t, D)
    gate_up = torch.randn(4, 2 * F, D) / math.sqrt(D)
    down = torch.randn(4, D, F) / math.sqrt(F)
    w1, w2 = gate_up.transpose(1, 2), down.transpose(1, 2)
    weights, ids = route(torch.randn(t, 4), 2)
    out, _ = M.fused_experts_triton(hidden, weights, ids, w1, w2, activation="silu_gated")
    ref, _ = M.fused_experts_reference(hidden, weights, ids, w1, w2, activation="silu_gated")
    torch.testing.assert_close(out, ref, **TOL)


def test_fp16_triton(interpret):
    hidden = torch.randn(9, 32).half()
    w1, w2, _, _ = make_experts("silu_gated", False, e=4, d=32, f=16)
    w1, w2 = w1.half(), w2.half()
    weights, ids = route(torch.randn(9, 4), 2)
    out, _ = M.fused_experts_triton(hidden, weights, ids, w1, w2, activation="silu_gated")
    ref, _ = M.fused_experts_reference(hidden, weights, ids, w1, w2, activation="silu_gated")
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("block_m", [16, 32])
def test_align_by_expert_places_every_assignment_once(block_m):
    ids = torch.randint(0, 5, (23, 2))
    keep, _ = capacity_keep(ids, 5, 0.8)
    sorted_ids, block_expert, total = M.align_by_expert(ids, 5, block_m, keep)
    used = sorted_ids[: total.item()]
    real = used[used < ids.numel()]
    assert sorted(real.tolist()) == sorted(keep.reshape(-1).nonzero().flatten().tolist())
    flat = ids.reshape(-1)
    for tile in range(total.item() // block_m):
        rows = used[tile * block_m : (tile + 1) * block_m]
        rows = rows[rows < ids.numel()]
        assert (flat[rows.long()] == block_expert[tile]).all()  # one expert per tile


def test_fused_moe_dispatch_on_cpu():
    hidden = torch.randn(T, D)
    w1, w2, b1, b2 = make_experts("gelu", True)
    logits = torch.randn(T, E)
    out, dropped = fused_moe(hidden, logits, w1, w2, top_k=2, b1=b1, b2=b2, capacity_factor=1.0)
    weights, ids = route(logits, 2)
    ref, ref_dropped = fused_experts(hidden, weights, ids, w1, w2, b1=b1, b2=b2, capacity_factor=1.0)
    torch.testing.assert_close(out, ref)
    assert dropped.item() == ref_dropped.item()


def test_bad_arguments_are_named():
    hidden = torch.randn(T, D)
    w1, w2, _, _ = make_experts("gelu", False)
    with pytest.raises(ValueError, match="activation must be one of"):
        fused_moe(hidden, torch.randn(T, E), w1, w2, top_k=2, activation="relu")
    with pytest.raises(ValueError, match=r"expected w1 \(6, 40, 48\)"):
        fused_moe(hidden, torch.randn(T, E), w1, w2, top_k=2, activation="silu_gated")
    with pytest.raises(ValueError, match="capacity_factor must be > 0"):
        fused_moe(hidden, torch.randn(T, E), w1, w2, top_k=2, capacity_factor=0)


@pytest.mark.parametrize("t,k,e,cap", [(1, 2, 6, None), (13, 2, 6, 0.75), (23, 1, 5, None), (64, 2, 16, 0.9)])
def test_align_kernel_matches_torch_align(interpret, t, k, e, cap):
    """The one-launch decode alignment produces exactly the rows of the torch version."""
    ids = route(torch.randn(t, e), k)[1]
    keep, _ = capacity_keep(ids, e, cap)
    for block_m in (16, 32):
        got = M.align_by_expert_triton(ids, e, block_m, keep)
        want = M.align_by_expert(ids, e, block_m, keep)
        assert got[0].shape == want[0].shape and got[1].shape == want[1].shape
        assert torch.equal(got[2], want[2])
        rows = want[2].item()
        assert torch.equal(got[0][:rows], want[0][:rows])
        assert torch.equal(got[1][: rows // block_m], want[1][: rows // block_m])
