"""Triton junction-scan internals: paths the shared suite's shapes do not reach.

Interpreted runs use one tile per row for V <= 8k, so these tests force small tiles, row
packing, many vocabulary splits (each with a masked head and tail tile around unmasked body
tiles), the selection paths (extraction up to K_PAD = 64, in rounds where slots hold several
vectors; a bitonic sort of the tile above; tiles whose sums stay under the gate skipped)
and many merge programs (the last one compacts, with the carry of the
prefix sum over small blocks) through ``launch_scan(plan=...)``, and check every field against
the float64 reference.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sia_kernels.reference import junction_scan_ref

jsk = pytest.importorskip("sia_kernels.kernels.junction_scan")
# The kernels' internals, forced through small tiles and many splits: ~1 min under the CPU
# interpreter, so the full suite runs them and the fast subset (-m "not slow") does not.
pytestmark = pytest.mark.slow if not torch.cuda.is_available() else []
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def plan(b, v, k, *, block_v, rows1, splits, rows2, slots=0):
    """A launch plan with the given tile, split, merge-block and extraction-slot sizes (slots:
    0 = one per 16-byte vector here; fewer make each slot hold several vectors, taken in rounds)."""
    k_pad = 1 << (k - 1).bit_length()
    block_v = max(block_v, k_pad) if k_pad > 64 else block_v
    split_len = -(-(-(-v // splits)) // 16) * 16  # ceil(ceil(v / splits) / 16) * 16
    s = -(-v // split_len)
    return jsk.ScanPlan(
        rows1=rows1, block_v=block_v, k_pad=k_pad, splits=s, split_len=split_len,
        s_pad=1 << (s - 1).bit_length(), rows2=rows2, warps1=4, warps2=4, slots=slots,
    )


def launch(logits, k, tau, temperature, scope, sample, p, seed=1234):
    seed_t = torch.tensor([seed], dtype=torch.int64, device=logits.device)
    return jsk.launch_scan(logits, k, tau, temperature, seed_t, scope == "full", sample == "full", plan=p)


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
    [dict(block_v=16, rows1=2, splits=4, rows2=2), dict(block_v=64, rows1=4, splits=2, rows2=4, slots=2),
     dict(block_v=32, rows1=8, splits=1, rows2=1)],
    ids=["many-splits", "packed-rows-rounds", "one-split"],
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


@pytest.mark.parametrize(
    "dtype,k,rows1",
    [(torch.bfloat16, 10, 1), (torch.bfloat16, 3, 2), (torch.float16, 10, 2), (torch.float32, 10, 1)],
)
def test_extraction_and_fast_path(dtype, k, rows1):
    """Many small tiles per split: after its first tile a program only extracts the few logits
    above its running k-th best (16-bit logits: value and lane packed in one int32), from the
    vectors whose sums pass the gate, gathered one per slot and round (two slots: several
    rounds per tile, and slots holding several candidates rescanned), and tiles whose sums
    stay under the gate skip everything but (d, s). Ties across tiles and signs of
    zero (equal: the lower id first), negative k-th bests, -inf runs, a late jump of the row max
    (the reference moves) and a NaN-free row of huge spread."""
    b, v = 8, 900
    g = torch.Generator().manual_seed(7)
    z = 3 * torch.randn(b, v, generator=g)
    z[1] = -1.0  # full after the first tile with a negative k-th best; then one tile of zeros,
    z[1, 100:140] = 0.0  # -0.0 at even ids, +0.0 at odd ones: equal, so the lower ids win
    z[1, 100:140:2] = -0.0
    z[2] = torch.linspace(-4.0, 4.0, v)  # ascending: candidates in every tile
    z[3, 100:600] = -math.inf
    z[4] = -50.0 - z[4].abs()  # every logit negative: a negative k-th best
    z[5, :700] -= 40.0  # the row max jumps late: the reference moves, the sums rescale
    z[6, ::7] = 2.5  # ties across tiles and splits
    z[7] = 0.25 * z[7]  # flat: the gate admits many tiles
    logits = z.to(dtype).to(DEVICE)
    tau = torch.full((b,), 1.0, device=DEVICE)
    for sizes in (dict(block_v=32, splits=2), dict(block_v=64, splits=3), dict(block_v=128, splits=2, slots=2)):
        p = plan(b, v, k, rows1=rows1, rows2=2, **sizes)
        out = launch(logits, k, tau, torch.zeros(b, device=DEVICE), "full", "topk", p)
        assert_matches(out, logits, k, tau, "full")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k", [4, 10])
def test_first_tile_floor(dtype, k):
    """Until a row holds k keys only the logits at or above its floor are extracted (the k-th
    largest vector maximum of the split's first two tiles, ``_seed``; one tile where a split
    has no body tile): ties at the floor in one vector and across vectors, a floor of exactly
    zero (signed zeros equal), negative floors, exactly k vectors above -inf (the floor is the
    smallest of them) and fewer (no floor: -inf logits are candidates, lower ids first)."""
    b, v = 8, 512
    z = torch.randn(b, v, generator=torch.Generator().manual_seed(11))
    z[0] = -1.0
    z[0, 40:120] = 0.0  # the floor is exactly zero: -0.0 at even ids, +0.0 at odd ones
    z[0, 40:120:2] = -0.0
    z[0, 200:203] = 0.5
    z[1] = -2.0
    z[1, 8:16] = -1.0  # one vector of ties at a negative floor, and more in other vectors
    z[1, 300:340:5] = -1.0
    z[2] = -math.inf
    z[2, 0:8 * k:8] = torch.linspace(-3.0, 3.0, k)  # exactly k vectors above -inf
    z[3] = -math.inf
    z[3, 0:8 * (k - 1):8] = 1.0  # k - 1 vectors: every logit of the tile is a candidate
    z[4, 64:72] = 3.0  # one vector of equal maxima
    z[5] = z[5].abs().neg() - 0.5  # all negative
    logits = z.to(dtype).to(DEVICE)
    tau = torch.full((b,), 1.0, device=DEVICE)
    for sizes in (dict(block_v=128, splits=1), dict(block_v=256, splits=2, slots=4)):
        out = launch(logits, k, tau, torch.zeros(b, device=DEVICE), "topk", "topk",
                     plan(b, v, k, rows1=1, rows2=2, **sizes))
        assert_matches(out, logits, k, tau, "topk")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_an_equal_logit_in_a_later_round_with_a_lower_id_wins(dtype):
    """Slots gather their hot vectors in rounds, so a later round can hold a lower column than
    an earlier one: f32 vectors 0 and 2 are slot 0's (rounds 1 and 2), vector 5 slot 1's
    (round 1). With k = 2 the row is full after round 1 with 3.0 at column 20 as its k-th
    best; round 2's equal 3.0 at column 8 must still replace it (ties go to the lower id).
    (Before the fix a later round's equal logit was no candidate: the greedy token of a row
    with tied maxima in one tile could be the higher id.)"""
    vec = 16 // torch.empty((), dtype=dtype).element_size()
    z = torch.full((2, 128), -1.0)
    z[:, 0] = 5.0
    z[:, 2 * vec] = 3.0  # vector 2: slot 0, round 2
    z[:, 5 * vec] = 3.0  # vector 5: slot 1, round 1
    z[1, 64:] = 4.0  # row 1: full from the first tile on, the ties in later tiles
    z[1, 64 + 2 * vec] = 6.0
    logits = z.to(dtype).to(DEVICE)
    tau = torch.full((2,), 1.0, device=DEVICE)
    for k in (2, 3):
        out = launch(logits, k, tau, torch.zeros(2, device=DEVICE), "topk", "topk",
                     plan(2, 128, k, rows1=1, rows2=2, block_v=8 * vec, splits=1, slots=2))
        assert_matches(out, logits, k, tau, "topk")
    # The same in a later tile of a full row, k = 1 (the greedy token): the first tile's 1.0 is
    # the best; the second tile's 2.0 (vector 0) and 3.0 (vector 5) enter in round 1, its equal
    # 3.0 at the lower column (vector 2) in round 2, and must win.
    z = torch.full((1, 16 * vec), -30.0)
    z[0, 0] = 1.0
    z[0, 8 * vec] = 2.0
    z[0, 8 * vec + 2 * vec] = 3.0
    z[0, 8 * vec + 5 * vec] = 3.0
    out = launch(z.to(dtype).to(DEVICE), 1, tau[:1], torch.zeros(1, device=DEVICE), "topk", "topk",
                 plan(1, 16 * vec, 1, rows1=1, rows2=1, block_v=8 * vec, splits=1, slots=2))
    assert out.topk_ids.tolist() == [[10 * vec]] and out.base_token.tolist() == [10 * vec]


@pytest.mark.parametrize("k", [1000, 1024])
def test_k_up_to_the_limit(k):
    logits = adversarial(6, 4099).to(DEVICE)
    tau = torch.zeros(6, device=DEVICE)
    for scope in ("topk", "full"):
        out = jsk.junction_scan_triton(
            logits, k=k, tau=tau, temperature=torch.zeros(6, device=DEVICE), entropy_scope=scope,
            sample_from="topk", generator=None,
        )
        assert_matches(out, logits, k, tau, scope)


def test_k_above_the_limit_raises():
    """An explicit triton request never silently runs another backend."""
    logits = torch.randn(2, 2000, device=DEVICE)
    with pytest.raises(ValueError, match="k must be <= 1024"):
        jsk.junction_scan_triton(logits, k=1025, tau=torch.zeros(2, device=DEVICE),
                                 temperature=torch.zeros(2, device=DEVICE), entropy_scope="topk",
                                 sample_from="topk", generator=None)
    with pytest.raises(ValueError, match="1024"):
        jsk.plan_scan(2, 2000, 1025)


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


@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_sorted_rows_many_candidates(order):
    """Sorted rows defeat the running-threshold filter: every tile of an ascending row holds
    k candidates, many in one slot (rescans, and rounds with several vectors per slot); a
    descending row holds none after its first tile (every later tile skipped)."""
    b, v, k = 3, 700, 10
    z = torch.arange(v, dtype=torch.float32).expand(b, -1).clone() * 0.01
    if order == "descending":
        z = z.flip(1)
    z[1] += 0.5 * torch.randn(v, generator=torch.Generator().manual_seed(3))
    tau = torch.full((b,), 1.0, device=DEVICE)
    for slots in (0, 4):  # 4: every tile of an ascending row takes four rounds
        out = launch(z.to(DEVICE), k, tau, torch.zeros(b, device=DEVICE), "topk", "topk",
                     plan(b, v, k, block_v=128, rows1=1, splits=2, rows2=2, slots=slots))
        assert_matches(out, z.to(DEVICE), k, tau, "topk")


def _philox(seed: int, c0: np.ndarray, c1: np.ndarray) -> tuple[np.ndarray, ...]:
    """Philox4x32-10 (Random123), counters (c0, c1, 0, 0), key (seed lo, seed hi)."""
    m = np.uint64(0xFFFFFFFF)
    c = [c0.astype(np.uint64), c1.astype(np.uint64), np.zeros_like(c0, np.uint64), np.zeros_like(c0, np.uint64)]
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [((p1 >> np.uint64(32)) ^ c[1] ^ k0) & m, p1 & m, ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & m, p0 & m]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & m, (k1 + np.uint64(0xBB67AE85)) & m
    return tuple(c)


def spec_gumbel(seed: int, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The shared sampler spec's noise g(row, token id), in float64."""
    r0, r1, r2, r3 = _philox(seed, ids >> 1, rows)
    odd = (ids & 1) == 1
    hi, lo = np.where(odd, r2, r0).astype(np.float64), np.where(odd, r3, r1).astype(np.float64)
    w = np.minimum(hi * 2.0**-32 + (lo + 0.5) * 2.0**-64, 1 - 2.0**-24)
    return -np.log(-np.log1p(-w))


