"""One set of test helpers: tiny models built offline from configs (no downloads), a word-level
tokenizer, left-padded random prompts. ``tests/decoding/conftest.py`` and ``tests/value/conftest.py``
only bind the defaults their tests were written with."""
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast, Qwen3Config

VOCAB = 96
FAMILIES = ("qwen3", "llama", "gpt2")


def tiny_config(family: str, vocab: int = VOCAB, *, positions: int = 64, gpt2_special_id=None, **kw):
    """A 2-layer, 32-wide config of ``family`` ("qwen3", "llama", "gpt2"); ``kw`` go to the config."""
    common = dict(vocab_size=vocab, **kw)
    if family == "qwen3":
        return Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=8, max_position_embeddings=positions, **common)
    if family == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=positions, **common)
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=positions, bos_token_id=gpt2_special_id,
                          eos_token_id=gpt2_special_id, **common)
    raise ValueError(family)


def tiny_causal_lm(family: str, impl: str = "eager", seed: int = 0, vocab: int = VOCAB, **config_kw):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, vocab, **config_kw), attn_implementation=impl).eval()


def word_tokenizer(words, pad: bool = True, eos: bool = True) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer: 0 [PAD], 1 [UNK], 2 [EOS] (with ``eos``), then ``words``.
    ``pad=False``: [PAD] stays in the vocabulary but is not the tokenizer's pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["[PAD]", "[UNK]"] + (["[EOS]"] if eos else [])
    vocab = {w: i for i, w in enumerate(specials + list(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kw = {"unk_token": "[UNK]"}
    if pad:
        kw["pad_token"] = "[PAD]"
    if eos:
        kw["eos_token"] = "[EOS]"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


def left_padded(lengths, seed=0, vocab=VOCAB, low=3, pad_id=0):
    """Random prompts of the given lengths (ids in ``[low, vocab)``), left-padded with ``pad_id``
    (None: the padding keeps random ids, which must not matter): ids [B, L] i64, mask [B, L] bool."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(low, vocab, (len(lengths), L), generator=g)
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for j, n in enumerate(lengths):
        mask[j, L - n:] = True
    return (ids if pad_id is None else ids.masked_fill(~mask, pad_id)), mask
