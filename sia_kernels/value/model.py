"""Token-level value model: ``V(x, y<=t)`` at every position, and tree scoring of junction batches.

A :class:`ValueModel` wraps the *body* of a Hugging Face causal-LM or sequence-classification
model (the transformer without its LM head) and a scalar head computed in float32.

Every forward goes through one function, :meth:`ValueModel.forward_masked`, that takes an
explicit boolean attention pattern ``allowed[b, q, kv]`` and explicit position ids. It turns the
pattern into a 4D additive float mask ``[B, 1, Q, KV]``, which transformers passes straight to
the eager and SDPA attention kernels. This is what lets ``k`` candidate tokens share one
forward: they all sit at the same position, and each attends to its prefix and to itself only.

Two ways to score a junction batch (equal within 1e-4 in f32):

* ``prefix`` (:meth:`ValueModel.score_candidates` / :meth:`ValueModel.score_prefixes`): no state;
  each junction row's prefix and its ``k`` candidates in one forward.
* ``cached`` (:class:`ValueCache`): the value model keeps a KV cache per decode row. A scoring
  call runs ONE forward per chunk of junction rows: each row's *pending* tokens (decoded since
  its own last value call; ragged per row, handled by the mask) and its ``k`` candidates on top
  of its cache. After the step's tokens are appended, the chosen candidate's KV is kept (as ARGS
  does) when the row's token is one of its candidates; the others are dropped. Rows without a
  junction run nothing and are caught up lazily at their next junction.

Counters (``ValueModel.counters``), all exact integers from host-side lengths (no device read):

* ``token_forwards``: *real* (non-padding) tokens run through the backbone:
  - ``values(ids, mask)``: ``mask.sum()``.
  - prefix scoring: ``sum of the J prefixes' real lengths + J * k``.
  - cached scoring: ``sum over the J rows of their pending real tokens + J * k`` (a row's
    prompt counts once, at its first junction; a kept candidate is never re-run).
  - with a :class:`~sia_kernels.value.bridge.TokenizerBridge`: the real tokens of the ``J * k``
    re-tokenized sequences (one full forward per candidate; no sharing is possible).
* ``padded_token_forwards``: every query position, padding included (the compute actually done).
* ``forwards``: backbone forwards (what costs on a GPU at decode batch sizes: each reads all weights).
* ``calls``: ``values``/scoring calls that ran a forward; ``rows_scored``: junction rows scored.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import checkpoint
from .backbone import body_of, has_adapter, merge_adapter, unwrap
from .cache import ValueCache
from .checks import check_candidates, check_ids, check_mask, read_ids
from .hf_cache import cache_keyword
from .padding import positions_from_mask

__all__ = ["ValueModel", "ValueCache", "ValueCounters", "positions_from_mask"]


@dataclass
class ValueCounters:
    """Work done by a :class:`ValueModel` since the last ``reset_counters()`` (see module docstring)."""

    calls: int = 0
    rows_scored: int = 0
    token_forwards: int = 0
    padded_token_forwards: int = 0
    forwards: int = 0


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
        text_cfg = self.config.get_text_config()
        hidden = text_cfg.hidden_size
        if head is None:
            score = getattr(unwrap(backbone), "score", None)
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
        self.adapter_merged = False  # merge_lora() folded a LoRA adapter into the backbone's weights
        self.counters = ValueCounters()
        self._max_positions = self.max_positions  # read per forward: the config lookup is kept out of the loop

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        return unwrap(self.backbone).config

    @property
    def device(self) -> torch.device:
        head = self._modules.get("head")  # moves with the module; one lookup instead of walking the backbone
        return head.weight.device if head is not None else next(self.backbone.parameters()).device

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

    def merge_lora(self) -> "ValueModel":
        """Merge a LoRA adapter into the backbone's weights for inference (peft's ``merge_and_unload``):
        one matmul per projection instead of three. Training keeps the adapter separate; do not
        merge a model you will train further. ``save_pretrained`` then stores the merged weights.
        Without an adapter, nothing changes. Returns ``self``."""
        if has_adapter(self.backbone):
            self.backbone = merge_adapter(self.backbone)
            self.adapter_merged = True
        return self

    # ------------------------------------------------------------------ core forward
    def forward_masked(self, input_ids, allowed, position_ids, cache=None, last_position: int | None = None):
        """The one forward every scoring path uses (a low-level call: the caller builds a valid
        pattern, with at least the query itself allowed in every row): run the backbone body and
        return values ``[B, Q]`` f32.

        input_ids ``[B, Q]`` i64; allowed ``[B, Q, KV]`` bool (KV = cached length + Q);
        position_ids ``[B, Q]`` i64; cache: a transformers cache extended in place, or None.
        last_position: the largest position id, known on the host (range-checked, no device read).
        """
        limit = self._max_positions
        if last_position is not None and limit is not None and last_position >= limit:
            raise ValueError(
                f"sequence of {last_position + 1} positions exceeds the value model's "
                f"maximum of {limit} positions"
            )
        body = body_of(self.backbone)
        dtype = body.get_input_embeddings().weight.dtype
        mask = torch.where(allowed[:, None], 0.0, torch.finfo(dtype).min).to(dtype)  # additive [B, 1, Q, KV]
        out = body(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                   use_cache=cache is not None, **{cache_keyword(body): cache})
        self.counters.forwards += 1
        return self.head(out.last_hidden_state.float()).squeeze(-1)

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``V(x, y<=t)`` at every position.

        input_ids ``[B, L]`` i64 value-model ids (also with a bridge); attention_mask ``[B, L]``
        bool/int, 1 = real token (left or right padding). Returns ``[B, L]`` f32; padding
        positions hold unspecified values.
        """
        check_ids("input_ids", input_ids, 2, self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        valid = check_mask("attention_mask", attention_mask, input_ids.shape, self.device)
        lengths = read_ids("input_ids", input_ids, valid, self.vocab_size)
        L = input_ids.shape[1]
        eye = torch.eye(L, dtype=torch.bool, device=self.device)
        # causal over real keys; every query also sees itself, so no attention row is empty
        allowed = (valid[:, None, :] & torch.ones(L, L, dtype=torch.bool, device=self.device).tril()) | eye
        self.count(calls=1, real=sum(lengths), padded=input_ids.numel())
        return self.forward_masked(input_ids.long(), allowed, positions_from_mask(valid),
                             last_position=max(lengths, default=0) - 1)

    forward = values

    def count(self, calls=0, rows=0, real=0, padded=0) -> None:
        """Add to :attr:`counters` (scoring calls, junction rows, real and padded token-forwards)."""
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
        all ids are base-model ids. Every id is range-checked here (one host read); a decoder that
        validated its ids once uses :meth:`score_prefixes` / :meth:`ValueCache.score` with
        ``host_rows`` instead.
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
        check_ids("prefix_ids", prefix_ids, 2, self.device)
        valid = check_mask("prefix_mask", prefix_mask, prefix_ids.shape, self.device)
        lengths = read_ids("prefix_ids", prefix_ids, valid, vocab)
        check_candidates(candidates, prefix_ids.shape[0], self.device, vocab)
        return self.score_prefixes(prefix_ids, valid, candidates, lengths)

    @torch.no_grad()
    def score_prefixes(self, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor, candidates: torch.Tensor,
                       lengths: list[int]) -> torch.Tensor:
        """``score_candidates(mode="prefix")`` on ids the caller already validated: no host read.

        prefix_ids ``[J, L]``, prefix_mask ``[J, L]`` bool, left-padded, ``lengths``: the real
        tokens per row on the host (counters and the position limit come from them);
        candidates ``[J, k]``. Shapes, dtypes and devices are checked; id ranges are not.
        """
        check_ids("prefix_ids", prefix_ids, 2, self.device)
        valid = check_mask("prefix_mask", prefix_mask, prefix_ids.shape, self.device)
        J = prefix_ids.shape[0]
        check_candidates(candidates, J, self.device)
        if not isinstance(lengths, (list, tuple)) or len(lengths) != J:
            raise ValueError(f"lengths must be a list of {J} ints (real tokens per row)")
        if J == 0:
            return torch.zeros(candidates.shape, dtype=torch.float32, device=self.device)
        if self.bridge is not None:
            return self.score_retokenized(prefix_ids, valid, candidates)
        return self._score_tree(prefix_ids.long(), valid, candidates.long(), lengths)

    def _score_tree(self, prefix_ids, valid, candidates, lengths) -> torch.Tensor:
        """Prefixes ``[J, P]`` and their ``k`` candidates in one forward."""
        J, k = candidates.shape
        P = valid.shape[1]
        dev = self.device
        cand_pos = valid.long().sum(-1, keepdim=True).expand(J, k)  # all candidates at position n_j
        cand_allowed = torch.cat(
            [valid[:, None, :].expand(J, k, P), torch.eye(k, dtype=torch.bool, device=dev).expand(J, k, k)], -1
        )
        causal = torch.ones(P, P, dtype=torch.bool, device=dev).tril()
        prefix_allowed = (valid[:, None, :] & causal) | torch.eye(P, dtype=torch.bool, device=dev)
        prefix_allowed = torch.cat([prefix_allowed, torch.zeros(J, P, k, dtype=torch.bool, device=dev)], -1)
        allowed = torch.cat([prefix_allowed, cand_allowed], 1)  # [J, P + k, P + k]
        pos = torch.cat([positions_from_mask(valid), cand_pos], 1)
        self.count(calls=1, rows=J, real=sum(lengths) + J * k, padded=J * (P + k))
        return self.forward_masked(torch.cat([prefix_ids, candidates], 1), allowed, pos,
                             last_position=max(lengths))[:, P:]

    def score_retokenized(self, prefix_ids, valid, candidates) -> torch.Tensor:
        """With a tokenizer bridge: re-tokenize every ``prefix_j + c_ji`` (base-model ids, ``valid``
        marks the real ones) for this model and run each in full (J·k rows). Host-bound by nature."""
        J, k = candidates.shape
        seqs = []
        for ids_j, valid_j, cand_j in zip(prefix_ids.tolist(), valid.tolist(), candidates.tolist()):
            prefix = [t for t, v in zip(ids_j, valid_j) if v]
            seqs.extend(prefix + [c] for c in cand_j)
        ids, mask = self.bridge.encode(seqs, device=self.device)  # left-padded: V is in the last column
        self.count(rows=J)
        return self.values(ids, mask)[:, -1].view(J, k)

    def cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              chunk_size: int = 256) -> "ValueCache":
        """A lazy KV cache for a decode batch: input_ids/attention_mask ``[B, L]`` (left-padded prompt)."""
        return ValueCache(self, input_ids, attention_mask, chunk_size)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory, save_backbone: bool | None = None) -> None:
        """Write ``value_config.json``, ``head.safetensors``, ``adapter/`` (peft) and, when the
        backbone has no ``name_or_path`` to refer to, holds a merged adapter, or on request
        (``save_backbone=True``), ``backbone/``."""
        checkpoint.save_value_model(self, directory, save_backbone=save_backbone)

    @classmethod
    def from_pretrained(cls, directory, backbone=None, torch_dtype=None, attn_implementation=None,
                        merge_lora: bool = False) -> "ValueModel":
        """Load :meth:`save_pretrained`'s format; ``backbone`` (model or path) overrides the stored one.
        ``merge_lora=True``: merge a LoRA adapter into the weights (:meth:`merge_lora`; for decoding)."""
        vm = checkpoint.load_value_model(cls, directory, backbone, torch_dtype, attn_implementation)
        return vm.merge_lora() if merge_lora else vm

    @classmethod
    def from_sia_release(cls, backbone_path_or_model, checkpoint_dir, torch_dtype=None,
                         attn_implementation=None, merge_lora: bool = False) -> "ValueModel":
        """Load the SIA authors' layout (model_config.json, lora_weights/, token_reward_head.pt);
        ``merge_lora=True`` merges the LoRA adapter for decoding."""
        vm = checkpoint.load_sia_release(cls, backbone_path_or_model, checkpoint_dir, torch_dtype, attn_implementation)
        return vm.merge_lora() if merge_lora else vm

    @classmethod
    def from_reward_model(cls, path_or_model, torch_dtype=None, attn_implementation=None) -> "ValueModel":
        """A sequence-classification reward model (num_labels=1) with its own score head."""
        return checkpoint.load_reward_model(cls, path_or_model, torch_dtype, attn_implementation)