@pytest.mark.parametrize("sample", ["full", "topk"])
def test_noise_follows_the_shared_spec(sample):
    """All logits equal: the draw is argmax over the candidates of the spec's Philox noise,
    keyed by (seed, row, token id), whatever the plan."""
    b, v, k, seed = 16, 64, 64, 0x1234_5678_9ABC
    logits = torch.zeros(b, v, device=DEVICE)
    got = launch(logits, k, torch.zeros(b, device=DEVICE), torch.ones(b, device=DEVICE), "topk", sample,
                 plan(b, v, k, block_v=16, rows1=2, splits=4, rows2=2), seed=seed).base_token.cpu()
    rows, ids = np.meshgrid(np.arange(b), np.arange(v), indexing="ij")
    expect = spec_gumbel(seed, rows, ids).argmax(1)
    assert got.tolist() == expect.tolist()


def test_full_and_topk_sampling_share_noise_and_tiny_t_is_greedy():
    """Noise is keyed by token id: when the top-k holds every finite token, full and top-k
    sampling draw the same token. Keys are z + T g: T = 1e-36 is the greedy argmax."""
    b, v, k = 12, 96, 8
    z = torch.full((b, v), -math.inf)
    g = torch.Generator().manual_seed(5)
    for r in range(b):
        z[r, torch.randperm(v, generator=g)[:k]] = torch.randn(k, generator=g)
    z = z.to(DEVICE)
    p = plan(b, v, k, block_v=32, rows1=4, splits=2, rows2=4)
    tau, temp = torch.zeros(b, device=DEVICE), torch.full((b,), 1.3, device=DEVICE)
    full = launch(z, k, tau, temp, "topk", "full", p, seed=77).base_token
    topk = launch(z, k, tau, temp, "topk", "topk", p, seed=77).base_token
    assert torch.equal(full, topk)
    assert not torch.equal(full, z.argmax(1))
    tiny = torch.full((b,), 1e-36, device=DEVICE)
    for sample in ("full", "topk"):
        assert torch.equal(launch(z, k, tau, tiny, "topk", sample, p).base_token, z.argmax(1))


