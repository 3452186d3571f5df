"""Fused residual + LayerNorm / RMSNorm and bias + GeLU: Triton (interpreted) against the references.

fp32 tolerance: atol = rtol = 1e-5 (observed differences are ~1e-7).
"""

import pytest
import torch

from inference_kernels import bias_gelu, layer_norm, rms_norm
from inference_kernels import norm as N

TOL = {"atol": 1e-5, "rtol": 1e-5}


def test_references_match_torch():
    x, r, w, b = torch.randn(4, 33), torch.randn(4, 33), torch.randn(33), torch.randn(33)
    out, summed = N.layer_norm_reference(x, w, b, 1e-5, r)
    torch.testing.assert_close(summed, x + r)
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x + r, (33,), w, b, 1e-5), **TOL)
    out, _ = N.rms_norm_reference(x, w, 1e-6)
    torch.testing.assert_close(out, torch.nn.functional.rms_norm(x, (33,), w, 1e-6), **TOL)
    torch.testing.assert_close(
        N.bias_gelu_reference(x, b), torch.nn.functional.gelu(x + b, approximate="tanh"), **TOL
    )


@pytest.mark.parametrize("shape", [(1, 1), (3, 37), (2, 5, 64), (7, 130)])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_triton(interpret, shape, with_residual, affine):
    n = shape[-1]
    x = torch.randn(shape) * 3 + 1
    r = torch.randn(shape) if with_residual else None
    w, b = (torch.randn(n), torch.randn(n)) if affine else (None, None)
    out, summed = N.layer_norm_triton(x, w, b, 1e-5, r)
    ref_out, ref_summed = N.layer_norm_reference(x, w, b, 1e-5, r)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(summed, ref_summed, atol=0, rtol=0)
    if r is None:
        assert summed is x


@pytest.mark.parametrize("shape", [(3, 37), (2, 4, 64)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_triton(interpret, shape, with_residual):
    x = torch.randn(shape)
    r = torch.randn(shape) if with_residual else None
    w = torch.randn(shape[-1])
    out, summed = N.rms_norm_triton(x, w, 1e-6, r)
    ref_out, ref_summed = N.rms_norm_reference(x, w, 1e-6, r)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(summed, ref_summed, atol=0, rtol=0)


def test_norm_triton_fp16_residual_rounding(interpret):
    """The residual sum is rounded to x's dtype before the statistics, exactly as the reference does."""
    x, r = torch.randn(5, 48).half(), torch.randn(5, 48).half()
    w = torch.randn(48)
    out, summed = N.layer_norm_triton(x, w, None, 1e-5, r)
    ref_out, ref_summed = N.layer_norm_reference(x, w, None, 1e-5, r)
    torch.testing.assert_close(summed, ref_summed, atol=0, rtol=0)
    torch.testing.assert_close(out, ref_out, atol=2e-3, rtol=2e-3)


def test_norm_strided_rows(interpret):
    base = torch.randn(6, 80)
    x = base[:, :40]  # rows with stride 80
    out, _ = N.layer_norm_triton(x, torch.ones(40), torch.zeros(40), 1e-5)
    torch.testing.assert_close(out, N.layer_norm_reference(x, torch.ones(40), torch.zeros(40), 1e-5)[0], **TOL)


@pytest.mark.parametrize("shape", [(1, 1), (3, 37), (2, 3, 1030)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_gelu_triton(interpret, shape, with_bias):
    x = torch.randn(shape) * 4
    b = torch.randn(shape[-1]) if with_bias else None
    torch.testing.assert_close(N.bias_gelu_triton(x, b), N.bias_gelu_reference(x, b), **TOL)


def test_dispatch_on_cpu_runs_reference():
    x, w = torch.randn(2, 8), torch.randn(8)
    out, summed = layer_norm(x, w, None, 1e-5, residual=x)
    torch.testing.assert_close(out, N.layer_norm_reference(x, w, None, 1e-5, x)[0])
    torch.testing.assert_close(rms_norm(x, w, 1e-5)[0], N.rms_norm_reference(x, w, 1e-5)[0])
    torch.testing.assert_close(bias_gelu(x, w), N.bias_gelu_reference(x, w))


def test_bad_shapes_name_the_argument(interpret):
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="residual shape"):
        layer_norm(x, None, None, 1e-5, residual=torch.randn(2, 9))
    with pytest.raises(ValueError, match="weight shape"):
        N.layer_norm_triton(x, torch.ones(9), None, 1e-5)
    with pytest.raises(ValueError, match="bias shape"):
        N.bias_gelu_triton(x, torch.ones(3))
