"""The SIA decoder: one decode step, a batched generation loop, Best-of-N, a LogitsProcessor."""
from .best_of_n import BestOfNResult, best_of_n
from .generate import GenerationResult, GenerationStats, RowStats, calibrate_tau, generate
from .logits_processor import SIALogitsProcessor
from .step import DecodeState, StepStats, decode_step

__all__ = [
    "generate", "GenerationResult", "GenerationStats", "RowStats", "calibrate_tau",
    "decode_step", "DecodeState", "StepStats", "best_of_n", "BestOfNResult", "SIALogitsProcessor",
]
