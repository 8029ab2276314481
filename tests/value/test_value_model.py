"""ValueModel: values(), tree scoring in both modes, counters, bridge, reward models, bad inputs."""
import dataclasses

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from .. import helpers
from .conftest import FAMILIES, VOCAB, tiny_causal_lm, tiny_config, word_tokenizer
from sia_kernels.value import TokenizerBridge, ValueModel, check_compatible, pad_left

ATOL = 1e-4
_MODELS = {}


def value_model(family, impl="eager"):
    """One tiny value model per (family, attention implementation), with a non-trivial head."""
    if (family, impl) not in _MODELS:
        vm = ValueModel(tiny_causal_lm(family, impl))
        torch.nn.init.normal_(vm.head.weight, std=1.0)
        _MODELS[family, impl] = vm.eval()
    return _MODELS[family, impl]


def left_padded(lengths, seed=0):
    """Random ids everywhere, the padding included (it must not matter)."""
    return helpers.left_padded(lengths, seed, low=0, pad_id=None)


@torch.no_grad()
def reference_scores(vm, ids, mask, candidates):
    """k separate full forwards through values(), one unpadded sequence each."""
    out = torch.empty(candidates.shape)
    for j in range(ids.shape[0]):
        for i, c in enumerate(candidates[j].tolist()):
            seq = torch.cat([ids[j][mask[j]], torch.tensor([c])])[None]
            out[j, i] = vm.values(seq, torch.ones_like(seq, dtype=torch.bool))[0, -1]
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_values_match_plain_hf_forward_and_ignore_left_padding(family):
    vm = value_model(family)
    ids, mask = left_padded([9, 5, 1, 7])
    with torch.no_grad():
        v = vm.values(ids, mask)
        assert v.shape == (4, 9) and v.dtype == torch.float32
        # Unpadded: our explicit 4D mask + position ids equal the model's own causal forward.
        body = vm.backbone.base_model
        plain = vm.head(body(input_ids=ids[:1]).last_hidden_state.float()).squeeze(-1)
        torch.testing.assert_close(v[:1], plain, atol=ATOL, rtol=0)
        for j in range(4):
            alone = vm.values(ids[j][mask[j]][None])[0]
            torch.testing.assert_close(v[j][mask[j]], alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["prefix", "cached"])
