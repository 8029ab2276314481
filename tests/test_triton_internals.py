"""Triton junction-scan internals: paths the shared suite's shapes do not reach.

Interpreted runs use one tile per row for V <= 8k, so these tests force small tiles, row
packing, many vocabulary splits and small merge blocks (the carry of the prefix sum) through
``_launch(plan=...)``, and check every field against the float64 reference.
"""
from __future__ import annotations

import math

import pytest
import torch

from sia_kernels.reference import junction_scan_ref

jsk = pytest.importorskip("sia_kernels.kernels.junction_scan")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def plan(b, v, k, *, block_v, rows1, splits, rows2):
    """A launch plan with the given tile, split and merge-block sizes."""
    k_pad = 1 << (k - 1).bit_length()
    block_v = max(block_v, k_pad)
    n_tiles = -(-v // block_v)
    split_len = -(-n_tiles // splits) * block_v
    s = -(-v // split_len)
    return dict(
        ROWS1=rows1, BLOCK_V=block_v, K_PAD=k_pad, S=s, SPLIT_LEN=split_len,
        S_PAD=1 << (s - 1).bit_length(), ROWS2=rows2, warps1=4, warps2=4,
    )


def launch(logits, k, tau, temperature, scope, sample, p, seed=1234):
    seed_t = torch.tensor([seed], dtype=torch.int64, device=logits.device)
    return jsk._launch(logits, k, tau, temperature, seed_t, scope == "full", sample == "full", plan=p)


def adversarial(b, v, seed=0):
    z = 3 * torch.randn(b, v, generator=torch.Generator().manual_seed(seed))
    z[0, ::3] = -math.inf
    z[1] = -math.inf
    z[1, v - 1] = 2.0  # a single finite entry, in the last split
    z[2] = 0.5  # all equal
    z[3, : v // 2] = -math.inf  # whole splits of -inf before the mass
    z[4] = 0.0
    z[4, ::7] = 1.0  # ties across tiles and splits
    z[5] = -120.0 + torch.randn(v, generator=torch.Generator().manual_seed(1))  # e^z underflows
    return z


def assert_matches(out, logits, k, tau, scope):
    ref = junction_scan_ref(
        logits, k=k, tau=tau, temperature=torch.zeros_like(tau), entropy_scope=scope,
        sample_from="topk", dtype=torch.float64,
    )
    torch.testing.assert_close(out.lse.double(), ref.lse.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.entropy.double(), ref.entropy.double(), atol=2e-5, rtol=1e-5)
    assert torch.equal(out.topk_ids, ref.topk_ids)
    torch.testing.assert_close(out.topk_logprobs.double(), ref.topk_logprobs.double(), atol=1e-5, rtol=1e-5)
    assert torch.equal(out.gate, out.entropy.double() > tau.double())
    rows = out.gate.nonzero().flatten()
    j = rows.numel()
    assert int(out.num_junctions) == j
    assert torch.equal(out.junction_rows[:j], rows)
    assert torch.equal(out.junction_ids[:j], out.topk_ids[rows])
    assert torch.equal(out.junction_logprobs[:j], out.topk_logprobs[rows])
    assert not out.junction_rows[j:].any() and not out.junction_ids[j:].any()
    assert not out.junction_logprobs[j:].any()


@pytest.mark.parametrize("k", [1, 3, 10, 64, 100])  # 100: K_PAD 128, the bitonic path
@pytest.mark.parametrize(
    "sizes",
    [dict(block_v=16, rows1=2, splits=4, rows2=2), dict(block_v=64, rows1=4, splits=2, rows2=4),
     dict(block_v=32, rows1=8, splits=1, rows2=1)],
    ids=["many-splits", "packed-rows", "one-split"],
)
@pytest.mark.parametrize("scope", ["topk", "full"])
def test_forced_plans(k, sizes, scope):
    b, v = 7, 150
    logits = adversarial(b, v).to(DEVICE)
    tau = torch.linspace(-0.5, 3.0, b, device=DEVICE)
    tau[0] = -math.inf
    tau[-1] = math.inf
    out = launch(logits, k, tau, torch.zeros(b, device=DEVICE), scope, "topk", plan(b, v, k, **sizes))
    assert_matches(out, logits, k, tau, scope)
    assert torch.equal(out.base_token, out.topk_ids[:, 0])


def test_strided_bf16_multi_split():
    wide = torch.randn(6, 700, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16).to(DEVICE)
    logits = wide[:, 50:650]
    tau = torch.full((6,), 2.0, device=DEVICE)
    out = launch(logits, 10, tau, torch.zeros(6, device=DEVICE), "topk", "topk",
                 plan(6, 600, 10, block_v=32, rows1=2, splits=4, rows2=2))
    assert_matches(out, logits, 10, tau, "topk")


@pytest.mark.parametrize("k", [4095, 4099])
def test_k_equals_v_large(k):
    logits = adversarial(6, 4099).to(DEVICE)
    tau = torch.zeros(6, device=DEVICE)
    for scope in ("topk", "full"):
        out = jsk.junction_scan_triton(
            logits, k=k, tau=tau, temperature=torch.zeros(6, device=DEVICE), entropy_scope=scope,
            sample_from="topk", generator=None,
        )
        assert_matches(out, logits, k, tau, scope)


def test_bad_rows_give_non_finite_lse():
    z = torch.randn(4, 300)
    z[0, 5] = math.nan
    z[1, 299] = math.inf
    z[2] = -math.inf
    p = plan(4, 300, 10, block_v=16, rows1=2, splits=3, rows2=2)
    out = launch(z.to(DEVICE), 10, torch.zeros(4, device=DEVICE), torch.ones(4, device=DEVICE), "full", "full", p)
    lse = out.lse.cpu()
    assert math.isnan(lse[0]) and lse[1] == math.inf and lse[2] == -math.inf
    assert math.isfinite(lse[3])


@pytest.mark.parametrize("sample", ["full", "topk"])
def test_draws_do_not_depend_on_the_plan(sample):
    """Philox counters are (row, token) or (row, candidate): tiles and splits change nothing."""
    b, v, k = 8, 200, 10
    logits = torch.randn(b, v, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    temp = torch.full((b,), 1.5, device=DEVICE)
    temp[3] = 0.0
    tau = torch.zeros(b, device=DEVICE)
    tokens = [
        launch(logits, k, tau, temp, "topk", sample, plan(b, v, k, **sizes)).base_token
        for sizes in (dict(block_v=32, rows1=2, splits=3, rows2=2), dict(block_v=256, rows1=8, splits=1, rows2=8))
    ]
    assert torch.equal(tokens[0], tokens[1])
    assert tokens[0][3] == logits[3].argmax()
    other = launch(logits, k, tau, temp, "topk", sample, plan(b, v, k, block_v=64, rows1=2, splits=2, rows2=4), seed=99)
    assert not torch.equal(other.base_token, tokens[0])


def test_sampling_multi_split_frequencies():
    """Gumbel-max merged over splits matches softmax(z / T); -inf tokens never drawn."""
    z = torch.tensor([1.0, -math.inf, 0.5, 2.0, -1.0, 0.0, -math.inf, 1.5] * 4)
    z[8:] -= 1.0  # later splits carry less mass
    n = 10000  # x 5 seeds = 50k draws: frequency errors ~0.002
    logits = z.expand(n, -1).to(DEVICE)
    temp = torch.full((n,), 0.8, device=DEVICE)
    p = plan(n, z.numel(), 4, block_v=8, rows1=2048, splits=4, rows2=4096)
    counts = torch.zeros(z.numel(), dtype=torch.float64)
    for seed in range(5):
        out = launch(logits, 4, torch.zeros(n, device=DEVICE), temp, "topk", "full", p, seed=seed)
        counts += torch.bincount(out.base_token.cpu(), minlength=z.numel()).double()
    probs = torch.softmax(z.double() / 0.8, 0)
    assert (counts[probs == 0] == 0).all()
    assert torch.nn.functional.cosine_similarity(counts / counts.sum(), probs, dim=0) > 0.99
    assert ((counts / counts.sum() - probs).abs() < 0.01).all()
