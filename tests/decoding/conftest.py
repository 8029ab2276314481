"""Tiny base and value models built offline from configs (no downloads), shared by the decoder tests."""
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast, Qwen3Config

from sia_kernels.value import ValueModel

torch.set_num_threads(1)  # tiny matmuls: threads cost more than they give, and the CPU is shared
warnings.filterwarnings("ignore", message=".*falling back.*")

VOCAB = 96
FAMILIES = ("qwen3", "llama", "gpt2")


def tiny_config(family: str, vocab: int = VOCAB, **kw):
    common = dict(vocab_size=vocab, max_position_embeddings=64, initializer_range=0.3)
    if family == "qwen3":
        return Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=8, **common, **kw)
    if family == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, **common, **kw)
    if family == "gpt2":
        common["n_positions"] = common.pop("max_position_embeddings")
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, bos_token_id=None, eos_token_id=None, **common, **kw)
    raise ValueError(family)


_CACHE = {}


def base_model(family: str, seed: int = 0):
    """A tiny causal LM (eval, f32, sdpa); no EOS / pad in its config unless a test sets them."""
    key = ("base", family, seed)
    if key not in _CACHE:
        torch.manual_seed(seed)
        m = AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation="sdpa").eval()
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
        _CACHE[key] = m
    return _CACHE[key]


def value_model(family: str, seed: int = 1):
    """A tiny value model with a non-trivial head (values spread by O(1), so steering changes tokens)."""
    key = ("value", family, seed)
    if key not in _CACHE:
        torch.manual_seed(seed)
        backbone = AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation="sdpa")
        vm = ValueModel(backbone)
        torch.nn.init.normal_(vm.head.weight, std=1.0)
        _CACHE[key] = vm.eval()
    return _CACHE[key]


def left_padded(lengths, seed=0, vocab=VOCAB):
    """Random prompts of the given lengths, left-padded with 0: ids [B, L] i64, mask [B, L] bool."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), L), generator=g)
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for j, n in enumerate(lengths):
        mask[j, L - n:] = True
    return ids.masked_fill(~mask, 0), mask


def word_tokenizer(words, pad=True, eos=True) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer: 0 [PAD], 1 [UNK], 2 [EOS], then ``words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kw = {"unk_token": "[UNK]"}
    if pad:
        kw["pad_token"] = "[PAD]"
    if eos:
        kw["eos_token"] = "[EOS]"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


@pytest.fixture
def tokenizer():
    return word_tokenizer([f"w{i}" for i in range(3, VOCAB)])
