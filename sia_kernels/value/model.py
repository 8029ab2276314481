"""Token-level value model: ``V(x, y<=t)`` at every position, and tree scoring of junction batches.

A :class:`ValueModel` wraps the *body* of a Hugging Face causal-LM or sequence-classification
model (the transformer without its LM head) and a scalar head computed in float32.

Every forward goes through one private function, :meth:`ValueModel._forward`, that takes an
explicit boolean attention pattern ``allowed[b, q, kv]`` and explicit position ids. It turns the
pattern into a 4D additive float mask ``[B, 1, Q, KV]``, which transformers passes straight to
the eager and SDPA attention kernels. This is what lets ``k`` candidate tokens share one
forward: they all sit at the same position, and each attends to its prefix and to itself only.

Token-forward accounting (``ValueModel.counters``), all exact integers:

* ``token_forwards`` counts *real* (non-padding) tokens run through the backbone:
  - ``values(ids, mask)``: ``mask.sum()``.
  - ``score_candidates(..., mode="prefix")``: ``prefix_mask.sum() + J * k``.
  - ``ValueCache.score(rows, cand)`` / ``mode="cached"``: the catch-up, i.e. the real prompt
    tokens (once, on the first catch-up) plus ``B * n`` for the ``n`` tokens appended since the
    last catch-up (``B`` = rows held then), plus ``J * k`` for the candidate step.
  - With a :class:`~sia_kernels.value.bridge.TokenizerBridge`: the real tokens of the ``J * k``
    re-tokenized sequences (one full forward per candidate; no sharing is possible).
* ``padded_token_forwards`` counts every position, padding included (the compute actually done).
* ``calls`` counts ``values``/``score_candidates``/``ValueCache.score`` calls that ran a forward;
  ``rows_scored`` counts junction rows scored (``J`` per scoring call).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ValueModel", "ValueCache", "ValueCounters"]


@dataclass
class ValueCounters:
    """Work done by a :class:`ValueModel` since the last ``reset_counters()`` (see module docstring)."""

    calls: int = 0
    rows_scored: int = 0
    token_forwards: int = 0
    padded_token_forwards: int = 0


def _unwrap(backbone):
    """The plain HF model inside a (possibly peft-wrapped) backbone; LoRA layers stay injected."""
    get_base = getattr(backbone, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(backbone, "peft_config") else backbone


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``[B, L]`` i64 from a 2D validity mask: cumulative count of real tokens − 1, pads at 0."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def _check_ids(name, ids, dim, device, vocab_size, mask=None):
    """Type, rank and device of ``ids``; with ``vocab_size`` (not None) also their range, in one
    host read (only the ``mask``-ed entries, when a mask is given)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be int64 or int32, got {ids.dtype}")
    if ids.dim() != dim:
        raise ValueError(f"{name} must be {dim}D, got shape {tuple(ids.shape)}")
    if ids.device != device:
        raise ValueError(f"{name} is on {ids.device} but the value model is on {device}")
    if vocab_size is None:
        return
    real = ids if mask is None else ids[mask]
    if real.numel():
        lo, hi = torch.stack(torch.aminmax(real)).tolist()  # one host read
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name} holds token ids outside the value model's vocabulary [0, {vocab_size})")


def _check_mask(name, mask, shape, device):
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but the value model is on {device}")
    if mask.dtype != torch.bool and mask.is_floating_point():
        raise TypeError(f"{name} must be bool or integer (1 = real token), got {mask.dtype}")
    return mask.bool()


