"""GPU-only measurements for bench/gpu_check.sh: copy bandwidth, the scan table (do_bench, cold
L2), a CUDA-graph replay timing and the number of kernel launches per scan of the backend alone."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from triton.testing import do_bench

from sia_kernels.bench import append_csv, device_name, git_commit, run_scan_bench

V = 151_936


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy, GB/s counting bytes read + written (what the memory moves; a
    one-read kernel at the same rate scores 1.0)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=10, rep=50, return_mode="median")
    return 2 * nbytes / (ms * 1e-3) / 1e9


def _backend_call(backend: str, x: torch.Tensor):
    """The backend's own scan on ready [B] f32 tau/temperature tensors: what the decoder runs,
    without the public wrapper's validation (its host reads and small checking kernels)."""
    from sia_kernels.ops import resolve_backend

    _, scan = resolve_backend(backend, x.device)
    b = x.shape[0]
    tau = torch.full((b,), 1.0, device="cuda")
    temp = torch.ones(b, device="cuda")
    return lambda: scan(x, k=10, tau=tau, temperature=temp, entropy_scope="topk", sample_from="topk",
                        generator=None)


def launches(backend: str, x: torch.Tensor) -> int:
    """Kernels launched by one scan of the backend alone (triton: the seed draw + 2)."""
    call = _backend_call(backend, x)
    call()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)


def graph_time_us(backend: str, x: torch.Tensor) -> float:
    """One scan captured in a CUDA graph, replayed: the launch-free floor of the step."""
    call = _backend_call(backend, x)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        call()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        call()
    return do_bench(g.replay, warmup=10, rep=100, return_mode="median") * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results/gpu")
    out = Path(p.parse_args().out)
    bw = copy_bandwidth()
    print(f"device-to-device copy: {bw:.0f} GB/s (read + write)")
    rows = run_scan_bench(device="cuda", csv_path=out / "scan.csv")
    extra = []
    from sia_kernels.kernels.junction_scan import warmup

    warmup("cuda", vocab_size=V, k_values=(10,), dtypes=(torch.bfloat16, torch.float32))  # compile first
    for backend in ("triton", "cuda"):
        for dtype in (torch.bfloat16, torch.float32):
            for b in (1, 8, 64, 256):
                x = torch.randn(b, V, device="cuda").to(dtype)
                try:
                    n, g_us = launches(backend, x), graph_time_us(backend, x)
                except RuntimeError as e:
                    print(f"{backend}: {e}")
                    break
                t_us = next(r["time_us"] for r in rows
                            if r["method"] == backend and r["B"] == b and r["dtype"] == str(dtype)[6:])
                gbps = x.numel() * x.element_size() / (t_us * 1e-6) / 1e9
                extra.append(dict(date=rows[0]["date"], commit=git_commit(), device=device_name(x.device),
                                  backend=backend, dtype=str(dtype)[6:], B=b, V=V, launches=n,
                                  time_us=t_us, graph_us=round(g_us, 2), gbps=round(gbps, 1),
                                  copy_gbps=round(bw, 1), frac_of_copy=round(gbps / bw, 3)))
                print(extra[-1])
    append_csv(out / "gpu_scan.csv", extra, list(extra[0]) if extra else [])


if __name__ == "__main__":
    main()
