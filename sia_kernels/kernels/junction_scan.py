"""Triton junction scan (DESIGN.md §1-2): one read of the logits, two launches, no host sync.

Spec: ``sia_kernels.reference.junction_scan_ref``. Read in order:

1. ``_junction_partials_kernel``, grid (B rows × S vocabulary splits): each program streams
   its split in tiles of ``BLOCK_V`` and keeps the one-pass entropy partials (m, d, s), a
   running top-``K_PAD`` of packed int64 keys and, when sampling from the full vocabulary, a
   running Gumbel-max key. Partials go to small scratch buffers ``[B, S]`` / ``[B, S, K_PAD]``.
2. ``_junction_merge_kernel``, ONE program: merges the S partials per row (lse, entropy,
   final top-k, gate, base token) and compacts the junction rows with a prefix sum in row
   order, a block of rows at a time with a running carry, so the order is deterministic.
3. ``_launch`` picks the grid, split and tile sizes; ``junction_scan_triton`` is the backend.

Packed keys: a float32 logit maps to a monotone int32 (flip the low 31 bits of negatives);
that goes in the high half of an int64 and ``~token_id`` in the low half, so one integer
max or sort orders by value and breaks ties towards the lower id, and both the value
(exactly) and the id decode back from the key. Padding keys start at INT64_MIN, below every
real key (even a real ``-inf`` logit's), so padding is never chosen while a real token is left.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..types import JunctionScan, empty_scan

_KEY_PAD = tl.constexpr(-(2**63))  # below every packed key, including that of a -inf logit
_TILE = 4096  # elements per tile on a GPU (see _plan)
# Under TRITON_INTERPRET=1 (CPU tensors) a tile costs per *operation*, not per element
# (~1 ms each on the hypercube views of the top-k), so the same kernels take 16x larger
# tiles there: more rows per program, same columns. tests/test_triton_internals.py forces
# small tiles and many splits so the cross-tile and cross-split merges are exercised too.
_TILE_INTERPRETED = 65536
_MAX_EXTRACT_K = 64  # K_PAD up to this: top-k by extraction; above: bitonic sort per tile
# K_PAD above this takes the torch path: the unrolled bitonic network grows as K log^2 K and
# a GPU compile of K_PAD = 1024 already takes ~2.5 min (measured, sm_90, both kernels).
# Interpreted there is no compile, so the kernels' large-K path is tested up to V = 4099.
_MAX_FUSED_K = {"cuda": 256, "cpu": 8192}


# ---------------------------------------------------------------- helpers


@triton.jit
def _pack_key(x, idx):
    """float32 ``x`` and int ``idx`` -> int64 key ordered by (x, then lower idx)."""
    x = tl.where(x == 0.0, 0.0, x)  # -0.0 == +0.0: same key, so the tie goes to the lower id
    bits = x.to(tl.int32, bitcast=True)
    mono = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negatives: flip magnitude bits -> signed order
    low = (~idx.to(tl.int32)).to(tl.uint32, bitcast=True).to(tl.int64)  # zero-extended ~id
    return (mono.to(tl.int64) << 32) | low


@triton.jit
def _key_id(key):
    """The token id packed in ``key`` (int64)."""
    return (~key.to(tl.int32)).to(tl.int64)


@triton.jit
def _key_value(key):
    """The float32 value packed in ``key`` (exact)."""
    mono = (key >> 32).to(tl.int32)
    bits = mono ^ ((mono >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _gumbel(seed, rows, cols):
    """Standard Gumbel noise, a pure function of (seed, row, column): Philox with the
    counter (column, row), so a draw does not depend on how the vocabulary is tiled."""
    rows, cols = tl.broadcast(rows, cols)
    r, _, _, _ = tl.philox(seed, cols.to(tl.uint32), rows.to(tl.uint32), 0, 0)
    r = r.to(tl.int32, bitcast=True)
    u = tl.where(r < 0, ~r, r).to(tl.float32) * 4.6566127342e-10  # [0, 1), as tl.rand
    return -tl.log(-tl.log(u))  # u == 0 gives -inf: that token just is not drawn


# Reductions are written ``tl.reduce(x, axis, _MAX)`` with triton's own combine functions:
# the same code as tl.max / tl.min / tl.sum on a GPU, but under TRITON_INTERPRET=1 a call
# to those @jit wrappers re-patches triton.language (~5 ms), while tl.reduce with these
# combine functions goes straight to numpy. The interpreted tests are ~10x faster for it.
_MAX = tl.standard._elementwise_max
_MIN = tl.standard._elementwise_min
_SUM = tl.standard._sum_combine


@triton.constexpr_function
def _log2(n):
    return int(n).bit_length() - 1


@triton.constexpr_function
def _min(a, b):
    return min(int(a), int(b))


@triton.jit
def _axis_indicator(D: tl.constexpr, J: tl.constexpr):
    """0/1 along the J-th innermost axis of a D-dimensional hypercube (broadcast shape)."""
    return tl.reshape(tl.arange(0, 2), [1] * (D - J - 1) + [2] + [1] * J)


@triton.jit
def _bitonic_topk(x, LOG_N: tl.constexpr, LOG_K: tl.constexpr, DESCENDING: tl.constexpr):
    """The 2**LOG_K largest entries along the last axis of ``x`` (size 2**LOG_N), sorted.

    ``tl.topk``'s algorithm on the hypercube view [2, ..., 2]: sort chunks of 2**LOG_K in
    alternating order, then repeatedly halve by an elementwise max of neighbouring chunks (a
    bitonic split keeps the larger half) and re-merge. A compare-and-swap is a min and a max
    over one size-2 axis: registers or one shuffle on a GPU, numpy in the interpreter (where
    tl.topk's xor_sum reduce is a per-element Python loop)."""
    if LOG_K == 0:
        out = tl.reduce(x, len(x.shape) - 1, _MAX, keep_dims=True)
    else:
        h = tl.reshape(x, [2] * _log2(x.numel))
        # (No constexpr locals in these unrolled loops: triton forbids rebinding them.)
        for stage in tl.static_range(1, LOG_N + 1):
            if stage > LOG_K:  # halve: keep the larger of each chunk pair
                h = tl.reduce(h, _log2(h.numel) - 1 - LOG_K, _MAX)
            # chunk = 2**min(stage, LOG_K); alternate its order chunk by chunk (bitonic
            # pairs) until the last stage, which sorts in the requested order.
            if stage < LOG_N:
                flip = _axis_indicator(_log2(h.numel), _min(stage, LOG_K))
            else:
                flip = DESCENDING
            for i in tl.static_range(_min(stage, LOG_K)):
                # compare-and-swap along the (chunk - 1 - i)-th innermost axis
                lo = tl.reduce(h, _log2(h.numel) - _min(stage, LOG_K) + i, _MIN, keep_dims=True)
                hi = tl.reduce(h, _log2(h.numel) - _min(stage, LOG_K) + i, _MAX, keep_dims=True)
                right = _axis_indicator(_log2(h.numel), _min(stage, LOG_K) - 1 - i)
                h = tl.where((flip ^ right) != 0, hi, lo)
        out = tl.reshape(h, x.shape[:-1] + [2**LOG_K])
    return out


@triton.jit
def _merge_sorted(best, cand, LOG_K: tl.constexpr):
    """Top 2**LOG_K of ``best`` (descending) and ``cand`` (ascending) per row, descending.

    Their elementwise max is exactly that top half, as a bitonic sequence; one bitonic merge
    (LOG_K compare-and-swap steps) sorts it."""
    h = tl.maximum(best, cand)
    if LOG_K > 0:
        h = tl.reshape(h, [2] * _log2(h.numel))
        for i in tl.static_range(LOG_K):
            lo = tl.reduce(h, _log2(h.numel) - LOG_K + i, _MIN, keep_dims=True)
            hi = tl.reduce(h, _log2(h.numel) - LOG_K + i, _MAX, keep_dims=True)
            right = _axis_indicator(_log2(h.numel), LOG_K - 1 - i)
            h = tl.where(right == 0, hi, lo)  # descending: the larger one first
        h = tl.reshape(h, best.shape)
    return h


# ---------------------------------------------------------------- kernel 1: partials


@triton.jit
def _junction_partials_kernel(
    # pointers
    logits_ptr,  # [B, V] f32/bf16/f16, unit column stride
    temperature_ptr,  # [B] f32, 0 = greedy row
    seed_ptr,  # [1] i64, drawn from the caller's generator
    stats_ptr,  # out [3, B, S] f32: m, d, s per (row, split)
    topk_keys_ptr,  # out [B, S, K_PAD] i64: packed top-K_PAD keys of the split (any order)
    gumbel_keys_ptr,  # out [B, S] i64: packed argmax of z / T + Gumbel over the split
    # sizes
    B,
    V,
    S,
    SPLIT_LEN,  # columns per split, a multiple of BLOCK_V
    # strides
    stride_row,
    # meta
    ROWS: tl.constexpr,  # rows per program: small V still makes ~4096-element tiles
    BLOCK_V: tl.constexpr,  # columns per tile, >= K_PAD
    LOG_V: tl.constexpr,  # log2(BLOCK_V)
    K_PAD: tl.constexpr,  # next power of two >= k (bitonic top-k needs a power of two)
    LOG_K: tl.constexpr,  # log2(K_PAD)
    SORT_TILE: tl.constexpr,  # top-k by bitonic sort of each tile (large K) or by extraction
    SAMPLE_FULL: tl.constexpr,  # keep a Gumbel-max over the full vocabulary
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    split = tl.program_id(1)
    rmask = rows < B
    rows64 = rows.to(tl.int64)
    start = split * SPLIT_LEN
    end = tl.minimum(start + SPLIT_LEN, V)
    row_ptrs = logits_ptr + rows64[:, None] * stride_row
    lanes = tl.arange(0, BLOCK_V)

    # One-pass entropy partials relative to the running max m (DESIGN.md §1):
    # d = sum e^(z-m), s = sum e^(z-m)(z-m). One exp per element, reductions per tile.
    m = tl.full([ROWS], float("-inf"), tl.float32)
    d = tl.zeros([ROWS], tl.float32)
    s = tl.zeros([ROWS], tl.float32)
    # Running top-K_PAD keys per row, seeded with distinct padding keys (below every real
    # key, descending) so that "replace the unique minimum" is well defined.
    best = tl.full([ROWS, K_PAD], _KEY_PAD + K_PAD - 1, tl.int64) - tl.arange(0, K_PAD)[None, :]
    kth = tl.full([ROWS], _KEY_PAD, tl.int64)  # the smallest key in best
    kth_val = tl.full([ROWS], float("-inf"), tl.float32)  # its logit, once best is full
    full = tl.zeros([ROWS], tl.int1)
    gbest = tl.full([ROWS], _KEY_PAD, tl.int64)
    if SAMPLE_FULL:
        t = tl.load(temperature_ptr + rows, mask=rmask, other=0.0)
        sampling = t > 0.0
        any_sampling = tl.reduce(sampling.to(tl.int32), 0, _MAX) > 0  # all greedy: no RNG work at all
        t_safe = tl.where(sampling, t, 1.0)
        seed = tl.load(seed_ptr)

    for off in range(start, end, BLOCK_V):
        cols = off + lanes
        mask = rmask[:, None] & (cols < end)[None, :]
        # Upcast in registers: bf16/f16 rows are read at their own width (half the bytes).
        x = tl.load(row_ptrs + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)

        x_max = tl.reduce(x, 1, _MAX)
        m_new = tl.maximum(m, x_max)
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: e = 0, not NaN
        alpha = tl.exp(m - m_ref)  # m == -inf -> 0 (d = s = 0 then anyway)
        e = tl.exp(x - m_ref[:, None])
        # The where keeps -inf logits (e = 0, z - m = -inf) from making NaN; a NaN logit is
        # not masked out of d, so its row's d and lse come out NaN (ops.py reports the row).
        s = tl.where(alpha > 0.0, alpha * (s + d * (m - m_ref)), 0.0) + tl.reduce(
            tl.where(e > 0.0, e * (x - m_ref[:, None]), 0.0), 1, _SUM
        )
        d = d * alpha + tl.reduce(e, 1, _SUM)
        m = m_new

        # Top-k. A program walks its columns in increasing order, so a later logit equal to
        # the k-th best never displaces it (higher id): once best is full, a tile whose max
        # logit is not above the k-th best holds no candidate, and the float max computed
        # for m above is the whole test. Only the other tiles build the int64 keys.
        if tl.reduce(((x_max > kth_val) | ~full).to(tl.int32), 0, _MAX) > 0:
            keys = tl.where(mask, _pack_key(x, cols[None, :]), _KEY_PAD)
            if SORT_TILE:
                # Large K: a bitonic top-K of the tile (ascending), merged into best.
                best = _merge_sorted(best, _bitonic_topk(keys, LOG_V, LOG_K, 0), LOG_K)
                kth = tl.reduce(best, 1, _MIN)
            else:
                # Small K: extract the tile's keys above the k-th best one at a time, each
                # replacing best's minimum. Only ~K (first tile) or ~K/t (t-th tile, random
                # order) keys improve, so this costs a few reductions, not a sorting network.
                k_max = tl.reduce(keys, 1, _MAX)
                while tl.reduce((k_max > kth).to(tl.int32), 0, _MAX) > 0:
                    better = k_max > kth
                    best = tl.where((best == kth[:, None]) & better[:, None], k_max[:, None], best)
                    keys = tl.where((keys == k_max[:, None]) & better[:, None], _KEY_PAD, keys)
                    kth = tl.reduce(best, 1, _MIN)
                    k_max = tl.reduce(keys, 1, _MAX)
            full = kth > _KEY_PAD + K_PAD
            kth_val = tl.where(full, _key_value(kth), float("-inf"))

        if SAMPLE_FULL:
            if any_sampling:
                # Counter = (row, token): the draw does not depend on S, ROWS or BLOCK_V.
                g = _gumbel(seed, rows[:, None], cols[None, :])
                gk = tl.where(
                    mask & sampling[:, None], _pack_key(x / t_safe[:, None] + g, cols[None, :]), _KEY_PAD
                )
                gbest = tl.maximum(gbest, tl.reduce(gk, 1, _MAX))

    part = rows * S + split
    tl.store(stats_ptr + part, m, mask=rmask)
    tl.store(stats_ptr + B * S + part, d, mask=rmask)
    tl.store(stats_ptr + 2 * B * S + part, s, mask=rmask)
    k_off = part.to(tl.int64)[:, None] * K_PAD + tl.arange(0, K_PAD)[None, :]
    tl.store(topk_keys_ptr + k_off, best, mask=rmask[:, None])
    if SAMPLE_FULL:
        tl.store(gumbel_keys_ptr + part, gbest, mask=rmask)


# ---------------------------------------------------------------- kernel 2: merge + compact


@triton.jit
def _junction_merge_kernel(
    # pointers: inputs
    stats_ptr,  # [3, B, S] f32
    topk_keys_ptr,  # [B, S, K_PAD] i64
    gumbel_keys_ptr,  # [B, S] i64 (read only if SAMPLE_FULL)
    tau_ptr,  # [B] f32
    temperature_ptr,  # [B] f32
    seed_ptr,  # [1] i64
    # pointers: outputs
    entropy_ptr,  # [B] f32
    lse_ptr,  # [B] f32
    gate_ptr,  # [B] u8 (a view of the bool output)
    topk_ids_ptr,  # [B, k] i64
    topk_logprobs_ptr,  # [B, k] f32
    base_token_ptr,  # [B] i64
    junction_rows_ptr,  # [B] i64
    num_junctions_ptr,  # [1] i32
    junction_ids_ptr,  # [B, k] i64
    junction_logprobs_ptr,  # [B, k] f32
    # sizes
    B,
    S,
    k,  # also the row stride of the [B, k] outputs
    # meta
    S_PAD: tl.constexpr,
    K_PAD: tl.constexpr,
    LOG_K: tl.constexpr,  # log2(K_PAD)
    LOG_SK: tl.constexpr,  # log2(S_PAD * K_PAD)
    ROWS: tl.constexpr,  # rows merged per iteration
    SCOPE_FULL: tl.constexpr,  # entropy over the full vocabulary (else over the top-k)
    SAMPLE_FULL: tl.constexpr,  # base token from the full-vocabulary Gumbel partials
):
    # A single program: the prefix sum over the gate then runs in row order with a carry,
    # deterministic and with no second launch. The work per row is O(S * K_PAD), tiny.
    r_lanes = tl.arange(0, ROWS)
    s_lanes = tl.arange(0, S_PAD)
    j = tl.arange(0, K_PAD)
    jmask = j < k
    kk = tl.arange(0, S_PAD * K_PAD)
    seed = tl.load(seed_ptr)
    carry = tl.full([], 0, tl.int32)

    for r0 in range(0, B, ROWS):
        rows = r0 + r_lanes
        rmask = rows < B
        rows64 = rows.to(tl.int64)

        # ---- lse and full entropy from the (m, d, s) partials, rescaled by e^(m_i - M)
        smask = rmask[:, None] & (s_lanes[None, :] < S)
        part = rows[:, None] * S + s_lanes[None, :]
        pm = tl.load(stats_ptr + part, mask=smask, other=float("-inf"))
        pd = tl.load(stats_ptr + B * S + part, mask=smask, other=0.0)
        ps = tl.load(stats_ptr + 2 * B * S + part, mask=smask, other=0.0)
        big_m = tl.reduce(pm, 1, _MAX)
        m_ref = tl.where(big_m == float("-inf"), 0.0, big_m)
        scale = tl.exp(pm - m_ref[:, None])
        den = tl.reduce(pd * scale, 1, _SUM)  # a NaN partial stays in: that row's lse is NaN
        num = tl.reduce(tl.where(scale > 0.0, scale * (ps + pd * (pm - m_ref[:, None])), 0.0), 1, _SUM)
        log_den = tl.log(den)
        lse = tl.where(big_m == float("inf"), float("inf"), big_m + log_den)

        # ---- final top-k: the best K_PAD of the S partial lists (each in any order)
        kmask = rmask[:, None] & (kk[None, :] < S * K_PAD)
        keys = tl.load(
            topk_keys_ptr + rows64[:, None] * S * K_PAD + kk[None, :], mask=kmask, other=_KEY_PAD
        )
        top = _bitonic_topk(keys, LOG_SK, LOG_K, 1)  # [ROWS, K_PAD], descending
        ids = _key_id(top)
        vals = _key_value(top)  # padding lanes (j >= k) decode to NaN; always masked below
        omask = rmask[:, None] & jmask[None, :]
        out_off = rows64[:, None] * k + j[None, :]
        logprobs = vals - lse[:, None]
        tl.store(topk_ids_ptr + out_off, ids, mask=omask)
        tl.store(topk_logprobs_ptr + out_off, logprobs, mask=omask)

        # ---- entropy in the chosen scope, gate
        if SCOPE_FULL:
            entropy = log_den - num / den
        else:
            top1 = tl.reduce(tl.where(jmask[None, :], vals, float("-inf")), 1, _MAX)
            t_ref = tl.where(top1 == float("-inf"), 0.0, top1)
            e = tl.where(jmask[None, :], tl.exp(vals - t_ref[:, None]), 0.0)
            dk = tl.reduce(e, 1, _SUM)
            sk = tl.reduce(tl.where(e > 0.0, e * (vals - t_ref[:, None]), 0.0), 1, _SUM)
            entropy = tl.log(dk) - sk / dk
        tau = tl.load(tau_ptr + rows, mask=rmask, other=float("inf"))
        gate = (entropy > tau) & rmask
        tl.store(entropy_ptr + rows, entropy, mask=rmask)
        tl.store(lse_ptr + rows, lse, mask=rmask)
        tl.store(gate_ptr + rows, gate.to(tl.uint8), mask=rmask)

        # ---- base token: greedy = top-1; else Gumbel-max (full partials or the k candidates)
        t = tl.load(temperature_ptr + rows, mask=rmask, other=0.0)
        greedy_id = tl.reduce(tl.where(j[None, :] == 0, ids, 0), 1, _SUM)
        if SAMPLE_FULL:
            gkeys = tl.load(gumbel_keys_ptr + part, mask=smask, other=_KEY_PAD)
            sampled = _key_id(tl.reduce(gkeys, 1, _MAX))
        else:
            t_safe = tl.where(t > 0.0, t, 1.0)
            g = _gumbel(seed, rows[:, None], j[None, :])
            gk = tl.where(omask, _pack_key(vals / t_safe[:, None] + g, j[None, :]), _KEY_PAD)
            pick = _key_id(tl.reduce(gk, 1, _MAX))
            sampled = tl.reduce(tl.where(j[None, :] == pick[:, None], ids, 0), 1, _SUM)
        base = tl.where(t > 0.0, sampled, greedy_id)
        tl.store(base_token_ptr + rows, base, mask=rmask)

        # ---- compaction: destination = carry + exclusive prefix sum of the gate
        g32 = gate.to(tl.int32)
        dest = (carry + tl.associative_scan(g32, 0, _SUM) - g32).to(tl.int64)
        tl.store(junction_rows_ptr + dest, rows64, mask=gate)
        j_off = dest[:, None] * k + j[None, :]
        jm = gate[:, None] & jmask[None, :]
        tl.store(junction_ids_ptr + j_off, ids, mask=jm)
        tl.store(junction_logprobs_ptr + j_off, logprobs, mask=jm)
        carry += tl.reduce(g32, 0, _SUM)

    tl.store(num_junctions_ptr, carry)
    # Entries past J are zero, as in the reference (the same program wrote rows < J above).
    for r0 in range(0, B, ROWS):
        rows = r0 + r_lanes
        tail = (rows < B) & (rows >= carry)
        rows64 = rows.to(tl.int64)
        tl.store(junction_rows_ptr + rows64, tl.zeros([ROWS], tl.int64), mask=tail)
        z_off = rows64[:, None] * k + j[None, :]
        zm = tail[:, None] & jmask[None, :]
        tl.store(junction_ids_ptr + z_off, tl.zeros([ROWS, K_PAD], tl.int64), mask=zm)
        tl.store(junction_logprobs_ptr + z_off, tl.zeros([ROWS, K_PAD], tl.float32), mask=zm)


# ---------------------------------------------------------------- launcher


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # the H100 the grid is sized for; the interpreter runs programs in turn anyway


def _tile(device: torch.device) -> int:
    return _TILE if device.type == "cuda" else _TILE_INTERPRETED


def _plan(b: int, v: int, k: int, num_sms: int, tile: int = _TILE) -> dict:
    """Tile and split sizes from the input shape (``tile``: elements per tile, see _TILE).

    Tiles of ``tile`` = 4096 elements (ROWS1 x BLOCK_V) on a GPU: bandwidth-sized loads
    (8-16 KB) with the keys still in registers (16 int64 a thread at 8 warps) for the bitonic
    top-k. BLOCK_V covers up to 4096 columns and at least K_PAD; a small V packs several rows
    into a tile instead (so B = 20000 rows of V = 8 is ~40 programs, not 20000).
    S: enough programs for ~4 waves of the GPU, but every split keeps >= 2 tiles so the
    per-split fixed cost (the K_PAD merge, scratch writes, merge-kernel work) stays small.
    """
    k_pad = triton.next_power_of_2(k)
    block_v = max(k_pad, min(_TILE, triton.next_power_of_2(v)))
    rows1 = max(1, min(triton.next_power_of_2(b), tile // block_v))
    n_tiles = triton.cdiv(v, block_v)
    programs = triton.cdiv(b, rows1)
    s = max(1, min(triton.cdiv(4 * num_sms, programs), triton.cdiv(n_tiles, 2)))
    split_len = triton.cdiv(n_tiles, s) * block_v
    s = triton.cdiv(v, split_len)  # no empty splits
    s_pad = triton.next_power_of_2(s)
    # Merge: about ``tile`` keys in registers per iteration (and never more rows than B needs).
    rows2 = max(1, min(triton.next_power_of_2(b), tile // (s_pad * k_pad)))
    return dict(
        ROWS1=rows1, BLOCK_V=block_v, K_PAD=k_pad, S=s, SPLIT_LEN=split_len,
        S_PAD=s_pad, ROWS2=rows2,
        warps1=8 if rows1 * block_v >= 2048 else 4,
        warps2=8 if rows2 * s_pad * k_pad >= 2048 else 4,
    )


def _launch(
    logits: torch.Tensor,
    k: int,
    tau: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    scope_full: bool,
    sample_full: bool,
    plan: dict | None = None,
) -> JunctionScan:
    """Two launches. ``logits`` [B, V] f32/bf16/f16 with stride(1) == 1; ``tau``,
    ``temperature`` [B] f32; ``seed`` [1] i64; ``plan`` overrides ``_plan`` (tests).
    Returns the full-size ``JunctionScan``."""
    b, v = logits.shape
    dev = logits.device
    p = plan or _plan(b, v, k, _num_sms(dev), _tile(dev))
    s, k_pad = p["S"], p["K_PAD"]
    log_k = k_pad.bit_length() - 1
    stats = torch.empty(3, b, s, dtype=torch.float32, device=dev)
    topk_keys = torch.empty(b, s, k_pad, dtype=torch.int64, device=dev)
    gumbel_keys = torch.empty(b, s, dtype=torch.int64, device=dev)
    _junction_partials_kernel[(triton.cdiv(b, p["ROWS1"]), s)](
        logits, temperature, seed, stats, topk_keys, gumbel_keys,
        b, v, s, p["SPLIT_LEN"],
        logits.stride(0),
        ROWS=p["ROWS1"], BLOCK_V=p["BLOCK_V"], LOG_V=p["BLOCK_V"].bit_length() - 1,
        K_PAD=k_pad, LOG_K=log_k, SORT_TILE=k_pad > _MAX_EXTRACT_K, SAMPLE_FULL=sample_full,
        num_warps=p["warps1"],
    )
    out = empty_scan(b, k, dev)
    _junction_merge_kernel[(1,)](
        stats, topk_keys, gumbel_keys, tau, temperature, seed,
        out.entropy, out.lse, out.gate.view(torch.uint8), out.topk_ids, out.topk_logprobs,
        out.base_token, out.junction_rows, out.num_junctions, out.junction_ids,
        out.junction_logprobs,
        b, s, k,
        S_PAD=p["S_PAD"], K_PAD=k_pad, LOG_K=log_k,
        LOG_SK=(p["S_PAD"] * k_pad).bit_length() - 1, ROWS=p["ROWS2"],
        SCOPE_FULL=scope_full, SAMPLE_FULL=sample_full,
        num_warps=p["warps2"],
    )
    return out


# ---------------------------------------------------------------- public backend


def junction_scan_triton(
    logits: torch.Tensor,
    *,
    k: int,
    tau: torch.Tensor,
    temperature: torch.Tensor,
    entropy_scope: str,
    sample_from: str,
    generator: torch.Generator | None,
) -> JunctionScan:
    """The triton backend of ``sia_kernels.junction_scan`` (arguments already validated by
    ops.py: ``logits`` [B >= 1, V] f32/bf16/f16 with unit column stride, ``1 <= k <= V``,
    ``tau`` / ``temperature`` [B] f32 on the logits' device). No host sync."""
    if triton.next_power_of_2(k) > _MAX_FUSED_K.get(logits.device.type, 256):
        # Candidate lists this long are for tests and analysis, not decoding: they take the
        # (multi-launch, float32) torch path rather than a huge register-resident sort.
        from ..reference import junction_scan_ref

        return junction_scan_ref(
            logits, k=k, tau=tau, temperature=temperature, entropy_scope=entropy_scope,
            sample_from=sample_from, generator=generator,
        )
    # The Philox seed stays on the device (no sync); drawn every call so that one generator
    # seed gives the same tokens, whichever rows turn out to sample.
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=logits.device, dtype=torch.int64)
    return _launch(
        logits, k, tau.to(torch.float32).contiguous(), temperature.to(torch.float32).contiguous(),
        seed, entropy_scope == "full", sample_from == "full",
    )
