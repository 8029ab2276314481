"""Tiny models and tokenizers built offline from configs (no downloads)."""
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast, Qwen3Config

torch.set_num_threads(1)  # tiny matmuls: threading costs more than it gives, and the CPU is shared

VOCAB = 96
FAMILIES = ("qwen3", "llama", "gpt2")


def tiny_config(family: str, vocab: int = VOCAB, **kw):
    if family == "qwen3":
        return Qwen3Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                           max_position_embeddings=128, **kw)
    if family == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **kw)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                          bos_token_id=0, eos_token_id=0, **kw)
    raise ValueError(family)


def tiny_causal_lm(family: str, impl: str = "eager", seed: int = 0, vocab: int = VOCAB):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, vocab), attn_implementation=impl).eval()


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer; id 0 is [PAD], id 1 is [UNK], then `words` in order."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


@pytest.fixture
def tokenizer():
    return word_tokenizer([f"t{i}" for i in range(2, VOCAB)])
