"""The value tests' defaults for the shared helpers (tests/helpers.py)."""
import pytest
import torch

from .. import helpers
from ..helpers import FAMILIES, VOCAB  # noqa: F401  (re-exported for the value tests)

torch.set_num_threads(1)  # tiny matmuls: threading costs more than it gives, and the CPU is shared


def tiny_config(family: str, vocab: int = VOCAB, **kw):
    """128 positions, GPT-2 with BOS/EOS 0, the configs' own initialisation."""
    return helpers.tiny_config(family, vocab, positions=128, gpt2_special_id=0, **kw)


def tiny_causal_lm(family: str, impl: str = "eager", seed: int = 0, vocab: int = VOCAB):
    return helpers.tiny_causal_lm(family, impl, seed, vocab, positions=128, gpt2_special_id=0)


def word_tokenizer(words: list[str]):
    """id 0 [PAD], 1 [UNK], then ``words`` (no EOS)."""
    return helpers.word_tokenizer(words, eos=False)


@pytest.fixture
def tokenizer():
    return word_tokenizer([f"t{i}" for i in range(2, VOCAB)])
