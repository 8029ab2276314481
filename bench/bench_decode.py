"""End-to-end decoding: tokens/s, value forwards and token-forwards of base, SIA, dense ARGS and references.

Two tables. ``--table anchors`` (the default; issue 14's anchors): tiny random Qwen3 models (vocab
512, hidden 128, 4 layers), batch 1, a 32-token prompt, 64 new tokens, greedy, one process,
interleaved repetitions; wall time = the fastest repetition (on a shared machine contention only
adds time), the median reported beside it; ``ratio_paired`` = the median over repetitions of the
ratio within one repetition (the two runs seconds apart: robust to the load drifting between them):

* ``hf_greedy``      — Hugging Face ``model.generate`` greedy: the floor.
* ``base``           — ``generate(gate="never")``.
* ``dense_rm``       — ``gate="always"`` with a reward model (``ValueModel.from_reward_model``): ARGS's rule.
* ``dense_lora`` / ``dense_lora_merged`` — the same with a LoRA value model, the adapter kept / merged.
* ``sia20`` / ``sia20_prefix`` — SIA with the reward model at the τ that makes ~20 % of steps
  junctions (``calibrate_tau``), value_mode cached / prefix.
* ``args_loop``      — an ARGS-style loop written here with Hugging Face calls: one base forward
  and one reward-model forward per step (the k candidates as a batch of k on top of the reward
  model's cache, repeated k times), the chosen candidate's KV kept.

``--table batch``: the batched comparison below.

Same base model, value model and prompts for every method, greedy decoding:

* ``base``       — ``generate(gate="never")``: the base model alone, batched, KV cache.
* ``sia_tau1``   — SIA at the paper's τ = 1 (top-k entropy); random weights give high entropy, so
                   its intervention rate is reported as measured.
* ``sia_rateR``  — SIA with τ calibrated from entropy quantiles (``calibrate_tau``) to a ~R rate.
* ``dense_args`` — ``gate="always"``: every step steered (ARGS's rule) with the same tree scoring.
* ``released``   — the authors' released scheme at the same τ as ``sia_rateR``: one prompt at a
                   time, no KV cache (the whole sequence re-run every step) and, at a junction, k full
                   re-forwards of the value model (one per candidate).
* ``args_reforward`` — the same scheme at every step (dense ARGS as re-forwards).

``value_decode_fwd_per_token`` leaves out the one read of the prompts by the cached value model
(it tends to (1 + rate·k) per token for SIA and (1 + k) for dense ARGS).

Reported: tokens/s, wall-clock ratio to base, value token-forwards (total and per generated
token) and their ratio to dense ARGS, the intervention rate, estimated FLOPs. Rows are appended
to a CSV with date, commit and device. ``python bench/bench_decode.py [--quick] [--csv PATH]``.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sia_kernels.bench import append_csv, device_name, git_commit  # noqa: E402
from sia_kernels.config import SIAConfig  # noqa: E402
from sia_kernels.decoding import calibrate_tau, generate  # noqa: E402
from sia_kernels.value import ValueModel  # noqa: E402

FIELDS = ["date", "commit", "device", "method", "B", "prompt_len", "new_tokens", "k", "tau", "tokens", "wall_s",
          "tokens_per_s", "wall_ratio_vs_base", "junctions", "intervention_rate", "value_token_forwards",
          "value_fwd_per_token", "value_decode_fwd_per_token", "value_fwd_ratio_dense_over_this", "base_token_forwards", "flops_total",
          "tokens_match_sia", "table", "value_forwards", "value_forwards_per_token", "ratio", "ratio_to",
          "wall_median_s", "ratio_median", "tokens_match_args", "ratio_paired"]
ANCHOR_REFS = {"base": "hf_greedy", "sia20": "hf_greedy", "sia20_prefix": "hf_greedy", "dense_rm": "args_loop",
               "dense_lora": "args_loop", "dense_lora_merged": "args_loop", "args_loop": "hf_greedy"}


def build_models(vocab=32_000, hidden=256, layers=4, value_layers=2, device="cpu"):
    """Tiny-but-not-trivial random Qwen3 models: the base (``layers``) and a value model on a
    ``value_layers`` backbone of the same width and vocabulary (a smaller value model, as in the paper)."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    def cfg(n):
        return Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=n,
                           num_attention_heads=8, num_key_value_heads=4, head_dim=hidden // 8,
                           max_position_embeddings=1024, initializer_range=0.05)

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(cfg(layers), attn_implementation="sdpa").to(device).eval()
    base.generation_config.eos_token_id = None
    base.generation_config.pad_token_id = 0
    torch.manual_seed(1)
    vm = ValueModel(AutoModelForCausalLM.from_config(cfg(value_layers), attn_implementation="sdpa")).to(device).eval()
    torch.nn.init.normal_(vm.head.weight, std=1.0)
    return base, vm


