"""sia_kernels: fused kernels and a thin decoder for Sparse Inference-time Alignment."""
from .config import SIAConfig
from .decoding import (
    DecodeState,
    GenerationResult,
    SIALogitsProcessor,
    best_of_n,
    calibrate_tau,
    decode_step,
    generate,
)
from .ops import available_backends, junction_scan, steer
from .types import JunctionScan
from .value import ValueModel

__all__ = [
    "DecodeState", "GenerationResult", "JunctionScan", "SIAConfig", "SIALogitsProcessor", "ValueModel",
    "available_backends", "best_of_n", "calibrate_tau", "decode_step", "generate", "junction_scan", "steer",
]
__version__ = "0.1.0"