def test_plan_is_typed_bucketed_and_validated():
    p = jsk.plan_scan(64, 151_936, 10)
    assert isinstance(p, jsk.ScanPlan) and p == jsk.plan_scan(40, 151_936, 10)  # one bucket
    assert p.split_len % 16 == 0 and p.splits * p.split_len >= 151_936
    assert jsk.plan_scan(1, 151_936, 10).splits > p.splits  # small batches split the row more
    assert jsk.plan_scan(256, 151_936, 10) == jsk.plan_scan(300, 151_936, 10) == jsk.plan_scan(5000, 151_936, 10)
    with pytest.raises(ValueError, match="slots"):
        jsk.kernel_meta(p._replace(slots=3), torch.bfloat16, scope_full=False, sample_full=False)
    for bad in (dict(b=0), dict(v=-1), dict(k=True), dict(num_sms=0)):
        args = dict(b=4, v=100, k=5, num_sms=132) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            jsk.plan_scan(args.pop("b"), args.pop("v"), args.pop("k"), **args)


def test_warmup_runs_every_bucket_once():
    with pytest.raises(ValueError, match="k_values"):
        jsk.warmup(DEVICE, vocab_size=50, k_values=(0,))
    with pytest.raises(ValueError, match="vocab_size"):
        jsk.warmup(DEVICE, vocab_size=0)
    assert jsk.warmup(DEVICE, vocab_size=50, k_values=(3,), batch_sizes=(1, 3, 4), dtypes=(torch.float32,)) == 2