@pytest.mark.parametrize("k", [1, 4, 10])
@pytest.mark.parametrize("family", FAMILIES)
def test_score_candidates_equals_k_full_forwards(family, k, mode):
    vm = value_model(family)
    # cached: the prompt is the first 5 columns (row 1 has no real prompt token), 3 tokens decoded after
    ids, mask = left_padded([6, 3, 8, 1] if mode == "prefix" else [6, 3, 8, 4], seed=k)
    cand = torch.randint(0, VOCAB, (4, k), generator=torch.Generator().manual_seed(k + 1))
    ref = reference_scores(vm, ids, mask, cand)
    if mode == "prefix":
        got = vm.score_candidates(ids, mask, cand)
    else:
        cache = vm.cache(ids[:, :5], mask[:, :5], chunk_size=2)
        for t in range(5, 8):
            cache.append(ids[:, t])
        rows = torch.tensor([3, 0, 2, 1])  # any order
        got = vm.score_candidates(None, None, cand[rows], mode="cached", cache=cache, rows=rows)[rows.argsort()]
    assert got.shape == (4, k) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    if k > 1:
        assert got.std() > 100 * ATOL  # the check is not vacuous


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_sdpa_matches_eager(family):
    ids, mask = left_padded([7, 2, 5])
    cand = torch.randint(0, VOCAB, (3, 4))
    eager = value_model(family, "eager").score_candidates(ids, mask, cand)
    sdpa = value_model(family, "sdpa").score_candidates(ids, mask, cand)
    torch.testing.assert_close(sdpa, eager, atol=ATOL, rtol=0)
    torch.testing.assert_close(sdpa, reference_scores(value_model(family, "sdpa"), ids, mask, cand), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_equals_prefix_over_a_40_step_decode(family):
    """Ragged per-row catch-up (each row scored at its own steps), kept and dropped candidates, a
    row dropped from the batch: the cache's scores equal prefix scoring, and its counters follow
    the per-row formula (pending real tokens of the scored rows + J * k, one forward per chunk)."""
    vm = value_model(family)
    g = torch.Generator().manual_seed(7)
    ids, mask = left_padded([4, 7, 2, 5, 6], seed=3)
    chunk = 4
    cache = vm.cache(ids, mask, chunk_size=chunk)
    width = ids.shape[1]
    done = [width - int(n) for n in mask.sum(1)]  # per row: columns in the cache or padding
    vm.reset_counters()
    expected = dict(tokens=0, forwards=0, rows=0, calls=0)
    last = {}  # row -> its candidates at the last score, while the next token is not appended
    kept_any = dropped_any = False
    for step in range(40):
        B = ids.shape[0]
        J = int(torch.randint(0, B + 1, (1,), generator=g))
        if J:
            rows = torch.randperm(B, generator=g)[:J].sort().values
            cand = torch.randint(0, VOCAB, (J, 4), generator=g)
            cached = cache.score(rows, cand)
            counts = dataclasses.replace(vm.counters)
            prefix = vm.score_candidates(ids[rows], mask[rows], cand)
            torch.testing.assert_close(cached, prefix, atol=ATOL, rtol=0)
            vm.counters = counts  # keep the prefix-mode call out of the cached accounting
            lo = min(done[r] for r in rows.tolist())
            while width - lo > chunk:
                expected["forwards"] += 1
                lo += chunk
            expected["tokens"] += sum(width - done[r] for r in rows.tolist()) + J * 4
            expected["forwards"] += 1
            expected["rows"] += J
            expected["calls"] += 1
            for j, r in enumerate(rows.tolist()):
                done[r] = width
                last[r] = cand[j].tolist()
        tok = torch.randint(0, VOCAB, (B,), generator=g)
        for r, c in last.items():  # half the scored rows go on with one of their candidates
            if torch.rand(1, generator=g) < 0.5:
                tok[r] = c[int(torch.randint(0, 4, (1,), generator=g))]
            if tok[r] in c:
                done[r], kept_any = width + 1, True
            else:
                dropped_any = True
        last = {}
        cache.append(tok)
        ids = torch.cat([ids, tok[:, None]], 1)
        mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool)], 1)
        width += 1
        if step == 12:  # a row finishes: drop it from the batch
            keep = torch.tensor([0, 2, 3, 4])
            cache.select(keep)
            ids, mask, done = ids[keep], mask[keep], [done[i] for i in keep.tolist()]
    assert kept_any and dropped_any
    c = vm.counters
    assert (c.token_forwards, c.forwards, c.rows_scored, c.calls) == (
        expected["tokens"], expected["forwards"], expected["rows"], expected["calls"])


