"""The transformers-cache adapter (sia_kernels/value/hf_cache.py), and the value model under both
cache keywords: ``cache=`` (transformers >= 5.20) and ``past_key_values=`` (5.19, which drops ``cache=``)."""
import pytest
import torch

from .conftest import VOCAB, tiny_causal_lm
from .test_value_model import left_padded, reference_scores
from sia_kernels.value import ValueModel
from sia_kernels.value.backbone import body_of
from sia_kernels.value.hf_cache import cache_from_layers, cache_keyword, cache_layers, new_cache


def test_cache_round_trip_and_keyword():
    layers = [(torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)) for _ in range(3)]
    cache = cache_from_layers(layers)
    back = cache_layers(cache)
    assert len(back) == 3 and cache.get_seq_length() == 5
    for (k, v), (k2, v2) in zip(layers, back):
        assert torch.equal(k, k2) and torch.equal(v, v2)
    assert cache_layers(new_cache()) == []
    body = body_of(tiny_causal_lm("qwen3"))
    assert cache_keyword(body) == "cache"

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None):
            return input_ids

    class Neither(torch.nn.Module):
        def forward(self, input_ids=None):
            return input_ids

    assert cache_keyword(Old()) == "past_key_values"
    with pytest.raises(TypeError, match="neither"):
        cache_keyword(Neither())


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_value_model_with_a_past_key_values_body(family):
    """A body whose forward takes ``past_key_values`` (as in transformers 5.19): passing ``cache=``
    there would collide with the shim below; the cached scores still equal k full forwards."""
    vm = ValueModel(tiny_causal_lm(family)).eval()
    torch.nn.init.normal_(vm.head.weight)
    body = body_of(vm.backbone)
    new_style = type(body)

    class OldStyle(new_style):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=None, **kw):
            return new_style.forward(self, input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=position_ids, cache=past_key_values, use_cache=use_cache, **kw)

    body.__class__ = OldStyle
    ids, mask = left_padded([5, 3, 6], seed=2)
    cand = torch.randint(0, VOCAB, (3, 4), generator=torch.Generator().manual_seed(1))
    cache = vm.cache(ids[:, :4], mask[:, :4])
    for t in range(4, 6):
        cache.append(ids[:, t])
    got = cache.score(torch.tensor([0, 1, 2]), cand)
    torch.testing.assert_close(got, reference_scores(vm, ids, mask, cand), atol=1e-4, rtol=0)
