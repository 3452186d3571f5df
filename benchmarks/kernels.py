"""Time the fused kernels against eager PyTorch, torch.compile of the same code, SDPA with a materialised mask
(attention) and DeepSpeed's MoE layer (MoE), at decode sizes (1-64 tokens) and prefill sizes (512-4096), in
bf16 and fp16, and print each baseline's time as a ratio to the kernel's (ratio > 1: the kernel is faster).

Targets (H100): fused MoE >= 2x eager at decode sizes; prefix attention >= 1x SDPA-with-mask at L >= 1024;
residual + LayerNorm / RMSNorm >= 1.5x eager. Each case also records the kernel's largest difference from the
eager result, so a wrong kernel cannot pass as a fast one.

    python benchmarks/kernels.py --out results/ [--dtypes bf16,fp16] [--ops moe,attention,norm]
                                 [--no-compile] [--no-deepspeed] [--budget-s 300]
    python benchmarks/kernels.py --smoke      # CPU, tiny sizes, Triton's interpreter: checks the plumbing only

Writes kernels.json (one record per case and implementation) and kernels.md (the table) under --out.
"""

from __future__ import annotations

import os
import sys

if "--smoke" in sys.argv:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from inference_kernels import attention as A  # noqa: E402
from inference_kernels import moe as M  # noqa: E402
from inference_kernels import norm as N  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DECODE_TOKENS = [1, 8, 64]
PREFILL_TOKENS = [512, 2048, 4096]
ATTN_LENGTHS = [512, 1024, 2048, 4096]
TARGETS = {"moe_decode_vs_eager": 2.0, "attention_prefill_vs_sdpa_mask": 1.0, "norm_vs_eager": 1.5}


@dataclass
class Case:
    op: str  # moe | attention | norm
    name: str  # e.g. "glm-gelu T=8"
    phase: str  # decode | prefill
    size: int  # tokens or sequence length
    dtype: str
    kernel: Callable[[], object]
    baselines: dict[str, Callable[[], object]]
    compilable: Callable[[], object] | None = None  # the eager code that torch.compile is measured on


@dataclass
class Result:
    op: str
    name: str
    phase: str
    size: int
    dtype: str
    ms: dict[str, float] = field(default_factory=dict)  # implementation -> median milliseconds
    errors: dict[str, str] = field(default_factory=dict)  # implementation -> why it has no time
    max_abs_diff: float | None = None  # kernel vs eager

    def ratio(self, baseline: str) -> float | None:
        if "triton" in self.ms and baseline in self.ms:
            return self.ms[baseline] / self.ms["triton"]
        return None


# ---------------------------------------------------------------- timing


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median milliseconds per call: Triton's do_bench (CUDA events, L2 flushed) on GPU; one wall-clock call on CPU."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
    start = time.perf_counter()  # CPU runs only check the plumbing (--smoke): one call is enough
    fn()
    return (time.perf_counter() - start) * 1e3


def first_tensor(value: object) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value  # type: ignore[return-value]


# ---------------------------------------------------------------- cases


@dataclass
class MoeShape:
    name: str
    experts: int
    hidden: int
    ffn: int
    top_k: int
    activation: str
    bias: bool


def moe_shapes(smoke: bool) -> list[MoeShape]:
    if smoke:
        return [MoeShape("tiny-gelu", 4, 32, 16, 2, "gelu", True), MoeShape("tiny-silu", 4, 32, 16, 2, "silu_gated", False)]
    return [
        MoeShape("glm-gelu E16 k2", 16, 2048, 8192, 2, "gelu", True),  # our GLM MoE layer's form
        MoeShape("qwen2moe E60 k4", 60, 2048, 1408, 4, "silu_gated", False),
        MoeShape("mixtral E8 k2", 8, 4096, 14336, 2, "silu_gated", False),
    ]