@torch.no_grad()
def released_scheme(model, vm, ids, mask, *, k, beta, tau, steps):
    """The released code's loop: one prompt at a time, full re-forward of the base model every
    step, and at a junction (top-k entropy > tau) k full value forwards, one per candidate."""
    rows, junctions, base_fwd, value_fwd = [], 0, 0, 0
    for b in range(ids.shape[0]):
        seq = ids[b][mask[b]][None]
        for _ in range(steps):
            logits = model(input_ids=seq).logits[0, -1].float()
            base_fwd += seq.shape[1]
            logp = logits.log_softmax(-1)
            top_lp, top_ids = logp.topk(k)
            p = top_lp.softmax(-1)
            if float(-(p * p.log()).sum()) > tau:
                junctions += 1
                cands = torch.cat([seq.expand(k, -1), top_ids[:, None]], 1)
                v = torch.stack([vm.values(cands[i:i + 1])[0, -1] for i in range(k)])
                value_fwd += k * cands.shape[1]
                nxt = top_ids[(top_lp + beta * v).argmax()]
            else:
                nxt = top_ids[0]
            seq = torch.cat([seq, nxt.view(1, 1)], 1)
        rows.append(seq[0, -steps:])
    return torch.stack(rows), junctions, base_fwd, value_fwd


