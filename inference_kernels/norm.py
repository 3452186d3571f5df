"""Fused residual-add + LayerNorm / RMSNorm, and fused bias + GeLU (tanh).

The norms return `(out, summed)`: `summed = x + residual` (or `x`) in x's dtype, the value a pre-LN transformer
carries to the next block, and `out = norm(summed)` computed in fp32 and cast back. One pass over the row in
Triton instead of three eager kernels (add, norm statistics, affine).
"""

from __future__ import annotations

import math

import torch

from inference_kernels._triton import tl, triton

_GELU_C = math.sqrt(2.0 / math.pi)


# ---------------------------------------------------------------- references (the meaning, any device)


def _residual_sum(x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    if residual is None:
        return x
    if residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    return x + residual.to(x.dtype)


def layer_norm_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    summed = _residual_sum(x, residual)
    n = x.shape[-1]
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    out = torch.nn.functional.layer_norm(summed.float(), (n,), w, b, eps)
    return out.to(x.dtype), summed


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    summed = _residual_sum(x, residual)
    s = summed.float()
    out = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        out = out * weight.float()
    return out.to(x.dtype), summed


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GLM's GeLU: the tanh approximation, computed in fp32."""
    xf = x.float()
    return (0.5 * xf * (1.0 + torch.tanh(_GELU_C * (xf + 0.044715 * xf * xf * xf)))).to(x.dtype)


def bias_gelu_reference(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return gelu_tanh(x if bias is None else x + bias.to(x.dtype))


# ---------------------------------------------------------------- Triton


@triton.jit
def _tanh(x):
    # tanh through sigmoid: portable across the GPU backends and Triton's interpreter. |x| > 20 is
    # saturated in fp32 anyway; the clamp keeps exp() from overflowing.
    x = tl.minimum(tl.maximum(x, -20.0), 20.0)
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _gelu_tanh(x):
    return 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@triton.jit
def _norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    sum_ptr,
    n_cols,
    x_stride,
    res_stride,
    out_stride,
    sum_stride,
    eps,
    HAS_RES: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    IS_RMS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * res_stride + cols, mask=mask, other=0.0)
        s = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(sum_ptr + row * sum_stride + cols, s, mask=mask)
    else:
        s = x
    s = s.to(tl.float32)
    if IS_RMS:
        y = s * tl.rsqrt(tl.sum(s * s, axis=0) / n_cols + eps)
    else:
        mean = tl.sum(s, axis=0) / n_cols
        d = tl.where(mask, s - mean, 0.0)
        y = d * tl.rsqrt(tl.sum(d * d, axis=0) / n_cols + eps)
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * out_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A 2-D view [rows, n] with unit stride along n (copies only when the last dim is strided)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _norm_triton(x, weight, bias, eps, residual, is_rms):
    n = x.shape[-1]
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (n,):
            raise ValueError(f"{name} shape {tuple(p.shape)} != ({n},)")
    x2 = _rows(x)
    rows = x2.shape[0]
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    if residual is not None:
        r2 = _rows(residual)
        summed = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    else:
        r2, summed = x2, x2
    if rows == 0:
        return out.view(x.shape), (summed.view(x.shape) if residual is not None else x)
    block = triton.next_power_of_2(n)
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    _norm_kernel[(rows,)](
        x2,
        r2,
        weight if weight is not None else x2,
        bias if bias is not None else x2,
        out,
        summed,
        n,
        x2.stride(0),
        r2.stride(0),
        out.stride(0),
        summed.stride(0),
        float(eps),
        HAS_RES=residual is not None,
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        IS_RMS=is_rms,
        BLOCK_N=block,
        num_warps=warps,
    )
    return out.view(x.shape), (summed.view(x.shape) if residual is not None else x)


def layer_norm_triton(x, weight, bias, eps, residual=None):
    return _norm_triton(x, weight, bias, eps, residual, is_rms=False)


def rms_norm_triton(x, weight, eps, residual=None):
    return _norm_triton(x, weight, None, eps, residual, is_rms=True)


@triton.jit
def _bias_gelu_kernel(x_ptr, b_ptr, out_ptr, numel, n_cols, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if HAS_B:
        x = (x.to(tl.float32) + tl.load(b_ptr + offs % n_cols, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
    y = _gelu_tanh(x.to(tl.float32))
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def bias_gelu_triton(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    n = x.shape[-1]
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias shape {tuple(bias.shape)} != ({n},)")
    xc = x.contiguous()
    out = torch.empty_like(xc)
    numel = xc.numel()
    if numel == 0:
        return out
    block = 1024
    _bias_gelu_kernel[(triton.cdiv(numel, block),)](
        xc, bias if bias is not None else xc, out, numel, n, HAS_B=bias is not None, BLOCK=block
    )
    return out
