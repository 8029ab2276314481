"""One SIA decode step on a batch's ``[B, V]`` logits: gate → scan → value on the junction rows → steer.

``decode_step`` is the drop-in for people who own their decode loop (a serving engine, a custom
sampler); :func:`~sia_kernels.decoding.generate.generate` and
:class:`~sia_kernels.decoding.logits_processor.SIALogitsProcessor` are built on the same
internals (:func:`plan_step`, :meth:`DecodeState.advance`), so there is one implementation.

The step has exactly one host sync, :func:`read_step`: one small transfer reads ``num_junctions``,
whether any logits row was bad, the finished mask, the junction rows, and the checks deferred
from the previous step (whether each junction row kept its chosen candidate's KV in the value
cache; whether the value model returned NaN). Everything else comes from host-side lengths:
inputs are validated once, when the :class:`DecodeState` is built; the token history is
preallocated (no per-step concatenation).

Per-step overhead is kept to a few small ops (it matters next to a small model's forward): the
scan backend is resolved and its arguments checked at the first step (:meth:`DecodeState.scan`),
the gates' thresholds are made once, a decode without EOS skips the finished-row bookkeeping,
and greedy steering takes the argmax directly (:func:`steer_greedy`).
"""
from __future__ import annotations

import math

import torch

from ..config import SIAConfig
from ..ops import check_rows, steer_nosync
from ..types import JunctionScan
from .profiling import phase
from .state import DecodeState, StepStats

__all__ = ["DecodeState", "StepStats", "decode_step", "plan_step", "gate_tau", "read_step", "steer_greedy",
           "GATE_FUNCTIONS"]

_INF = math.inf


# ---------------------------------------------------------------- gates: per-row tau [B] f32
# A gate is a per-row threshold: junction = H > tau. -inf steers the row, +inf leaves it alone.

def _gate_entropy(state: "DecodeState", config: SIAConfig) -> torch.Tensor:
    return state.constant_row(state.tau)


def _gate_always(state, config) -> torch.Tensor:
    return state.constant_row(-_INF)


def _gate_never(state, config) -> torch.Tensor:
    return state.constant_row(_INF)


def _gate_random(state, config) -> torch.Tensor:
    u = torch.rand(state.batch_size, generator=state.generator, device=state.device)
    return torch.where(u < config.rate, -_INF, _INF).float()


def _gate_target_rate(state, config) -> torch.Tensor:
    return state.constant_row(state.tau)  # calibrated from entropy quantiles (generate.calibrate_tau)


GATE_FUNCTIONS = {
    "entropy": _gate_entropy,
    "always": _gate_always,
    "never": _gate_never,
    "random": _gate_random,
    "first_n": _gate_never,  # steered only through config.first_n (gate_tau)
    "target_rate": _gate_target_rate,
}


def gate_tau(state: "DecodeState", config: SIAConfig) -> torch.Tensor:
    """Per-row tau ``[B]`` f32 for this step: the first ``config.first_n`` generated positions
    are always steered, then the gate decides; finished rows get +inf (never scored)."""
    if config.first_n is not None and state.step < config.first_n:
        tau = state.constant_row(-_INF)
    else:
        tau = GATE_FUNCTIONS[config.gate](state, config)
    return tau if state.eos is None else tau.masked_fill(state.finished, _INF)  # no EOS: no row finishes


# ---------------------------------------------------------------- state

# ---------------------------------------------------------------- the step

def read_step(scan: JunctionScan, state: DecodeState) -> tuple[int, list[int], list[bool]]:
    """The step's one host sync: ``J``, the ``[B]`` lse (a bad logits row, NaN, +inf or no finite
    entry, shows there), the finished mask (as of the end of the previous step), the checks
    deferred from the previous step and the junction rows ``[:J]``, in one transfer (one
    concatenation, promoted to f32: the integers in it are far below 2**24)."""
    B = state.batch_size
    pending = state.take_deferred()
    packed = torch.cat([scan.num_junctions, scan.lse, state.finished]
                       + [f for f, _ in pending] + [scan.junction_rows]).tolist()
    off = 1 + 2 * B + sum(f.shape[0] for f, _ in pending)
    DecodeState.run_deferred(pending, packed[1 + 2 * B:off])
    if not all(map(math.isfinite, packed[1:1 + B])):
        check_rows(scan.lse)  # raises, naming the row
    J = int(packed[0])
    return J, [int(r) for r in packed[off:off + J]], [f != 0 for f in packed[1 + B:1 + 2 * B]]