def _timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run(quick: bool = False, csv_path: str | None = "bench/results/decode.csv", device: str | None = None,
        rate: float = 0.2, threads: int | None = 1) -> list[dict]:
    """Run every method once; append the rows to ``csv_path`` (None: no CSV) and return them.
    ``threads``: CPU threads (1 by default: small matmuls, and a shared CPU, gain nothing from more)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    B, P, T, k, beta = (4, 24, 12, 10, 2.0) if quick else (8, 48, 32, 10, 2.0)
    released_prompts = 2 if quick else 4  # the released scheme is slow: a subset, timed per token
    base, vm = build_models(device=device)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(P // 2, P + 1, (B,), generator=g).tolist()
    ids = torch.randint(3, base.config.vocab_size, (B, P), generator=g)
    mask = torch.zeros(B, P, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, P - n:] = True
    ids, mask = ids.masked_fill(~mask, 0).to(device), mask.to(device)
    cfg = SIAConfig(greedy=True, k=k, beta=beta, max_new_tokens=T, eos_token_id=None, max_junction_batch=64)
    tau_r = calibrate_tau(base, input_ids=ids, attention_mask=mask, config=cfg.replace(gate="target_rate", rate=rate))
    generate(base, vm, input_ids=ids[:2], attention_mask=mask[:2], config=cfg.replace(max_new_tokens=2))  # warm-up

    methods = {
        "base": cfg.replace(gate="never"),
        "sia_tau1": cfg.replace(tau=1.0),
        f"sia_rate{round(rate * 100)}": cfg.replace(tau=tau_r),
        f"sia_rate{round(rate * 100)}_prefix": cfg.replace(tau=tau_r, value_mode="prefix"),
        "dense_args": cfg.replace(gate="always"),
    }
    results, seqs = {}, {}
    for name, c in methods.items():
        res, wall = _timed(lambda: generate(base, vm, input_ids=ids, attention_mask=mask, config=c), device)
        s = res.stats
        seqs[name] = res.new_tokens
        results[name] = dict(method=name, tau=c.tau if c.gate == "entropy" else ("-inf" if c.gate == "always" else "inf"),
                             tokens=s.tokens, wall_s=wall, junctions=s.junctions, intervention_rate=s.intervention_rate,
                             value_token_forwards=s.value_token_forwards, base_token_forwards=s.base_padded_token_forwards,
                             flops_total=s.flops_total, B=B)
    sia_name = f"sia_rate{round(rate * 100)}"
    sub = slice(0, released_prompts)
    (rel, junctions, base_fwd, value_fwd), wall = _timed(
        lambda: released_scheme(base, vm, ids[sub], mask[sub], k=k, beta=beta, tau=tau_r, steps=T), device)
    (_, d_junctions, d_base_fwd, d_value_fwd), d_wall = _timed(
        lambda: released_scheme(base, vm, ids[sub], mask[sub], k=k, beta=beta, tau=float("-inf"), steps=T), device)
    tokens = released_prompts * T
    n_base = sum(p.numel() for p in base.parameters())
    n_value = sum(p.numel() for p in vm.parameters())
    results["released"] = dict(method="released", tau=tau_r, tokens=tokens, wall_s=wall, junctions=junctions,
                               intervention_rate=junctions / tokens, value_token_forwards=value_fwd,
                               base_token_forwards=base_fwd, flops_total=2.0 * (n_base * base_fwd + n_value * value_fwd),
                               B=released_prompts, tokens_match_sia=float((rel == seqs[sia_name][sub]).float().mean()))
    results["args_reforward"] = dict(method="args_reforward", tau="-inf", tokens=tokens, wall_s=d_wall,
                                     junctions=d_junctions, intervention_rate=d_junctions / tokens,
                                     value_token_forwards=d_value_fwd, base_token_forwards=d_base_fwd,
                                     flops_total=2.0 * (n_base * d_base_fwd + n_value * d_value_fwd), B=released_prompts)
    prompt_tokens = int(mask.sum())
    for name in methods:  # the cached value model reads each prompt once: decode-time cost without it
        r = results[name]
        r["value_decode_fwd_per_token"] = (r["value_token_forwards"] - (prompt_tokens if r["junctions"] else 0)) / r["tokens"]

    dense_per_tok = results["dense_args"]["value_token_forwards"] / results["dense_args"]["tokens"]
    base_tps = results["base"]["tokens"] / results["base"]["wall_s"]
    stamp = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), commit=git_commit(),
                 device=device_name(device), prompt_len=P, new_tokens=T, k=k)
    rows = []
    for name, r in results.items():
        tps = r["tokens"] / r["wall_s"]
        per_tok = r["value_token_forwards"] / r["tokens"]
        row = {**stamp, **r, "tokens_per_s": tps, "wall_ratio_vs_base": base_tps / tps,
               "value_fwd_per_token": per_tok,
               "value_fwd_ratio_dense_over_this": dense_per_tok / per_tok if per_tok else float("inf")}
        row.setdefault("value_decode_fwd_per_token", per_tok)
        row.setdefault("tokens_match_sia", float((seqs[name] == seqs[sia_name]).float().mean()) if name in seqs else "")
        rows.append(row)
    for r in rows:
        r["table"] = "batch"
    if csv_path:
        _append(csv_path, rows)
    return rows


def _append(path, rows) -> None:
    """Append to the CSV; a file written with an older header is rewritten once with FIELDS."""
    path = Path(path)
    if path.exists() and path.stat().st_size:
        with path.open() as f:
            header = f.readline().strip().split(",")
        if header != FIELDS:
            import csv

            with path.open() as f:
                old = list(csv.DictReader(f))
            path.unlink()
            append_csv(path, old, FIELDS)
    append_csv(path, [{k_: (f"{v:.4g}" if isinstance(v, float) else v) for k_, v in r.items()} for r in rows], FIELDS)


def build_anchor_models(vocab=512, hidden=128, layers=4, device="cpu"):
    """Base, reward model, LoRA value model (adapter kept) and the same merged: tiny random Qwen3s."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Qwen3Config

    def cfg(**kw):
        return Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                           max_position_embeddings=256, initializer_range=0.05, **kw)

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(cfg(), attn_implementation="sdpa").to(device).eval()
    base.generation_config.eos_token_id = None
    base.generation_config.pad_token_id = 0
    torch.manual_seed(1)
    rm_hf = AutoModelForSequenceClassification.from_config(cfg(num_labels=1, pad_token_id=0),
                                                           attn_implementation="sdpa").to(device).eval()
    torch.nn.init.normal_(rm_hf.score.weight, std=1.0)
    rm = ValueModel.from_reward_model(rm_hf)
    torch.manual_seed(2)
    lora = get_peft_model(AutoModelForCausalLM.from_config(cfg(), attn_implementation="sdpa"),
                          LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                     init_lora_weights=False))
    vm_lora = ValueModel(lora).to(device).eval()
    torch.nn.init.normal_(vm_lora.head.weight, std=1.0)
    import copy

    merged = copy.deepcopy(vm_lora).merge_lora()
    return base, rm_hf, rm, vm_lora, merged


