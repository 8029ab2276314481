"""Left padding and position ids: the batch layout shared by the decoder, the value model, training and the demo."""
from __future__ import annotations

import torch

__all__ = ["pad_left", "positions_from_mask"]


def pad_left(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into ``ids [N, L]`` i64 and ``mask [N, L]`` bool (L = longest, at least 1)."""
    L = max([len(s) for s in seqs] + [1])
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, L - len(s):] = True
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``[B, L]`` i64 from a 2D validity mask: cumulative count of real tokens − 1, pads at 0."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)
