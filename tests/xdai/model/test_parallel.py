"""DeepSpeed-Inference on CPU: float32, gloo, no kernel injection — one rank, and two ranks with tensor and
expert parallelism. Each rank is a subprocess, as `deepspeed --num_gpus N` would start it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed", reason="DeepSpeed is installed by `make install`")

WORKER = Path(__file__).with_name("ds_worker.py")
ROOT = Path(__file__).resolve().parents[3]  # the repository root, so that the worker can import tests.helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world: int, tp: int, ep: int, config: dict) -> list[dict]:
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_SIZE": str(world),
               "OMP_NUM_THREADS": "1", "XDAI_KERNELS": "off",
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(tp), str(ep), json.dumps(config)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.slow
def test_init_inference_single_rank_cpu():
    (r,) = run_ranks(1, tp=1, ep=1, config={"moe_layers": [1], "num_experts": 4, "moe_top_k": 2})
    assert r["engine"] == "InferenceEngine" and r["world"] == 1
    assert r["max_diff"] < 1e-5 and r["same_fill"]


@pytest.mark.slow
def test_tensor_and_expert_parallel_two_ranks_cpu():
    config = {"moe_layers": [0, 1], "num_experts": 4, "moe_top_k": 2, "moe_capacity_factor": 1.0,
              "moe_shared_expert": True}
    results = run_ranks(2, tp=2, ep=2, config=config)
    for r in results:
        assert r["world"] == 2
        assert r["qkv_rows"] == 3 * 32 // 2  # query_key_value really sharded: half the heads per rank
        assert r["max_diff"] < 1e-5, r
        assert r["same_fill"], r