def test_counters_follow_the_documented_formulas():
    vm = value_model("llama")
    ids, mask = left_padded([6, 2, 4])
    vm.reset_counters()
    vm.score_candidates(ids, mask, torch.zeros(3, 5, dtype=torch.long))
    c = vm.counters
    assert (c.calls, c.rows_scored, c.token_forwards, c.padded_token_forwards, c.forwards) == (1, 3, 12 + 15, 18 + 15, 1)
    vm.reset_counters()
    cache = vm.cache(ids, mask)
    cache.append(torch.ones(3, dtype=torch.long))
    cache.append(torch.ones(3, dtype=torch.long))
    assert vm.counters.token_forwards == 0  # append is lazy
    cache.score(torch.tensor([1]), torch.zeros(1, 5, dtype=torch.long))  # row 1 only: 2 + 2 pending
    assert vm.counters.token_forwards == 4 + 5 and vm.counters.forwards == 1
    cache.score(torch.tensor([0, 2]), torch.zeros(2, 5, dtype=torch.long))  # rows 0 and 2: 8 + 6 pending
    assert vm.counters.token_forwards == 9 + 14 + 10 and vm.counters.forwards == 2
    cache.append(torch.zeros(3, dtype=torch.long))  # every row takes its candidate 0: its KV is kept
    assert cache.pending == 0 and cache.done == [9, 9, 9]  # confirmed by reading the flags
    cache.score(torch.tensor([0, 1, 2]), torch.zeros(3, 5, dtype=torch.long))
    assert vm.counters.token_forwards == 33 + 15  # nothing pending: the candidates only
    assert vm.counters.rows_scored == 6 and vm.counters.calls == 3
    empty = torch.zeros(0, 5, dtype=torch.long)
    assert vm.score_candidates(ids[:0], mask[:0], empty).shape == (0, 5)
    assert cache.score(torch.zeros(0, dtype=torch.long), empty).shape == (0, 5)
    assert vm.counters.calls == 3 and vm.counters.forwards == 3  # J = 0 runs nothing
    cache.reset()
    assert cache.batch_size == 3 and cache.pending == 0


