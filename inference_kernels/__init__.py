"""Fused inference kernels (Triton) beside their PyTorch references."""
