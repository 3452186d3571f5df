"""GLM prefix-LM attention: bidirectional over the first `sep` keys, causal after, `sep` an integer per sequence.

Query i of sequence b sits at absolute position `q_offset + i`; key j is visible iff `j < sep[b]` or
`j <= q_offset + i` (and `j < kv_len[b]` when given). Prefill passes the whole sequence (Lq == Lk, q_offset 0);
decode passes a few new queries against the KV cache. No L x L mask is ever built by the kernel: visibility is
computed per tile from three integers, and key tiles beyond what any query of a tile can see are never loaded.

The Triton kernel packs the query heads that share a KV head (GQA / MQA) into the rows of one tile, so a decode
step (one query per head) still fills a tile and reads each K/V tile once per group; for long caches with few
(batch x head) programs it splits the keys across programs (flash-decoding) and merges the partial softmaxes.
"""

from __future__ import annotations

import math

import torch

from inference_kernels._triton import launch, tl, triton

# ---------------------------------------------------------------- shared argument handling


def _as_batch_vector(value: int | torch.Tensor | None, batch: int, name: str, device: torch.device) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, int):
        return torch.full((batch,), value, dtype=torch.long, device=device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"prefix_attention: {name} must be an int or a LongTensor[B], got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype == torch.bool:
        raise TypeError(f"prefix_attention: {name} must hold integers, got {value.dtype}")
    if value.dim() == 0:
        value = value.expand(batch)
    if value.shape != (batch,):
        raise ValueError(f"prefix_attention: {name} shape {tuple(value.shape)} != ({batch},)")
    return value.to(device=device, dtype=torch.long)


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"prefix_attention: q/k/v must be [B,H,L,D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, h, lq, d = q.shape
    bk, hk, lk, dk = k.shape
    if k.shape != v.shape or bk != b or dk != d:
        raise ValueError(f"prefix_attention: k {tuple(k.shape)} / v {tuple(v.shape)} do not match q {tuple(q.shape)}")
    if h % hk != 0:
        raise ValueError(f"prefix_attention: {h} query heads are not a multiple of {hk} key/value heads")
    return b, h, hk, lq, lk, d


def prefix_mask(
    sep: torch.Tensor,
    lq: int,
    lk: int,
    q_offset: int | torch.Tensor = 0,
    kv_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """The boolean visibility mask [B, Lq, Lk] (True = may attend) that the kernel never materialises."""
    batch = sep.shape[0]
    qoff = _as_batch_vector(q_offset, batch, "q_offset", sep.device)
    qpos = qoff[:, None] + torch.arange(lq, device=sep.device)[None, :]
    j = torch.arange(lk, device=sep.device)[None, None, :]
    visible = (j < sep.long()[:, None, None]) | (j <= qpos[:, :, None])
    if kv_len is not None:
        visible &= j < _as_batch_vector(kv_len, batch, "kv_len", sep.device)[:, None, None]
    return visible


# ---------------------------------------------------------------- reference


def prefix_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sep: torch.Tensor,
    q_offset: int | torch.Tensor = 0,
    kv_len: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    b, h, hk, lq, lk, d = _check_shapes(q, k, v)
    sep = _as_batch_vector(sep, b, "sep", q.device)
    visible = prefix_mask(sep, lq, lk, q_offset, kv_len)[:, None]  # [B,1,Lq,Lk]
    if hk != h:
        k = k.repeat_interleave(h // hk, dim=1)
        v = v.repeat_interleave(h // hk, dim=1)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.where(visible.any(-1, keepdim=True), probs, torch.zeros_like(probs))  # fully masked row -> 0
    return torch.matmul(probs, v.float()).to(q.dtype)


# ---------------------------------------------------------------- Triton


@triton.jit
def _prefix_attn_kernel(
    Q, K, V, OUT, OP, MP, LP,  # out; partial out / row max / row sum per key split (split mode only)
    SEP, QOFF, KVLEN,
    sm_scale_log2,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
    H, Hk, Lq, Lk, D, keys_per_split, n_splits,
    GROUP: tl.constexpr,
    HAS_KVLEN: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bhk = tl.program_id(1)
    split = tl.program_id(2)
    b = bhk // Hk
    hk = bhk % Hk

    # Rows of the tile: GROUP query heads x Lq queries, packed (head-major).
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < GROUP * Lq
    i = rows % Lq
    h = hk * GROUP + rows // Lq
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D

    sep = tl.load(SEP + b)
    qoff = tl.load(QOFF + b)
    kv_end = Lk
    if HAS_KVLEN:
        kv_end = tl.minimum(tl.load(KVLEN + b), Lk)
    qpos = qoff + i
    # Keys past max(sep, last query position) are invisible to every row of this tile: never loaded.
    hi = tl.maximum(sep, tl.max(tl.where(row_ok, qpos, -1), axis=0) + 1)
    hi = tl.minimum(hi, kv_end)
    lo = 0
    if SPLIT:
        lo = split * keys_per_split
        hi = tl.minimum(hi, lo + keys_per_split)

    b64 = b.to(tl.int64)
    q_ptrs = Q + b64 * sqb + h[:, None].to(tl.int64) * sqh + i[:, None].to(tl.int64) * sqm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b64 * skb + hk.to(tl.int64) * skh
    v_base = V + b64 * svb + hk.to(tl.int64) * svh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        k = tl.load(k_base + offs_n[None, :].to(tl.int64) * skn + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        qk = tl.dot(q, k) * sm_scale_log2
        visible = ((offs_n[None, :] < sep) | (offs_n[None, :] <= qpos[:, None])) & n_ok[None, :]
        qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen nothing yet stays at 0
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + offs_n[:, None].to(tl.int64) * svn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # fully masked row -> zeros

    # Output / partials are laid out [B, H, Lq, (split,) D], contiguous.
    row_index = (b64 * H + h.to(tl.int64)) * Lq + i.to(tl.int64)
    if SPLIT:
        part = row_index * n_splits + split
        tl.store(OP + part[:, None] * D + offs_d[None, :], out, mask=row_ok[:, None] & d_ok[None, :])
        tl.store(MP + part, m_i, mask=row_ok)
        tl.store(LP + part, l_i, mask=row_ok)
    else:
        tl.store(OUT + row_index[:, None] * D + offs_d[None, :], out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _merge_splits_kernel(OP, MP, LP, OUT, D, n_splits, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < n_splits
    m = tl.load(MP + row * n_splits + offs_s, mask=s_ok, other=float("-inf"))
    l_part = tl.load(LP + row * n_splits + offs_s, mask=s_ok, other=0.0)
    m_max = tl.max(m, axis=0)
    m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_safe) * l_part
    o = tl.load(OP + (row * n_splits + offs_s[:, None]) * D + offs_d[None, :], mask=s_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    total = tl.sum(w, axis=0)
    out = tl.sum(o * w[:, None], axis=0) / tl.where(total == 0.0, 1.0, total)
    tl.store(OUT + row * D + offs_d, out.to(OUT.dtype.element_ty), mask=offs_d < D)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # interpreter: any small number exercises the split path


def prefix_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sep: torch.Tensor,
    q_offset: int | torch.Tensor = 0,
    kv_len: torch.Tensor | None = None,
    scale: float | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """`num_splits` None picks a key split from the launch size; tests pass it to cover both paths."""
    b, h, hk, lq, lk, d = _check_shapes(q, k, v)
    group = h // hk
    sep_t = _as_batch_vector(sep, b, "sep", q.device)
    qoff_t = _as_batch_vector(q_offset, b, "q_offset", q.device)
    kvlen_t = _as_batch_vector(kv_len, b, "kv_len", q.device)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    out = torch.empty((b, h, lq, d), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    rows = group * lq
    block_m = 16 if rows <= 16 else 32 if rows <= 32 else 64 if (rows <= 64 or d > 128) else 128
    block_n = 64 if d <= 128 else 32
    block_d = max(16, triton.next_power_of_2(d))
    if q.element_size() == 4:  # fp32 tiles take twice the shared memory
        block_m = min(block_m, 64)
    tiles_m = triton.cdiv(rows, block_m)
    if num_splits is None:
        programs = tiles_m * b * hk
        num_splits = 1
        if programs < _num_sms(q.device) and lk >= 4 * block_n:
            num_splits = min(triton.cdiv(2 * _num_sms(q.device), programs), triton.cdiv(lk, 2 * block_n), 64)
    keys_per_split = triton.cdiv(triton.cdiv(lk, num_splits), block_n) * block_n
    num_splits = max(1, triton.cdiv(lk, keys_per_split))
    split = num_splits > 1
    if split:
        op = torch.empty((b, h, lq, num_splits, d), dtype=torch.float32, device=q.device)
        mp = torch.empty((b, h, lq, num_splits), dtype=torch.float32, device=q.device)
        lp = torch.empty_like(mp)
    else:
        op = mp = lp = out
    warps = 4 if block_m * block_d <= 64 * 64 else 8
    stages = 3 if block_m >= 64 and d <= 128 and q.element_size() == 2 else 2
    launch(
        _prefix_attn_kernel,
        (tiles_m, b * hk, num_splits),
        q, k, v, out, op, mp, lp,
        sep_t, qoff_t, kvlen_t if kvlen_t is not None else sep_t,
        scale * 1.4426950408889634,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        h, hk, lq, lk, d, keys_per_split, num_splits,
        GROUP=group,
        HAS_KVLEN=kvlen_t is not None,
        SPLIT=split,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        num_warps=warps,
        num_stages=stages,
    )
    if split:
        _merge_splits_kernel[(b * h * lq,)](
            op, mp, lp, out, d, num_splits, BLOCK_S=max(2, triton.next_power_of_2(num_splits)), BLOCK_D=block_d
        )
    return out
