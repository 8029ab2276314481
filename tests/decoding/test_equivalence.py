"""The decoder against independent implementations: Hugging Face generate, a dense re-run loop,
the LogitsProcessor path, and decode_step inside a user-owned loop."""
import pytest
import torch

from .conftest import FAMILIES, base_model, left_padded, value_model
from sia_kernels.config import SIAConfig
from sia_kernels.decoding import SIALogitsProcessor, calibrate_tau, decode_step, generate
from sia_kernels.decoding.step import DecodeState

LENGTHS = [5, 9, 2, 7]  # different prompt lengths: left padding


@pytest.mark.parametrize("family,lengths", [(f, LENGTHS) for f in FAMILIES] + [("qwen3", [6, 6, 6])])
def test_never_greedy_equals_hf_generate(family, lengths):
    """Left-padded prompts, and prompts without padding (the base model then gets no mask)."""
    model, vm = base_model(family), value_model(family)
    ids, mask = left_padded(lengths, seed=1)
    cfg = SIAConfig(gate="never", greedy=True, max_new_tokens=14, eos_token_id=None)
    ours = generate(model, vm, input_ids=ids, attention_mask=mask, config=cfg)
    hf = model.generate(input_ids=ids, attention_mask=mask.long(), do_sample=False, max_new_tokens=14,
                        pad_token_id=0, eos_token_id=None)
    assert torch.equal(ours.sequences, hf)
    assert ours.stats.junctions == 0 and ours.stats.value_token_forwards == 0 and ours.stats.value_calls == 0


@torch.no_grad()
def dense_reference(model, vm, ids, mask, *, k, beta, steps):
    """ARGS written plainly: re-run the whole sequence every step (no KV cache), then score each
    of the k candidates with its own full values() forward; argmax of logprob + beta * value."""
    ids, mask = ids.clone(), mask.clone()
    for _ in range(steps):
        pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
        logp = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float().log_softmax(-1)
        top_lp, top_ids = logp.topk(k, dim=-1)
        ones = torch.ones_like(mask[:, :1])
        v = torch.stack([vm.values(torch.cat([ids, top_ids[:, i:i + 1]], 1), torch.cat([mask, ones], 1))[:, -1]
                         for i in range(k)], 1)
        nxt = top_ids.gather(1, (top_lp + beta * v).argmax(-1, keepdim=True))
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, ones], 1)
    return ids


@pytest.mark.parametrize("family,mode", [("qwen3", "cached"), ("llama", "prefix"), ("gpt2", "cached"),
                                         ("qwen3", "prefix")])
def test_always_greedy_equals_dense_rerun_loop(family, mode):
    model, vm = base_model(family), value_model(family)
    ids, mask = left_padded(LENGTHS, seed=2)
    cfg = SIAConfig(gate="always", greedy=True, k=4, beta=2.0, max_new_tokens=8, eos_token_id=None,
                    value_mode=mode, max_junction_batch=3)  # 3 < B: chunked value calls
    ours = generate(model, vm, input_ids=ids, attention_mask=mask, config=cfg)
    ref = dense_reference(model, vm, ids, mask, k=4, beta=2.0, steps=8)
    assert torch.equal(ours.sequences, ref)
    assert ours.stats.junctions == len(LENGTHS) * 8
    base = generate(model, vm, input_ids=ids, attention_mask=mask, config=cfg.replace(gate="never"))
    assert not torch.equal(base.sequences, ours.sequences)  # the value model did steer


@pytest.mark.parametrize("family,sample_from", [("qwen3", "topk"), ("llama", "full")])
def test_logits_processor_equals_generate_under_greedy(family, sample_from):
    model, vm = base_model(family), value_model(family)
    ids, mask = left_padded(LENGTHS, seed=3)
    cfg = SIAConfig(gate="entropy", greedy=True, k=5, beta=2.0, max_new_tokens=12, eos_token_id=None,
                    sample_from=sample_from)
    tau = calibrate_tau(model, input_ids=ids, attention_mask=mask, config=cfg.replace(gate="target_rate", rate=0.5))
    cfg = cfg.replace(tau=tau)
    ours = generate(model, vm, input_ids=ids, attention_mask=mask, config=cfg)
    assert 0 < ours.stats.junctions < len(LENGTHS) * 12
    proc = SIALogitsProcessor(vm, cfg, attention_mask=mask)
    hf = model.generate(input_ids=ids, attention_mask=mask.long(), do_sample=False, max_new_tokens=12,
                        pad_token_id=0, eos_token_id=None, logits_processor=[proc])
    assert torch.equal(hf, ours.sequences)
    assert sum(s.num_junctions for s in proc.steps) == ours.stats.junctions
    assert [s.junction_rows for s in proc.steps] == [s.junction_rows for s in ours.steps]


def test_logits_processor_scores():
    """Junction rows: -inf outside the top-k, logprob + beta * value inside; other rows untouched
    (sample_from='full') or restricted to their top-k (sample_from='topk')."""
    model, vm = base_model("qwen3"), value_model("qwen3")
    ids, mask = left_padded([4, 6], seed=4)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits[:, -1]
    kinds = set()
    for sample_from in ("full", "topk"):
        cfg = SIAConfig(gate="random", rate=0.5, k=3, beta=1.5, sample_from=sample_from, eos_token_id=None, seed=5)
        proc = SIALogitsProcessor(vm, cfg, attention_mask=mask)
        out = proc(ids, logits.clone())
        rows = proc.steps[0].junction_rows
        lp, top = logits.log_softmax(-1).topk(3)
        for b in range(2):
            finite = out[b].isfinite()
            kinds.add(b in rows)
            if b in rows:
                assert set(finite.nonzero().flatten().tolist()) == set(top[b].tolist())
                v = vm.values(torch.cat([ids[b:b + 1].expand(3, -1), top[b][:, None]], 1),
                              torch.cat([mask[b:b + 1].expand(3, -1), torch.ones(3, 1, dtype=torch.bool)], 1))[:, -1]
                torch.testing.assert_close(out[b, top[b]], lp[b] + 1.5 * v, atol=1e-4, rtol=0)
            elif sample_from == "full":
                assert torch.equal(out[b], logits[b])
            else:
                assert set(finite.nonzero().flatten().tolist()) == set(top[b].tolist())
                assert torch.equal(out[b, top[b]], logits[b, top[b]])
    assert kinds == {True, False}  # both kinds of row were checked


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decode_step_in_a_user_loop_equals_generate(family):
    """decode_step is the drop-in: a loop that owns its forward (here: full re-runs, no KV cache)
    gets generate's tokens."""
    model, vm = base_model(family), value_model(family)
    ids, mask = left_padded(LENGTHS, seed=6)
    cfg = SIAConfig(gate="random", rate=0.4, greedy=True, k=4, beta=2.0, max_new_tokens=10, eos_token_id=None, seed=3)
    ours = generate(model, vm, input_ids=ids, attention_mask=mask, config=cfg)
    state = DecodeState(ids, mask, vm, cfg, pad_token_id=0)
    with torch.no_grad():
        for _ in range(10):
            pos = (state.mask.long().cumsum(-1) - 1).clamp_min(0)
            logits = model(input_ids=state.ids, attention_mask=state.mask, position_ids=pos).logits[:, -1]
            decode_step(logits, state, vm, cfg)
    assert torch.equal(state.ids, ours.sequences)
    assert state.row_junctions == [r.junctions for r in ours.row_stats]
