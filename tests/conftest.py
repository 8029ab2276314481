"""Shared test set-up: without a GPU, Triton kernels run under its CPU interpreter.

TRITON_INTERPRET must be set before triton decorates any kernel, hence here, at import.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
