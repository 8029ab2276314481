"""What only the ``cpp`` backend needs (the shared contract suite, tests/test_junction_scan.py,
runs it through every other check): results independent of the thread count, the full Qwen3
vocabulary against float64, strided low-precision input, non-finite rows at the kernel's own
boundary, and the CUDA twin's compile check.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sia_kernels.reference import junction_scan_ref

from .contract import contract

ROOT = Path(__file__).resolve().parents[1]
V_QWEN = 151_936
FIELDS = ("entropy", "lse", "gate", "topk_ids", "topk_logprobs", "base_token", "junction_rows",
          "num_junctions", "junction_ids", "junction_logprobs")


@pytest.fixture(scope="module")
def pb():
    """The cpp backend; in CI a build failure is an error here, never a skip."""
    import python_bindings

    python_bindings.junction_scan_cpp  # builds or loads the op; raises ImportError on failure
    return python_bindings


def run(pb, logits, *, k=10, tau=1.0, temperature=1.0, scope="topk", sample_from="topk", seed=0, min_work=0):
    b = logits.shape[0]
    return pb.junction_scan_cpp(
        logits,
        k=k,
        tau=torch.full((b,), float(tau)),
        temperature=torch.as_tensor(temperature, dtype=torch.float32).expand(b).contiguous(),
        entropy_scope=scope,
        sample_from=sample_from,
        generator=torch.Generator().manual_seed(seed),
        min_work_per_thread=min_work,
    )


def assert_identical(a, b):
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape, f
        if x.is_floating_point():  # bitwise, NaN included
            x, y = x.view(torch.int32), y.view(torch.int32)
        assert torch.equal(x, y), f"{f} differs"


def close_to_f64(name, got, logits, want64, ref32):
    """|got - ref64| <= 2 |ref_f32 - ref64| + 1e-5 (1 + |ref64|) (docs/design.md §6)."""
    g = got.double().numpy()
    own = np.abs(ref32.double().numpy() - want64)
    err = np.abs(g - want64)
    bad = err > 2 * own + 1e-5 * (1 + np.abs(want64))
    assert not bad.any(), f"{name}: max err {err.max():.3g} (reference's own {own.max():.3g})"


# ------------------------------------------------------------------ thread-count invariance

@pytest.mark.parametrize("b,v", [(1, V_QWEN), (3, 4099), (64, 32000)])
@pytest.mark.parametrize("scope,sample_from", [("topk", "topk"), ("full", "full")])
@pytest.mark.parametrize("min_work", [1, 0], ids=["forced-split", "crossover"])
def test_same_results_with_one_and_two_threads(pb, b, v, scope, sample_from, min_work):
    # B < threads splits rows into vocabulary slices; B >= threads runs whole rows per thread.
    # min_work = 1 makes even a small scan use both threads, so both split paths run here.
    assert pb.cpu_omp_threads(1) == 1 and pb.cpu_omp_threads(2) == 2, "OpenMP ignores the thread count"
    logits = torch.randn(b, v, generator=torch.Generator().manual_seed(v)) * 4
    logits[0, ::3] = -math.inf
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)  # the op runs on torch.get_num_threads() threads
            assert torch.get_num_threads() == n
            outs.append(run(pb, logits, k=64, tau=2.0, temperature=0.8, scope=scope, sample_from=sample_from, seed=5,
                            min_work=min_work))
    finally:
        torch.set_num_threads(before)
    assert_identical(*outs)


_CHILD = """
import hashlib, torch, python_bindings as pb
g = torch.Generator().manual_seed(1)
x = torch.randn(2, 151936, generator=g) * 3
h = hashlib.sha256()
for sf in ("topk", "full"):
    out = pb.junction_scan_cpp(x, k=10, tau=torch.full((2,), 1.0), temperature=torch.full((2,), 1.0),
                               entropy_scope="full", sample_from=sf, generator=torch.Generator().manual_seed(3))
    for t in out:
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
print(torch.get_num_threads(), pb.cpu_omp_threads(0), h.hexdigest())
"""


@pytest.mark.slow
def test_same_results_under_omp_num_threads(pb):
    """OMP_NUM_THREADS=1 and =2 in fresh processes: same bytes out."""
    got = []
    for n in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=n, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        res = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        threads, omp, digest = res.stdout.split()[-3:]
        assert threads == n and omp == n, f"asked for {n} threads, torch has {threads}, OpenMP {omp}"
        got.append(digest)
    assert got[0] == got[1]


# ------------------------------------------------------------------ accuracy at full size

@pytest.mark.parametrize("b", [1, 64])
@pytest.mark.parametrize("scope", ["topk", "full"])
def test_qwen_vocabulary_against_float64(pb, b, scope):
    g = torch.Generator().manual_seed(b)
    # Mixed rows: wide and peaked distributions, and very large logits.
    logits = torch.randn(b, V_QWEN, generator=g) * torch.linspace(0.5, 8.0, b).unsqueeze(1)
    logits[-1] *= 1e3
    k = 64
    out = run(pb, logits, k=k, tau=3.0, scope=scope)
    want = contract(logits, k, scope)
    ref32 = junction_scan_ref(logits, k=k, tau=torch.full((b,), 3.0), temperature=torch.ones(b),
                              entropy_scope=scope, sample_from="topk")
    for f in ("entropy", "lse", "topk_logprobs"):
        close_to_f64(f, getattr(out, f), logits, want[f], getattr(ref32, f))
    assert np.array_equal(out.topk_ids.numpy(), want["topk_ids"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("v", [1000, V_QWEN])
def test_strided_low_precision_input(pb, dtype, v):
    """Rows of a wider buffer (row stride > V), in bf16/f16, with a tail chunk of odd length."""
    g = torch.Generator().manual_seed(v)
    wide = (torch.randn(5, v + 37, generator=g) * 3).to(dtype)
    wide[1, :: 7] = -math.inf
    logits = wide[:, 5 : 5 + v]
    assert logits.stride(0) == v + 37 and not logits.is_contiguous()
    for scope in ("topk", "full"):
        out = run(pb, logits, k=10, scope=scope)
        dense = run(pb, logits.contiguous(), k=10, scope=scope)
        assert_identical(out, dense)
        want = contract(logits, 10, scope)
        ref32 = junction_scan_ref(logits, k=10, tau=torch.ones(5), temperature=torch.ones(5),
                                  entropy_scope=scope, sample_from="topk")
        for f in ("entropy", "lse", "topk_logprobs"):
            close_to_f64(f, getattr(out, f), logits, want[f], getattr(ref32, f))
        assert np.array_equal(out.topk_ids.numpy(), want["topk_ids"])


def test_expanded_rows_with_zero_stride(pb):
    row = torch.randn(1, 5000)
    out = run(pb, row.expand(4, 5000), k=10, temperature=0.0)
    one = run(pb, row, k=10, temperature=0.0)
    assert torch.equal(out.topk_ids, one.topk_ids.expand(4, 10)) and torch.equal(out.lse, one.lse.expand(4))


# ------------------------------------------------------------------ non-finite rows

@pytest.mark.parametrize("v", [100, 5000])
def test_non_finite_rows_reach_the_lse(pb, v):
    """NaN anywhere -> NaN lse (even next to +inf or in a -inf row); +inf -> +inf; all -inf -> -inf.
    ops.py raises from these; the kernel itself must not crash or return out-of-range ids."""
    x = torch.randn(6, v)
    x[0, v - 1] = math.nan
    x[1, 3] = math.inf
    x[2] = -math.inf
    x[3, 0], x[3, v // 2] = math.inf, math.nan
    x[4] = -math.inf
    x[4, v - 2] = math.nan
    for sample_from in ("topk", "full"):
        out = run(pb, x, k=min(64, v), sample_from=sample_from)
        lse = out.lse.tolist()
        assert math.isnan(lse[0]) and lse[1] == math.inf and lse[2] == -math.inf
        assert math.isnan(lse[3]) and math.isnan(lse[4]) and math.isfinite(lse[5])
        assert not out.gate[:5].any()
        assert ((out.topk_ids >= 0) & (out.topk_ids < v)).all()
        assert ((out.base_token >= 0) & (out.base_token < v)).all()


def test_public_op_uses_cpp_and_raises_on_nan(pb):
    from sia_kernels import junction_scan

    x = torch.randn(3, 1000)
    x[2, 10] = math.nan
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        junction_scan(x, k=10, tau=1.0, backend="cpp")


# ------------------------------------------------------------------ the CUDA twin compiles

@pytest.mark.slow
def test_cuda_sources_compile():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but nvcc is not installed: csrc/cuda/ would rot unchecked")
        pytest.skip("nvcc not found")
    res = subprocess.run(["bash", str(ROOT / "csrc" / "cuda" / "compile_check.sh")], env=dict(os.environ, NVCC=nvcc),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "OK (sm_80, sm_90)" in res.stdout
