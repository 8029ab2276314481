"""Tiny base and value models built offline from configs (no downloads), saved where vLLM can load them."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen3Config

from sia_kernels.value import ValueModel

VOCAB = 96
WORDS = [f"w{i}" for i in range(3, VOCAB)]


def word_tokenizer(words=WORDS) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer: 0 [PAD], 1 [UNK], 2 [EOS], then ``words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def tiny_config(family: str, vocab: int = VOCAB):
    # head_dim 32: the smallest head size vLLM's CPU attention supports
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                  initializer_range=0.3, bos_token_id=None, eos_token_id=2, pad_token_id=0,
                  tie_word_embeddings=False)
    if family == "qwen3":
        return Qwen3Config(head_dim=32, **common)
    if family == "llama":
        return LlamaConfig(head_dim=32, **common)
    raise ValueError(f"family must be 'qwen3' or 'llama', got {family!r}")


def save_base(directory, family: str = "qwen3", seed: int = 0, tokenizer=None) -> Path:
    """A random tiny causal LM in f32 with its tokenizer, as vLLM loads it."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32).eval()
    directory = Path(directory)
    model.save_pretrained(directory)
    (tokenizer or word_tokenizer()).save_pretrained(directory)
    return directory


def save_value(directory, family: str = "llama", seed: int = 1, tokenizer=None, head_std: float = 0.1) -> Path:
    """A random tiny value model. ``head_std`` 0.1 spreads values by ~1, as much as the base model's
    top log-probs: steering changes tokens, and beta changes which (a test can tell beta from 2 beta)."""
    torch.manual_seed(seed)
    backbone = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    vm = ValueModel(backbone).eval()
    torch.nn.init.normal_(vm.head.weight, std=head_std)
    vm.tokenizer = tokenizer or word_tokenizer()
    directory = Path(directory)
    vm.save_pretrained(directory, save_backbone=True)
    return directory
