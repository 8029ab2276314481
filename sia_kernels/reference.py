"""Pure-torch specification of every op (DESIGN.md §1).

Readable first: each function is the contract the fast backends are tested against.
Computation runs in float32 by default; pass ``dtype=torch.float64`` for the exact
reference the tests compare to.
"""
from __future__ import annotations


import torch

from .types import JunctionScan


def entropy_ref(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy (nats) and log-normaliser of softmax(z) along the last axis.

    ``-inf`` entries contribute nothing (``where(p > 0, ..., 0)``), so they never make NaN.
    """
    lse = torch.logsumexp(z, dim=-1)
    logp = z - lse.unsqueeze(-1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    return -plogp.sum(-1), lse


def topk_ref(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries per row, sorted descending, ties towards the lower index."""
    # A stable descending sort keeps equal values in index order.
    values, ids = torch.sort(z, dim=-1, descending=True, stable=True)
    return values[..., :k], ids[..., :k]


def gumbel_argmax_ref(
    scores: torch.Tensor, temperature: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """argmax(scores / T + Gumbel) per row; rows with T == 0 take argmax(scores).

    ``scores`` is ``[B, n]``, ``temperature`` is ``[B]``. Entries at ``-inf`` are never drawn.
    """
    u = torch.rand(scores.shape, generator=generator, device=scores.device, dtype=torch.float64)
    exp1 = (-torch.log(u.clamp_min(1e-300))).clamp_min(1e-300)  # Exp(1) draws, never 0
    gumbel = -torch.log(exp1)
    t = temperature.to(torch.float64).unsqueeze(-1)
    s = scores.to(torch.float64)
    noisy = torch.where(t > 0, s / torch.where(t > 0, t, 1.0) + gumbel, s)
    return noisy.argmax(dim=-1)


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
    """The junction scan, written as separate torch ops (the contract of DESIGN.md §2).

    ``logits`` ``[B, V]`` any float dtype; ``tau``/``temperature`` ``[B]`` (``temperature == 0``
    means greedy for that row). Computation in ``dtype``; outputs in the contract's dtypes.
    """
    z = logits.to(dtype)
    full_entropy, lse = entropy_ref(z)
    top_vals, top_ids = topk_ref(z, k)
    top_logprobs = top_vals - lse.unsqueeze(-1)
    entropy = full_entropy if entropy_scope == "full" else entropy_ref(top_vals)[0]
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


