"""One SIA decode step on a batch's ``[B, V]`` logits: gate → scan → value on the junction rows → steer.

``decode_step`` is the drop-in for people who own their decode loop (a serving engine, a custom
sampler); :func:`~sia_kernels.decoding.generate.generate` and
:class:`~sia_kernels.decoding.logits_processor.SIALogitsProcessor` are built on the same
internals (:func:`plan_step`, :meth:`DecodeState.advance`), so there is one implementation.

The step has exactly one host sync, :func:`read_step`: it reads ``num_junctions`` together with
the junction rows and the finished mask in one small transfer (``1 + 2B`` integers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..config import SIAConfig
from ..ops import _junction_scan, check_rows, steer
from ..types import JunctionScan
from .profiling import phase

__all__ = ["DecodeState", "StepStats", "decode_step", "plan_step", "gate_tau", "read_step", "GATE_FUNCTIONS"]

_INF = math.inf


# ---------------------------------------------------------------- gates: per-row tau [B] f32
# A gate is a per-row threshold: junction = H > tau. -inf steers the row, +inf leaves it alone.

def _gate_entropy(state: "DecodeState", config: SIAConfig) -> torch.Tensor:
    return state._full(state.tau)


def _gate_always(state, config) -> torch.Tensor:
    return state._full(-_INF)


def _gate_never(state, config) -> torch.Tensor:
    return state._full(_INF)


def _gate_random(state, config) -> torch.Tensor:
    u = torch.rand(state.batch_size, generator=state.generator, device=state.device)
    return torch.where(u < config.rate, -_INF, _INF).float()


def _gate_first_n(state, config) -> torch.Tensor:
    return state._full(-_INF if state.step < config.first_n else _INF)


def _gate_target_rate(state, config) -> torch.Tensor:
    return state._full(state.tau)  # calibrated from entropy quantiles (generate.calibrate_tau)


GATE_FUNCTIONS = {
    "entropy": _gate_entropy,
    "always": _gate_always,
    "never": _gate_never,
    "random": _gate_random,
    "first_n": _gate_first_n,
    "target_rate": _gate_target_rate,
}


def gate_tau(state: "DecodeState", config: SIAConfig) -> torch.Tensor:
    """Per-row tau ``[B]`` f32 for this step; finished rows get +inf (never scored)."""
    tau = GATE_FUNCTIONS[config.gate](state, config)
    return tau.masked_fill(state.finished, _INF)


# ---------------------------------------------------------------- state

@dataclass
class StepStats:
    """What one step did. ``entropy`` stays on the device; everything else is host data."""

    step: int  # generated position (0 = the first new token)
    num_active: int  # rows not finished before this step
    num_junctions: int
    junction_rows: list[int]  # batch rows steered this step, ascending
    value_token_forwards: int  # value-model token-forwards spent in this step
    finished: list[bool] = field(default_factory=list)  # per row, before this step
    entropy: torch.Tensor | None = None  # [B] f32, device
    all_finished: bool = False  # every row had finished before this step: nothing was decoded


class DecodeState:
    """The per-batch state of an SIA decode.

    Args:
        input_ids: ``[B, P]`` prompt, left-padded. attention_mask: ``[B, P]`` (1 = real token).
        value_model: a :class:`~sia_kernels.value.ValueModel` (None only for ``gate="never"``).
        config: the :class:`~sia_kernels.config.SIAConfig`.
        eos_token_id: int, list of ints or None (never stop). pad_token_id: written after EOS.
        tau: the entropy threshold; defaults to ``config.tau``; required for ``gate="target_rate"``
            (from :func:`~sia_kernels.decoding.generate.calibrate_tau`).

    Holds the token history ``ids``/``mask`` (prompt + generated, Hugging Face layout), the
    value model's :class:`~sia_kernels.value.ValueCache` (``value_mode="cached"``; rows that
    finished are dropped from it before its next catch-up), the one ``torch.Generator``, the step
    index, the finished mask, per-row counters and per-phase host times.
    """

    def __init__(self, input_ids, attention_mask, value_model, config: SIAConfig, *,
                 eos_token_id=None, pad_token_id: int = 0, tau: float | None = None,
                 generator: torch.Generator | None = None):
        if not isinstance(config, SIAConfig):
            raise TypeError(f"config must be an SIAConfig, got {type(config).__name__}")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError("input_ids must be a [B, P] int64 tensor")
        if input_ids.shape[0] == 0:
            raise ValueError("input_ids holds no rows")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must be a tensor of shape {tuple(input_ids.shape)}")
        if attention_mask.device != input_ids.device:
            raise ValueError(f"attention_mask is on {attention_mask.device} but input_ids are on {input_ids.device}")
        if config.gate != "never" and value_model is None:
            raise TypeError(f"gate={config.gate!r} needs a value model (only gate='never' runs without one)")
        self.config = config
        self.device = input_ids.device
        self.ids = input_ids.long()
        self.mask = attention_mask.bool()
        self.prompt_width = self.ids.shape[1]
        self.prompt_lengths = self.mask.sum(-1).tolist()
        empty = [i for i, n in enumerate(self.prompt_lengths) if n == 0]
        if empty:
            raise ValueError(f"prompt row {empty[0]} is empty (no real tokens)" + (f"; also rows {empty[1:9]}" if len(empty) > 1 else ""))
        if bool((self.mask[:, :-1] & ~self.mask[:, 1:]).any()):
            raise ValueError("prompts must be left-padded (attention_mask 0s before the 1s in every row)")
        if tau is None:
            if config.gate == "target_rate":
                raise ValueError("gate='target_rate' needs tau= calibrated by sia_kernels.decoding.calibrate_tau")
            tau = config.tau
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau):
            raise ValueError(f"tau must be a number (not NaN), got {tau!r}")
        self.tau = float(tau)
        if eos_token_id is None:
            self.eos = None
        else:
            ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
            self.eos = torch.tensor(ids, dtype=torch.long, device=self.device)
        self.pad_token_id = int(pad_token_id)
        if generator is None:
            generator = torch.Generator(device=self.device)
            if config.seed is None:
                generator.seed()
            else:
                generator.manual_seed(config.seed)
        self.generator = generator
        B = self.batch_size
        self.step = 0
        self.finished = torch.zeros(B, dtype=torch.bool, device=self.device)
        self.finish_step = torch.full((B,), -1, dtype=torch.long, device=self.device)
        self.finished_host = [False] * B  # as of the last read_step
        self.row_junctions = [0] * B
        self.row_value_tokens = [0] * B
        self.times: dict[str, float] = {}
        self.token_hook = None  # callable(step, tokens [B]) -> tokens [B] or None: teacher forcing
        self.value_model = value_model
        self.value_cache = None
        self._held: list[int] = list(range(B))  # batch rows the value cache holds, in its order
        self._held_dev: torch.Tensor | None = None  # the same on the device (None: all rows)
        self._cache_started = False
        self._prefix_spent = 0  # value_mode="auto": prefix tokens run since the cache last caught up
        if value_model is not None and config.gate != "never" and value_model.device != self.device:
            raise ValueError(f"the value model is on {value_model.device} but the batch is on {self.device}")
        if value_model is not None and config.gate != "never" and config.value_mode in ("cached", "auto"):
            self.value_cache = value_model.cache(self.ids, self.mask)

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    def _full(self, x: float) -> torch.Tensor:
        return torch.full((self.batch_size,), x, dtype=torch.float32, device=self.device)

    def advance(self, tokens: torch.Tensor) -> None:
        """Append this step's tokens ``[B]`` (already padded for finished rows): history, value
        cache, finished mask, step index."""
        newly = ~self.finished
        if self.eos is not None:
            newly &= torch.isin(tokens, self.eos)
            self.finished |= newly
            self.finish_step.masked_fill_(newly, self.step + 1)
        self.ids = torch.cat([self.ids, tokens[:, None]], 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.batch_size, 1)], 1)
        if self.value_cache is not None:
            self.value_cache.append(tokens if self._held_dev is None else tokens[self._held_dev])
        self.step += 1

    def tokens_generated(self) -> list[int]:
        """Per row: tokens generated up to and including EOS (one host read)."""
        fs = self.finish_step
        return torch.where(fs >= 0, fs, torch.full_like(fs, self.step)).tolist()

    # -------------------------------------------------------- value scoring on junction rows
    def _drop_finished_from_cache(self) -> None:
        keep = [i for i, b in enumerate(self._held) if not self.finished_host[b]]
        if len(keep) == len(self._held):
            return
        self.value_cache.select(torch.tensor(keep, dtype=torch.long, device=self.device))
        self._held = [self._held[i] for i in keep]
        self._held_dev = torch.tensor(self._held, dtype=torch.long, device=self.device)

    def _use_cache(self, rows: list[int], bridged: bool) -> bool:
        """Score this step from the value cache? ``cached``: always. ``auto``: rent or buy. Re-run
        the junction rows' prefixes (rent) until the prefix tokens spent since the last catch-up,
        this step's included, reach what catching every held row up would cost (buy). A catch-up
        is paid once however many junctions follow, so this never costs more than twice the
        better of the two in hindsight, and sparse, scattered junctions stop paying for every row."""
        if self.value_cache is None:
            return False
        if self.config.value_mode == "cached" or bridged:
            return True
        self._prefix_spent += sum(self.prompt_lengths[b] + self.step for b in rows)
        if sum(self._catch_up_tokens().values()) > self._prefix_spent:
            return False
        self._prefix_spent = 0
        return True

    def _catch_up_tokens(self) -> dict[int, int]:
        """Per held batch row: real tokens the value cache's next catch-up runs (the prompt's
        only the first time; its left padding never counts)."""
        pending, first = self.value_cache.pending, not self._cache_started
        return {b: pending - (self.prompt_width - self.prompt_lengths[b] if first else 0) for b in self._held}

    def score(self, scan: JunctionScan, rows: list[int], value_model) -> torch.Tensor:
        """Values ``[J, k]`` f32 of the candidates of junction rows ``rows`` (host list, J >= 1),
        in chunks of ``config.max_junction_batch``; per-row value token-forwards are recorded
        (exactly; with a tokenizer bridge, each chunk's count is shared out evenly)."""
        cfg, J = self.config, len(rows)
        chunk = cfg.max_junction_batch or J
        k = scan.junction_ids.shape[1]
        bridged = getattr(value_model, "bridge", None) is not None
        counters = value_model.counters
        if self.value_cache is not None:
            self._drop_finished_from_cache()
        cache = self.value_cache if self._use_cache(rows, bridged) else None
        if cache is not None:
            pos = {b: i for i, b in enumerate(self._held)}
            if not bridged:  # the catch-up runs on every held row
                for b, n in self._catch_up_tokens().items():
                    self.row_value_tokens[b] += n
                self._cache_started = True
        out, L = [], self.ids.shape[1]
        for a in range(0, J, chunk):
            part = rows[a:a + chunk]
            cand = scan.junction_ids[a:a + len(part)]
            before = counters.token_forwards
            if cache is not None:
                out.append(cache.score(torch.tensor([pos[b] for b in part], dtype=torch.long, device=self.device), cand))
            else:
                real = [self.prompt_lengths[b] + self.step for b in part]  # junction rows never finished
                idx = torch.tensor(part, dtype=torch.long, device=self.device)
                width = max(real)
                out.append(value_model.score_candidates(self.ids[idx, L - width:], self.mask[idx, L - width:], cand,
                                                        mode="prefix"))
                if not bridged:
                    for b, n in zip(part, real):
                        self.row_value_tokens[b] += n + k
            if bridged:
                share, extra = divmod(counters.token_forwards - before, len(part))
                for i, b in enumerate(part):
                    self.row_value_tokens[b] += share + (extra if i == 0 else 0)
            elif cache is not None:
                for b in part:
                    self.row_value_tokens[b] += k
        for b in rows:
            self.row_junctions[b] += 1
        return torch.cat(out).float()


# ---------------------------------------------------------------- the step

def read_step(scan: JunctionScan, state: DecodeState) -> tuple[int, list[int], list[bool]]:
    """The step's one host sync: ``J``, whether any row's logits were bad (NaN, +inf, no finite
    entry: seen in the ``[B]`` lse), the finished mask (as of the end of the previous step) and
    the junction rows ``[:J]``, read back in one transfer."""
    B = state.batch_size
    bad = (~torch.isfinite(scan.lse)).any().long().reshape(1)
    packed = torch.cat([scan.num_junctions.long(), bad, state.finished.long(), scan.junction_rows]).tolist()
    if packed[1]:
        check_rows(scan.lse)  # raises, naming the row
    J = packed[0]
    return J, packed[2 + B:2 + B + J], [bool(x) for x in packed[2:2 + B]]


def plan_step(logits: torch.Tensor, state: DecodeState, value_model, config: SIAConfig):
    """Gate → scan → (one host sync) → value on the compacted junction rows.

    Returns ``(scan, values [J, k] f32, StepStats)``. Does not choose or append tokens.
    """
    if logits.dim() != 2 or logits.shape[0] != state.batch_size:
        raise ValueError(f"logits must be [B, V] with B = {state.batch_size}, got {tuple(logits.shape)}")
    if logits.device != state.device:
        raise ValueError(f"logits are on {logits.device} but the decode state is on {state.device}")
    times = state.times
    with phase("scan", times):
        tau = gate_tau(state, config)
        # tau comes from the gate (validated numbers, +-inf); the lse check rides on read_step.
        scan = _junction_scan(
            logits, k=config.k, tau=tau, temperature=config.temperature, entropy_scope=config.entropy_scope,
            sample_from=config.sample_from, greedy=config.greedy, generator=state.generator, backend=config.backend,
            host_checks=False,
        )
        J, rows, finished = read_step(scan, state)
    state.finished_host = finished
    before = value_model.counters.token_forwards if value_model is not None else 0
    if J:
        with phase("value", times):
            values = state.score(scan, rows, value_model)
    else:
        values = torch.zeros(0, config.k, dtype=torch.float32, device=logits.device)
    stats = StepStats(
        step=state.step,
        num_active=finished.count(False),
        num_junctions=J,
        junction_rows=rows,
        value_token_forwards=(value_model.counters.token_forwards - before) if value_model is not None else 0,
        finished=finished,
        entropy=scan.entropy,
        all_finished=all(finished),
    )
    return scan, values, stats


def decode_step(logits: torch.Tensor, state: DecodeState, value_model, config: SIAConfig):
    """One fused SIA decode step on ``logits [B, V]`` (the base model's next-token logits).

    Gate (per-row tau; finished rows excluded) → ``junction_scan`` → the value model on the
    compacted junction rows only, in chunks of ``config.max_junction_batch`` → ``steer`` →
    finished rows padded → the tokens appended to ``state`` (history, value cache, EOS).
    Returns ``(next_tokens [B] i64, StepStats)``. One host sync (:func:`read_step`). When every
    row had already finished, ``stats.all_finished`` is True and nothing is appended.
    """
    scan, values, stats = plan_step(logits, state, value_model, config)
    if stats.all_finished:  # nothing to decode: pads, state unchanged
        return torch.full_like(scan.base_token, state.pad_token_id), stats
    with phase("steer", state.times):
        tokens = steer(scan, values, beta=config.beta, temperature=config.temperature,
                       greedy=config.greedy, generator=state.generator)
        if state.token_hook is not None:  # teacher forcing (tests): the hook may replace the tokens
            forced = state.token_hook(state.step, tokens)
            tokens = tokens if forced is None else forced.to(tokens.device, torch.long)
        tokens = tokens.masked_fill(state.finished, state.pad_token_id)
    state.advance(tokens)
    return tokens, stats
