"""The structured result of a junction scan (docs/design.md §2)."""
from __future__ import annotations

from typing import NamedTuple

import torch


class JunctionScan(NamedTuple):
    """Everything a decode step needs, from one read of the logits ``[B, V]``.

    All fields are preallocated at full size ``B`` so the step is CUDA-graph friendly.
    ``J = num_junctions`` stays on the device; reading it is the step's one host sync.
    """

    entropy: torch.Tensor  # [B] f32, nats, in the chosen scope
    lse: torch.Tensor  # [B] f32, log-normaliser of the full row
    gate: torch.Tensor  # [B] bool, junction or not
    topk_ids: torch.Tensor  # [B, k] i64, sorted by logit descending, ties to the lower id
    topk_logprobs: torch.Tensor  # [B, k] f32, untempered log-probabilities
    base_token: torch.Tensor  # [B] i64, greedy or Gumbel-max sample
    junction_rows: torch.Tensor  # [B] i64, first J valid, ascending
    num_junctions: torch.Tensor  # [1] i32, on the device
    junction_ids: torch.Tensor  # [B, k] i64, first J rows valid
    junction_logprobs: torch.Tensor  # [B, k] f32, first J rows valid


def empty_scan(b: int, k: int, device) -> JunctionScan:
    """Uninitialised outputs at full size ``B`` in the contract's dtypes (``num_junctions`` too)."""
    f32, i64 = dict(dtype=torch.float32, device=device), dict(dtype=torch.int64, device=device)
    return JunctionScan(
        entropy=torch.empty(b, **f32),
        lse=torch.empty(b, **f32),
        gate=torch.empty(b, dtype=torch.bool, device=device),
        topk_ids=torch.empty(b, k, **i64),
        topk_logprobs=torch.empty(b, k, **f32),
        base_token=torch.empty(b, **i64),
        junction_rows=torch.empty(b, **i64),
        num_junctions=torch.empty(1, dtype=torch.int32, device=device),
        junction_ids=torch.empty(b, k, **i64),
        junction_logprobs=torch.empty(b, k, **f32),
    )
