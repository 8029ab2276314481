"""Bad input is a clear error (ValueError / TypeError naming what is wrong), never a silent result."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from .conftest import VOCAB, base_model, left_padded, tiny_config, value_model, word_tokenizer
from sia_kernels.config import MODEL_DEFAULT, SIAConfig
from sia_kernels.decoding import DecodeState, SIALogitsProcessor, decode_step, generate
from sia_kernels.value import ValueModel


@pytest.mark.parametrize("kw,exc,field", [
    (dict(k=0), ValueError, "k"), (dict(k=2.0), TypeError, "k"), (dict(beta=float("nan")), ValueError, "beta"),
    (dict(tau=float("nan")), ValueError, "tau"), (dict(entropy_scope="all"), ValueError, "entropy_scope"),
    (dict(temperature=-1.0), ValueError, "temperature"), (dict(greedy=1), TypeError, "greedy"),
    (dict(sample_from="top"), ValueError, "sample_from"), (dict(gate="sometimes"), ValueError, "gate"),
    (dict(gate="random"), ValueError, "rate"), (dict(gate="target_rate", rate=1.5), ValueError, "rate"),
    (dict(rate=0.2), ValueError, "rate"), (dict(gate="first_n"), ValueError, "first_n"),
    (dict(gate="first_n", first_n=-1), ValueError, "first_n"), (dict(gate="always", first_n=2), ValueError, "first_n"), (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(eos_token_id="x"), ValueError, "eos_token_id"), (dict(eos_token_id=[]), ValueError, "eos_token_id"),
    (dict(value_mode="tree"), ValueError, "value_mode"), (dict(max_junction_batch=0), ValueError, "max_junction_batch"),
    (dict(seed=-1), ValueError, "seed"), (dict(backend="gpu"), ValueError, "backend"),
])
def test_config_validation_names_the_field(kw, exc, field):
    with pytest.raises(exc, match=rf"SIAConfig\.{field}\b"):
        SIAConfig(**kw)


def test_config_defaults_and_replace():
    c = SIAConfig()
    assert (c.k, c.beta, c.tau, c.entropy_scope, c.temperature, c.greedy, c.sample_from, c.gate) == \
        (10, 1.0, 1.0, "topk", 1.0, False, "topk", "entropy")
    assert c.eos_token_id is MODEL_DEFAULT and c.value_mode == "cached"
    assert SIAConfig(eos_token_id=[3, 4]).eos_token_id == (3, 4) and SIAConfig(eos_token_id=None).eos_token_id is None
    assert c.replace(tau=2.0).tau == 2.0 and c.tau == 1.0
    with pytest.raises(TypeError, match="taux"):
        c.replace(taux=1.0)
    with pytest.raises(TypeError):
        SIAConfig(10)  # keyword-only


def test_bad_generate_inputs(tokenizer):
    model, vm = base_model("qwen3"), value_model("qwen3")
    cfg = SIAConfig(greedy=True, max_new_tokens=4, eos_token_id=None)
    with pytest.raises(ValueError, match="non-empty list"):
        generate(model, vm, prompts=[], tokenizer=tokenizer, config=cfg)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, vm, prompts=["w4", ""], tokenizer=tokenizer, config=cfg)
    with pytest.raises(ValueError, match="needs tokenizer"):
        generate(model, vm, prompts=["w4"], config=cfg)
    with pytest.raises(ValueError, match="exactly one"):
        generate(model, vm, config=cfg)
    ids, mask = left_padded([3, 4])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, vm, input_ids=ids, attention_mask=torch.tensor([[1] * 4, [0] * 4]), config=cfg)
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, vm, input_ids=torch.zeros(0, 3, dtype=torch.long), config=cfg)
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, vm, input_ids=ids, attention_mask=mask.flip(-1), config=cfg)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(model, vm, input_ids=torch.full((1, 3), VOCAB), config=cfg)
    with pytest.raises(TypeError, match="SIAConfig"):
        generate(model, vm, input_ids=ids, config={"k": 3})
    with pytest.raises(TypeError, match="needs a value model"):
        generate(model, None, input_ids=ids, config=cfg)


def test_prompt_longer_than_the_context():
    model, vm = base_model("llama"), value_model("llama")  # 64 positions
    cfg = SIAConfig(greedy=True, max_new_tokens=8, eos_token_id=None)
    with pytest.raises(ValueError, match="shorten the prompt"):
        generate(model, vm, input_ids=torch.full((1, 70), 5), config=cfg)
    with pytest.raises(ValueError, match="lower max_new_tokens"):
        generate(model, vm, input_ids=torch.full((1, 60), 5), config=cfg)
    generate(model, vm, input_ids=torch.full((1, 56), 5), config=cfg)  # exactly fits


def test_tokenizer_without_pad_token_uses_eos():
    model, vm = base_model("llama"), value_model("llama")
    model_pad = model.generation_config.pad_token_id
    model.generation_config.pad_token_id = None
    try:
        tok = word_tokenizer([f"w{i}" for i in range(3, VOCAB)], pad=False)
        assert tok.pad_token_id is None
        res = generate(model, vm, prompts=["w5 w6 w7", "w8"], tokenizer=tok,
                       config=SIAConfig(greedy=True, max_new_tokens=5))
        assert res.sequences[1, :2].tolist() == [2, 2]  # padded with EOS (id 2)
        assert tok.pad_token_id is None  # the user's tokenizer is untouched
    finally:
        model.generation_config.pad_token_id = model_pad


def test_models_on_different_devices_and_vocabularies():
    model = base_model("qwen3")
    meta = ValueModel(AutoModelForCausalLM.from_config(tiny_config("qwen3")).to("meta"))
    ids, _ = left_padded([3])
    with pytest.raises(ValueError, match="base model is on cpu but the value model is on meta"):
        generate(model, meta, input_ids=ids, config=SIAConfig(max_new_tokens=2))
    other = ValueModel(AutoModelForCausalLM.from_config(tiny_config("qwen3", vocab=VOCAB + 8)))
    with pytest.raises(ValueError, match="vocab"):
        generate(model, other, input_ids=ids, config=SIAConfig(max_new_tokens=2))


def test_decode_step_and_processor_bad_inputs():
    model, vm = base_model("qwen3"), value_model("qwen3")
    ids, mask = left_padded([3, 4])
    cfg = SIAConfig(max_new_tokens=2, eos_token_id=None)
    state = DecodeState(ids, mask, vm, cfg)
    with pytest.raises(ValueError, match=r"\[B, V\]"):
        decode_step(torch.zeros(3, VOCAB), state, vm, cfg)
    with pytest.raises(ValueError, match="calibrate_tau"):
        DecodeState(ids, mask, vm, SIAConfig(gate="target_rate", rate=0.2))
    with pytest.raises(ValueError, match="row 0 contains NaN"):
        decode_step(torch.full((2, VOCAB), float("nan")), state, vm, cfg)
    with pytest.raises(ValueError, match="entries per row"):  # candidates could fall outside the value vocabulary
        decode_step(torch.zeros(2, VOCAB + 4), state, vm, cfg)
    with pytest.raises(ValueError, match="vocabulary"):  # checked once, when the state is built
        DecodeState(torch.full((1, 3), VOCAB), None, vm, cfg)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        DecodeState(ids, torch.tensor([[1] * 4, [0] * 4]), vm, cfg)
    with pytest.raises(TypeError, match="value model"):
        SIALogitsProcessor(None, cfg)
    with pytest.raises(TypeError, match="SIAConfig"):
        SIALogitsProcessor(vm, None)
