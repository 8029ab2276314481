"""Triton junction scan (DESIGN.md §1-2): one read of the logits, two launches, no host sync.

Spec: ``sia_kernels.reference.junction_scan_ref``. Public Triton API only; tested with triton
3.9.0. bench/sass_budget.py counts the compiled code of exactly these kernels. Read in order:

1. ``_junction_partials_kernel``, grid (row blocks × S vocabulary splits): each program streams
   its split in tiles of ``BLOCK_V`` columns (4 warps, 32 bf16 a thread): the head tile, the
   body tiles (unmasked, loaded one tile ahead, two per loop test) and the masked tail tiles,
   each through ``_tile`` (K_PAD > 64: 8 warps and one loop, as a tile's sort is large code).
   Per 16-byte vector of the tile it accumulates the one-pass entropy partials
   d = sum e^(z-m), s = sum e^(z-m)(z-m) against a per-row reference m, reduced across threads
   once, at the end. The fast path of a tile is, per element, one FFMA (z log2 e - m log2 e),
   one exp2, one add (d) and one FFMA (s, a chain per vector) plus the bf16 unpack (one shift
   or and), and one block reduction per tile: a tile whose per-vector sums of 2^y all stay
   below the row's ``gate`` (and are not NaN) holds no logit above the running k-th best nor
   above m + ``_SLACK`` (a sum bounds each of its terms), so it needs nothing else. Otherwise
   (the head and tail tiles, -inf or NaN logits, a top-k candidate) the exact path runs: the
   reference moves to the tile max if that grew by more than ``_MOVE`` (the tile's (d, s)
   redone with -inf clamped), then the top-k. Up to K_PAD = 64 the candidates are extracted
   one by one, largest first, from the vectors whose sums pass the gate (``_extract``: one
   gathered vector per thread and round, 16-bit logits as one int32 key with the lane, one
   reduction over the threads and one over the k kept keys per candidate, no scratch memory);
   until a row holds k keys, only from the vectors whose maximum reaches the k-th largest
   vector maximum of the split's first two tiles (``_seed``): about k candidates, not every
   logit of the first vectors. Larger K_PAD sorts the tile (bitonic). Partials go to small
   buffers ``[3, B, S]`` / ``[B, S, K_PAD]``.
2. ``_junction_merge_kernel``, one program per block of rows: merges the S partials per row
   (lse, entropy, final top-k, gate, base token). The program that finishes last (an atomic
   ticket, a [1] i32 per device and stream that the partials kernel zeroes) compacts the junction
   rows with a prefix sum in row order, so the order is deterministic and there is still no
   third launch.
3. ``plan_scan`` picks tile, split and block sizes from V, k and a *bucket* of B (a handful of
   compiled variants per model, see ``warmup``); ``launch_scan`` launches; ``junction_scan_triton``
   is the backend.

Loads: rows are read through a 16-byte-aligned base (``aligned_view``) and each tile starts on
a 16-byte boundary, so the body tiles are unmasked 128-bit loads for any V and row stride; only
a split's head and tail tiles carry a column mask.

Packed keys: a float32 logit maps to a monotone int32 (flip the low 31 bits of negatives); that
goes in the high half of an int64 and ``~token_id`` in the low half, so one integer max orders
by value and breaks ties towards the lower id, and both decode back exactly. Padding keys start
at INT64_MIN, below every real key (even a real ``-inf`` logit's).

Sampling (shared spec, all backends): the Gumbel-max key of token t in row b is
``z + T * g(b, t)`` (one FMA: no overflow for tiny T, where it is the greedy argmax), with ``g``
from Philox4x32-10 keyed by the seed and counted by (t >> 1, b): see ``_gumbel``. Top-k sampling
keys the noise by the candidate's token id, so both scopes see the same noise per token.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..types import JunctionScan, empty_scan

MAX_K = 1024  # largest k the kernels take (K_PAD = 1024); larger k raises ValueError
_KEY_PAD = tl.constexpr(-(2**63))  # below every packed key, including that of a -inf logit
# Entries >= k of the running top-k (K_PAD <= 64): _KEEP_TOP + j, above every packed key of a
# non-NaN logit, their low words (64 + j) distinct from every key's (~token id) and padding's (63 - j)
_KEEP_TOP = tl.constexpr((2**31 - 1) * 2**32 + 64)
_LOG2E = tl.constexpr(1.4426950408889634)
# A tile takes the fast path only while its vector sums of e^(z - m) stay below e^_SLACK: every
# term below e^8 (no overflow in f32 sums of 10^8 such terms), and rescales are rare.
_SLACK = tl.constexpr(8.0)
_EXP_SLACK = tl.constexpr(2980.9579870417283)  # e^_SLACK
# A tile on the exact path moves the reference to its max if that is this far above it, so a
# vector sum of 2^y (VEC <= 8 terms, each <= e^(z - m)) reaches e^_SLACK again only once the max
# has grown by more than _SLACK - ln 8 > _MOVE nats: every exact tile makes progress.
_MOVE = tl.constexpr(4.5)
_GATE_MARGIN = tl.constexpr(0.9999)  # exp2 and FFMA rounding: the gate only ever errs towards exact
_TILE = 4096  # elements per tile on a GPU (rows × columns)
# Under TRITON_INTERPRET=1 (CPU tensors) a tile costs per *operation*, not per element, so the
# same kernels take 16x larger tiles and one split there (tests/test_triton_internals.py forces
# small tiles, many splits and small merge blocks through ``launch_scan(plan=...)``).
_TILE_INTERPRETED = 65536
# register limit of the partials kernel: the hardware's (ptxas left alone stops at 128 and
# rematerialises addresses inside the loop); it takes 168 or fewer, three programs per SM
_MAXNREG = 255
_MAX_SELECT_K = 64  # K_PAD up to this: candidates extracted one by one (_extract); above: a bitonic sort per tile
_KEPT = tl.constexpr(64)  # entries of the unsorted running top-k (K_PAD <= _MAX_SELECT_K): [ROWS, 32, 2]
_B_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)  # plans (compiled variants) see B only through these


# ---------------------------------------------------------------- helpers


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _mono(x):
    """float32 ``x`` -> int32 in the same order (-0.0 and +0.0 equal, so a tie goes to the id)."""
    bits = (x + 0.0).to(tl.int32, bitcast=True)  # -0.0 + 0.0 = +0.0; a NaN stays a NaN
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negatives: flip magnitude bits -> signed order


@triton.jit
def _pack_mono(mono, idx):
    """``_mono`` value and int ``idx`` -> int64 key ordered by (value, then lower idx)."""
    low = (~idx.to(tl.int32)).to(tl.uint32, bitcast=True).to(tl.int64)  # zero-extended ~id
    return (mono.to(tl.int64) << 32) | low


@triton.jit
def _pack_key(x, idx):
    """float32 ``x`` and int ``idx`` -> int64 key ordered by (x, then lower idx)."""
    return _pack_mono(_mono(x), idx)


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
def _gumbel(seed, rows, ids):
    """Standard Gumbel noise g(row, token id), the shared sampler spec (issue 13).

    Philox4x32-10, key (seed & 0xffffffff, seed >> 32), counter (id >> 1, row, 0, 0): even ids
    take (hi, lo) = (r0, r1), odd ids (r2, r3). w = hi 2^-32 + (lo + 1/2) 2^-64 in (0, 1 - 2^-24],
    E = -log(1 - w) (a series below 2^-10, so tiny w keep their precision), g = -log(E) <= ~45.
    A pure function of (seed, row, id): tiles, splits and candidate ranks change nothing."""
    rows, ids = tl.broadcast(rows, ids)
    r0, r1, r2, r3 = tl.philox(seed, (ids >> 1).to(tl.uint32), rows.to(tl.uint32), 0, 0)
    odd = (ids & 1) != 0
    hi = tl.where(odd, r2, r0).to(tl.float32)
    lo = tl.where(odd, r3, r1).to(tl.float32)
    w = hi * 2.3283064365386963e-10 + (lo + 0.5) * 5.421010862427522e-20
    w = tl.minimum(w, 0.99999994039535522)  # 1 - 2^-24: hi rounded up to 2^32 stays below 1
    e = tl.where(w < 0.0009765625, w + w * w * (0.5 + w * 0.3333333432674408), -tl.log(1.0 - w))
    return -tl.log(e)


@triton.jit
def _axis_indicator(D: tl.constexpr, J: tl.constexpr):
    """0/1 along the J-th innermost axis of a D-dimensional hypercube (broadcast shape)."""
    return tl.reshape(tl.arange(0, 2), [1] * (D - J - 1) + [2] + [1] * J)


@triton.jit
def _bitonic_topk(x, LOG_R: tl.constexpr, LOG_N: tl.constexpr, LOG_K: tl.constexpr, DESCENDING: tl.constexpr):
    """The 2**LOG_K largest entries along the last axis of ``x`` ([2**LOG_R, 2**LOG_N]), sorted.

    ``tl.topk``'s algorithm on the hypercube view [2, ..., 2]: sort chunks of 2**LOG_K in
    alternating order, then repeatedly halve by an elementwise max of neighbouring chunks (a
    bitonic split keeps the larger half) and re-merge. A compare-and-swap is a min and a max
    over one size-2 axis: registers or one shuffle on a GPU, numpy in the interpreter."""
    if LOG_K == 0:
        out = tl.max(x, 1, keep_dims=True)
    else:
        h = tl.reshape(x, [2] * (LOG_R + LOG_N))
        for stage in tl.static_range(1, LOG_N + 1):
            # dims of h at this stage: LOG_R + LOG_N - max(0, stage - LOG_K) (after the halving)
            if stage > LOG_K:  # halve: keep the larger of each chunk pair
                h = tl.max(h, LOG_R + LOG_N - (stage - LOG_K) - LOG_K)
            if stage < LOG_N:
                flip = _axis_indicator(LOG_R + LOG_N - max(0, stage - LOG_K), min(stage, LOG_K))
            else:
                flip = DESCENDING
            # (No constexpr locals in these unrolled loops: triton forbids rebinding them.)
            for i in tl.static_range(min(stage, LOG_K)):
                lo = tl.min(h, LOG_R + LOG_N - max(0, stage - LOG_K) - min(stage, LOG_K) + i, keep_dims=True)
                hi = tl.max(h, LOG_R + LOG_N - max(0, stage - LOG_K) - min(stage, LOG_K) + i, keep_dims=True)
                right = _axis_indicator(LOG_R + LOG_N - max(0, stage - LOG_K), min(stage, LOG_K) - 1 - i)
                h = tl.where((flip ^ right) != 0, hi, lo)
        out = tl.reshape(h, [2**LOG_R, 2**LOG_K])
    return out


@triton.jit
def _merge_sorted(best, cand, LOG_R: tl.constexpr, LOG_K: tl.constexpr):
    """Top 2**LOG_K of ``best`` (descending) and ``cand`` (ascending) per row, descending.

    Their elementwise max is exactly that top half, as a bitonic sequence; one bitonic merge
    (LOG_K compare-and-swap steps) sorts it."""
    h = tl.maximum(best, cand)
    if LOG_K > 0:
        h = tl.reshape(h, [2] * (LOG_R + LOG_K))
        for i in tl.static_range(LOG_K):
            lo = tl.min(h, LOG_R + i, keep_dims=True)
            hi = tl.max(h, LOG_R + i, keep_dims=True)
            right = _axis_indicator(LOG_R + LOG_K, LOG_K - 1 - i)
            h = tl.where(right == 0, hi, lo)  # descending: the larger one first
        h = tl.reshape(h, [2**LOG_R, 2**LOG_K])
    return h


@triton.jit
def _halves(t, ROWS: tl.constexpr, NV: tl.constexpr, W: tl.constexpr):
    """[ROWS, NV, W] -> its even and odd entries along the last axis, two [ROWS, NV, W // 2]."""
    return tl.split(tl.reshape(t, [ROWS, NV, W // 2, 2]))


@triton.jit
def _fma_vec(e, y, acc, ROWS: tl.constexpr, NV: tl.constexpr, VEC: tl.constexpr):
    """acc + sum over each 16-byte vector of e * y ([ROWS, NV * VEC] -> [ROWS, NV]): one FFMA
    per element in a chain (a reduction tree would take a multiply and an add per pair)."""
    e = tl.reshape(e, [ROWS, NV, VEC])
    y = tl.reshape(y, [ROWS, NV, VEC])
    e0, e1 = _halves(e, ROWS, NV, VEC)
    y0, y1 = _halves(y, ROWS, NV, VEC)
    e00, e01 = _halves(e0, ROWS, NV, VEC // 2)
    e10, e11 = _halves(e1, ROWS, NV, VEC // 2)
    y00, y01 = _halves(y0, ROWS, NV, VEC // 2)
    y10, y11 = _halves(y1, ROWS, NV, VEC // 2)
    if VEC == 4:
        acc = tl.fma(tl.reshape(e00, [ROWS, NV]), tl.reshape(y00, [ROWS, NV]), acc)
        acc = tl.fma(tl.reshape(e01, [ROWS, NV]), tl.reshape(y01, [ROWS, NV]), acc)
        acc = tl.fma(tl.reshape(e10, [ROWS, NV]), tl.reshape(y10, [ROWS, NV]), acc)
        acc = tl.fma(tl.reshape(e11, [ROWS, NV]), tl.reshape(y11, [ROWS, NV]), acc)
    else:
        for p in tl.static_range(4):
            ep = e00 if p == 0 else (e01 if p == 1 else (e10 if p == 2 else e11))
            yp = y00 if p == 0 else (y01 if p == 1 else (y10 if p == 2 else y11))
            ea, eb = _halves(ep, ROWS, NV, 2)
            ya, yb = _halves(yp, ROWS, NV, 2)
            acc = tl.fma(tl.reshape(ea, [ROWS, NV]), tl.reshape(ya, [ROWS, NV]), acc)
            acc = tl.fma(tl.reshape(eb, [ROWS, NV]), tl.reshape(yb, [ROWS, NV]), acc)
    return acc


@triton.jit
def _slot_keys(mono, lanes, cand, KEY_SHIFT: tl.constexpr, LOG_V: tl.constexpr):
    """Keys of the gathered logits (their ``_mono``) at tile lanes ``lanes``: ordered by value,
    then the lower lane, with bit 0 free (``_extract`` flags a slot's maximum there); the
    smallest key of the type where not ``cand``. 16-bit logits (KEY_SHIFT > LOG_V): one int32,
    the monotone bits in place over the lane (their KEY_SHIFT low bits are padding); else int64."""
    lane_bits = (2**LOG_V - 1 - lanes) << 1
    if KEY_SHIFT > LOG_V:
        return tl.where(cand, (mono & -(2**KEY_SHIFT)) | lane_bits, -(2**31))
    else:
        return tl.where(cand, (mono.to(tl.int64) << 32) | lane_bits.to(tl.int64), _KEY_PAD)


@triton.jit
def _slot_key_global(c, col0, KEY_SHIFT: tl.constexpr, LOG_V: tl.constexpr):
    """The packed int64 key (``_pack_key``) of a ``_slot_keys`` key ``c`` [ROWS] (flag ignored).
    16-bit logits: the value's monotone bits with the KEY_SHIFT low ones cleared (a negative
    value's are ones), which orders 16-bit values alike; ``_exact_keys`` restores them."""
    col = col0 + (2**LOG_V - 1) - ((c >> 1) & (2**LOG_V - 1)).to(tl.int32)
    if KEY_SHIFT > LOG_V:
        return _pack_mono(c & -(2**KEY_SHIFT), col)
    else:
        return _pack_mono((c >> 32).to(tl.int32), col)


@triton.jit
def _exact_keys(best, KEY_SHIFT: tl.constexpr):
    """``best``'s keys as ``_pack_key`` makes them: 16-bit logits' low monotone bits restored
    (ones below a negative value); padding stays padding."""
    if KEY_SHIFT > 0:
        hi = (best >> 32).to(tl.int32)
        fill = ((hi >> 31) & (2**KEY_SHIFT - 1)) * (hi != -(2**31))
        best = best | (fill.to(tl.int64) << 32)
    return best


@triton.jit
def _slot_max(keys, empty):
    """Per slot ([ROWS, TT, VEC] -> [ROWS, TT]): the largest key, bit 0 set if a second
    candidate is left below it."""
    more = tl.sum((keys > empty).to(tl.int32), 2) > 1
    return tl.max(keys, 2) | more.to(keys.dtype)


@triton.jit
def _pick_vector(x4, pick, ROWS: tl.constexpr, REP: tl.constexpr, TT: tl.constexpr, VEC: tl.constexpr):
    """x4 [ROWS, REP, TT, VEC] -> [ROWS, TT, VEC]: slot t's vector ``pick[:, t]`` (any if >= REP),
    by a tree of selects on the bits of ``pick`` (REP - 1 per element, all in registers)."""
    xs = tl.permute(x4, (0, 2, 3, 1))
    for lvl in tl.static_range(REP.bit_length() - 1):
        lo, hi = tl.split(tl.reshape(xs, [ROWS, TT, VEC, REP >> (lvl + 1), 2]))
        xs = tl.where(((pick >> lvl) & 1)[:, :, None, None] != 0, hi, lo)
    return tl.reshape(xs, [ROWS, TT, VEC])


@triton.jit
def _vector_max(x, ROWS: tl.constexpr, NV: tl.constexpr, VEC: tl.constexpr):
    """Each 16-byte vector's largest logit ([ROWS, NV * VEC] -> [ROWS, NV])."""
    return tl.max(tl.reshape(x, [ROWS, NV, VEC]), 2)


@triton.jit
def _count_at_least(u0, u1, t):
    """Per row, how many entries of ``u0`` and ``u1`` [ROWS, NV] are >= ``t`` [ROWS]."""
    return tl.sum(tl.where(u0 >= t[:, None], 1, 0) + tl.where(u1 >= t[:, None], 1, 0), 1)


@triton.jit
def _seed(x0, x1, k, ROWS: tl.constexpr, NV: tl.constexpr, VEC: tl.constexpr):
    """The split's floor [ROWS] (int32, a candidate's ``_mono`` must exceed it) from its first
    two tiles ``x0``, ``x1`` [ROWS, NV * VEC] (masked lanes -inf; x1 all -inf if it is not a
    body tile): f = the k-th largest of their 16-byte vectors' maxima, rounded down to 16
    monotone bits (exact for 16-bit logits); the floor is _mono(f) - 1. At least k logits of
    the split are >= f (distinct vectors' maxima), so every logit of its top-k is too: until a
    row holds k keys, only the vectors whose maximum reaches f are extracted (about k
    candidates in the two tiles, where every logit of the first vectors would be inserted,
    and the second tile starts from the first two's threshold). Where fewer than k vectors
    hold a logit above -inf: INT32_MIN (every logit). A binary search over the 16 monotone
    bits, one count over the slots each."""
    v0 = _vector_max(x0, ROWS, NV, VEC)  # masked lanes and -inf logits: -inf
    v1 = _vector_max(x1, ROWS, NV, VEC)
    u0 = tl.where(v0 > float("-inf"), _mono(v0) >> 16, -32768)  # -inf: -32641; -32768: never counted
    u1 = tl.where(v1 > float("-inf"), _mono(v1) >> 16, -32768)
    lo = tl.full([ROWS], -32767, tl.int32)
    hi = tl.full([ROWS], 32767, tl.int32)
    for _ in tl.static_range(16):  # the answer stays in [lo, hi] (if count(lo) >= k at all)
        mid = lo + ((hi - lo + 1) >> 1)
        ok = _count_at_least(u0, u1, mid) >= k
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid - 1)
    found = _count_at_least(u0, u1, lo) >= k
    return tl.where(found, (lo << 16) - 1, -(2**31))


@triton.jit
def _extract(best, kth, full, floor, x, hot, col0, start, end,
             ROWS: tl.constexpr, REP: tl.constexpr, TT: tl.constexpr, VEC: tl.constexpr,
             KEY_SHIFT: tl.constexpr, LOG_V: tl.constexpr, MASKED: tl.constexpr):
    """Fold the tile's logits ``x`` [ROWS, BLOCK_V] that can enter the rows' top-k into ``best``
    [ROWS, 32, 2] (unsorted packed keys, their low words distinct, entries >= k above every
    key: its minimum ``kth`` is the k-th best; 16-bit logits' keys as ``_slot_key_global``).
    Returns best, kth, full, kth_val (the k-th best logit once the row holds k keys, else
    -inf). ``MASKED``: columns outside [start, end) are not candidates.

    Only 16-byte vectors flagged ``hot`` [ROWS, NV] can hold a candidate (a logit not below the
    k-th best; while the row is not full, one whose ``_mono`` exceeds ``floor``, see ``_seed``).
    The tile is viewed as [REP, TT, VEC]: slot t (a thread on a GPU) holds vectors t, t + TT,
    ... A round gathers one hot vector per slot (its first not yet done) and keeps each slot's
    largest candidate key, flagged if the slot holds another; then each step takes the largest
    over the slots, replaces the k-th best with it and, only if flagged, rescans that slot,
    until the largest left cannot enter.
    Candidates enter largest first, so among equal logits the lowest column; a logit equal to
    the k-th best is a candidate too (a later round can hold a lower column) and enters only
    if its key ranks above. No shared scratch, no sort: a tile above the running threshold
    usually holds one or two candidates, each costing one reduction over the slots and one
    over ``best``."""
    r_idx = tl.arange(0, REP)[None, :, None]
    t_idx = tl.arange(0, TT)[None, :, None]
    e_idx = tl.arange(0, VEC)[None, None, :]
    x4 = tl.reshape(x, [ROWS, REP, TT, VEC])
    hot3 = tl.reshape(hot, [ROWS, REP, TT])
    if KEY_SHIFT > LOG_V:
        empty = -(2**31)  # below every candidate's key
    else:
        empty = _KEY_PAD
    while tl.max(hot3.to(tl.int32)) > 0:
        pick = tl.min(tl.where(hot3, r_idx, REP), 1)  # [ROWS, TT]: the slot's first hot vector
        sel = r_idx == pick[:, None, :]
        xg = _pick_vector(x4, pick, ROWS, REP, TT, VEC)
        lanes = (pick[:, :, None] * TT + t_idx) * VEC + e_idx
        # not below the k-th best (by its key's monotone bits: a later round can hold an equal
        # logit at a lower column, which the keys then rank above it), or above the floor; a
        # NaN may pass (its row is reported)
        thr = tl.where(full, (kth >> 32).to(tl.int32) - 1, floor)
        mono = _mono(xg)
        cand = (mono > thr[:, None, None]) & (pick < REP)[:, :, None]
        if MASKED:
            cols = col0[:, None, None] + lanes
            cand = cand & (cols >= start) & (cols < end)
        keys = _slot_keys(mono, lanes, cand, KEY_SHIFT, LOG_V)
        m1 = _slot_max(keys, empty)  # [ROWS, TT]
        c = tl.max(m1, 1)
        gk = _slot_key_global(c, col0, KEY_SHIFT, LOG_V)
        viable = (c > empty) & (gk > kth)
        while tl.max(viable.to(tl.int32)) > 0:
            # the k-th best's entry, by the low words alone (distinct: one compare, not two)
            at_kth = best.to(tl.int32) == kth.to(tl.int32)[:, None, None]
            best = tl.where(viable[:, None, None] & at_kth, gk[:, None, None], best)
            kth = tl.min(tl.min(best, 2), 1)
            owner = (m1 == c[:, None]) & viable[:, None]
            if tl.max(((c & 1) != 0).to(tl.int32)) > 0:  # the owner holds more: its next one,
                # flagged again unless none is left (at worst one more rescan, that finds none)
                nxt = tl.max(tl.where(keys < (c & -2)[:, None, None], keys, empty), 2)
                m1 = tl.where(owner, tl.where(nxt > empty, nxt | 1, empty), m1)
            else:
                m1 = tl.where(owner, empty, m1)
            c = tl.max(m1, 1)
            gk = _slot_key_global(c, col0, KEY_SHIFT, LOG_V)
            viable = (c > empty) & (gk > kth)
        full = kth > _KEY_PAD + _KEPT
        hot3 = hot3 & ~sel
    return best, kth, full, tl.where(full, _key_value(kth), float("-inf"))


@triton.jit
def _sort_select(best, full, kth_val, x, col0, start, end, k,
                 K_PAD: tl.constexpr, LOG_R: tl.constexpr, LOG_V: tl.constexpr, LOG_K: tl.constexpr):
    """Large K (K_PAD > 64): ``best`` [ROWS, K_PAD] sorted descending; a bitonic top-K of the
    tile's candidates (columns outside [start, end) excluded) merged into it."""
    lanes = tl.arange(0, 2**LOG_V)[None, :]
    j = tl.arange(0, K_PAD)[None, :]
    cols = col0[:, None] + lanes
    valid = (cols >= start) & (cols < end)
    keys = tl.where(valid & ((x > kth_val[:, None]) | ~full[:, None]), _pack_key(x, cols), _KEY_PAD)
    best = _merge_sorted(best, _bitonic_topk(keys, LOG_R, LOG_V, LOG_K, 0), LOG_R, LOG_K)
    kth = tl.max(tl.where(j == k - 1, best, _KEY_PAD), 1)
    full = kth > _KEY_PAD + K_PAD
    return best, full, tl.where(full, _key_value(kth), float("-inf"))


@triton.jit
def _load_tile(row_ptrs, off, col0, start, end, ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
    """A split's head or tail tile ``off`` columns in, as float32 [ROWS, BLOCK_V]: -inf outside
    columns [start, end) (lane 0 is column ``col0 + off``)."""
    lanes = tl.arange(0, BLOCK_V)[None, :]
    cols = col0[:, None] + off + lanes
    x = tl.load(row_ptrs[:, None] + off + lanes, mask=(cols >= start) & (cols < end), other=float("-inf"))
    return x.to(tl.float32)


@triton.jit
def _load_body(row_ptrs, off, BF16_WORDS: tl.constexpr, BLOCK_V: tl.constexpr):
    """A body tile ``off`` columns into the rows' split, raw: unmasked 128-bit loads of bf16 as
    int32 words, else at the logits' own width (``_unpack`` makes them float32)."""
    if BF16_WORDS:
        return tl.load(row_ptrs.to(tl.pointer_type(tl.int32))[:, None] + off // 2 + tl.arange(0, BLOCK_V // 2)[None, :])
    else:
        return tl.load(row_ptrs[:, None] + off + tl.arange(0, BLOCK_V)[None, :])


@triton.jit
def _unpack(raw, BF16_WORDS: tl.constexpr, ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
    """A body tile's raw loads as float32 [ROWS, BLOCK_V]; bf16 words: one shift or one and each."""
    if BF16_WORDS:
        lo = (raw << 16).to(tl.float32, bitcast=True)
        hi = (raw & -65536).to(tl.float32, bitcast=True)
        x = tl.reshape(tl.join(lo, hi), [ROWS, BLOCK_V])
    else:
        x = raw.to(tl.float32)
    return x


@triton.jit
def _tile(x, rows, rmask, start, end, col0, m, m2, d, s, gate, best, kth, full, kth_val, gbest,
          floor, k, t, sampling, any_sampling, seed,
          ROWS: tl.constexpr, NV: tl.constexpr, VEC: tl.constexpr, TT: tl.constexpr, LOG_R: tl.constexpr,
          LOG_V: tl.constexpr, K_PAD: tl.constexpr, LOG_K: tl.constexpr, KEY_SHIFT: tl.constexpr,
          SORT_TILE: tl.constexpr, SAMPLE_FULL: tl.constexpr, MASKED: tl.constexpr):
    """One tile ``x`` [ROWS, BLOCK_V] (lane 0 is column ``col0`` [ROWS]) folded into the
    program's state (m, m2, d, s, gate, best, kth, full, kth_val, gbest; ``floor``: ``_seed``'s,
    for rows short of k keys); returns the state."""
    # Fast path, per element: one FFMA, one exp2, one add, one FFMA (no max, no clamp). The FMA
    # is explicit: x log2(e) unrounded before m2 is taken off, so |z| ~ 1e4 keeps its precision
    # (rounding x log2(e) first costs ~1e-3 in y, and 1e-3 relative entropy), in the interpreter too.
    y = tl.fma(x, _LOG2E, -m2[:, None])
    e = tl.exp2(y)
    d_t = tl.sum(tl.reshape(e, [ROWS, NV, VEC]), 2)
    s_old = s
    s = _fma_vec(e, y, s, ROWS, NV, VEC)  # NaN if a logit is -inf (0 * -inf): redone below
    # A vector whose sum is below ``gate`` holds no logit above the k-th best nor above
    # m + _SLACK (each term is at most the sum); a NaN (a NaN or -inf logit, a masked lane)
    # fails the test too. Any such vector sends the whole tile down the exact path.
    v = d_t + s * 0.0
    v_max = tl.reduce(tl.reshape(v, [ROWS, NV // TT, TT]), 1, _max_nan)  # a thread's own vectors: no shuffles
    if tl.max((~(v_max < gate[:, None]) & rmask[:, None]).to(tl.int32)) > 0:  # first tiles, -inf / NaN, top-k
        # the exact path: a sum reaching e^_SLACK (gate <= e^_SLACK), a NaN, a row still at m = -inf
        fix = (~(v < _EXP_SLACK) | (m == float("-inf"))[:, None]) & rmask[:, None]
        if tl.max(fix.to(tl.int32)) > 0:  # rare: the exact (m, d, s) of the tile
            s = s_old
            x_max = tl.max(x, 1)
            move = x_max > m + _MOVE
            if tl.max(move.to(tl.int32)) > 0:  # the row max grew: move the reference to it
                m_new = tl.where(move, x_max, m)
                m2_new = tl.where(m_new == float("-inf"), 0.0, m_new * _LOG2E)
                alpha = tl.where(m == float("-inf"), 0.0, tl.exp2(m2 - m2_new))[:, None]  # d = s = 0 then
                s = tl.where(alpha > 0.0, alpha * (s + d * (m2 - m2_new)[:, None]), 0.0)
                d = d * alpha
                m = m_new
                m2 = m2_new
            y = tl.fma(x, _LOG2E, -m2[:, None])
            e = tl.exp2(y)
            d_t = tl.sum(tl.reshape(e, [ROWS, NV, VEC]), 2)
            # -inf logits: 0 * -256, not 0 * -inf = NaN (a NaN logit stays NaN in d: ops.py reports it)
            s = _fma_vec(e, tl.maximum(y, -256.0), s, ROWS, NV, VEC)
        if SORT_TILE:
            if tl.max((((tl.max(x, 1) > kth_val) | ~full) & rmask).to(tl.int32)) > 0:
                best, full, kth_val = _sort_select(best, full, kth_val, x, col0, start, end, k,
                                                   K_PAD, LOG_R, LOG_V, LOG_K)
        else:
            # hot: vectors that can hold a candidate (a sum bounds each of its terms; all
            # while the row is not full), against the k-th best and the current reference
            gate_now = tl.where(full, tl.exp2(tl.fma(kth_val, _LOG2E, -m2)) * _GATE_MARGIN, 0.0)
            hot = ~(d_t < gate_now[:, None]) & rmask[:, None]
            if tl.max((~full & rmask).to(tl.int32)) > 0:  # short of k keys: vectors reaching the floor
                hot = hot & (full[:, None] | (_mono(_vector_max(x, ROWS, NV, VEC)) > floor[:, None]))
            best, kth, full, kth_val = _extract(best, kth, full, floor, x, hot, col0, start, end,
                                                ROWS, NV // TT, TT, VEC, KEY_SHIFT, LOG_V, MASKED)
        # The next tiles take the fast path while every vector sum stays below both e^_SLACK
        # (no overflow; after a move a sum needs a logit above m + _MOVE to reach it) and
        # 2^(y of the k-th best) (less a margin for rounding): a sum bounds each of its terms.
        kth_y = tl.fma(kth_val, _LOG2E, -m2)
        gate = tl.minimum(tl.where(full, tl.exp2(kth_y) * _GATE_MARGIN, 0.0), _EXP_SLACK)
    d += d_t

    if SAMPLE_FULL:
        if any_sampling:
            cols = col0[:, None] + tl.arange(0, NV * VEC)[None, :]
            g = _gumbel(seed, rows[:, None], cols)
            valid = (cols >= start) & (cols < end)
            gk = tl.where(valid & sampling[:, None], _pack_key(tl.fma(t[:, None], g, x), cols), _KEY_PAD)
            gbest = tl.maximum(gbest, tl.max(gk, 1))
    return m, m2, d, s, gate, best, kth, full, kth_val, gbest


# ---------------------------------------------------------------- kernel 1: partials


@triton.jit(do_not_specialize=["B", "V", "k", "S", "SPLIT_LEN", "stride_row", "offset"])
def _junction_partials_kernel(
    # pointers
    logits_ptr,  # [*] f32/bf16/f16, 16-byte aligned; element (r, c) at offset + r * stride_row + c
    temperature_ptr,  # [B] f32, 0 = greedy row
    seed_ptr,  # [1] i64, drawn from the caller's generator
    stats_ptr,  # out [3, B, S] f32: m, d, s per (row, split)
    topk_keys_ptr,  # out [B, S, K_PAD] i64: packed top-k keys of the split (padding past k)
    gumbel_keys_ptr,  # out [B, S] i64: packed argmax of z + T * Gumbel over the split
    ticket_ptr,  # [1] i32: the merge kernel's ticket, zeroed here (this launch runs before it)
    # sizes
    B,
    V,
    k,
    S,
    SPLIT_LEN,  # columns per split, a multiple of VEC
    # strides
    stride_row,
    offset,  # elements from the aligned base to logits[0, 0]
    # meta
    ROWS: tl.constexpr,  # rows per program: small V still makes ~4096-element tiles
    BLOCK_V: tl.constexpr,  # columns per tile
    LOG_R: tl.constexpr,  # log2(ROWS)
    LOG_V: tl.constexpr,  # log2(BLOCK_V)
    K_PAD: tl.constexpr,  # power of two >= k (tensor shapes); selection uses the exact k
    LOG_K: tl.constexpr,  # log2(K_PAD)
    VEC: tl.constexpr,  # elements per 16 bytes
    BF16_WORDS: tl.constexpr,  # bf16 logits: body tiles read as int32 words (cheaper upcast)
    SORT_TILE: tl.constexpr,  # top-k by a bitonic sort of each tile (K_PAD > 64) or by extraction
    TT: tl.constexpr,  # extraction slots: a thread's vectors (REP = BLOCK_V // (VEC * TT) of them)
    SAMPLE_FULL: tl.constexpr,  # keep a Gumbel-max over the full vocabulary
    KEY_SHIFT: tl.constexpr,  # 16 (bf16), 13 (f16): zero low bits of the logits' float32; 0 (f32)
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    split = tl.program_id(1)
    rmask = rows < B
    rows_ld = tl.minimum(rows, B - 1).to(tl.int64)  # rows past B re-read row B-1: no row mask
    start = split * SPLIT_LEN
    end = tl.minimum(start + SPLIT_LEN, V)
    # Each row's tiles start at the 16-byte boundary at or before column `start`: tile t covers
    # columns start - head + t * BLOCK_V + lane. Tiles 1.. are whole 16-byte vectors inside the
    # row until the last one, so only tile 0 and the tail tile need a mask.
    first = offset + rows_ld * stride_row + start
    head = (first % VEC).to(tl.int32)
    row_ptrs = logits_ptr + tl.multiple_of(first - head, VEC)  # 16-byte aligned
    col0 = start - head  # [ROWS]: the column of the head tile's lane 0
    n_tiles = tl.cdiv(end - start + VEC - 1, BLOCK_V)
    tail = (end - start) // BLOCK_V  # tiles from here on may reach past `end`

    # Accumulators, base 2: y = (z - m) log2(e), d = sum 2^y, s = sum 2^y y, one slot per 16-byte
    # vector of the tile (each thread sums its own vectors: no registers per element).
    NV: tl.constexpr = BLOCK_V // VEC
    m = tl.full([ROWS], float("-inf"), tl.float32)  # the reference (<= _SLACK below the max)
    m2 = tl.zeros([ROWS], tl.float32)  # m log2(e), 0 while m = -inf
    d = tl.zeros([ROWS, NV], tl.float32)
    s = tl.zeros([ROWS, NV], tl.float32)
    # gate: a tile whose per-vector sums of 2^y all stay below ``gate`` (and are not NaN) needs
    # neither a rescale nor the top-k (see the loop); 0 (every tile) until the first tile is seen
    gate = tl.zeros([ROWS], tl.float32)
    # the running top-k as packed keys, distinct padding keys (below every real key) to start.
    # SORT_TILE: [ROWS, K_PAD] sorted descending. Else unsorted [ROWS, 32, 2], entry 2 l + h
    # (two per lane of one warp: its minimum, the k-th best, is a warp reduction), entries >= k
    # above every key (_KEEP_TOP + j).
    if SORT_TILE:
        j = tl.arange(0, K_PAD)[None, :]
        best = tl.full([ROWS, K_PAD], _KEY_PAD + K_PAD - 1, tl.int64) - j
        kth = tl.max(tl.where(j == k - 1, best, _KEY_PAD), 1)
    else:
        j = tl.arange(0, 32)[None, :, None] * 2 + tl.arange(0, 2)[None, None, :]
        best = tl.where(j < k, tl.full([ROWS, 32, 2], _KEY_PAD + _KEPT - 1, tl.int64) - j,
                        tl.full([ROWS, 32, 2], _KEEP_TOP, tl.int64) + j)
        kth = tl.min(tl.min(best, 2), 1)
    kth_val = tl.full([ROWS], float("-inf"), tl.float32)  # k-th best logit once best is full
    full = tl.zeros([ROWS], tl.int1)
    gbest = tl.full([ROWS], _KEY_PAD, tl.int64)
    if SAMPLE_FULL:
        t = tl.load(temperature_ptr + rows_ld)
        sampling = (t > 0.0) & rmask
        any_sampling = tl.max(sampling.to(tl.int32)) > 0  # all greedy: no RNG work at all
        seed = tl.load(seed_ptr)

    # The head tile, the body tiles (unmasked 128-bit loads) and the tail tiles (0 to 2), each
    # through the same ``_tile``; only the loads differ. A bitonic sort per tile (K_PAD > 64) is
    # large code: there, one loop holds the only copy of ``_tile`` and the load alone branches.
    if not SAMPLE_FULL:  # unused
        t, sampling, any_sampling, seed = kth_val, full, False, 0
    floor = tl.full([ROWS], -(2**31), tl.int32)  # (K_PAD <= 64) every logit until _seed's
    if SORT_TILE:
        for i in range(0, n_tiles):
            if (i == 0) | (i >= tail):
                x = _load_tile(row_ptrs, i * BLOCK_V, col0, start, end, ROWS, BLOCK_V)
            else:
                x = _unpack(_load_body(row_ptrs, i * BLOCK_V, BF16_WORDS, BLOCK_V), BF16_WORDS, ROWS, BLOCK_V)
            m, m2, d, s, gate, best, kth, full, kth_val, gbest = _tile(
                x, rows, rmask, start, end, col0 + i * BLOCK_V, m, m2, d, s, gate, best, kth, full,
                kth_val, gbest, floor, k, t, sampling, any_sampling, seed, ROWS, NV, VEC, TT, LOG_R, LOG_V, K_PAD, LOG_K,
                KEY_SHIFT, SORT_TILE, SAMPLE_FULL, True)
    else:
        x = _load_tile(row_ptrs, 0, col0, start, end, ROWS, BLOCK_V)
        # The floor sees the first body tile too (read twice: here, and an L1/L2 hit in the loop;
        # carried in registers across the head tile it costs the loop an instruction)
        x1 = tl.full([ROWS, BLOCK_V], float("-inf"), tl.float32)
        if tail > 1:
            x1 = _unpack(_load_body(row_ptrs, BLOCK_V, BF16_WORDS, BLOCK_V), BF16_WORDS, ROWS, BLOCK_V)
        floor = _seed(x, x1, k, ROWS, NV, VEC)
        m, m2, d, s, gate, best, kth, full, kth_val, gbest = _tile(
            x, rows, rmask, start, end, col0, m, m2, d, s, gate, best, kth, full, kth_val, gbest, floor, k, t, sampling,
            any_sampling, seed, ROWS, NV, VEC, TT, LOG_R, LOG_V, K_PAD, LOG_K, KEY_SHIFT, SORT_TILE, SAMPLE_FULL, True)
        # Body tiles (unmasked 128-bit loads): each one's loads are issued a tile ahead, so two tiles
        # are in flight per thread; the last one is peeled off (nothing is read past it).
        if tail > 1:
            raw = _load_body(row_ptrs, BLOCK_V, BF16_WORDS, BLOCK_V)
            for i in tl.range(1, tail - 1, loop_unroll_factor=2):  # two tiles per loop test
                x = _unpack(raw, BF16_WORDS, ROWS, BLOCK_V)
                raw = _load_body(row_ptrs, (i + 1) * BLOCK_V, BF16_WORDS, BLOCK_V)
                m, m2, d, s, gate, best, kth, full, kth_val, gbest = _tile(
                    x, rows, rmask, start, end, col0 + i * BLOCK_V, m, m2, d, s, gate, best, kth, full,
                    kth_val, gbest, floor, k, t, sampling, any_sampling, seed, ROWS, NV, VEC, TT, LOG_R, LOG_V, K_PAD, LOG_K,
                    KEY_SHIFT, SORT_TILE, SAMPLE_FULL, False)
            m, m2, d, s, gate, best, kth, full, kth_val, gbest = _tile(
                _unpack(raw, BF16_WORDS, ROWS, BLOCK_V), rows, rmask, start, end, col0 + (tail - 1) * BLOCK_V, m, m2,
                d, s, gate, best, kth, full, kth_val, gbest, floor, k, t, sampling, any_sampling, seed, ROWS, NV, VEC, TT,
                LOG_R, LOG_V, K_PAD, LOG_K, KEY_SHIFT, SORT_TILE, SAMPLE_FULL, False)
        for i in range(tl.maximum(tail, 1), n_tiles):
            x = _load_tile(row_ptrs, i * BLOCK_V, col0, start, end, ROWS, BLOCK_V)
            m, m2, d, s, gate, best, kth, full, kth_val, gbest = _tile(
                x, rows, rmask, start, end, col0 + i * BLOCK_V, m, m2, d, s, gate, best, kth, full,
                kth_val, gbest, floor, k, t, sampling, any_sampling, seed, ROWS, NV, VEC, TT, LOG_R, LOG_V, K_PAD, LOG_K,
                KEY_SHIFT, SORT_TILE, SAMPLE_FULL, True)

    if (tl.program_id(0) == 0) & (split == 0):
        tl.store(ticket_ptr, 0)  # whatever an earlier, aborted scan left there
    part = rows * S + split
    # The tiles were taken relative to m2 = round(m log2(e)), not to m log2(e) itself: at |m| ~ 1e4
    # that rounding (up to 5e-4) would shift lse and every log-prob. Re-base (d, s) on m exactly,
    # once per program: y' = y - err with err = m log2(e) - m2 (one FMA, exact).
    err = tl.where(m == float("-inf"), 0.0, tl.fma(m, _LOG2E, -m2))
    rebase = tl.exp2(-err)
    d_sum = tl.sum(d, 1)
    tl.store(stats_ptr + part, m, mask=rmask)
    tl.store(stats_ptr + B * S + part, rebase * d_sum, mask=rmask)
    tl.store(stats_ptr + 2 * B * S + part, rebase * (tl.sum(s, 1) - err * d_sum) / _LOG2E, mask=rmask)
    if SORT_TILE:
        k_off = part.to(tl.int64)[:, None] * K_PAD + j
        tl.store(topk_keys_ptr + k_off, tl.where(j < k, best, _KEY_PAD), mask=rmask[:, None])
    else:
        k_off = part.to(tl.int64)[:, None, None] * K_PAD + j
        tl.store(topk_keys_ptr + k_off, tl.where(j < k, _exact_keys(best, KEY_SHIFT), _KEY_PAD),
                 mask=rmask[:, None, None] & (j < K_PAD))
    if SAMPLE_FULL:
        tl.store(gumbel_keys_ptr + part, gbest, mask=rmask)


# ---------------------------------------------------------------- kernel 2: merge + compact


# k is specialised (Triton's launcher marks an int divisible by 16 so): the compaction's row
# copies are then 128-bit; a server's warmup compiles the k it uses.
@triton.jit(do_not_specialize=["B", "S"])
def _junction_merge_kernel(
    # pointers: inputs
    stats_ptr,  # [3, B, S] f32
    topk_keys_ptr,  # [B, S, K_PAD] i64
    gumbel_keys_ptr,  # [B, S] i64 (read only if SAMPLE_FULL)
    tau_ptr,  # [B] f32
    temperature_ptr,  # [B] f32
    seed_ptr,  # [1] i64
    ticket_ptr,  # [1] i32, zeroed by the partials kernel; counts finished programs
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
    LOG_R: tl.constexpr,  # log2(ROWS)
    LOG_K: tl.constexpr,  # log2(K_PAD)
    LOG_SK: tl.constexpr,  # log2(S_PAD * K_PAD)
    ROWS: tl.constexpr,  # rows per program
    CROWS: tl.constexpr,  # rows per step of the compaction
    SCOPE_FULL: tl.constexpr,  # entropy over the full vocabulary (else over the top-k)
    SAMPLE_FULL: tl.constexpr,  # base token from the full-vocabulary Gumbel partials
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < B
    rows64 = rows.to(tl.int64)
    s_lanes = tl.arange(0, S_PAD)
    j = tl.arange(0, K_PAD)
    jmask = j < k
    kk = tl.arange(0, S_PAD * K_PAD)

    # ---- lse and full entropy from the (m, d, s) partials, rescaled by e^(m_i - M)
    smask = rmask[:, None] & (s_lanes[None, :] < S)
    part = rows[:, None] * S + s_lanes[None, :]
    pm = tl.load(stats_ptr + part, mask=smask, other=float("-inf"))
    pd = tl.load(stats_ptr + B * S + part, mask=smask, other=0.0)
    ps = tl.load(stats_ptr + 2 * B * S + part, mask=smask, other=0.0)
    big_m = tl.max(pm, 1)
    m_ref = tl.where(big_m == float("-inf"), 0.0, big_m)
    scale = tl.exp(pm - m_ref[:, None])
    den = tl.sum(pd * scale, 1)  # a NaN partial stays in: that row's lse is NaN
    num = tl.sum(tl.where(scale > 0.0, scale * (ps + pd * (pm - m_ref[:, None])), 0.0), 1)
    log_den = tl.log(den)
    lse = tl.where(big_m == float("inf"), float("inf"), m_ref + log_den)
    lse = tl.where(big_m == float("-inf"), float("-inf"), lse)

    # ---- final top-k: the best K_PAD of the S partial lists (each in any order)
    kmask = rmask[:, None] & (kk[None, :] < S * K_PAD)
    keys = tl.load(topk_keys_ptr + rows64[:, None] * S * K_PAD + kk[None, :], mask=kmask, other=_KEY_PAD)
    top = _bitonic_topk(keys, LOG_R, LOG_SK, LOG_K, 1)  # [ROWS, K_PAD], descending
    ids = _key_id(top)
    vals = _key_value(top)  # padding lanes (j >= k) decode to NaN; always masked below
    omask = rmask[:, None] & jmask[None, :]
    out_off = rows64[:, None] * k + j[None, :]
    tl.store(topk_ids_ptr + out_off, ids, mask=omask)
    # (z - M) - log(den), not z - lse: lse ~ 1e4 in f32 would cost its ulp (1e-3) in every log-prob
    finite = (big_m > float("-inf")) & (big_m < float("inf"))
    logprobs = tl.where(finite[:, None], (vals - m_ref[:, None]) - log_den[:, None], vals - lse[:, None])
    tl.store(topk_logprobs_ptr + out_off, logprobs, mask=omask)

    # ---- entropy in the chosen scope, gate
    if SCOPE_FULL:
        entropy = log_den - num / den
    else:
        top1 = tl.max(tl.where(jmask[None, :], vals, float("-inf")), 1)
        t_ref = tl.where(top1 == float("-inf"), 0.0, top1)
        e = tl.where(jmask[None, :], tl.exp(vals - t_ref[:, None]), 0.0)
        dk = tl.sum(e, 1)
        sk = tl.sum(tl.where(e > 0.0, e * (vals - t_ref[:, None]), 0.0), 1)
        entropy = tl.log(dk) - sk / dk
    tau = tl.load(tau_ptr + rows, mask=rmask, other=float("inf"))
    gate = (entropy > tau) & rmask
    tl.store(entropy_ptr + rows, entropy, mask=rmask)
    tl.store(lse_ptr + rows, lse, mask=rmask)
    tl.store(gate_ptr + rows, gate.to(tl.uint8), mask=rmask)

    # ---- base token: greedy = top-1; else Gumbel-max z + T g (full partials or the k candidates)
    t = tl.load(temperature_ptr + rows, mask=rmask, other=0.0)
    greedy_id = tl.sum(tl.where(j[None, :] == 0, ids, 0), 1)
    if SAMPLE_FULL:
        gkeys = tl.load(gumbel_keys_ptr + part, mask=smask, other=_KEY_PAD)
        sampled = _key_id(tl.max(gkeys, 1))
    else:
        g = _gumbel(tl.load(seed_ptr), rows[:, None], ids)  # keyed by token id, not rank
        gk = tl.where(omask, _pack_key(tl.fma(t[:, None], g, vals), ids), _KEY_PAD)
        sampled = _key_id(tl.max(gk, 1))
    tl.store(base_token_ptr + rows, tl.where(t > 0.0, sampled, greedy_id), mask=rmask)

    # Entries past J are zero, as in the reference: each program zeroes its own rows' slots
    # (destinations never exceed the source row), and the last program overwrites those < J.
    tl.store(junction_rows_ptr + rows64, tl.zeros([ROWS], tl.int64), mask=rmask)
    tl.store(junction_ids_ptr + out_off, tl.zeros([ROWS, K_PAD], tl.int64), mask=omask)
    tl.store(junction_logprobs_ptr + out_off, tl.zeros([ROWS, K_PAD], tl.float32), mask=omask)

    # ---- compaction, by whichever program finishes last: destination = exclusive prefix sum
    # of the gate in row order (deterministic). The acq_rel ticket orders every program's
    # writes above before the last program's reads and writes below.
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel")
    if ticket == tl.num_programs(0) - 1:
        c_lanes = tl.arange(0, CROWS)
        carry = tl.full([], 0, tl.int32)
        for r0 in range(0, B, CROWS):
            crows = r0 + c_lanes
            cmask = crows < B
            g32 = tl.load(gate_ptr + crows, mask=cmask, other=0, cache_modifier=".cg").to(tl.int32)
            cg = g32 != 0
            dest = (carry + tl.cumsum(g32, 0) - g32).to(tl.int64)
            tl.store(junction_rows_ptr + dest, crows.to(tl.int64), mask=cg)
            src = crows.to(tl.int64)[:, None] * k + j[None, :]  # B * k may pass 2^31
            dst = dest[:, None] * k + j[None, :]
            jm = cg[:, None] & jmask[None, :]
            cid = tl.load(topk_ids_ptr + src, mask=jm, other=0, cache_modifier=".cg")
            clp = tl.load(topk_logprobs_ptr + src, mask=jm, other=0.0, cache_modifier=".cg")
            tl.store(junction_ids_ptr + dst, cid, mask=jm)
            tl.store(junction_logprobs_ptr + dst, clp, mask=jm)
            carry += tl.sum(g32, 0)
        tl.store(num_junctions_ptr, carry)


# ---------------------------------------------------------------- launcher


class ScanPlan(NamedTuple):
    """Grid and tile sizes of one scan; a function of (bucket of B, V, k) only."""

    rows1: int  # rows per partials program
    block_v: int  # columns per tile
    k_pad: int  # power of two >= k
    splits: int  # S, vocabulary splits per row
    split_len: int  # columns per split (a multiple of 16)
    s_pad: int  # power of two >= S
    rows2: int  # rows per merge program
    warps1: int
    warps2: int
    maxnreg1: int = 0  # register cap of the partials kernel (0: ptxas chooses)
    slots: int = 0  # extraction slots per tile row (0: one per thread, see kernel_meta)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def _floor_pow2(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def _bucket(b: int) -> int:
    """The smallest of _B_BUCKETS >= b (the largest for bigger batches)."""
    return next((x for x in _B_BUCKETS if x >= b), _B_BUCKETS[-1])


def plan_scan(b: int, v: int, k: int, *, num_sms: int = 132, tile: int = _TILE) -> ScanPlan:
    """The launch plan for ``[b, v]`` logits and ``k`` candidates on ``num_sms`` SMs.

    Depends on ``b`` only through its bucket (powers of 4 up to 16384), so a server compiles a
    handful of variants (``warmup``). Splits: about one wave of programs (each split long, so
    its top-k selection is amortised over many tiles); a tile of ``tile`` elements (8-16 KB of
    loads, 32 elements a thread at 4 warps: the per-tile gate and loop cost spread over more
    elements, and the selection's reductions run on fewer warps); a small V packs several rows
    into a tile.
    """
    for name, val in (("b", b), ("v", v), ("k", k), ("num_sms", num_sms), ("tile", tile)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if k > min(v, MAX_K):
        raise ValueError(f"k must be <= min(V, {MAX_K}) for the triton backend, got k = {k}, V = {v}")
    bucket = _bucket(b)
    k_pad = _pow2(k)
    block_v = min(_pow2(tile), _pow2(v))
    rows1 = max(1, min(bucket, tile // block_v))
    programs = triton.cdiv(bucket, rows1)
    # about one wave; at most 1024 // K_PAD splits (S * K_PAD keys per row to merge)
    splits = max(1, min(num_sms // programs, 1024 // k_pad, triton.cdiv(v, 1024)))
    split_len = triton.cdiv(triton.cdiv(v, splits), 16) * 16
    splits = triton.cdiv(v, split_len)
    # Short splits: the largest tile that wastes at most a quarter of its lanes on the tail.
    # (>= 1024: 8 bf16, one 16-byte load, per thread at 4 warps)
    while block_v > max(1024, k_pad) and triton.cdiv(split_len + 7, block_v) * block_v > 1.25 * split_len:
        block_v //= 2
    block_v = max(block_v, k_pad if k_pad > _MAX_SELECT_K else 16)
    s_pad = _pow2(splits)
    # merge: ~one program per SM (B >= 256 share one plan); one SM (the interpreter): big blocks
    spread = triton.cdiv(min(bucket, 256), num_sms) if num_sms > 1 else bucket
    rows2 = _floor_pow2(min(bucket, (tile // 2) // (s_pad * k_pad), spread))
    tile2 = rows2 * s_pad * k_pad
    return ScanPlan(
        rows1=rows1, block_v=block_v, k_pad=k_pad, splits=splits, split_len=split_len, s_pad=s_pad,
        # 8 warps where a tile is sorted (K_PAD > 64: 16 elements a thread), else 4 (32 a thread)
        rows2=rows2, warps1=8 if k_pad > _MAX_SELECT_K else 4, warps2=max(4, min(8, tile2 // 128)),
        maxnreg1=_MAXNREG,
    )


def _log2(n: int) -> int:
    return int(n).bit_length() - 1


def kernel_meta(p: ScanPlan, dtype: torch.dtype, scope_full: bool, sample_full: bool) -> dict:
    """The constexprs and warps of both kernels for plan ``p`` (what ``launch_scan`` passes;
    bench/sass_budget.py compiles the same)."""
    vec = 16 // torch.empty((), dtype=dtype).element_size()
    nv = max(1, p.block_v // vec)
    if p.slots and p.slots & (p.slots - 1):
        raise ValueError(f"plan.slots must be 0 or a power of two, got {p.slots}")
    return {
        "partials": dict(
            ROWS=p.rows1, BLOCK_V=p.block_v, LOG_R=_log2(p.rows1), LOG_V=_log2(p.block_v), K_PAD=p.k_pad,
            LOG_K=_log2(p.k_pad), VEC=vec, BF16_WORDS=dtype == torch.bfloat16, SORT_TILE=p.k_pad > _MAX_SELECT_K,
            TT=min(nv, p.slots or 32 * p.warps1), SAMPLE_FULL=sample_full,
            KEY_SHIFT={torch.bfloat16: 16, torch.float16: 13}.get(dtype, 0),
            num_warps=p.warps1, **({"maxnreg": p.maxnreg1} if p.maxnreg1 else {}),
        ),
        "merge": dict(
            S_PAD=p.s_pad, K_PAD=p.k_pad, LOG_R=_log2(p.rows2), LOG_K=_log2(p.k_pad),
            LOG_SK=_log2(p.s_pad * p.k_pad), ROWS=p.rows2, CROWS=max(1, min(64, 4096 // p.k_pad)),
            SCOPE_FULL=scope_full, SAMPLE_FULL=sample_full, num_warps=p.warps2,
        ),
    }


KERNELS = {"partials": _junction_partials_kernel, "merge": _junction_merge_kernel}
_tickets: dict = {}


def _ticket(device: torch.device) -> torch.Tensor:
    """A [1] i32 per (device, stream): the merge's last-program ticket, zeroed by the partials
    kernel of each scan. Allocated once (``warmup`` does it before CUDA-graph capture)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    if key not in _tickets:
        _tickets[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return _tickets[key]


def aligned_view(logits: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A 1-D view of ``logits``' storage starting on a 16-byte boundary, and the offset (in
    elements) of ``logits[0, 0]`` in it, so the kernel can align its loads itself."""
    shift = (logits.data_ptr() % 16) // logits.element_size()
    n = logits.storage_offset() - shift
    span = (logits.shape[0] - 1) * logits.stride(0) + logits.shape[1] + shift
    return logits.as_strided((span,), (1,), n), shift


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs programs one after another: one split per row


def launch_scan(
    logits: torch.Tensor,
    k: int,
    tau: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    scope_full: bool,
    sample_full: bool,
    plan: ScanPlan | None = None,
) -> JunctionScan:
    """Two launches. ``logits`` [B, V] f32/bf16/f16 with stride(1) == 1 (any row stride);
    ``tau``, ``temperature`` [B] f32 contiguous; ``seed`` [1] i64; ``plan`` overrides
    ``plan_scan`` (tests). Returns the full-size ``JunctionScan``."""
    b, v = logits.shape
    dev = logits.device
    p = plan or plan_scan(b, v, k, num_sms=_num_sms(dev), tile=_TILE if dev.type == "cuda" else _TILE_INTERPRETED)
    meta = kernel_meta(p, logits.dtype, scope_full, sample_full)
    s = p.splits
    stats = torch.empty(3, b, s, dtype=torch.float32, device=dev)
    topk_keys = torch.empty(b, s, p.k_pad, dtype=torch.int64, device=dev)
    gumbel_keys = torch.empty(b, s, dtype=torch.int64, device=dev)
    grid = (triton.cdiv(b, p.rows1), s)
    flat, offset = aligned_view(logits)
    _junction_partials_kernel[grid](
        flat, temperature, seed, stats, topk_keys, gumbel_keys, _ticket(dev),
        b, v, k, s, p.split_len,
        logits.stride(0), offset,
        **meta["partials"],
    )
    out = empty_scan(b, k, dev)
    _junction_merge_kernel[(triton.cdiv(b, p.rows2),)](
        stats, topk_keys, gumbel_keys, tau, temperature, seed, _ticket(dev),
        out.entropy, out.lse, out.gate.view(torch.uint8), out.topk_ids, out.topk_logprobs,
        out.base_token, out.junction_rows, out.num_junctions, out.junction_ids,
        out.junction_logprobs,
        b, s, k,
        **meta["merge"],
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
    ``tau`` / ``temperature`` [B] f32 on the logits' device). No host sync.

    Raises ValueError for ``k > MAX_K`` (1024): an explicit triton request never runs
    another backend."""
    if k > MAX_K:
        raise ValueError(f"k must be <= {MAX_K} for the triton backend, got {k}")
    # The Philox seed stays on the device (no sync); drawn every call so that one generator
    # seed gives the same tokens, whichever rows turn out to sample.
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=logits.device, dtype=torch.int64)
    return launch_scan(
        logits, k, tau.to(torch.float32).contiguous(), temperature.to(torch.float32).contiguous(),
        seed, entropy_scope == "full", sample_from == "full",
    )


def warmup(
    device: str | torch.device = "cuda",
    *,
    vocab_size: int,
    k_values=(10,),
    dtypes=(torch.bfloat16,),
    batch_sizes=(1, 4, 16, 64, 256),
    entropy_scopes=("topk",),
    sample_from=("topk",),
) -> int:
    """Compile (by running once on zeros) every variant a server will meet, ahead of its first
    decode step and of CUDA-graph capture; returns the number of scans run. Plans depend on the
    batch size only through its bucket, and at V >= 4096 every B >= 256 shares one plan, so
    the default ``batch_sizes`` cover every batch of a large-vocabulary model."""
    device = torch.device(device)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    is_int = lambda x, hi: isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= hi  # noqa: E731
    for name, vals, ok in (
        ("k_values", k_values, lambda x: is_int(x, min(vocab_size, MAX_K))),
        ("dtypes", dtypes, lambda x: x in (torch.float32, torch.bfloat16, torch.float16)),
        ("batch_sizes", batch_sizes, lambda x: is_int(x, 2**31)),
        ("entropy_scopes", entropy_scopes, lambda x: x in ("full", "topk")),
        ("sample_from", sample_from, lambda x: x in ("full", "topk")),
    ):
        if not vals or not all(ok(x) for x in vals):
            raise ValueError(f"{name} has an invalid entry: {vals!r}")
    n = 0
    for dtype in dtypes:
        for b in sorted({_bucket(x) for x in batch_sizes}):
            x = torch.zeros(b, vocab_size, dtype=dtype, device=device)
            ones = torch.ones(b, dtype=torch.float32, device=device)
            for k in k_values:
                for scope in entropy_scopes:
                    for sample in sample_from:
                        junction_scan_triton(x, k=k, tau=ones, temperature=ones, entropy_scope=scope,
                                             sample_from=sample, generator=None)
                        n += 1
    return n
