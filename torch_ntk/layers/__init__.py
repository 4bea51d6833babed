"""The kernels' layer kinds (descriptors a lifted spec is made of)."""

from .descriptors import AvgPool, Conv, Dense, Flatten, GlobalAvgPool

__all__ = ["AvgPool", "Conv", "Dense", "Flatten", "GlobalAvgPool"]
