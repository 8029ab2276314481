"""The per-batch state of an SIA decode: history, value cache, finished rows, counters, deferred checks.

:class:`DecodeState` is the decoder's boundary: it validates the prompt once (one host read);
everything after works from host-side lengths. Checks that need the device's data (a NaN in the
values, the value cache's kept-candidate flags, a reordered history) are *deferred*: their flags
ride on the next step's one host read (:func:`~sia_kernels.decoding.step.read_step`) or on
:meth:`DecodeState.flush` after the last step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..config import SIAConfig
from ..ops import junction_scan_nosync, resolve_backend
from ..types import JunctionScan
from ..value.checks import read_ids

__all__ = ["DecodeState", "StepStats"]


@dataclass
class StepStats:
    """What one step did. ``entropy`` and ``values`` stay on the device; the rest is host data."""

    step: int  # generated position (0 = the first new token)
    num_active: int  # rows not finished before this step
    num_junctions: int
    junction_rows: list[int]  # batch rows steered this step, ascending
    value_token_forwards: int  # value-model token-forwards spent in this step
    finished: list[bool] = field(default_factory=list)  # per row, before this step
    entropy: torch.Tensor | None = None  # [B] f32, device
    all_finished: bool = False  # every row had finished before this step: nothing was decoded
    value_forwards: int = 0  # value-model forwards run in this step
    values: torch.Tensor | None = None  # [J, k] f32, device: the junction rows' candidate values


def _history(ids: torch.Tensor, mask: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded prompt ``[B, P]`` in buffers with room for ``extra`` more columns (mask True there)."""
    B, P = ids.shape
    buf = torch.zeros(B, P + extra, dtype=torch.long, device=ids.device)
    buf[:, :P] = ids
    m = torch.ones(B, P + extra, dtype=torch.bool, device=ids.device)
    m[:, :P] = mask
    return buf, m


def _read_prompt(name: str, ids, mask, vocab: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Validate a left-padded prompt ``[B, P]`` (one host read): no empty row, left padding, real
    ids in ``[0, vocab)`` (when given); return it as i64 / bool and its lengths."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be a [B, P] int64 tensor")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [B, P] tensor, got shape {tuple(ids.shape)}")
    if mask is None:
        mask = torch.ones_like(ids, dtype=torch.bool)
    if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape:
        raise ValueError(f"the attention mask of {name} must be a tensor of shape {tuple(ids.shape)}")
    if mask.device != ids.device:
        raise ValueError(f"the attention mask of {name} is on {mask.device} but the ids are on {ids.device}")
    mask = mask.bool()
    lengths = read_ids(name, ids, mask, vocab, left_padded=True)
    empty = [i for i, n in enumerate(lengths) if n == 0]
    if empty:
        more = f"; also rows {empty[1:9]}" if len(empty) > 1 else ""
        raise ValueError(f"prompt {empty[0]} is empty (no real tokens){more}")
    return ids.long(), mask, lengths