def plan_step(logits: torch.Tensor, state: DecodeState, value_model, config: SIAConfig):
    """Gate → scan → (one host sync) → value on the compacted junction rows.

    Returns ``(scan, values [J, k] f32, StepStats)``. Does not choose or append tokens.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != state.batch_size:
        raise ValueError(f"logits must be [B, V] with B = {state.batch_size}, got {tuple(getattr(logits, 'shape', ()))}")
    if logits.device != state.device:
        raise ValueError(f"logits are on {logits.device} but the decode state is on {state.device}")
    vocab = state.value_vocab_size
    if vocab is not None and logits.shape[1] > vocab:
        raise ValueError(f"logits have {logits.shape[1]} entries per row but the value model's vocabulary has "
                         f"{vocab}: candidates could fall outside it")
    times = state.times
    with phase("scan", times):
        tau = gate_tau(state, config)
        # tau comes from the gate (validated numbers, +-inf); the lse check rides on read_step.
        scan = state.scan(logits, tau, config)
        J, rows, finished = read_step(scan, state)
    state.finished_host = finished
    counters = value_model.counters if value_model is not None else None
    before = (counters.token_forwards, counters.forwards) if counters is not None else (0, 0)
    if J:
        with phase("value", times):
            values = state.score(scan, rows, value_model)
    else:
        values = scan.junction_logprobs[:0]  # [0, k] f32: no junction, nothing scored
    after = (counters.token_forwards, counters.forwards) if counters is not None else (0, 0)
    stats = StepStats(
        step=state.step,
        num_active=finished.count(False),
        num_junctions=J,
        junction_rows=rows,
        value_token_forwards=after[0] - before[0],
        finished=finished,
        entropy=scan.entropy,
        all_finished=all(finished),
        value_forwards=after[1] - before[1],
        values=values,
    )
    return scan, values, stats


def steer_greedy(scan: JunctionScan, values: torch.Tensor, num_junctions: int, beta: float) -> torch.Tensor:
    """``steer`` at temperature 0 when ``J`` is already on the host (after :func:`read_step`):
    junction rows take the argmax of ``logprob + beta * value`` among their candidates (ties to
    the first), the other rows keep ``base_token``. The same tokens as ``steer(greedy=True)``,
    without its unused noise draws."""
    rows = scan.junction_rows[:num_junctions]
    score = scan.junction_logprobs[:num_junctions] + beta * values.float()
    chosen = scan.junction_ids[:num_junctions].gather(1, score.argmax(-1, keepdim=True))[:, 0]
    return scan.base_token.index_copy(0, rows, chosen)


def decode_step(logits: torch.Tensor, state: DecodeState, value_model, config: SIAConfig):
    """One fused SIA decode step on ``logits [B, V]`` (the base model's next-token logits).

    Gate (per-row tau; finished rows excluded) → ``junction_scan`` → the value model on the
    compacted junction rows only, in chunks of ``config.max_junction_batch`` → ``steer`` →
    finished rows padded → the tokens appended to ``state`` (history, value cache, EOS).
    Returns ``(next_tokens [B] i64, StepStats)``. One host sync (:func:`read_step`); call
    ``state.flush()`` after the last step to run the checks deferred to the next sync. When every
    row had already finished, ``stats.all_finished`` is True and nothing is appended.
    """
    scan, values, stats = plan_step(logits, state, value_model, config)
    if stats.all_finished:  # nothing to decode: pads, state unchanged
        return torch.full_like(scan.base_token, state.pad_token_id), stats
    with phase("steer", state.times):
        if not stats.num_junctions:  # no junction: every row keeps the scan's token (what steer would return)
            tokens = scan.base_token
        elif config.greedy or config.temperature == 0:
            tokens = steer_greedy(scan, values, stats.num_junctions, config.beta)
        else:
            tokens = steer_nosync(scan, values, beta=config.beta, temperature=config.temperature,
                                  generator=state.generator)
        if state.token_hook is not None:  # teacher forcing (tests): the hook may replace the tokens
            forced = state.token_hook(state.step, tokens)
            tokens = tokens if forced is None else forced.to(tokens.device, torch.long)
        if state.eos is not None:  # without EOS no row finishes
            tokens = tokens.masked_fill(state.finished, state.pad_token_id)
    state.advance(tokens)
    return tokens, stats
