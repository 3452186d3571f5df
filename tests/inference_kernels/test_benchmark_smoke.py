"""benchmarks/kernels.py end to end on CPU (--smoke: tiny sizes, Triton interpreter), so the GPU run's plumbing,
result files and correctness column are checked before a device is ever lent."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


def test_benchmark_smoke_writes_every_op(interpret, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("kernels_benchmark", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "kernels_benchmark", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--no-deepspeed", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "kernels.json").read_text())
    ops = {r["op"] for r in record["results"]}
    assert ops == {"moe", "attention", "norm"}
    for r in record["results"]:
        assert "triton" in r["ms"] and "eager" in r["ms"], r
        assert r["max_abs_diff"] < 1e-4, r  # the kernels agree with eager PyTorch
    assert "| moe |" in (tmp_path / "kernels.md").read_text()
