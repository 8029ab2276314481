"""Scan microbenchmark shared by ``sia bench scan`` and ``bench/bench_scan.py``.

Reports physics: time per call, GB/s of logits read, speedup over the eager composite (what a
user writes without this package) and the fraction of one plain read of the same logits
(``logits.sum()``, the memory floor measured in the same run). Rows are appended to a CSV with
device, date and commit.
"""
from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

from . import ops, reference

FIELDS = ["date", "commit", "device", "method", "dtype", "B", "V", "k", "time_us", "gbps",
          "speedup_vs_eager", "read_floor_ratio"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def time_call(fn: Callable[[], object], device: torch.device, min_time: float = 0.3) -> float:
    """Median seconds per call. On CUDA: triton's do_bench (L2 flushed between calls)."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3
    fn()  # warm-up (and first-use builds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scan_methods(device: torch.device, k: int, tau: float, compile_: bool) -> dict[str, Callable]:
    """method name -> fn(logits). Every backend that runs here, the eager composite, its
    torch.compile, and the one-read floor."""
    methods: dict[str, Callable] = {"read_floor": lambda x: x.sum()}
    methods["eager"] = lambda x: reference.eager_composite(x, k, tau)
    if compile_:
        compiled = torch.compile(reference.eager_composite, dynamic=False)
        methods["torch_compile"] = lambda x: compiled(x, k, tau)
    for name in ops.available_backends(device):
        if name == "triton" and device.type == "cpu":
            continue  # the interpreter is a correctness tool, not a speed
        methods[name] = lambda x, name=name: ops.junction_scan(x, k=k, tau=tau, backend=name)
    return methods


def run_scan_bench(
    *,
    device: str = "cpu",
    batches=(1, 8, 64, 256),
    dtypes=(torch.float32, torch.bfloat16),
    vocab: int = 151_936,
    k: int = 10,
    tau: float = 1.0,
    methods: list[str] | None = None,
    compile_: bool = True,
    csv_path: str | os.PathLike | None = "bench/results/scan.csv",
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Time every method at each (dtype, B); print a table; append rows to ``csv_path``."""
    dev = torch.device(device)
    fns = scan_methods(dev, k, tau, compile_)
    if methods is not None:
        unknown = set(methods) - set(fns)
        if unknown:
            raise ValueError(f"methods {sorted(unknown)} are not available here; choose from {sorted(fns)}")
        fns = {m: fns[m] for m in fns if m in methods or m in ("read_floor", "eager")}
    stamp = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 commit=git_commit(), device=device_name(dev))
    rows = []
    log(f"{'method':>14} {'dtype':>9} {'B':>4} {'time_us':>10} {'GB/s':>8} {'vs eager':>9} {'vs read':>8}")
    for dtype in dtypes:
        for b in batches:
            x = (4 * torch.randn(b, vocab, device=dev)).to(dtype)
            nbytes = x.numel() * x.element_size()
            t = {name: time_call(lambda fn=fn: fn(x), dev) for name, fn in fns.items()}
            for name, sec in t.items():
                row = dict(stamp, method=name, dtype=str(dtype).removeprefix("torch."), B=b, V=vocab, k=k,
                           time_us=round(sec * 1e6, 2), gbps=round(nbytes / sec / 1e9, 2),
                           speedup_vs_eager=round(t["eager"] / sec, 2),
                           read_floor_ratio=round(sec / t["read_floor"], 2))
                rows.append(row)
                log(f"{name:>14} {row['dtype']:>9} {b:>4} {row['time_us']:>10.1f} {row['gbps']:>8.2f} "
                    f"{row['speedup_vs_eager']:>8.2f}x {row['read_floor_ratio']:>7.2f}x")
    if csv_path:
        append_csv(csv_path, rows, FIELDS)
        log(f"appended {len(rows)} rows to {csv_path}")
    return rows


def append_csv(path, rows: list[dict], fields: list[str]) -> None:
    """Append ``rows`` (keys outside ``fields`` are left out) to the CSV at ``path``, with a header
    when the file is new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)
