"""Token-level value model: scoring (tree, and a per-row KV cache), checkpoints, training, tokenizer bridge."""
from .bridge import TokenizerBridge, check_compatible
from .cache import ValueCache
from .model import ValueCounters, ValueModel
from .padding import pad_left, positions_from_mask
from .train import ValueTrainConfig, add_train_value_args, train_value, train_value_main

__all__ = [
    "ValueModel", "ValueCache", "ValueCounters", "TokenizerBridge", "check_compatible", "pad_left", "positions_from_mask",
    "ValueTrainConfig", "train_value", "add_train_value_args", "train_value_main",
]
