"""The contract with xdai.model: inject() switches the GLM blocks, and the engine's MoE layer computes the same
thing through `fused_moe` (reference on CPU, Triton under the interpreter) as through its own plain path,
capacity drops included.
"""

import pytest
import torch

from inference_kernels import inject
from inference_kernels import moe as M
from xdai.model.glm import GLMBlock, GLMConfig, GLMModel
from xdai.model.moe import MoEMLP

CFG = dict(num_layers=2, vocab_size=64, hidden_size=32, num_attention_heads=4, max_sequence_length=32)


def test_inject_switches_every_glm_block():
    model = GLMModel(GLMConfig(**CFG, moe_layers=[1], num_experts=4))
    report = inject(model)
    blocks = [n for n, m in model.named_modules() if isinstance(m, GLMBlock)]
    assert len(blocks) == 2 and set(blocks) <= set(report.fused_flags)
    assert all(m.fused for m in model.modules() if isinstance(m, GLMBlock))


@pytest.mark.parametrize("top_k,capacity_factor", [(1, None), (2, None), (2, 0.6)])
def test_engine_moe_fused_path_matches_its_plain_path(top_k, capacity_factor):
    cfg = GLMConfig(**CFG, moe_layers=[0], num_experts=5, moe_top_k=top_k, moe_capacity_factor=capacity_factor)
    layer = MoEMLP(cfg).eval()
    with torch.no_grad():
        layer.b1.normal_()
        layer.b2.normal_()
        layer.router.weight.normal_()
        x = torch.randn(2, 9, 32)
        plain = layer(x, fused=False)
        plain_dropped = layer.dropped.clone()
        fused = layer(x, fused=True)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    assert layer.dropped.item() == plain_dropped.item()
    if capacity_factor is not None:
        assert plain_dropped.item() > 0


def test_engine_moe_matches_triton_kernel(interpret):
    cfg = GLMConfig(**CFG, moe_layers=[0], num_experts=5, moe_top_k=2, moe_capacity_factor=0.8)
    layer = MoEMLP(cfg).eval()
    with torch.no_grad():
        layer.b1.normal_()
        layer.router.weight.normal_()
        x = torch.randn(11, 32)
        plain = layer(x, fused=False)
        weights, ids = M.route(layer.router(x), 2, cfg.moe_renormalize)
        out, dropped = M.fused_experts_triton(
            x, weights, ids, layer.w1, layer.w2, b1=layer.b1, b2=layer.b2, capacity_factor=0.8
        )
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    assert dropped.item() == layer.dropped.item()


def test_engine_attention_spec_is_the_kernel_mask():
    from inference_kernels import prefix_mask
    from xdai.model.glm import AttentionSpec

    sep, q_offset, kv_len = torch.tensor([3, 12]), torch.tensor([7, 14]), torch.tensor([9, 16])
    spec = AttentionSpec(sep=sep, q_offset=q_offset, kv_len=kv_len)
    assert torch.equal(spec.mask(2, 20, sep.device), prefix_mask(sep, 2, 20, q_offset, kv_len)[:, None])


def test_glm_fused_blocks_on_interpreted_triton(interpret, monkeypatch):
    """Our GLM after inject(), its blocks running every op through the Triton kernels (interpreted on CPU):
    prefill into a KV cache, then two cached decode steps, against the plain model."""
    import copy

    import inference_kernels.dispatch as dispatch
    import xdai.model.glm as glm

    model = GLMModel(GLMConfig(**CFG, moe_layers=[1], num_experts=4)).eval()
    with torch.no_grad():  # non-zero biases so the fused bias paths matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith(".b1") or name.endswith(".b2"):
                p.normal_(0, 0.1)
    fused = copy.deepcopy(model)
    inject(fused)
    monkeypatch.setattr(glm, "_kernels_on", lambda x: True)  # as on CUDA
    monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: True)  # the Triton path, on CPU tensors
    ids = torch.randint(0, 64, (2, 12))
    sep = torch.tensor([4, 12])
    caches = [m.new_cache(2, 20) for m in (model, fused)]
    with torch.no_grad():
        for n, step in enumerate([ids, ids[:, -1:], ids[:, -2:-1]]):
            mask = sep if n == 0 else None
            with monkeypatch.context() as plain_only:
                plain_only.setattr(glm, "_kernels_on", lambda x: False)
                plain = model(step, None, mask, cache=caches[0]).logits
            out = fused(step, None, mask, cache=caches[1]).logits
            torch.testing.assert_close(out, plain, atol=1e-4, rtol=1e-4)
