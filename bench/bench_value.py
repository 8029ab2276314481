"""Value-model scoring: one-forward tree scoring vs the released code's k full re-forwards.

For J junction rows with a prefix of L tokens and k candidates:
  reforward    (released SIA code) k forwards of [J, L + 1]          -> k·J·(L + 1) token-forwards
  tree_prefix  one forward of prefix + k candidates, 4D mask          -> J·(L + k)
  tree_cached  steady decode step: the token since the last call + k  -> J·(1 + k) (J·k when the
               row went on with one of its candidates: that KV is kept)
Reports measured token-forwards (from ValueModel.counters) and wall-clock, each as a ratio to
reforward; the expected token-forward ratio of tree_prefix is k·(L + 1)/(L + k).
Appends rows to bench/results/value.csv (device, date, commit, ...) and prints a table.

    python bench/bench_value.py [--quick] [--out PATH] [--threads N]
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sia_kernels.bench import append_csv, device_name, git_commit  # noqa: E402
from sia_kernels.value import ValueModel  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "value.csv"
COLUMNS = ["device", "date", "commit", "model", "dtype", "threads", "L", "k", "J", "mode", "token_forwards",
           "tf_ratio", "expected_tf_ratio", "wall_ms", "wall_ratio"]


def _model(device, dtype):
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024)
    torch.manual_seed(0)
    backbone = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(device=device, dtype=dtype)
    return ValueModel(backbone).eval(), "qwen3-tiny(h256,l4)"


def _time(fn, device, repeats):
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _tokens_per_call(vm, fn):
    vm.reset_counters()
    fn()
    return vm.counters.token_forwards


@torch.no_grad()
def run(rows_out=None, quick: bool = False, threads: int | None = None, lengths=(64, 512), k: int = 10,
        J: int = 4, dtype: torch.dtype = torch.float32) -> list[dict]:
    """Run the benchmark; append rows to ``rows_out`` (default bench/results/value.csv); return them.

    On the CPU, ``threads`` defaults to 1 (the tiny matmuls lose to threading overhead on a shared machine).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    old_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads or 1)
    try:
        vm, model_name = _model(device, dtype)
        repeats = 3 if quick else 7
        meta = {"device": device_name(device), "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "commit": git_commit(), "model": model_name, "dtype": str(dtype).replace("torch.", ""),
                "threads": torch.get_num_threads(), "k": k, "J": J}
        rows = []
        g = torch.Generator().manual_seed(0)
        for L in lengths:
            ids = torch.randint(0, vm.vocab_size, (J, L), generator=g).to(device)
            mask = torch.ones(J, L, dtype=torch.bool, device=device)
            cand = torch.randint(0, vm.vocab_size, (J, k), generator=g).to(device)
            rows_idx = torch.arange(J, device=device)

            def reforward():  # the released code: one full forward per candidate, no cache
                ones = torch.ones(J, L + 1, dtype=torch.bool, device=device)
                return torch.stack([vm.values(torch.cat([ids, cand[:, i:i + 1]], 1), ones)[:, -1]
                                    for i in range(k)], 1)

            def tree_prefix():
                return vm.score_candidates(ids, mask, cand)

            cache = vm.cache(ids[:, :-1], mask[:, :-1])
            cache.catch_up()
            next_tok = ids[:, -1]

            def tree_cached():  # one decode step: record the token, catch up (1 per row), score
                cache.append(next_tok)
                return cache.score(rows_idx, cand)

            modes = {"reforward": reforward, "tree_prefix": tree_prefix, "tree_cached": tree_cached}
            expected = {"reforward": 1.0, "tree_prefix": k * (L + 1) / (L + k), "tree_cached": k * (L + 1) / (1 + k)}
            tokens = {m: _tokens_per_call(vm, fn) for m, fn in modes.items()}
            # (tree_cached's prefix grows by one token per call: L + a few, negligible here)
            walls = {m: _time(fn, device, repeats) for m, fn in modes.items()}
            for m in modes:
                rows.append({**meta, "L": L, "mode": m, "token_forwards": tokens[m],
                             "tf_ratio": round(tokens["reforward"] / tokens[m], 3),
                             "expected_tf_ratio": round(expected[m], 3), "wall_ms": round(walls[m], 3),
                             "wall_ratio": round(walls["reforward"] / walls[m], 3)})
        append_csv(Path(rows_out) if rows_out is not None else DEFAULT_OUT, rows, COLUMNS)
        return rows
    finally:
        torch.set_num_threads(old_threads)


def print_table(rows) -> None:
    cols = ["L", "k", "J", "mode", "token_forwards", "tf_ratio", "expected_tf_ratio", "wall_ms", "wall_ratio"]
    print(f"# {rows[0]['device']}  {rows[0]['model']}  {rows[0]['dtype']}  commit {rows[0]['commit']}")
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).rjust(w) for c, w in zip(cols, widths)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats")
    parser.add_argument("--out", default=None, help=f"CSV to append to (default {DEFAULT_OUT})")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on the CPU)")
    args = parser.parse_args(argv)
    print_table(run(rows_out=args.out, quick=args.quick, threads=args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
