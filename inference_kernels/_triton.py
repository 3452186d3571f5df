"""Triton, when installed; otherwise a stand-in so that the kernel modules still import and the references run.

The kernels are only launched through `dispatch`, which checks `HAS_TRITON` first, so the stand-in's `jit` never
has to produce a runnable kernel.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs without the `kernels` extra
    HAS_TRITON = False

    class _Absent:
        """Just enough of `triton` / `triton.language` for `@triton.jit` and `tl.constexpr` annotations."""

        constexpr = object

        @staticmethod
        def jit(fn=None, **_kwargs):
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 << max(0, (n - 1).bit_length())

    triton = _Absent()  # type: ignore[assignment]
    tl = _Absent()  # type: ignore[assignment]



def launch(kernel, grid: tuple[int, ...], *args, **meta):
    """`kernel[grid](*args, **meta)`, retried with fewer pipeline stages if the GPU runs out of shared memory
    (the tile configs are sized for Hopper; smaller parts or fp32 inputs may need shallower pipelines)."""
    while True:
        try:
            return kernel[grid](*args, **meta)
        except Exception as exc:
            stages = meta.get("num_stages", 3)
            if type(exc).__name__ != "OutOfResources" or stages <= 1:
                raise
            meta = {**meta, "num_stages": stages - 1}


__all__ = ["HAS_TRITON", "launch", "triton", "tl"]
