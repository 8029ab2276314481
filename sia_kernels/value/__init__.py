"""Token-level value model: scoring (tree and cached), checkpoints, training, tokenizer bridge."""
from .bridge import TokenizerBridge, check_compatible
from .model import ValueCache, ValueCounters, ValueModel
from .train import ValueTrainConfig, add_train_value_args, train_value, train_value_main

__all__ = [
    "ValueModel", "ValueCache", "ValueCounters", "TokenizerBridge", "check_compatible",
    "ValueTrainConfig", "train_value", "add_train_value_args", "train_value_main",
]