@torch.no_grad()
def args_loop(model, rm_hf, ids, *, k, beta, steps):
    """ARGS as its authors run it, on caches: one base forward per step; the k candidates scored by
    one reward-model forward (its cache repeated k times, one candidate per row); the chosen row kept."""
    from sia_kernels.value.hf_cache import cache_keyword, new_cache

    kv, rkv = new_cache(model.config), new_cache(rm_hf.config)
    kw, rkw = cache_keyword(model), cache_keyword(rm_hf)
    logits = model(input_ids=ids, use_cache=True, **{kw: kv}).logits[:, -1]
    rm_hf(input_ids=ids, use_cache=True, **{rkw: rkv})
    out = []
    for t in range(steps):
        top_lp, top = logits.float().log_softmax(-1).topk(k)  # [1, k]
        rkv.batch_repeat_interleave(k)
        reward = rm_hf(input_ids=top.view(k, 1), use_cache=True, **{rkw: rkv}).logits.view(k).float()
        i = int((top_lp[0] + beta * reward).argmax())
        rkv.batch_select_indices(torch.tensor([i], device=ids.device))
        tok = top[:, i:i + 1]
        out.append(tok)
        if t + 1 < steps:
            logits = model(input_ids=tok, use_cache=True, **{kw: kv}).logits[:, -1]
    return torch.cat(out, 1)


