"""generate(): value token-forward accounting, EOS, gates, target rate, seeds, teacher forcing, Best-of-N."""
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from .conftest import VOCAB, base_model, left_padded, tiny_config, value_model
from sia_kernels.config import SIAConfig
from sia_kernels.decoding import best_of_n, calibrate_tau, generate
from sia_kernels.value import ValueModel

LENGTHS = [5, 9, 2, 7, 4, 6]


def median_tau(model, ids, mask, cfg):
    return calibrate_tau(model, input_ids=ids, attention_mask=mask, config=cfg.replace(gate="target_rate", rate=0.5))


def predicted_value_forwards(result, mode, k):
    """Value token-forwards implied by the junction rows alone (docs/design.md §3 accounting): prefix
    re-runs each junction row's prefix; cached runs the row's tokens since its last junction (the
    chosen candidate's KV is kept, so not that one), plus k candidates per junction row."""
    plen = result.prompt_mask.sum(-1).tolist()
    done = [0] * len(plen)  # real tokens in the value cache, per row
    total = 0
    for s in result.steps:
        for b in s.junction_rows:
            n = plen[b] + s.step
            total += (n if mode == "prefix" else n - done[b]) + k
            done[b] = n + 1
    return total


def first_positions(new_tokens):
    """{token: {row: first step}} over the generated tokens."""
    out = {}
    for b, row in enumerate(new_tokens.tolist()):
        for t, tok in enumerate(row):
            out.setdefault(tok, {}).setdefault(b, t)
    return out


