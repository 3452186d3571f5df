"""Kernel tests: Triton paths run on CPU tensors in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton); `gpu` tests need CUDA and a compiled (not interpreted) Triton.
"""

import pytest
import torch

from inference_kernels.dispatch import interpreting


@pytest.fixture
def interpret() -> None:
    """Skip unless Triton kernels can run in the CPU interpreter (triton installed, TRITON_INTERPRET=1)."""
    if not interpreting():
        pytest.skip("needs triton with TRITON_INTERPRET=1 (set by tests/conftest.py unless overridden)")


@pytest.fixture
def cuda() -> torch.device:
    """Skip unless a CUDA device and compiled Triton are available."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if interpreting():
        pytest.skip("TRITON_INTERPRET=1 is set: run GPU tests with TRITON_INTERPRET=0")
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
