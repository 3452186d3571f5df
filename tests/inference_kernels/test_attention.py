"""GLM prefix-LM attention: the reference's meaning against SDPA, and Triton (interpreted) against the reference.

fp32 tolerance: atol = rtol = 1e-5 (observed differences are ~5e-7).
"""

import pytest
import torch
import torch.nn.functional as F

from inference_kernels import attention as A
from inference_kernels import prefix_attention, prefix_mask

TOL = {"atol": 1e-5, "rtol": 1e-5}


def qkv(b, h, lq, lk, d, hk=None):
    hk = hk or h
    return torch.randn(b, h, lq, d), torch.randn(b, hk, lk, d), torch.randn(b, hk, lk, d)


def test_reference_meaning():
    """sep=0 is causal attention, sep=L is full attention, in between is SDPA under the prefix mask."""
    q, k, v = qkv(2, 3, 11, 11, 16)
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    full = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(A.prefix_attention_reference(q, k, v, torch.tensor([0, 0])), causal, **TOL)
    torch.testing.assert_close(A.prefix_attention_reference(q, k, v, torch.tensor([11, 11])), full, **TOL)
    sep = torch.tensor([4, 7])
    mask = prefix_mask(sep, 11, 11)
    assert mask[0, 0, :4].all() and not mask[0, 0, 4:].any()  # query 0 of seq 0 sees exactly its prefix
    assert mask[1, 9, :10].all() and not mask[1, 9, 10:].any()  # past the prefix: causal
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
    torch.testing.assert_close(A.prefix_attention_reference(q, k, v, sep), expected, **TOL)


@pytest.mark.parametrize("sep", [[0, 0], [37, 37], [5, 20], [1, 36]])
def test_prefill_triton(interpret, sep):
    q, k, v = qkv(2, 2, 37, 37, 24)  # odd length, head dim padded to 32
    sep = torch.tensor(sep)
    torch.testing.assert_close(
        A.prefix_attention_triton(q, k, v, sep), A.prefix_attention_reference(q, k, v, sep), **TOL
    )


@pytest.mark.parametrize("hk", [2, 1])
def test_prefill_grouped_heads_triton(interpret, hk):
    q, k, v = qkv(1, 4, 19, 19, 16, hk=hk)
    sep = torch.tensor([7])
    torch.testing.assert_close(
        A.prefix_attention_triton(q, k, v, sep), A.prefix_attention_reference(q, k, v, sep), **TOL
    )


def test_prefill_long_sequence_many_tiles(interpret):
    q, k, v = qkv(1, 1, 150, 150, 16)  # several key tiles, tile skipping past the prefix
    sep = torch.tensor([70])
    torch.testing.assert_close(
        A.prefix_attention_triton(q, k, v, sep), A.prefix_attention_reference(q, k, v, sep), **TOL
    )


@pytest.mark.parametrize("lq", [1, 3])
@pytest.mark.parametrize("num_splits", [None, 1, 3])
def test_decode_reads_cache_triton(interpret, lq, num_splits):
    """New queries at positions q_offset.. against a cache whose slots past kv_len hold NaN garbage."""
    b, h, hk, cache, d = 2, 4, 2, 150, 16
    q, k, v = qkv(b, h, lq, cache, d, hk=hk)
    q_offset = torch.tensor([60, 131])
    kv_len = q_offset + lq
    sep = torch.tensor([40, 140])  # the second prefix reaches past the new queries
    ref = A.prefix_attention_reference(q, k, v, sep, q_offset, kv_len)
    k_dirty, v_dirty = k.clone(), v.clone()
    for i, n in enumerate(kv_len.tolist()):
        k_dirty[i, :, n:] = float("nan")
        v_dirty[i, :, n:] = float("nan")
    out = A.prefix_attention_triton(q, k_dirty, v_dirty, sep, q_offset, kv_len, num_splits=num_splits)
    torch.testing.assert_close(out, ref, **TOL)


def test_int_and_tensor_offsets_agree(interpret):
    q, k, v = qkv(2, 2, 2, 40, 16)
    sep = torch.tensor([3, 9])
    a = A.prefix_attention_triton(q, k, v, sep, q_offset=30)
    b = A.prefix_attention_triton(q, k, v, sep, q_offset=torch.tensor([30, 30]))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a, A.prefix_attention_reference(q, k, v, sep, q_offset=30), **TOL)


@pytest.mark.parametrize("num_splits", [1, 2])
def test_fully_masked_rows_give_zeros(interpret, num_splits):
    q, k, v = qkv(2, 2, 3, 64, 16)
    sep = torch.tensor([0, 0])
    kv_len = torch.tensor([0, 64])  # sequence 0 may see nothing at all
    ref = A.prefix_attention_reference(q, k, v, sep, 0, kv_len)
    out = A.prefix_attention_triton(q, k, v, sep, 0, kv_len, num_splits=num_splits)
    assert not out.isnan().any() and not ref.isnan().any()
    assert (out[0] == 0).all() and (ref[0] == 0).all()
    torch.testing.assert_close(out, ref, **TOL)


def test_custom_scale(interpret):
    q, k, v = qkv(1, 2, 9, 9, 16)
    sep = torch.tensor([4])
    torch.testing.assert_close(
        A.prefix_attention_triton(q, k, v, sep, scale=0.5), A.prefix_attention_reference(q, k, v, sep, scale=0.5), **TOL
    )


def test_dispatch_on_cpu_runs_reference():
    q, k, v = qkv(1, 2, 5, 5, 8)
    sep = torch.tensor([2])
    torch.testing.assert_close(prefix_attention(q, k, v, sep), A.prefix_attention_reference(q, k, v, sep))


def test_bad_arguments_are_named():
    q, k, v = qkv(2, 3, 5, 5, 8)
    with pytest.raises(ValueError, match="sep shape"):
        prefix_attention(q, k, v, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="not a multiple"):
        prefix_attention(q, k[:, :2], v[:, :2], torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="q_offset must hold integers"):
        prefix_attention(q, k, v, torch.tensor([1, 2]), q_offset=torch.tensor([0.0, 1.0]))
