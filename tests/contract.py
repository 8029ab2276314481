"""An independent float64 check of the junction-scan contract (docs/design.md §1-2), in numpy, and the
backends the contract suites run.

It shares no code with ``sia_kernels.reference`` so that it checks the reference too. The oracle
is computed once per distinct input (shape, dtype, bytes) and k, scope, and shared by every
backend and test that asks for it.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["reference", "triton", "cuda" if DEVICE == "cuda" else "cpp"]
INTERPRETED_MAX_V = 8192  # Triton's CPU interpreter is too slow past this vocabulary
P_MIN = 1e-6  # sampling tests pass at chi-square p > P_MIN (FlashInfer's threshold)


def slow_if_interpreted(params, backend=lambda p: p):
    """``params`` for parametrize, those that run Triton's CPU interpreter marked ``slow`` (over
    ~3 s each there); ``backend(p)`` names a param's backend."""
    return [pytest.param(p, marks=pytest.mark.slow) if backend(p) == "triton" and DEVICE == "cpu" else p
            for p in params]


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
    """Sorted descending, ties towards the lower id. ``argpartition`` finds the k-th value; only
    the entries at or above it (k, plus any ties with it) are sorted, stably by -z."""
    v = z.shape[-1]
    kth = np.partition(z, v - k, axis=-1)[..., v - k : v - k + 1]
    ids = np.empty(z.shape[:-1] + (k,), dtype=np.int64)
    for r in range(z.shape[0]):
        cand = np.flatnonzero(z[r] >= kth[r])  # ascending ids
        ids[r] = cand[np.argsort(-z[r, cand], kind="stable")[:k]]
    return np.take_along_axis(z, ids, axis=-1), ids


_CACHE: dict[tuple, dict[str, np.ndarray]] = {}


def contract(logits, k: int, scope: str) -> dict[str, np.ndarray]:
    """Expected entropy, lse, top-k ids and log-probs for ``logits [B, V]`` (any float tensor)."""
    z = logits.detach().double().cpu().numpy()
    key = (logits.dtype, z.shape, hashlib.sha1(np.ascontiguousarray(z).view(np.uint8)).hexdigest(), k, scope)
    if key not in _CACHE:
        h_full, lse = entropy_lse_np(z)
        vals, ids = topk_np(z, k)
        h = h_full if scope == "full" else entropy_lse_np(vals)[0]
        _CACHE[key] = {"entropy": h, "lse": lse, "topk_ids": ids, "topk_logprobs": vals - lse[:, None]}
    return _CACHE[key]


def chi_square_p(counts, probs, min_expected: float = 5.0) -> float:
    """p-value of the observed ``counts`` against the probabilities ``probs`` (FlashInfer's
    frequency test): categories expected fewer than ``min_expected`` times are pooled into one;
    a pool still below it is dropped, unless it drew more than twice ``min_expected``."""
    counts, probs = np.asarray(counts, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    expected = probs / probs.sum() * counts.sum()
    rare = expected < min_expected
    obs, exp = list(counts[~rare]), list(expected[~rare])
    if expected[rare].sum() >= min_expected or counts[rare].sum() > 2 * min_expected:
        obs.append(counts[rare].sum())
        exp.append(max(expected[rare].sum(), 1e-300))
    obs, exp = np.array(obs), np.array(exp)
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = max(len(obs) - 1, 1)
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))
