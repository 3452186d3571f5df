"""`xdai model`: run and inspect the GLM engine (generate, info, upcycle) — also under DeepSpeed.

    xdai model info DIR
    xdai model generate DIR "清华大学位于[MASK]。" --stream
    xdai model upcycle DIR OUT --experts 8 --top-k 2
    deepspeed --num_gpus 2 --no_local_rank -m xdai model generate DIR "...[MASK]..." --tp-size 2
"""

from __future__ import annotations

import json
import os
import sys
import time

import click


def _dtype(name: str | None):
    import torch

    return getattr(torch, name) if name else None


@click.group()
def model() -> None:
    """Run and inspect the GLM engine (generate, DeepSpeed)."""


@model.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def info(directory: str) -> None:
    """Show a checkpoint's config, parameter count, MoE layers and command-token ids."""
    from xdai.model import load_model

    m = load_model(directory)
    cfg = m.config
    out = {
        "directory": directory,
        "parameters": m.num_parameters(),
        "config": {k: v for k, v in cfg.to_dict().items() if not k.startswith("moe") or cfg.moe_layers},
    }
    if m.tokenizer is not None:
        out["tokenizer"] = {"file": m.tokenizer.sp_path.name, "command_tokens": m.tokenizer.command_ids}
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))


@model.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.argument("texts", nargs=-1, required=True)
@click.option("--max-tokens", default=64, show_default=True, help="Tokens generated per text (all masks).")
@click.option("--temperature", default=0.0, show_default=True, help="0: greedy.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--top-k", default=0, show_default=True, help="0: off.")
@click.option("--repetition-penalty", default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--stream/--no-stream", default=False, help="Print the fill of one text as it is generated.")
@click.option("--no-cache", is_flag=True, help="Recompute the whole sequence each step (for comparison).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available).")
@click.option("--dtype", default=None, help="float32, float16, bfloat16 (default: float16 on CUDA).")
@click.option("--kernels/--no-kernels", default=True, help="On CUDA, use inference_kernels.")
@click.option("--deepspeed", "use_deepspeed", is_flag=True, help="Run under deepspeed.init_inference.")
@click.option("--tp-size", default=1, show_default=True, help="Tensor-parallel ranks (implies --deepspeed).")
@click.option("--ep-size", default=1, show_default=True, help="Expert-parallel ranks (implies --deepspeed).")
def generate(directory: str, texts: tuple[str, ...], max_tokens: int, temperature: float, top_p: float,
             top_k: int, repetition_penalty: float, seed: int | None, stream: bool, no_cache: bool,
             device: str | None, dtype: str | None, kernels: bool, use_deepspeed: bool, tp_size: int,
             ep_size: int) -> None:
    """Fill the [MASK]/[sMASK]/[gMASK] tokens of TEXTS (batched) and print the filled texts."""
    import torch

    from xdai.backends.base import GenerationSettings
    from xdai.model import fill_text, load_model, stream_spans

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    m = load_model(directory, device=device, dtype=_dtype(dtype))
    if m.tokenizer is None:
        raise click.ClickException(f"{directory}: no sentencepiece tokenizer next to the weights")
    rank = 0
    if use_deepspeed or tp_size > 1 or ep_size > 1:
        from xdai.model.parallel import init_inference

        tokenizer = m.tokenizer
        m = init_inference(m, tp_size=tp_size, ep_size=ep_size, dtype=_dtype(dtype)).module
        m.tokenizer = tokenizer
        rank = torch.distributed.get_rank()
    elif kernels and device.startswith("cuda"):
        import inference_kernels

        inference_kernels.inject(m)
    settings = GenerationSettings(temperature=temperature, top_p=top_p, top_k=top_k,
                                  repetition_penalty=repetition_penalty, max_tokens=max_tokens, seed=seed)
    echo = click.echo if rank == 0 else (lambda *a, **k: None)
    start = time.perf_counter()
    stats: dict[str, int] = {}
    if stream:
        if len(texts) != 1:
            raise click.UsageError("--stream takes one text")
        current = 0
        for span, piece in stream_spans(m, texts[0], settings, use_cache=not no_cache, stats=stats):
            if span != current:
                echo(" | ", nl=False)
                current = span
            echo(piece, nl=False)
        echo()
    else:
        for filled in fill_text(m, list(texts), settings, use_cache=not no_cache, stats=stats):
            echo(filled.text)
    if rank == 0:
        parallel = f" (tp={tp_size}, ep={ep_size})" if tp_size > 1 or ep_size > 1 else ""
        dropped = f", {stats.get('moe_dropped', 0)} MoE assignments dropped" if m.config.moe_layers else ""
        print(f"generate: {len(texts)} text(s), {stats.get('forward_calls', 0)} forward calls in "
              f"{time.perf_counter() - start:.2f}s on {device}{parallel}{dropped}", file=sys.stderr)


@model.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--experts", default=8, show_default=True)
@click.option("--top-k", default=2, show_default=True)
@click.option("--layers", default="all", show_default=True, help='"all" or comma-separated layer indices.')
@click.option("--capacity-factor", type=float, default=None)
@click.option("--shared-expert", is_flag=True)
@click.option("--safetensors", is_flag=True, help="Write model.safetensors instead of pytorch_model.bin.")
def upcycle(directory: str, out: str, experts: int, top_k: int, layers: str, capacity_factor: float | None,
            shared_expert: bool, safetensors: bool) -> None:
    """Build an MoE GLM from a dense checkpoint (each FFN copied into its experts) and save it to OUT."""
    from xdai.model import load_model, save_model
    from xdai.model import upcycle as upcycle_model

    dense = load_model(directory)
    chosen = None if layers == "all" else [int(x) for x in layers.split(",") if x.strip()]
    moe = upcycle_model(dense, experts, top_k=top_k, layers=chosen, capacity_factor=capacity_factor,
                        shared_expert=shared_expert)
    save_model(moe, out, safetensors=safetensors)
    click.echo(f"upcycle: {dense.num_parameters():,} -> {moe.num_parameters():,} parameters, "
               f"{len(moe.config.moe_layers)} MoE layers x {experts} experts, written to {out}")
