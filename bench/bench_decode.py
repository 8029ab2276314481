"""End-to-end decoding: tokens/s and value token-forwards of base, SIA, dense ARGS and the released scheme.

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
          "tokens_match_sia"]


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
        f"sia_rate{round(rate * 100)}_auto": cfg.replace(tau=tau_r, value_mode="auto"),
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
    if csv_path:
        append_csv(csv_path, [{k_: (f"{v:.4g}" if isinstance(v, float) else v) for k_, v in r.items()} for r in rows],
                   FIELDS)
    return rows


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
    a = ap.parse_args()
    _print(run(quick=a.quick, csv_path=None if a.csv == "-" else a.csv, device=a.device, rate=a.rate,
               threads=a.threads or None))
    sys.exit(0)
