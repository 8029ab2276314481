"""Threads for the cpp op: where a second thread starts to pay (issue 9), and decode at 1 and 2 threads.

    python bench/bench_threads.py                 # scan sizes x {1, 2} threads, decode at 1 and 2
    python bench/bench_threads.py --no-decode --repeats 5

Scan: the cpp ``junction_scan`` (f32, k = 10, top-k sampling) at each [B, V], timed three ways:
one thread; two threads forced to split (``min_work_per_thread=1``: every scan runs parallel, the
raw crossover); two threads under the op's policy (parallel only from ``2 * kMinWorkPerThread``
logits). Each time is the median of ``--repeats`` medians (the machine is shared: expect noise).
Decode: ``sia_kernels.generate`` (SIA, entropy gate, a value model) on a tiny random Qwen3 with
Qwen3's vocabulary, in a fresh process per thread count (OMP_NUM_THREADS=n). Rows are appended to
bench/results/threads.csv.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sia_kernels.bench import append_csv, device_name, git_commit, time_call  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "threads.csv"
FIELDS = ["date", "commit", "device", "what", "B", "V", "threads", "policy", "time_us", "tokens_per_s",
          "vs_one_thread"]
SIZES = [(6, 114), (1, 4096), (1, 32000), (8, 4096), (1, 65536), (2, 65536), (1, 151936), (4, 65536),
         (2, 151936), (8, 32000), (8, 151936), (64, 151936)]


def scan_times(b: int, v: int, repeats: int) -> dict[str, float]:
    """Median seconds per cpp scan of [b, v]: 1 thread, 2 forced, 2 under the op's policy."""
    import python_bindings as pb

    scan = pb.junction_scan_cpp
    x = 4 * torch.randn(b, v)
    tau, temp = torch.ones(b), torch.ones(b)
    g = torch.Generator().manual_seed(0)
    runs = {"1": (1, 0), "2 forced": (2, 1), "2 policy": (2, 0)}
    out: dict[str, list[float]] = {name: [] for name in runs}
    before = torch.get_num_threads()
    try:
        for _ in range(repeats):  # interleaved, so a burst of load hits every variant alike
            for name, (threads, min_work) in runs.items():
                torch.set_num_threads(threads)
                def fn(min_work=min_work):
                    return scan(x, k=10, tau=tau, temperature=temp, entropy_scope="topk", sample_from="topk",
                                generator=g, min_work_per_thread=min_work)

                out[name].append(time_call(fn, torch.device("cpu"), min_time=0.05))
    finally:
        torch.set_num_threads(before)
    return {name: statistics.median(ts) for name, ts in out.items()}


_DECODE_CHILD = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM, Qwen3Config
import sia_kernels
from sia_kernels import SIAConfig, ValueModel, generate

def tiny(seed):
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()

b, new = int(sys.argv[1]), int(sys.argv[2])
model, value = tiny(0), ValueModel(tiny(1)).eval()
ids = torch.randint(3, 151936, (b, 8), generator=torch.Generator().manual_seed(0))
cfg = SIAConfig(k=10, tau=1.0, max_new_tokens=new, eos_token_id=None, seed=0, backend="cpp")
generate(model, value, input_ids=ids, config=cfg)  # warm-up
times = []
for _ in range(3):
    t = time.perf_counter()
    res = generate(model, value, input_ids=ids, config=cfg)
    times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"threads": torch.get_num_threads(), "seconds": times[1], "tokens": b * new}))
"""


def decode_rate(threads: int, b: int, new_tokens: int) -> float:
    """Tokens per second of ``generate`` in a fresh process at ``threads`` threads (median of 3)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", _DECODE_CHILD, str(b), str(new_tokens)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=1200)
    if res.returncode != 0:
        raise RuntimeError(f"decode at {threads} threads failed:\n{res.stderr[-3000:]}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    if got["threads"] != threads:
        raise RuntimeError(f"asked for {threads} threads, torch ran {got['threads']}")
    return got["tokens"] / got["seconds"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats per variant, medians taken (default 5)")
    ap.add_argument("--no-decode", action="store_true", help="skip the decode runs")
    ap.add_argument("--decode-batch", type=int, default=4, help="decode batch size (default 4)")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated per row (default 32)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"CSV to append to (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    stamp = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 commit=git_commit(), device=device_name(torch.device("cpu")).rsplit(" (", 1)[0])
    rows = []
    print(f"{'B':>4} {'V':>7} {'1 thr us':>10} {'2 forced':>10} {'2 policy':>10} {'forced/1':>9} {'policy/1':>9}")
    for b, v in SIZES:
        t = scan_times(b, v, args.repeats)
        for name, sec in t.items():
            threads, policy = (1, "-") if name == "1" else (2, name.split()[1])
            rows.append(dict(stamp, what="scan", B=b, V=v, threads=threads, policy=policy,
                             time_us=round(sec * 1e6, 1), vs_one_thread=round(t["1"] / sec, 3)))
        print(f"{b:>4} {v:>7} {t['1'] * 1e6:>10.1f} {t['2 forced'] * 1e6:>10.1f} {t['2 policy'] * 1e6:>10.1f} "
              f"{t['1'] / t['2 forced']:>8.2f}x {t['1'] / t['2 policy']:>8.2f}x", flush=True)
    if not args.no_decode:
        rates = {n: decode_rate(n, args.decode_batch, args.new_tokens) for n in (1, 2)}
        for n, r in rates.items():
            rows.append(dict(stamp, what=f"decode B{args.decode_batch}x{args.new_tokens}", B=args.decode_batch,
                             V=151936, threads=n, policy="policy", tokens_per_s=round(r, 1),
                             vs_one_thread=round(r / rates[1], 3)))
            print(f"decode B={args.decode_batch}, {args.new_tokens} new tokens, {n} thread(s): {r:.1f} tokens/s")
    append_csv(args.out, rows, FIELDS)
    print(f"appended {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
