"""GLM engine throughput: KV cache vs recomputation on CPU; eager vs our kernels vs DeepSpeed-Inference on GPU.

    .venv/bin/python benchmarks/glm_engine.py                 # CPU: small model, with vs without KV cache
    .venv/bin/python benchmarks/glm_engine.py --gpu           # + GLM-large-sized model (random weights), fp16
    .venv/bin/python benchmarks/glm_engine.py --gpu --moe     # + its MoE variant (8 experts, top-2, every 2nd layer)

Timings on a shared machine are noisy: every figure is printed next to a baseline measured in the same run
(ratios are what to compare). `--json FILE` writes the raw numbers; `--results` appends a section to
benchmarks/RESULTS.md with the device's name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xdai.backends.base import GenerationSettings  # noqa: E402
from xdai.model import GLMConfig, GLMModel, SpecialIds, stream_fill  # noqa: E402

SMALL = dict(num_layers=6, vocab_size=8192, hidden_size=256, num_attention_heads=8, max_sequence_length=512)
LARGE = dict(num_layers=24, vocab_size=50048, hidden_size=1024, num_attention_heads=16, max_sequence_length=1024)


def special_for(cfg: GLMConfig) -> SpecialIds:
    v = cfg.vocab_size
    return SpecialIds(sop=v - 4, eop=v - 3, masks=(v - 2,), pad=0, vocab_limit=v - 4)  # eop never wins: fixed length


def prompts(cfg: GLMConfig, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    mask = special_for(cfg).masks[0]
    rows = []
    for b in range(batch):
        n = length - 3 * b  # rows of different lengths: the batch is padded
        ids = torch.randint(10, cfg.vocab_size - 10, (n,), generator=g).tolist()
        ids[n // 2] = mask
        rows.append(ids)
    return rows


def run(model: GLMModel, rows: list[list[int]], new_tokens: int, use_cache: bool) -> dict[str, float]:
    """Time-to-first-token and decode throughput (tokens after the first, all rows) of one greedy generation."""
    settings = GenerationSettings(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_tokens=new_tokens)
    special = special_for(model.config)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    first = None
    steps = 0
    for _ in stream_fill(model, rows, special, settings, use_cache=use_cache):
        steps += 1
        if first is None:
            sync()
            first = time.perf_counter()
    sync()
    end = time.perf_counter()
    decode_tokens = (steps - 1) * len(rows)
    return {"ttft_ms": 1000 * (first - start), "decode_tok_s": decode_tokens / max(end - first, 1e-9),
            "total_tok_s": steps * len(rows) / (end - start)}


def best_of(fn, repeats: int) -> dict[str, float]:
    runs = [fn() for _ in range(repeats)]
    return {k: (min if k == "ttft_ms" else max)(r[k] for r in runs) for k in runs[0]} | {
        "ttft_ms_median": statistics.median(r["ttft_ms"] for r in runs)}


def cpu_section(args) -> dict:
    torch.manual_seed(0)
    model = GLMModel(GLMConfig(**SMALL)).eval()
    results = {"model": f"GLM small ({model.num_parameters() / 1e6:.1f}M params, fp32)", "rows": []}
    for batch in (1, 4):
        rows = prompts(model.config, batch, args.cpu_prompt)
        cached = best_of(lambda rows=rows: run(model, rows, args.cpu_tokens, True), args.repeats)
        plain = best_of(lambda rows=rows: run(model, rows, args.cpu_tokens, False), args.repeats)
        results["rows"].append({"batch": batch, "prompt": args.cpu_prompt, "new_tokens": args.cpu_tokens,
                                "with_cache": cached, "without_cache": plain,
                                "speedup": cached["total_tok_s"] / plain["total_tok_s"]})
        print(f"cpu batch={batch}: {cached['total_tok_s']:.1f} tok/s with KV cache, "
              f"{plain['total_tok_s']:.1f} tok/s without ({results['rows'][-1]['speedup']:.2f}x)", file=sys.stderr)
    return results


def gpu_section(args, moe: bool) -> dict:
    """Eager vs our kernels vs DeepSpeed-Inference. `--smoke` runs the same code on a small model on whatever
    device there is (CPU: float32, kernels fall back to their references) to check the script itself."""
    import inference_kernels

    cuda = torch.cuda.is_available()
    cfg_kwargs = dict(SMALL if args.smoke else LARGE)
    if moe:
        layers = cfg_kwargs["num_layers"]
        cfg_kwargs.update(moe_layers=list(range(1, layers, 2)), num_experts=8, moe_top_k=2)
    cfg = GLMConfig(**cfg_kwargs)
    dtype = torch.float16 if cuda else torch.float32
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = GLMModel(cfg).to(dtype).eval()
    size = "small" if args.smoke else "GLM-large-sized"
    name = f"{size}{' MoE 8x top-2' if moe else ''} ({model.num_parameters() / 1e6:.0f}M params, {dtype})"
    device_name = torch.cuda.get_device_name() if cuda else f"CPU {platform.machine()}"
    results = {"model": name, "device": device_name, "rows": []}
    modes = {}

    def eager():
        os.environ["XDAI_KERNELS"] = "off"
        return model

    def kernels():
        os.environ["XDAI_KERNELS"] = "on"
        inference_kernels.inject(model)
        return model

    modes["eager"] = eager
    modes["kernels"] = kernels
    if not moe or args.deepspeed_moe:
        modes["deepspeed"] = None
    for batch in args.gpu_batches:
        rows = prompts(cfg, batch, args.gpu_prompt)
        row = {"batch": batch, "prompt": args.gpu_prompt, "new_tokens": args.gpu_tokens}
        for mode, prepare in modes.items():
            if mode == "deepspeed":
                continue
            m = prepare()
            run(m, rows, 8, True)  # warm-up (Triton compiles, cuBLAS picks)
            row[mode] = best_of(lambda m=m, rows=rows: run(m, rows, args.gpu_tokens, True), args.repeats)
            for layer in model.transformer.layers:
                layer.fused = False
        results["rows"].append(row)
    if "deepspeed" in modes:
        from xdai.model.parallel import init_inference

        os.environ["XDAI_KERNELS"] = "off"
        engine = init_inference(model, tp_size=1, dtype=dtype)
        for row, batch in zip(results["rows"], args.gpu_batches, strict=True):
            rows = prompts(cfg, batch, args.gpu_prompt)
            run(engine.module, rows, 8, True)
            row["deepspeed"] = best_of(lambda rows=rows: run(engine.module, rows, args.gpu_tokens, True),
                                       args.repeats)
    for row in results["rows"]:
        base = row["eager"]["decode_tok_s"]
        summary = ", ".join(f"{m} {row[m]['decode_tok_s']:.0f} tok/s ({row[m]['decode_tok_s'] / base:.2f}x) "
                            f"TTFT {row[m]['ttft_ms']:.1f} ms" for m in ("eager", "kernels", "deepspeed") if m in row)
        print(f"gpu {name} batch={row['batch']}: {summary}", file=sys.stderr)
    return results


def markdown(report: dict) -> str:
    lines = [f"## GLM engine (`benchmarks/glm_engine.py`, {report['date']})", ""]
    cpu = report["cpu"]
    if cpu["rows"]:
        lines += [f"CPU ({report['cpu_name']}, {torch.get_num_threads()} threads), {cpu['model']}, greedy, "
                  f"best of {report['repeats']}:", "",
                  "| batch | prompt | new tokens | with KV cache tok/s | without tok/s | speed-up | TTFT cached ms |",
                  "|---|---|---|---|---|---|---|"]
    for r in cpu["rows"]:
        lines.append(f"| {r['batch']} | {r['prompt']} | {r['new_tokens']} | {r['with_cache']['total_tok_s']:.1f} | "
                     f"{r['without_cache']['total_tok_s']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['with_cache']['ttft_ms']:.1f} |")
    for section in report.get("gpu", []):
        lines += ["", f"GPU ({section['device']}), {section['model']}: decode tok/s and time to first token", "",
                  "| batch | eager tok/s | kernels tok/s | deepspeed tok/s | eager TTFT ms | kernels TTFT ms | "
                  "deepspeed TTFT ms |", "|---|---|---|---|---|---|---|"]
        for r in section["rows"]:
            def cell(mode, key, fmt, r=r):
                return format(r[mode][key], fmt) if mode in r else "-"
            lines.append(f"| {r['batch']} | {cell('eager', 'decode_tok_s', '.0f')} | "
                         f"{cell('kernels', 'decode_tok_s', '.0f')} | {cell('deepspeed', 'decode_tok_s', '.0f')} | "
                         f"{cell('eager', 'ttft_ms', '.1f')} | {cell('kernels', 'ttft_ms', '.1f')} | "
                         f"{cell('deepspeed', 'ttft_ms', '.1f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-prompt", type=int, default=128)
    parser.add_argument("--cpu-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="also run the GLM-large-sized GPU comparison")
    parser.add_argument("--moe", action="store_true", help="with --gpu: also the MoE variant")
    parser.add_argument("--deepspeed-moe", action="store_true", help="with --moe: DeepSpeed for the MoE too")
    parser.add_argument("--gpu-prompt", type=int, default=512)
    parser.add_argument("--gpu-tokens", type=int, default=128)
    parser.add_argument("--gpu-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="with --gpu: a small model, on CPU when there is no GPU (checks the script runs)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a loaded machine more threads spin and run slower)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--results", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"date": time.strftime("%Y-%m-%d"), "cpu_name": platform.processor() or platform.machine(),
              "repeats": args.repeats, "torch": torch.__version__}
    report["cpu"] = cpu_section(args) if not args.skip_cpu else {"model": "-", "rows": []}
    if args.gpu:
        if not torch.cuda.is_available() and not args.smoke:
            sys.exit("--gpu: no CUDA device (add --smoke to run the comparison on CPU with a small model)")
        report["gpu"] = [gpu_section(args, moe=False)] + ([gpu_section(args, moe=True)] if args.moe else [])
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.results:
        path = Path(__file__).with_name("RESULTS.md")
        with path.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
    rows = report["cpu"]["rows"]
    if rows:
        speedups = ", ".join(f"{r['speedup']:.2f}x (batch {r['batch']})" for r in rows)
        print(f"glm_engine: KV cache speed-up {speedups}", file=sys.stderr)


if __name__ == "__main__":
    main()
