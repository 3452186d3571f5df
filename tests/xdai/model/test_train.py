"""The blank-infilling objective: example construction, and a tiny GLM-MoE that learns to fill spans."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from xdai.model import GLMConfig, GLMModel
from xdai.model.train import IGNORE, InfillTokens, collate, infilling_accuracy, infilling_loss, make_example

IDS = InfillTokens(mask=16, sop=17, eop=18, pad=19)


def test_example_layout_one_and_several_spans():
    rng = np.random.default_rng(0)
    tokens = list(range(100, 140))
    for _ in range(20):
        ex = make_example(tokens, IDS, rng)
        part_a = ex.input_ids[: ex.sep]
        masks = [i for i, t in enumerate(part_a) if t == IDS.mask]
        assert masks and ex.positions[: ex.sep] == list(range(ex.sep)) and ex.block_positions[: ex.sep] == [0] * ex.sep
        assert all(t == IGNORE for t in ex.targets[: ex.sep])
        # Part B: spans, each "<sop> s1..sn" -> "s1..sn <eop>", at its mask's position, block positions 1..n+1.
        b = ex.sep
        recovered = {}
        while b < len(ex.input_ids):
            assert ex.input_ids[b] == IDS.sop and ex.block_positions[b] == 1
            end = ex.targets.index(IDS.eop, b)
            span = ex.targets[b:end]
            assert ex.input_ids[b + 1 : end + 1] == span
            assert set(ex.positions[b : end + 1]) == {ex.positions[b]} and ex.positions[b] in masks
            assert ex.block_positions[b : end + 1] == list(range(1, len(span) + 2))
            recovered[ex.positions[b]] = span
            b = end + 1
        assert sorted(recovered) == masks
        # Refilling part A's masks with their spans gives the text back.
        text = []
        for i, t in enumerate(part_a):
            text += recovered[i] if t == IDS.mask else [t]
        assert text == tokens
        masked = sum(len(s) for s in recovered.values())
        assert masked == round(0.15 * len(tokens))


def alternating_text(rng: np.random.Generator, vocab: int, length: int) -> list[int]:
    """Two random tokens alternating: a span is predictable from part A (which two, and the parity of its
    position), never from memorised text."""
    a, b = rng.choice(vocab, 2, replace=False)
    return [int(a), int(b)] * (length // 2)


@pytest.mark.slow
def test_tiny_glm_moe_learns_blank_infilling():
    """1.1M-parameter GLM-MoE (2 layers, Switch top-1 over 4 experts in both), 90 steps on CPU.

    Chance is 1/16 = 6%. Measured (torch 2.13 CPU, one thread, 37 s of training at load 16 on 2 cores): span
    accuracy 0.00 -> 0.55, first-token accuracy 0.00 -> 0.43; the thresholds leave a wide margin below that."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        vocab = 16
        cfg = GLMConfig(num_layers=2, vocab_size=20, hidden_size=64, num_attention_heads=4, max_sequence_length=64,
                        inner_hidden_size=1024, moe_layers=[0, 1], num_experts=4, moe_top_k=1,
                        moe_renormalize=False, moe_capacity_factor=2.0, moe_aux_loss_coef=0.05)
        model = GLMModel(cfg)
        assert 1_000_000 <= model.num_parameters() <= 5_000_000
        val = collate([make_example(alternating_text(rng, vocab, 32), IDS, rng) for _ in range(64)], IDS.pad)
        model.eval()
        before = infilling_accuracy(model, val, IDS.eop)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
        start = time.perf_counter()
        dropped = 0
        for _ in range(90):
            batch = collate([make_example(alternating_text(rng, vocab, 32), IDS, rng) for _ in range(16)], IDS.pad)
            loss, stats = infilling_loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            dropped += stats["moe_dropped"]
        model.eval()
        after = infilling_accuracy(model, val, IDS.eop)
        print(f"\ninfilling: {before} -> {after}, {dropped} dropped assignments, "
              f"{time.perf_counter() - start:.1f}s, {model.num_parameters():,} parameters")
    finally:
        torch.set_num_threads(threads)
    assert before["span_accuracy"] < 0.15
    assert after["span_accuracy"] >= 0.30  # chance 0.0625
    assert after["first_token_accuracy"] >= 0.15
