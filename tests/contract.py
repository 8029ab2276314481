"""An independent float64 check of the junction-scan contract (DESIGN.md §1-2), in numpy.

It shares no code with ``sia_kernels.reference`` so that it checks the reference too.
"""
from __future__ import annotations

import numpy as np


def entropy_lse_np(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entropy (nats) and logsumexp along the last axis, float64, -inf safe."""
    m = z.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.exp(z - m)
        d = e.sum(axis=-1)
        p = e / d[..., None]
        logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -(p * logp).sum(axis=-1), m[..., 0] + np.log(d)


def topk_np(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted descending, ties towards the lower id (a stable sort of -z)."""
    ids = np.argsort(-z, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(z, ids, axis=-1), ids


def contract(logits, k: int, scope: str) -> dict[str, np.ndarray]:
    """Expected entropy, lse, top-k ids and log-probs for ``logits [B, V]`` (any float tensor)."""
    z = logits.detach().double().cpu().numpy()
    h_full, lse = entropy_lse_np(z)
    vals, ids = topk_np(z, k)
    h = h_full if scope == "full" else entropy_lse_np(vals)[0]
    return {"entropy": h, "lse": lse, "topk_ids": ids, "topk_logprobs": vals - lse[:, None]}
