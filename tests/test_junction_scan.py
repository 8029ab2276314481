"""The junction-scan contract, one parametrised suite for every backend (docs/design.md §1, §2, §6).

Each backend is compared with an independent float64 oracle (tests/contract.py, computed once
per input and shared by the backends); the allowed error is twice the float32 reference's own
error plus a small epsilon (flash-attention's rule). Without a GPU, ``triton`` runs under
TRITON_INTERPRET=1 and only at V <= 8k.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sia_kernels
from sia_kernels import junction_scan, reference, steer

from .contract import BACKENDS, DEVICE, INTERPRETED_MAX_V, P_MIN, chi_square_p, contract, slow_if_interpreted

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def with_backends(sizes, vocab=lambda s: s):
    """(backend, size) pairs to run: the Triton interpreter is too slow past V = 8k, where the
    reference and cpp cover the large vocabularies (on a GPU every backend runs every size)."""
    return [
        pytest.param(b, s, marks=pytest.mark.slow) if _heavy(b, s) else (b, s) for b in BACKENDS for s in sizes
        if not (b == "triton" and DEVICE == "cpu" and vocab(s) > INTERPRETED_MAX_V)
    ]


def _heavy(backend, size) -> bool:
    """The largest [B, V] cases of the slow paths on the CPU (interpreted Triton at B = 64, the
    f32 reference at B = 64 x 151,936): the full suite runs them, the fast subset does not."""
    if DEVICE != "cpu" or not isinstance(size, tuple):
        return False
    b, v = size
    return b >= 64 and ((backend == "triton" and v >= 4096) or (backend == "reference" and v >= 100_000))


def scan(logits, backend, **kw):
    kw.setdefault("k", min(10, logits.shape[-1]))
    kw.setdefault("tau", 1.0)
    return junction_scan(logits, backend=backend, **kw)


def tol(ref32: torch.Tensor, ref64: np.ndarray, v: int) -> np.ndarray:
    """2 * |ref_f32 - ref_f64| + eps, eps growing slowly with V (long f32 sums)."""
    with np.errstate(invalid="ignore"):  # inf - inf where both are -inf
        own = np.abs(ref32.double().cpu().numpy() - ref64)
    own = np.where(np.isfinite(own), own, 0.0)
    eps = 1e-5 * max(1.0, math.sqrt(v) / 100) * (1 + np.abs(np.where(np.isfinite(ref64), ref64, 0)))
    return 2 * own + eps


def assert_close(name, got, ref32, ref64, v):
    g = got.double().cpu().numpy()
    both_inf = np.isinf(ref64) & (g == ref64)
    with np.errstate(invalid="ignore"):
        err = np.where(both_inf, 0.0, np.abs(g - ref64))
    bad = ~(err <= tol(ref32, ref64, v))
    assert not bad.any(), f"{name}: max err {np.nanmax(err)} at {np.argwhere(bad)[:5].tolist()}"


def ref_f32(logits, k, scope, exp) -> dict[str, torch.Tensor]:
    """The f32 reference's entropy, lse and top-k log-probs (its own error sets the tolerance),
    from the reference's pieces at the oracle's top-k ids: the same numbers as
    ``junction_scan_ref``, without its sort of the whole row."""
    z = logits.float()
    logp, lse = reference.log_softmax_ref(z)
    ids = torch.from_numpy(exp["topk_ids"]).to(z.device)
    entropy = reference.entropy_of_logp(logp) if scope == "full" else reference.entropy_ref(z.gather(1, ids))[0]
    return {"entropy": entropy, "lse": lse, "topk_logprobs": logp.gather(1, ids)}


def check_contract(logits, out, *, k, tau, scope, backend):
    """Every field of ``out`` against the float64 oracle and the f32 reference."""
    b, v = logits.shape
    exp = contract(logits, k, scope)
    ref32 = ref_f32(logits, k, scope, exp)
    for f in ("entropy", "lse", "topk_logprobs"):
        assert getattr(out, f).dtype == torch.float32, f
        assert_close(f, getattr(out, f), ref32[f], exp[f], v)
    assert out.topk_ids.dtype == torch.int64 and out.topk_ids.shape == (b, k)
    assert np.array_equal(out.topk_ids.cpu().numpy(), exp["topk_ids"]), "top-k ids (ties to the lower id)"
    # The gate may differ from the oracle only where the entropy sits on the threshold.
    t = tau.double().cpu().numpy()
    near = np.abs(exp["entropy"] - t) <= tol(ref32["entropy"], exp["entropy"], v)
    gate = out.gate.cpu().numpy()
    assert out.gate.dtype == torch.bool
    assert np.array_equal(gate[~near], (exp["entropy"] > t)[~near]), "gate = entropy > tau"
    # Compaction follows the backend's own gate, in row order.
    rows = np.flatnonzero(gate)
    j = len(rows)
    assert out.num_junctions.dtype == torch.int32 and out.num_junctions.shape == (1,)
    assert out.num_junctions.device == logits.device
    assert int(out.num_junctions) == j
    assert np.array_equal(out.junction_rows[:j].cpu().numpy(), rows)
    assert torch.equal(out.junction_ids[:j], out.topk_ids[rows])
    assert torch.equal(out.junction_logprobs[:j], out.topk_logprobs[rows])
    for f in ("junction_rows", "junction_ids", "junction_logprobs", "base_token"):
        assert getattr(out, f).shape[0] == b, f


def random_tau(logits, k, scope):
    """Per-row tau around the median entropy, so that both gate values occur."""
    h = torch.from_numpy(contract(logits, k, scope)["entropy"]).float()
    return (h.median() + 0.1 * torch.randn(h.shape[0], generator=torch.Generator().manual_seed(1))).to(DEVICE)


SHAPES = [(1, 7), (3, 1000), (64, 4099), (257, 1000), (1, 32000), (3, 151936), (64, 151936)]


@pytest.mark.parametrize(
    "backend,shape", with_backends(SHAPES, lambda s: s[1]), ids=lambda x: f"B{x[0]}xV{x[1]}" if isinstance(x, tuple) else x
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scope", ["topk", "full"])
def test_random_logits(backend, shape, dtype, scope):
    b, v = shape
    g = torch.Generator().manual_seed(b * 7 + v)
    logits = (3 * torch.randn(b, v, generator=g)).to(dtype).to(DEVICE)
    k = min(10, v)
    tau = random_tau(logits, k, scope)
    out = scan(logits, backend, k=k, tau=tau, entropy_scope=scope, greedy=True)
    check_contract(logits, out, k=k, tau=tau, scope=scope, backend=backend)
    assert torch.equal(out.base_token, out.topk_ids[:, 0]), "greedy base token = argmax"


K_CASES = [(v, k) for v in (7, 1000) for k in (1, 2, 10, 64, v) if k <= v]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v,k", K_CASES, ids=[f"V{v}-k{k}" for v, k in K_CASES])
def test_k_values(backend, v, k):
    logits = torch.randn(3, v, generator=torch.Generator().manual_seed(k)).to(DEVICE)
    logits[1, ::3] = -math.inf
    for scope in ("topk", "full"):
        tau = torch.full((3,), 0.5, device=DEVICE)
        out = scan(logits, backend, k=k, tau=tau, entropy_scope=scope)
        check_contract(logits, out, k=k, tau=tau, scope=scope, backend=backend)


def adversarial(v: int, dtype) -> torch.Tensor:
    """Rows with -inf entries, one finite entry, all equal, near one-hot with ties."""
    rows = torch.randn(8, v, generator=torch.Generator().manual_seed(v))
    rows[0, ::2] = -math.inf  # half the vocabulary impossible
    rows[1] = -math.inf
    rows[1, v // 2] = 0.5  # a single finite entry: entropy 0
    rows[2] = 1.25  # all equal: ln V (full), ln k (top-k)
    rows[3] = -20.0
    rows[3, [1, 4, v - 1]] = 10.0  # near one-hot with a three-way tie
    rows[4] = 0.0
    rows[4, :: max(1, v // 16)] = 3.0  # many exact ties in the top-k
    rows[5] = torch.arange(v, dtype=torch.float32).flip(0) * 1e-3  # strictly decreasing
    rows[6, : v // 2] = -math.inf  # all the mass at the end
    rows[7] = 1e4 * rows[7]  # huge logits, no overflow
    return rows.to(dtype).to(DEVICE)


ADVERSARIAL = [pytest.param(*p, marks=pytest.mark.slow) if p == ("triton", 4099) and DEVICE == "cpu" else p
               for p in with_backends([1000, 4099, 151936])]  # interpreted Triton at 4099: ~1-4 s each


@pytest.mark.parametrize("backend,v", ADVERSARIAL)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 10, 64])
def test_adversarial_rows(backend, v, dtype, k):
    logits = adversarial(v, dtype)
    for scope in ("topk", "full"):
        tau = torch.full((8,), 0.3, device=DEVICE)
        out = scan(logits, backend, k=k, tau=tau, entropy_scope=scope, greedy=True)
        check_contract(logits, out, k=k, tau=tau, scope=scope, backend=backend)
        assert float(out.entropy[1]) == 0.0
        expected = math.log(v) if scope == "full" else math.log(k)
        assert out.entropy[2].item() == pytest.approx(expected, abs=1e-4)
    assert out.topk_ids[3, :3].tolist() == [1, 4, v - 1][: min(3, k)] or k < 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_rows(backend, dtype):
    wide = torch.randn(5, 1200, generator=torch.Generator().manual_seed(3)).to(dtype).to(DEVICE)
    logits = wide[:, 100:1100]  # row stride 1200 > V = 1000
    assert logits.stride(0) == 1200 and not logits.is_contiguous()
    tau = torch.full((5,), 1.0, device=DEVICE)
    out = scan(logits, backend, k=10, tau=tau, greedy=True)
    check_contract(logits, out, k=10, tau=tau, scope="topk", backend=backend)
    same = scan(logits.contiguous(), backend, k=10, tau=tau, greedy=True)
    for a, b in zip(out, same):
        if a.is_floating_point() and backend in ("triton", "cuda"):
            # The GPU kernels align their 16-byte vectors to the row's address, so a row at another
            # offset sums in another grouping: equal to the last couple of ulps, not bitwise.
            torch.testing.assert_close(a, b, rtol=4e-7, atol=1e-7)
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tau_extremes_and_per_row(backend):
    logits = torch.randn(6, 1000, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    never = scan(logits, backend, tau=math.inf)
    assert int(never.num_junctions) == 0 and not never.gate.any()
    always = scan(logits, backend, tau=-math.inf)
    assert int(always.num_junctions) == 6 and always.junction_rows.tolist() == list(range(6))
    tau = torch.tensor([math.inf, -math.inf, math.inf, -math.inf, -math.inf, math.inf], device=DEVICE)
    mixed = scan(logits, backend, tau=tau)
    assert mixed.junction_rows[: int(mixed.num_junctions)].tolist() == [1, 3, 4]
    # A one-hot row has entropy 0, which is still > -inf: dense steering steers every row.
    one_hot = torch.full((2, 50), -math.inf, device=DEVICE)
    one_hot[:, 3] = 0.0
    assert int(scan(one_hot, backend, k=5, tau=-math.inf).num_junctions) == 2


# ---------------------------------------------------------------- sampling

def empirical(backend, logits, n, *, sample_from, temperature, seed=0):
    """Token frequencies over ``n`` draws (``logits`` is one row, repeated)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    counts = torch.zeros(logits.shape[0], dtype=torch.float64)
    per_call = 20000
    rows = logits.unsqueeze(0).expand(per_call, -1)
    for _ in range(n // per_call):
        out = junction_scan(
            rows, k=4, tau=1.0, temperature=temperature, sample_from=sample_from,
            generator=g, backend=backend,
        )
        counts += torch.bincount(out.base_token.cpu(), minlength=logits.shape[0]).double()
    return counts


@pytest.mark.parametrize("backend", slow_if_interpreted(BACKENDS))
@pytest.mark.parametrize("sample_from", ["topk", "full"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_frequencies(backend, sample_from, temperature):
    """200,000 draws (60,000 under Triton's interpreter) of one 8-token row, two at -inf:
    zero-probability tokens never drawn, cosine > 0.99, every |p_hat - p| < 0.01 (> 5 sigma at
    60,000), and chi-square p > 1e-6 against the exact softmax."""
    z = torch.tensor([2.0, 1.5, -math.inf, 0.3, 1.0, -1.0, -math.inf, 0.0], device=DEVICE)
    draws = 60_000 if backend == "triton" and DEVICE == "cpu" else 200_000
    counts = empirical(backend, z, draws, sample_from=sample_from, temperature=temperature)
    kept = z.clone()
    if sample_from == "topk":
        kept[z < z.topk(4).values[-1]] = -math.inf
    p = torch.softmax(kept.double().cpu() / temperature, 0)
    assert (counts[p == 0] == 0).all(), "a zero-probability token was drawn"
    cos = torch.nn.functional.cosine_similarity(counts / counts.sum(), p, dim=0)
    assert cos > 0.99
    assert ((counts / counts.sum() - p).abs() < 0.01).all()
    assert chi_square_p(counts[p > 0], p[p > 0]) > P_MIN


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sample_from", ["topk", "full"])
def test_same_seed_same_tokens_and_greedy(backend, sample_from):
    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(9)).to(DEVICE)

    def draw(seed, **kw):
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        return scan(logits, backend, sample_from=sample_from, generator=g, **kw).base_token

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    argmax = logits.argmax(-1)
    assert torch.equal(draw(1, greedy=True), argmax)
    assert torch.equal(draw(1, temperature=0.0), argmax)
    temps = torch.zeros(64, device=DEVICE)
    temps[::2] = 1.0
    mixed = draw(3, temperature=temps)
    assert torch.equal(mixed[1::2], argmax[1::2]), "rows at temperature 0 are greedy"


def test_one_hot_rows_are_exact():
    for backend in BACKENDS:
        logits = torch.full((16, 100), -math.inf, device=DEVICE)
        logits[torch.arange(16), torch.arange(16) * 3] = 1.0
        g = torch.Generator(device=DEVICE).manual_seed(0)
        for sample_from in ("topk", "full"):
            out = scan(logits, backend, k=4, sample_from=sample_from, generator=g, temperature=2.0)
            assert out.base_token.tolist() == (torch.arange(16) * 3).tolist()


# ---------------------------------------------------------------- steer

@pytest.mark.parametrize("backend", BACKENDS)
def test_steer(backend):
    logits = torch.randn(9, 500, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    tau = torch.tensor([-math.inf, math.inf] * 4 + [-math.inf], device=DEVICE)
    out = scan(logits, backend, k=5, tau=tau, greedy=True)
    j = int(out.num_junctions)
    values = torch.randn(j, 5, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    nxt = steer(out, values, beta=2.0, greedy=True)
    score = out.junction_logprobs[:j] + 2.0 * values
    expect = out.base_token.clone()
    expect[out.junction_rows[:j]] = out.junction_ids[:j].gather(1, score.argmax(1, keepdim=True))[:, 0]
    assert torch.equal(nxt, expect)
    # Full-size values: rows past J are ignored.
    padded = torch.cat([values, torch.full((9 - j, 5), 1e9, device=DEVICE)])
    assert torch.equal(steer(out, padded, beta=2.0, greedy=True), expect)
    # beta = 0 and greedy: the top candidate, which is the base token.
    assert torch.equal(steer(out, values, beta=0.0, greedy=True), out.topk_ids[:, 0])


def test_steer_sampling_frequencies():
    """200,000 steered draws: the -inf candidate never drawn, cosine > 0.99, chi-square p > 1e-6."""
    logits = torch.zeros(1, 4, device=DEVICE)
    out = junction_scan(logits.expand(50_000, -1), k=4, tau=-math.inf, backend="reference")
    values = torch.tensor([[0.0, 1.0, 2.0, -math.inf]], device=DEVICE).expand(50_000, -1)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    counts = torch.zeros(4, dtype=torch.float64)
    for _ in range(4):
        counts += torch.bincount(steer(out, values, beta=1.0, temperature=1.0, generator=g).cpu(), minlength=4)
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0, -math.inf], dtype=torch.float64), 0)
    cand = out.junction_ids[0].cpu()  # all-equal logits: candidates are tokens 0..3
    assert counts[cand[3]] == 0
    assert torch.nn.functional.cosine_similarity(counts[cand] / counts.sum(), p, dim=0) > 0.99
    assert chi_square_p(counts[cand][:3], p[:3]) > P_MIN


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs(backend):
    x = torch.randn(4, 100, device=DEVICE)
    with pytest.raises(TypeError, match="logits"):
        scan(torch.ones(4, 100, dtype=torch.int64, device=DEVICE), backend)
    with pytest.raises(ValueError, match="2-D"):
        scan(x[0], backend)
    for k in (0, -1, 101, 2.5):
        with pytest.raises(ValueError, match="k must"):
            scan(x, backend, k=k)
    with pytest.raises(ValueError, match="tau"):
        scan(x, backend, tau=math.nan)
    with pytest.raises(ValueError, match="tau"):
        scan(x, backend, tau=torch.tensor([1.0, math.nan, 1.0, 1.0], device=DEVICE))
    with pytest.raises(ValueError, match="tau"):
        scan(x, backend, tau=torch.ones(3, device=DEVICE))
    with pytest.raises(ValueError, match="temperature"):
        scan(x, backend, temperature=-0.5)
    with pytest.raises(ValueError, match="temperature"):
        scan(x, backend, temperature=torch.tensor([1.0, -1.0, 1.0, 1.0], device=DEVICE))
    with pytest.raises(ValueError, match="entropy_scope"):
        scan(x, backend, entropy_scope="half")
    with pytest.raises(ValueError, match="sample_from"):
        scan(x, backend, sample_from="nucleus")
    with pytest.raises(ValueError, match="on meta"):
        scan(x, backend, tau=torch.ones(4, device="meta"))
    for row, poison, what in [(2, math.nan, "NaN"), (1, math.inf, r"\+inf")]:
        bad = x.clone()
        bad[row, 17] = poison
        with pytest.raises(ValueError, match=f"row {row} contains {what}"):
            scan(bad, backend)
    dead = x.clone()
    dead[3] = -math.inf
    with pytest.raises(ValueError, match="row 3 has no finite logit"):
        scan(dead, backend)
    assert torch.isfinite(x).all(), "the user's logits are never modified"


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    out = scan(torch.empty(0, 50, device=DEVICE), backend, k=5)
    assert out.topk_ids.shape == (0, 5) and out.entropy.shape == (0,)
    assert int(out.num_junctions) == 0
    assert steer(out, torch.empty(0, 5, device=DEVICE), beta=1.0).shape == (0,)


def test_steer_bad_inputs():
    out = junction_scan(torch.randn(3, 20), k=4, tau=-math.inf, backend="reference")
    with pytest.raises(TypeError, match="scan"):
        steer((1, 2), torch.zeros(3, 4), beta=1.0)
    with pytest.raises(TypeError, match="values"):
        steer(out, torch.zeros(3, 4, dtype=torch.int64), beta=1.0)
    with pytest.raises(ValueError, match="values must be"):
        steer(out, torch.zeros(3, 5), beta=1.0)
    with pytest.raises(ValueError, match="3 junctions"):
        steer(out, torch.zeros(2, 4), beta=1.0)
    with pytest.raises(ValueError, match="beta"):
        steer(out, torch.zeros(3, 4), beta=math.nan)
    with pytest.raises(ValueError, match="temperature"):
        steer(out, torch.zeros(3, 4), beta=1.0, temperature=-1.0)


# ---------------------------------------------------------------- dispatch

def test_dispatch(monkeypatch):
    from sia_kernels import ops

    x = torch.randn(2, 30)
    with pytest.raises(ValueError, match="backend must be one of"):
        junction_scan(x, k=3, tau=1.0, backend="numba")
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="cuda"):
            junction_scan(x, k=3, tau=1.0, backend="cuda")
    monkeypatch.setenv("SIA_BACKEND", "reference")
    assert ops.resolve_backend(None, x.device)[0] == "reference"
    monkeypatch.delenv("SIA_BACKEND")

    def broken():
        raise ImportError("not built")

    monkeypatch.setitem(ops._LOADERS, "cpp", broken)
    monkeypatch.setattr(ops, "_warned", set())
    with pytest.warns(RuntimeWarning, match="falling back"):
        assert ops.resolve_backend(None, torch.device("cpu"))[0] == "reference"
    with pytest.raises(RuntimeError, match="unavailable"):
        junction_scan(x, k=3, tau=1.0, backend="cpp")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning only
        junction_scan(x, k=3, tau=1.0)
    assert "reference" in sia_kernels.available_backends("cpu")