class ValueModel(torch.nn.Module):
    """A scalar value head on a Hugging Face backbone.

    Args:
        backbone: a causal LM (its body's last hidden state is used, the LM head is never run), a
            peft model wrapping one, or an ``AutoModelForSequenceClassification`` with
            ``num_labels=1`` (its ``score`` head is then applied to every position).
        head: ``Linear(hidden, 1)``; kept in float32. ``None``: the backbone's own ``score`` head
            for a sequence-classification backbone, otherwise a freshly initialised one.
    """

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Linear | None = None):
        super().__init__()
        if not isinstance(backbone, torch.nn.Module) or not hasattr(backbone, "config"):
            raise TypeError("backbone must be a Hugging Face model (a torch.nn.Module with a .config)")
        self.backbone = backbone
        cfg = self.config
        text_cfg = cfg.get_text_config()
        hidden = text_cfg.hidden_size
        if head is None:
            score = getattr(_unwrap(backbone), "score", None)
            if isinstance(score, torch.nn.Linear) and score.out_features == 1:
                head = score
            else:
                head = torch.nn.Linear(hidden, 1)
        if not isinstance(head, torch.nn.Linear) or head.out_features != 1 or head.in_features != hidden:
            raise ValueError(f"head must be torch.nn.Linear({hidden}, 1), got {head!r}")
        self.head = head.to(device=self.device, dtype=torch.float32)
        layer_types = getattr(text_cfg, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise ValueError(f"backbone has non-full attention layers {sorted(set(layer_types))}; not supported")
        self.tokenizer = None
        self.bridge = None  # a TokenizerBridge: base-model token ids are re-tokenized for this model
        self.counters = ValueCounters()

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        return _unwrap(self.backbone).config

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's dtype (the head is always float32)."""
        return next(self.backbone.parameters()).dtype

    @property
    def vocab_size(self) -> int:
        return int(self.config.get_text_config().vocab_size)

    @property
    def input_vocab_size(self) -> int:
        """Size of the vocabulary the ids given to this model come from: the base model's when a
        tokenizer bridge re-tokenizes them, else this model's own."""
        return self.bridge.base_vocab_size if self.bridge is not None else self.vocab_size

    @property
    def max_positions(self) -> int | None:
        return getattr(self.config.get_text_config(), "max_position_embeddings", None)

    def reset_counters(self) -> None:
        self.counters = ValueCounters()

    # ------------------------------------------------------------------ core forward
    def _forward(self, input_ids, allowed, position_ids, cache=None) -> torch.Tensor:
        """Run the backbone body; return values ``[B, Q]`` f32.

        input_ids ``[B, Q]`` i64; allowed ``[B, Q, KV]`` bool (KV = cached length + Q);
        position_ids ``[B, Q]`` i64; cache: a ``DynamicCache`` that is extended in place, or None.
        """
        if self.max_positions is not None and position_ids.numel() and int(position_ids.max()) >= self.max_positions:
            raise ValueError(
                f"sequence of {int(position_ids.max()) + 1} positions exceeds the value model's "
                f"maximum of {self.max_positions} positions"
            )
        body_owner = _unwrap(self.backbone)
        body = getattr(body_owner, body_owner.base_model_prefix, body_owner)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        out = body(
            input_ids=input_ids,
            attention_mask=mask[:, None],
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )
        return self.head(out.last_hidden_state.float()).squeeze(-1)

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``V(x, y<=t)`` at every position.

        input_ids ``[B, L]`` i64 value-model ids (also with a bridge); attention_mask ``[B, L]``
        bool/int, 1 = real token (left or right padding). Returns ``[B, L]`` f32; padding
        positions hold unspecified values.
        """
        _check_ids("input_ids", input_ids, 2, self.device, None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        valid = _check_mask("attention_mask", attention_mask, input_ids.shape, self.device)
        _check_ids("input_ids", input_ids, 2, self.device, self.vocab_size, mask=valid)
        L = input_ids.shape[1]
        eye = torch.eye(L, dtype=torch.bool, device=self.device)
        # causal over real keys; every query also sees itself, so no attention row is empty
        allowed = (valid[:, None, :] & torch.ones(L, L, dtype=torch.bool, device=self.device).tril()) | eye
        self._count(calls=1, real=int(valid.sum()), padded=input_ids.numel())
        return self._forward(input_ids.long(), allowed, positions_from_mask(valid))

    forward = values

    def _count(self, calls=0, rows=0, real=0, padded=0):
        c = self.counters
        c.calls += calls
        c.rows_scored += rows
        c.token_forwards += real
        c.padded_token_forwards += padded

    # ------------------------------------------------------------------ candidate scoring
    @torch.no_grad()
    def score_candidates(
        self,
        prefix_ids: torch.Tensor | None,
        prefix_mask: torch.Tensor | None,
        candidates: torch.Tensor,
        mode: str = "prefix",
        cache: "ValueCache | None" = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Score ``k`` candidate next tokens for each of ``J`` junction rows in one forward.

        ``mode="prefix"``: prefix_ids ``[J, L]`` i64 and prefix_mask ``[J, L]`` (left padding);
        the forward runs ``prefix + k candidates``, the candidates all at position ``n_j`` (the
        number of real prefix tokens), each attending to its prefix and itself only.
        ``mode="cached"``: ``cache`` (a :class:`ValueCache`) and ``rows`` ``[J]`` i64 say which rows
        of the cache's decode batch to score; prefix_ids/prefix_mask are ignored (may be None).

        candidates ``[J, k]`` i64. Returns ``[J, k]`` f32 with ``out[j, i] = V(prefix_j, c_ji)``,
        equal to ``values(cat(prefix_j, c_ji))[-1]`` within 1e-4 in f32. With a bridge configured,
        all ids are base-model ids.
        """
        if mode == "cached":
            if not isinstance(cache, ValueCache):
                raise TypeError("mode='cached' requires cache=ValueCache (from ValueModel.cache(...))")
            if cache.model is not self:
                raise ValueError("cache belongs to a different ValueModel")
            return cache.score(rows, candidates)
        if mode != "prefix":
            raise ValueError(f"mode must be 'prefix' or 'cached', got {mode!r}")
        vocab = self.input_vocab_size
        _check_ids("prefix_ids", prefix_ids, 2, self.device, None)
        valid = _check_mask("prefix_mask", prefix_mask, prefix_ids.shape, self.device)
        _check_ids("prefix_ids", prefix_ids, 2, self.device, vocab, mask=valid)
        _check_candidates(candidates, prefix_ids.shape[0], self.device, vocab)
        if candidates.shape[0] == 0:
            return torch.zeros(candidates.shape, dtype=torch.float32, device=self.device)
        if self.bridge is not None:
            return self._score_bridged(prefix_ids, valid, candidates)
        return self._score_tree(prefix_ids.long(), valid, candidates.long())

    def _score_tree(self, prefix_ids, valid, candidates, cache=None) -> torch.Tensor:
        """The tree step. Without cache: prefix_ids ``[J, L]`` are run too. With ``cache`` (a
        DynamicCache holding the J rows' prefixes, extended here), prefix_ids is None and
        ``valid`` ``[J, P]`` is the cached validity mask."""
        J, k = candidates.shape
        P = valid.shape[1]
        dev = self.device
        cand_pos = valid.sum(-1, keepdim=True).expand(J, k)  # all candidates at position n_j
        cand_allowed = torch.cat(
            [valid[:, None, :].expand(J, k, P), torch.eye(k, dtype=torch.bool, device=dev).expand(J, k, k)], -1
        )
        self._count(calls=1, rows=J, real=J * k, padded=J * k)
        if cache is not None:
            return self._forward(candidates, cand_allowed, cand_pos, cache)
        self._count(real=int(valid.sum()), padded=valid.numel())
        causal = torch.ones(P, P, dtype=torch.bool, device=dev).tril()
        prefix_allowed = (valid[:, None, :] & causal) | torch.eye(P, dtype=torch.bool, device=dev)
        prefix_allowed = torch.cat([prefix_allowed, torch.zeros(J, P, k, dtype=torch.bool, device=dev)], -1)
        allowed = torch.cat([prefix_allowed, cand_allowed], 1)  # [J, P + k, P + k]
        pos = torch.cat([positions_from_mask(valid), cand_pos], 1)
        return self._forward(torch.cat([prefix_ids, candidates], 1), allowed, pos)[:, P:]

    def _score_bridged(self, prefix_ids, valid, candidates) -> torch.Tensor:
        """Re-tokenize every ``prefix_j + c_ji`` for this model and run each in full (J·k rows)."""
        J, k = candidates.shape
        seqs = []
        for j in range(J):
            prefix = prefix_ids[j][valid[j]].tolist()
            seqs.extend(prefix + [c] for c in candidates[j].tolist())
        ids, mask = self.bridge.encode(seqs, device=self.device)  # left-padded: V is in the last column
        self._count(rows=J)
        return self.values(ids, mask)[:, -1].view(J, k)

    def cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              chunk_size: int = 256) -> "ValueCache":
        """A lazy KV cache for a decode batch: input_ids/attention_mask ``[B, L]`` (left-padded prompt)."""
        return ValueCache(self, input_ids, attention_mask, chunk_size)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory, save_backbone: bool | None = None) -> None:
        """Write ``value_config.json``, ``head.safetensors``, ``adapter/`` (peft) and, when the
        backbone has no ``name_or_path`` to refer to (or ``save_backbone=True``), ``backbone/``."""
        from .checkpoint import save_value_model

        save_value_model(self, directory, save_backbone=save_backbone)

    @classmethod
    def from_pretrained(cls, directory, backbone=None, torch_dtype=None, attn_implementation=None) -> "ValueModel":
        """Load :meth:`save_pretrained`'s format; ``backbone`` (model or path) overrides the stored one."""
        from .checkpoint import load_value_model

        return load_value_model(directory, backbone, torch_dtype, attn_implementation)

    @classmethod
    def from_sia_release(cls, backbone_path_or_model, checkpoint_dir, torch_dtype=None,
                         attn_implementation=None) -> "ValueModel":
        """Load the SIA authors' layout (model_config.json, lora_weights/, token_reward_head.pt)."""
        from .checkpoint import load_sia_release

        return load_sia_release(backbone_path_or_model, checkpoint_dir, torch_dtype, attn_implementation)

    @classmethod
    def from_reward_model(cls, path_or_model, torch_dtype=None, attn_implementation=None) -> "ValueModel":
        """A sequence-classification reward model (num_labels=1) with its own score head."""
        from .checkpoint import load_reward_model

        return load_reward_model(path_or_model, torch_dtype, attn_implementation)