def test_bad_inputs_are_clear_errors():
    vm = value_model("qwen3")
    ids, mask = left_padded([3, 4])
    cand = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(TypeError, match="candidates"):
        vm.score_candidates(ids, mask, cand.float())
    with pytest.raises(ValueError, match="candidates"):
        vm.score_candidates(ids, mask, cand[:1])
    with pytest.raises(ValueError, match="k >= 1"):
        vm.score_candidates(ids, mask, cand[:, :0])
    with pytest.raises(ValueError, match="candidates.*vocabulary"):
        vm.score_candidates(ids, mask, cand + VOCAB)
    with pytest.raises(ValueError, match="prefix_ids.*vocabulary"):
        vm.score_candidates(torch.full_like(ids, -1), mask, cand)
    with pytest.raises(ValueError, match="prefix_mask"):
        vm.score_candidates(ids, mask[:, 1:], cand)
    with pytest.raises(TypeError, match="prefix_mask"):
        vm.score_candidates(ids, mask.float(), cand)
    with pytest.raises(ValueError, match="on meta"):
        vm.score_candidates(ids, mask, cand.to("meta"))
    with pytest.raises(ValueError, match="mode"):
        vm.score_candidates(ids, mask, cand, mode="tree")
    with pytest.raises(TypeError, match="cache"):
        vm.score_candidates(None, None, cand, mode="cached")
    long_ids = torch.zeros(1, vm.max_positions, dtype=torch.long)
    with pytest.raises(ValueError, match="maximum of 128 positions"):
        vm.score_candidates(long_ids, torch.ones_like(long_ids, dtype=torch.bool), cand[:1])
    cache = vm.cache(ids, mask)
    with pytest.raises(ValueError, match="rows"):
        cache.score(torch.tensor([0, 2]), cand)
    with pytest.raises(ValueError, match="left-padded"):
        vm.cache(ids, mask.flip(-1))
    with pytest.raises(ValueError, match="candidates.*vocabulary"):
        cache.score(torch.tensor([0, 1]), cand + VOCAB)
    with pytest.raises(ValueError, match="tokens"):
        cache.append(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        vm.cache(ids, mask, chunk_size=0)
    with pytest.raises(ValueError, match="head"):
        ValueModel(tiny_causal_lm("qwen3"), torch.nn.Linear(16, 1))


def test_reward_model_is_its_own_value_head():
    cfg = tiny_config("llama", num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager").eval()
    vm = ValueModel.from_reward_model(rm)
    ids, mask = left_padded([5, 3])
    ids[~mask] = 0
    ids[mask] = ids[mask].clamp_min(1)
    with torch.no_grad():
        reward = rm(input_ids=ids, attention_mask=mask.long()).logits[:, 0]
        v = vm.values(ids, mask)[:, -1]
    torch.testing.assert_close(v, reward, atol=ATOL, rtol=0)  # dense mode is exactly ARGS
    cand = torch.randint(1, VOCAB, (2, 4))
    torch.testing.assert_close(vm.score_candidates(ids, mask, cand), reference_scores(vm, ids, mask, cand),
                               atol=ATOL, rtol=0)
    two = AutoModelForSequenceClassification.from_config(tiny_config("llama", num_labels=2))
    with pytest.raises(ValueError, match="num_labels=1"):
        ValueModel.from_reward_model(two)
    with pytest.raises(TypeError, match="SequenceClassification"):
        ValueModel.from_reward_model(tiny_causal_lm("llama"))


def test_tokenizer_mismatch_is_refused_unless_bridged():
    words = [f"w{i}" for i in range(60)]
    base_tok = word_tokenizer(words)  # 62 tokens
    value_tok = word_tokenizer(words[::-1] + ["extra"])  # same words, other ids, 63 tokens
    torch.manual_seed(0)
    base = tiny_causal_lm("llama", vocab=len(base_tok))
    vm = ValueModel(tiny_causal_lm("qwen3", vocab=len(value_tok))).eval()
    torch.nn.init.normal_(vm.head.weight)
    vm.tokenizer = value_tok
    with pytest.raises(ValueError, match="vocab_size 62 != value model vocab_size 63"):
        check_compatible(base, vm)
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_compatible(base_tok, vm)
    check_compatible(value_tok, vm)  # the value model's own tokenizer is fine

    vm.bridge = TokenizerBridge(base_tok, value_tok)
    check_compatible(base, vm)
    check_compatible(base_tok, vm)
    with pytest.raises(ValueError, match="bridge"):
        check_compatible(value_tok, vm)

    prefix_text = ["w3 w7 w9", "w59"]
    ids, mask = (t for t in _encode_left(base_tok, prefix_text))
    cand = torch.tensor([[base_tok.convert_tokens_to_ids(w) for w in ("w1", "w2", "w50")]] * 2)
    got = vm.score_candidates(ids, mask, cand)
    cache = vm.cache(ids, mask)
    got_cached = cache.score(torch.tensor([0, 1]), cand)
    vm.bridge = None
    for j, text in enumerate(prefix_text):
        for i, w in enumerate(("w1", "w2", "w50")):
            seq = torch.tensor([value_tok(f"{text} {w}")["input_ids"]])
            want = vm.values(seq)[0, -1].detach()
            assert abs(float(got[j, i] - want)) < ATOL and abs(float(got_cached[j, i] - want)) < ATOL


def _encode_left(tok, texts):
    return pad_left([tok(t)["input_ids"] for t in texts], 0)


def test_merge_lora_keeps_values_and_saves_merged_weights(tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_causal_lm("llama"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                   init_lora_weights=False))
    vm = ValueModel(peft_model).eval()
    torch.nn.init.normal_(vm.head.weight)
    ids, mask = left_padded([5, 3])
    with torch.no_grad():
        before = vm.values(ids, mask)
        vm.save_pretrained(tmp_path / "adapter")
        assert vm.merge_lora() is vm and vm.adapter_merged and not hasattr(vm.backbone, "peft_config")
        torch.testing.assert_close(vm.values(ids, mask)[mask], before[mask], atol=ATOL, rtol=0)
        vm.save_pretrained(tmp_path / "merged")  # the merged weights are written, not a reference to the base
        again = ValueModel.from_pretrained(tmp_path / "merged", attn_implementation="eager")
        torch.testing.assert_close(again.values(ids, mask)[mask], before[mask], atol=ATOL, rtol=0)
        loaded = ValueModel.from_pretrained(tmp_path / "adapter", attn_implementation="eager", merge_lora=True)
        assert loaded.adapter_merged and not hasattr(loaded.backbone, "peft_config")
        torch.testing.assert_close(loaded.values(ids, mask)[mask], before[mask], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="merged"):
        vm.save_pretrained(tmp_path / "x", save_backbone=False)
