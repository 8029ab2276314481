"""What the value model needs to know about a Hugging Face backbone (possibly peft-wrapped).

A leaf module: ``model.py``, ``checkpoint.py`` and ``train.py`` all import from here, and it
imports none of them.
"""
from __future__ import annotations

import torch

__all__ = ["unwrap", "body_of", "is_seq_cls", "has_adapter", "merge_adapter"]


def unwrap(backbone: torch.nn.Module) -> torch.nn.Module:
    """The plain HF model inside a (possibly peft-wrapped) backbone; LoRA layers stay injected."""
    get_base = getattr(backbone, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(backbone, "peft_config") else backbone


def body_of(backbone: torch.nn.Module) -> torch.nn.Module:
    """The transformer body (no LM or score head): ``model.model`` for Llama/Qwen, ``transformer`` for GPT-2."""
    owner = unwrap(backbone)
    return getattr(owner, owner.base_model_prefix, owner)


def is_seq_cls(backbone: torch.nn.Module) -> bool:
    return type(unwrap(backbone)).__name__.endswith("ForSequenceClassification")


def has_adapter(backbone: torch.nn.Module) -> bool:
    """A peft model (LoRA adapter kept separate from the base weights)."""
    return hasattr(backbone, "peft_config")


def merge_adapter(backbone: torch.nn.Module) -> torch.nn.Module:
    """The backbone with its LoRA adapter merged into the base weights (``merge_and_unload``), for
    inference: one matmul per projection instead of three. A backbone without an adapter is returned
    as it is."""
    if not has_adapter(backbone):
        return backbone
    merge = getattr(backbone, "merge_and_unload", None)
    if not callable(merge):
        raise TypeError(f"{type(backbone).__name__} has an adapter but no merge_and_unload()")
    return merge()
