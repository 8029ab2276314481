"""The decoder tests' tiny base and value models, on the shared helpers (tests/helpers.py)."""
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from sia_kernels.value import ValueModel
from ..helpers import FAMILIES, VOCAB, left_padded, tiny_config, word_tokenizer  # noqa: F401  (re-exported)

torch.set_num_threads(1)  # tiny matmuls: threads cost more than they give, and the CPU is shared
warnings.filterwarnings("ignore", message=".*falling back.*")

_CACHE = {}


def base_model(family: str, seed: int = 0):
    """A tiny causal LM (eval, f32, sdpa, 64 positions); no EOS / pad in its config unless a test sets them."""
    key = ("base", family, seed)
    if key not in _CACHE:
        torch.manual_seed(seed)
        m = AutoModelForCausalLM.from_config(tiny_config(family, initializer_range=0.3),
                                             attn_implementation="sdpa").eval()
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
        _CACHE[key] = m
    return _CACHE[key]


def value_model(family: str, seed: int = 1):
    """A tiny value model with a non-trivial head (values spread by O(1), so steering changes tokens)."""
    key = ("value", family, seed)
    if key not in _CACHE:
        torch.manual_seed(seed)
        backbone = AutoModelForCausalLM.from_config(tiny_config(family, initializer_range=0.3),
                                                    attn_implementation="sdpa")
        vm = ValueModel(backbone)
        torch.nn.init.normal_(vm.head.weight, std=1.0)
        _CACHE[key] = vm.eval()
    return _CACHE[key]


@pytest.fixture
def tokenizer():
    return word_tokenizer([f"w{i}" for i in range(3, VOCAB)])
