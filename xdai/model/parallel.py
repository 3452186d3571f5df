"""Tensor and expert parallelism through DeepSpeed-Inference.

`init_inference` wraps a `GLMModel` with `deepspeed.init_inference`: tensor parallelism (`tp_size`) shards the
attention and MLP Linears of every layer (AutoTP with an explicit policy naming the row-parallel Linears,
whose outputs are all-reduced; `query_key_value` is split as three q/k/v blocks, see `InfillingDecoderLayer`
for the class names AutoTP keys on). DeepSpeed's own expert groups only know `deepspeed.moe.layer.MoE`, so experts of our
`MoEMLP` layers are sharded here over `ep_size` ranks (contiguous groups of ranks) and their outputs summed.

Launch across GPUs with `deepspeed --num_gpus N --no_local_rank -m xdai model generate DIR ... --tp-size N`.
On CPU, the same path runs in float32 over a gloo process group without kernel injection (CUDA-only).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

from xdai.model.glm import GLMModel, InfillingDecoderLayer
from xdai.model.moe import MoEMLP, shard_experts

# Linears whose outputs are partial sums under tensor parallelism (row-parallel: all-reduced by DeepSpeed).
ROW_PARALLEL_LINEARS = ("attention.dense", "mlp.dense_4h_to_h", "shared.dense_4h_to_h")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Join (or, alone, create) the process group: NCCL on CUDA, gloo on CPU. Returns (rank, world size).

    A process not started by a launcher becomes rank 0 of a world of 1 on a free local port."""
    import deepspeed

    if not torch.distributed.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                               "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
                               "MASTER_PORT": os.environ.get("MASTER_PORT", str(_free_port()))})
        # DeepSpeed's CPU shared-memory all-reduce reads LOCAL_SIZE (its launcher sets it; torchrun does not).
        if "LOCAL_SIZE" not in os.environ:
            os.environ["LOCAL_SIZE"] = os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def shard_model_experts(model: GLMModel, ep_size: int) -> None:
    """Give each rank `E / ep_size` experts of every MoE layer; ranks `g*ep_size .. (g+1)*ep_size-1` share a
    full set."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if world % ep_size:
        raise ValueError(f"ep_size {ep_size} does not divide the world size {world}")
    groups = [torch.distributed.new_group(list(range(g * ep_size, (g + 1) * ep_size)))
              for g in range(world // ep_size)]  # every rank creates every group, in the same order
    group = groups[rank // ep_size]
    for module in model.modules():
        if isinstance(module, MoEMLP):
            shard_experts(module, ep_size, rank % ep_size, group)


def init_inference(model: GLMModel, tp_size: int = 1, ep_size: int = 1, dtype: torch.dtype | None = None,
                   **kwargs: Any) -> Any:
    """`deepspeed.init_inference` for a GLM; returns the InferenceEngine (`engine.module` is the model, changed
    in place). Kernel injection stays off: DeepSpeed has no GLM policy; use `inference_kernels.inject` for ours."""
    import deepspeed

    rank, world = init_distributed()
    if tp_size > world:
        raise ValueError(f"tp_size {tp_size} > world size {world}: launch with deepspeed --num_gpus {tp_size}")
    cfg = model.config
    if ep_size > 1:
        if not cfg.moe_layers:
            raise ValueError("ep_size > 1 needs an MoE model (config.json moe_layers)")
        shard_model_experts(model, ep_size)
    dtype = dtype or (torch.float16 if torch.cuda.is_available() else torch.float32)
    options: dict[str, Any] = {
        "tensor_parallel": {"tp_size": tp_size},
        "dtype": dtype,
        "replace_with_kernel_inject": False,
    }
    if tp_size > 1:
        names = [n for n, _ in model.named_modules()]
        row_parallel = tuple(p for p in ROW_PARALLEL_LINEARS if any(n.endswith(p) for n in names))
        options["injection_policy"] = {InfillingDecoderLayer: row_parallel}
    if cfg.moe_layers:
        options["moe"] = {"enabled": True, "ep_size": ep_size, "moe_experts": [cfg.num_experts]}
    options.update(kwargs)
    return deepspeed.init_inference(model, **options)
