"""junction_scan microbenchmark (pytest-benchmark, or ``python bench/bench_scan.py``).

    pytest bench/bench_scan.py --benchmark-only --benchmark-group-by=param:dtype,param:b
    python bench/bench_scan.py           # same table as ``sia bench scan``, CSV rows appended

Every available backend against the eager composite and its torch.compile, V = 151,936,
B in {1, 8, 64, 256}, f32 and bf16, and a one-read floor (``logits.sum()``).
"""
from __future__ import annotations

import pytest
import torch

from sia_kernels.bench import run_scan_bench, scan_methods

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
V = 151_936
METHODS = scan_methods(DEVICE, k=10, tau=1.0, compile_=True)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("b", [1, 8, 64, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_scan(benchmark, method, b, dtype):
    x = (4 * torch.randn(b, V, device=DEVICE)).to(dtype)
    fn = METHODS[method]
    benchmark.extra_info["gb_read"] = x.numel() * x.element_size() / 1e9
    if DEVICE.type == "cuda":
        benchmark.pedantic(lambda: (fn(x), torch.cuda.synchronize()), rounds=50, warmup_rounds=5)
    else:
        benchmark(fn, x)


if __name__ == "__main__":
    run_scan_bench(device=str(DEVICE))