def _check_candidates(candidates, J, device, vocab):
    _check_ids("candidates", candidates, 2, device, vocab)
    if candidates.shape[0] != J:
        raise ValueError(f"candidates has {candidates.shape[0]} rows, expected {J}")
    if candidates.shape[1] < 1:
        raise ValueError("candidates must hold k >= 1 tokens per row")


class ValueCache:
    """The value model's own KV cache for the ``B`` rows of a decode batch; lazy.

    ``append`` only records tokens; ``score`` first catches the cache up on everything pending
    (the prompt, then the appended tokens) for all B rows in chunks of ``chunk_size`` columns,
    then gathers the ``J`` junction rows into a temporary cache for the candidate step, so the
    main cache never holds candidate tokens. Token-forward formula: see the module docstring.
    """

    def __init__(self, model: ValueModel, input_ids, attention_mask=None, chunk_size: int = 256):
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        self.model = model
        self.chunk_size = chunk_size
        self.reset(input_ids, attention_mask)

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    @property
    def pending(self) -> int:
        """Columns recorded but not yet run through the value model."""
        return self.ids.shape[1] - self.done

    def reset(self, input_ids=None, attention_mask=None) -> None:
        """Drop the KV cache and the token history; start again from a new prompt if given,
        else from an empty batch of the same size."""
        m = self.model
        if input_ids is None:
            B = self.ids.shape[0] if hasattr(self, "ids") else 0
            input_ids = torch.zeros(B, 0, dtype=torch.long, device=m.device)
        vocab = m.input_vocab_size
        _check_ids("input_ids", input_ids, 2, m.device, None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        valid = _check_mask("attention_mask", attention_mask, input_ids.shape, m.device)
        _check_ids("input_ids", input_ids, 2, m.device, vocab, mask=valid)
        self.ids, self.valid = input_ids.long(), valid
        self.done = 0
        self.kv = None

    def append(self, tokens: torch.Tensor) -> None:
        """Record the tokens decoded this step: tokens ``[B]`` i64, one per row (no forward here)."""
        m = self.model
        vocab = m.input_vocab_size
        _check_ids("tokens", tokens, 1, m.device, vocab)
        if tokens.shape[0] != self.batch_size:
            raise ValueError(f"tokens must have shape [{self.batch_size}], got {tuple(tokens.shape)}")
        self.ids = torch.cat([self.ids, tokens.long()[:, None]], 1)
        self.valid = torch.cat([self.valid, torch.ones_like(self.valid[:, :1]) if self.valid.shape[1]
                                else torch.ones(self.batch_size, 1, dtype=torch.bool, device=m.device)], 1)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only rows ``keep`` ``[B']`` i64 (in that order), e.g. to drop finished rows."""
        keep = self._check_rows("keep", keep)
        self.ids, self.valid = self.ids[keep], self.valid[keep]
        if self.kv is not None:
            for layer in self.kv.layers:
                if layer.is_initialized:
                    layer.keys, layer.values = layer.keys[keep], layer.values[keep]

    def _check_rows(self, name, rows):
        if not isinstance(rows, torch.Tensor) or rows.dtype not in (torch.int64, torch.int32) or rows.dim() != 1:
            raise TypeError(f"{name} must be a 1D int64 tensor of row indices")
        if rows.device != self.model.device:
            raise ValueError(f"{name} is on {rows.device} but the value model is on {self.model.device}")
        if rows.numel():
            lo, hi = torch.stack(torch.aminmax(rows)).tolist()  # one host read
            if lo < 0 or hi >= self.batch_size:
                raise ValueError(f"{name} holds rows outside [0, {self.batch_size})")
        return rows.long()

    @torch.no_grad()
    def catch_up(self) -> None:
        """Run all pending columns through the value model, ``chunk_size`` columns per forward."""
        from transformers import DynamicCache

        m = self.model
        if m.bridge is not None:
            return  # bridged scoring re-runs re-tokenized text; nothing to cache
        if self.kv is None:
            self.kv = DynamicCache()
        pos = positions_from_mask(self.valid)
        while self.pending > 0:
            a, b = self.done, min(self.done + self.chunk_size, self.ids.shape[1])
            q = torch.arange(a, b, device=m.device)
            cols = torch.arange(b, device=m.device)
            allowed = (self.valid[:, None, :b] & (cols[None, :] <= q[:, None])) | (cols[None, :] == q[:, None])
            m._count(real=int(self.valid[:, a:b].sum()), padded=self.batch_size * (b - a))
            m._forward(self.ids[:, a:b], allowed, pos[:, a:b], self.kv)
            self.done = b

    @torch.no_grad()
    def score(self, rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores ``[J, k]`` f32 of candidates ``[J, k]`` after the current sequence of rows ``[J]``."""
        m = self.model
        rows = self._check_rows("rows", rows)
        vocab = m.input_vocab_size
        _check_candidates(candidates, rows.shape[0], m.device, vocab)
        if rows.shape[0] == 0:
            return torch.zeros(candidates.shape, dtype=torch.float32, device=m.device)
        if m.bridge is not None:
            return m._score_bridged(self.ids[rows], self.valid[rows], candidates)
        self.catch_up()
        from transformers import DynamicCache

        gathered = DynamicCache(ddp_cache_data=[(layer.keys[rows], layer.values[rows]) for layer in self.kv.layers])
        return m._score_tree(None, self.valid[rows], candidates.long(), cache=gathered)
