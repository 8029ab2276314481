"""Tokenizer compatibility between a base model and a value model, and a re-tokenizing bridge.

A value model scores the base model's token ids directly only if both share one vocabulary.
Otherwise the scores would be silently wrong, so :func:`check_compatible` refuses the pair unless
``value_model.bridge`` holds a :class:`TokenizerBridge`, which decodes base-model ids to text and
re-encodes the text with the value model's tokenizer.
"""
from __future__ import annotations

import torch

from .padding import pad_left

__all__ = ["TokenizerBridge", "check_compatible"]


def _is_tokenizer(obj) -> bool:
    return callable(getattr(obj, "get_vocab", None)) and callable(getattr(obj, "decode", None))


class TokenizerBridge:
    """Maps base-model token ids to value-model token ids through text.

    Args:
        base_tokenizer: the base model's tokenizer (decodes the ids the decoder produces).
        value_tokenizer: the value model's tokenizer (encodes the text it scores).
    """

    def __init__(self, base_tokenizer, value_tokenizer):
        for name, tok in (("base_tokenizer", base_tokenizer), ("value_tokenizer", value_tokenizer)):
            if not _is_tokenizer(tok):
                raise TypeError(f"{name} must be a Hugging Face tokenizer, got {type(tok).__name__}")
        self.base_tokenizer = base_tokenizer
        self.value_tokenizer = value_tokenizer
        self.base_vocab_size = len(base_tokenizer)
        pad = value_tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)

    def to_value_ids(self, base_ids: list[int]) -> list[int]:
        """Base-model ids (one sequence) to value-model ids: decode (special tokens skipped), re-encode."""
        text = self.base_tokenizer.decode(base_ids, skip_special_tokens=True)
        return list(self.value_tokenizer(text)["input_ids"])

    def encode(self, base_sequences: list[list[int]], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-tokenize sequences; return left-padded ``ids [N, L]`` i64 and ``mask [N, L]`` bool."""
        return pad_left([self.to_value_ids(s) for s in base_sequences], self.pad_id, device)


def check_compatible(base, value_model) -> None:
    """Raise ValueError unless the value model can score the base model's token ids.

    ``base`` is the base model (its ``config.vocab_size`` is compared) or its tokenizer (its
    vocabulary is compared with ``value_model.tokenizer`` when that is set, else its size with the
    value model's vocabulary size). With ``value_model.bridge`` set, ``base`` is checked against
    the bridge's base tokenizer instead.
    """
    bridge = getattr(value_model, "bridge", None)
    if bridge is not None:
        if _is_tokenizer(base):
            if base.get_vocab() != bridge.base_tokenizer.get_vocab():
                raise ValueError("the bridge's base_tokenizer is not the base model's tokenizer")
        elif len(bridge.base_tokenizer) > _vocab_of(base, "base"):
            raise ValueError("the bridge's base_tokenizer has more tokens than the base model's vocabulary")
        return
    value_vocab = value_model.vocab_size
    if _is_tokenizer(base):
        vtok = getattr(value_model, "tokenizer", None)
        if vtok is not None and base.get_vocab() != vtok.get_vocab():
            raise ValueError(
                "base and value model tokenizers differ (different vocabularies); "
                "configure value_model.bridge = TokenizerBridge(base_tokenizer, value_tokenizer)"
            )
        if len(base) > value_vocab:
            raise ValueError(
                f"base tokenizer has {len(base)} tokens but the value model's vocabulary has {value_vocab}; "
                "configure value_model.bridge = TokenizerBridge(base_tokenizer, value_tokenizer)"
            )
        return
    base_vocab = _vocab_of(base, "base")
    if base_vocab != value_vocab:
        raise ValueError(
            f"base model vocab_size {base_vocab} != value model vocab_size {value_vocab}; "
            "configure value_model.bridge = TokenizerBridge(base_tokenizer, value_tokenizer)"
        )


def _vocab_of(model, name) -> int:
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise TypeError(f"{name} must be a Hugging Face model or tokenizer, got {type(model).__name__}")
    return int(cfg.get_text_config().vocab_size)
