"""The decoder's value path: the cached mode equals prefix mode step by step, one host sync per
step, the release's options (first_n with the entropy gate, a value-model prompt), beam search."""
import sys

import pytest
import torch

from .conftest import VOCAB, base_model, left_padded, value_model, word_tokenizer
from sia_kernels.config import SIAConfig
from sia_kernels.decoding import DecodeState, SIALogitsProcessor, calibrate_tau, decode_step, generate

LENGTHS = [5, 9, 2, 7, 4, 6]
EOS = 2


def _forcing(seed):
    """Teacher forcing on some steps (random tokens: mostly not among the candidates, so the cache
    drops them), EOS forced on rows 1 and 4 at steps 11 and 25, the decoder's own choice elsewhere."""
    g = torch.Generator().manual_seed(seed)
    forced = torch.randint(3, VOCAB, (40, len(LENGTHS)), generator=g)

    def hook(step, tokens):
        out = forced[step].clone() if step % 3 == 1 else tokens.clone()
        if step == 11:
            out[1] = EOS
        if step == 25:
            out[4] = EOS
        return out

    return hook


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_cached_values_equal_prefix_values_over_a_40_step_decode(family):
    model, vm = base_model(family), value_model(family)
    ids, mask = left_padded(LENGTHS, seed=21)
    cfg = SIAConfig(gate="random", rate=0.5, greedy=True, k=4, beta=2.0, max_new_tokens=40, eos_token_id=EOS,
                    seed=5, max_junction_batch=4)
    runs = {mode: generate(model, vm, input_ids=ids, attention_mask=mask, config=cfg.replace(value_mode=mode),
                           teacher_tokens=_forcing(3)) for mode in ("cached", "prefix")}
    cached, prefix = runs["cached"], runs["prefix"]
    assert torch.equal(cached.sequences, prefix.sequences)
    assert [r.finished for r in cached.row_stats][1] and cached.row_stats[4].finished
    assert len(cached.steps) == 40 and sum(s.num_junctions for s in cached.steps) > 40
    for a, b in zip(cached.steps, prefix.steps):
        assert a.junction_rows == b.junction_rows
        torch.testing.assert_close(a.values, b.values, atol=1e-4, rtol=0)
        assert not any(a.finished[r] for r in a.junction_rows)
    assert cached.stats.value_token_forwards < prefix.stats.value_token_forwards
    assert cached.stats.value_forwards == prefix.stats.value_forwards == sum(
        -(-s.num_junctions // 4) for s in cached.steps)


def test_dense_with_a_reward_model_is_args():
    """Dense mode with a reward model scores each candidate with its full sequence's reward and
    takes argmax(logprob + beta * reward): ARGS's rule, token for token."""
    from transformers import AutoModelForSequenceClassification

    from .conftest import tiny_config
    from .test_equivalence import dense_reference
    from sia_kernels.value import ValueModel

    model = base_model("llama")
    torch.manual_seed(4)
    rm = ValueModel.from_reward_model(AutoModelForSequenceClassification.from_config(
        tiny_config("llama", num_labels=1, pad_token_id=0, initializer_range=0.3)).eval())
    ids, mask = left_padded([5, 9, 2, 7], seed=2)
    cfg = SIAConfig(gate="always", greedy=True, k=4, beta=2.0, max_new_tokens=8, eos_token_id=None)
    ours = generate(model, rm, input_ids=ids, attention_mask=mask, config=cfg)
    assert torch.equal(ours.sequences, dense_reference(model, rm, ids, mask, k=4, beta=2.0, steps=8))
    assert ours.stats.value_forwards == 8


_CPU_ONLY = ("steer_nosync", "_junction_scan_cpp")
_SYNCS = ("item", "tolist", "__bool__", "__int__", "__index__", "__float__", "nonzero")


@pytest.mark.parametrize("mode", ["cached", "prefix"])
def test_exactly_one_host_sync_per_step(monkeypatch, mode):
    """Patch every way a tensor reaches the host (item, tolist, bool/int/index/float, nonzero and
    boolean-mask indexing) during decode steps: exactly one read per step, junction or not.
    Two reads exist on CPU tensors only (free there, absent on a GPU) and are not counted:
    steer_nosync's n >= J check and the cpp backend's read of the generator's seed."""
    model, vm = base_model("qwen3"), value_model("qwen3")
    ids, mask = left_padded(LENGTHS, seed=8)
    cfg = SIAConfig(gate="random", rate=0.4, greedy=True, k=4, beta=2.0, max_new_tokens=12, eos_token_id=EOS,
                    value_mode=mode, seed=1, max_junction_batch=None)
    state = DecodeState(ids, mask, vm, cfg, eos_token_id=EOS, pad_token_id=0)
    count = [0]

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_name not in _CPU_ONLY:
                count[0] += 1
            return original(self, *args, **kwargs)
        return wrapper

    original_getitem = torch.Tensor.__getitem__

    def getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            count[0] += 1
        return original_getitem(self, index)

    per_step, junctions = [], 0
    with torch.no_grad():
        for _ in range(12):
            pos = (state.mask.long().cumsum(-1) - 1).clamp_min(0)
            logits = model(input_ids=state.ids, attention_mask=state.mask, position_ids=pos).logits[:, -1]
            with monkeypatch.context() as m:
                for name in _SYNCS:
                    m.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
                m.setattr(torch.Tensor, "__getitem__", getitem)
                count[0] = 0
                _, st = decode_step(logits, state, vm, cfg)
                per_step.append(count[0])
            junctions += st.num_junctions
    assert junctions > 0 and per_step == [1] * 12


def test_first_n_combines_with_the_entropy_gate():
    model, vm = base_model("llama"), value_model("llama")
    ids, mask = left_padded([5, 9, 2, 7], seed=14)
    base = SIAConfig(greedy=True, max_new_tokens=10, eos_token_id=None, tau=float("inf"))
    never = generate(model, vm, input_ids=ids, attention_mask=mask, config=base)
    first = generate(model, vm, input_ids=ids, attention_mask=mask, config=base.replace(first_n=3))
    assert [s.junction_rows for s in never.steps] == [[]] * 10
    assert [s.junction_rows for s in first.steps] == [[0, 1, 2, 3]] * 3 + [[]] * 7
    tau = calibrate_tau(model, input_ids=ids, attention_mask=mask, config=base.replace(gate="target_rate", rate=0.3))
    both = generate(model, vm, input_ids=ids, attention_mask=mask, config=base.replace(tau=tau, first_n=2))
    assert [s.junction_rows for s in both.steps[:2]] == [[0, 1, 2, 3]] * 2
    assert 0 < sum(s.num_junctions for s in both.steps[2:]) < 4 * 8  # the entropy gate decides afterwards


def test_value_prompt_is_seen_by_the_value_model_only():
    """With value_template the base model decodes the raw prompt while the value model scores the
    templated one: the values equal prefix scoring of template + generated tokens."""
    tok = word_tokenizer([f"w{i}" for i in range(3, VOCAB)])
    model, vm = base_model("qwen3"), value_model("qwen3")
    prompts = ["w5 w6 w7", "w9", "w10 w11 w12 w13"]
    cfg = SIAConfig(gate="always", greedy=True, k=3, beta=2.0, max_new_tokens=6, eos_token_id=None)
    plain = generate(model, vm, prompts=prompts, tokenizer=tok, config=cfg)
    for mode in ("cached", "prefix"):
        res = generate(model, vm, prompts=prompts, tokenizer=tok, config=cfg.replace(value_mode=mode),
                       value_template="w40 w41 {prompt} w42")
        assert not torch.equal(res.sequences, plain.sequences)  # the value model saw something else
        by_ids = generate(model, vm, prompts=prompts, tokenizer=tok, config=cfg.replace(value_mode=mode),
                          value_prompts=[f"w40 w41 {p} w42" for p in prompts])
        assert torch.equal(by_ids.sequences, res.sequences)
        P = res.prompt_width
        for s in res.steps:
            vp = [tok(f"w40 w41 {p} w42")["input_ids"] + res.sequences[b, P:P + s.step].tolist()
                  for b, p in enumerate(prompts)]
            from sia_kernels.value import pad_left

            vids, vmask = pad_left(vp, 0)
            cand = s.values.new_zeros(0)  # the candidates: the base model's top-k at this step
            seq, m = res.sequences[:, :P + s.step], torch.cat([res.prompt_mask, torch.ones(3, s.step, dtype=torch.bool)], 1)
            with torch.no_grad():
                logits = model(input_ids=seq, attention_mask=m, position_ids=(m.long().cumsum(-1) - 1).clamp_min(0)).logits[:, -1]
                cand = logits.float().topk(3).indices
                want = vm.score_candidates(vids, vmask, cand)
            torch.testing.assert_close(s.values, want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, vm, prompts=prompts, tokenizer=tok, config=cfg, value_template="no placeholder")
    with pytest.raises(ValueError, match="one prompt per row"):
        generate(model, vm, prompts=prompts, tokenizer=tok, config=cfg, value_prompts=["w5"])


def test_logits_processor_refuses_beam_search():
    model, vm = base_model("qwen3"), value_model("qwen3")
    ids, _ = left_padded([6, 6], seed=4)
    proc = SIALogitsProcessor(vm, SIAConfig(gate="always", k=3, beta=2.0, eos_token_id=None))
    with pytest.raises(ValueError, match="beam"):
        model.generate(input_ids=ids, do_sample=False, num_beams=3, max_new_tokens=8, pad_token_id=0,
                       eos_token_id=None, logits_processor=[proc])


@pytest.mark.parametrize("steps", [1, 5])
def test_nan_values_are_an_error_read_with_the_next_sync(steps):
    """A value model that returns NaN is an error, not a silently steered token: the flag rides on
    the next step's read (or on the read after the last step)."""
    from transformers import AutoModelForCausalLM

    from .conftest import tiny_config
    from sia_kernels.value import ValueModel

    model = base_model("qwen3")
    torch.manual_seed(0)
    broken = ValueModel(AutoModelForCausalLM.from_config(tiny_config("qwen3"))).eval()
    torch.nn.init.constant_(broken.head.bias, float("nan"))
    ids, mask = left_padded([4, 6], seed=1)
    cfg = SIAConfig(gate="first_n", first_n=1, greedy=True, k=3, max_new_tokens=steps, eos_token_id=None)
    with pytest.raises(ValueError, match="NaN for junction row 0 at step 0"):
        generate(model, broken, input_ids=ids, attention_mask=mask, config=cfg)
    proc = SIALogitsProcessor(broken, cfg)
    model.generate(input_ids=ids, attention_mask=mask.long(), do_sample=False, max_new_tokens=1, pad_token_id=0,
                   eos_token_id=None, logits_processor=[proc])  # one step: its check awaits the next read
    with pytest.raises(ValueError, match="NaN"):
        proc.flush()


def test_greedy_steer_equals_the_steer_op():
    """The decoder's greedy steering (J read on the host) picks what ``ops.steer(greedy=True)`` picks,
    ties included (to the first candidate)."""
    from sia_kernels.decoding.step import steer_greedy
    from sia_kernels.ops import junction_scan, steer

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, VOCAB, generator=g)
    scan = junction_scan(logits, k=5, tau=torch.tensor([0.0, 9.0, 0.0, 0.0, 9.0, 0.0]), backend="reference")
    J = int(scan.num_junctions)
    values = torch.randn(J, 5, generator=g)
    values[0] = (scan.junction_logprobs[0, 0] - scan.junction_logprobs[0]) / 2.0  # an exact tie at beta = 2
    for beta in (0.0, 2.0, -3.0):
        assert torch.equal(steer_greedy(scan, values, J, beta), steer(scan, values, beta=beta, greedy=True))


def test_the_bound_scan_follows_dtype_and_layout_changes_and_still_checks_rows():
    """After the first step the decoder calls the scan backend directly; logits of another dtype or
    layout go through the checked op again, and a bad row is still an error at any step."""
    vm = value_model("qwen3")
    ids, mask = left_padded([3, 5], seed=4)
    cfg = SIAConfig(gate="never", greedy=True, max_new_tokens=8, eos_token_id=None)
    state = DecodeState(ids, mask, vm, cfg)
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(2, 2 * VOCAB, generator=g)
    for logits in (torch.randn(2, VOCAB, generator=g), torch.randn(2, VOCAB, generator=g).bfloat16(),
                   wide[:, ::2], torch.randn(2, VOCAB, generator=g)):
        tokens, _ = decode_step(logits, state, vm, cfg)
        assert torch.equal(tokens, logits.float().argmax(-1))
    bad = torch.randn(2, VOCAB, generator=g)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        decode_step(bad, state, vm, cfg)
