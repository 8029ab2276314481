"""Input checks shared by the value model and its cache: ValueError / TypeError naming the argument."""
from __future__ import annotations

import torch

__all__ = ["check_ids", "check_mask", "read_ids", "check_candidates"]


def check_ids(name, ids, dim, device):
    """Type, rank and device of ``ids`` (no host read)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be int64 or int32, got {ids.dtype}")
    if ids.dim() != dim:
        raise ValueError(f"{name} must be {dim}D, got shape {tuple(ids.shape)}")
    if ids.device != device:
        raise ValueError(f"{name} is on {ids.device} but the value model is on {device}")


def check_mask(name, mask, shape, device):
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but the value model is on {device}")
    if mask.dtype != torch.bool and mask.is_floating_point():
        raise TypeError(f"{name} must be bool or integer (1 = real token), got {mask.dtype}")
    return mask.bool()


def read_ids(name, ids, valid, vocab_size=None, *, left_padded=False) -> list[int]:
    """The boundary check, in one host read: the real (``valid``) ids lie in ``[0, vocab_size)``
    (when given; and, with ``left_padded``, every row is left-padded). Returns the real tokens per row."""
    B = ids.shape[0]
    if ids.numel() == 0:
        return [0] * B
    real = torch.where(valid, ids.long(), 0)
    flags = [real.amin().reshape(1), real.amax().reshape(1)]
    if left_padded and ids.shape[1] > 1:
        flags.append((valid[:, :-1] & ~valid[:, 1:]).any().long().reshape(1))
    packed = torch.cat(flags + [valid.long().sum(-1)]).tolist()
    if vocab_size is not None and (packed[0] < 0 or packed[1] >= vocab_size):
        raise ValueError(f"{name} holds token ids outside the value model's vocabulary [0, {vocab_size})")
    if left_padded and ids.shape[1] > 1 and packed[2]:
        raise ValueError(f"the mask of {name} must be left-padded (0s before the 1s in every row)")
    return packed[-B:]


def check_candidates(candidates, J, device, vocab=None):
    """Shape, type and device of ``candidates [J, k]``; with ``vocab``, also the range (one host read)."""
    check_ids("candidates", candidates, 2, device)
    if candidates.shape[0] != J:
        raise ValueError(f"candidates has {candidates.shape[0]} rows, expected {J}")
    if candidates.shape[1] < 1:
        raise ValueError("candidates must hold k >= 1 tokens per row")
    if vocab is not None and candidates.numel():
        lo, hi = torch.stack(torch.aminmax(candidates)).tolist()
        if lo < 0 or hi >= vocab:
            raise ValueError(f"candidates holds token ids outside the vocabulary [0, {vocab})")