class DecodeState:
    """The per-batch state of an SIA decode; validates its inputs once (the decoder's boundary).

    Args:
        input_ids: ``[B, P]`` prompt, left-padded. attention_mask: ``[B, P]`` (1 = real token).
        value_model: a :class:`~sia_kernels.value.ValueModel` (None only for ``gate="never"``).
        config: the :class:`~sia_kernels.config.SIAConfig`.
        eos_token_id: int, list of ints or None (never stop). pad_token_id: written after EOS.
        tau: the entropy threshold; defaults to ``config.tau``; required for ``gate="target_rate"``
            (from :func:`~sia_kernels.decoding.generate.calibrate_tau`).
        value_input_ids / value_attention_mask: ``[B, Pv]`` left-padded: what the value model sees
            instead of the prompt (e.g. the prompt in the chat template a released value model was
            trained on); the generated tokens follow it. Default: the prompt itself.

    Holds the token history ``ids``/``mask`` (prompt + generated, Hugging Face layout; views of
    preallocated buffers), the value model's :class:`~sia_kernels.value.ValueCache`
    (``value_mode="cached"``), the one ``torch.Generator``, the step index, the finished mask,
    per-row counters and per-phase host times.
    """

    def __init__(self, input_ids, attention_mask, value_model, config: SIAConfig, *,
                 eos_token_id=None, pad_token_id: int = 0, tau: float | None = None,
                 generator: torch.Generator | None = None, value_input_ids=None, value_attention_mask=None):
        if not isinstance(config, SIAConfig):
            raise TypeError(f"config must be an SIAConfig, got {type(config).__name__}")
        if config.gate != "never" and value_model is None:
            raise TypeError(f"gate={config.gate!r} needs a value model (only gate='never' runs without one)")
        vm = value_model if config.gate != "never" else None
        vocab = vm.input_vocab_size if vm is not None and value_input_ids is None else None
        ids, mask, self.prompt_lengths = _read_prompt("input_ids", input_ids, attention_mask, vocab)
        self.config = config
        self.device = ids.device
        self.prompt_width = ids.shape[1]
        self._ids, self._mask = _history(ids, mask, config.max_new_tokens)
        self._width = self.prompt_width
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
            eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
            self.eos = torch.tensor(eos, dtype=torch.long, device=self.device)
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
        self.row_base_tokens = list(self.prompt_lengths)  # base-model token-forwards (the loop counts them)
        self.times: dict[str, float] = {}
        self.token_hook = None  # callable(step, tokens [B]) -> tokens [B] or None: teacher forcing
        self._deferred: list[tuple[torch.Tensor, Callable[[list[int]], None]]] = []
        self.padded = any(n != self.prompt_width for n in self.prompt_lengths)  # some row is left-padded
        self._last_positions = torch.tensor(self.prompt_lengths, dtype=torch.long, device=self.device)[:, None] - 1
        self._rows: dict[float, torch.Tensor] = {}  # constant [B] f32 rows (thresholds, temperatures)
        self._scan_fn = None  # the resolved backend, bound at the first scan (see scan())
        self._scan_key = None
        self.value_model = vm
        self.value_cache = None
        self._vids = None  # the value model's own history when it has its own prompt
        self.value_prompt_lengths = self.prompt_lengths
        self.value_vocab_size = None
        if vm is None:
            return
        if vm.device != self.device:
            raise ValueError(f"the value model is on {vm.device} but the batch is on {self.device}")
        self.value_vocab_size = vm.vocab_size if vm.bridge is None else None  # candidates must fit in it
        if value_input_ids is not None:
            vids, vmask, self.value_prompt_lengths = _read_prompt("value_input_ids", value_input_ids,
                                                                  value_attention_mask, vm.input_vocab_size)
            if vids.shape[0] != B or vids.device != self.device:
                raise ValueError(f"value_input_ids must have {B} rows on {self.device}, got {tuple(vids.shape)} "
                                 f"on {vids.device}")
            self._vids, self._vmask = _history(vids, vmask, config.max_new_tokens)
            self._vwidth = vids.shape[1]
        elif value_attention_mask is not None:
            raise ValueError("value_attention_mask needs value_input_ids")
        if config.value_mode in ("cached", "auto"):
            self.value_cache = vm.cache(*(self._value_prompt()))  # range-checks the ids once
            self.value_cache.reserve(self.value_cache.width + config.max_new_tokens, exact=True)

    # -------------------------------------------------------- history
    @property
    def batch_size(self) -> int:
        return self._ids.shape[0]

    @property
    def ids(self) -> torch.Tensor:
        """``[B, P + step]`` i64: the prompt (left-padded) and the tokens generated so far."""
        return self._ids[:, :self._width]

    @property
    def mask(self) -> torch.Tensor:
        """``[B, P + step]`` bool: the prompt's mask, then 1s."""
        return self._mask[:, :self._width]

    @property
    def value_ids(self) -> torch.Tensor:
        """What the value model scores: its own prompt (``value_input_ids``) or the prompt, then the generated tokens."""
        return self.ids if self._vids is None else self._vids[:, :self._vwidth]

    @property
    def value_mask(self) -> torch.Tensor:
        return self.mask if self._vids is None else self._vmask[:, :self._vwidth]

    def _value_prompt(self):
        if self._vids is None:
            return self._ids[:, :self.prompt_width], self._mask[:, :self.prompt_width]
        w = self._vwidth - self.step
        return self._vids[:, :w], self._vmask[:, :w]

    def constant_row(self, x: float) -> torch.Tensor:
        """``[B]`` f32 filled with ``x`` on the batch's device, made once per value and shared:
        read-only (the gates' thresholds, the scan's temperature; nothing writes into them)."""
        t = self._rows.get(x)
        if t is None:
            t = self._rows[x] = torch.full((self.batch_size,), x, dtype=torch.float32, device=self.device)
        return t

    @property
    def base_attention_mask(self) -> torch.Tensor | None:
        """The base model's attention mask for the next forward: None when no row is left-padded
        (every entry would be 1; Hugging Face then takes the same unmasked path without reading
        the mask back), else :attr:`mask`."""
        return self.mask if self.padded else None

    def last_positions(self) -> torch.Tensor:
        """``[B, 1]`` i64: the position id of each row's last token (the one fed to the base model next)."""
        return self._last_positions + (self._width - self.prompt_width)

    # -------------------------------------------------------- the scan
    def scan(self, logits: torch.Tensor, tau: torch.Tensor, config: SIAConfig | None = None) -> JunctionScan:
        """``junction_scan`` of ``logits [B, V]`` with per-row ``tau [B]`` f32 and ``config``'s
        (default: the state's) k / temperature / scopes, no host read. The first call (and any
        call whose logits or config differ in what the checks depend on) goes through
        :func:`~sia_kernels.ops.junction_scan_nosync`, which validates everything and picks the
        backend; later calls like it call that backend directly (``tau`` comes from the gate: a
        ``[B]`` f32 tensor)."""
        cfg = config or self.config
        temp = self.constant_row(0.0 if cfg.greedy else cfg.temperature)
        key = (logits.dtype, logits.shape, logits.stride(1) == 1, cfg.k, cfg.backend)
        if key == self._scan_key:
            return self._scan_fn(logits, k=cfg.k, tau=tau, temperature=temp, entropy_scope=cfg.entropy_scope,
                                 sample_from=cfg.sample_from, generator=self.generator)
        out = junction_scan_nosync(logits, k=cfg.k, tau=tau, temperature=temp, entropy_scope=cfg.entropy_scope,
                                   sample_from=cfg.sample_from, generator=self.generator, backend=cfg.backend)
        if key[2]:  # unit-stride rows: what the backends take as they are
            self._scan_fn, self._scan_key = resolve_backend(cfg.backend, logits.device)[1], key
        return out

    @staticmethod
    def _append(buf, mask, width, tokens):
        if width == buf.shape[1]:  # past the preallocated room (decode_step beyond max_new_tokens): double
            grow = max(width, 16)
            buf = torch.nn.functional.pad(buf, (0, grow))
            mask = torch.nn.functional.pad(mask, (0, grow), value=True)
        buf[:, width] = tokens
        return buf, mask

    def advance(self, tokens: torch.Tensor) -> None:
        """Append this step's tokens ``[B]`` i64 (already padded for finished rows): history, value
        cache, finished mask, step index. No host read."""
        if self.eos is not None:  # without EOS no row ever finishes
            newly = torch.isin(tokens, self.eos) & ~self.finished
            self.finished |= newly
            self.finish_step.masked_fill_(newly, self.step + 1)
        self._ids, self._mask = self._append(self._ids, self._mask, self._width, tokens)
        self._width += 1
        if self._vids is not None:
            self._vids, self._vmask = self._append(self._vids, self._vmask, self._vwidth, tokens)
            self._vwidth += 1
        if self.value_cache is not None:
            self.value_cache.append(tokens, check=False)
        self.step += 1

    def tokens_generated(self) -> list[int]:
        """Per row: tokens generated up to and including EOS (one host read)."""
        fs = self.finish_step
        return torch.where(fs >= 0, fs, torch.full_like(fs, self.step)).tolist()

    # -------------------------------------------------------- checks folded into the next sync
    def defer(self, flags: torch.Tensor, on_read: Callable[[list[int]], None]) -> None:
        """Read ``flags`` (a bool or integer tensor, flattened) at the next :func:`read_step` (or
        :meth:`flush`) and call ``on_read(values)`` then, with the values as ints: how a check
        rides on the step's one host read."""
        self._deferred.append((flags.reshape(-1), on_read))

    def take_deferred(self) -> list[tuple[torch.Tensor, Callable[[list[int]], None]]]:
        """The checks deferred to the next host read (and the value cache's kept-candidate flags);
        the caller reads the flags and hands their values to :meth:`run_deferred`."""
        pending, self._deferred = self._deferred, []
        flags = self.value_cache.pending_flags() if self.value_cache is not None else None
        if flags is not None:
            pending.append((flags, self.value_cache.confirm))
        return pending

    def flush(self) -> None:
        """Run the deferred checks now (one host read if any): after the last step of a decode."""
        pending = self.take_deferred()
        if pending:
            self.run_deferred(pending, torch.cat([f.long() for f, _ in pending]).tolist())

    @staticmethod
    def run_deferred(pending, values: list) -> None:
        """Call each deferred check with its flags' values as ints (read in the caller's host sync,
        possibly as floats)."""
        off = 0
        for flags, on_read in pending:
            n = flags.shape[0]
            on_read([int(v) for v in values[off:off + n]])
            off += n

    # -------------------------------------------------------- value scoring on junction rows
    def score(self, scan: JunctionScan, rows: list[int], value_model) -> torch.Tensor:
        """Values ``[J, k]`` f32 of the candidates of junction rows ``rows`` (host list, J >= 1),
        in chunks of ``config.max_junction_batch``: one value forward per chunk. Per-row value
        token-forwards are recorded from host-side lengths (with a tokenizer bridge, each chunk's
        count is shared out evenly). No host read (a NaN check is deferred to the next sync)."""
        cfg, J = self.config, len(rows)
        chunk = cfg.max_junction_batch or J
        k = scan.junction_ids.shape[1]
        bridged = value_model.bridge is not None
        counters, cache = value_model.counters, self.value_cache
        out = []
        for a in range(0, J, chunk):
            part = rows[a:a + chunk]
            rows_dev = scan.junction_rows[a:a + len(part)]
            cand = scan.junction_ids[a:a + len(part)]
            before = counters.token_forwards
            if cache is not None:
                spent = [cache.width - cache.done[b] + k for b in part]
                out.append(cache.score(rows_dev, cand, host_rows=part))
            else:
                lengths = [self.value_prompt_lengths[b] + self.step for b in part]  # junction rows never finished
                width = max(lengths)
                vids, vmask = self.value_ids, self.value_mask
                L = vids.shape[1]
                spent = [n + k for n in lengths]
                out.append(value_model.score_prefixes(vids[rows_dev, L - width:], vmask[rows_dev, L - width:], cand,
                                                      lengths))
            if bridged:
                share, extra = divmod(counters.token_forwards - before, len(part))
                spent = [share + (extra if i == 0 else 0) for i in range(len(part))]
            for b, n in zip(part, spent):
                self.row_value_tokens[b] += n
                self.row_junctions[b] += 1
        values = (out[0] if len(out) == 1 else torch.cat(out)).float()
        step = self.step

        def check_nan(flags: list[int]) -> None:
            if any(flags):
                i = flags.index(1)
                raise ValueError(f"the value model returned NaN for junction row {rows[i]} at step {step}")

        self.defer(values.isnan().any(-1), check_nan)
        return values
