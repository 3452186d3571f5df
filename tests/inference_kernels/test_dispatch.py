"""The switch and the choice of implementation, as far as a machine without CUDA can see them."""

import pytest
import torch

from inference_kernels import backend_name, kernels_enabled, use_triton


@pytest.mark.parametrize("value,enabled", [("off", False), ("OFF", False), ("0", False), ("no", False), ("on", True), ("1", True)])
def test_xdai_kernels_switch(monkeypatch, value, enabled):
    monkeypatch.setenv("XDAI_KERNELS", value)
    assert kernels_enabled() is enabled


def test_cpu_tensors_use_the_reference(monkeypatch):
    monkeypatch.delenv("XDAI_KERNELS", raising=False)
    x = torch.randn(2, 3)
    assert not use_triton(x) and backend_name(x) == "reference"
    assert not use_triton()  # no tensors: nothing to put on a GPU