@pytest.mark.parametrize("family,mode", [("qwen3", "cached"), ("llama", "prefix"), ("gpt2", "cached"), ("qwen3", "auto")])
def test_eos_stops_rows_independently_and_forwards_match_junction_counts(family, mode):
    model, vm = base_model(family), value_model(family)
    ids, mask = left_padded(LENGTHS, seed=11)
    cfg = SIAConfig(greedy=True, k=4, beta=2.0, max_new_tokens=16, eos_token_id=None, value_mode=mode,
                    max_junction_batch=4)
    cfg = cfg.replace(tau=median_tau(model, ids, mask, cfg))
    free = generate(model, vm, input_ids=ids, attention_mask=mask, config=cfg)
    # EOS: the token reached by the most rows, at different steps (the steered trajectories).
    firsts = first_positions(free.new_tokens)
    eos = max(firsts, key=lambda t: (len(set(firsts[t].values())), len(firsts[t])))
    stop = firsts[eos]
    assert len(set(stop.values())) >= 2
    vm.reset_counters()
    res = generate(model, vm, input_ids=ids, attention_mask=mask, config=cfg.replace(eos_token_id=eos))
    width = max(stop.values()) + 1 if len(stop) == len(LENGTHS) else 16
    assert res.new_tokens.shape[1] == width
    for b, r in enumerate(res.row_stats):
        n = stop[b] + 1 if b in stop else 16
        assert (r.tokens, r.finished) == (n, b in stop)
        assert torch.equal(res.new_tokens[b, :n], free.new_tokens[b, :n])
        assert bool((res.new_tokens[b, n:] == 0).all())  # pad after EOS
    # Value token-forwards: the counter, the per-row attribution and the junction-count prediction agree.
    assert res.stats.value_token_forwards == vm.counters.token_forwards
    assert res.stats.value_token_forwards == sum(r.value_token_forwards for r in res.row_stats)
    assert res.stats.value_token_forwards == predicted_value_forwards(res, mode, 4)
    assert res.stats.junctions == sum(s.num_junctions for s in res.steps) == sum(r.junctions for r in res.row_stats)
    assert res.stats.value_rows_scored == res.stats.junctions
    chunks = sum(-(-s.num_junctions // 4) for s in res.steps)  # max_junction_batch=4: one forward per chunk
    assert res.stats.value_forwards == vm.counters.forwards == chunks == sum(s.value_forwards for s in res.steps)
    fed = [sum(1 for s in res.steps[:-1] if not s.finished[b]) for b in range(len(LENGTHS))]
    assert [r.base_token_forwards for r in res.row_stats] == [n + f for n, f in zip(LENGTHS, fed)]
    # Finished rows are never junctions.
    for s in res.steps:
        assert not any(s.finished[b] for b in s.junction_rows)
    if family == "qwen3":  # the base model alone against Hugging Face, with this EOS
        base = generate(model, None, input_ids=ids, attention_mask=mask,
                        config=cfg.replace(gate="never", eos_token_id=eos))
        hf = model.generate(input_ids=ids, attention_mask=mask.long(), do_sample=False, max_new_tokens=16,
                            pad_token_id=0, eos_token_id=eos)
        assert torch.equal(base.sequences, hf)


@pytest.mark.parametrize("rate", [0.05, 0.3])
def test_cached_mode_never_costs_more_than_prefix(rate):
    """The same decode in every mode; cached (and auto, its old-config alias) run the junction rows'
    pending tokens only, prefix their whole prefixes; both run one value forward per steered step."""
    model, vm = base_model("llama"), value_model("llama")
    ids, mask = left_padded(LENGTHS, seed=13)
    runs = {}
    for mode in ("cached", "prefix", "auto"):
        vm.reset_counters()
        cfg = SIAConfig(gate="random", rate=rate, greedy=True, k=4, beta=2.0, max_new_tokens=16, eos_token_id=None,
                        value_mode=mode, seed=3, max_junction_batch=None)
        runs[mode] = generate(model, vm, input_ids=ids, attention_mask=mask, config=cfg)
        assert runs[mode].stats.value_token_forwards == vm.counters.token_forwards
        assert runs[mode].stats.value_token_forwards == predicted_value_forwards(runs[mode], mode, 4)
        assert runs[mode].stats.value_forwards == sum(1 for s in runs[mode].steps if s.num_junctions)
    for mode in ("prefix", "auto"):
        assert torch.equal(runs[mode].sequences, runs["cached"].sequences)
        assert [s.junction_rows for s in runs[mode].steps] == [s.junction_rows for s in runs["cached"].steps]
    tokens = {m: r.stats.value_token_forwards for m, r in runs.items()}
    assert runs["cached"].stats.junctions > 0
    assert tokens["auto"] == tokens["cached"] < tokens["prefix"]


def test_dense_forwards_closed_form_and_sparse_savings():
    model, vm = base_model("qwen3"), value_model("qwen3")
    ids, mask = left_padded(LENGTHS, seed=12)
    B, T, k, P = len(LENGTHS), 10, 10, sum(LENGTHS)
    dense = generate(model, vm, input_ids=ids, attention_mask=mask,
                     config=SIAConfig(gate="always", greedy=True, max_new_tokens=T, eos_token_id=None))
    # the prompts once, then k candidates per row and step: the chosen candidate's KV is kept
    assert dense.stats.value_token_forwards == P + k * B * T
    assert dense.stats.value_forwards == T and dense.stats.base_forwards == T
    assert dense.stats.base_padded_token_forwards == B * ids.shape[1] + B * (T - 1)
    assert dense.stats.flops_value == 2.0 * dense.stats.value_parameters * dense.stats.value_padded_token_forwards
    sparse = generate(model, vm, input_ids=ids, attention_mask=mask,
                      config=SIAConfig(gate="first_n", first_n=2, greedy=True, max_new_tokens=T, eos_token_id=None))
    assert sparse.stats.value_token_forwards == P + k * B * 2 and sparse.stats.value_forwards == 2
    assert [s.num_junctions for s in sparse.steps] == [B, B] + [0] * (T - 2)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_target_rate_lands_within_5_points(family, rate):
    model, vm = base_model(family), value_model(family)
    ids, mask = left_padded([5, 9, 2, 7, 4, 6, 8, 3], seed=13)
    cfg = SIAConfig(gate="target_rate", rate=rate, greedy=True, beta=2.0, max_new_tokens=24, eos_token_id=None)
    res = generate(model, vm, input_ids=ids, attention_mask=mask, config=cfg)
    assert abs(res.stats.intervention_rate - rate) <= 0.05, res.stats.intervention_rate
    assert res.stats.tau == pytest.approx(calibrate_tau(model, input_ids=ids, attention_mask=mask, config=cfg))


def test_gates():
    model, vm = base_model("llama"), value_model("llama")
    ids, mask = left_padded([5, 9, 2, 7, 4, 6, 8, 3], seed=14)
    base = SIAConfig(greedy=True, max_new_tokens=20, eos_token_id=None)
    never = generate(model, vm, input_ids=ids, attention_mask=mask, config=base.replace(gate="never"))
    assert never.stats.junctions == 0 and never.stats.value_calls == 0
    always = generate(model, vm, input_ids=ids, attention_mask=mask, config=base.replace(gate="always"))
    assert always.stats.intervention_rate == 1.0
    first = generate(model, vm, input_ids=ids, attention_mask=mask, config=base.replace(gate="first_n", first_n=3))
    assert [s.junction_rows for s in first.steps] == [list(range(8))] * 3 + [[]] * 17
    rnd = generate(model, vm, input_ids=ids, attention_mask=mask, config=base.replace(gate="random", rate=0.3))
    assert 0.15 <= rnd.stats.intervention_rate <= 0.45
    ent = generate(model, vm, input_ids=ids, attention_mask=mask, config=base.replace(tau=float("inf")))
    assert torch.equal(ent.sequences, never.sequences)
    for s in ent.steps + first.steps:  # entropy is reported for every row
        assert s.entropy.shape == (8,) and bool((s.entropy <= torch.log(torch.tensor(10.0)) + 1e-5).all())


def test_same_seed_same_tokens(tokenizer):
    model, vm = base_model("qwen3"), value_model("qwen3")
    prompts = ["w5 w6 w7", "w9", "w10 w11 w12 w13 w14"]
    cfg = SIAConfig(gate="random", rate=0.5, temperature=1.0, sample_from="full", max_new_tokens=12, eos_token_id=2,
                    seed=7)
    a = generate(model, vm, prompts=prompts, tokenizer=tokenizer, config=cfg)
    b = generate(model, vm, prompts=prompts, tokenizer=tokenizer, config=cfg)
    c = generate(model, vm, prompts=prompts, tokenizer=tokenizer, config=cfg.replace(seed=8))
    assert torch.equal(a.sequences, b.sequences) and a.texts == b.texts
    assert [s.junction_rows for s in a.steps] == [s.junction_rows for s in b.steps]
    assert not torch.equal(a.sequences, c.sequences)
    assert len(a.texts) == 3 and all(isinstance(t, str) for t in a.texts)
    assert a.sequences[1, :5].tolist() == [0, 0, 0, 0, 9] and a.prompt_mask.sum(-1).tolist() == [3, 1, 5]


def test_teacher_forcing_hook_scans_the_forced_path():
    model, vm = base_model("qwen3"), value_model("qwen3")
    ids, mask = left_padded([4, 6], seed=15)
    forced = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    cfg = SIAConfig(gate="always", greedy=True, k=3, max_new_tokens=6, eos_token_id=None, entropy_scope="full")
    res = generate(model, vm, input_ids=ids, attention_mask=mask, config=cfg, teacher_tokens=forced)
    assert torch.equal(res.new_tokens, forced)
    seq, m = torch.cat([ids, forced], 1), torch.cat([mask, torch.ones(2, 6, dtype=torch.bool)], 1)
    with torch.no_grad():
        logits = model(input_ids=seq, attention_mask=m, position_ids=(m.long().cumsum(-1) - 1).clamp_min(0)).logits
    p = logits.float().softmax(-1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)[:, ids.shape[1] - 1:-1]  # before each forced token
    torch.testing.assert_close(torch.stack([s.entropy for s in res.steps], 1), entropy, atol=1e-4, rtol=0)


def _real(result, b):
    P, n = result.prompt_width, result.row_stats[b].tokens
    return torch.cat([result.sequences[b, :P][result.prompt_mask[b]], result.sequences[b, P:P + n]])


def test_best_of_n_returns_the_best_by_value_and_by_reward_model():
    model, vm = base_model("qwen3"), value_model("qwen3")
    ids, mask = left_padded([4, 7], seed=16)
    cfg = SIAConfig(gate="random", rate=0.3, max_new_tokens=8, eos_token_id=None, seed=2)
    res = best_of_n(model, vm, input_ids=ids, attention_mask=mask, config=cfg, n=3)
    gen = res.generation
    assert res.scores.shape == (2, 3) and gen.sequences.shape[0] == 6
    with torch.no_grad():
        own = torch.tensor([vm.values(_real(gen, b)[None])[0, -1].item() for b in range(6)]).view(2, 3)
    torch.testing.assert_close(res.scores, own, atol=1e-4, rtol=0)
    assert torch.equal(res.best, own.argmax(-1))
    for i in range(2):
        assert torch.equal(res.sequences[i], gen.sequences[i * 3 + int(res.best[i])])
    assert len({tuple(gen.new_tokens[j].tolist()) for j in range(3)}) > 1  # real samples
    # A reward model as the scorer (ValueModel.from_reward_model keeps its own score head).
    torch.manual_seed(3)
    rm_hf = AutoModelForSequenceClassification.from_config(tiny_config("llama", num_labels=1)).eval()
    rm = ValueModel.from_reward_model(rm_hf)
    res2 = best_of_n(model, vm, input_ids=ids, attention_mask=mask, config=cfg, n=3, scorer=rm)
    with torch.no_grad():
        rewards = torch.tensor([rm_hf(input_ids=_real(res2.generation, b)[None]).logits[0, 0].item()
                                for b in range(6)]).view(2, 3)
    torch.testing.assert_close(res2.scores, rewards, atol=1e-4, rtol=0)
    assert torch.equal(res2.best, rewards.argmax(-1))
    with pytest.raises(ValueError, match="greedy"):
        best_of_n(model, vm, input_ids=ids, attention_mask=mask, config=cfg.replace(greedy=True), n=2)


@pytest.mark.parametrize("mode", ["cached", "prefix"])
def test_tokenizer_bridge_with_the_same_vocabulary_gives_the_same_tokens(tokenizer, mode):
    """A re-tokenizing bridge between two copies of one tokenizer must not change the decode."""
    from sia_kernels.value import TokenizerBridge

    model, vm = base_model("llama"), value_model("llama")
    ids, mask = left_padded([4, 6, 3], seed=17)
    cfg = SIAConfig(greedy=True, k=4, beta=2.0, max_new_tokens=8, eos_token_id=None, value_mode=mode,
                    max_junction_batch=2)
    cfg = cfg.replace(tau=median_tau(model, ids, mask, cfg))
    plain = generate(model, vm, input_ids=ids, attention_mask=mask, config=cfg)
    vm.bridge = TokenizerBridge(tokenizer, tokenizer)
    try:
        vm.reset_counters()
        bridged = generate(model, vm, input_ids=ids, attention_mask=mask, tokenizer=tokenizer, config=cfg)
    finally:
        vm.bridge = None
    assert torch.equal(bridged.sequences, plain.sequences)
    assert bridged.stats.value_token_forwards == vm.counters.token_forwards
    assert bridged.stats.value_token_forwards == sum(r.value_token_forwards for r in bridged.row_stats)
