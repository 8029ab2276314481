"""Pure-torch specification of every op (docs/design.md §1).

Readable first: each function is the contract the fast backends are tested against.
Computation runs in float32 by default; pass ``dtype=torch.float64`` for the exact
reference the tests compare to.
"""
from __future__ import annotations


import torch

from .types import JunctionScan


def log_softmax_ref(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logp = z - lse`` and ``lse`` along the last axis, shifted by the row max first, so that
    large logits (|z| ~ 1e4) lose no precision to ``z - lse`` in f32."""
    m = z.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf, or +inf rows: no shift
    zs = z - m
    lse_s = torch.logsumexp(zs, dim=-1, keepdim=True)
    return zs - lse_s, (lse_s + m).squeeze(-1)


def entropy_ref(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy (nats) and log-normaliser of softmax(z) along the last axis."""
    logp, lse = log_softmax_ref(z)
    return entropy_of_logp(logp), lse


def entropy_of_logp(logp: torch.Tensor) -> torch.Tensor:
    """``-sum p log p``; ``-inf`` entries contribute nothing (``where(p > 0, ..., 0)``), never NaN."""
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    return -plogp.sum(-1)


def topk_ref(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries per row, sorted descending, ties towards the lower index."""
    # A stable descending sort keeps equal values in index order.
    values, ids = torch.sort(z, dim=-1, descending=True, stable=True)
    return values[..., :k], ids[..., :k]


def gumbel_ref(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard Gumbel noise in float64 from 106 random bits per draw: ``w = u1 + u2 2^-53``,
    ``E = -log1p(-w)`` (an Exp(1) draw, >= 1e-300), ``g = -log E``: the tail P(g > x) holds far
    past the ~40 nats the kernels reproduce."""
    u1 = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    u2 = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    e = (-torch.log1p(-(u1 + u2 * 2.0**-53))).clamp_min(1e-300)
    return -torch.log(e)


def gumbel_argmax_ref(
    scores: torch.Tensor, temperature: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """argmax(scores + T * Gumbel) per row (the same argmax as scores / T + Gumbel for T > 0, and
    it never overflows); rows with T == 0 take argmax(scores). Ties go to the lower index.

    ``scores`` is ``[B, n]``, ``temperature`` is ``[B]``. Entries at ``-inf`` are never drawn.
    """
    g = gumbel_ref(scores.shape, generator, scores.device)
    t = temperature.to(torch.float64).unsqueeze(-1)
    s = scores.to(torch.float64)
    return torch.where(t > 0, s + t * g, s).argmax(dim=-1)


def compact_ref(gate: torch.Tensor, *candidates: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Row indices of the gated rows first (ascending), then each candidate tensor compacted.

    Outputs keep the full size ``B``; entries past ``J = gate.sum()`` are zero.
    """
    b = gate.shape[0]
    rows = torch.zeros(b, dtype=torch.int64, device=gate.device)
    picked = gate.nonzero().flatten()
    rows[: picked.numel()] = picked
    out = []
    for c in candidates:
        full = torch.zeros_like(c)
        full[: picked.numel()] = c[picked]
        out.append(full)
    num = gate.sum().to(torch.int32).reshape(1)
    return (rows, num, *out)


def junction_scan_ref(
    logits: torch.Tensor,
    *,
    k: int,
    tau: torch.Tensor,
    temperature: torch.Tensor,
    entropy_scope: str,
    sample_from: str,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> JunctionScan:
    """The junction scan, written as separate torch ops (the contract of docs/design.md §2).

    ``logits`` ``[B, V]`` any float dtype; ``tau``/``temperature`` ``[B]`` (``temperature == 0``
    means greedy for that row). Computation in ``dtype``; outputs in the contract's dtypes.
    """
    z = logits.to(dtype)
    logp, lse = log_softmax_ref(z)
    top_vals, top_ids = topk_ref(z, k)
    top_logprobs = logp.gather(-1, top_ids)
    entropy = entropy_of_logp(logp) if entropy_scope == "full" else entropy_ref(top_vals)[0]
    gate = entropy > tau.to(dtype)
    if sample_from == "full":
        base = gumbel_argmax_ref(z, temperature, generator)
    else:
        base = top_ids.gather(1, gumbel_argmax_ref(top_vals, temperature, generator).unsqueeze(1))[:, 0]
    rows, num, j_ids, j_logprobs = compact_ref(gate, top_ids, top_logprobs.float())
    return JunctionScan(
        entropy=entropy.float(),
        lse=lse.float(),
        gate=gate,
        topk_ids=top_ids,
        topk_logprobs=top_logprobs.float(),
        base_token=base,
        junction_rows=rows,
        num_junctions=num,
        junction_ids=j_ids,
        junction_logprobs=j_logprobs,
    )


def steer_ref(
    scan: JunctionScan,
    values: torch.Tensor,
    *,
    beta: float,
    temperature: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next tokens ``[B]``: junction rows take argmax / a sample of ``logprob + beta * value``
    among their candidates; the other rows keep ``base_token``.

    ``values`` is ``[n, k]`` with ``n >= J``; its rows at or past ``J`` are ignored.
    ``temperature`` is ``[B]`` (per batch row, 0 = greedy).
    """
    n = values.shape[0]
    rows = scan.junction_rows[:n]
    valid = torch.arange(n, device=rows.device) < scan.num_junctions
    score = scan.junction_logprobs[:n] + beta * values.float()
    pick = gumbel_argmax_ref(score, temperature[rows], generator)
    chosen = scan.junction_ids[:n].gather(1, pick.unsqueeze(1))[:, 0]
    # Rows past J write into a spare slot, so the step needs no host sync.
    out = torch.cat([scan.base_token, scan.base_token.new_zeros(1)])
    out.index_copy_(0, torch.where(valid, rows, scan.base_token.shape[0]), chosen)
    return out[:-1]


def eager_composite(logits: torch.Tensor, k: int, tau: float) -> tuple[torch.Tensor, ...]:
    """What a user writes without this package (the benchmark's baseline): separate ops,
    several reads of the logits and a host sync in ``nonzero``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top_lp, top_ids = logp.topk(k, dim=-1)
    p = top_lp.softmax(-1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    gate = entropy > tau
    rows = gate.nonzero().flatten()
    return entropy, top_ids, rows, top_ids[rows], top_lp[rows], logp.argmax(-1)


