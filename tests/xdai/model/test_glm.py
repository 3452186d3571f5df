"""The GLM network: masks, 2D positions, KV cache, batched generation, sampling, streaming."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_model
from xdai.generation import GenerationSettings
from xdai.model import GLMConfig, KVCache, SpecialIds, fill_ids, prefix_lm_mask, stream_fill
from xdai.model.generate import sample_next
from xdai.model.glm import ConfigError

SPECIAL = SpecialIds(sop=150, eop=151, masks=(152, 153, 154), pad=0, vocab_limit=155)
GREEDY = GenerationSettings(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_tokens=6)


def positions(length: int, batch: int = 1) -> torch.Tensor:
    pos = torch.arange(length).expand(batch, length)
    return torch.stack([pos, torch.zeros_like(pos)], dim=1)


def test_prefix_mask_is_thudm_construction():
    sep = torch.tensor([3, 0, 5])
    mask = prefix_lm_mask(sep, 5)
    for b, s in enumerate(sep.tolist()):
        expected = torch.tril(torch.ones(5, 5))
        expected[:, :s] = 1
        assert torch.equal(mask[b, 0], expected)
    assert torch.equal(prefix_lm_mask(torch.tensor([0]), 4)[0, 0], torch.tril(torch.ones(4, 4)))  # causal


def test_separator_and_full_mask_agree():
    model = tiny_model()
    ids = torch.randint(0, 150, (2, 9))
    sep = torch.tensor([4, 7])
    a = model(ids, positions(9, 2), sep).logits
    b = model(ids, positions(9, 2), prefix_lm_mask(sep, 9)).logits
    torch.testing.assert_close(a, b)
    scalar = model(ids, positions(9, 2), torch.tensor(4)).logits  # one separator for the whole batch
    torch.testing.assert_close(scalar, model(ids, positions(9, 2), torch.tensor([4, 4])).logits)
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, positions(9, 2), torch.tensor([1, 2, 3]))


def test_part_a_bidirectional_part_b_causal():
    model = tiny_model()
    ids = torch.randint(0, 150, (1, 10))
    sep = torch.tensor([5])
    base = model(ids, positions(10), sep).logits
    later_b = ids.clone()
    later_b[0, 8] = (ids[0, 8] + 1) % 150
    out = model(later_b, positions(10), sep).logits
    torch.testing.assert_close(out[:, :8], base[:, :8])  # nothing before position 8 sees it
    assert not torch.allclose(out[:, 8:], base[:, 8:])
    last_a = ids.clone()
    last_a[0, 4] = (ids[0, 4] + 1) % 150
    out = model(last_a, positions(10), sep).logits
    assert not torch.allclose(out[:, 0], base[:, 0])  # part A sees forward inside part A
    assert not torch.allclose(out[:, 9], base[:, 9])  # part B sees all of part A


def test_block_positions_change_the_output():
    model = tiny_model()
    ids = torch.randint(0, 150, (1, 6))
    pos = positions(6)
    moved = pos.clone()
    moved[0, 1, 5] = 3
    a = model(ids, pos, torch.tensor([5])).logits
    b = model(ids, moved, torch.tensor([5])).logits
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5], b[:, 5])


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="num_attention_heads"):
        GLMConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ConfigError, match="moe_layers"):
        GLMConfig(num_layers=2, moe_layers=[5], num_experts=2)
    with pytest.raises(ValueError, match=r"\[B, 2, L\]"):
        tiny_model()(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long), torch.tensor([3]))


def test_kv_cache_equals_full_forward_rows_of_different_lengths():
    """Prefill two part-As of different lengths, then decode part B token by token: each row's logits equal
    that row's own full forward."""
    model = tiny_model()
    torch.manual_seed(3)
    a_lens = [7, 4]
    part_a = [torch.randint(0, 150, (n,)) for n in a_lens]
    part_b = torch.randint(0, 150, (2, 5))
    cache: KVCache = model.new_cache(2, 7 + 5)
    ids = torch.zeros(2, 7, dtype=torch.long)
    for b, a in enumerate(part_a):
        ids[b, : len(a)] = a
    model(ids, positions(7, 2), torch.tensor(a_lens), cache=cache)
    cache.lengths = torch.tensor(a_lens)
    steps = []
    for t in range(5):
        pos = torch.stack([torch.tensor(a_lens) - 1, torch.full((2,), t + 1)], dim=1)[:, :, None]
        steps.append(model(part_b[:, t : t + 1], pos, cache=cache).logits[:, 0])
    for b, a in enumerate(part_a):
        full_ids = torch.cat([a, part_b[b]])[None]
        n = len(a)
        pos = torch.zeros(1, 2, n + 5, dtype=torch.long)
        pos[0, 0, :n] = torch.arange(n)
        pos[0, 0, n:] = n - 1
        pos[0, 1, n:] = torch.arange(1, 6)
        full = model(full_ids, pos, torch.tensor([n])).logits[0, n:]
        torch.testing.assert_close(torch.stack([s[b] for s in steps]), full, rtol=1e-4, atol=1e-5)


def _prompts():
    torch.manual_seed(5)
    return [
        [*torch.randint(0, 150, (6,)).tolist(), 152, *torch.randint(0, 150, (3,)).tolist()],
        [*torch.randint(0, 150, (2,)).tolist(), 154],
        [*torch.randint(0, 150, (4,)).tolist(), 152, 7, 8, 153, 9],
    ]


def test_cached_generation_equals_recomputed_generation():
    model = tiny_model()
    cached = fill_ids(model, _prompts(), SPECIAL, GREEDY, use_cache=True)
    recomputed = fill_ids(model, _prompts(), SPECIAL, GREEDY, use_cache=False)
    assert cached == recomputed
    assert sum(len(s) for row in cached for s in row) > 0


