"""Dialogue evaluation: KdConv replay with ablations, metrics, and a self-contained HTML report."""
