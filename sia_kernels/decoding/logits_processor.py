"""SIA as a drop-in ``LogitsProcessor`` for ``model.generate(logits_processor=[...])``.

Built on the decode step's internals (:func:`~sia_kernels.decoding.step.plan_step` and
:meth:`~sia_kernels.decoding.step.DecodeState.advance`): the same gate, scan, value scoring and
value-cache bookkeeping as :func:`~sia_kernels.decoding.generate.generate`. Hugging Face then
picks the token, so with greedy decoding both paths give the same tokens.

Scores returned: junction rows get ``-inf`` outside their top-k and ``logprob + beta * value``
inside; other rows are left alone, or restricted to their top-k (``-inf`` elsewhere) when
``config.sample_from == "topk"``. Temperature is Hugging Face's to apply (``temperature=`` of
``generate``), after this processor; ``config.temperature`` is not used here.
"""
from __future__ import annotations

import torch

from ..config import MODEL_DEFAULT, SIAConfig
from .profiling import phase
from .step import DecodeState, StepStats, plan_step

__all__ = ["SIALogitsProcessor"]


class SIALogitsProcessor:
    """A ``transformers`` logits processor that steers junction rows with a value model.

    Args:
        value_model: a :class:`~sia_kernels.value.ValueModel` (None only for ``gate="never"``).
        config: the :class:`~sia_kernels.config.SIAConfig` (``greedy``/``temperature`` are
            Hugging Face's to apply; ``eos_token_id`` marks finished rows, which are never scored).
        attention_mask: the prompt's ``[B, P]`` mask when the batch is left-padded (the processor
            only sees ``input_ids``); without it, every prompt token is taken as real.
        eos_token_id: overrides ``config.eos_token_id`` (``MODEL_DEFAULT`` there means: none
            known to the processor, so rows are never marked finished).
        pad_token_id: id Hugging Face writes after EOS.

    One processor follows one ``generate`` call at a time; it restarts by itself when the batch
    is not exactly one token longer than at its last call; call ``reset()`` between ``generate``
    calls to be sure. ``steps`` holds each step's :class:`StepStats`.

    Beam search (``num_beams > 1``) is refused: it reorders the rows between steps, so a row's
    history is no longer the one the processor (and its value cache) followed. Each call checks
    that Hugging Face's ``input_ids`` still extend the processor's history (on the device; read
    with the step's one host sync) and raises ValueError when they do not.
    """

    def __init__(self, value_model, config: SIAConfig, *, attention_mask: torch.Tensor | None = None,
                 eos_token_id=None, pad_token_id: int = 0, tau: float | None = None):
        if not isinstance(config, SIAConfig):
            raise TypeError(f"config must be an SIAConfig, got {type(config).__name__}")
        if config.gate != "never" and value_model is None:
            raise TypeError(f"gate={config.gate!r} needs a value model")
        self.value_model = value_model
        self.config = config
        self.attention_mask = attention_mask
        if eos_token_id is None and config.eos_token_id is not MODEL_DEFAULT:
            eos_token_id = config.eos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.tau = tau
        self.state: DecodeState | None = None
        self.steps: list[StepStats] = []

    def reset(self) -> None:
        self.state = None
        self.steps = []

    def flush(self) -> None:
        """Run the checks deferred to the next step's host read (a NaN value, reordered rows) now:
        call it after ``model.generate`` returns, which has no next step."""
        if self.state is not None:
            self.state.flush()

    def _sync_state(self, input_ids: torch.Tensor) -> DecodeState:
        """Start a state on a new prompt, or append the token Hugging Face chose last step."""
        s = self.state
        # Shapes only (no host sync): a batch that is not one token longer starts a new decode.
        fresh = s is None or input_ids.shape[0] != s.batch_size or input_ids.shape[1] != s.ids.shape[1] + 1
        if s is not None and not fresh:
            s.defer((input_ids[:, :-1] != s.ids).any().reshape(1), _refuse_reordered_rows)
            s.advance(input_ids[:, -1].long())
            return s
        mask = self.attention_mask
        if mask is None or mask.shape != input_ids.shape:
            if mask is not None:
                beams = input_ids.shape[0] // max(mask.shape[0], 1)
                hint = (f" (num_beams={beams}? beam search is not supported)"
                        if beams > 1 and input_ids.shape[0] == beams * mask.shape[0] else "")
                raise ValueError(f"attention_mask {tuple(mask.shape)} does not match the prompt "
                                 f"{tuple(input_ids.shape)}{hint}")
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        self.steps = []
        self.state = DecodeState(input_ids, mask.to(input_ids.device), self.value_model, self.config,
                                 eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id, tau=self.tau)
        return self.state

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        state = self._sync_state(input_ids)
        cfg = self.config
        scan, values, stats = plan_step(scores, state, self.value_model, cfg)
        self.steps.append(stats)
        with phase("steer", state.times):
            J = stats.num_junctions
            out = scores
            if cfg.sample_from == "topk":  # every row restricted to its top-k candidates
                out = torch.full_like(scores, float("-inf"))
                out.scatter_(1, scan.topk_ids, scores.gather(1, scan.topk_ids))
            if J:
                rows = scan.junction_rows[:J]
                steered = scan.junction_logprobs[:J] + cfg.beta * values
                junction = torch.full((J, scores.shape[1]), float("-inf"), dtype=scores.dtype, device=scores.device)
                junction.scatter_(1, scan.junction_ids[:J], steered.to(scores.dtype))
                out = out.index_copy(0, rows, junction) if out is scores else out.index_copy_(0, rows, junction)
        return out


def _refuse_reordered_rows(flags: list[int]) -> None:
    if flags[0]:
        raise ValueError(
            "SIALogitsProcessor: the rows' histories changed between steps, as beam search (num_beams > 1) "
            "reorders them; the processor follows one history per row: use num_beams=1"
        )
