"""The structured result of a junction scan (DESIGN.md §2)."""
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
