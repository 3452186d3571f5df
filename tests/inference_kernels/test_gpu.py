"""GPU checks (pytest -m gpu, TRITON_INTERPRET=0): compiled Triton against the references at realistic sizes in
bf16/fp16, dispatch, and the fused paths of transformers MoE models and our GLM on CUDA.

Tolerances against an fp32 reference computed from the same half-precision inputs: norms and GeLU 2e-2,
attention 2e-2, MoE 3e-2 (absolute and relative).
"""

import copy
import math

import pytest
import torch

import inference_kernels as ik
from inference_kernels import attention as A
from inference_kernels import moe as M
from inference_kernels import norm as N

pytestmark = pytest.mark.gpu
HALF = [torch.bfloat16, torch.float16]


def close(out, ref, tol):
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("n", [1024, 4096, 5120])
def test_norms(cuda, dtype, n):
    x, r = (torch.randn(300, n, device=cuda, dtype=dtype) for _ in range(2))
    w, b = torch.randn(n, device=cuda), torch.randn(n, device=cuda)
    out, summed = N.layer_norm_triton(x, w, b, 1e-5, r)
    ref, ref_summed = N.layer_norm_reference(x, w, b, 1e-5, r)
    close(out, ref, 2e-2)
    assert torch.equal(summed, ref_summed)
    close(N.rms_norm_triton(x, w, 1e-6, r)[0], N.rms_norm_reference(x, w, 1e-6, r)[0], 2e-2)
    close(N.bias_gelu_triton(x, b.to(dtype)), N.bias_gelu_reference(x.float(), b.float()), 2e-2)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("length,heads,kv_heads,d", [(1024, 16, 16, 64), (2048, 32, 8, 128), (777, 8, 2, 80)])
def test_prefill_attention(cuda, dtype, length, heads, kv_heads, d):
    q = torch.randn(2, heads, length, d, device=cuda, dtype=dtype)
    k, v = (torch.randn(2, kv_heads, length, d, device=cuda, dtype=dtype) for _ in range(2))
    sep = torch.tensor([length // 3, length], device=cuda)
    out = A.prefix_attention_triton(q, k, v, sep)
    close(out, A.prefix_attention_reference(q.float(), k.float(), v.float(), sep), 2e-2)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("lq", [1, 4])
def test_decode_attention(cuda, dtype, lq):
    b, h, hk, cache, d = 4, 32, 8, 4096, 128
    q = torch.randn(b, h, lq, d, device=cuda, dtype=dtype)
    k, v = (torch.randn(b, hk, cache, d, device=cuda, dtype=dtype) for _ in range(2))
    kv_len = torch.tensor([17, 1000, 2500, 4096], device=cuda)
    q_offset = kv_len - lq
    sep = torch.tensor([5, 600, 2499, 4000], device=cuda)
    ref = A.prefix_attention_reference(q.float(), k.float(), v.float(), sep, q_offset, kv_len)
    for splits in (None, 1):
        close(A.prefix_attention_triton(q, k, v, sep, q_offset, kv_len, num_splits=splits), ref, 2e-2)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("tokens", [1, 16, 64, 512, 2048])
@pytest.mark.parametrize("activation", ["gelu", "silu_gated"])
def test_moe(cuda, dtype, tokens, activation):
    e, d, f, k = 8, 1024, 1408, 2
    width = 2 * f if activation == "silu_gated" else f
    hidden = torch.randn(tokens, d, device=cuda, dtype=dtype)
    w1 = (torch.randn(e, d, width, device=cuda) / math.sqrt(d)).to(dtype)
    w2 = (torch.randn(e, f, d, device=cuda) / math.sqrt(f)).to(dtype)
    b1 = torch.randn(e, width, device=cuda, dtype=dtype) if activation == "gelu" else None
    b2 = torch.randn(e, d, device=cuda, dtype=dtype) if activation == "gelu" else None
    logits = torch.randn(tokens, e, device=cuda)
    logits[:, -1] = -1e4  # an expert without tokens
    weights, ids = M.route(logits, k)
    for cap in (None, 1.0):
        out, dropped = M.fused_experts_triton(hidden, weights, ids, w1, w2, b1=b1, b2=b2, activation=activation, capacity_factor=cap)
        ref, ref_dropped = M.fused_experts_reference(
            hidden.float(), weights, ids, w1.float(), w2.float(),
            b1=None if b1 is None else b1.float(), b2=None if b2 is None else b2.float(),
            activation=activation, capacity_factor=cap,
        )
        close(out, ref, 3e-2)
        assert dropped.item() == ref_dropped.item()


def test_dispatch_and_switch(cuda, monkeypatch):
    x = torch.randn(4, 256, device=cuda, dtype=torch.bfloat16)
    assert ik.backend_name(x) == "triton"
    monkeypatch.setenv("XDAI_KERNELS", "off")
    assert ik.backend_name(x) == "reference"
    assert ik.backend_name(torch.randn(2)) == "reference"


def test_injected_hf_model_on_cuda(cuda):
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    config = Qwen2MoeConfig(
        vocab_size=256, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=512, moe_intermediate_size=128, shared_expert_intermediate_size=256, num_experts=8,
        num_experts_per_tok=2,
    )
    model = Qwen2MoeForCausalLM(config).to(cuda, torch.bfloat16).eval()
    fused = copy.deepcopy(model)
    assert len(ik.inject(fused).moe_blocks) == 2
    ids = torch.randint(0, 256, (2, 33), device=cuda)
    with torch.no_grad():
        close(fused(ids).logits, model(ids).logits, 5e-2)


def test_glm_engine_fused_on_cuda(cuda):
    """Our GLM with inject(): the blocks call the Triton kernels (prefill and cached decode) and agree."""
    from xdai.model.glm import GLMConfig, GLMModel

    cfg = GLMConfig(num_layers=2, vocab_size=512, hidden_size=256, num_attention_heads=4, max_sequence_length=128,
                    moe_layers=[1], num_experts=4)
    model = GLMModel(cfg).to(cuda, torch.float16).eval()
    fused = copy.deepcopy(model)
    assert len(ik.inject(fused).fused_flags) >= 2
    ids = torch.randint(0, 512, (2, 40), device=cuda)
    positions = torch.arange(40, device=cuda).expand(2, 40)
    pos = torch.stack([positions, torch.zeros_like(positions)], dim=1)
    sep = torch.tensor([10, 25], device=cuda)
    with torch.no_grad():
        close(fused(ids, pos, sep).logits, model(ids, pos, sep).logits, 5e-2)
        # Cached decode: prefill into a KV cache, then two single-token steps reading it.
        caches = [m.new_cache(2, 64) for m in (model, fused)]
        steps = [ids, ids[:, -1:], ids[:, -2:-1]]
        for n, step in enumerate(steps):
            mask = sep if n == 0 else None
            plain = model(step, None, mask, cache=caches[0]).logits
            close(fused(step, None, mask, cache=caches[1]).logits, plain, 5e-2)
