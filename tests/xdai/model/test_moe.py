"""Mixture of experts: routing semantics, capacity and drops, equivalences with the dense MLP, upcycling."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import tiny_config, tiny_model
from xdai.model import GLMModel, upcycle
from xdai.model.glm import MLP, gelu
from xdai.model.moe import MoEMLP, route


def test_one_expert_equals_the_dense_mlp():
    cfg = tiny_config(moe_layers=[0], num_experts=1, moe_top_k=1)
    torch.manual_seed(0)
    dense = MLP(cfg.hidden_size, cfg.ffn_size)
    moe = MoEMLP(cfg)
    with torch.no_grad():
        moe.w1[0] = dense.dense_h_to_4h.weight.t()
        moe.b1[0] = dense.dense_h_to_4h.bias
        moe.w2[0] = dense.dense_4h_to_h.weight.t()
        moe.b2[0] = dense.dense_4h_to_h.bias
    x = torch.randn(3, 7, cfg.hidden_size)
    torch.testing.assert_close(moe(x), dense(x))
    assert int(moe.dropped) == 0


def per_token_loop(moe: MoEMLP, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The routing contract written as plainly as possible: one token and one slot at a time."""
    h = x.reshape(-1, x.shape[-1])
    tokens, e, k = h.shape[0], moe.num_experts, moe.top_k
    probs = torch.softmax(moe.router(h).float(), dim=-1)
    choices = []
    for t in range(tokens):
        w, idx = probs[t].topk(k)
        if moe.renormalize:
            w = w / w.sum()
        choices.append((idx.tolist(), w))
    capacity = math.inf if moe.capacity_factor is None else math.ceil(moe.capacity_factor * tokens * k / e)
    load = [0] * e
    kept = [[False] * k for _ in range(tokens)]
    for slot in range(k):  # slot-major: every token's first choice, then every second choice
        for t in range(tokens):
            expert = choices[t][0][slot]
            if load[expert] < capacity:
                load[expert] += 1
                kept[t][slot] = True
    out = torch.zeros_like(h)
    for t in range(tokens):
        for slot in range(k):
            if kept[t][slot]:
                ex = choices[t][0][slot]
                y = gelu(h[t] @ moe.w1[ex] + moe.b1[ex]) @ moe.w2[ex] + moe.b2[ex]
                out[t] += choices[t][1][slot] * y
    dropped = sum(not kept[t][s] for t in range(tokens) for s in range(k))
    return out.view(x.shape), dropped


@pytest.mark.parametrize(("top_k", "capacity", "renormalize"),
                         [(1, None, False), (2, None, True), (1, 1.0, False), (2, 0.75, True), (2, 1.25, False)])
def test_top_k_routing_equals_a_per_token_loop(top_k, capacity, renormalize):
    cfg = tiny_config(moe_layers=[0], num_experts=4, moe_top_k=top_k, moe_capacity_factor=capacity,
                      moe_renormalize=renormalize)
    torch.manual_seed(top_k)
    moe = MoEMLP(cfg)
    with torch.no_grad():
        moe.b1.normal_(std=0.1)
        moe.b2.normal_(std=0.1)
        moe.router.weight.mul_(20)  # peaked routing: experts overflow, so capacity really drops tokens
    x = torch.randn(2, 9, cfg.hidden_size)
    expected, dropped = per_token_loop(moe, x)
    torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-6)
    assert int(moe.dropped) == dropped
    if capacity is not None and capacity < 1:
        assert dropped > 0


def test_route_capacity_counts_and_order():
    logits = torch.tensor([[3.0, 2.0], [3.0, 2.0], [3.0, 2.0], [3.0, 2.0]])
    r = route(logits, top_k=2, renormalize=False, capacity_factor=1.0)  # capacity ceil(1*4*2/2) = 4
    assert r.keep.all() and int(r.dropped) == 0
    r = route(logits, top_k=1, renormalize=False, capacity_factor=0.5)  # capacity ceil(0.5*4*1/2) = 1
    assert r.keep[:, 0].tolist() == [True, False, False, False]
    assert int(r.dropped) == 3
    # Slot-major: both first choices are kept before any second choice (token-major would keep token 0 twice).
    r = route(torch.tensor([[3.0, 2.0], [2.0, 3.0]]), top_k=2, renormalize=True, capacity_factor=0.5)
    assert r.keep.tolist() == [[True, False], [True, False]]
    assert int(r.dropped) == 2
    torch.testing.assert_close(r.weights.sum(-1), torch.ones(2))  # kept weights are not renormalised after drops


def test_model_reports_dropped_tokens_and_aux_loss_trains_the_router():
    model = tiny_model(moe_layers=[0, 1], num_experts=4, moe_top_k=2, moe_capacity_factor=0.5).train()
    ids = torch.randint(0, 150, (2, 12))
    pos = torch.stack([torch.arange(12).expand(2, 12), torch.zeros(2, 12, dtype=torch.long)], dim=1)
    out = model(ids, pos, torch.tensor([6, 8]))
    assert int(out.moe_dropped) > 0  # capacity 0.5: at most half of the assignments fit
    assert out.moe_aux_loss is not None and out.moe_aux_loss.item() >= 2 * 0.99  # >= 1 per layer
    out.moe_aux_loss.backward()
    assert model.transformer.layers[0].mlp.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("shared", [False, True], ids=["experts", "shared-expert"])
def test_upcycled_model_equals_the_dense_one_at_initialisation(shared):
    dense = tiny_model(seed=4)
    moe = upcycle(dense, num_experts=4, top_k=2, shared_expert=shared).eval()
    assert moe.config.moe_layers == [0, 1]
    assert moe.num_parameters() > dense.num_parameters()
    ids = torch.randint(0, 150, (2, 10))
    pos = torch.stack([torch.arange(10).expand(2, 10), torch.zeros(2, 10, dtype=torch.long)], dim=1)
    sep = torch.tensor([4, 10])
    torch.testing.assert_close(moe(ids, pos, sep).logits, dense(ids, pos, sep).logits, rtol=1e-4, atol=1e-5)


def test_shared_expert_is_added():
    cfg = tiny_config(moe_layers=[1], num_experts=2, moe_top_k=1, moe_shared_expert=True)
    model = GLMModel(cfg)
    assert model.transformer.layers[1].mlp.shared is not None
    assert isinstance(model.transformer.layers[0].mlp, MLP)


def test_generation_reports_dropped_assignments():
    from xdai.generation import GenerationSettings
    from xdai.model import SpecialIds, fill_ids

    model = tiny_model(moe_layers=[0, 1], num_experts=4, moe_top_k=2, moe_capacity_factor=0.5)
    special = SpecialIds(sop=150, eop=151, masks=(152,), pad=0, vocab_limit=155)
    settings = GenerationSettings(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_tokens=3)
    stats: dict[str, int] = {}
    fill_ids(model, [[1, 2, 3, 4, 5, 6, 152, 7]], special, settings, stats=stats)
    assert stats["forward_calls"] >= 2 and stats["moe_dropped"] > 0  # the prefill alone overflows capacity 0.5