def anchors(csv_path: str | None = "bench/results/decode.csv", device: str | None = None, reps: int = 5,
            threads: int | None = 1, prompt_len: int = 32, new_tokens: int = 64, k: int = 10, beta: float = 1.0,
            rate: float = 0.2) -> list[dict]:
    """Issue 14's anchors table (see the module docstring); returns the rows, appends them to ``csv_path``."""
    import statistics

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    base, rm_hf, rm, vm_lora, merged = build_anchor_models(device=device)
    ids = torch.randint(3, 512, (1, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    cfg = SIAConfig(greedy=True, k=k, beta=beta, max_new_tokens=new_tokens, eos_token_id=None)
    # Steering moves the trajectory, so tau calibrated on the base model's alone gives another rate:
    # among the taus that give 1x..3x the rate on the base trajectory, take the one whose SIA run
    # comes closest to the target.
    ones = torch.ones_like(ids, dtype=torch.bool)
    taus = [calibrate_tau(base, input_ids=ids, attention_mask=ones, config=cfg.replace(gate="target_rate", rate=r))
            for r in (rate, 1.5 * rate, 2 * rate, 2.5 * rate, 3 * rate) if r < 1]
    rates = [generate(base, rm, input_ids=ids, config=cfg.replace(tau=t)).stats.intervention_rate for t in taus]
    tau = min(zip(taus, rates), key=lambda tr: abs(tr[1] - rate))[0]
    dense = cfg.replace(gate="always")
    runs = {
        "hf_greedy": lambda: base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                                           pad_token_id=0)[:, prompt_len:],
        "base": lambda: generate(base, None, input_ids=ids, config=cfg.replace(gate="never")),
        "dense_rm": lambda: generate(base, rm, input_ids=ids, config=dense),
        "dense_lora": lambda: generate(base, vm_lora, input_ids=ids, config=dense),
        "dense_lora_merged": lambda: generate(base, merged, input_ids=ids, config=dense),
        "sia20": lambda: generate(base, rm, input_ids=ids, config=cfg.replace(tau=tau)),
        "sia20_prefix": lambda: generate(base, rm, input_ids=ids, config=cfg.replace(tau=tau, value_mode="prefix")),
        "args_loop": lambda: args_loop(base, rm_hf, ids, k=k, beta=beta, steps=new_tokens),
    }
    for fn in runs.values():  # warm-up
        fn()
    walls, outs = {name: [] for name in runs}, {}
    for _ in range(reps):  # interleaved: drift on a shared machine hits every method alike
        for name, fn in runs.items():
            with torch.no_grad():
                out, wall = _timed(fn, device)
            walls[name].append(wall)
            outs[name] = out
    tokens_of = {n: (o.new_tokens if hasattr(o, "new_tokens") else o) for n, o in outs.items()}
    best = {n: min(w) for n, w in walls.items()}  # the least disturbed run (a shared machine adds, never removes)
    med = {n: statistics.median(w) for n, w in walls.items()}
    stamp = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), commit=git_commit(),
                 device=device_name(device), prompt_len=prompt_len, new_tokens=new_tokens, k=k, B=1, table="anchors")
    rows = []
    for name in runs:
        o = outs[name]
        st = getattr(o, "stats", None)
        tokens = tokens_of[name].numel()
        ref = ANCHOR_REFS.get(name, "")
        vf = st.value_forwards if st is not None else (new_tokens if name == "args_loop" else 0)
        rows.append({**stamp, "method": name, "tau": tau if name.startswith("sia") else "", "tokens": tokens,
                     "wall_s": best[name], "wall_median_s": med[name], "tokens_per_s": tokens / best[name],
                     "junctions": st.junctions if st is not None else "",
                     "intervention_rate": st.intervention_rate if st is not None else "",
                     "value_token_forwards": st.value_token_forwards if st is not None else "",
                     "value_forwards": vf, "value_forwards_per_token": vf / tokens,
                     "ratio": best[name] / best[ref] if ref else "", "ratio_to": ref,
                     "ratio_median": med[name] / med[ref] if ref else "",
                     "ratio_paired": statistics.median(a / b for a, b in zip(walls[name], walls[ref])) if ref else "",
                     "tokens_match_args": float((tokens_of[name] == tokens_of["args_loop"]).float().mean())})
    if csv_path:
        _append(csv_path, rows)
    return rows


def _print_anchors(rows):
    cols = ["method", "wall_s", "wall_median_s", "tokens_per_s", "ratio", "ratio_median", "ratio_paired", "ratio_to",
            "intervention_rate", "value_forwards_per_token",
            "value_token_forwards", "tokens_match_args"]
    print("  ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print("  ".join(f"{(f'{r[c]:.4g}' if isinstance(r[c], float) else str(r[c])):>14}" for c in cols))


def _print(rows):
    cols = ["method", "tau", "tokens", "tokens_per_s", "wall_ratio_vs_base", "intervention_rate",
            "value_token_forwards", "value_fwd_per_token", "value_decode_fwd_per_token",
            "value_fwd_ratio_dense_over_this", "tokens_match_sia"]
    fmt = [(c, max(len(c), 10)) for c in cols]
    print("  ".join(f"{c:>{w}}" for c, w in fmt))
    for r in rows:
        print("  ".join(f"{(f'{r[c]:.3g}' if isinstance(r[c], float) else str(r[c])):>{w}}" for c, w in fmt))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--csv", default="bench/results/decode.csv", help="CSV to append to ('-' for none)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    ap.add_argument("--table", choices=("anchors", "batch"), default="anchors",
                    help="anchors: issue 14's batch-1 table against HF greedy and an ARGS loop; batch: the batched table")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions (anchors)")
    a = ap.parse_args()
    csv_path = None if a.csv == "-" else a.csv
    if a.table == "anchors":
        _print_anchors(anchors(csv_path, device=a.device, reps=a.reps, threads=a.threads or None, rate=a.rate))
    else:
        _print(run(quick=a.quick, csv_path=csv_path, device=a.device, rate=a.rate, threads=a.threads or None))
    sys.exit(0)
