"""The value model's own KV cache for a decode batch: one forward per scoring call, per-row lazy catch-up.

See :mod:`sia_kernels.value.model` for the scoring modes and the counters. The cache stores every
layer's keys and values in one ``[2 * layers, B, H, capacity, D]`` tensor (so a row's new
columns, or its kept candidate, are written for all layers in one op); :mod:`~sia_kernels.value.hf_cache`
wraps per-layer views of it in a transformers cache for each forward.
"""
from __future__ import annotations

import torch

from .checks import check_candidates, check_ids, check_mask, read_ids
from .hf_cache import cache_from_layers, cache_layers, new_cache

__all__ = ["ValueCache"]


class ValueCache:
    """The value model's own KV cache for the ``B`` rows of a decode batch; lazy, per row.

    ``append`` records a step's tokens (and keeps the KV of a junction row's chosen candidate);
    ``score(rows, candidates)`` runs, per ``chunk_size`` of pending columns at most, ONE forward
    over the junction rows: each row's pending tokens (since its own last value call), then its
    ``k`` candidates at the next position. Rows not scored run nothing. Per row the cache knows
    ``done[b]``: its first ``done[b]`` columns are in the cache (or are left padding).

    Host reads: the constructor and the checking paths (``append(tokens)``, ``score(rows, ...)``
    without ``host_rows``) read ids back once to range-check them. A decoder that validated its
    ids at its boundary passes ``check=False`` / ``host_rows=`` and folds :meth:`pending_flags`
    into its own per-step read (then :meth:`confirm`): no further host read.
    """

    def __init__(self, model, input_ids, attention_mask=None, chunk_size: int = 256):
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        self.model = model
        self.chunk_size = chunk_size
        self.reset(input_ids, attention_mask)

    # ------------------------------------------------------------------ state
    @property
    def batch_size(self) -> int:
        return self._ids.shape[0]

    @property
    def width(self) -> int:
        """Columns recorded (prompt width + tokens appended)."""
        return self._width

    @property
    def ids(self) -> torch.Tensor:
        """The recorded history ``[B, width]`` i64 (left-padded prompt, then appended tokens)."""
        return self._ids[:, :self._width]

    @property
    def valid(self) -> torch.Tensor:
        """``[B, width]`` bool: real tokens (everything right of each row's left padding)."""
        return torch.arange(self._width, device=self._ids.device) >= self._lpad_dev[:, None]

    @property
    def pending(self) -> int:
        """Columns recorded but not yet run through the value model, for the row furthest behind."""
        self.confirm()
        return max((self._width - d for d in self.done), default=0)

    def reset(self, input_ids=None, attention_mask=None) -> None:
        """Drop the KV cache and the token history; start again from a new left-padded prompt if
        given, else from an empty batch of the same size."""
        m = self.model
        if input_ids is None:
            B = self._ids.shape[0] if hasattr(self, "_ids") else 0
            input_ids = torch.zeros(B, 0, dtype=torch.long, device=m.device)
        check_ids("input_ids", input_ids, 2, m.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        valid = check_mask("attention_mask", attention_mask, input_ids.shape, m.device)
        lengths = read_ids("input_ids", input_ids, valid, m.input_vocab_size, left_padded=True)
        B, P = input_ids.shape
        self._ids = torch.zeros(B, P + 16, dtype=torch.long, device=m.device)
        self._ids[:, :P] = input_ids
        self._width = P
        self.lpad = [P - n for n in lengths]  # host: left padding per row
        self.done = list(self.lpad)  # host: columns in the cache (or padding) per row
        self._lpad_dev = P - valid.long().sum(-1)
        self._done_dev = self._lpad_dev.clone()
        self._all_rows = list(range(B))
        self._arange = torch.arange(P + 17, device=m.device)  # column indices, capacity + 1 of them
        self._kv: torch.Tensor | None = None  # [2 * layers, B, H, capacity, D]: keys, values of layer i at 2i, 2i+1
        self._blocks: dict[tuple[int, int], torch.Tensor] = {}
        self._scored = []  # this step's scored chunks: (host rows, rows [J], candidates [J, k], candidate KV, whole)
        self._unconfirmed = None  # (host rows, column, kept [J] bool): kept candidates not yet read back

    def reserve(self, width: int, *, exact: bool = False) -> None:
        """Room for ``width`` columns (prompt + tokens to come); beyond it, appends double the
        room (amortised O(1) per column). ``exact``: grow to ``width`` only (a known decode length)."""
        cap = self._ids.shape[1]
        if width <= cap:
            return
        new = width if exact else max(width, 2 * cap)
        grow = new - cap
        self._ids = torch.nn.functional.pad(self._ids, (0, grow))
        self._arange = torch.arange(new + 1, device=self._ids.device)
        if self._kv is not None:
            self._kv = torch.nn.functional.pad(self._kv, (0, 0, 0, grow))

    def append(self, tokens: torch.Tensor, *, check: bool = True) -> None:
        """Record the tokens decoded this step: tokens ``[B]`` i64, one per row (no forward here).

        A row scored since the last append whose token is one of its candidates keeps that
        candidate's KV (its cache then covers the new column). ``check=False``: the caller
        vouches for the ids' range (nothing is read back)."""
        m = self.model
        check_ids("tokens", tokens, 1, m.device)
        if tokens.shape[0] != self.batch_size:
            raise ValueError(f"tokens must have shape [{self.batch_size}], got {tuple(tokens.shape)}")
        if check:
            read_ids("tokens", tokens[None], torch.ones_like(tokens[None], dtype=torch.bool), m.input_vocab_size)
        self.reserve(self._width + 1)
        col = self._width
        self._ids[:, col] = tokens
        if self._scored:
            self._keep_chosen(tokens.long(), col)
        self._width += 1

    def _keep_chosen(self, tokens, col) -> None:
        rows_host, kept_all = [], []
        for host_rows, rows, cand, cand_kv, whole in self._scored:
            hit = cand == (tokens if whole else tokens[rows])[:, None]  # [J, k]
            kept = hit.any(-1)
            which = hit.long().argmax(-1)  # the first matching candidate
            L2, J, H, _, D = cand_kv.shape
            chosen = cand_kv.gather(3, which.view(1, J, 1, 1, 1).expand(L2, J, H, 1, D))[:, :, :, 0]
            if whole:
                self._kv[:, :, :, col] = chosen
                self._done_dev.copy_(col + kept.long())
            else:
                self._kv[:, rows, :, col] = chosen
                self._done_dev.index_put_((rows,), col + kept.long())  # idempotent if a row was scored twice
            rows_host += host_rows
            kept_all.append(kept)
        self._unconfirmed = (rows_host, col, kept_all[0] if len(kept_all) == 1 else torch.cat(kept_all))
        self._scored = []

    def pending_flags(self) -> torch.Tensor | None:
        """Device ``[n]`` bool: for the rows scored before the last append, whether each kept its
        chosen candidate's KV; None when nothing awaits :meth:`confirm`."""
        return None if self._unconfirmed is None else self._unconfirmed[2]

    def confirm(self, flags: list[int] | None = None) -> None:
        """Bring the host's per-row ``done`` up to date with :meth:`pending_flags` (``flags``: their
        values, read by the caller in its own sync; None: read them here, one host read)."""
        if self._unconfirmed is None:
            return
        rows, col, kept = self._unconfirmed
        if flags is None:
            flags = kept.long().tolist()
        if len(flags) != len(rows):
            raise ValueError(f"flags must hold {len(rows)} values, got {len(flags)}")
        for b, f in zip(rows, flags):
            self.done[b] = col + int(f)
        self._unconfirmed = None

    def select(self, keep: torch.Tensor) -> None:
        """Keep only rows ``keep`` ``[B']`` i64 (in that order), e.g. to drop finished rows."""
        host = self._host_rows("keep", keep)
        keep = keep.long()
        self.confirm()
        self._scored = []  # candidate KV not kept: those rows re-run their last token when next scored
        self._ids, self._lpad_dev, self._done_dev = self._ids[keep], self._lpad_dev[keep], self._done_dev[keep]
        self.lpad, self.done = [self.lpad[b] for b in host], [self.done[b] for b in host]
        self._all_rows = list(range(len(host)))
        if self._kv is not None:
            self._kv = self._kv[:, keep]

    def _host_rows(self, name, rows) -> list[int]:
        """Validate a row-index tensor: one host read."""
        if not isinstance(rows, torch.Tensor) or rows.dtype not in (torch.int64, torch.int32) or rows.dim() != 1:
            raise TypeError(f"{name} must be a 1D int64 tensor of row indices")
        if rows.device != self.model.device:
            raise ValueError(f"{name} is on {rows.device} but the value model is on {self.model.device}")
        host = rows.tolist()
        if any(r < 0 or r >= self.batch_size for r in host):
            raise ValueError(f"{name} holds rows outside [0, {self.batch_size})")
        return host

    # ------------------------------------------------------------------ forwards
    @torch.no_grad()
    def catch_up(self) -> None:
        """Run every row's pending columns through the value model (``chunk_size`` columns per forward)."""
        if self.model.bridge is not None or self.batch_size == 0:
            return  # bridged scoring re-runs re-tokenized text; nothing to cache
        self.confirm()
        rows = torch.arange(self.batch_size, device=self._ids.device)
        host = list(range(self.batch_size))
        while self._width > min(self.done):
            self._run(host, rows, min(min(self.done) + self.chunk_size, self._width), None)

    @torch.no_grad()
    def score(self, rows: torch.Tensor, candidates: torch.Tensor, *, host_rows: list[int] | None = None) -> torch.Tensor:
        """Scores ``[J, k]`` f32 of candidates ``[J, k]`` after the current sequence of rows ``[J]``.

        One forward (per ``chunk_size`` pending columns) over the J rows: their pending tokens and
        their candidates. ``host_rows``: the same row indices on the host, from a caller that
        validated its ids (nothing is read back); without it, rows and candidates are range-checked
        (one host read each)."""
        m = self.model
        if host_rows is None:
            host_rows = self._host_rows("rows", rows)
            check_candidates(candidates, len(host_rows), m.device, m.input_vocab_size)
        else:
            if not isinstance(rows, torch.Tensor) or rows.dim() != 1 or len(host_rows) != rows.shape[0]:
                raise ValueError("rows must be a 1D tensor with the indices given in host_rows")
            check_candidates(candidates, len(host_rows), m.device)
        J = len(host_rows)
        if J == 0:
            return torch.zeros(candidates.shape, dtype=torch.float32, device=m.device)
        rows = rows.long()
        if m.bridge is not None:
            return m.score_retokenized(self.ids[rows], self.valid[rows], candidates)
        self.confirm()
        while self._width - min(self.done[b] for b in host_rows) > self.chunk_size:
            self._run(host_rows, rows, min(self.done[b] for b in host_rows) + self.chunk_size, None)
        m.count(calls=1, rows=J)
        return self._run(host_rows, rows, self._width, candidates.long())

    def _run(self, host_rows, rows, upto, cand):
        """One forward over rows ``rows``: their columns ``[done_b, upto)`` (ragged, by mask) on top of
        the cache, then ``cand`` ``[J, k]`` (or None) at the next position. The pending columns' KV
        is written into the cache; the candidates' KV is held until :meth:`append`."""
        m = self.model
        done = [self.done[b] for b in host_rows]
        J, lo = len(host_rows), min(done)
        uniform = max(done) == lo  # every row's pending columns [lo, upto) are real: no ragged mask
        whole = host_rows == self._all_rows  # every row, in order: slices instead of gathers

        def take(t):
            return t if whole else t[rows]

        hi = max(done) if self._kv is not None else 0  # cache columns some row can see
        Q, k = upto - lo, 0 if cand is None else cand.shape[1]
        lp = take(self._lpad_dev)[:, None]
        key_cols = self._arange[:hi]
        if uniform:  # cached columns [lpad, hi) seen by every query; pending causal; candidates see all + self
            seen = key_cols >= lp  # [J, hi]
            allowed = torch.cat([seen[:, None, :].expand(J, Q + k, hi), self._block(Q, k).expand(J, Q + k, Q + k)], -1)
            pos = self._arange[lo:upto + 1] - lp  # [J, Q + 1]: the pending columns', then the candidates' position
            real = None
        else:
            d = take(self._done_dev)[:, None]
            cols = self._arange[lo:upto]
            seen = (key_cols >= lp) & (key_cols < d)  # [J, hi] cached real columns of each row
            real = cols >= d  # [J, Q] pending real columns (the rest are padding queries)
            dev = cols.device
            qq = (torch.ones(Q, Q, dtype=torch.bool, device=dev).tril() & real[:, None, :]) | torch.eye(
                Q, dtype=torch.bool, device=dev)
            allowed = torch.cat([seen[:, None, :] & real[:, :, None], qq,
                                 torch.zeros(J, Q, k, dtype=torch.bool, device=dev)], -1)
            if k:
                cand_allowed = torch.cat([seen[:, None, :].expand(J, k, hi), real[:, None, :].expand(J, k, Q),
                                          torch.eye(k, dtype=torch.bool, device=dev).expand(J, k, k)], -1)
                allowed = torch.cat([allowed, cand_allowed], 1)
            pos = (self._arange[lo:upto + 1] - lp).clamp_min(0)
        ids = take(self._ids[:, lo:upto])
        if k:
            ids = torch.cat([ids, cand], 1)
            pos = torch.cat([pos[:, :Q], pos[:, Q:].expand(J, k)], 1)
        else:
            pos = pos[:, :Q]
        if hi:
            past_kv = self._kv[:, :, :, :hi] if whole else self._kv[:, rows, :, :hi]
            past = cache_from_layers([(past_kv[i], past_kv[i + 1]) for i in range(0, past_kv.shape[0], 2)])
        else:
            past = new_cache()
        last = upto - min(self.lpad[b] for b in host_rows) - (0 if k else 1)
        m.count(real=sum(max(upto - x, 0) for x in done) + J * k, padded=J * (Q + k))
        values = m.forward_masked(ids, allowed, pos, past, last_position=last)
        layers = cache_layers(past)
        if self._kv is None and len({(t.shape[1], t.shape[3], t.dtype) for kv in layers for t in kv}) > 1:
            raise ValueError("value_mode='cached' needs the same key/value shape in every layer of the value "
                             "model; use value_mode='prefix'")
        new_kv = torch.stack([t[:, :, hi:] for kv in layers for t in kv])  # [2L, J, H, Q + k, D]
        if self._kv is None:
            L2, _, H, _, D = new_kv.shape
            self._kv = new_kv.new_zeros(L2, self.batch_size, H, self._ids.shape[1], D)
        if Q:  # Q = 0: every row was caught up
            fresh = new_kv[:, :, :, :Q]
            if real is not None:  # ragged: keep what the cache holds where the column was not pending
                fresh = torch.where(real[None, :, None, :, None], fresh, self._kv[:, rows, :, lo:upto])
            if whole:
                self._kv[:, :, :, lo:upto] = fresh
            else:
                self._kv[:, rows, :, lo:upto] = fresh
        if whole and uniform:
            self._done_dev.fill_(upto)
        else:
            self._done_dev.index_put_((rows,), torch.clamp_min(take(self._done_dev), upto))
        for b in host_rows:
            self.done[b] = max(self.done[b], upto)
        if not k:
            return None
        self._scored.append((list(host_rows), rows, cand, new_kv[:, :, :, Q:], whole))
        return values[:, Q:]

    def _block(self, Q: int, k: int) -> torch.Tensor:
        """``[Q + k, Q + k]`` bool: Q pending columns, causal, then k candidates that each see every
        pending column and themselves. Small ones (the decode steps') are made once per shape."""
        block = self._blocks.get((Q, k))
        if block is None:
            n, dev = Q + k, self._ids.device
            block = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
            block[Q:, Q:] = torch.eye(k, dtype=torch.bool, device=dev)
            if n <= 64:
                self._blocks[(Q, k)] = block
        return block