def test_batched_generation_with_padding_equals_one_by_one():
    model = tiny_model()
    prompts = _prompts()
    batched = fill_ids(model, prompts, SPECIAL, GREEDY)
    alone = [fill_ids(model, [p], SPECIAL, GREEDY)[0] for p in prompts]
    assert batched == alone


def _record_positions(model):
    seen = []
    handle = model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args[0].clone(), args[1].clone())), with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("prompt", [[11, 12, 152, 13], [11, 152, 12, 13, 153, 14, 154]], ids=["one", "several"])
def test_generation_position_and_block_ids(prompt):
    """Span tokens carry their mask's position and block positions 1..n; each span opens with <|startofpiece|>;
    after <|endofpiece|> the next mask's span starts at block position 1."""
    model = tiny_model()
    with torch.no_grad():  # make <|endofpiece|> likely so that several masks get filled
        model.word_embeddings.weight[SPECIAL.eop] *= 12
    seen, handle = _record_positions(model)
    try:
        steps = list(stream_fill(model, [prompt], SPECIAL, GenerationSettings(
            temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_tokens=8)))
    finally:
        handle.remove()
    masks = [i for i, t in enumerate(prompt) if t in SPECIAL.masks]
    prefill_ids, prefill_pos = seen[0]
    n = len(prompt)
    assert prefill_ids[0].tolist() == [*prompt, SPECIAL.sop]
    assert prefill_pos[0, 0].tolist() == [*range(n), masks[0]]
    assert prefill_pos[0, 1].tolist() == [0] * n + [1]
    # Expected (token, position, block) of every later input, derived from the generated tokens.
    expected, span, block = [], 0, 1
    for (t,) in steps[:-1] if len(seen) == len(steps) else steps:
        if t == SPECIAL.eop:
            span, block = span + 1, 1
            if span == len(masks):
                break
            expected.append((SPECIAL.sop, masks[span], 1))
        else:
            block += 1
            expected.append((t, masks[span], block))
    got = [(int(i[0, 0]), int(p[0, 0, 0]), int(p[0, 1, 0])) for i, p in seen[1:]]
    assert got == expected[: len(got)] and len(got) >= len(expected) - 1
    if len(masks) > 1:
        assert any(t == SPECIAL.sop for t, _, _ in got), "several masks: a second span must start"


def test_prompt_without_mask_is_a_clear_error():
    with pytest.raises(ValueError, match="prompt 1 has no"):
        fill_ids(tiny_model(), [[1, 152], [1, 2]], SPECIAL, GREEDY)


def test_sampling_controls():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0], [1.0, 0.5, 0.2, 4.0]])
    greedy = sample_next(logits, GenerationSettings(temperature=0.0, repetition_penalty=1.0))
    assert greedy.tolist() == [1, 3]
    top1 = GenerationSettings(temperature=1.5, top_k=1, top_p=1.0, repetition_penalty=1.0)
    assert sample_next(logits, top1, generator=torch.Generator().manual_seed(0)).tolist() == [1, 3]
    nucleus = GenerationSettings(temperature=1.0, top_k=0, top_p=0.01, repetition_penalty=1.0)
    assert sample_next(logits, nucleus, generator=torch.Generator().manual_seed(0)).tolist() == [1, 3]
    seen = torch.tensor([[False, True, False, False], [False] * 4])
    penalised = GenerationSettings(temperature=0.0, repetition_penalty=2.0)
    assert sample_next(logits, penalised, seen).tolist() == [2, 3]  # 3.0 / 2 < 2.9
    wide = GenerationSettings(temperature=5.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    draws = [sample_next(logits, wide, generator=torch.Generator().manual_seed(s))[0].item() for s in range(40)]
    assert len(set(draws)) >= 3
    again = [sample_next(logits, wide, generator=torch.Generator().manual_seed(s))[0].item() for s in range(40)]
    assert draws == again


def test_seeded_sampling_is_reproducible_and_streams_one_token_per_step():
    model = tiny_model()
    settings = GenerationSettings(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.1, max_tokens=5,
                                  seed=7)
    a = list(stream_fill(model, _prompts(), SPECIAL, settings))
    b = list(stream_fill(model, _prompts(), SPECIAL, settings))
    assert a == b
    assert all(len(step) == 3 for step in a)
    assert all(t is None or t < SPECIAL.vocab_limit for step in a for t in step)


def test_fused_blocks_equal_the_plain_path(monkeypatch):
    """`inference_kernels.inject` sets `fused` on every block; with the kernels' dispatch (PyTorch references
    on CPU) the logits equal the plain path, for a prefill into the KV cache and a cached decode step."""
    import copy

    import inference_kernels
    import xdai.model.glm as glm

    plain = tiny_model(moe_layers=[1], num_experts=4, moe_top_k=2, moe_capacity_factor=0.75)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if name.endswith(("bias", ".b1", ".b2")):
                p.normal_(0, 0.1)
    fused = copy.deepcopy(plain)
    report = inference_kernels.inject(fused)
    assert len(report.fused_flags) == 2 and all(layer.fused for layer in fused.transformer.layers)
    ids = torch.randint(0, 150, (2, 9))
    sep = torch.tensor([4, 9])
    caches = [plain.new_cache(2, 12), fused.new_cache(2, 12)]
    with torch.no_grad():
        for step, mask in ((ids, sep), (ids[:, :1], None)):
            monkeypatch.setattr(glm, "_kernels_on", lambda x: False)
            expected = plain(step, None, mask, cache=caches[0])
            monkeypatch.setattr(glm, "_kernels_on", lambda x: True)  # as on CUDA
            got = fused(step, None, mask, cache=caches[1])
            torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-5)
            assert int(got.moe_dropped) == int(expected.moe_dropped)