def deepspeed_moe(shape: MoeShape, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """DeepSpeed's MoE layer with the same experts (GeLU-tanh MLPs), top-2, no token dropping, one rank."""
    import deepspeed
    from deepspeed.moe.layer import MoE

    if not torch.distributed.is_initialized():
        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
            os.environ.setdefault(key, value)
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    expert = torch.nn.Sequential(
        torch.nn.Linear(shape.hidden, shape.ffn), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(shape.ffn, shape.hidden)
    )
    layer = MoE(shape.hidden, expert, num_experts=shape.experts, k=shape.top_k, drop_tokens=False, eval_capacity_factor=1.0)
    return layer.to(device=device, dtype=dtype).eval()


def moe_cases(dtype_name: str, device: torch.device, smoke: bool, with_deepspeed: bool) -> Iterator[Case]:
    dtype = DTYPES[dtype_name]
    tokens = [1, 8] if smoke else DECODE_TOKENS + PREFILL_TOKENS
    for shape in moe_shapes(smoke):
        e, d, f = shape.experts, shape.hidden, shape.ffn
        width = 2 * f if shape.activation == "silu_gated" else f
        w1 = (torch.randn(e, d, width, device=device) / math.sqrt(d)).to(dtype)
        w2 = (torch.randn(e, f, d, device=device) / math.sqrt(f)).to(dtype)
        b1 = torch.randn(e, width, device=device, dtype=dtype) * 0.1 if shape.bias else None
        b2 = torch.randn(e, d, device=device, dtype=dtype) * 0.1 if shape.bias else None
        ds_layer = None
        if with_deepspeed and shape.activation == "gelu" and shape.top_k <= 2:
            try:
                ds_layer = deepspeed_moe(shape, device, dtype)
            except Exception as exc:  # reported in the table, the other baselines still run
                print(f"deepspeed MoE unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        for t in tokens:
            hidden = torch.randn(t, d, device=device, dtype=dtype)
            logits = torch.randn(t, e, device=device, dtype=torch.float32)
            args = dict(w1=w1, w2=w2, b1=b1, b2=b2, activation=shape.activation)

            def kernel(hidden=hidden, logits=logits, args=args, top_k=shape.top_k):
                weights, ids = M.route(logits, top_k)
                return M.fused_experts_triton(hidden, weights, ids, **args)

            def eager(hidden=hidden, logits=logits, args=args, top_k=shape.top_k):
                weights, ids = M.route(logits, top_k)
                return M.fused_experts_reference(hidden, weights, ids, **args)

            baselines: dict[str, Callable[[], object]] = {"eager": eager}
            if ds_layer is not None:
                baselines["deepspeed"] = lambda hidden=hidden, layer=ds_layer: layer(hidden[None])
            phase = "decode" if t <= 64 else "prefill"
            yield Case("moe", f"{shape.name} T={t}", phase, t, dtype_name, kernel, baselines, compilable=eager)
        del w1, w2, b1, b2, ds_layer


def attention_cases(dtype_name: str, device: torch.device, smoke: bool) -> Iterator[Case]:
    dtype = DTYPES[dtype_name]
    heads, kv_heads, d = (2, 2, 16) if smoke else (32, 32, 128)
    for length in [37, 64] if smoke else ATTN_LENGTHS:
        q, k, v = (torch.randn(1, h, length, d, device=device, dtype=dtype) for h in (heads, kv_heads, kv_heads))
        sep = torch.tensor([length // 2], device=device)
        mask = A.prefix_mask(sep, length, length)[:, None]  # built once, outside the timed region

        def kernel(q=q, k=k, v=v, sep=sep):
            return A.prefix_attention_triton(q, k, v, sep)

        def eager(q=q, k=k, v=v, sep=sep):
            return A.prefix_attention_reference(q, k, v, sep)

        def sdpa(q=q, k=k, v=v, mask=mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        yield Case("attention", f"prefill L={length} sep=L/2", "prefill", length, dtype_name, kernel,
                   {"eager": eager, "sdpa_mask": sdpa}, compilable=eager)
    batch, kv_heads = (2, 2) if smoke else (8, 32)
    for cache in [40, 70] if smoke else [1024, 4096]:
        q = torch.randn(batch, heads, 1, d, device=device, dtype=dtype)
        k, v = (torch.randn(batch, kv_heads, cache, d, device=device, dtype=dtype) for _ in range(2))
        sep = torch.full((batch,), cache // 4, device=device)
        q_offset = torch.full((batch,), cache - 1, device=device)
        mask = A.prefix_mask(sep, 1, cache, q_offset)[:, None]

        def kernel(q=q, k=k, v=v, sep=sep, q_offset=q_offset):
            return A.prefix_attention_triton(q, k, v, sep, q_offset)

        def eager(q=q, k=k, v=v, sep=sep, q_offset=q_offset):
            return A.prefix_attention_reference(q, k, v, sep, q_offset)

        def sdpa(q=q, k=k, v=v, mask=mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        yield Case("attention", f"decode B={batch} cache={cache}", "decode", cache, dtype_name, kernel,
                   {"eager": eager, "sdpa_mask": sdpa}, compilable=eager)


def _eager_layer_norm(x, r, w, b, eps):
    summed = x + r
    return F.layer_norm(summed, (x.shape[-1],), w, b, eps), summed


def _eager_rms_norm(x, r, w, eps):  # as transformers' RMSNorm modules compute it, after the residual add
    summed = x + r
    s = summed.float()
    return w * (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype), summed


def _eager_bias_gelu(x, b):
    return F.gelu(x + b, approximate="tanh")


def norm_cases(dtype_name: str, device: torch.device, smoke: bool) -> Iterator[Case]:
    dtype = DTYPES[dtype_name]
    hidden = 48 if smoke else 4096
    for rows in [1, 5] if smoke else DECODE_TOKENS + PREFILL_TOKENS:
        phase = "decode" if rows <= 64 else "prefill"
        x, r = (torch.randn(rows, hidden, device=device, dtype=dtype) for _ in range(2))
        w, b = (torch.randn(hidden, device=device, dtype=dtype) for _ in range(2))
        yield Case("norm", f"residual+layer_norm rows={rows}", phase, rows, dtype_name,
                   lambda x=x, r=r, w=w, b=b: N.layer_norm_triton(x, w, b, 1e-5, r),
                   {"eager": lambda x=x, r=r, w=w, b=b: _eager_layer_norm(x, r, w, b, 1e-5)},
                   compilable=lambda x=x, r=r, w=w, b=b: _eager_layer_norm(x, r, w, b, 1e-5))
        yield Case("norm", f"residual+rms_norm rows={rows}", phase, rows, dtype_name,
                   lambda x=x, r=r, w=w: N.rms_norm_triton(x, w, 1e-6, r),
                   {"eager": lambda x=x, r=r, w=w: _eager_rms_norm(x, r, w, 1e-6)},
                   compilable=lambda x=x, r=r, w=w: _eager_rms_norm(x, r, w, 1e-6))
        h = torch.randn(rows, 4 * hidden, device=device, dtype=dtype)
        bias = torch.randn(4 * hidden, device=device, dtype=dtype)
        yield Case("norm", f"bias+gelu rows={rows}x{4 * hidden}", phase, rows, dtype_name,
                   lambda h=h, bias=bias: N.bias_gelu_triton(h, bias),
                   {"eager": lambda h=h, bias=bias: _eager_bias_gelu(h, bias)},
                   compilable=lambda h=h, bias=bias: _eager_bias_gelu(h, bias))


# ---------------------------------------------------------------- running and reporting


def run_case(case: Case, device: torch.device) -> Result:
    result = Result(case.op, case.name, case.phase, case.size, case.dtype)
    with torch.no_grad():
        try:
            out = first_tensor(case.kernel())
            result.ms["triton"] = time_ms(case.kernel, device)
            reference = first_tensor(case.baselines["eager"]())
            result.max_abs_diff = (out.float() - reference.float()).abs().max().item()
        except Exception as exc:
            result.errors["triton"] = f"{type(exc).__name__}: {exc}"
        for name, fn in case.baselines.items():
            try:
                result.ms[name] = time_ms(fn, device)
            except Exception as exc:
                result.errors[name] = f"{type(exc).__name__}: {exc}"
    return result


def add_compile_time(case: Case, result: Result, device: torch.device) -> None:
    """torch.compile of the eager code (compilation happens in the untimed first calls)."""
    if case.compilable is None:
        return
    try:
        compiled = torch.compile(case.compilable)
        with torch.no_grad():
            compiled()
            result.ms["compile"] = time_ms(compiled, device)
    except Exception as exc:
        result.errors["compile"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def check_targets(results: list[Result]) -> list[tuple[str, float | None, float, bool | None]]:
    """(target, worst ratio seen, threshold, met) for each target; None when nothing measured it."""

    def worst(rows: list[Result], baseline: str) -> float | None:
        ratios = [r.ratio(baseline) for r in rows]
        ratios = [x for x in ratios if x is not None]
        return min(ratios) if ratios else None

    checks = [
        ("moe_decode_vs_eager", [r for r in results if r.op == "moe" and r.phase == "decode"], "eager"),
        ("attention_prefill_vs_sdpa_mask",
         [r for r in results if r.op == "attention" and r.phase == "prefill" and r.size >= 1024], "sdpa_mask"),
        ("norm_vs_eager", [r for r in results if r.op == "norm" and "norm" in r.name], "eager"),
    ]
    out = []
    for name, rows, baseline in checks:
        w = worst(rows, baseline)
        out.append((name, w, TARGETS[name], None if w is None else w >= TARGETS[name]))
    return out


def fmt(result: Result, impl: str) -> str:
    if impl in result.errors:
        return "error"
    if impl not in result.ms:
        return "-"
    if impl == "triton":
        return f"{result.ms[impl]:.4f}"
    ratio = result.ratio(impl)
    return f"{result.ms[impl]:.4f} ({ratio:.2f}x)" if ratio is not None else f"{result.ms[impl]:.4f}"


IMPLS = ["triton", "eager", "compile", "sdpa_mask", "deepspeed"]


def markdown(results: list[Result], device_name: str, targets) -> str:
    lines = [
        f"Device: {device_name}; torch {torch.__version__}. Times in ms (median); in brackets baseline / kernel "
        "(> 1: the kernel is faster).",
        "",
        "| op | case | dtype | " + " | ".join(IMPLS) + " | max abs diff |",
        "|" + "---|" * (len(IMPLS) + 4),
    ]
    for r in results:
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
        lines.append(f"| {r.op} | {r.name} | {r.dtype} | " + " | ".join(fmt(r, i) for i in IMPLS) + f" | {diff} |")
    lines += ["", "| target | worst ratio | threshold | met |", "|---|---|---|---|"]
    for name, w, threshold, met in targets:
        lines.append(f"| {name} | {'-' if w is None else f'{w:.2f}'} | {threshold} | {'-' if met is None else met} |")
    errors = [(r, impl, why) for r in results for impl, why in r.errors.items()]
    if errors:
        lines += ["", "Errors:"] + [f"- {r.op} {r.name} {r.dtype} {impl}: {why}" for r, impl, why in errors]
    return "\n".join(lines) + "\n"


def write_results(out: Path | None, results: list[Result], device_name: str, skipped: int, smoke: bool):
    """(markdown table, targets); also written to OUT/kernels.{json,md} when --out is given."""
    targets = check_targets(results)
    if smoke:  # interpreter times say nothing about the targets
        targets = [(name, None, threshold, None) for name, _, threshold, _ in targets]
    table = markdown(results, device_name, targets)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        record = {"device": device_name, "torch": torch.__version__, "results": [asdict(r) for r in results],
                  "targets": targets, "skipped_cases": skipped}
        (out / "kernels.json").write_text(json.dumps(record, indent=1))
        (out / "kernels.md").write_text(table)
    return table, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for kernels.json and kernels.md")
    parser.add_argument("--dtypes", default="bf16,fp16")
    parser.add_argument("--ops", default="moe,attention,norm")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--no-deepspeed", action="store_true", help="skip DeepSpeed's MoE layer")
    parser.add_argument("--budget-s", type=float, default=300.0, help="stop starting new cases after this long")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, Triton interpreter: plumbing only")
    args = parser.parse_args(argv)

    dtypes = [x.strip() for x in args.dtypes.split(",") if x.strip()]
    unknown = [x for x in dtypes if x not in DTYPES]
    if unknown:
        parser.error(f"--dtypes: unknown {unknown}; choose from {sorted(DTYPES)}")
    ops = [x.strip() for x in args.ops.split(",") if x.strip()]
    if set(ops) - {"moe", "attention", "norm"}:
        parser.error(f"--ops: unknown {sorted(set(ops) - {'moe', 'attention', 'norm'})}")
    if args.smoke:
        device, dtypes = torch.device("cpu"), ["fp32"]
        device_name = "CPU (Triton interpreter; times meaningless)"
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        device_name = torch.cuda.get_device_name(device)
    else:
        print("kernels benchmark: no CUDA device (use --smoke to check the script on CPU)", file=sys.stderr)
        return 2
    torch._dynamo.config.cache_size_limit = 64
    torch.manual_seed(0)
    started = time.monotonic()

    def cases() -> Iterator[Case]:
        for dtype in dtypes:
            if "norm" in ops:
                yield from norm_cases(dtype, device, args.smoke)
            if "attention" in ops:
                yield from attention_cases(dtype, device, args.smoke)
            if "moe" in ops:
                yield from moe_cases(dtype, device, args.smoke, not args.no_deepspeed)

    # Pass 1 (60% of the budget): kernel, eager and library baselines for every case. Pass 2: torch.compile.
    # Results are rewritten after every case, so a run stopped by an outer timeout still leaves its numbers.
    results: list[tuple[Case, Result]] = []
    skipped = 0
    for case in tqdm(cases(), desc="kernels", unit="case", file=sys.stderr):
        if time.monotonic() - started > 0.6 * args.budget_s:
            skipped += 1
            continue
        result = run_case(case, device)
        results.append((case, result))
        print(f"{case.op:9s} {case.name:32s} {case.dtype:4s} "
              + "  ".join(f"{i}={fmt(result, i)}" for i in IMPLS if i in result.ms or i in result.errors), file=sys.stderr)
        write_results(args.out, [r for _, r in results], device_name, skipped, args.smoke)
    if not args.no_compile and not args.smoke:
        for case, result in tqdm(results, desc="torch.compile", unit="case", file=sys.stderr):
            if time.monotonic() - started > args.budget_s:
                result.errors["compile"] = "skipped: time budget"
                continue
            add_compile_time(case, result, device)
            write_results(args.out, [r for _, r in results], device_name, skipped, args.smoke)
    final = [r for _, r in results]
    table, targets = write_results(args.out, final, device_name, skipped, args.smoke)
    print(table)
    met = [t for t in targets if t[3] is not None]
    print(
        f"kernels benchmark: {len(final)} cases on {device_name} in {time.monotonic() - started:.0f} s, "
        f"{skipped} skipped for time; targets met {sum(bool(t[3]) for t in met)}/{len(met)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
