"""sia_kernels: fused kernels and a thin decoder for Sparse Inference-time Alignment."""
from .ops import available_backends, junction_scan, steer
from .types import JunctionScan

__all__ = ["JunctionScan", "available_backends", "junction_scan", "steer"]
__version__ = "0.1.0"
